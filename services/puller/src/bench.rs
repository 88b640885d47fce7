//! Pull and unpack benchmark (issue 4's performance bars).

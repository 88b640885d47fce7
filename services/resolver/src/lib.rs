//! berth-resolver (in progress).

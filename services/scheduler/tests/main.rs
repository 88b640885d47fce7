//! Integration tests of berth-scheduler against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

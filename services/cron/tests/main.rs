//! Integration tests of berth-cron against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The agent and node worlds come from berth_tests::{agent, node}.
mod runs;

//! Integration tests of berth-cron against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Integration tests of berth-api against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod hooks;
mod routes;
mod support;

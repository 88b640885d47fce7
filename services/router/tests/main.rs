//! Integration tests of berth-router against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod routing;
mod support;
mod switch;

//! Integration tests of berth-notifier against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kill;
mod notify;
mod support;
mod targets;
mod timeline;
mod webhooks;

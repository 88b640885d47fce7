//! Integration tests of berth-cron against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The agent and node test support of the shared tests crate, used as is.
#[path = "../../../tests/tests/agent_support/mod.rs"]
mod agent_support;
#[path = "../../../tests/tests/node_support/mod.rs"]
mod node_support;

mod runs;

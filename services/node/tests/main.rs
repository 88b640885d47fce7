//! Integration tests of berth-node against real servers, one binary: real
//! nats-server, registry and runc (as root); the node component in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The agent and node tests' busybox image, world and runc helpers, shared
// as they are.
#[path = "../../../tests/tests/agent_support/mod.rs"]
mod agent_support;
#[path = "../../../tests/tests/node_support/mod.rs"]
mod node_support;
mod support;

mod gc;
mod health;
mod network;
mod ports;
mod stops;

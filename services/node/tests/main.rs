//! Integration tests of berth-node against real servers, one binary: real
//! nats-server, registry and runc (as root); the node component in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The busybox image, world and runc helpers shared with the agent and node
// tests are berth_tests::{agent, node}; `support` is this crate's own.
mod support;

mod disk;
mod exec;
mod gc;
mod health;
mod horizon;
mod images;
mod network;
mod persistent;
mod ports;
mod shell;
mod stops;
mod userns;

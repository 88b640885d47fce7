//! Integration tests of berth-scheduler against real servers, one binary:
//! real nats-server, registry and runc; two node components, the resolver
//! and the scheduler per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The agent tests' busybox image and runc helpers, shared as they are.
#[path = "../../../tests/tests/agent_support/mod.rs"]
mod agent_support;
mod support;

mod crash;
mod deploys;
mod lifecycle;
mod lost_node;
mod pre_deploy;
mod room;
mod scale;
mod triggers;
mod update_failed;

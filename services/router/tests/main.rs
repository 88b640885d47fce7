//! Integration tests of berth-router against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The agent tests' busybox image and runc helpers, and the scheduler tests'
// world (store, registry, resolver, nodes, scheduler), shared as they are.
#[path = "../../../tests/tests/agent_support/mod.rs"]
mod agent_support;
mod load;
#[path = "../../scheduler/tests/support.rs"]
mod sched;
mod support;

mod e2e;
mod routing;
mod switch;

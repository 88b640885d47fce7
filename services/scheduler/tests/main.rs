//! Integration tests of berth-scheduler against real servers, one binary:
//! real nats-server, registry and runc; two node components, the resolver
//! and the scheduler per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The world (store, registry, resolver, nodes, scheduler) is
// berth_tests::scheduler, shared with the router's tests.
mod autoscale;
mod crash;
mod deploys;
mod disks;
mod lifecycle;
mod lost_node;
mod parking;
mod pre_deploy;
mod room;
mod scale;
mod secret_files;
mod shutdown;
mod triggers;
mod update_failed;

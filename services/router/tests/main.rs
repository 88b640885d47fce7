//! Integration tests of berth-router against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// End to end, the scheduler tests' world (store, registry, resolver, nodes,
// scheduler) is berth_tests::scheduler; `support` is the router's own.
mod load;
mod support;

mod acme;
mod domains;
mod e2e;
mod limits;
mod pool;
mod routing;
mod streams;
mod switch;
mod tls;

//! Integration tests of berth-resolver against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The world (registry, store, resolver, ingress) is berth_tests::resolver.
mod rollback;

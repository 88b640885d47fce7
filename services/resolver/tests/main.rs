//! Integration tests of berth-resolver against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The resolver test support of the shared tests crate, used as is.
#[path = "../../../tests/tests/resolver_support/mod.rs"]
mod resolver_support;

mod rollback;

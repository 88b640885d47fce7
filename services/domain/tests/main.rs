//! Data-driven and property tests of the image reference grammar, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod reference_cases;
mod reference_hook;
mod reference_oci;
mod reference_props;

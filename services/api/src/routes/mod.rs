//! The `/v1` handlers, by resource.

pub mod deploys;
pub mod owner;
pub mod services;

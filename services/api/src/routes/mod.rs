//! The `/v1` handlers, by resource.

pub mod cron;
pub mod custom_domains;
pub mod deploys;
pub mod disks;
pub mod env_vars;
pub mod events;
pub mod exec;
pub mod jobs;
pub mod log_streams;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod notifications;
pub mod owner;
pub mod owners;
pub mod secret_files;
pub mod services;
pub mod terminal;
pub mod webhooks;

use serde::{Deserialize, Deserializer};

use crate::error::{ApiError, FieldError};

/// Adds one invalid field to a request's list.
fn field(fields: &mut Vec<FieldError>, f: &str, m: &str) {
    fields.push(FieldError {
        field: f.to_owned(),
        message: m.to_owned(),
    });
}

/// An `ownerId` a body gives (Render sends it) must be the caller's; any
/// other owner does not exist for it.
fn owner_matches(given: Option<&str>, caller_owner: &str) -> Result<(), ApiError> {
    match given {
        Some(o) if o != caller_owner => Err(ApiError::not_found("owner")),
        _ => Ok(()),
    }
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

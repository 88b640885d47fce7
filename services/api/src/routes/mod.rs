//! The `/v1` handlers, by resource.

pub mod deploys;
pub mod env_vars;
pub mod events;
pub mod notifications;
pub mod owner;
pub mod services;

use std::collections::BTreeSet;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};

use crate::app;
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

/// A listing's query string as Render's SDKs send it: an array filter as
/// repeated keys (`type=DOCKER&type=GITHUB`; a comma-separated value reads
/// the same), plus `limit` and `cursor`. A parameter the listing does not
/// know is accepted and ignored, as Render does, so that a client sending
/// a filter berth cannot apply still gets its answer.
#[derive(Debug, Default)]
pub struct ListQuery(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| ListQuery(q.0))
            .map_err(|_| ApiError::bad_request("invalid query string"))
    }
}

impl ListQuery {
    /// Every value given for `key`; `None` when it is not given (or only
    /// empty), which filters nothing.
    pub fn all(&self, key: &str) -> Option<BTreeSet<&str>> {
        let values: BTreeSet<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!values.is_empty()).then_some(values)
    }

    /// The last value given for `key`.
    pub fn one(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether an `ownerId` filter, if given, names the caller's owner
    /// (another owner's items are never listed, so it selects nothing).
    pub fn owner_selected(&self, caller_owner: &str) -> bool {
        self.all("ownerId")
            .is_none_or(|owners| owners.contains(caller_owner))
    }

    /// The `limit` (1 to 100, 20 when absent).
    pub fn limit(&self) -> Result<usize, ApiError> {
        Ok(app::limit(self.one("limit"))?.unwrap_or(20))
    }

    /// A time parameter: RFC 3339, or a date and time without an offset
    /// (what Python's `isoformat()` gives for a naive datetime), read as
    /// UTC.
    pub fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        let Some(t) = self.one(key).filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
            })
            .map(Some)
            .map_err(|_| ApiError::field(key, "must be an RFC 3339 time"))
    }

    /// The page of `items` (in listing order, each with its cursor) this
    /// query asks for: after the `cursor` item, those `keep` accepts, at
    /// most `limit`. The cursor is looked for among all items, so a page
    /// of a filtered listing may start after an item the filter drops; an
    /// unknown cursor is a 400.
    pub fn page<T>(
        &self,
        items: Vec<(String, T)>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<(String, T)>, ApiError> {
        let limit = self.limit()?;
        let start =
            match self.one("cursor").filter(|c| !c.is_empty()) {
                None => 0,
                Some(c) => {
                    items.iter().position(|(id, _)| id == c).ok_or_else(|| {
                        ApiError::field("cursor", "is not a cursor of this listing")
                    })? + 1
                }
            };
        Ok(items
            .into_iter()
            .skip(start)
            .filter(|(_, item)| keep(item))
            .take(limit)
            .collect())
    }
}

//! Query strings as Render's clients send them: a list filter repeats its
//! key (`type=a&type=b`) or joins values with commas (`type=a,b`), and
//! parameters berth has no use for (`includePreviews`, `environmentId`, …)
//! are accepted and ignored rather than refused.
//!
//! [`Listing`] extracts a query type whose fields read their values with
//! [`one`] (the last value given), [`many`] (every value, comma lists
//! split) or [`every`] (every value, commas kept: free text); anything the
//! type does not name is ignored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A query string as a typed value; see the module doc.
#[derive(Debug, Clone)]
pub struct Listing<T>(pub T);

/// The query's pairs, each key with every value it was given.
fn pairs(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let entry = out
            .entry(k.into_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(Value::String(v.into_owned()));
        }
    }
    out
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Listing<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let map = pairs(parts.uri.query().unwrap_or_default());
        serde_json::from_value(Value::Object(map))
            .map(Listing)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid query: {}",
                    crate::app::scrub(&e.to_string())
                ))
            })
    }
}

/// The last value given for a scalar parameter.
pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Vec::<String>::deserialize(d)?.pop())
}

/// Every value given for a list parameter, comma-separated ones split,
/// blanks dropped.
pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(d)?
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Every value given for a free-text list parameter, as given: a comma is
/// part of the text, not a separator. Empty values dropped.
pub fn every<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(d)?
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect())
}

/// A boolean parameter (`true`/`false`), `None` when absent.
pub fn flag(name: &str, given: Option<&str>) -> Result<Option<bool>, ApiError> {
    match given {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::field(name, "must be true or false")),
    }
}

/// A time parameter: RFC 3339, or a date and time without an offset (what
/// Python's `isoformat()` gives for a naive datetime), read as UTC; `None`
/// when absent or empty.
pub fn time(
    name: &str,
    given: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    given
        .filter(|t| !t.is_empty())
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .or_else(|_| {
                    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                        .map(|t| t.and_utc())
                })
                .map_err(|_| ApiError::field(name, "must be an RFC 3339 time"))
        })
        .transpose()
}

/// A time filter's two ends (`…After`, `…Before`), each inclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Between {
    pub after: Option<chrono::DateTime<chrono::Utc>>,
    pub before: Option<chrono::DateTime<chrono::Utc>>,
}

impl Between {
    /// The filter `after`/`before` name (e.g. `createdAfter`,
    /// `createdBefore`), from their values.
    pub fn of(after: (&str, Option<&str>), before: (&str, Option<&str>)) -> Result<Self, ApiError> {
        Ok(Between {
            after: time(after.0, after.1)?,
            before: time(before.0, before.1)?,
        })
    }

    /// Whether nothing is asked.
    pub fn is_open(&self) -> bool {
        self.after.is_none() && self.before.is_none()
    }

    /// Whether `t` passes (an absent time passes only an open filter).
    pub fn holds(&self, t: Option<chrono::DateTime<chrono::Utc>>) -> bool {
        self.after.is_none_or(|a| t.is_some_and(|t| t >= a))
            && self.before.is_none_or(|b| t.is_some_and(|t| t <= b))
    }
}

/// Render's `createdBefore`/`createdAfter`/`updatedBefore`/`updatedAfter`
/// bounds of a listing (RFC 3339 or Unix seconds, inclusive).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Changed {
    #[serde(default, deserialize_with = "one")]
    pub created_before: Option<String>,
    #[serde(default, deserialize_with = "one")]
    pub created_after: Option<String>,
    #[serde(default, deserialize_with = "one")]
    pub updated_before: Option<String>,
    #[serde(default, deserialize_with = "one")]
    pub updated_after: Option<String>,
}

impl Changed {
    /// The creation and update bounds, each checked.
    pub fn bounds(&self) -> Result<(Between, Between), ApiError> {
        Ok((
            Between::of(
                ("createdAfter", self.created_after.as_deref()),
                ("createdBefore", self.created_before.as_deref()),
            )?,
            Between::of(
                ("updatedAfter", self.updated_after.as_deref()),
                ("updatedBefore", self.updated_before.as_deref()),
            )?,
        ))
    }
}

/// Whether an `ownerId` filter leaves the caller's own items: it is not
/// given, or names `caller` (another owner's items are never listed).
pub fn owner_selected(owner_ids: &[String], caller: &str) -> bool {
    owner_ids.is_empty() || owner_ids.iter().any(|o| o == caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Q {
        #[serde(default, deserialize_with = "many", rename = "type")]
        types: Vec<String>,
        #[serde(default, deserialize_with = "one")]
        limit: Option<String>,
    }

    fn q(s: &str) -> serde_json::Result<Q> {
        serde_json::from_value(Value::Object(pairs(s)))
    }

    #[test]
    fn repeated_and_comma_lists_merge_and_unknown_parameters_are_ignored() -> serde_json::Result<()>
    {
        let got = q(
            "type=web_service&type=cron_job,background_worker&includePreviews=true&limit=5&limit=7",
        )?;
        assert_eq!(got.types, ["web_service", "cron_job", "background_worker"]);
        assert_eq!(got.limit.as_deref(), Some("7"));
        let empty = q("")?;
        assert!(empty.types.is_empty() && empty.limit.is_none());
        Ok(())
    }
}

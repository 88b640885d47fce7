//! Deploy hooks (SPEC §6): `GET|POST /deploy/srv-…?key=…[&imgURL=…]`.
//!
//! The key and the `imgURL` are checked inside the decision on the service
//! (see `Ingress::hook_deploy`), and 200 is answered only after the
//! `deploy_created` event is appended. Unknown service, wrong or missing
//! key and an invalid `imgURL` all get the same 404 body, so a caller
//! learns nothing about which services exist.
//!
//! A refusal should cost less than the call: a malformed service id or key
//! is refused before any I/O, and the key is checked against the API's read
//! model before any bus work. Only a key the read model refuses is checked
//! once more after the read model caught up with the log (the service or
//! its key may be a moment old); a refusal is then remembered for a few
//! seconds and counts against the caller's address ([`crate::guard`]).
//! A call the read model accepts goes on to the service's desk, which
//! decides against the log itself.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_ingress::{is_hook_key_shaped, same_secret, HookError, Ingress};
use berth_runtime::Secret;
use berth_schemas::ids::ServiceId;
use berth_schemas::model::Sealed;
use serde::Deserialize;
use serde_json::json;

use crate::app::{AppState, ClientAddr};
use crate::error::ApiError;
use crate::guard::Fingerprint;

/// The hook's query: its key, and optionally another tag or digest of the
/// service's repository to deploy.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HookQuery {
    /// The service's deploy hook key.
    key: Option<String>,
    /// A tag or digest of the service's repository (`repo:tag`,
    /// `repo@sha256:…`) to deploy instead of its configured reference.
    #[serde(rename = "imgURL")]
    img_url: Option<String>,
}

/// A query string read as `T`, or `None` when it does not read: the hook
/// answers a malformed query as it answers a wrong key, never with a 400
/// that tells them apart.
#[derive(Debug)]
pub struct HookParams<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for HookParams<T>
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(HookParams(
            axum::extract::Query::<T>::try_from_uri(&parts.uri)
                .ok()
                .map(|q| q.0),
        ))
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "id": "not_found", "message": "not found" })),
    )
        .into_response()
}

/// The 404 every refused credential gets, or a 429 once the caller's
/// address has used up its failures.
fn refused(st: &AppState, client: ClientAddr) -> Response {
    match st.guard.failed(client.0) {
        Ok(()) => not_found(),
        Err(wait) => ApiError::too_many_failures(wait).into_response(),
    }
}

/// Services whose opened hook key is kept, at most.
const MAX_OPENED: usize = 4096;

/// The hook keys the read model holds, opened: an AEAD decryption once per
/// sealed value instead of once per call (the desks keep theirs the same
/// way), and a call with the right key costs a map lookup, not a read of
/// the read model. A key regenerated since is opened afresh when the old
/// one no longer matches.
#[derive(Debug, Default)]
pub struct OpenedHookKeys(Mutex<HashMap<ServiceId, (Sealed, Secret)>>);

impl OpenedHookKeys {
    /// Whether `key` is the key last opened for `id`. It may be stale (the
    /// key regenerated since): that only sends the call on to the desk,
    /// which decides against the log and refuses it.
    fn matches_last_opened(&self, id: &ServiceId, key: &str) -> bool {
        let opened = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        opened
            .get(id)
            .is_some_and(|(_, open)| same_secret(open.expose().as_bytes(), key.as_bytes()))
    }

    /// Whether `key` is `sealed`'s key; opens `sealed` unless it was the
    /// one opened last for `id`.
    fn matches(&self, ingress: &Ingress, id: &ServiceId, sealed: Sealed, key: &str) -> bool {
        {
            let opened = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, open)) = opened.get(id).filter(|(s, _)| *s == sealed) {
                return same_secret(open.expose().as_bytes(), key.as_bytes());
            }
        }
        let Some(open) = ingress.open_hook_key(id, &sealed) else {
            return false;
        };
        let right = same_secret(open.expose().as_bytes(), key.as_bytes());
        let mut opened = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if opened.len() >= MAX_OPENED && !opened.contains_key(id) {
            opened.clear();
        }
        opened.insert(id.clone(), (sealed, open));
        right
    }

    /// Forgets `id`'s key: the log refused it (regenerated, or the service
    /// deleted), so the next call reads the read model again.
    fn forget(&self, id: &ServiceId) {
        let mut opened = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        opened.remove(id);
    }
}

/// Whether the read model has service `id` with hook key `key`.
fn read_model_accepts(st: &AppState, id: &ServiceId, key: &str) -> Result<bool, ApiError> {
    if st.hook_keys.matches_last_opened(id, key) {
        return Ok(true);
    }
    let Some(sealed) = st.read(|i| i.hook_key(id).cloned())? else {
        return Ok(false);
    };
    Ok(st.hook_keys.matches(&st.ingress, id, sealed, key))
}

/// The hook handler, for GET and POST alike (a POST body is ignored).
pub async fn deploy_hook(
    State(st): State<AppState>,
    client: ClientAddr,
    Path(id): Path<String>,
    HookParams(q): HookParams<HookQuery>,
) -> Response {
    let Some(q) = q else {
        return refused(&st, client);
    };
    let (Ok(id), Some(key)) = (id.parse::<ServiceId>(), q.key) else {
        return refused(&st, client);
    };
    if !is_hook_key_shaped(&key) {
        return refused(&st, client);
    }
    if q.img_url.as_ref().is_some_and(|u| u.len() > 1024) {
        return not_found();
    }
    match read_model_accepts(&st, &id, &key) {
        Ok(true) => {}
        Ok(false) => {
            let print = Fingerprint::hook(id.as_str(), &key);
            if st.guard.recently_refused(&print) {
                return refused(&st, client);
            }
            if let Some(wait) = st.guard.blocked(client.0) {
                return ApiError::too_many_failures(wait).into_response();
            }
            if let Err(e) = st.caught_up().await {
                return e.into_response();
            }
            match read_model_accepts(&st, &id, &key) {
                Ok(true) => {}
                Ok(false) => {
                    st.guard.remember_refused(print);
                    return refused(&st, client);
                }
                Err(e) => return e.into_response(),
            }
        }
        Err(e) => return e.into_response(),
    }
    match st
        .ingress
        .hook_deploy(&id, &key, q.img_url.as_deref())
        .await
    {
        // Written out rather than through a `Value`: this is the hottest
        // answer berth gives, and an id needs no escaping ([a-z0-9-]).
        Ok(deploy) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"deploy":{{"id":"{deploy}"}}}}"#),
        )
            .into_response(),
        // The read model, or the key opened from it, was behind the log
        // (a key regenerated or the service deleted just now).
        Err(HookError::NotFound) => {
            st.hook_keys.forget(&id);
            st.guard
                .remember_refused(Fingerprint::hook(id.as_str(), &key));
            refused(&st, client)
        }
        Err(HookError::BadImage(why)) => {
            tracing::info!(service.id = %id, reason = %why, "deploy hook imgURL refused");
            not_found()
        }
        Err(HookError::Rejected(e)) => {
            ApiError::from(berth_ingress::IngressError::Rejected(e)).into_response()
        }
        Err(HookError::Store(e)) => {
            ApiError::from(berth_ingress::IngressError::Store(e)).into_response()
        }
    }
}

//! Deploy hooks (SPEC §6): `GET|POST /deploy/srv-…?key=…[&imgURL=…]`.
//!
//! The key and the `imgURL` are checked inside the decision on the service
//! (see `Ingress::hook_deploy`), and 200 is answered only after the
//! `deploy_created` event is appended. Unknown service, wrong or missing
//! key and an invalid `imgURL` all get the same 404 body, so a caller
//! learns nothing about which services exist.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_ingress::HookError;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;

#[derive(Debug, Deserialize)]
struct HookQuery {
    key: Option<String>,
    #[serde(rename = "imgURL")]
    img_url: Option<String>,
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "id": "not_found", "message": "not found" })),
    )
        .into_response()
}

/// The hook handler, for GET and POST alike (a POST body is ignored).
pub async fn deploy_hook(State(st): State<AppState>, Path(id): Path<String>, uri: Uri) -> Response {
    let Ok(id) = id.parse() else {
        return not_found();
    };
    let Ok(q) = axum::extract::Query::<HookQuery>::try_from_uri(&uri) else {
        return not_found();
    };
    let Some(key) = q.0.key.filter(|k| !k.is_empty() && k.len() <= 256) else {
        return not_found();
    };
    if q.0.img_url.as_ref().is_some_and(|u| u.len() > 1024) {
        return not_found();
    }
    match st
        .ingress
        .hook_deploy(&id, &key, q.0.img_url.as_deref())
        .await
    {
        // Written out rather than through a `Value`: this is the hottest
        // answer berth gives, and an id needs no escaping ([a-z0-9-]).
        Ok(deploy) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"deploy":{{"id":"{deploy}"}}}}"#),
        )
            .into_response(),
        Err(HookError::NotFound) => not_found(),
        Err(HookError::BadImage(why)) => {
            tracing::info!(service.id = %id, reason = %why, "deploy hook imgURL refused");
            not_found()
        }
        Err(HookError::Rejected(e)) => {
            crate::error::ApiError::from(berth_ingress::IngressError::Rejected(e)).into_response()
        }
        Err(HookError::Store(e)) => {
            crate::error::ApiError::from(berth_ingress::IngressError::Store(e)).into_response()
        }
    }
}

//! `/v1/logs/streams/…` (Render's log streams): the owner's endpoint, to
//! which the notifier sends every line of the owner's services as RFC 5424
//! syslog over TLS, and each service's override (`drop` its lines, or
//! `send` them to an endpoint of its own).
//!
//! Tokens go in and never come out: the answers say only whether one is
//! set (berth's `tokenConfigured`). An owner with no stream, and a service
//! with no override, answer 200 with no `endpoint` and no setting: they
//! send nothing, and follow the owner, respectively.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::service::ServiceState;
use berth_ingress::{OverrideChange, StreamChange};
use berth_runtime::Secret;
use berth_schemas::ids::ServiceId;
use berth_schemas::model::{LogStream, LogStreamSetting};
use serde::{Deserialize, Serialize};

use super::notifications::own;
use super::services::service_id;
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};

fn required(field: &str) -> ApiError {
    ApiError::field(field, "is required: send or drop")
}

/// Render's `OwnerLogStreamSetting`, plus berth's `tokenConfigured`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerView {
    pub owner_id: String,
    /// `HOST:PORT`; absent when no stream is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<LogStreamSetting>,
    /// berth: whether a token is set (it is never shown).
    pub token_configured: bool,
    /// berth: present while lines do not reach the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
}

/// berth: why lines do not reach an endpoint, since when (cleared once
/// they do again).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// When the notifier first failed to deliver to it.
    pub failing_since: chrono::DateTime<chrono::Utc>,
    /// Why, in words.
    pub error: String,
}

fn delivery(f: Option<&berth_domain::owner::DeliveryFailure>) -> Option<DeliveryView> {
    f.map(|f| DeliveryView {
        failing_since: f.since,
        error: f.error.clone(),
    })
}

fn owner_view(
    owner: &str,
    s: Option<&LogStream>,
    failures: &berth_ingress::log_streams::DeliveryFailures,
) -> OwnerView {
    OwnerView {
        owner_id: owner.to_owned(),
        endpoint: s.map(|s| s.endpoint.clone()),
        preview: s.map(|s| s.preview),
        token_configured: s.is_some_and(|s| s.token.is_some()),
        delivery: delivery(s.and_then(|s| failures.get(&s.endpoint))),
    }
}

/// GET /v1/logs/streams/owner/{ownerId}
pub async fn get_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<Json<OwnerView>, ApiError> {
    own(&caller, &owner)?;
    let (s, failures) = st.ingress.owner_log_stream(&caller.owner).await?;
    Ok(Json(owner_view(&owner, s.as_ref(), &failures)))
}

/// Render's `LogStreamOwnerUpdate`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerBody {
    /// Required (Render's); kept and shown: berth has no preview
    /// environments. (Optional here so another owner's path is a 404
    /// before the body is judged.)
    pub preview: Option<LogStreamSetting>,
    /// `HOST:PORT`; absent keeps the endpoint set.
    pub endpoint: Option<String>,
    /// Write-only. Absent keeps the token for the same endpoint (a new
    /// endpoint drops it), `""` removes it.
    pub token: Option<String>,
}

/// PUT /v1/logs/streams/owner/{ownerId}: sets or changes the stream.
pub async fn put_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
    JsonBody(body): JsonBody<OwnerBody>,
) -> Result<Json<OwnerView>, ApiError> {
    own(&caller, &owner)?;
    let preview = body.preview.ok_or_else(|| required("preview"))?;
    let change = StreamChange {
        endpoint: body.endpoint,
        token: body.token.map(Secret::new),
        preview: Some(preview),
    };
    let s = st
        .ingress
        .set_owner_log_stream(&caller.owner, change, &caller.actor)
        .await?;
    Ok(Json(owner_view(&owner, Some(&s), &Default::default())))
}

/// DELETE /v1/logs/streams/owner/{ownerId}: no line is sent any more
/// (but a service's own `send` override).
pub async fn delete_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<StatusCode, ApiError> {
    own(&caller, &owner)?;
    st.ingress
        .remove_owner_log_stream(&caller.owner, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Render's `ResourceLogStreamSetting`, plus berth's `tokenConfigured`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub resource_id: String,
    /// Present when `setting` is `send`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Absent: the service follows its owner's stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<LogStreamSetting>,
    /// berth: whether a token is set (it is never shown).
    pub token_configured: bool,
    /// berth: present while lines do not reach its endpoint (on `GET` of
    /// one service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
}

fn resource_view(id: &ServiceId, s: &ServiceState) -> ResourceView {
    let o = s.log_stream.as_ref();
    ResourceView {
        resource_id: id.to_string(),
        endpoint: o.and_then(|o| o.endpoint.clone()),
        setting: o.map(|o| o.setting),
        token_configured: o.is_some_and(|o| o.token.is_some()),
        delivery: None,
    }
}

/// Query of `GET /v1/logs/streams/resource`: Render's filters (each
/// repeated or comma-separated) and paging.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    /// Refused: berth's log streams have no ids of their own.
    #[serde(default, deserialize_with = "query::many")]
    pub log_stream_id: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub resource_id: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub setting: Vec<String>,
    #[serde(flatten)]
    pub page: app::Page,
}

/// GET /v1/logs/streams/resource: the caller's services that override the
/// owner's stream, newest service first, as a plain array (Render's); the
/// `cursor` of the next page is the last service's id.
pub async fn list_resources(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<ResourcesQuery>,
) -> Result<Json<Vec<ResourceView>>, ApiError> {
    let limit = q.page.limit()?;
    if !q.log_stream_id.is_empty() {
        return Err(ApiError::field(
            "logStreamId",
            "berth's log streams have no ids: filter by ownerId or resourceId",
        ));
    }
    let mut settings = Vec::new();
    for s in &q.setting {
        settings.push(match s.as_str() {
            "send" => LogStreamSetting::Send,
            "drop" => LogStreamSetting::Drop,
            _ => return Err(ApiError::field("setting", "must be send or drop")),
        });
    }
    if !query::owner_selected(&q.owner_id, caller.owner.as_str()) {
        return Ok(Json(Vec::new()));
    }
    st.caught_up().await?;
    let cursor = q.page.cursor.as_deref().filter(|c| !c.is_empty());
    st.read(|i| {
        i.services_page(&caller.owner, cursor, limit, |id, s| {
            s.log_stream.as_ref().is_some_and(|o| {
                (q.resource_id.is_empty() || q.resource_id.iter().any(|r| r == id.as_str()))
                    && (settings.is_empty() || settings.contains(&o.setting))
            })
        })
        .map(|page| {
            page.into_iter()
                .map(|(id, s)| resource_view(id, s))
                .collect()
        })
        .map_err(|e| ApiError::field("cursor", e.to_string()))
    })?
    .map(Json)
}

/// GET /v1/logs/streams/resource/{resourceId}
pub async fn get_resource(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<ResourceView>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    let mut view = resource_view(&id, &state);
    if let Some(endpoint) = &view.endpoint {
        let failure = st
            .ingress
            .log_stream_failure(&caller.owner, endpoint)
            .await?;
        view.delivery = delivery(failure.as_ref());
    }
    Ok(Json(view))
}

/// Render's `LogStreamResourceUpdate`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceBody {
    /// Required: `send` (to `endpoint`) or `drop`. (Optional here so
    /// another owner's service is a 404 before the body is judged.)
    pub setting: Option<LogStreamSetting>,
    /// `HOST:PORT`: required with `send`, refused with `drop`.
    pub endpoint: Option<String>,
    /// Write-only. Absent keeps the token for the same endpoint, `""`
    /// removes it; refused with `drop`.
    pub token: Option<String>,
}

/// PUT /v1/logs/streams/resource/{resourceId}: sets the service's override.
pub async fn put_resource(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResourceBody>,
) -> Result<Json<ResourceView>, ApiError> {
    let id = service_id(&id)?;
    let Some(setting) = body.setting else {
        // Another owner's service is not found before the body is judged.
        st.ingress.show_service(&caller, &id).await?;
        return Err(required("setting"));
    };
    let change = OverrideChange {
        setting,
        endpoint: body.endpoint,
        token: body.token.map(Secret::new),
    };
    let state = st
        .ingress
        .set_service_log_stream(&caller, &id, Some(change))
        .await?;
    Ok(Json(resource_view(&id, &state)))
}

/// DELETE /v1/logs/streams/resource/{resourceId}: the service follows its
/// owner's stream again; 404 when it has no override.
pub async fn delete_resource(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress
        .set_service_log_stream(&caller, &id, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

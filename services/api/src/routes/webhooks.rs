//! `/v1/webhooks` (Render's webhooks API): an owner's endpoints that are
//! posted its service events — every type, or those in `eventFilter` — in
//! Render's shape, signed the Standard-Webhooks way with the webhook's
//! `secret`, which berth makes and shows (as Render does). Create, list,
//! retrieve, update (what is given changes), delete, and the webhook's
//! events: each attempt to send, with the receiver's status and the start
//! of its answer, newest first (kept 14 days, the last 1,000). Another
//! owner's webhook is not found, as one that does not exist.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_ingress::{WebhookChange, WebhookView};
use berth_schemas::ids::WebhookId;
use berth_schemas::webhooks::WebhookSend;
use serde::{Deserialize, Serialize};

use super::notifications::own;
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};

fn webhook_id(s: &str) -> Result<WebhookId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("webhook"))
}

/// One item of `GET /v1/webhooks` (Render's `WebhookWithCursor`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct WebhookItem {
    pub webhook: WebhookView,
    pub cursor: String,
}

/// Query of `GET /v1/webhooks`: Render's `ownerId` (repeated or
/// comma-separated) and paging.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    #[serde(flatten)]
    pub page: app::Page,
}

/// GET /v1/webhooks: the caller's webhooks, by id.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<WebhooksQuery>,
) -> Result<Json<Vec<WebhookItem>>, ApiError> {
    q.page.limit()?;
    if !query::owner_selected(&q.owner_id, caller.owner.as_str()) {
        return Ok(Json(Vec::new()));
    }
    let all = st.ingress.list_webhooks(&caller.owner).await?;
    let items = all.into_iter().map(|w| (w.id.to_string(), w)).collect();
    Ok(Json(
        q.page
            .apply(items)?
            .into_iter()
            .map(|(cursor, webhook)| WebhookItem { webhook, cursor })
            .collect(),
    ))
}

/// Render's `WebhookPOSTInput` (every field required).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    pub owner_id: Option<String>,
    /// An `http(s)` URL of at most 2,048 characters.
    pub url: Option<String>,
    /// 1–100 characters.
    pub name: Option<String>,
    pub enabled: Option<bool>,
    /// Event types to send (`[]`: every type); Render's types berth never
    /// records are accepted and never sent.
    pub event_filter: Option<Vec<String>>,
}

/// POST /v1/webhooks → 201 with the webhook and its secret.
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    if let Some(o) = &body.owner_id {
        own(&caller, o)?;
    }
    let mut fields = Vec::new();
    for (name, absent) in [
        ("ownerId", body.owner_id.is_none()),
        ("url", body.url.is_none()),
        ("name", body.name.is_none()),
        ("enabled", body.enabled.is_none()),
        ("eventFilter", body.event_filter.is_none()),
    ] {
        if absent {
            super::field(&mut fields, name, "is required");
        }
    }
    let (Some(url), Some(name), Some(enabled), Some(filter), true) = (
        body.url,
        body.name,
        body.enabled,
        body.event_filter,
        fields.is_empty(),
    ) else {
        return Err(ApiError::fields(fields));
    };
    let view = st
        .ingress
        .create_webhook(&caller.owner, &name, &url, enabled, filter, &caller.actor)
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// GET /v1/webhooks/{webhookId}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    Ok(Json(st.ingress.webhook(&caller.owner, &id).await?))
}

/// Render's `WebhookPATCHInput`: what is given changes.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateBody {
    pub name: Option<String>,
    pub url: Option<String>,
    pub enabled: Option<bool>,
    pub event_filter: Option<Vec<String>>,
}

/// PATCH /v1/webhooks/{webhookId}
pub async fn update(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    let change = WebhookChange {
        name: body.name,
        url: body.url,
        enabled: body.enabled,
        event_filter: body.event_filter,
    };
    Ok(Json(
        st.ingress
            .update_webhook(&caller.owner, &id, change, &caller.actor)
            .await?,
    ))
}

/// DELETE /v1/webhooks/{webhookId}
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = webhook_id(&id)?;
    st.ingress
        .delete_webhook(&caller.owner, &id, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One item of `GET /v1/webhooks/{webhookId}/events` (Render's
/// `WebhookEventWithCursor`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendItem {
    pub webhook_event: WebhookSend,
    pub cursor: String,
}

/// Query of the webhook's events: Render's `sentBefore`, `sentAfter` and
/// paging (`cursor`: the last item's on the previous page).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendsQuery {
    #[serde(default, deserialize_with = "query::one")]
    pub sent_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub sent_after: Option<String>,
    #[serde(flatten)]
    pub page: app::Page,
}

/// GET /v1/webhooks/{webhookId}/events: every attempt to send to it,
/// newest first.
pub async fn events(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<SendsQuery>,
) -> Result<Json<Vec<SendItem>>, ApiError> {
    let id = webhook_id(&id)?;
    let before = query::time("sentBefore", q.sent_before.as_deref())?;
    let after = query::time("sentAfter", q.sent_after.as_deref())?;
    q.page.limit()?;
    // Its owner's, or not found.
    if !st.ingress.has_webhook(&caller.owner, &id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    let sends = st
        .ingress
        .store()
        .webhook_sends(&caller.owner, &id)
        .await
        .map_err(|e| ApiError::from(berth_ingress::IngressError::Store(e.to_string())))?;
    // Newest first by when each attempt was sent: attempts run at once
    // and record when they end, so the stream's order is not theirs.
    let mut sends = sends;
    sends.sort_by(|(a_seq, a), (b_seq, b)| (b.sent_at, b_seq).cmp(&(a.sent_at, a_seq)));
    let items = sends
        .into_iter()
        .map(|(seq, s)| (seq.to_string(), s))
        .collect();
    let kept = |s: &WebhookSend| {
        before.is_none_or(|b| s.sent_at < b) && after.is_none_or(|a| s.sent_at > a)
    };
    Ok(Json(
        q.page
            .apply_filtered(items, kept)?
            .into_iter()
            .map(|(cursor, webhook_event)| SendItem {
                webhook_event,
                cursor,
            })
            .collect(),
    ))
}

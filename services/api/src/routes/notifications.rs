//! `/v1/notification-settings…` (SPEC §9): the owner's default setting and
//! channels, and each service's override of the setting, in Render's
//! shapes (`NotificationSetting`, `NotificationServiceOverride`) with
//! berth's channel fields added. The notifier sends by the service's
//! override, else the owner's default; a service without an override is
//! Render's `default`.
//!
//! The Slack and webhook URLs and the webhook secret are sealed secrets:
//! they go in, and only whether each is set comes out.
//!
//! berth has no preview environments, so it sends no preview
//! notifications: the preview fields are accepted and change nothing, and
//! are answered `false` (owner) and `default` (service).

use axum::extract::{Path, State};
use axum::Json;
use berth_domain::service::ServiceState;
use berth_ingress::{Caller, ChannelSecrets, OwnerNotifications};
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::ServiceId;
use berth_schemas::model::NotifySetting;
use serde::Deserialize;
use serde_json::{json, Value};

use super::services::service_id;
use super::{nullable, ListQuery};
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;

fn own(caller: &Caller, owner: &str) -> Result<(), ApiError> {
    if owner == caller.owner.as_str() {
        Ok(())
    } else {
        Err(ApiError::not_found("owner"))
    }
}

/// The owner's settings as Render's `NotificationSetting`, plus berth's
/// `email` (the recipient), `slackConfigured` and `webhookConfigured`.
fn setting(owner: &str, n: &OwnerNotifications) -> Value {
    json!({
        "ownerId": owner,
        "notificationsToSend": n.notify,
        "emailEnabled": n.email.is_some(),
        "slackEnabled": n.slack_configured,
        "previewNotificationsEnabled": false,
        "email": n.email,
        "slackConfigured": n.slack_configured,
        "webhookConfigured": n.webhook_configured,
    })
}

/// GET /v1/notification-settings/owners/{ownerId}
pub async fn get_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<Json<Value>, ApiError> {
    own(&caller, &owner)?;
    let n = st.ingress.owner_notifications(&caller.owner).await?;
    Ok(Json(setting(&owner, &n)))
}

/// The owner PATCH: Render's `NotificationSettingPATCH` fields and
/// berth's channels. Absent fields keep what is set.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerBody {
    pub notifications_to_send: Option<NotifySetting>,
    /// Whether email is sent (see [`patch_owner`]).
    pub email_enabled: Option<bool>,
    /// Checked and not applied: berth sends no preview notifications.
    #[serde(rename = "previewNotificationsEnabled")]
    pub _preview_notifications_enabled: Option<bool>,
    /// The email recipient ("" removes it).
    pub email: Option<String>,
    /// Write-only: a Slack incoming-webhook URL ("" removes it).
    pub slack_webhook_url: Option<String>,
    /// Write-only: a generic webhook URL ("" removes it).
    pub webhook_url: Option<String>,
    /// Write-only: its Standard-Webhooks secret, `whsec_…` ("" removes it).
    pub webhook_secret: Option<String>,
}

/// PATCH /v1/notification-settings/owners/{ownerId}
///
/// berth's email channel is one recipient address, sent to when it is set
/// (there is no account address to fall back to, and no separate switch),
/// so Render's `emailEnabled` is read against it: `false` removes the
/// recipient (as `email: ""` does; it cannot be combined with a new
/// `email`), and `true` keeps the recipient, or sets the one given in
/// `email` alongside; with no recipient either stored or given it is a
/// 400 asking for `email`, since berth would have nowhere to send. The
/// answer's `emailEnabled` is always whether a recipient is set.
/// `previewNotificationsEnabled` is accepted and changes nothing.
pub async fn patch_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
    JsonBody(body): JsonBody<OwnerBody>,
) -> Result<Json<Value>, ApiError> {
    own(&caller, &owner)?;
    let current = st.ingress.owner_notifications(&caller.owner).await?;
    // What `email` asks: keep (absent), remove (""), or set.
    let asked = body.email.map(|e| (!e.is_empty()).then_some(e));
    let refuse = |m: &str| Err(ApiError::field("emailEnabled", m));
    let email = match (body.email_enabled, asked) {
        (Some(false), Some(Some(_))) => {
            return refuse("false removes the email recipient; do not also give email")
        }
        (Some(false), _) => None,
        (Some(true), Some(None)) => return refuse("true needs a recipient; email \"\" removes it"),
        (Some(true), None) if current.email.is_none() => {
            return refuse("no email recipient is set: give it in email")
        }
        (_, Some(e)) => e,
        (_, None) => current.email.clone(),
    };
    let channels = ChannelSecrets {
        slack_webhook_url: body.slack_webhook_url.map(Secret::new),
        webhook_url: body.webhook_url.map(Secret::new),
        webhook_secret: body.webhook_secret.map(Secret::new),
    };
    let wanted = OwnerNotifications {
        notify: body.notifications_to_send.unwrap_or(current.notify),
        email,
        ..current
    };
    let n = st
        .ingress
        .set_owner_notifications(&caller.owner, wanted, channels, &caller.actor)
        .await?;
    Ok(Json(setting(&owner, &n)))
}

/// Render's `notificationsToSend` of an override: `default` follows the
/// owner (berth stores no override), the others are the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOverride {
    Default,
    All,
    Failure,
    None,
}

impl NotifyOverride {
    /// The override berth stores (`None`: follow the owner).
    fn setting(self) -> Option<NotifySetting> {
        match self {
            NotifyOverride::Default => None,
            NotifyOverride::All => Some(NotifySetting::All),
            NotifyOverride::Failure => Some(NotifySetting::Failure),
            NotifyOverride::None => Some(NotifySetting::None),
        }
    }
}

/// Render's `previewNotificationsEnabled` of an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PreviewOverride {
    #[serde(rename = "default")]
    Default,
    #[serde(rename = "true")]
    True,
    #[serde(rename = "false")]
    False,
}

/// A service's override as Render's `NotificationServiceOverride`, plus
/// berth's `notifyOnFail` (the stored override, `null` when it follows the
/// owner).
fn override_view(id: &ServiceId, state: &ServiceState) -> Value {
    let notify = state.config.as_ref().and_then(|c| c.notify);
    json!({
        "serviceId": id.to_string(),
        "notificationsToSend": notify.map_or_else(|| json!("default"), |n| json!(n)),
        "previewNotificationsEnabled": "default",
        "notifyOnFail": notify,
    })
}

/// GET /v1/notification-settings/overrides: the override of each of the
/// caller's services, newest service first, as Render's
/// `[{override, cursor}]` (the cursor is the service id). A service
/// without an override is listed as `default`. Filters: `serviceId` and
/// `ownerId` (the caller's, or nothing); other parameters are ignored.
pub async fn list_overrides(
    State(st): State<AppState>,
    Authed(caller): Authed,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit()?;
    if !q.owner_selected(caller.owner.as_str()) {
        return Ok(Json(json!([])));
    }
    let services = q.all("serviceId");
    let cursor = q.one("cursor").filter(|c| !c.is_empty());
    st.caught_up().await?;
    let page = st.read(|i| {
        i.services_page(&caller.owner, cursor, limit, |id, _| {
            services.as_ref().is_none_or(|s| s.contains(id.as_str()))
        })
        .map(|items| {
            items
                    .into_iter()
                    .map(|(id, state)| {
                        json!({ "cursor": id.to_string(), "override": override_view(id, state) })
                    })
                    .collect::<Vec<_>>()
        })
        .map_err(|e| ApiError::field("cursor", e.to_string()))
    })??;
    Ok(Json(Value::Array(page)))
}

/// GET /v1/notification-settings/overrides/services/{serviceId}
pub async fn get_override(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    Ok(Json(override_view(&id, &state)))
}

/// The override PATCH: Render's fields, or berth's `notifyOnFail`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideBody {
    pub notifications_to_send: Option<NotifyOverride>,
    /// Checked and not applied: berth sends no preview notifications.
    #[serde(rename = "previewNotificationsEnabled")]
    pub _preview_notifications_enabled: Option<PreviewOverride>,
    /// berth's spelling: a setting, or `null` to follow the owner.
    #[serde(default, deserialize_with = "nullable")]
    pub notify_on_fail: Option<Option<NotifySetting>>,
}

/// PATCH /v1/notification-settings/overrides/services/{serviceId}:
/// `notificationsToSend` sets the override (`default` removes it, so the
/// owner's setting applies); berth's `notifyOnFail` does the same (`null`
/// removes it). A body with neither changes nothing and answers the
/// override as it is.
pub async fn patch_override(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OverrideBody>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let wanted = match (
        body.notifications_to_send.map(NotifyOverride::setting),
        body.notify_on_fail,
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::field(
                "notifyOnFail",
                "disagrees with notificationsToSend; give one of them",
            ))
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    let state = match wanted {
        None => st.ingress.show_service(&caller, &id).await?,
        Some(notify) => {
            let settings = ServiceSettings {
                notify: Some(notify),
                ..ServiceSettings::default()
            };
            st.ingress
                .update_service(&caller, &id, settings, None)
                .await?
        }
    };
    Ok(Json(override_view(&id, &state)))
}

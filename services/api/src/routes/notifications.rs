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
use serde::{Deserialize, Serialize};

use super::nullable;
use super::services::{service_id, NotifyBody};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};
use crate::views::NotifyOverride;

/// 404 unless `owner` is the caller's own (another owner's settings are
/// not found, as ones that do not exist).
pub(super) fn own(caller: &Caller, owner: &str) -> Result<(), ApiError> {
    if owner == caller.owner.as_str() {
        Ok(())
    } else {
        Err(ApiError::not_found("owner"))
    }
}

/// The owner's settings as Render's `NotificationSetting`, plus berth's
/// `email` (the recipient), `slackConfigured` and `webhookConfigured`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingView {
    pub owner_id: String,
    pub notifications_to_send: NotifySetting,
    /// Whether an email recipient is set.
    pub email_enabled: bool,
    /// Whether a Slack incoming-webhook URL is set.
    pub slack_enabled: bool,
    /// Always `false`: berth has no preview environments.
    pub preview_notifications_enabled: bool,
    /// berth: the email recipient.
    pub email: Option<String>,
    /// berth: whether a Slack URL is set (the URL itself is never shown).
    pub slack_configured: bool,
    /// berth: whether a generic webhook is set (never its URL or secret).
    pub webhook_configured: bool,
}

fn setting(owner: &str, n: &OwnerNotifications) -> SettingView {
    SettingView {
        owner_id: owner.to_owned(),
        notifications_to_send: n.notify,
        email_enabled: n.email.is_some(),
        slack_enabled: n.slack_configured,
        preview_notifications_enabled: false,
        email: n.email.clone(),
        slack_configured: n.slack_configured,
        webhook_configured: n.webhook_configured,
    }
}

/// GET /v1/notification-settings/owners/{ownerId}
pub async fn get_owner(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<Json<SettingView>, ApiError> {
    own(&caller, &owner)?;
    let n = st.ingress.owner_notifications(&caller.owner).await?;
    Ok(Json(setting(&owner, &n)))
}

/// The owner PATCH: Render's `NotificationSettingPATCH` fields and
/// berth's channels. Absent fields keep what is set.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
) -> Result<Json<SettingView>, ApiError> {
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

/// Render's `previewNotificationsEnabled` of an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PreviewOverride {
    #[serde(rename = "default")]
    Default,
    #[serde(rename = "true")]
    True,
    #[serde(rename = "false")]
    False,
}

/// A service's override as Render's `NotificationServiceOverride`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideView {
    pub service_id: String,
    /// `default` follows the owner's setting.
    pub notifications_to_send: NotifyOverride,
    /// Always `default`: berth has no preview environments.
    pub preview_notifications_enabled: PreviewOverride,
}

fn override_view(id: &ServiceId, state: &ServiceState) -> OverrideView {
    OverrideView {
        service_id: id.to_string(),
        notifications_to_send: NotifyOverride::of(state.config.as_ref().and_then(|c| c.notify)),
        preview_notifications_enabled: PreviewOverride::Default,
    }
}

/// An override in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OverrideItem {
    #[serde(rename = "override")]
    pub view: OverrideView,
    pub cursor: String,
}

/// Query of the override listing.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverridesQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub service_id: Vec<String>,
    /// Only the caller's own owner has services here.
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// GET /v1/notification-settings/overrides: the override of each of the
/// caller's services, newest service first, as Render's
/// `[{override, cursor}]` (the cursor is the service id). A service
/// without an override is listed as `default`. Filters: `serviceId` and
/// `ownerId` (the caller's, or nothing); other parameters are ignored.
pub async fn list_overrides(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<OverridesQuery>,
) -> Result<Json<Vec<OverrideItem>>, ApiError> {
    let limit = app::limit(q.limit.as_deref())?.unwrap_or(20);
    if !query::owner_selected(&q.owner_id, caller.owner.as_str()) {
        return Ok(Json(Vec::new()));
    }
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    st.caught_up().await?;
    let page = st.read(|i| {
        i.services_page(&caller.owner, cursor, limit, |id, _| {
            q.service_id.is_empty() || q.service_id.iter().any(|s| s == id.as_str())
        })
        .map(|items| {
            items
                .into_iter()
                .map(|(id, state)| OverrideItem {
                    view: override_view(id, state),
                    cursor: id.to_string(),
                })
                .collect::<Vec<_>>()
        })
        .map_err(|e| ApiError::field("cursor", e.to_string()))
    })??;
    Ok(Json(page))
}

/// GET /v1/notification-settings/overrides/services/{serviceId}
pub async fn get_override(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<OverrideView>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    Ok(Json(override_view(&id, &state)))
}

/// The override PATCH: Render's fields, or berth's `notifyOnFail`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideBody {
    pub notifications_to_send: Option<NotifyOverride>,
    /// Checked and not applied: berth sends no preview notifications.
    #[serde(rename = "previewNotificationsEnabled")]
    pub _preview_notifications_enabled: Option<PreviewOverride>,
    /// The service's own spelling (as in a service's `notifyOnFail`): a
    /// setting, or `null` or `default` to follow the owner.
    #[serde(default, deserialize_with = "nullable")]
    pub notify_on_fail: Option<Option<NotifyBody>>,
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
) -> Result<Json<OverrideView>, ApiError> {
    let id = service_id(&id)?;
    let wanted = match (
        body.notifications_to_send.map(NotifyOverride::setting),
        body.notify_on_fail.map(|n| n.and_then(NotifyBody::setting)),
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

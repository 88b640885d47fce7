//! The owner's own resources: registry credentials (SPEC §3), API keys and
//! the notification default (SPEC §9). Tokens and key secrets go in, never
//! out (a new API key is shown once, in the create answer).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_ingress::{ChannelSecrets, CredentialView, NewCredential, OwnerNotifications, Rotation};
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, CredentialId, IntegrationId};
use berth_schemas::model::{NotifySetting, RegistryKind};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{field, owner_matches};
use crate::app::{AppState, Authed, JsonBody, Page, QueryParams};
use crate::error::{ApiError, FieldError};

const MAX_TOKEN: usize = 8 * 1024;

fn credential_id(s: &str) -> Result<CredentialId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found("registry credential"))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBody {
    pub name: Option<String>,
    pub registry: Option<RegistryKind>,
    pub host: Option<String>,
    pub username: Option<String>,
    pub auth_token: Option<String>,
    /// Render sends the owner; it must be the caller's.
    pub owner_id: Option<String>,
}

fn required(fields: &mut Vec<FieldError>, name: &str, v: &Option<String>) {
    if v.as_deref().is_none_or(str::is_empty) {
        field(fields, name, "is required");
    }
}

fn token_size(fields: &mut Vec<FieldError>, token: &Option<String>) {
    if token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN) {
        field(fields, "authToken", "must be at most 8 KiB");
    }
}

/// POST /v1/registrycredentials
pub async fn create_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<CredentialBody>,
) -> Result<Response, ApiError> {
    owner_matches(body.owner_id.as_deref(), caller.owner.as_str())?;
    let mut fields = Vec::new();
    required(&mut fields, "name", &body.name);
    required(&mut fields, "username", &body.username);
    required(&mut fields, "authToken", &body.auth_token);
    if body.registry.is_none() {
        field(&mut fields, "registry", "is required");
    }
    token_size(&mut fields, &body.auth_token);
    let (Some(name), Some(registry), Some(username), Some(token), true) = (
        body.name,
        body.registry,
        body.username,
        body.auth_token,
        fields.is_empty(),
    ) else {
        return Err(ApiError::fields(fields));
    };
    let view = st
        .ingress
        .add_credential(
            &caller,
            NewCredential {
                name,
                registry,
                host: body.host,
                username,
                token: Secret::new(token),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// GET /v1/registrycredentials
pub async fn list_credentials(
    State(st): State<AppState>,
    Authed(caller): Authed,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    let all = st.ingress.list_credentials(&caller).await?;
    let items = all.into_iter().map(|c| (c.id.to_string(), c)).collect();
    // Render lists registry credentials as plain objects.
    Ok(Json(Value::Array(
        page.apply(items)?
            .into_iter()
            .map(|(_, c)| json!(c))
            .collect(),
    )))
}

/// GET /v1/registrycredentials/{id}
pub async fn get_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let id = credential_id(&id)?;
    Ok(Json(st.ingress.show_credential(&caller, &id).await?))
}

/// PATCH /v1/registrycredentials/{id}: rotate the token (and optionally
/// the username or name).
pub async fn update_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CredentialBody>,
) -> Result<Json<CredentialView>, ApiError> {
    let id = credential_id(&id)?;
    let mut fields = Vec::new();
    required(&mut fields, "authToken", &body.auth_token);
    if body.registry.is_some() || body.host.is_some() {
        field(
            &mut fields,
            "registry",
            "cannot be changed; add a new credential",
        );
    }
    token_size(&mut fields, &body.auth_token);
    let (Some(token), true) = (body.auth_token, fields.is_empty()) else {
        return Err(ApiError::fields(fields));
    };
    let view = st
        .ingress
        .rotate_credential(
            &caller,
            &id,
            Rotation {
                token: Secret::new(token),
                username: body.username,
                name: body.name,
            },
        )
        .await?;
    Ok(Json(view))
}

/// DELETE /v1/registrycredentials/{id} (409 while services use it).
pub async fn delete_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = credential_id(&id)?;
    st.ingress.remove_credential(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyBody {
    pub label: Option<String>,
}

/// POST /v1/api-keys: a new key for the caller's owner, shown once.
pub async fn create_api_key(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<ApiKeyBody>,
) -> Result<Response, ApiError> {
    let label = body.label.unwrap_or_default();
    let (id, secret) = st
        .ingress
        .create_api_key(&caller.owner, &label, &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id.to_string(), "label": label, "key": secret.expose() })),
    )
        .into_response())
}

/// GET /v1/api-keys: plain objects, paginated like registry credentials
/// (`limit`, `cursor` = the last key id seen).
pub async fn list_api_keys(
    State(st): State<AppState>,
    Authed(caller): Authed,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    let all = st.ingress.list_api_keys(&caller.owner).await?;
    let items = all.into_iter().map(|k| (k.id.to_string(), k)).collect();
    Ok(Json(Value::Array(
        page.apply(items)?
            .into_iter()
            .map(|(_, k)| json!(k))
            .collect(),
    )))
}

/// DELETE /v1/api-keys/{id}
pub async fn revoke_api_key(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let key: ApiKeyId = id.parse().map_err(|_| ApiError::not_found("API key"))?;
    st.ingress
        .revoke_api_key(&caller.owner, &key, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrationBody {
    pub name: String,
}

/// POST /v1/integrations: NATS credentials bound to the caller's owner,
/// shown once (the `credentials` object is the file an integration
/// connects with).
pub async fn create_integration(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<IntegrationBody>,
) -> Result<Response, ApiError> {
    let (view, creds) = st
        .ingress
        .create_integration(&caller.owner, &body.name, &caller.actor)
        .await?;
    let mut out = json!(view);
    out["credentials"] = json!(creds);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// GET /v1/integrations (`limit`, `cursor` = the last integration id seen).
pub async fn list_integrations(
    State(st): State<AppState>,
    Authed(caller): Authed,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    let all = st.ingress.list_integrations(&caller.owner).await?;
    let items = all.into_iter().map(|i| (i.id.to_string(), i)).collect();
    Ok(Json(Value::Array(
        page.apply(items)?
            .into_iter()
            .map(|(_, i)| json!(i))
            .collect(),
    )))
}

/// DELETE /v1/integrations/{id}
pub async fn revoke_integration(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: IntegrationId = id.parse().map_err(|_| ApiError::not_found("integration"))?;
    st.ingress
        .revoke_integration(&caller.owner, &id, &caller.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn own(caller: &berth_ingress::Caller, owner: &str) -> Result<(), ApiError> {
    if owner == caller.owner.as_str() {
        Ok(())
    } else {
        Err(ApiError::not_found("owner"))
    }
}

/// GET /v1/notification-settings/owners/{ownerId}
pub async fn get_notifications(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<Json<Value>, ApiError> {
    own(&caller, &owner)?;
    let n = st.ingress.owner_notifications(&caller.owner).await?;
    Ok(Json(notifications(&owner, &n)))
}

fn notifications(owner: &str, n: &OwnerNotifications) -> Value {
    json!({
        "ownerId": owner,
        "notificationsToSend": n.notify,
        "email": n.email,
        "slackConfigured": n.slack_configured,
        "webhookConfigured": n.webhook_configured,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationsBody {
    pub notifications_to_send: Option<NotifySetting>,
    pub email: Option<String>,
    /// Write-only: a Slack incoming-webhook URL ("" removes it).
    pub slack_webhook_url: Option<String>,
    /// Write-only: a generic webhook URL ("" removes it).
    pub webhook_url: Option<String>,
    /// Write-only: its Standard-Webhooks secret, `whsec_…` ("" removes it).
    pub webhook_secret: Option<String>,
}

/// PATCH /v1/notification-settings/owners/{ownerId}
pub async fn set_notifications(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
    JsonBody(body): JsonBody<NotificationsBody>,
) -> Result<Json<Value>, ApiError> {
    own(&caller, &owner)?;
    let current = st.ingress.owner_notifications(&caller.owner).await?;
    let channels = ChannelSecrets {
        slack_webhook_url: body.slack_webhook_url.map(Secret::new),
        webhook_url: body.webhook_url.map(Secret::new),
        webhook_secret: body.webhook_secret.map(Secret::new),
    };
    let wanted = OwnerNotifications {
        notify: body.notifications_to_send.unwrap_or(current.notify),
        email: body.email.or(current.email),
        ..current
    };
    let n = st
        .ingress
        .set_owner_notifications(&caller.owner, wanted, channels, &caller.actor)
        .await?;
    Ok(Json(notifications(&owner, &n)))
}

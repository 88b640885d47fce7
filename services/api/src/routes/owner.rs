//! The owner's own resources: registry credentials (SPEC §3), API keys and
//! integrations. Tokens and key secrets go in, never out (a new API key is
//! shown once, in the create answer). The owner's notification default is
//! in [`super::notifications`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_ingress::{ApiKeyView, CredentialView, IntegrationView, NewCredential, Rotation};
use berth_runtime::nats_auth::Creds;
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, CredentialId, IntegrationId};
use berth_schemas::model::RegistryKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{field, owner_matches};
use crate::app::{AppState, Authed, JsonBody, Page};
use crate::error::{ApiError, FieldError};
use crate::query::{self, Listing};

const MAX_TOKEN: usize = 8 * 1024;

fn credential_id(s: &str) -> Result<CredentialId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found("registry credential"))
}

/// A credential in Render's `RegistryCredential` shape (id, name, registry,
/// username and updatedAt, all required by Render's SDKs), plus berth's
/// `host` when it has one and its own `kind`. Never its token.
///
/// Render's clients know Render's registries only, so a `GENERIC`
/// credential (any registry, at its `host`) is answered as `DOCKER` with
/// that host: a Docker-compatible registry, which is what it is; `kind`
/// keeps berth's own name for it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialOut {
    pub id: String,
    pub name: String,
    /// Render's registry: `DOCKER`, `GITHUB`, `GITLAB`, `GOOGLE_ARTIFACT`.
    pub registry: RegistryKind,
    pub username: String,
    pub updated_at: DateTime<Utc>,
    /// berth: the registry host (always for `GENERIC`; a regional host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// berth: the registry as created (`GENERIC` as well as Render's).
    pub kind: RegistryKind,
}

fn credential(c: &CredentialView) -> CredentialOut {
    CredentialOut {
        id: c.id.to_string(),
        name: c.name.clone(),
        registry: match c.registry {
            RegistryKind::Generic => RegistryKind::Docker,
            other => other,
        },
        kind: c.registry,
        username: c.username.clone(),
        // A credential read from the log always has the time of its last
        // event; the epoch only keeps the field a time for one folded
        // without (never null: Render's SDKs parse it as a date).
        updated_at: c.updated_at.unwrap_or(DateTime::UNIX_EPOCH),
        host: c.host.clone(),
    }
}

/// Query of the credential listing: Render's filters.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub name: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub username: Vec<String>,
    /// Registries (`DOCKER`, `GITHUB`, …).
    #[serde(default, deserialize_with = "query::many", rename = "type")]
    pub types: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub updated_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub updated_before: Option<String>,
    /// Accepted and not applied: berth keeps when a credential last
    /// changed, not when it was made.
    #[serde(default, deserialize_with = "query::one")]
    pub created_after: Option<String>,
    /// Accepted and not applied (see `createdAfter`).
    #[serde(default, deserialize_with = "query::one")]
    pub created_before: Option<String>,
    /// Only the caller's own owner has credentials here.
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// The wire name of a registry (Render's, plus berth's `GENERIC`), from
/// the type's own serde names.
fn registry_name(r: RegistryKind) -> String {
    match serde_json::to_value(r) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Reads a `registry` value: one of berth's kinds, else a field error
/// (Render's `AWS_ECR` with what to use instead).
fn registry(fields: &mut Vec<FieldError>, given: Option<&str>) -> Option<RegistryKind> {
    let given = given?;
    match serde_json::from_value(Value::String(given.to_owned())) {
        Ok(r) => Some(r),
        Err(_) if given == "AWS_ECR" => {
            field(
                fields,
                "registry",
                "AWS_ECR is not supported: use GENERIC with the registry host \
                 (<account>.dkr.ecr.<region>.amazonaws.com)",
            );
            None
        }
        Err(_) => {
            field(
                fields,
                "registry",
                "must be DOCKER, GITHUB, GITLAB, GOOGLE_ARTIFACT or GENERIC",
            );
            None
        }
    }
}

/// The body of create and update: Render's fields (`registry`, `name`,
/// `username`, `authToken`, and `ownerId` on create) plus berth's `host`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBody {
    pub name: Option<String>,
    pub registry: Option<String>,
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

/// POST /v1/registrycredentials: 200 with the credential, as Render
/// answers (not 201).
pub async fn create_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<CredentialBody>,
) -> Result<Json<CredentialOut>, ApiError> {
    owner_matches(body.owner_id.as_deref(), caller.owner.as_str())?;
    let mut fields = Vec::new();
    required(&mut fields, "name", &body.name);
    required(&mut fields, "username", &body.username);
    required(&mut fields, "authToken", &body.auth_token);
    let kind = registry(&mut fields, body.registry.as_deref());
    if body.registry.is_none() {
        field(&mut fields, "registry", "is required");
    }
    token_size(&mut fields, &body.auth_token);
    let (Some(name), Some(registry), Some(username), Some(token), true) = (
        body.name,
        kind,
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
    Ok(Json(credential(&view)))
}

/// GET /v1/registrycredentials: a plain array of credentials, as Render
/// lists them (the cursor is a credential's id), by name then id.
///
/// Render's filters berth applies: `name`, `username`, `type` (registry),
/// `updatedAfter` (inclusive), `updatedBefore` (exclusive) and `ownerId`
/// (the caller's, or nothing). `createdAfter` and `createdBefore` are
/// accepted and not applied: berth keeps when a credential last changed,
/// not when it was made. Any other parameter is ignored.
pub async fn list_credentials(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<CredentialsQuery>,
) -> Result<Json<Vec<CredentialOut>>, ApiError> {
    let after = query::time("updatedAfter", q.updated_after.as_deref())?;
    let before = query::time("updatedBefore", q.updated_before.as_deref())?;
    query::time("createdAfter", q.created_after.as_deref())?;
    query::time("createdBefore", q.created_before.as_deref())?;
    let page = Page {
        limit: q.limit,
        cursor: q.cursor.filter(|c| !c.is_empty()),
    };
    page.limit()?;
    if !query::owner_selected(&q.owner_id, caller.owner.as_str()) {
        return Ok(Json(Vec::new()));
    }
    let any = |wanted: &[String], v: &str| wanted.is_empty() || wanted.iter().any(|w| w == v);
    let all = st.ingress.list_credentials(&caller).await?;
    let items = all.into_iter().map(|c| (c.id.to_string(), c)).collect();
    let keep = |c: &CredentialView| {
        any(&q.name, &c.name)
            && any(&q.username, &c.username)
            && (any(&q.types, &registry_name(c.registry))
                || any(&q.types, &registry_name(credential(c).registry)))
            && after.is_none_or(|a| c.updated_at.is_some_and(|t| t >= a))
            && before.is_none_or(|b| c.updated_at.is_some_and(|t| t < b))
    };
    Ok(Json(
        page.apply_filtered(items, keep)?
            .iter()
            .map(|(_, c)| credential(c))
            .collect(),
    ))
}

/// GET /v1/registrycredentials/{id}
pub async fn get_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<CredentialOut>, ApiError> {
    let id = credential_id(&id)?;
    Ok(Json(credential(
        &st.ingress.show_credential(&caller, &id).await?,
    )))
}

/// PATCH /v1/registrycredentials/{id}: rotates the token, and renames or
/// changes the username when those are given. Takes Render's body (all of
/// `registry`, `name`, `username`, `authToken`) as well as just the token
/// with what changes. A credential's registry (and host) stays what it was
/// made for: a `registry` or `host` other than the credential's is refused
/// (add a new credential instead); the same one is accepted.
pub async fn update_credential(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CredentialBody>,
) -> Result<Json<CredentialOut>, ApiError> {
    let id = credential_id(&id)?;
    owner_matches(body.owner_id.as_deref(), caller.owner.as_str())?;
    let mut fields = Vec::new();
    required(&mut fields, "authToken", &body.auth_token);
    token_size(&mut fields, &body.auth_token);
    let kind = registry(&mut fields, body.registry.as_deref());
    if kind.is_some() || body.host.is_some() {
        let current = st.ingress.show_credential(&caller, &id).await?;
        // A GENERIC credential reads as DOCKER to Render's clients, which
        // send that back.
        let same = |k: RegistryKind| {
            k == current.registry
                || (k == RegistryKind::Docker && current.registry == RegistryKind::Generic)
        };
        if kind.is_some_and(|k| !same(k)) {
            field(
                &mut fields,
                "registry",
                "cannot be changed; add a new credential",
            );
        }
        if body.host.is_some() && body.host != current.host {
            field(
                &mut fields,
                "host",
                "cannot be changed; add a new credential",
            );
        }
    }
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
    Ok(Json(credential(&view)))
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyBody {
    pub label: Option<String>,
}

/// POST /v1/api-keys: a new key for the caller's owner, shown once.
pub async fn create_api_key(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<ApiKeyBody>,
) -> Result<(StatusCode, Json<NewApiKey>), ApiError> {
    let label = body.label.unwrap_or_default();
    let (id, secret) = st
        .ingress
        .create_api_key(&caller.owner, &label, &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewApiKey {
            id: id.to_string(),
            label,
            key: secret.expose().to_owned(),
        }),
    ))
}

/// A new API key: its secret is shown here, once.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct NewApiKey {
    pub id: String,
    pub label: String,
    /// The bearer token.
    pub key: String,
}

/// GET /v1/api-keys: plain objects, paginated like registry credentials
/// (`limit`, `cursor` = the last key id seen).
pub async fn list_api_keys(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(page): Listing<Page>,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    let all = st.ingress.list_api_keys(&caller.owner).await?;
    let items = all.into_iter().map(|k| (k.id.to_string(), k)).collect();
    Ok(Json(
        page.apply(items)?.into_iter().map(|(_, k)| k).collect(),
    ))
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
) -> Result<(StatusCode, Json<NewIntegration>), ApiError> {
    let (view, credentials) = st
        .ingress
        .create_integration(&caller.owner, &body.name, &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewIntegration {
            integration: view,
            credentials,
        }),
    ))
}

/// A new integration and the credentials file it connects with (shown
/// once).
#[derive(Serialize, schemars::JsonSchema)]
pub struct NewIntegration {
    #[serde(flatten)]
    pub integration: IntegrationView,
    pub credentials: Creds,
}

/// GET /v1/integrations (`limit`, `cursor` = the last integration id seen).
pub async fn list_integrations(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(page): Listing<Page>,
) -> Result<Json<Vec<IntegrationView>>, ApiError> {
    let all = st.ingress.list_integrations(&caller.owner).await?;
    let items = all.into_iter().map(|i| (i.id.to_string(), i)).collect();
    Ok(Json(
        page.apply(items)?.into_iter().map(|(_, i)| i).collect(),
    ))
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

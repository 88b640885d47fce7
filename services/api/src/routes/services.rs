//! `/v1/services…`: create (image verified first, SPEC §4), list, get,
//! update, delete, and the service actions (scale, restart, suspend,
//! resume, deploy hook key) — plus cron runs and the per-service
//! notification override, which are service commands too.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_domain::timeline::{Answer, Timeline, UnknownCursor};
use berth_ingress::{NewService, Scope};
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{CredentialId, ServiceId};
use berth_schemas::model::{NotifySetting, OverlapPolicy, ServiceType};
use berth_schemas::AggregateId;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::{field, owner_matches};
use crate::app::{self, AppState, Authed, JsonBody, Page, QueryParams};
use crate::error::{ApiError, FieldError};
use crate::views;

/// Most env vars a service may have, and their sizes.
const MAX_ENV_VARS: usize = 200;
const MAX_ENV_KEY: usize = 128;
const MAX_ENV_VALUE: usize = 16 * 1024;

/// `Some(None)` for an explicit `null`, `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A service id from a path; anything unparsable does not exist.
pub fn service_id(s: &str) -> Result<ServiceId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("service"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageBody {
    pub image_path: Option<String>,
    pub registry_credential_id: Option<String>,
    /// Render sends the owner here too; it must be the caller's.
    pub owner_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVarBody {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSpecific {
    #[serde(default, deserialize_with = "nullable")]
    pub docker_command: Option<Option<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetailsBody {
    pub region: Option<String>,
    pub plan: Option<String>,
    pub num_instances: Option<u32>,
    pub health_check_path: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub pre_deploy_command: Option<Option<String>>,
    pub schedule: Option<String>,
    pub env_specific_details: Option<EnvSpecific>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub shutdown_delay_seconds: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub name: Option<String>,
    pub owner_id: Option<String>,
    pub image: Option<ImageBody>,
    pub env_vars: Option<Vec<EnvVarBody>>,
    pub service_details: Option<DetailsBody>,
    pub notify_on_fail: Option<NotifySetting>,
}

fn env_vars(vars: Vec<EnvVarBody>, fields: &mut Vec<FieldError>) -> BTreeMap<String, Secret> {
    if vars.len() > MAX_ENV_VARS {
        field(fields, "envVars", "too many variables (at most 200)");
    }
    let mut out = BTreeMap::new();
    for v in vars.into_iter().take(MAX_ENV_VARS) {
        let ok_key = !v.key.is_empty()
            && v.key.len() <= MAX_ENV_KEY
            && !v.key.starts_with(|c: char| c.is_ascii_digit())
            && v.key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_key {
            field(
                fields,
                "envVars.key",
                "must be 1-128 characters of A-Z, a-z, 0-9 and _, not starting with a digit",
            );
        } else if v.value.len() > MAX_ENV_VALUE {
            field(fields, "envVars.value", "must be at most 16 KiB");
        } else if out.insert(v.key, Secret::new(v.value)).is_some() {
            field(fields, "envVars.key", "each key may appear once");
        }
    }
    out
}

/// POST /v1/services
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let owner = caller.owner.to_string();
    owner_matches(body.owner_id.as_deref(), &owner)?;
    let mut fields = Vec::new();
    let service_type = match body.service_type.as_deref() {
        None => {
            field(&mut fields, "type", "is required");
            None
        }
        Some(t) => match serde_json::from_value::<ServiceType>(Value::String(t.to_owned())) {
            Ok(t) => Some(t),
            Err(_) => {
                field(
                    &mut fields,
                    "type",
                    "must be web_service, private_service, background_worker or cron_job",
                );
                None
            }
        },
    };
    if body.name.as_deref().is_none_or(str::is_empty) {
        field(&mut fields, "name", "is required");
    }
    let image = body.image.unwrap_or_default();
    owner_matches(image.owner_id.as_deref(), &owner)?;
    if image.image_path.as_deref().is_none_or(str::is_empty) {
        field(&mut fields, "image.imagePath", "is required");
    }
    let credential = match image.registry_credential_id.as_deref() {
        None => None,
        Some(c) => match c.parse::<CredentialId>() {
            Ok(c) => Some(c),
            Err(_) => {
                field(
                    &mut fields,
                    "image.registryCredentialId",
                    "is not a registry credential id (rgc-…)",
                );
                None
            }
        },
    };
    let details = body.service_details.unwrap_or_default();
    let plan = match details.plan.as_deref() {
        None => None,
        Some(p) => {
            let found = views::plan(p);
            if found.is_none() {
                field(&mut fields, "serviceDetails.plan", "is not a known plan");
            }
            found
        }
    };
    let env = env_vars(body.env_vars.unwrap_or_default(), &mut fields);
    let (Some(service_type), Some(name), Some(image_path), true) =
        (service_type, body.name, image.image_path, fields.is_empty())
    else {
        return Err(ApiError::fields(fields));
    };
    let mut new = NewService::new(&name, service_type, &image_path);
    new.credential = credential;
    new.region = details.region;
    new.plan = plan;
    new.num_instances = details.num_instances;
    new.docker_command = details
        .env_specific_details
        .and_then(|e| e.docker_command)
        .flatten();
    new.env_vars = env;
    new.pre_deploy_command = details.pre_deploy_command.flatten();
    new.health_check_path = details.health_check_path;
    new.schedule = details.schedule;
    new.notify = body.notify_on_fail;
    new.overlap_policy = details.overlap_policy;
    new.shutdown_delay_secs = details.shutdown_delay_seconds;
    let created = st.ingress.create_service(&caller, new).await?;
    let view = views::service(&created.id, &created.state)
        .ok_or_else(|| ApiError::not_found("service"))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "service": view,
            "deployId": created.deploy.to_string(),
            "deployHookUrl": views::hook_path(&created.id, created.hook_key.expose()),
        })),
    )
        .into_response())
}

/// GET /v1/services
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    st.caught_up().await?;
    // The page is cut from references into the index; only its services
    // are rendered.
    let limit = app::limit(page.limit.as_deref())?.unwrap_or(20);
    let page = st.read(|i| {
        i.services_page(&caller.owner, page.cursor.as_deref(), limit)
            .map(|items| {
                items
                    .into_iter()
                    .filter_map(|(id, state)| {
                        views::service(id, state).map(|v| (id.to_string(), v))
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| ApiError::field("cursor", e.to_string()))
    })??;
    Ok(Json(Value::Array(
        page.into_iter()
            .map(|(cursor, service)| json!({ "cursor": cursor, "service": service }))
            .collect(),
    )))
}

/// GET /v1/services/{id}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    views::service(&id, &state)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("service"))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateBody {
    pub name: Option<String>,
    pub image: Option<ImageBody>,
    pub env_vars: Option<Vec<EnvVarBody>>,
    pub service_details: Option<DetailsBody>,
    #[serde(default, deserialize_with = "nullable")]
    pub notify_on_fail: Option<Option<NotifySetting>>,
}

/// PATCH /v1/services/{id}
pub async fn update(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let mut fields = Vec::new();
    let mut settings = ServiceSettings {
        name: body.name,
        notify: body.notify_on_fail,
        ..ServiceSettings::default()
    };
    if let Some(image) = body.image {
        owner_matches(image.owner_id.as_deref(), caller.owner.as_str())?;
        // A credential id replaces the service's credential; "" removes it
        // (the image must then be public).
        settings.credential = match image.registry_credential_id.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(c) => match c.parse::<CredentialId>() {
                Ok(c) => Some(Some(c)),
                Err(_) => {
                    field(
                        &mut fields,
                        "image.registryCredentialId",
                        "is not a registry credential id (rgc-…), or \"\" to remove it",
                    );
                    None
                }
            },
        };
        settings.image = image.image_path;
    }
    if let Some(d) = body.service_details {
        if d.region.is_some() {
            field(&mut fields, "serviceDetails.region", "cannot be changed");
        }
        if d.num_instances.is_some() {
            field(
                &mut fields,
                "serviceDetails.numInstances",
                "use POST /v1/services/{id}/scale",
            );
        }
        if let Some(p) = d.plan.as_deref() {
            settings.plan = views::plan(p);
            if settings.plan.is_none() {
                field(&mut fields, "serviceDetails.plan", "is not a known plan");
            }
        }
        settings.health_check_path = d.health_check_path;
        settings.pre_deploy_command = d.pre_deploy_command;
        settings.schedule = d.schedule;
        settings.docker_command = d.env_specific_details.and_then(|e| e.docker_command);
        settings.overlap_policy = d.overlap_policy;
        settings.shutdown_delay_secs = d.shutdown_delay_seconds;
    }
    let env = body.env_vars.map(|v| env_vars(v, &mut fields));
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let state = st
        .ingress
        .update_service(&caller, &id, settings, env)
        .await?;
    views::service(&id, &state)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("service"))
}

/// DELETE /v1/services/{id}
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.delete_service(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleBody {
    pub num_instances: Option<u32>,
}

/// POST /v1/services/{id}/scale
pub async fn scale(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    let n = body
        .num_instances
        .ok_or_else(|| ApiError::field("numInstances", "is required"))?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    st.ingress
        .scale(Scope::Owner(&caller), &id, n, &request)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// POST /v1/services/{id}/restart
pub async fn restart(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    st.ingress
        .restart(Scope::Owner(&caller), &id, &request)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// POST /v1/services/{id}/suspend
pub async fn suspend(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.suspend(&caller, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// POST /v1/services/{id}/resume
pub async fn resume(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.resume(&caller, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// GET /v1/services/{id}/deploy-hook: the hook URL (path) with its key.
pub async fn hook(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let key = st.ingress.hook_key(&caller, &id).await?;
    Ok(Json(json!({ "url": views::hook_path(&id, key.expose()) })))
}

/// POST /v1/services/{id}/deploy-hook/regenerate: a new key; the old URL
/// stops working.
pub async fn regenerate_hook(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let key = st.ingress.regenerate_hook_key(&caller, &id).await?;
    Ok(Json(json!({ "url": views::hook_path(&id, key.expose()) })))
}

/// POST /v1/cron-jobs/{id}/runs: a manual run (an active run is canceled).
pub async fn trigger_cron(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<Response, ApiError> {
    let id = service_id(&id)?;
    let run = st.ingress.trigger_cron_run(&caller, &id).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": run.to_string() }))).into_response())
}

/// DELETE /v1/cron-jobs/{id}/runs: cancels the active run, if any.
pub async fn cancel_cron(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.cancel_cron_run(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/services/{id}/events`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// Comma-separated event types (`deploy_ended,image_pull_failed`).
    #[serde(rename = "type")]
    pub types: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

fn time(field: &str, v: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    v.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| ApiError::field(field, "must be an RFC 3339 time"))
    })
    .transpose()
}

/// GET /v1/services/{id}/events: the service's timeline (Render's event
/// types), newest first, as `[{cursor, event}]`.
pub async fn events(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let limit = app::limit(q.limit.as_deref())?;
    let mut types = std::collections::BTreeSet::new();
    for t in q.types.as_deref().unwrap_or_default().split(',') {
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        if !berth_domain::timeline::TYPES.contains(&t) {
            return Err(ApiError::field("type", "is not a service event type"));
        }
        types.insert(t.to_owned());
    }
    let query = berth_domain::timeline::Query {
        types,
        start_time: time("startTime", q.start_time.as_deref())?,
        end_time: time("endTime", q.end_time.as_deref())?,
        cursor: q.cursor,
        limit,
    };
    st.caught_up().await?;
    let answer = st.read(|i| i.owns(&caller.owner, &id).then(|| i.timeline(&id, &query)))?;
    let cursor = |e: UnknownCursor| ApiError::field("cursor", e.to_string());
    let page = match answer
        .ok_or_else(|| ApiError::not_found("service"))?
        .map_err(cursor)?
    {
        Answer::Page(page) => page,
        Answer::NeedsHistory => {
            // Older than the entries held: the service's whole history.
            let history = st
                .ingress
                .store()
                .load(&AggregateId::Service(id.clone()))
                .await
                .map_err(|e| ApiError::from(berth_ingress::IngressError::Store(e.to_string())))?;
            Timeline::of_history(&history.events)
                .query(&id, &query)
                .map_err(cursor)?
        }
    };
    Ok(Json(Value::Array(
        page.events
            .into_iter()
            .map(|e| json!({ "cursor": e.id.clone(), "event": e }))
            .collect(),
    )))
}

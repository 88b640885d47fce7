//! `/v1/services/{id}/deploys…` and `/rollback`: list, get, create (the
//! service's image or another tag/digest of its repository), cancel, and
//! roll back to an earlier deploy's recorded digest (SPEC §6, §7).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_domain::service::ServiceState;
use berth_ingress::Scope;
use berth_schemas::ids::DeployId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::services::service_id;
use crate::app::{AppState, Authed, JsonBody, Page, QueryParams};
use crate::error::ApiError;
use crate::views::DeployView;

fn deploy_id(s: &str) -> Result<DeployId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("deploy"))
}

/// `deploy` of the service as the API shows it.
fn view(state: &ServiceState, deploy: &DeployId) -> Result<DeployView, ApiError> {
    state
        .deploy(deploy)
        .map(DeployView::of)
        .ok_or_else(|| ApiError::not_found("deploy"))
}

/// GET /v1/services/{id}/deploys, newest first.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    let id = service_id(&id)?;
    let mut state = st.ingress.show_service(&caller, &id).await?;
    if state.forgotten_deploys > 0
        && !page.served_by(state.deploys.iter().rev().map(|d| d.id.as_str()))?
    {
        // The page reaches past the deploys the service holds.
        state = st.ingress.service_with_every_deploy(&caller, &id).await?;
    }
    let items = state
        .deploys
        .iter()
        .rev()
        .map(|d| (d.id.to_string(), DeployView::of(d)))
        .collect();
    Ok(Json(Value::Array(
        page.apply(items)?
            .into_iter()
            .map(|(cursor, deploy)| json!({ "cursor": cursor, "deploy": deploy }))
            .collect(),
    )))
}

/// GET /v1/services/{id}/deploys/{deployId}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, deploy)): Path<(String, String)>,
) -> Result<Json<DeployView>, ApiError> {
    let id = service_id(&id)?;
    let deploy = deploy_id(&deploy)?;
    let mut state = st.ingress.show_service(&caller, &id).await?;
    if state.deploy(&deploy).is_none() && state.forgotten_deploys > 0 {
        state = st.ingress.service_with_every_deploy(&caller, &id).await?;
    }
    view(&state, &deploy).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    pub image_url: Option<String>,
    /// Render's field; berth keeps no build cache, so it changes nothing.
    pub clear_cache: Option<String>,
}

/// 201 with the deploy a create or rollback just appended.
fn created(state: &ServiceState, deploy: &DeployId) -> Result<Response, ApiError> {
    Ok((StatusCode::CREATED, Json(view(state, deploy)?)).into_response())
}

/// POST /v1/services/{id}/deploys
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let id = service_id(&id)?;
    if let Some(c) = body.clear_cache.as_deref() {
        if c != "clear" && c != "do_not_clear" {
            return Err(ApiError::field(
                "clearCache",
                "must be clear or do_not_clear",
            ));
        }
    }
    let (deploy, state) = st
        .ingress
        .deploy(Scope::Owner(&caller), &id, body.image_url.as_deref(), None)
        .await?;
    created(&state, &deploy)
}

/// POST /v1/services/{id}/deploys/{deployId}/cancel
pub async fn cancel(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, deploy)): Path<(String, String)>,
) -> Result<Json<DeployView>, ApiError> {
    let id = service_id(&id)?;
    let deploy = deploy_id(&deploy)?;
    let state = st.ingress.cancel_deploy(&caller, &id, &deploy).await?;
    view(&state, &deploy).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackBody {
    pub deploy_id: Option<String>,
}

/// POST /v1/services/{id}/rollback `{deployId}`
pub async fn rollback(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, ApiError> {
    let id = service_id(&id)?;
    let target = body
        .deploy_id
        .ok_or_else(|| ApiError::field("deployId", "is required"))?;
    let target: DeployId = target
        .parse()
        .map_err(|_| ApiError::field("deployId", "is not a deploy id (dep-…)"))?;
    let (deploy, state) = st.ingress.rollback(&caller, &id, &target).await?;
    created(&state, &deploy)
}

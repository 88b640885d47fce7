//! `/v1/services/{id}/deploys…` and `/rollback`: list, get, create (the
//! service's image or another tag/digest of its repository), cancel, and
//! roll back to an earlier deploy's recorded digest (SPEC §6, §7).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::service::ServiceState;
use berth_ingress::Scope;
use berth_schemas::ids::DeployId;
use berth_schemas::model::DeployStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::services::service_id;
use crate::app::{AppState, Authed, JsonBody, Page};
use crate::error::ApiError;
use crate::query::{self, Between, Listing};
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

/// Query of `GET /v1/services/{id}/deploys`: Render's filters, all
/// honoured.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploysQuery {
    /// Deploy statuses (repeated or comma-separated).
    #[serde(default, deserialize_with = "query::many")]
    pub status: Vec<String>,
    /// The creation and update bounds.
    #[serde(flatten)]
    pub changed: query::Changed,
    #[serde(default, deserialize_with = "query::one")]
    pub finished_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub finished_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// What a listed deploy must match.
struct DeployFilter {
    statuses: Vec<DeployStatus>,
    created: Between,
    updated: Between,
    finished: Between,
}

impl DeployFilter {
    fn of(q: &DeploysQuery) -> Result<Self, ApiError> {
        let statuses = q
            .status
            .iter()
            .map(|s| {
                serde_json::from_value::<DeployStatus>(Value::String(s.clone()))
                    .map_err(|_| ApiError::field("status", "is not a deploy status"))
            })
            .collect::<Result<_, _>>()?;
        let (created, updated) = q.changed.bounds()?;
        Ok(DeployFilter {
            statuses,
            created,
            updated,
            finished: Between::of(
                ("finishedAfter", q.finished_after.as_deref()),
                ("finishedBefore", q.finished_before.as_deref()),
            )?,
        })
    }

    fn is_empty(&self) -> bool {
        self.statuses.is_empty()
            && [self.created, self.updated, self.finished]
                .iter()
                .all(Between::is_open)
    }

    fn keeps(&self, d: &DeployView) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&d.status))
            && self.created.holds(d.created_at)
            && self.updated.holds(d.updated_at)
            && self.finished.holds(d.finished_at)
    }
}

/// GET /v1/services/{id}/deploys, newest first.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<DeploysQuery>,
) -> Result<Json<Vec<DeployItem>>, ApiError> {
    let id = service_id(&id)?;
    let filter = DeployFilter::of(&q)?;
    let page = Page {
        limit: q.limit,
        cursor: q.cursor,
    };
    let mut state = st.ingress.show_service(&caller, &id).await?;
    if state.forgotten_deploys > 0
        && (!filter.is_empty()
            || !page.served_by(state.deploys.iter().rev().map(|d| d.id.as_str()))?)
    {
        // The page reaches past the deploys the service holds.
        state = st.ingress.service_with_every_deploy(&caller, &id).await?;
    }
    let items = state
        .deploys
        .iter()
        .rev()
        .map(|d| (d.id.to_string(), DeployView::of(d)))
        .filter(|(_, d)| filter.keeps(d))
        .collect();
    Ok(Json(
        page.apply(items)?
            .into_iter()
            .map(|(cursor, deploy)| DeployItem { deploy, cursor })
            .collect(),
    ))
}

/// A deploy in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DeployItem {
    pub deploy: DeployView,
    pub cursor: String,
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "DeployPOST")]
pub struct CreateBody {
    pub image_url: Option<String>,
    /// Render's field; berth keeps no build cache, so it changes nothing.
    pub clear_cache: Option<String>,
    /// Render's `deploy_only` / `build_and_deploy`: berth builds nothing,
    /// so both deploy the image.
    pub deploy_mode: Option<String>,
    /// Render's builds and commits: refused, berth builds nothing.
    #[schemars(with = "Option<String>")]
    pub build_id: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub commit_id: Option<Value>,
}

/// 201 with the deploy a create or rollback just appended.
fn created(
    state: &ServiceState,
    deploy: &DeployId,
) -> Result<(StatusCode, Json<DeployView>), ApiError> {
    Ok((StatusCode::CREATED, Json(view(state, deploy)?)))
}

/// POST /v1/services/{id}/deploys
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<DeployView>), ApiError> {
    let id = service_id(&id)?;
    if let Some(c) = body.clear_cache.as_deref() {
        if c != "clear" && c != "do_not_clear" {
            return Err(ApiError::field(
                "clearCache",
                "must be clear or do_not_clear",
            ));
        }
    }
    if let Some(m) = body.deploy_mode.as_deref() {
        if m != "deploy_only" && m != "build_and_deploy" {
            return Err(ApiError::field(
                "deployMode",
                "must be deploy_only or build_and_deploy",
            ));
        }
    }
    for (name, v) in [("buildId", &body.build_id), ("commitId", &body.commit_id)] {
        if v.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::field(
                name,
                "berth deploys prebuilt images: give imageUrl",
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
) -> Result<(StatusCode, Json<DeployView>), ApiError> {
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

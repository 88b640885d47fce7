//! `/v1/services/{id}/jobs`: Render's one-off jobs. A job runs its start
//! command once in a container of the service's live image, with the
//! service's environment, on the service's instance type or the one asked
//! for; a cron component starts it on a node with room. The service holds
//! its most recent jobs ([`berth_domain::service::KEPT_JOBS`]); a page or
//! a job past them is read from the log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::service::{job_instance, Job, JobStatus, ServiceState};
use berth_schemas::ids::JobId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::services::{service_id, Empty};
use crate::app::{AppState, Authed, JsonBody, Page};
use crate::error::ApiError;
use crate::query::{self, Listing};
use crate::views;

/// A job, as Render shows it, with berth's facts beside.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub service_id: String,
    pub start_command: String,
    /// The instance type it runs on.
    pub plan_id: String,
    /// `pending`, `running`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// berth: its exit code, once it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// berth: why it failed, when the exit code does not say (out of
    /// memory, timed out, no node had room, the image was not pulled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// berth: the image digest it runs.
    pub digest: String,
    /// berth: the instance id its container runs as, which its lines in
    /// the service's logs carry (`GET /v1/logs?instance=…`).
    pub instance_id: String,
    /// berth: the node it was given to, once placed (`GET /v1/nodes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl JobView {
    fn of(service: &str, j: &Job) -> JobView {
        JobView {
            id: j.id.to_string(),
            service_id: service.to_owned(),
            start_command: j.start_command.clone(),
            plan_id: j.plan.name.clone(),
            status: j.status.as_str().to_owned(),
            created_at: j.created_at.unwrap_or_default(),
            started_at: j.started_at,
            finished_at: j.finished_at,
            exit_code: j.exit_code,
            reason: j.reason.clone(),
            digest: j.digest.clone(),
            instance_id: job_instance(&j.id).to_string(),
            node_id: j.node.as_ref().map(ToString::to_string),
        }
    }
}

/// A job in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct JobItem {
    pub job: JobView,
    pub cursor: String,
}

/// Body of `POST /v1/services/{id}/jobs`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "JobPOST")]
pub struct CreateJobBody {
    /// Run as the service's own command would be (split as a shell would
    /// split it, no shell run unless it names one).
    pub start_command: String,
    /// An instance type (`starter`, `standard`, …); the service's own when
    /// absent.
    pub plan_id: Option<String>,
}

/// Query of `GET /v1/services/{id}/jobs`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobsQuery {
    /// Job statuses (repeated or comma-separated).
    #[serde(default, deserialize_with = "query::many")]
    pub status: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub created_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub created_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub started_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub started_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub finished_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub finished_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

fn job_id(s: &str) -> Result<JobId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("job"))
}

/// `job` of `state` as the API shows it.
fn view(id: &str, state: &ServiceState, job: &JobId) -> Result<JobView, ApiError> {
    state
        .jobs
        .get(job)
        .map(|j| JobView::of(id, j))
        .ok_or_else(|| ApiError::not_found("job"))
}

/// POST /v1/services/{id}/jobs: 201 with the job, pending.
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateJobBody>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let id = service_id(&id)?;
    let plan = match body.plan_id.as_deref() {
        None => None,
        Some(name) => Some(views::plan(name).ok_or_else(|| {
            ApiError::field("planId", "is not an instance type (starter, standard, …)")
        })?),
    };
    let (job, state) = st
        .ingress
        .create_job(&caller, &id, body.start_command, plan)
        .await?;
    Ok((StatusCode::CREATED, Json(view(id.as_str(), &state, &job)?)))
}

/// GET /v1/services/{id}/jobs: the service's recent jobs, newest first,
/// as `[{job, cursor}]`, with Render's filters.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<JobsQuery>,
) -> Result<Json<Vec<JobItem>>, ApiError> {
    let id = service_id(&id)?;
    let statuses = q
        .status
        .iter()
        .map(|s| {
            serde_json::from_value::<JobStatus>(serde_json::Value::String(s.clone()))
                .map_err(|_| ApiError::field("status", "is not a job status"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let created = query::Between::of(
        ("createdAfter", q.created_after.as_deref()),
        ("createdBefore", q.created_before.as_deref()),
    )?;
    let started = query::Between::of(
        ("startedAfter", q.started_after.as_deref()),
        ("startedBefore", q.started_before.as_deref()),
    )?;
    let finished = query::Between::of(
        ("finishedAfter", q.finished_after.as_deref()),
        ("finishedBefore", q.finished_before.as_deref()),
    )?;
    let page = Page {
        limit: q.limit,
        cursor: q.cursor,
    };
    let filtered =
        !statuses.is_empty() || [created, started, finished].iter().any(|b| !b.is_open());
    let mut state = st.ingress.show_service(&caller, &id).await?;
    if state.jobs.forgotten > 0
        && (filtered || !page.served_by(state.jobs.newest_first().map(|j| j.id.as_str()))?)
    {
        // The page reaches past the jobs the service holds.
        state = st.ingress.service_with_every_deploy(&caller, &id).await?;
    }
    let items = state
        .jobs
        .newest_first()
        .filter(|j| statuses.is_empty() || statuses.contains(&j.status))
        .filter(|j| {
            created.holds(j.created_at)
                && started.holds(j.started_at)
                && finished.holds(j.finished_at)
        })
        .map(|j| (j.id.to_string(), JobView::of(id.as_str(), j)))
        .collect();
    Ok(Json(
        page.apply(items)?
            .into_iter()
            .map(|(cursor, job)| JobItem { job, cursor })
            .collect(),
    ))
}

/// GET /v1/services/{id}/jobs/{jobId}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, job)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    let id = service_id(&id)?;
    let job = job_id(&job)?;
    let mut state = st.ingress.show_service(&caller, &id).await?;
    if state.jobs.get(&job).is_none() && state.jobs.forgotten > 0 {
        state = st.ingress.service_with_every_deploy(&caller, &id).await?;
    }
    view(id.as_str(), &state, &job).map(Json)
}

/// POST /v1/services/{id}/jobs/{jobId}/cancel: the job, canceled unless
/// it had ended already.
pub async fn cancel(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, job)): Path<(String, String)>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<Json<JobView>, ApiError> {
    let id = service_id(&id)?;
    let job = job_id(&job)?;
    let state = st.ingress.cancel_job(&caller, &id, &job).await?;
    view(id.as_str(), &state, &job).map(Json)
}

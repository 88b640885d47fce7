//! `/v1/cron-jobs/{id}/runs`: trigger a cron job's run now (Render's
//! POST), cancel its active run (Render's DELETE), and list its runs
//! (berth's GET, in the listing shape of Render's other routes). Runs are
//! read from the service's timeline: a run's start and end are events
//! there, so a listing needs no state of its own.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::timeline::{Answer, Query, TimelineEvent, UnknownCursor};
use berth_schemas::model::ServiceType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{shown, whole_timeline};
use super::services::{service_id, Empty};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// A cron job run, as Render shows it, with berth's facts beside.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronRunView {
    pub id: String,
    /// `pending` until it ends: `successful`, `unsuccessful`, `canceled`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Who started it: `api` for a manual run, else `schedule`.
    pub triggered_by: String,
    /// berth: `running`, then how it ended: `succeeded`, `failed`,
    /// `canceled` or `timed_out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
    /// berth: the run's exit code, once it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// berth: why it failed or timed out, when its exit code does not say
    /// (its program cannot run, out of memory, no node had room, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// berth: the image digest it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// berth: the node the run is given to, while it is the active run
    /// and once placed (`GET /v1/nodes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// A run in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronRunItem {
    pub cron_job_run: CronRunView,
    pub cursor: String,
}

/// Query of `GET /v1/cron-jobs/{id}/runs`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunsQuery {
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The runs whose starts are `starts` (newest first), each with its end
/// when `all` holds it (`all`: entries of the timeline the starts come
/// from, every end after the oldest start among them), and the active
/// run's node (`placed`: the run and its node).
fn runs(
    starts: &[TimelineEvent],
    all: &[TimelineEvent],
    placed: Option<&(String, String)>,
) -> Vec<CronRunItem> {
    let ends: HashMap<String, &TimelineEvent> = all
        .iter()
        .filter(|e| e.kind == "cron_job_run_ended")
        .filter_map(|e| Some((text(&e.details, "cronJobRunId")?, e)))
        .collect();
    starts
        .iter()
        .filter_map(|start| {
            let id = text(&start.details, "cronJobRunId")?;
            let end = ends.get(&id);
            let manual = start.details.get("manual").and_then(Value::as_bool) == Some(true);
            Some(CronRunItem {
                cursor: start.id.clone(),
                cron_job_run: CronRunView {
                    status: end
                        .and_then(|e| text(&e.details, "status"))
                        .unwrap_or_else(|| "pending".to_owned()),
                    started_at: Some(start.timestamp),
                    finished_at: end.map(|e| e.timestamp),
                    triggered_by: if manual { "api" } else { "schedule" }.to_owned(),
                    run_status: Some(
                        end.and_then(|e| text(&e.details, "runStatus"))
                            .unwrap_or_else(|| "running".to_owned()),
                    ),
                    exit_code: end.and_then(|e| e.details.get("exitCode")?.as_i64()),
                    reason: end.and_then(|e| text(&e.details, "message")),
                    digest: text(&start.details, "digest"),
                    node_id: placed
                        .filter(|(run, _)| *run == id && end.is_none())
                        .map(|(_, node)| node.clone()),
                    id,
                },
            })
        })
        .collect()
}

/// GET /v1/cron-jobs/{id}/runs: the cron job's runs, newest first, as
/// `[{cronJobRun, cursor}]`.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<RunsQuery>,
) -> Result<Json<Vec<CronRunItem>>, ApiError> {
    let id = service_id(&id)?;
    let query = Query {
        types: BTreeSet::from(["cron_job_run_started".to_owned()]),
        cursor: q.cursor,
        limit: app::limit(q.limit.as_deref())?,
        ..Query::default()
    };
    let cursor = |e: UnknownCursor| ApiError::field("cursor", e.to_string());
    st.caught_up().await?;
    let held = st.read(|i| {
        let state = i
            .service(&caller.owner, &id)
            .ok_or_else(|| ApiError::not_found("service"))?;
        if state.config.as_ref().map(|c| c.service_type) != Some(ServiceType::CronJob) {
            return Err(ApiError::field("type", "only cron jobs have runs"));
        }
        let placed = state.cron.active.as_ref().and_then(|run| {
            let node = run.node.as_ref()?;
            Some((run.id.to_string(), node.to_string()))
        });
        let page = match i.timeline(&id, &query).map_err(cursor)? {
            // The page's starts, and the ends between the oldest of them
            // and the next start after the newest: every end a start of
            // the page can have. One run is active at a time, so a run
            // ends before the next one starts (a manual run's start and
            // the end of the run it cancels share a commit); a deep page
            // reads the ends of its own runs, not every end since.
            Answer::Page(page) => {
                let seqs = || page.entries.iter().map(|e| e.seq);
                let oldest = seqs().min().unwrap_or(u64::MAX);
                let newest = seqs().max().unwrap_or(u64::MAX);
                let next_start = i
                    .timeline_after(&id, newest, "cron_job_run_started")
                    .first()
                    .map_or(u64::MAX, |e| e.seq);
                let mut ends = i.timeline_after(&id, oldest, "cron_job_run_ended");
                ends.retain(|e| e.seq <= next_start);
                Some((page.entries, ends))
            }
            Answer::NeedsHistory => None,
        };
        Ok((page, placed))
    })??;
    let (held, placed) = held;
    if let Some((starts, ends)) = held {
        let (starts, ends) = tokio::try_join!(shown(&st, &starts), shown(&st, &ends))?;
        return Ok(Json(runs(&starts, &ends, placed.as_ref())));
    }
    // Older than the entries held: the service's whole history.
    let timeline = whole_timeline(&st, &id).await?;
    let page = timeline.query(&query).map_err(cursor)?;
    Ok(Json(runs(&page.events, timeline.all(), placed.as_ref())))
}

/// POST /v1/cron-jobs/{id}/runs: a manual run (an active run is
/// canceled); 200 with the run, as Render answers.
pub async fn trigger(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<Json<CronRunView>, ApiError> {
    let id = service_id(&id)?;
    let run = st.ingress.trigger_cron_run(&caller, &id).await?;
    Ok(Json(CronRunView {
        id: run.to_string(),
        status: "pending".to_owned(),
        started_at: None,
        finished_at: None,
        triggered_by: "api".to_owned(),
        run_status: None,
        exit_code: None,
        reason: None,
        digest: None,
        node_id: None,
    }))
}

/// DELETE /v1/cron-jobs/{id}/runs: cancels the active run, if any.
pub async fn cancel(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.cancel_cron_run(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, kind: &str, details: Value) -> TimelineEvent {
        TimelineEvent {
            id: id.to_owned(),
            timestamp: Utc::now(),
            service_id: "srv-x".to_owned(),
            kind: kind.to_owned(),
            details,
        }
    }

    #[test]
    fn a_run_is_its_start_with_its_end_when_there_is_one() {
        let all = vec![
            entry(
                "evt-1",
                "cron_job_run_started",
                json!({"cronJobRunId": "crn-1", "digest": "sha256:a", "manual": false}),
            ),
            entry(
                "evt-2",
                "cron_job_run_ended",
                json!({"cronJobRunId": "crn-1", "status": "unsuccessful", "runStatus": "failed", "exitCode": 3, "message": "out of memory"}),
            ),
            entry(
                "evt-3",
                "cron_job_run_started",
                json!({"cronJobRunId": "crn-2", "digest": "sha256:a", "manual": true}),
            ),
        ];
        let starts = vec![all[2].clone(), all[0].clone()];
        // The active run's node is shown on it only (a node recorded for
        // a run that ended is not the active run's).
        let placed = ("crn-2".to_owned(), "nod-a".to_owned());
        let got = runs(&starts, &all, Some(&placed));
        assert_eq!(got[0].cron_job_run.node_id.as_deref(), Some("nod-a"));
        assert_eq!(got[1].cron_job_run.node_id, None);
        let stale = ("crn-1".to_owned(), "nod-a".to_owned());
        assert_eq!(
            runs(&starts, &all, Some(&stale))[1].cron_job_run.node_id,
            None
        );
        let running = &got[0].cron_job_run;
        assert_eq!(
            (running.id.as_str(), running.status.as_str()),
            ("crn-2", "pending")
        );
        assert_eq!(running.run_status.as_deref(), Some("running"));
        assert_eq!(running.triggered_by, "api");
        assert!(running.finished_at.is_none() && running.exit_code.is_none());
        assert_eq!(running.reason, None);
        let ended = &got[1].cron_job_run;
        assert_eq!(
            (ended.id.as_str(), ended.status.as_str()),
            ("crn-1", "unsuccessful")
        );
        assert_eq!(ended.run_status.as_deref(), Some("failed"));
        assert_eq!(
            (ended.exit_code, ended.triggered_by.as_str()),
            (Some(3), "schedule")
        );
        assert_eq!(ended.digest.as_deref(), Some("sha256:a"));
        assert_eq!(ended.reason.as_deref(), Some("out of memory"));
        assert_eq!(got[1].cursor, "evt-1");
    }
}

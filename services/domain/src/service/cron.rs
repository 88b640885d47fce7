//! A cron job's runs (SPEC §10): starting, skipping, canceling and ending
//! them, and the `apply` of the run events. A run runs the live deploy's
//! digest; only the active run and the latest ended one are kept.

use berth_schemas::events::{
    CronJobRunEnded, CronJobRunPlaced, CronJobRunSkipped, CronJobRunStarted,
};
use berth_schemas::ids::{CronRunId, NodeId};
use berth_schemas::model::ServiceType;
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deploys::config;
use super::state::{ServiceState, ServiceStatus};
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// How a cron run may end.
pub const CRON_RUN_STATUSES: [&str; 4] = ["succeeded", "failed", "canceled", "timed_out"];

/// A cron run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronRun {
    pub id: CronRunId,
    pub digest: String,
    pub manual: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// The node it was given to, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// A cron job's runs. Only the active run and the most recent ended one are
/// kept: a job running every minute would otherwise grow its state without
/// bound; the full history is in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronState {
    pub active: Option<CronRun>,
    pub last_ended: Option<CronRunId>,
    /// The most recent skipped schedule time, so a repeated skip is not
    /// recorded twice.
    pub last_skipped: Option<DateTime<Utc>>,
    pub runs_started: u64,
}

fn require_cron(state: &ServiceState) -> Result<(), DomainError> {
    if config(state)?.service_type != ServiceType::CronJob {
        return Err(DomainError::invalid("type", "only cron jobs have runs"));
    }
    Ok(())
}

pub(super) fn start_cron_run(
    state: &ServiceState,
    run: CronRunId,
    manual: bool,
    scheduled_for: Option<DateTime<Utc>>,
) -> Decision {
    require_cron(state)?;
    let cron = &state.cron;
    if cron.active.as_ref().map(|r| &r.id) == Some(&run) || cron.last_ended.as_ref() == Some(&run) {
        return Ok(vec![]);
    }
    if !manual && scheduled_for.is_none() {
        return Err(DomainError::invalid(
            "scheduledFor",
            "a scheduled run needs the time it was scheduled for",
        ));
    }
    if state.status == ServiceStatus::Suspended {
        return Err(DomainError::conflict("cron job is suspended"));
    }
    let Some(digest) = state.current_digest() else {
        return Err(DomainError::conflict(
            "cron job has no live deploy yet, so no image to run",
        ));
    };
    let started: Event = CronJobRunStarted {
        run,
        digest: digest.to_owned(),
        manual,
    }
    .into();
    match (&cron.active, scheduled_for) {
        (None, _) => Ok(vec![started]),
        // "Trigger run" cancels the active run and starts a new one (SPEC §10).
        (Some(active), _) if manual => Ok(vec![
            CronJobRunEnded {
                run: active.id.clone(),
                status: "canceled".to_owned(),
                exit_code: None,
                reason: None,
            }
            .into(),
            started,
        ]),
        (Some(_), Some(at)) if cron.last_skipped == Some(at) => Ok(vec![]),
        (Some(active), Some(at)) => Ok(vec![CronJobRunSkipped {
            scheduled_for: at,
            active_run: active.id.clone(),
        }
        .into()]),
        (Some(_), None) => Ok(vec![]),
    }
}

pub(super) fn cancel_cron_run(state: &ServiceState, run: &CronRunId) -> Decision {
    require_cron(state)?;
    match &state.cron.active {
        Some(active) if &active.id == run => Ok(vec![CronJobRunEnded {
            run: run.clone(),
            status: "canceled".to_owned(),
            exit_code: None,
            reason: None,
        }
        .into()]),
        _ if state.cron.last_ended.as_ref() == Some(run) => Ok(vec![]),
        _ => Err(DomainError::not_found("cron run", run)),
    }
}

pub(super) fn cron_run_ended(
    state: &ServiceState,
    run: &CronRunId,
    status: String,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> Decision {
    require_cron(state)?;
    if !CRON_RUN_STATUSES.contains(&status.as_str()) {
        return Err(DomainError::invalid(
            "status",
            format!("must be one of {}", CRON_RUN_STATUSES.join(", ")),
        ));
    }
    // Only the active run can end; a report about an earlier one (canceled,
    // replaced by a manual trigger) is late and changes nothing.
    match &state.cron.active {
        Some(active) if &active.id == run => Ok(vec![CronJobRunEnded {
            run: run.clone(),
            status,
            exit_code,
            reason,
        }
        .into()]),
        _ => Ok(vec![]),
    }
}

/// Records that the active run `run` was given to `node`; a run no longer
/// active, or already recorded on that node, changes nothing.
pub(super) fn cron_run_placed(state: &ServiceState, run: &CronRunId, node: NodeId) -> Decision {
    require_cron(state)?;
    match &state.cron.active {
        Some(active) if &active.id == run && active.node.as_ref() != Some(&node) => {
            Ok(vec![CronJobRunPlaced {
                run: run.clone(),
                node,
            }
            .into()])
        }
        _ => Ok(vec![]),
    }
}

/// Applies a cron run event; any other leaves `s` unchanged.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    match event {
        Event::CronJobRunStarted(e) if s.cron.active.is_none() => {
            s.cron.active = Some(CronRun {
                id: e.run.clone(),
                digest: e.digest.clone(),
                manual: e.manual,
                started_at: time,
                node: None,
            });
            s.cron.runs_started += 1;
        }
        Event::CronJobRunEnded(e) if s.cron.active.as_ref().map(|r| &r.id) == Some(&e.run) => {
            s.cron.active = None;
            s.cron.last_ended = Some(e.run.clone());
        }
        Event::CronJobRunSkipped(e) => {
            s.cron.last_skipped = Some(e.scheduled_for);
        }
        Event::CronJobRunPlaced(e) => {
            if let Some(active) = s.cron.active.as_mut().filter(|a| a.id == e.run) {
                active.node = Some(e.node.clone());
            }
        }
        _ => {}
    }
}

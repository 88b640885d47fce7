//! A service's one-off jobs (Render's jobs): a command run once in a
//! container of the live deploy's image, with the service's env and an
//! instance type of its own. Asked for (`job_created`, pending), started
//! by a node (`job_started`, running), ended (`job_ended`: succeeded,
//! failed or canceled). Several may run at once, at most
//! [`MAX_ACTIVE_JOBS`]; the service keeps its [`KEPT_JOBS`] most recent
//! (ended ones go first), the rest are in the log (a fold keeping every
//! deploy keeps every job: what a look past the recent ones reads).

use std::collections::VecDeque;

use berth_schemas::events::{JobCreated, JobEnded, JobPlaced, JobStarted};
use berth_schemas::ids::{InstanceId, JobId, NodeId};
use berth_schemas::model::Plan;
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::{ServiceState, ServiceStatus};
use super::validate;
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// Jobs of one service pending or running at once.
pub const MAX_ACTIVE_JOBS: usize = 16;
/// Jobs a service keeps (pending, running and the most recent ended).
pub const KEPT_JOBS: usize = 100;
/// The longest start command, in bytes.
pub const MAX_START_COMMAND: usize = 4096;

/// The container (instance) a job runs as: the job id's random part under
/// the instance prefix, so anyone holding the job id can stop its
/// container or read its logs.
pub fn job_instance(job: &JobId) -> InstanceId {
    InstanceId::from_bits(job.bits())
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    /// Render's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Pending or running.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    fn ended(status: &str) -> Option<JobStatus> {
        match status {
            "succeeded" => Some(JobStatus::Succeeded),
            "failed" => Some(JobStatus::Failed),
            "canceled" => Some(JobStatus::Canceled),
            _ => None,
        }
    }
}

/// One job as the service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub start_command: String,
    pub plan: Plan,
    pub digest: String,
    pub status: JobStatus,
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node it was given to, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// A service's recent jobs, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Jobs {
    held: VecDeque<Job>,
    /// Ended jobs no longer held here (the oldest, beyond [`KEPT_JOBS`]);
    /// the log still has them (a fold keeping every deploy keeps every
    /// job too: `ServiceState::keeping_every_deploy`).
    #[serde(default)]
    pub forgotten: u64,
}

impl Jobs {
    /// One job, if still kept.
    pub fn get(&self, id: &JobId) -> Option<&Job> {
        self.held.iter().find(|j| &j.id == id)
    }

    /// Every kept job, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Job> {
        self.held.iter().rev()
    }

    /// The pending and running jobs.
    pub fn active(&self) -> impl Iterator<Item = &Job> {
        self.held.iter().filter(|j| j.status.is_active())
    }

    fn get_mut(&mut self, id: &JobId) -> Option<&mut Job> {
        self.held.iter_mut().find(|j| &j.id == id)
    }

    /// Adds `job`, then (unless `every`) lets the oldest ended jobs past
    /// [`KEPT_JOBS`] go.
    fn push(&mut self, job: Job, every: bool) {
        self.held.push_back(job);
        while !every && self.held.len() > KEPT_JOBS {
            match self.held.iter().position(|j| !j.status.is_active()) {
                Some(i) => {
                    self.held.remove(i);
                    self.forgotten += 1;
                }
                None => break,
            }
        }
    }
}

/// Ask for a job: `start_command` on `plan` (the service's own when
/// `None`), of the live deploy's image.
pub(super) fn create(
    state: &ServiceState,
    job: JobId,
    start_command: String,
    plan: Option<Plan>,
) -> Decision {
    let cfg = super::deploys::config(state)?;
    if state.jobs.get(&job).is_some() {
        return Ok(vec![]);
    }
    let command = start_command.trim();
    if command.is_empty() || start_command.len() > MAX_START_COMMAND {
        return Err(DomainError::invalid(
            "startCommand",
            format!("must be 1–{MAX_START_COMMAND} bytes and not blank"),
        ));
    }
    validate::command("startCommand", command)?;
    let plan = plan.unwrap_or_else(|| cfg.plan.clone());
    validate::plan(&plan)?;
    if state.status == ServiceStatus::Suspended {
        return Err(DomainError::conflict("service is suspended"));
    }
    let Some(digest) = state.current_digest() else {
        return Err(DomainError::conflict(
            "service has no live deploy yet, so no image to run the job in",
        ));
    };
    if state.jobs.active().count() >= MAX_ACTIVE_JOBS {
        return Err(DomainError::conflict(format!(
            "{MAX_ACTIVE_JOBS} jobs of this service are pending or running already"
        )));
    }
    Ok(vec![JobCreated {
        job,
        start_command: command.to_owned(),
        plan,
        digest: digest.to_owned(),
    }
    .into()])
}

/// Cancel a pending or running job; an ended one stays as it ended.
pub(super) fn cancel(state: &ServiceState, job: &JobId) -> Decision {
    match state.jobs.get(job) {
        None => Err(DomainError::not_found("job", job)),
        Some(j) if j.status.is_active() => Ok(vec![canceled(job)]),
        Some(_) => Ok(vec![]),
    }
}

fn canceled(job: &JobId) -> Event {
    JobEnded {
        job: job.clone(),
        status: "canceled".to_owned(),
        exit_code: None,
        reason: None,
    }
    .into()
}

/// The end of every pending or running job (the service is suspended or
/// deleted).
pub(super) fn cancel_all(state: &ServiceState) -> Vec<Event> {
    state.jobs.active().map(|j| canceled(&j.id)).collect()
}

/// The job was given to `node`; an ended job, or one already recorded
/// there, changes nothing.
pub(super) fn placed(state: &ServiceState, job: &JobId, node: NodeId) -> Decision {
    match state.jobs.get(job) {
        Some(j) if j.status.is_active() && j.node.as_ref() != Some(&node) => Ok(vec![JobPlaced {
            job: job.clone(),
            node,
        }
        .into()]),
        Some(_) => Ok(vec![]),
        None => Err(DomainError::not_found("job", job)),
    }
}

/// A node started the job's container; late news of an ended job changes
/// nothing.
pub(super) fn started(state: &ServiceState, job: &JobId) -> Decision {
    match state.jobs.get(job) {
        Some(j) if j.status == JobStatus::Pending => {
            Ok(vec![JobStarted { job: job.clone() }.into()])
        }
        Some(_) => Ok(vec![]),
        None => Err(DomainError::not_found("job", job)),
    }
}

/// The job ended by itself (`success`, else with `exit_code` or `reason`);
/// a job already ended (canceled meanwhile) stays as it ended.
pub(super) fn ended(
    state: &ServiceState,
    job: &JobId,
    success: bool,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> Decision {
    match state.jobs.get(job) {
        Some(j) if j.status.is_active() => Ok(vec![JobEnded {
            job: job.clone(),
            status: if success { "succeeded" } else { "failed" }.to_owned(),
            exit_code,
            reason: reason
                .map(|r| berth_schemas::cut(&r, super::instances::PROBLEM_MAX).to_owned()),
        }
        .into()]),
        Some(_) => Ok(vec![]),
        None => Err(DomainError::not_found("job", job)),
    }
}

/// Applies a job event; any other leaves `s` unchanged.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    let every = s.keeps_everything();
    match event {
        Event::JobCreated(e) if s.jobs.get(&e.job).is_none() => s.jobs.push(
            Job {
                id: e.job.clone(),
                start_command: e.start_command.clone(),
                plan: e.plan.clone(),
                digest: e.digest.clone(),
                status: JobStatus::Pending,
                created_at: time,
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                node: None,
            },
            every,
        ),
        Event::JobPlaced(e) => {
            if let Some(j) = s.jobs.get_mut(&e.job).filter(|j| j.status.is_active()) {
                j.node = Some(e.node.clone());
            }
        }
        Event::JobStarted(e) => {
            if let Some(j) = s
                .jobs
                .get_mut(&e.job)
                .filter(|j| j.status == JobStatus::Pending)
            {
                j.status = JobStatus::Running;
                j.started_at = time;
            }
        }
        Event::JobEnded(e) => {
            let status = JobStatus::ended(&e.status);
            if let (Some(j), Some(status)) = (
                s.jobs.get_mut(&e.job).filter(|j| j.status.is_active()),
                status,
            ) {
                j.status = status;
                j.finished_at = time;
                j.exit_code = e.exit_code;
                j.reason = e.reason.clone();
            }
        }
        _ => {}
    }
}

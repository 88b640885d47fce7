//! The state of one service (settings, deploys, cron runs) and the pure
//! `apply` that builds it from the service's events. `apply` never fails:
//! an event that does not fit the state (an unknown deploy, a second
//! `service_created`) leaves it unchanged, so a replay cannot go wrong.

use std::collections::{BTreeSet, HashMap};

use berth_schemas::events::{CancelReason, PlacementBlocked, ServiceCreated, ServiceSettings};
use berth_schemas::ids::{CredentialId, CronRunId, DeployId, NodeId};
use berth_schemas::model::{DeployPhase, DeployStatus, DeployTrigger, ResolvedImage};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::instances::Instances;

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// No `service_created` yet.
    #[default]
    NotCreated,
    /// Created and not suspended.
    Active,
    /// Suspended: instances stopped, deploys refused until resumed.
    Suspended,
    /// Deleted (or its creation given up before it was created): every
    /// command is refused as not found.
    Deleted,
}

/// A service's settings, as created and then updated: the fields of its
/// `service_created` event (image normalised; `num_instances` is 1 for cron
/// jobs, which have none running), with every `service_updated` merged in.
pub type ServiceConfig = ServiceCreated;

/// Merges the settings an update changed into `cfg`.
pub(super) fn merge(cfg: &mut ServiceConfig, s: &ServiceSettings) {
    fn set<T: Clone>(field: &mut T, value: &Option<T>) {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    set(&mut cfg.name, &s.name);
    set(&mut cfg.image, &s.image);
    set(&mut cfg.credential, &s.credential);
    set(&mut cfg.plan, &s.plan);
    set(&mut cfg.docker_command, &s.docker_command);
    set(&mut cfg.env_vars, &s.env_vars);
    set(&mut cfg.pre_deploy_command, &s.pre_deploy_command);
    if let Some(p) = &s.health_check_path {
        cfg.health_check_path = Some(p.clone());
    }
    if let Some(p) = &s.schedule {
        cfg.schedule = Some(p.clone());
    }
    set(&mut cfg.notify, &s.notify);
    set(&mut cfg.overlap_policy, &s.overlap_policy);
    set(&mut cfg.shutdown_delay_secs, &s.shutdown_delay_secs);
}

/// How a pre-deploy command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreDeployOutcome {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

/// One deploy of the service, with everything SPEC §6 says it records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deploy {
    pub id: DeployId,
    pub trigger: DeployTrigger,
    /// The image reference as requested (for rollbacks: `repo@digest`).
    pub image: String,
    /// The credential the pull uses: the service's at request time.
    pub credential: Option<CredentialId>,
    pub rollback_of: Option<DeployId>,
    /// Render's status.
    pub status: DeployStatus,
    /// berth's finer phase while the deploy runs; `None` otherwise.
    pub phase: Option<DeployPhase>,
    /// What the reference resolved to: the digest that runs.
    pub resolved: Option<ResolvedImage>,
    /// Nodes that hold the digest, verified.
    pub pulled_on: BTreeSet<NodeId>,
    pub pre_deploy: Option<PreDeployOutcome>,
    /// Why it failed or was canceled.
    pub reason: Option<String>,
    pub cancel_reason: Option<CancelReason>,
    /// The deploy that canceled, superseded or deactivated this one.
    pub ended_by: Option<DeployId>,
    /// False once the registry no longer holds its digest (SPEC §7).
    pub rollback_eligible: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// When its pre-deploy command was started (`pre_deploy_started`): its
    /// timeout counts from here.
    #[serde(default)]
    pub pre_deploy_started_at: Option<DateTime<Utc>>,
    /// When its new instances began to start (`update_started`): the
    /// readiness window counts from here.
    #[serde(default)]
    pub update_started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The last `placement_blocked` about it, until one of its instances
    /// is placed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_blocked: Option<PlacementBlocked>,
}

impl Deploy {
    /// The recorded digest, once resolved.
    pub fn digest(&self) -> Option<&str> {
        self.resolved.as_ref().map(|r| r.digest.as_str())
    }

    /// Running: admitted and not yet ended (the one deploy workers act on).
    pub fn is_running(&self) -> bool {
        matches!(
            self.status,
            DeployStatus::UpdateInProgress | DeployStatus::PreDeployInProgress
        )
    }

    /// Ended: it will never run again (live deploys are not ended).
    pub fn is_ended(&self) -> bool {
        self.status.is_final()
    }
}

/// A cron run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronRun {
    pub id: CronRunId,
    pub digest: String,
    pub manual: bool,
    pub started_at: Option<DateTime<Utc>>,
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

/// Everything the service's rules need, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceState {
    pub status: ServiceStatus,
    /// `None` until `service_created`.
    pub config: Option<ServiceConfig>,
    /// Every deploy, in request order. Boxed: a service with a long history
    /// holds thousands, and growing one contiguous vector of them re-copied
    /// and re-faulted megabytes on every doubling (a tenth of the hook
    /// path's CPU in `perf`); a vector of pointers grows cheaply.
    pub deploys: Vec<Box<Deploy>>,
    /// Position of each deploy in `deploys`.
    /// A hash map: string-compared B-tree lookups on every event were ~5 %
    /// of the hook path's CPU at a few thousand deploys.
    index: HashMap<DeployId, usize>,
    /// The running deploy (at most one: SPEC §6).
    pub active: Option<DeployId>,
    /// Queued deploys, oldest first.
    pub queue: Vec<DeployId>,
    /// The deploy serving now.
    pub live: Option<DeployId>,
    pub cron: CronState,
    /// The instances on nodes now (absent in snapshots taken before it existed).
    #[serde(default)]
    pub instances: Instances,
    /// The latest `restart_requested`: instances placed before it are replaced.
    #[serde(default)]
    pub restart_requested_at: Option<DateTime<Utc>>,
    /// When a node last failed to pull a deploy's image (the scheduler
    /// backs off placing that deploy, and gives up on instances placed
    /// before the failure).
    #[serde(default)]
    pub pull_failures: PullFailures,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Ended deploys no longer held here (the oldest, beyond
    /// [`KEPT_ENDED_DEPLOYS`]); the log still has them (see
    /// [`ServiceState::keeping_every_deploy`]).
    #[serde(default)]
    pub forgotten_deploys: u64,
    /// Holds every deploy, forgetting none (a fold for a look into the
    /// past; never stored).
    #[serde(skip)]
    keep_every_deploy: bool,
}

/// Ended deploys a service holds in memory, newest first: what its rules,
/// rollbacks to recent deploys and the first pages of its deploy listing
/// need. Older ones are read from the log when asked for, so a service
/// with a hundred thousand deploys costs what one with a hundred does.
pub const KEPT_ENDED_DEPLOYS: usize = 100;
/// Deploys beyond the kept ones before they are let go, in one pass.
const FORGET_SLACK: usize = 28;

/// The latest failed pull of each deploy on each node, bounded: the oldest
/// entries go once [`PullFailures::KEPT`] are held (a backoff only looks at
/// the live deploy's last failures).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullFailures(Vec<(DeployId, NodeId, DateTime<Utc>)>);

impl PullFailures {
    /// Pairs of deploy and node remembered.
    pub const KEPT: usize = 64;

    fn record(&mut self, deploy: &DeployId, node: &NodeId, at: DateTime<Utc>) {
        self.0.retain(|(d, n, _)| !(d == deploy && n == node));
        self.0.push((deploy.clone(), node.clone(), at));
        if self.0.len() > Self::KEPT {
            self.0.remove(0);
        }
    }

    /// Whether `node` failed to pull `deploy` at or after `since` (an
    /// instance placed then will never start).
    pub fn failed_since(
        &self,
        deploy: &DeployId,
        node: &NodeId,
        since: Option<DateTime<Utc>>,
    ) -> bool {
        self.0
            .iter()
            .any(|(d, n, t)| d == deploy && n == node && since.is_none_or(|s| *t >= s))
    }

    /// When any node last failed to pull `deploy`.
    pub fn last_of(&self, deploy: &DeployId) -> Option<DateTime<Utc>> {
        self.0
            .iter()
            .filter(|(d, _, _)| d == deploy)
            .map(|(_, _, t)| *t)
            .max()
    }
}

impl ServiceState {
    /// An empty state whose fold keeps every deploy.
    pub fn keeping_every_deploy() -> Self {
        ServiceState {
            keep_every_deploy: true,
            ..ServiceState::default()
        }
    }

    /// Lets the oldest ended deploys go once more than
    /// [`KEPT_ENDED_DEPLOYS`] (plus some slack) are held; running, queued
    /// and live deploys always stay.
    fn forget_old_deploys(&mut self) {
        if self.keep_every_deploy || self.deploys.len() <= KEPT_ENDED_DEPLOYS + FORGET_SLACK {
            return;
        }
        let live = self.live.clone();
        let forgettable = |d: &Deploy| d.is_ended() && live.as_ref() != Some(&d.id);
        let ended = self.deploys.iter().filter(|d| forgettable(d)).count();
        let mut excess = ended.saturating_sub(KEPT_ENDED_DEPLOYS);
        if excess == 0 {
            return;
        }
        let before = self.deploys.len();
        self.deploys.retain(|d| {
            let go = excess > 0 && forgettable(d);
            excess -= usize::from(go);
            !go
        });
        self.forgotten_deploys += (before - self.deploys.len()) as u64;
        self.index = self
            .deploys
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
    }

    /// A deploy by id.
    pub fn deploy(&self, id: &DeployId) -> Option<&Deploy> {
        self.index
            .get(id)
            .and_then(|&i| self.deploys.get(i))
            .map(|d| &**d)
    }

    fn deploy_mut(&mut self, id: &DeployId) -> Option<&mut Deploy> {
        match self.index.get(id) {
            Some(&i) => self.deploys.get_mut(i).map(|d| &mut **d),
            None => None,
        }
    }

    /// The running deploy, if any.
    pub fn active_deploy(&self) -> Option<&Deploy> {
        self.active.as_ref().and_then(|id| self.deploy(id))
    }

    /// The live deploy, if any.
    pub fn live_deploy(&self) -> Option<&Deploy> {
        self.live.as_ref().and_then(|id| self.deploy(id))
    }

    /// The digest instances should run: the live deploy's.
    pub fn current_digest(&self) -> Option<&str> {
        self.live_deploy().and_then(Deploy::digest)
    }

    /// True once created and not deleted.
    pub fn exists(&self) -> bool {
        matches!(
            self.status,
            ServiceStatus::Active | ServiceStatus::Suspended
        )
    }

    fn end(&mut self, id: &DeployId) {
        if self.active.as_ref() == Some(id) {
            self.active = None;
        }
        self.queue.retain(|q| q != id);
    }
}

/// Applies one event without a timestamp.
pub fn apply(state: ServiceState, event: &Event) -> ServiceState {
    apply_at(state, event, None)
}

/// Applies one event, recording `time` (the envelope's) where a timestamp is kept.
pub fn apply_at(mut s: ServiceState, event: &Event, time: Option<DateTime<Utc>>) -> ServiceState {
    match event {
        Event::ServiceCreated(e) if s.status == ServiceStatus::NotCreated => {
            s.status = ServiceStatus::Active;
            s.config = Some(e.clone());
            s.created_at = time;
            s.updated_at = time;
        }
        Event::ServiceUpdated(e) => {
            if let Some(c) = s.config.as_mut() {
                merge(c, &e.settings);
                s.updated_at = time;
            }
        }
        Event::DeployHookKeyRegenerated(e) => {
            if let Some(c) = s.config.as_mut() {
                c.hook_key = e.hook_key.clone();
            }
        }
        Event::InstanceCountChanged(e) => {
            if let Some(c) = s.config.as_mut() {
                c.num_instances = e.to;
                s.updated_at = time;
            }
        }
        Event::ServiceSuspended(_) if s.status == ServiceStatus::Active => {
            s.status = ServiceStatus::Suspended;
            s.updated_at = time;
        }
        Event::ServiceResumed(_) if s.status == ServiceStatus::Suspended => {
            s.status = ServiceStatus::Active;
            s.updated_at = time;
        }
        Event::ServiceDeleted(_) if s.exists() => {
            s.status = ServiceStatus::Deleted;
            s.updated_at = time;
        }
        Event::ServiceCreationAbandoned(_) if s.status == ServiceStatus::NotCreated => {
            s.status = ServiceStatus::Deleted;
            s.updated_at = time;
        }
        Event::DeployCreated(e) if !s.index.contains_key(&e.deploy) => {
            s.index.insert(e.deploy.clone(), s.deploys.len());
            s.deploys.push(Box::new(Deploy {
                id: e.deploy.clone(),
                trigger: e.trigger,
                image: e.image.clone(),
                credential: e.credential.clone(),
                rollback_of: e.rollback_of.clone(),
                status: DeployStatus::Created,
                phase: None,
                resolved: None,
                pulled_on: BTreeSet::new(),
                pre_deploy: None,
                reason: None,
                cancel_reason: None,
                ended_by: None,
                rollback_eligible: true,
                created_at: time,
                started_at: None,
                pre_deploy_started_at: None,
                update_started_at: None,
                finished_at: None,
                placement_blocked: None,
            }));
            s.forget_old_deploys();
        }
        Event::DeployQueued(e) => {
            let queued = match s.deploy_mut(&e.deploy) {
                Some(d) if d.status == DeployStatus::Created => {
                    d.status = DeployStatus::Queued;
                    true
                }
                _ => false,
            };
            if queued {
                s.queue.push(e.deploy.clone());
            }
        }
        Event::DeployStarted(e) => {
            let started = match s.deploy_mut(&e.deploy) {
                Some(d) if matches!(d.status, DeployStatus::Created | DeployStatus::Queued) => {
                    d.status = DeployStatus::UpdateInProgress;
                    d.phase = Some(DeployPhase::Resolving);
                    d.started_at = time;
                    true
                }
                _ => false,
            };
            if started {
                s.queue.retain(|q| q != &e.deploy);
                s.active = Some(e.deploy.clone());
            }
        }
        Event::ImageResolved(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.is_running() && d.resolved.is_none() {
                    d.resolved = Some(e.image.clone());
                    d.phase = Some(DeployPhase::Pulling);
                }
            }
        }
        Event::ImagePulled(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.digest() == Some(e.digest.as_str()) {
                    d.pulled_on.insert(e.node.clone());
                }
            }
        }
        Event::PreDeployStarted(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.is_running() {
                    d.status = DeployStatus::PreDeployInProgress;
                    d.phase = Some(DeployPhase::PreDeploy);
                    d.pre_deploy_started_at = time;
                }
            }
        }
        Event::PreDeployEnded(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.status == DeployStatus::PreDeployInProgress {
                    d.pre_deploy = Some(PreDeployOutcome {
                        success: e.success,
                        exit_code: e.exit_code,
                        reason: e.reason.clone(),
                    });
                    // A failure is ended by the `deploy_failed` that follows it.
                    if e.success {
                        d.status = DeployStatus::UpdateInProgress;
                    }
                }
            }
        }
        Event::UpdateStarted(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.is_running() {
                    d.status = DeployStatus::UpdateInProgress;
                    d.phase = Some(DeployPhase::Updating);
                    d.update_started_at = time;
                }
            }
        }
        Event::DeployLive(e) => {
            let went_live = match s.deploy_mut(&e.deploy) {
                Some(d) if d.is_running() => {
                    d.status = DeployStatus::Live;
                    d.phase = None;
                    d.finished_at = time;
                    true
                }
                _ => false,
            };
            if went_live {
                s.end(&e.deploy);
                s.live = Some(e.deploy.clone());
            }
        }
        Event::DeployFailed(e) => {
            let failure = matches!(
                e.status,
                DeployStatus::UpdateFailed | DeployStatus::PreDeployFailed
            );
            let failed = match s.deploy_mut(&e.deploy) {
                Some(d) if failure && d.is_running() => {
                    d.status = e.status;
                    d.phase = None;
                    d.reason = Some(e.reason.clone());
                    d.finished_at = time;
                    true
                }
                _ => false,
            };
            if failed {
                s.end(&e.deploy);
            }
        }
        Event::DeployCanceled(e) => {
            let canceled = match s.deploy_mut(&e.deploy) {
                Some(d) if !d.is_ended() && d.status != DeployStatus::Live => {
                    d.status = DeployStatus::Canceled;
                    d.phase = None;
                    d.cancel_reason = Some(e.reason);
                    d.ended_by = e.by.clone();
                    d.finished_at = time;
                    true
                }
                _ => false,
            };
            if canceled {
                s.end(&e.deploy);
            }
        }
        Event::DeployDeactivated(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.status == DeployStatus::Live {
                    d.status = DeployStatus::Deactivated;
                    d.ended_by = Some(e.by.clone());
                }
            }
            if s.live.as_ref() == Some(&e.deploy) {
                s.live = None;
            }
        }
        Event::RollbackTargetMissing(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.digest() == Some(e.digest.as_str()) {
                    d.rollback_eligible = false;
                }
            }
        }
        Event::CronJobRunStarted(e) if s.cron.active.is_none() => {
            s.cron.active = Some(CronRun {
                id: e.run.clone(),
                digest: e.digest.clone(),
                manual: e.manual,
                started_at: time,
            });
            s.cron.runs_started += 1;
        }
        Event::CronJobRunEnded(e) if s.cron.active.as_ref().map(|r| &r.id) == Some(&e.run) => {
            s.cron.active = None;
            s.cron.last_ended = Some(e.run.clone());
        }
        Event::RestartRequested(_) => {
            s.restart_requested_at = time;
        }
        Event::CronJobRunSkipped(e) => {
            s.cron.last_skipped = Some(e.scheduled_for);
        }
        Event::PlacementBlocked(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                d.placement_blocked = Some(e.clone());
            }
        }
        Event::InstanceScheduled(e) => {
            // Room was found: a later shortfall is news again.
            if let Some(d) = s.deploy_mut(&e.deploy) {
                d.placement_blocked = None;
            }
            s.instances.apply(event, time);
        }
        // Instance facts feed the scheduler's view; pull progress is for
        // the API's projections.
        Event::ImagePullFailed(e) => {
            if let (Some(d), Some(n), Some(t)) = (&e.deploy, &e.node, time) {
                s.pull_failures.record(d, n, t);
            }
        }
        _ => s.instances.apply(event, time),
    }
    s
}

#[cfg(test)]
mod pull_failure_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_schemas::events::ImagePullFailed;
    use berth_schemas::model::PullFailureReason;

    fn failed(deploy: &DeployId, node: &NodeId) -> Event {
        ImagePullFailed {
            deploy: Some(deploy.clone()),
            node: Some(node.clone()),
            image: "r.example/a:1".into(),
            reason: PullFailureReason::ImageNotFound,
            message: "gone".into(),
        }
        .into()
    }

    #[test]
    fn the_state_keeps_the_latest_failure_per_deploy_and_node_bounded() {
        let (d, n) = (DeployId::generate(), NodeId::generate());
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0);
        let mut s = apply_at(ServiceState::default(), &failed(&d, &n), t(0));
        s = apply_at(s, &failed(&d, &n), t(10));
        assert_eq!(s.pull_failures.last_of(&d), t(10));
        assert!(s.pull_failures.failed_since(&d, &n, t(5)));
        assert!(!s.pull_failures.failed_since(&d, &n, t(11)));
        assert!(!s.pull_failures.failed_since(&d, &NodeId::generate(), None));
        for i in 0..200 {
            s = apply_at(s, &failed(&DeployId::generate(), &n), t(20 + i));
        }
        assert_eq!(s.pull_failures.0.len(), PullFailures::KEPT);
        assert_eq!(s.pull_failures.last_of(&d), None, "the oldest went first");
    }
}

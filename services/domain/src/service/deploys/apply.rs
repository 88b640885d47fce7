//! A deploy's state (SPEC §6) and how the deploy events change it: the
//! `apply` of what the decisions in this folder produce, and of the pull
//! failures and placement shortfalls recorded about a deploy.

use berth_schemas::events::{CancelReason, DeployRetrying, PlacementBlocked};
use berth_schemas::ids::{CredentialId, DeployId, NodeId};
use berth_schemas::model::{DeployPhase, DeployStatus, DeployTrigger, ResolvedImage};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::service::state::ServiceState;

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
    /// Nodes that hold the digest, verified; sorted, each once. A vector:
    /// a deploy is pulled on one node or a few, and a B-tree's node costs
    /// ~280 bytes however few it holds (a service holds up to ~130
    /// deploys, a process several copies of every service).
    pub pulled_on: Vec<NodeId>,
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
    /// is placed again. Boxed, as is `retrying`: rarely set, and a service
    /// holds one of these per deploy it remembers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_blocked: Option<Box<PlacementBlocked>>,
    /// The last `deploy_retrying` while it resolves: the registry failed
    /// for now and the resolver tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Box<DeployRetrying>>,
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

/// Applies a deploy event; any other leaves `s` unchanged.
pub(in crate::service) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    match event {
        Event::DeployCreated(e) if !s.index.contains_key(&e.deploy) => {
            s.index.insert(e.deploy.clone(), s.deploys.len());
            s.deploys.push(std::sync::Arc::new(Deploy {
                id: e.deploy.clone(),
                trigger: e.trigger,
                image: e.image.clone(),
                credential: e.credential.clone(),
                rollback_of: e.rollback_of.clone(),
                status: DeployStatus::Created,
                phase: None,
                resolved: None,
                pulled_on: Vec::new(),
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
                retrying: None,
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
                    d.retrying = None;
                }
            }
        }
        Event::DeployRetrying(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.is_running() && d.resolved.is_none() {
                    d.retrying = Some(Box::new(e.clone()));
                }
            }
        }
        Event::ImagePulled(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                if d.digest() == Some(e.digest.as_str()) {
                    if let Err(at) = d.pulled_on.binary_search(&e.node) {
                        d.pulled_on.insert(at, e.node.clone());
                    }
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
                    d.retrying = None;
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
                    d.retrying = None;
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
        Event::PlacementBlocked(e) => {
            if let Some(d) = s.deploy_mut(&e.deploy) {
                d.placement_blocked = Some(Box::new(e.clone()));
            }
        }
        Event::InstanceScheduled(e) => {
            // Room was found: a later shortfall is news again.
            if let Some(d) = s.deploy_mut(&e.deploy) {
                d.placement_blocked = None;
            }
        }
        // Remembered per deploy and node: the scheduler backs off placing
        // the deploy, and gives up on instances placed before the failure.
        Event::ImagePullFailed(e) => {
            if let (Some(d), Some(n), Some(t)) = (&e.deploy, &e.node, time) {
                s.pull_failures.record(d, n, t);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod pull_failure_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::service::apply_at;
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

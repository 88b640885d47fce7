//! One service, one pass: load its state, move its running deploy along the
//! pipeline, reconcile, and carry out the plan. Level-triggered and
//! idempotent: every pass starts from the log, so a pass after a crash (or
//! by another scheduler copy) finishes what an interrupted one began.
//!
//! Order of a pass; each append names the version the decision was made on
//! (a conflict means someone else moved the service: load and decide again):
//! 1. instances on a node recorded lost → `server_failed`;
//! 2. the running deploy, once resolved: `pre_deploy_started` (then the
//!    one-off is enqueued on a node, again on every pass until it ended —
//!    the work queue dedupes by `Nats-Msg-Id`) or `update_started`; after a
//!    successful pre-deploy, `update_started`; a pre-deploy that has not
//!    reported back by its timeout plus a grace (its node died with it)
//!    fails the deploy `pre_deploy_failed`; a cron job's deploy goes live
//!    once updating (it has no instances);
//! 3. [`reconcile`]: new and moved instances are appended in one decision
//!    *before* any node hears of them, and instances no node has room for
//!    are reported (`placement_blocked`); then every instance still only
//!    scheduled gets its `RunInstance` enqueued with the instance id as
//!    message id (so the enqueue a crash skipped is made up, and a repeat is
//!    dropped by the queue); stops are enqueued the same way, or recorded
//!    directly for instances no node will report (lost node, never
//!    started); `MarkLive` / `FailDeploy` go through the service's rules.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use berth_domain::scheduler::{
    place, reconcile, shortfall, ClusterView, RandomIds, PLACEMENT_RETRY,
};
use berth_domain::service::{
    self, Command, Deploy, InstancePhase, Service, ServiceConfig, ServiceState,
};
use berth_eventlog::{EventStore, ExecuteError, Stamp, Version};
use berth_schemas::commands::{NodeWork, OneOffPurpose};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::model::{DeployPhase, DeployStatus, ServiceType};
use berth_schemas::{Actor, AggregateId, Subjects};
use chrono::{TimeDelta, Utc};

use crate::carry::{self, PullFailures};
use crate::compose::Composed;
use crate::{Inner, SchedulerError};

/// Passes of one drive before giving up (each after a conflict or a step).
const MAX_ROUNDS: usize = 12;

/// What a pass leaves to do.
pub(crate) enum Next {
    /// Nothing until the next event, or until `requeue`.
    Done(Option<Duration>),
    /// State moved (our append or someone else's): pass again.
    Again,
}

/// How long a pass under way when the scheduler is told to stop may take
/// to finish before it is dropped (safe: every pass starts from the log,
/// so the next start finishes what it began).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// Drives `service` until a pass has nothing left to do, or the scheduler
/// stops.
pub(crate) async fn drive(inner: &Inner, service: &ServiceId) -> Result<(), SchedulerError> {
    let stopped = async {
        inner.shutdown.cancelled().await;
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
    };
    tokio::select! {
        done = rounds(inner, service) => done,
        _ = stopped => {
            tracing::debug!(service.id = %service, "pass dropped at shutdown");
            Ok(())
        }
    }
}

async fn rounds(inner: &Inner, service: &ServiceId) -> Result<(), SchedulerError> {
    let lock = inner.service_lock(service);
    let _held = lock.lock().await;
    for _ in 0..MAX_ROUNDS {
        if inner.shutdown.is_cancelled() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let next = pass(inner, service).await;
        metrics::histogram!("berth_scheduler_pass_seconds").record(t0.elapsed().as_secs_f64());
        match next? {
            Next::Done(requeue) => {
                if let Some(after) = requeue {
                    inner.requeue(service, after);
                }
                return Ok(());
            }
            Next::Again => {}
        }
    }
    // Busy, not broken: try again soon rather than fail the event.
    inner.requeue(service, Duration::from_millis(200));
    Ok(())
}

/// One decision on one loaded state.
pub(crate) struct Pass<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) service: &'a ServiceId,
    aggregate: AggregateId,
    version: Version,
    pub(crate) state: Arc<ServiceState>,
}

impl Pass<'_> {
    /// The stream sequence the state was loaded at: a key made with it is
    /// unique to a decision on this state.
    pub(crate) fn seq(&self) -> u64 {
        self.version.stream_seq
    }

    /// Decides `command` on the loaded state and appends the outcome at the
    /// loaded version (the plan was made on it). True when something was
    /// appended (or someone else changed the service): the caller passes
    /// again.
    pub(crate) async fn decide(&self, command: Command, key: &str) -> Result<bool, SchedulerError> {
        let what = format!("{command:?}");
        let done = self
            .inner
            .store
            .execute_on::<Service>(
                &self.aggregate,
                (Arc::clone(&self.state), self.version),
                key,
                &Stamp::new(Actor::system("scheduler")),
                command,
            )
            .await;
        match done {
            Ok(done) => Ok(done.appended.is_some_and(|a| {
                tracing::debug!(service.id = %self.service, key, duplicate = a.duplicate, "appended");
                true
            })),
            Err(ExecuteError::Rejected(e)) => {
                // The plan was made on this very state, so a refusal is a
                // rule this scheduler disagrees with: log it, do not loop.
                tracing::warn!(service.id = %self.service, command = %what, error = %e, "decision refused by the service rules");
                Ok(false)
            }
            Err(ExecuteError::Append(e)) if e.is_conflict() => Ok(true),
            Err(e) => Err(SchedulerError::Store(e.to_string())),
        }
    }

    pub(crate) async fn enqueue(
        &self,
        node: &NodeId,
        work: &NodeWork,
        id: &str,
    ) -> Result<(), SchedulerError> {
        enqueue(&self.inner.store, node, self.service, work, id).await
    }
}

/// Puts `work` on `node`'s queue, keyed by `service`; `id` dedupes repeats.
pub(crate) async fn enqueue(
    store: &EventStore,
    node: &NodeId,
    service: &ServiceId,
    work: &NodeWork,
    id: &str,
) -> Result<(), SchedulerError> {
    let payload = rmp_serde::to_vec_named(work)
        .map_err(|e| SchedulerError::Store(format!("encoding work: {e}")))?;
    store
        .enqueue(
            &Subjects::node_queue(node),
            service.as_str(),
            payload.into(),
            id,
        )
        .await
        .map_err(SchedulerError::store)?;
    Ok(())
}

/// The pre-deploy run of a deploy has a fixed id, so every pass enqueues
/// the same one-off (and a node runs it at most once).
fn pre_deploy_instance(deploy: &DeployId) -> Option<InstanceId> {
    let body = deploy.as_str().split_once('-')?.1;
    format!("ins-{body}").parse().ok()
}

async fn pass(inner: &Inner, service: &ServiceId) -> Result<Next, SchedulerError> {
    let aggregate = AggregateId::Service(service.clone());
    // The store's folded state: a pass folds only what was appended since
    // the last one, not the service's history.
    let (state, version) = inner
        .store
        .state::<ServiceState, _>(&aggregate, service::fold)
        .await
        .map_err(SchedulerError::store)?;
    inner.cluster.record_service(service, &state);
    let Some(cfg) = state.config.clone() else {
        return Ok(Next::Done(None));
    };
    let p = Pass {
        inner,
        service,
        aggregate,
        version,
        state,
    };
    let pull_failures = PullFailures(&p.state.pull_failures);
    // A node another copy placed on that this copy has not loaded yet
    // would look gone: load it first, so nothing is placed twice.
    let unknown: BTreeSet<NodeId> = p
        .state
        .instances
        .iter()
        .filter(|i| !inner.cluster.knows(&i.node))
        .map(|i| i.node.clone())
        .collect();
    for node in unknown {
        inner.cluster.refresh_node(&node).await?;
    }
    let view = inner.cluster.view(service);

    // 1. Instances on a node recorded lost.
    let lost: BTreeSet<NodeId> = p
        .state
        .instances
        .iter()
        .filter(|i| i.phase != InstancePhase::Lost && inner.cluster.is_recorded_lost(&i.node))
        .map(|i| i.node.clone())
        .collect();
    if let Some(node) = lost.into_iter().next() {
        let key = format!("server-failed-{node}-{}", p.seq());
        if p.decide(Command::RecordServerFailed { node }, &key).await? {
            return Ok(Next::Again);
        }
    }

    // 2. The running deploy's pipeline.
    let mut requeue: Option<Duration> = None;
    if let Some(d) = p.state.active_deploy().filter(|d| d.is_running()).cloned() {
        match pipeline(&p, &cfg, &d, &view).await? {
            Step::Moved => return Ok(Next::Again),
            Step::Retry(after) => requeue = Some(after),
            Step::Stay => {}
        }
    }

    // 3. Reconcile and carry out the plan.
    let now = Utc::now();
    let plan = reconcile(&p.state, &view, now, &mut RandomIds);
    carry::carry_out(&p, &cfg, plan, &pull_failures, now, requeue).await
}

/// What the pipeline step did.
enum Step {
    /// Appended: pass again.
    Moved,
    /// Waiting for something this pass cannot do; look again after this.
    Retry(Duration),
    /// Nothing to do at this stage.
    Stay,
}

async fn pipeline(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    d: &Deploy,
    view: &ClusterView,
) -> Result<Step, SchedulerError> {
    let Some(digest) = d.digest().map(str::to_owned) else {
        return Ok(Step::Stay);
    };
    let id = d.id.clone();
    let moved = |b: bool| if b { Step::Moved } else { Step::Stay };
    match (d.status, d.phase) {
        (DeployStatus::UpdateInProgress, Some(DeployPhase::Pulling)) => {
            if cfg.pre_deploy_command.is_some() {
                let key = format!("pre-deploy-started-{id}");
                Ok(moved(
                    p.decide(Command::RecordPreDeployStarted { deploy: id }, &key)
                        .await?,
                ))
            } else {
                let key = format!("update-started-{id}");
                Ok(moved(
                    p.decide(Command::RecordUpdateStarted { deploy: id }, &key)
                        .await?,
                ))
            }
        }
        (DeployStatus::PreDeployInProgress, _) => {
            // The node reports a timed-out run itself; this catches a node
            // that died with the run, which nobody else would report.
            let limit = Duration::from_secs(u64::from(p.inner.opts.pre_deploy_timeout_secs))
                + p.inner.opts.pre_deploy_grace;
            let now = Utc::now();
            // When the run has been going for `after`, if representable.
            let since_plus = |after: Duration| {
                let since = d.pre_deploy_started_at?;
                since.checked_add_signed(TimeDelta::from_std(after).ok()?)
            };
            // Look again when the run must have reported at the latest:
            // what is left of the limit, not a whole limit from now.
            let left = since_plus(limit)
                .and_then(|deadline| (deadline - now).to_std().ok())
                .unwrap_or(limit)
                .max(Duration::from_millis(100));
            if since_plus(limit).is_some_and(|deadline| now >= deadline) {
                let key = format!("pre-deploy-lost-{id}");
                let command = Command::RecordFailed {
                    deploy: id,
                    status: DeployStatus::PreDeployFailed,
                    reason: format!(
                        "the pre-deploy command did not report back within {}s",
                        limit.as_secs()
                    ),
                };
                return Ok(moved(p.decide(command, &key).await?));
            }
            // Enqueued again only while the queue's dedupe (same message id
            // on every node's queue of the one work stream) still holds the
            // first enqueue: later, a repeat could reach another node and
            // run it twice. A run never enqueued by then (a scheduler down
            // that long) ends at the deadline above. Three quarters of the
            // work stream's duplicate window: well inside it.
            let reenqueue = p.inner.store.config().duplicate_window.mul_f64(0.75);
            let enqueued_long_ago = since_plus(reenqueue).is_some_and(|until| now > until);
            if enqueued_long_ago {
                return Ok(Step::Retry(left));
            }
            let (Some(instance), Some(command)) =
                (pre_deploy_instance(&id), cfg.pre_deploy_command.clone())
            else {
                return Ok(Step::Stay);
            };
            // Any node with room; none is said on the timeline (once per
            // shortfall), or the deploy would just sit until its deadline.
            let Some(node) = place(&view.nodes, &cfg.plan, 1, &[])
                .ok()
                .and_then(|v| v.into_iter().next())
            else {
                let blocked = shortfall(&view.nodes, &cfg.plan, &id, 1);
                let key = format!("blocked-{id}-{}", p.seq());
                if p.decide(Command::RecordPlacementBlocked(blocked), &key)
                    .await?
                {
                    return Ok(Step::Moved);
                }
                return Ok(Step::Retry(PLACEMENT_RETRY));
            };
            let mut spec = match p.run_spec(cfg, d, &instance, &digest, &node).await? {
                Composed::Ready(spec) => *spec,
                Composed::Wait(after) => return Ok(Step::Retry(after)),
                Composed::Skip => return Ok(Step::Stay),
            };
            spec.command = Some(command);
            let work = NodeWork::RunOnce {
                spec,
                timeout_secs: p.inner.opts.pre_deploy_timeout_secs,
                purpose: Some(OneOffPurpose::PreDeploy),
            };
            p.enqueue(&node, &work, &format!("pre-deploy-{id}")).await?;
            Ok(Step::Retry(left))
        }
        (DeployStatus::UpdateInProgress, Some(DeployPhase::PreDeploy))
            if d.pre_deploy.as_ref().is_some_and(|o| o.success) =>
        {
            let key = format!("update-started-{id}");
            Ok(moved(
                p.decide(Command::RecordUpdateStarted { deploy: id }, &key)
                    .await?,
            ))
        }
        (DeployStatus::UpdateInProgress, Some(DeployPhase::Updating))
            if cfg.service_type == ServiceType::CronJob =>
        {
            // A cron job runs nothing between runs: resolved is ready.
            let key = format!("live-{id}");
            Ok(moved(
                p.decide(Command::RecordLive { deploy: id, digest }, &key)
                    .await?,
            ))
        }
        _ => Ok(Step::Stay),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_deploy_run_id_is_fixed_per_deploy() {
        let d = DeployId::generate();
        let a = pre_deploy_instance(&d).unwrap();
        assert_eq!(Some(a.clone()), pre_deploy_instance(&d));
        assert_ne!(Some(a), pre_deploy_instance(&DeployId::generate()));
    }
}

//! One pass over a service, as the steps its executor carries out in order:
//! decide a service command, enqueue node work, look again after a while.
//! [`steps`] is the whole of what a pass decides; the scheduler only does
//! the I/O (composing run specs with the secrets sealed to their node,
//! enqueueing, appending through the store's command path).
//!
//! Order (each decision appends at the version the steps were made on, so
//! once one moves the service the remaining steps are stale, and the
//! executor loads and asks again):
//! 1. instances on a node recorded lost → `server_failed`;
//! 2. the running deploy's [`pipeline`](super::pipeline);
//! 3. [`reconcile`](super::reconcile)'s plan: new and moved instances in one
//!    decision *before* any node hears of them, instances no node has room
//!    for reported, then `RunInstance` (again) for every instance still only
//!    scheduled, with the instance id as message id (so the enqueue a crash
//!    skipped is made up, and a repeat is dropped by the queue); stops
//!    enqueued, or recorded directly for instances no node will report
//!    (lost node, never started), a healthy web instance first drained;
//!    then the deploy's verdict (`MarkLive` / `FailDeploy` go through the
//!    service's rules, which also deactivate the previous live deploy and
//!    start the next queued one).

use std::collections::BTreeSet;
use std::time::Duration;

use berth_schemas::events::{InstanceRescheduled, InstanceScheduled, PlacementBlocked};
use berth_schemas::ids::{DeployId, InstanceId, NodeId};
use berth_schemas::model::{DeployStatus, ServiceType};
use chrono::{DateTime, TimeDelta, Utc};

use super::{pipeline, reconcile, Action, ClusterView, IdSource, Plan};
use crate::service::{Command, InstancePhase, ServiceConfig, ServiceState};

/// The scheduler's settings its decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// The pre-deploy command's run limit (the node enforces it).
    pub pre_deploy_timeout_secs: u32,
    /// How long past that limit a run may take to be reported before its
    /// node is taken to have died with it.
    pub pre_deploy_grace: Duration,
    /// The work stream's duplicate window: an enqueue repeated within it
    /// (same message id) is dropped.
    pub duplicate_window: Duration,
    /// How long a healthy web instance is out of routing before its stop.
    pub drain_delay: Duration,
    /// After a node failed to pull the live deploy's image, no more of its
    /// instances are placed for this long.
    pub pull_backoff: Duration,
}

impl Default for Timings {
    /// The scheduler's and the store's defaults.
    fn default() -> Self {
        Timings {
            pre_deploy_timeout_secs: 1800,
            pre_deploy_grace: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
            drain_delay: Duration::from_secs(1),
            pull_backoff: Duration::from_secs(60),
        }
    }
}

/// One thing a pass does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Decide `command` on the state the steps were made on and append the
    /// outcome under idempotency key `key`. If that moves the service (or
    /// someone else did), the steps after it are stale.
    Decide { command: Command, key: String },
    /// Put `work` on `node`'s queue with message id `id`.
    Enqueue {
        node: NodeId,
        work: Work,
        id: String,
    },
    /// Look again after `after`, even if nothing happens meanwhile.
    Recheck { after: Duration, why: Recheck },
}

impl Step {
    pub(super) fn decide(command: Command, key: String) -> Step {
        Step::Decide { command, key }
    }

    pub(super) fn recheck(after: Duration, why: Recheck) -> Step {
        Step::Recheck { after, why }
    }
}

/// Work for a node; the executor composes the run spec of the runs (the
/// service's settings, the deploy's image, secrets sealed to the node).
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Start `instance` of `deploy`, running `digest` (`RunInstance`).
    Start {
        instance: InstanceId,
        deploy: DeployId,
        digest: String,
    },
    /// Run the deploy's pre-deploy `command` once (`RunOnce`).
    PreDeploy {
        instance: InstanceId,
        deploy: DeployId,
        digest: String,
        command: String,
        timeout_secs: u32,
    },
    /// Stop `instance` (`StopInstance`).
    Stop { instance: InstanceId },
}

/// Why a pass looks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    /// Reconcile's own: a readiness window ends, or instances wait for room.
    Plan,
    /// A pre-deploy run must have reported back by then.
    PreDeployDeadline,
    /// A pre-deploy run waits for room.
    Placement,
    /// `deploy`'s image failed to pull recently: no new instance of it
    /// until the back-off ends.
    PullBackoff { deploy: DeployId },
    /// A draining instance may be stopped then.
    Drain,
}

/// Everything one pass over a service does, in order, decided on `state`
/// as loaded at stream sequence `seq` (keys made with it are unique to a
/// decision on this state). Pure: ids come from `ids`.
pub fn steps(
    state: &ServiceState,
    seq: u64,
    view: &ClusterView,
    timings: &Timings,
    now: DateTime<Utc>,
    ids: &mut dyn IdSource,
) -> Vec<Step> {
    let Some(cfg) = state.config.as_ref() else {
        return vec![];
    };
    let mut out = Vec::new();
    // 1. Instances on a node recorded lost, one node per decision.
    let lost: BTreeSet<&NodeId> = state
        .instances
        .iter()
        .filter(|i| i.phase != InstancePhase::Lost && view.is_recorded_lost(&i.node))
        .map(|i| &i.node)
        .collect();
    if let Some(node) = lost.into_iter().next() {
        let key = format!("server-failed-{node}-{seq}");
        out.push(Step::decide(
            Command::RecordServerFailed { node: node.clone() },
            key,
        ));
    }
    // 2. The running deploy's pipeline.
    if let Some(d) = state.active_deploy().filter(|d| d.is_running()) {
        out.extend(pipeline::next(cfg, d, seq, view, timings, now));
    }
    // 3. Reconcile, and what carrying out its plan takes.
    let plan = reconcile(state, view, now, ids);
    carry(state, cfg, seq, view, timings, now, plan, &mut out);
    out
}

/// The plan's actions by kind.
#[derive(Default)]
struct Sorted {
    scheduled: Vec<InstanceScheduled>,
    rescheduled: Vec<InstanceRescheduled>,
    stops: Vec<InstanceId>,
    blocked: Vec<PlacementBlocked>,
    verdicts: Vec<Action>,
}

fn sort(state: &ServiceState, actions: Vec<Action>) -> Sorted {
    let mut s = Sorted::default();
    for a in actions {
        match a {
            Action::Schedule {
                instance,
                deploy,
                node,
                digest,
            } => s.scheduled.push(InstanceScheduled {
                instance,
                deploy,
                node,
                digest,
            }),
            // Only instances recorded lost move (see the service's `place`);
            // one on a node the view does not hold yet stays put.
            Action::Reschedule { instance, .. }
                if state
                    .instances
                    .get(&instance)
                    .is_none_or(|i| i.phase != InstancePhase::Lost) => {}
            Action::Reschedule {
                instance,
                replacement,
                from_node,
                to_node,
                ..
            } => s.rescheduled.push(InstanceRescheduled {
                instance,
                replacement,
                from_node,
                to_node,
            }),
            Action::Stop { instance } => s.stops.push(instance),
            Action::ReportBlocked(b) => s.blocked.push(b),
            other => s.verdicts.push(other),
        }
    }
    s
}

/// The steps that carry out `plan`.
#[allow(clippy::too_many_arguments)]
fn carry(
    state: &ServiceState,
    cfg: &ServiceConfig,
    seq: u64,
    view: &ClusterView,
    timings: &Timings,
    now: DateTime<Utc>,
    plan: Plan,
    out: &mut Vec<Step>,
) {
    let mut s = sort(state, plan.actions);

    // A lost image is retried, not hammered: no new instance of the live
    // deploy until `pull_backoff` after its last failed pull.
    if let Some((live, until)) = pull_backoff(state, timings.pull_backoff, now) {
        let before = s.scheduled.len();
        s.scheduled.retain(|i| i.deploy != live);
        if s.scheduled.len() < before {
            let wait = (until - now).to_std().unwrap_or(Duration::ZERO);
            out.push(Step::recheck(wait, Recheck::PullBackoff { deploy: live }));
        }
    }

    // New and moved instances, one decision; the first new id makes the
    // key unique to it.
    let first = s
        .scheduled
        .first()
        .map(|i| i.instance.clone())
        .or_else(|| s.rescheduled.first().map(|r| r.replacement.clone()));
    if let Some(first) = first {
        let n = s.scheduled.len() + s.rescheduled.len();
        out.push(Step::decide(
            Command::Place {
                scheduled: std::mem::take(&mut s.scheduled),
                rescheduled: std::mem::take(&mut s.rescheduled),
            },
            format!("place-{first}-{n}"),
        ));
    }
    // Instances that found no room, on the timeline. The service's rules
    // record each shortfall once, so the retry every few seconds adds
    // nothing while it lasts.
    for b in s.blocked {
        let key = format!("blocked-{}-{seq}", b.deploy);
        out.push(Step::decide(Command::RecordPlacementBlocked(b), key));
    }

    start_pending(state, view, &mut s.stops, out);
    stop(state, cfg, view, timings, now, s.stops, out);

    for v in s.verdicts {
        match v {
            Action::MarkLive { deploy, digest } => {
                let key = format!("live-{deploy}");
                out.push(Step::decide(Command::RecordLive { deploy, digest }, key));
            }
            Action::FailDeploy { deploy, reason } => {
                let key = format!("failed-{deploy}");
                let command = Command::RecordFailed {
                    deploy,
                    status: DeployStatus::UpdateFailed,
                    reason,
                };
                out.push(Step::decide(command, key));
            }
            _ => {}
        }
    }
    if let Some(after) = plan.requeue_after {
        out.push(Step::recheck(after, Recheck::Plan));
    }
}

/// The live deploy and until when none of its instances is placed, while
/// its image failed to pull less than `backoff` ago.
fn pull_backoff(
    state: &ServiceState,
    backoff: Duration,
    now: DateTime<Utc>,
) -> Option<(DeployId, DateTime<Utc>)> {
    let live = state.live.as_ref()?;
    let last = state.pull_failures.last_of(live)?;
    let until = last.checked_add_signed(TimeDelta::from_std(backoff).ok()?)?;
    (until > now).then(|| (live.clone(), until))
}

/// Every instance placed but not started hears about it (again); one whose
/// node could not pull it after it was placed will never start, and is
/// stopped instead.
fn start_pending(
    state: &ServiceState,
    view: &ClusterView,
    stops: &mut Vec<InstanceId>,
    out: &mut Vec<Step>,
) {
    for i in state.instances.iter() {
        if i.phase != InstancePhase::Scheduled
            || view.is_recorded_lost(&i.node)
            || stops.contains(&i.id)
        {
            continue;
        }
        if state
            .pull_failures
            .failed_since(&i.deploy, &i.node, i.scheduled_at)
        {
            stops.push(i.id.clone());
            continue;
        }
        if state.deploy(&i.deploy).is_none() {
            continue;
        }
        out.push(Step::Enqueue {
            node: i.node.clone(),
            id: i.id.to_string(),
            work: Work::Start {
                instance: i.id.clone(),
                deploy: i.deploy.clone(),
                digest: i.digest.clone(),
            },
        });
    }
}

/// Stops go to the instance's node; an instance no node will report
/// stopped (on a lost node, or never started) is recorded stopped here.
/// A healthy web instance (one the router may send requests to) is first
/// marked draining and stopped only once the drain delay has passed, so no
/// new request reaches a process that got SIGTERM.
fn stop(
    state: &ServiceState,
    cfg: &ServiceConfig,
    view: &ClusterView,
    timings: &Timings,
    now: DateTime<Utc>,
    stops: Vec<InstanceId>,
    out: &mut Vec<Step>,
) {
    let delay = timings.drain_delay;
    let mut release = Vec::new();
    let mut drain = Vec::new();
    let mut wait: Option<Duration> = None;
    for id in stops {
        let Some(i) = state.instances.get(&id) else {
            continue;
        };
        let node_gone = i.phase == InstancePhase::Lost || view.is_recorded_lost(&i.node);
        let routed = cfg.service_type == ServiceType::WebService && i.is_healthy();
        if !node_gone && !delay.is_zero() {
            match i.draining_since {
                None if routed => {
                    drain.push(id);
                    continue;
                }
                Some(since) => {
                    let left = (since + delay - now).to_std().unwrap_or(Duration::ZERO);
                    if !left.is_zero() {
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                        continue;
                    }
                }
                None => {}
            }
        }
        if !node_gone {
            out.push(Step::Enqueue {
                node: i.node.clone(),
                id: format!("stop-{id}"),
                work: Work::Stop {
                    instance: id.clone(),
                },
            });
        }
        if node_gone || i.phase == InstancePhase::Scheduled {
            release.push(id);
        }
    }
    // Drains first; the releases come again on the next pass.
    if let Some(first) = drain.first() {
        let key = format!("drain-{first}-{}", drain.len());
        out.push(Step::decide(Command::Drain { instances: drain }, key));
    } else if let Some(first) = release.first() {
        let key = format!("release-{first}-{}", release.len());
        out.push(Step::decide(Command::Release { instances: release }, key));
    }
    if let Some(after) = wait {
        out.push(Step::recheck(after, Recheck::Drain));
    }
}

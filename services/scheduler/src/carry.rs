//! Carrying out one reconcile plan (step 3 of a pass, see [`drive`](crate::drive)):
//! new and moved instances appended in one decision before any node hears
//! of them, instances that found no room reported, `RunInstance` (again)
//! for every instance still only scheduled, stops enqueued or recorded,
//! then the deploy's verdict.

use std::time::Duration;

use berth_domain::scheduler::{Action, Plan};
use berth_domain::service::{Command, Instance, InstancePhase, ServiceConfig};
use berth_schemas::commands::NodeWork;
use berth_schemas::events::{InstanceRescheduled, InstanceScheduled, PlacementBlocked};
use berth_schemas::ids::{DeployId, InstanceId};
use berth_schemas::model::{DeployStatus, ServiceType};
use chrono::{DateTime, TimeDelta, Utc};

use crate::compose::Composed;
use crate::drive::{Next, Pass};
use crate::SchedulerError;

/// The service's failed pulls, as its state records them.
pub(crate) struct PullFailures<'a>(pub(crate) &'a berth_domain::service::PullFailures);

impl PullFailures<'_> {
    /// The instance's node could not pull it after it was placed: it will
    /// never start.
    fn stranded(&self, i: &Instance) -> bool {
        self.0.failed_since(&i.deploy, &i.node, i.scheduled_at)
    }

    /// Until when no new instance of `live` is placed: `backoff` after the
    /// last failed pull of it (a lost image is retried, not hammered).
    fn backoff_until(
        &self,
        live: &DeployId,
        backoff: Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let last = self.0.last_of(live)?;
        let until = last.checked_add_signed(TimeDelta::from_std(backoff).ok()?)?;
        (until > now).then_some(until)
    }
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

fn sort(p: &Pass<'_>, actions: Vec<Action>) -> Sorted {
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
            // Only instances recorded lost move (see the domain's `Place`);
            // one on a node this copy has not loaded yet stays put.
            Action::Reschedule { instance, .. }
                if p.state
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

/// Carries out `plan`; `requeue` is what the pipeline step asked for.
pub(crate) async fn carry_out(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    plan: Plan,
    failures: &PullFailures<'_>,
    now: DateTime<Utc>,
    mut requeue: Option<Duration>,
) -> Result<Next, SchedulerError> {
    let service = p.service;
    let mut s = sort(p, plan.actions);

    let backoff = p.state.live.as_ref().and_then(|live| {
        failures
            .backoff_until(live, p.inner.opts.pull_backoff, now)
            .map(|until| (live.clone(), until))
    });
    if let Some((live, until)) = &backoff {
        let before = s.scheduled.len();
        s.scheduled.retain(|i| &i.deploy != live);
        if s.scheduled.len() < before {
            let wait = (*until - now).to_std().unwrap_or(Duration::ZERO);
            tracing::info!(service.id = %service, deploy.id = %live, wait_ms = wait.as_millis() as u64, "pull failed recently; not placing more instances yet");
            requeue = sooner(requeue, Some(wait));
        }
    }

    if place(p, &mut s).await? || blocked(p, std::mem::take(&mut s.blocked)).await? {
        return Ok(Next::Again);
    }
    requeue = sooner(
        requeue,
        start_pending(p, cfg, failures, &mut s.stops).await?,
    );
    let (moved, drain_wait) = stop(p, cfg, s.stops, now).await?;
    if moved {
        return Ok(Next::Again);
    }
    requeue = sooner(requeue, drain_wait);
    if verdicts(p, s.verdicts).await? {
        return Ok(Next::Again);
    }
    Ok(Next::Done(sooner(requeue, plan.requeue_after)))
}

/// The sooner of two optional waits (`None`: no wait asked).
fn sooner(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// New and moved instances, one decision. True when the service moved.
async fn place(p: &Pass<'_>, s: &mut Sorted) -> Result<bool, SchedulerError> {
    let scheduled = std::mem::take(&mut s.scheduled);
    let rescheduled = std::mem::take(&mut s.rescheduled);
    let Some(first) = scheduled
        .first()
        .map(|i| i.instance.clone())
        .or_else(|| rescheduled.first().map(|r| r.replacement.clone()))
    else {
        return Ok(false);
    };
    let n = scheduled.len() + rescheduled.len();
    metrics::counter!("berth_scheduler_instances_placed_total").increment(n as u64);
    tracing::info!(service.id = %p.service, new = scheduled.len(), moved = rescheduled.len(), "placing instances");
    // The first new id makes the key unique to this decision.
    let key = format!("place-{first}-{n}");
    p.decide(
        Command::Place {
            scheduled,
            rescheduled,
        },
        &key,
    )
    .await
}

/// Instances that found no room, on the service's timeline. The service's
/// rules record each shortfall once, so the retry every few seconds adds
/// nothing while it lasts. True when the service moved.
async fn blocked(p: &Pass<'_>, blocked: Vec<PlacementBlocked>) -> Result<bool, SchedulerError> {
    for b in blocked {
        tracing::info!(service.id = %p.service, deploy.id = %b.deploy, unplaced = b.unplaced, reason = %b.reason, "instances wait for room");
        let key = format!("blocked-{}-{}", b.deploy, p.seq());
        if p.decide(Command::RecordPlacementBlocked(b), &key).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every instance placed but not started hears about it (again); one
/// whose node could not pull it is stopped instead. Returns how soon to
/// look again for items that could not be sealed to their node yet.
async fn start_pending(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    failures: &PullFailures<'_>,
    stops: &mut Vec<InstanceId>,
) -> Result<Option<Duration>, SchedulerError> {
    let mut wait = None;
    for i in p.state.instances.iter() {
        if i.phase != InstancePhase::Scheduled
            || p.inner.cluster.is_recorded_lost(&i.node)
            || stops.contains(&i.id)
        {
            continue;
        }
        if failures.stranded(i) {
            stops.push(i.id.clone());
            continue;
        }
        let Some(d) = p.state.deploy(&i.deploy) else {
            continue;
        };
        match p.run_spec(cfg, d, &i.id, &i.digest, &i.node).await? {
            Composed::Ready(spec) => {
                p.enqueue(&i.node, &NodeWork::RunInstance(*spec), i.id.as_str())
                    .await?;
            }
            Composed::Wait(after) => wait = sooner(wait, Some(after)),
            Composed::Skip => {}
        }
    }
    Ok(wait)
}

/// Stops go to the instance's node; an instance no node will report
/// stopped (on a lost node, or never started) is recorded stopped here.
/// A healthy web instance (one the router may send requests to) is first
/// marked draining and stopped only once the drain delay has passed, so no
/// new request reaches a process that got SIGTERM. Returns whether the
/// service moved, and how soon a drain ends.
async fn stop(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    stops: Vec<InstanceId>,
    now: DateTime<Utc>,
) -> Result<(bool, Option<Duration>), SchedulerError> {
    let delay = p.inner.opts.drain_delay;
    let mut release = Vec::new();
    let mut drain = Vec::new();
    let mut wait: Option<Duration> = None;
    for id in stops {
        let Some(i) = p.state.instances.get(&id) else {
            continue;
        };
        let node_gone = i.phase == InstancePhase::Lost || p.inner.cluster.is_recorded_lost(&i.node);
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
                        wait = sooner(wait, Some(left));
                        continue;
                    }
                }
                None => {}
            }
        }
        if !node_gone {
            let work = NodeWork::StopInstance {
                service: p.service.clone(),
                instance: id.clone(),
            };
            p.enqueue(&i.node, &work, &format!("stop-{id}")).await?;
        }
        if node_gone || i.phase == InstancePhase::Scheduled {
            release.push(id);
        }
    }
    // Drains first; the releases come again on the next pass.
    let moved = if let Some(first) = drain.first() {
        tracing::info!(service.id = %p.service, instances = drain.len(), "draining instances before stopping them");
        let key = format!("drain-{first}-{}", drain.len());
        p.decide(Command::Drain { instances: drain }, &key).await?
    } else if let Some(first) = release.first() {
        let key = format!("release-{first}-{}", release.len());
        p.decide(Command::Release { instances: release }, &key)
            .await?
    } else {
        false
    };
    Ok((moved, wait))
}

/// `MarkLive` / `FailDeploy` through the service's rules (which also
/// deactivate the previous live deploy and start the next queued one).
async fn verdicts(p: &Pass<'_>, verdicts: Vec<Action>) -> Result<bool, SchedulerError> {
    let service = p.service;
    for v in verdicts {
        let (command, key) = match v {
            Action::MarkLive { deploy, digest } => {
                tracing::info!(service.id = %service, deploy.id = %deploy, "deploy live");
                metrics::counter!("berth_scheduler_verdicts_total", "verdict" => "live")
                    .increment(1);
                let key = format!("live-{deploy}");
                (Command::RecordLive { deploy, digest }, key)
            }
            Action::FailDeploy { deploy, reason } => {
                tracing::info!(service.id = %service, deploy.id = %deploy, reason = %reason, "deploy failed");
                metrics::counter!("berth_scheduler_verdicts_total", "verdict" => "update_failed")
                    .increment(1);
                let key = format!("failed-{deploy}");
                let command = Command::RecordFailed {
                    deploy,
                    status: DeployStatus::UpdateFailed,
                    reason,
                };
                (command, key)
            }
            _ => continue,
        };
        if p.decide(command, &key).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

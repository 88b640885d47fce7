//! Carrying out one pass's steps (see [`drive`](crate::drive)), in order:
//! a decision through the store's command path (when it moves the service
//! the rest are stale: pass again), node work composed with its secrets
//! sealed to the node and enqueued, the soonest recheck kept. What the
//! steps are is the domain's ([`steps`](berth_domain::scheduler::steps));
//! this is only the I/O, the logs and the metrics.

use std::time::Duration;

use berth_domain::scheduler::{Recheck, Step, Work};
use berth_domain::service::{Command, ServiceConfig};
use berth_schemas::commands::{NodeWork, OneOffPurpose};
use berth_schemas::ids::{DeployId, InstanceId, NodeId};
use berth_schemas::model::DeployStatus;

use crate::compose::Composed;
use crate::drive::{Next, Pass};
use crate::SchedulerError;

/// Carries out `steps` on the pass's loaded state.
pub(crate) async fn carry_out(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    steps: Vec<Step>,
) -> Result<Next, SchedulerError> {
    let mut requeue: Option<Duration> = None;
    for step in steps {
        match step {
            Step::Decide { command, key } => {
                note(p, &command);
                if p.decide(command, &key).await? {
                    return Ok(Next::Again);
                }
            }
            Step::Enqueue { node, work, id } => {
                if let Some(after) = enqueue(p, cfg, &node, work, &id).await? {
                    requeue = sooner(requeue, after);
                }
            }
            Step::Recheck { after, why } => {
                if let Recheck::PullBackoff { deploy } = &why {
                    tracing::info!(service.id = %p.service, deploy.id = %deploy, wait_ms = after.as_millis() as u64, "pull failed recently; not placing more instances yet");
                }
                requeue = sooner(requeue, after);
            }
        }
    }
    Ok(Next::Done(requeue))
}

/// The sooner of a pending wait and another.
fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Logs and counts the decisions worth seeing in the scheduler's own log.
fn note(p: &Pass<'_>, command: &Command) {
    let service = p.service;
    match command {
        Command::Place {
            scheduled,
            rescheduled,
        } => {
            let n = scheduled.len() + rescheduled.len();
            metrics::counter!("berth_scheduler_instances_placed_total").increment(n as u64);
            tracing::info!(service.id = %service, new = scheduled.len(), moved = rescheduled.len(), "placing instances");
        }
        Command::RecordPlacementBlocked(b) => {
            tracing::info!(service.id = %service, deploy.id = %b.deploy, unplaced = b.unplaced, reason = %b.reason, "instances wait for room");
        }
        Command::Drain { instances } => {
            tracing::info!(service.id = %service, instances = instances.len(), "draining instances before stopping them");
        }
        Command::RecordLive { deploy, .. } => {
            tracing::info!(service.id = %service, deploy.id = %deploy, "deploy live");
            metrics::counter!("berth_scheduler_verdicts_total", "verdict" => "live").increment(1);
        }
        Command::RecordFailed {
            deploy,
            status,
            reason,
        } => {
            tracing::info!(service.id = %service, deploy.id = %deploy, reason = %reason, "deploy failed");
            if *status == DeployStatus::UpdateFailed {
                metrics::counter!("berth_scheduler_verdicts_total", "verdict" => "update_failed")
                    .increment(1);
            }
        }
        _ => {}
    }
}

/// Composes and enqueues `work`; returns how soon to look again when a run
/// could not be sealed to its node yet.
async fn enqueue(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    node: &NodeId,
    work: Work,
    id: &str,
) -> Result<Option<Duration>, SchedulerError> {
    let work = match work {
        Work::Stop { instance } => NodeWork::StopInstance {
            service: p.service.clone(),
            instance,
        },
        Work::Start {
            instance,
            deploy,
            digest,
        } => match compose(p, cfg, &deploy, &instance, &digest, node).await? {
            Composed::Ready(spec) => NodeWork::RunInstance(*spec),
            Composed::Wait(after) => return Ok(Some(after)),
            Composed::Skip => return Ok(None),
        },
        Work::PreDeploy {
            instance,
            deploy,
            digest,
            command,
            timeout_secs,
        } => match compose(p, cfg, &deploy, &instance, &digest, node).await? {
            Composed::Ready(mut spec) => {
                spec.command = Some(command);
                NodeWork::RunOnce {
                    spec: *spec,
                    timeout_secs,
                    purpose: Some(OneOffPurpose::PreDeploy),
                    seen: p.version.stream_seq,
                }
            }
            Composed::Wait(after) => return Ok(Some(after)),
            Composed::Skip => return Ok(None),
        },
    };
    p.enqueue(node, &work, id).await?;
    Ok(None)
}

/// The run spec of `instance` of `deploy` on `node`.
async fn compose(
    p: &Pass<'_>,
    cfg: &ServiceConfig,
    deploy: &DeployId,
    instance: &InstanceId,
    digest: &str,
    node: &NodeId,
) -> Result<Composed, SchedulerError> {
    let Some(d) = p.state.deploy(deploy) else {
        return Ok(Composed::Skip);
    };
    p.run_spec(cfg, d, instance, digest, node).await
}

//! What comes next for the running deploy once its image is resolved
//! (SPEC §6): `pre_deploy_started` or straight to `update_started`; the
//! pre-deploy run placed on a node and enqueued, and given up on once its
//! node must have died with it; `update_started` after a successful
//! pre-deploy; a cron job's deploy live as soon as it is updating (it runs
//! nothing between runs). From `updating` on, [`reconcile`](super::reconcile)
//! takes over.

use std::time::Duration;

use berth_schemas::ids::{DeployId, InstanceId};
use berth_schemas::model::{DeployPhase, DeployStatus, ServiceType};
use chrono::{DateTime, TimeDelta, Utc};

use super::steps::{Recheck, Step, Timings, Work};
use super::{place, shortfall, ClusterView, PLACEMENT_RETRY};
use crate::service::{Command, Deploy, ServiceConfig};

/// The pre-deploy run of a deploy has a fixed id, so every pass enqueues
/// the same one-off (and a node runs it at most once).
pub fn pre_deploy_instance(deploy: &DeployId) -> Option<InstanceId> {
    let body = deploy.as_str().split_once('-')?.1;
    format!("ins-{body}").parse().ok()
}

/// The steps that move running deploy `d` on, decided on the state loaded
/// at stream sequence `seq`.
pub(super) fn next(
    cfg: &ServiceConfig,
    d: &Deploy,
    seq: u64,
    view: &ClusterView,
    timings: &Timings,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let Some(digest) = d.digest() else {
        return vec![];
    };
    let id = d.id.clone();
    match (d.status, d.phase) {
        (DeployStatus::UpdateInProgress, Some(DeployPhase::Pulling)) => {
            if cfg.pre_deploy_command.is_some() {
                let key = format!("pre-deploy-started-{id}");
                vec![Step::decide(
                    Command::RecordPreDeployStarted { deploy: id },
                    key,
                )]
            } else {
                let key = format!("update-started-{id}");
                vec![Step::decide(
                    Command::RecordUpdateStarted { deploy: id },
                    key,
                )]
            }
        }
        (DeployStatus::PreDeployInProgress, _) => {
            pre_deploy(cfg, d, digest, seq, view, timings, now)
        }
        (DeployStatus::UpdateInProgress, Some(DeployPhase::PreDeploy))
            if d.pre_deploy.as_ref().is_some_and(|o| o.success) =>
        {
            let key = format!("update-started-{id}");
            vec![Step::decide(
                Command::RecordUpdateStarted { deploy: id },
                key,
            )]
        }
        (DeployStatus::UpdateInProgress, Some(DeployPhase::Updating))
            if cfg.service_type == ServiceType::CronJob =>
        {
            // A cron job runs nothing between runs: resolved is ready.
            let key = format!("live-{id}");
            let digest = digest.to_owned();
            vec![Step::decide(
                Command::RecordLive { deploy: id, digest },
                key,
            )]
        }
        _ => vec![],
    }
}

/// A pre-deploy run under way: enqueued (again) while the work queue still
/// dedupes it, failed once it must have reported back.
fn pre_deploy(
    cfg: &ServiceConfig,
    d: &Deploy,
    digest: &str,
    seq: u64,
    view: &ClusterView,
    timings: &Timings,
    now: DateTime<Utc>,
) -> Vec<Step> {
    let id = d.id.clone();
    // The node reports a timed-out run itself; this catches a node that
    // died with the run, which nobody else would report.
    let limit =
        Duration::from_secs(u64::from(timings.pre_deploy_timeout_secs)) + timings.pre_deploy_grace;
    // When the run has been going for `after`, if representable.
    let since_plus = |after: Duration| {
        let since = d.pre_deploy_started_at?;
        since.checked_add_signed(TimeDelta::from_std(after).ok()?)
    };
    // Look again when the run must have reported at the latest: what is
    // left of the limit, not a whole limit from now.
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
        return vec![Step::decide(command, key)];
    }
    let deadline = Step::recheck(left, Recheck::PreDeployDeadline);
    // Enqueued again only while the queue's dedupe (same message id on
    // every node's queue of the one work stream) still holds the first
    // enqueue: later, a repeat could reach another node and run it twice.
    // A run never enqueued by then (a scheduler down that long) ends at the
    // deadline above. Three quarters of the work stream's duplicate window:
    // well inside it.
    let reenqueue = timings.duplicate_window.mul_f64(0.75);
    if since_plus(reenqueue).is_some_and(|until| now > until) {
        return vec![deadline];
    }
    let (Some(instance), Some(command)) =
        (pre_deploy_instance(&id), cfg.pre_deploy_command.clone())
    else {
        return vec![];
    };
    // Any node with room; none is said on the timeline (once per
    // shortfall), or the deploy would just sit until its deadline.
    let Some(node) = place(&view.nodes, &cfg.plan, 1, &[])
        .ok()
        .and_then(|v| v.into_iter().next())
    else {
        let blocked = shortfall(&view.nodes, &cfg.plan, &id, 1);
        let key = format!("blocked-{id}-{seq}");
        return vec![
            Step::decide(Command::RecordPlacementBlocked(blocked), key),
            Step::recheck(PLACEMENT_RETRY, Recheck::Placement),
        ];
    };
    vec![
        Step::Enqueue {
            node,
            id: format!("pre-deploy-{id}"),
            work: Work::PreDeploy {
                instance,
                deploy: id,
                digest: digest.to_owned(),
                command,
                timeout_secs: timings.pre_deploy_timeout_secs,
            },
        },
        deadline,
    ]
}

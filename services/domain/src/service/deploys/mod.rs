//! The deploy state machine (SPEC §6, §7): admitting requests under the
//! overlap policy, explicit cancels, the facts workers report about the
//! running deploy, and what follows when the running deploy ends. Where a
//! deploy's state changes: these decisions, and in [`apply`] the events
//! they produce applied to it.
//!
//! Worker facts are checked against the deploy they name:
//! - unknown deploy → not found;
//! - created or queued (not started, so no worker can know it) → conflict;
//! - running → the fact must fit the deploy's phase, a repeat of a fact
//!   already applied yields no events, a fact out of order is a conflict;
//! - ended or live → a late or repeated fact, ignored (no events), except
//!   pulls of the live deploy's digest (scale-out, restart), which are recorded.

use berth_schemas::events::{
    CancelReason, DeployCanceled, DeployCreated, DeployDeactivated, DeployFailed, DeployLive,
    DeployQueued, DeployRetrying, DeployStarted, ImagePullFailed, ImagePulled, ImageResolved,
    PreDeployEnded, PreDeployStarted, RollbackTargetMissing, UpdateStarted,
};
use berth_schemas::ids::{DeployId, NodeId};
use berth_schemas::model::{
    DeployPhase, DeployStatus, DeployTrigger, OverlapPolicy, PullFailureReason, ResolvedImage,
};
use berth_schemas::Event;
use chrono::{DateTime, Utc};

use super::state::{ServiceConfig, ServiceState, ServiceStatus};
use super::DeployRequest;
use crate::error::DomainError;
use crate::reference::{Digest, Reference};

mod apply;

pub(super) use apply::apply;
pub use apply::{Deploy, PreDeployOutcome, PullFailures};

type Decision = Result<Vec<Event>, DomainError>;

/// Render's name for a status, for messages.
pub(super) fn status_name(s: DeployStatus) -> &'static str {
    match s {
        DeployStatus::Created => "created",
        DeployStatus::Queued => "queued",
        DeployStatus::UpdateInProgress => "update_in_progress",
        DeployStatus::Live => "live",
        DeployStatus::Deactivated => "deactivated",
        DeployStatus::UpdateFailed => "update_failed",
        DeployStatus::Canceled => "canceled",
        DeployStatus::PreDeployInProgress => "pre_deploy_in_progress",
        DeployStatus::PreDeployFailed => "pre_deploy_failed",
    }
}

pub(super) fn config(state: &ServiceState) -> Result<&ServiceConfig, DomainError> {
    state
        .config
        .as_ref()
        .ok_or_else(|| DomainError::not_found("service", ""))
}

fn find<'a>(state: &'a ServiceState, id: &DeployId) -> Result<&'a Deploy, DomainError> {
    state
        .deploy(id)
        .ok_or_else(|| DomainError::not_found("deploy", id))
}

/// A new deploy request: refused on a suspended service, else admitted.
pub(super) fn request(state: &ServiceState, req: DeployRequest) -> Decision {
    let cfg = config(state)?;
    if state.status == ServiceStatus::Suspended {
        return Err(DomainError::conflict(
            "service is suspended; resume it to deploy",
        ));
    }
    if let Some(existing) = state.deploy(&req.deploy) {
        // The same request decided again (a retried command) is already done.
        if existing.trigger == req.trigger && existing.rollback_of == req.rollback_of {
            return Ok(vec![]);
        }
        return Err(DomainError::conflict(format!(
            "deploy id {} is already used",
            req.deploy
        )));
    }
    let image = match (req.trigger, &req.rollback_of, &req.image) {
        (DeployTrigger::Rollback, Some(target), None) => rollback_image(state, target)?,
        (DeployTrigger::Rollback, None, _) => {
            return Err(DomainError::invalid(
                "deployId",
                "a rollback needs the deploy to roll back to",
            ))
        }
        (DeployTrigger::Rollback, Some(_), Some(_)) => {
            return Err(DomainError::invalid(
                "imageUrl",
                "a rollback deploys the target's recorded digest; no image may be given",
            ))
        }
        (_, Some(_), _) => {
            return Err(DomainError::invalid(
                "deployId",
                "only a rollback names a deploy to roll back to",
            ))
        }
        (_, None, Some(image)) => override_image(cfg, image)?,
        (_, None, None) => cfg.image.clone(),
    };
    Ok(admit(
        state,
        cfg.overlap_policy,
        DeployCreated {
            deploy: req.deploy,
            trigger: req.trigger,
            image,
            credential: cfg.credential.clone(),
            rollback_of: req.rollback_of,
        },
    ))
}

/// `repo@digest` of the target's recorded digest: never its tag (SPEC §7).
fn rollback_image(state: &ServiceState, target: &DeployId) -> Result<String, DomainError> {
    let d = find(state, target)?;
    let Some(digest) = d.digest() else {
        return Err(DomainError::conflict(format!(
            "deploy {target} never resolved an image digest; there is nothing to roll back to"
        )));
    };
    if !d.rollback_eligible {
        return Err(DomainError::conflict(format!(
            "deploy {target} is not rollback-eligible: its digest {digest} is no longer in the \
             registry (rollback_target_missing)"
        )));
    }
    let broken = |what: String| {
        DomainError::conflict(format!("deploy {target} cannot be rolled back to: {what}"))
    };
    let reference = Reference::parse(&d.image).map_err(|e| broken(e.to_string()))?;
    let digest = Digest::parse(digest).map_err(|e| broken(e.to_string()))?;
    Ok(format!("{}@{}", reference.name(), digest))
}

/// Another tag or digest of the service's own repository, normalised.
fn override_image(cfg: &ServiceConfig, image: &str) -> Result<String, DomainError> {
    let wanted =
        Reference::parse(image).map_err(|e| DomainError::invalid("imageUrl", e.to_string()))?;
    let own = Reference::parse(&cfg.image)
        .map_err(|e| DomainError::conflict(format!("the service's image is invalid: {e}")))?;
    if !wanted.same_repository(&own) {
        return Err(DomainError::invalid(
            "imageUrl",
            format!(
                "must name the service's repository {}, not {}",
                own.name(),
                wanted.name()
            ),
        ));
    }
    Ok(wanted.to_string())
}

/// `deploy_created` plus what the overlap policy makes of it.
pub(super) fn admit(
    state: &ServiceState,
    policy: OverlapPolicy,
    created: DeployCreated,
) -> Vec<Event> {
    let id = created.deploy.clone();
    let trigger = Some(created.trigger);
    let mut out: Vec<Event> = vec![created.into()];
    match (&state.active, policy) {
        (None, _) => {}
        (Some(_), OverlapPolicy::Wait) => {
            out.push(DeployQueued { deploy: id }.into());
            return out;
        }
        (Some(running), OverlapPolicy::Cancel) => {
            out.push(canceled(running, CancelReason::OverlapCancel, Some(&id)));
            // Left over from a time the policy was `wait`: the new one is newer.
            for queued in &state.queue {
                out.push(canceled(queued, CancelReason::Superseded, Some(&id)));
            }
        }
    }
    out.push(
        DeployStarted {
            deploy: id,
            trigger,
        }
        .into(),
    );
    out
}

fn canceled(deploy: &DeployId, reason: CancelReason, by: Option<&DeployId>) -> Event {
    DeployCanceled {
        deploy: deploy.clone(),
        reason,
        by: by.cloned(),
    }
    .into()
}

/// The running deploy ended: the newest queued deploy starts, older queued
/// ones are superseded by it. Part of the same decision, so atomic.
fn promote_next(state: &ServiceState, out: &mut Vec<Event>) {
    if let Some((newest, older)) = state.queue.split_last() {
        for q in older {
            out.push(canceled(q, CancelReason::Superseded, Some(newest)));
        }
        out.push(
            DeployStarted {
                deploy: newest.clone(),
                trigger: state.deploy(newest).map(|d| d.trigger),
            }
            .into(),
        );
    }
}

/// Suspend or delete: every running and queued deploy is canceled.
pub(super) fn stop_all(state: &ServiceState) -> Vec<Event> {
    state
        .active
        .iter()
        .chain(state.queue.iter())
        .map(|d| canceled(d, CancelReason::ServiceStopped, None))
        .collect()
}

/// Explicit cancel of a queued or running deploy.
pub(super) fn cancel(state: &ServiceState, id: &DeployId) -> Decision {
    let d = find(state, id)?;
    match d.status {
        DeployStatus::Created | DeployStatus::Queued => {
            Ok(vec![canceled(id, CancelReason::Explicit, None)])
        }
        DeployStatus::UpdateInProgress | DeployStatus::PreDeployInProgress => {
            let mut out = vec![canceled(id, CancelReason::Explicit, None)];
            promote_next(state, &mut out);
            Ok(out)
        }
        DeployStatus::Canceled => Ok(vec![]),
        DeployStatus::Live => Err(DomainError::conflict(format!(
            "deploy {id} is live; deploy or roll back to replace it"
        ))),
        s => Err(DomainError::conflict(format!(
            "deploy {id} already ended ({})",
            status_name(s)
        ))),
    }
}

/// The deploy a worker fact is about, if it is running; `None` means the
/// fact is late or repeated and changes nothing.
fn running<'a>(
    state: &'a ServiceState,
    id: &DeployId,
    fact: &str,
) -> Result<Option<&'a Deploy>, DomainError> {
    let d = find(state, id)?;
    if d.is_running() {
        Ok(Some(d))
    } else if matches!(d.status, DeployStatus::Created | DeployStatus::Queued) {
        Err(DomainError::conflict(format!(
            "deploy {id} is {}: it has not started, so it cannot have {fact}",
            status_name(d.status)
        )))
    } else {
        Ok(None)
    }
}

/// Longest registry message a `deploy_retrying` keeps.
const MAX_RETRY_MESSAGE: usize = 512;

/// The resolver retries: recorded while the deploy waits for its digest,
/// nothing otherwise (a late report after the digest, a cancel or a
/// failure changes nothing).
pub(super) fn retrying(
    state: &ServiceState,
    id: DeployId,
    attempt: u32,
    retry_at: DateTime<Utc>,
    message: String,
) -> Decision {
    let waits = state
        .deploy(&id)
        .is_some_and(|d| d.is_running() && d.resolved.is_none());
    if !waits {
        return Ok(vec![]);
    }
    let message = berth_schemas::cut(&message, MAX_RETRY_MESSAGE).to_owned();
    Ok(vec![DeployRetrying {
        deploy: id,
        attempt,
        retry_at,
        message,
    }
    .into()])
}

pub(super) fn resolved(state: &ServiceState, id: DeployId, image: ResolvedImage) -> Decision {
    Digest::parse(&image.digest).map_err(|e| DomainError::invalid("digest", e.to_string()))?;
    if let Some(index) = &image.index_digest {
        Digest::parse(index).map_err(|e| DomainError::invalid("indexDigest", e.to_string()))?;
    }
    let Some(d) = running(state, &id, "resolved")? else {
        return Ok(vec![]);
    };
    match &d.resolved {
        Some(r) if *r == image => Ok(vec![]),
        Some(r) => Err(DomainError::conflict(format!(
            "deploy {id} already resolved to {}; a deploy runs one digest",
            r.digest
        ))),
        None => {
            // A deploy by digest is pinned: the resolver may only confirm it.
            if let Ok(reference) = Reference::parse(&d.image) {
                if let Some(pin) = reference.digest() {
                    let pin = pin.as_str();
                    if image.digest != pin && image.index_digest.as_deref() != Some(pin) {
                        return Err(DomainError::conflict(format!(
                            "deploy {id} is pinned to {pin} but resolved to {}",
                            image.digest
                        )));
                    }
                }
            }
            Ok(vec![ImageResolved { deploy: id, image }.into()])
        }
    }
}

pub(super) fn pull_failed(
    state: &ServiceState,
    deploy: Option<DeployId>,
    node: Option<NodeId>,
    image: String,
    reason: PullFailureReason,
    message: String,
) -> Decision {
    let detail = format!("{reason}: {message}");
    let event: Event = ImagePullFailed {
        deploy: deploy.clone(),
        node,
        image,
        reason,
        message,
    }
    .into();
    let Some(id) = deploy else {
        return Ok(vec![event]);
    };
    if state.live.as_ref() == Some(&id) {
        // A pull of the serving digest (scale-out, restart) failed: recorded,
        // and the deploy stays live.
        return Ok(vec![event]);
    }
    let Some(_) = running(state, &id, "failed to pull")? else {
        return Ok(vec![]);
    };
    let mut out = vec![
        event,
        DeployFailed {
            deploy: id,
            status: DeployStatus::UpdateFailed,
            reason: detail,
        }
        .into(),
    ];
    promote_next(state, &mut out);
    Ok(out)
}

pub(super) fn pulled(state: &ServiceState, id: DeployId, node: NodeId, digest: String) -> Decision {
    let d = if state.live.as_ref() == Some(&id) {
        find(state, &id)?
    } else {
        match running(state, &id, "been pulled")? {
            Some(d) => d,
            None => return Ok(vec![]),
        }
    };
    match d.digest() {
        None => Err(DomainError::conflict(format!(
            "deploy {id} has not resolved a digest yet"
        ))),
        Some(have) if have != digest => Err(DomainError::conflict(format!(
            "deploy {id} runs {have}, not the pulled {digest}"
        ))),
        Some(_) if d.pulled_on.contains(&node) => Ok(vec![]),
        Some(_) => Ok(vec![ImagePulled {
            deploy: id,
            node,
            digest,
        }
        .into()]),
    }
}

pub(super) fn pre_deploy_started(state: &ServiceState, id: DeployId) -> Decision {
    let Some(d) = running(state, &id, "started its pre-deploy command")? else {
        return Ok(vec![]);
    };
    match d.phase {
        Some(DeployPhase::Pulling) => Ok(vec![PreDeployStarted { deploy: id }.into()]),
        Some(DeployPhase::PreDeploy) => Ok(vec![]),
        Some(DeployPhase::Resolving) | None => Err(DomainError::conflict(format!(
            "deploy {id} has not resolved its image; the pre-deploy command runs after the pull"
        ))),
        Some(DeployPhase::Updating) => Err(DomainError::conflict(format!(
            "deploy {id} is already starting instances; the pre-deploy command runs before"
        ))),
    }
}

pub(super) fn pre_deploy_ended(
    state: &ServiceState,
    id: DeployId,
    success: bool,
    exit_code: Option<i32>,
    reason: Option<String>,
) -> Decision {
    let Some(d) = running(state, &id, "ended its pre-deploy command")? else {
        return Ok(vec![]);
    };
    if d.status != DeployStatus::PreDeployInProgress {
        return if d.pre_deploy.is_some() {
            Ok(vec![])
        } else {
            Err(DomainError::conflict(format!(
                "deploy {id} has no pre-deploy command running"
            )))
        };
    }
    let why = match (&reason, exit_code) {
        (Some(r), _) => r.clone(),
        (None, Some(code)) => format!("pre-deploy command exited with code {code}"),
        (None, None) => "pre-deploy command failed".to_owned(),
    };
    let mut out: Vec<Event> = vec![PreDeployEnded {
        deploy: id.clone(),
        success,
        exit_code,
        reason,
    }
    .into()];
    if !success {
        out.push(
            DeployFailed {
                deploy: id,
                status: DeployStatus::PreDeployFailed,
                reason: why,
            }
            .into(),
        );
        promote_next(state, &mut out);
    }
    Ok(out)
}

pub(super) fn update_started(state: &ServiceState, id: DeployId) -> Decision {
    let Some(d) = running(state, &id, "started its update")? else {
        return Ok(vec![]);
    };
    match (d.status, d.phase) {
        (DeployStatus::PreDeployInProgress, _) => Err(DomainError::conflict(format!(
            "deploy {id} is still running its pre-deploy command"
        ))),
        (_, Some(DeployPhase::Updating)) => Ok(vec![]),
        (_, Some(DeployPhase::Pulling | DeployPhase::PreDeploy)) => {
            Ok(vec![UpdateStarted { deploy: id }.into()])
        }
        (_, Some(DeployPhase::Resolving) | None) => Err(DomainError::conflict(format!(
            "deploy {id} has not resolved its image yet"
        ))),
    }
}

pub(super) fn live(state: &ServiceState, id: DeployId, digest: String) -> Decision {
    let Some(d) = running(state, &id, "gone live")? else {
        return Ok(vec![]);
    };
    if d.phase != Some(DeployPhase::Updating) {
        return Err(DomainError::conflict(format!(
            "deploy {id} cannot go live before its update started"
        )));
    }
    if d.digest() != Some(digest.as_str()) {
        return Err(DomainError::conflict(format!(
            "deploy {id} resolved {}, but {digest} was reported live",
            d.digest().unwrap_or("nothing")
        )));
    }
    let mut out: Vec<Event> = vec![DeployLive {
        deploy: id.clone(),
        digest,
    }
    .into()];
    if let Some(previous) = &state.live {
        out.push(
            DeployDeactivated {
                deploy: previous.clone(),
                by: id,
            }
            .into(),
        );
    }
    promote_next(state, &mut out);
    Ok(out)
}

pub(super) fn failed(
    state: &ServiceState,
    id: DeployId,
    status: DeployStatus,
    reason: String,
) -> Decision {
    if !matches!(
        status,
        DeployStatus::UpdateFailed | DeployStatus::PreDeployFailed
    ) {
        return Err(DomainError::invalid(
            "status",
            "a deploy fails as update_failed or pre_deploy_failed",
        ));
    }
    let Some(d) = running(state, &id, "failed")? else {
        return Ok(vec![]);
    };
    if status == DeployStatus::PreDeployFailed && d.status != DeployStatus::PreDeployInProgress {
        return Err(DomainError::conflict(format!(
            "deploy {id} is not running a pre-deploy command"
        )));
    }
    let mut out: Vec<Event> = vec![DeployFailed {
        deploy: id,
        status,
        reason,
    }
    .into()];
    promote_next(state, &mut out);
    Ok(out)
}

pub(super) fn rollback_target_missing(
    state: &ServiceState,
    id: DeployId,
    digest: String,
) -> Decision {
    let d = find(state, &id)?;
    if d.digest() != Some(digest.as_str()) {
        return Err(DomainError::invalid(
            "digest",
            format!(
                "deploy {id} recorded {}, not {digest}",
                d.digest().unwrap_or("no digest")
            ),
        ));
    }
    if !d.rollback_eligible {
        return Ok(vec![]);
    }
    Ok(vec![RollbackTargetMissing { deploy: id, digest }.into()])
}

/// A deploy of the service's (possibly just updated) settings and credential.
pub(super) fn deploy_of_config(
    state: &ServiceState,
    cfg: &ServiceConfig,
    deploy: DeployId,
    trigger: DeployTrigger,
) -> Decision {
    if state.deploy(&deploy).is_some() {
        return Err(DomainError::conflict(format!(
            "deploy id {deploy} is already used"
        )));
    }
    Ok(admit(
        state,
        cfg.overlap_policy,
        DeployCreated {
            deploy,
            trigger,
            image: cfg.image.clone(),
            credential: cfg.credential.clone(),
            rollback_of: None,
        },
    ))
}

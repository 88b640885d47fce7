//! The service aggregate: a service's settings, its deploys (the state
//! machine of SPEC §6, one running deploy at a time), its instance count and
//! its cron runs. All of them live on the service's own subject, so every
//! rule about "one deploy at a time" is decided against one consistent state.
//!
//! - [`apply`] / [`apply_at`] fold events into a [`ServiceState`];
//! - [`decide`] turns a [`Command`] into the events to append, atomically.
//!
//! Each concern keeps its decisions and the `apply` of the events they
//! produce together, so the folder reads as the event flow:
//! `lifecycle.rs` (create, settings, suspend/resume, delete, scale,
//! restart), `deploys/` (a deploy's state machine: requests, worker facts,
//! and in `deploys/apply.rs` every change to a deploy's state),
//! `instances/` (where instances run: placement facts and node reports),
//! `cron.rs` (cron runs); `state.rs` holds the [`ServiceState`] they share.
//!
//! Decisions and the deploy state machine:
//!
//! ```text
//! request ─► created ─┬─► update_in_progress (resolving → pulling)   no deploy running
//!                     │     ├─► pre_deploy_in_progress ─► update_in_progress (updating) ─► live
//!                     │     └─► update_in_progress (updating) ─► live   (no pre-deploy)
//!                     └─► queued                                      one running, policy `wait`
//! running ─► update_failed | pre_deploy_failed | canceled             the previous live keeps serving
//! live ─► deactivated                                                 only when a newer one goes live
//! ```
//!
//! When the running deploy ends (live, failed or canceled) the same decision
//! starts the newest queued deploy and cancels the older queued ones as
//! `superseded`. Under policy `cancel` a request cancels the running deploy
//! (`overlap_cancel`) and starts at once.
//!
//! Render's rules this follows where SPEC is silent:
//! - a suspended service refuses deploy requests (409) and resuming it starts
//!   a deploy with trigger `service_resumed`; suspending or deleting cancels
//!   the running and queued deploys (`service_stopped`) and the active cron
//!   run, but the live deploy stays `live` (it is what resume replaces);
//! - an update redeploys (trigger `service_updated`) when it changes what the
//!   instances run: image, credential, plan, custom command or environment;
//!   names, health check path, schedule, notifications, overlap policy,
//!   shutdown delay and the pre-deploy command apply from the next deploy;
//! - a deploy always pulls with the service's current credential: that is the
//!   credential attached to the service, the only one that cannot be removed
//!   under it.

pub mod autoscaling;
mod cron;
mod deploys;
pub mod disk_usage;
mod domains;
pub mod instances;
mod jobs;
mod lifecycle;
pub mod platform_env;
pub mod snapshots;
mod state;
mod target;
pub mod validate;

#[cfg(test)]
mod tests;

use berth_schemas::events::{
    InstanceRescheduled, InstanceScheduled, PlacementBlocked, ServiceSettings,
};
use berth_schemas::ids::{
    CronRunId, CustomDomainId, DeployId, DiskId, DiskSnapshotKey, InstanceId, JobId, NodeId,
    OwnerId,
};
use berth_schemas::model::{
    DeployStatus, DeployTrigger, EnvVars, NotifySetting, OverlapPolicy, Plan, PullFailureReason,
    ResolvedImage, Sealed, ServiceType,
};
use berth_schemas::{Envelope, Event};
use chrono::{DateTime, Utc};

pub use cron::{CronRun, CronState, CRON_RUN_STATUSES};
pub use deploys::{Deploy, PreDeployOutcome, PullFailures};
pub use domains::{Certificate, CustomDomain, CustomDomains};
pub use instances::{Instance, InstancePhase, Instances};
pub use jobs::{job_instance, Job, JobStatus, Jobs, KEPT_JOBS, MAX_ACTIVE_JOBS, MAX_START_COMMAND};
pub use lifecycle::needs_redeploy;
pub use state::{apply, apply_at, ServiceConfig, ServiceState, ServiceStatus, KEPT_ENDED_DEPLOYS};
pub use target::{run_instance, Target};

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;

/// Render's default region.
pub const DEFAULT_REGION: &str = "oregon";

/// Everything needed to create a service. The caller has already verified
/// that the image is accessible (SPEC §4) and attached the credential.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateService {
    pub owner: OwnerId,
    pub name: String,
    pub service_type: ServiceType,
    /// As typed; normalised by the rules.
    pub image: String,
    pub credential: Option<berth_schemas::ids::CredentialId>,
    pub region: String,
    pub plan: Plan,
    /// Default 1. Cron jobs take only 1.
    pub num_instances: Option<u32>,
    pub docker_command: Option<String>,
    pub env_vars: EnvVars,
    /// Sealed by the caller with `seal_context::secret_file`.
    pub secret_files: berth_schemas::model::SecretFiles,
    pub pre_deploy_command: Option<String>,
    /// Web services only.
    pub health_check_path: Option<String>,
    /// Cron jobs only, and required for them.
    pub schedule: Option<String>,
    pub notify: Option<NotifySetting>,
    /// Default `wait`.
    pub overlap_policy: Option<OverlapPolicy>,
    /// Default 30 s, 1–300.
    pub shutdown_delay_secs: Option<u16>,
    /// Web services only; default on.
    pub https_redirect: Option<bool>,
    /// The deploy hook's key, generated and sealed by the caller.
    pub hook_key: Sealed,
    /// Id of the initial deploy (trigger `service_created`).
    pub deploy: DeployId,
    /// A persistent disk (its id made by the caller): web services,
    /// private services and workers, with one instance.
    pub disk: Option<berth_schemas::model::Disk>,
    /// Its maintenance mode (web services).
    pub maintenance_mode: Option<berth_schemas::model::MaintenanceMode>,
    /// The client addresses the router lets through (web services;
    /// `None`: every one).
    pub ip_allow_list: Option<Vec<berth_schemas::model::CidrBlock>>,
    /// Its autoscaling (Render's `serviceDetails.autoscaling`): when on,
    /// `num_instances` is moved into its range.
    pub autoscaling: Option<berth_schemas::model::AutoscalingConfig>,
}

impl CreateService {
    /// A service with defaults for everything optional: region `oregon`, the
    /// `starter` plan (0.5 CPU, 512 MiB), one instance, no command overrides.
    pub fn new(
        owner: OwnerId,
        name: &str,
        service_type: ServiceType,
        image: &str,
        hook_key: Sealed,
        deploy: DeployId,
    ) -> Self {
        CreateService {
            owner,
            name: name.to_owned(),
            service_type,
            image: image.to_owned(),
            credential: None,
            region: DEFAULT_REGION.to_owned(),
            plan: Plan {
                name: "starter".to_owned(),
                cpu_millis: 500,
                memory_mib: 512,
            },
            num_instances: None,
            docker_command: None,
            env_vars: EnvVars::new(),
            secret_files: Default::default(),
            pre_deploy_command: None,
            health_check_path: None,
            schedule: None,
            notify: None,
            overlap_policy: None,
            shutdown_delay_secs: None,
            https_redirect: None,
            hook_key,
            deploy,
            disk: None,
            maintenance_mode: None,
            ip_allow_list: None,
            autoscaling: None,
        }
    }
}

/// A request for a new deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    /// The new deploy's id (fresh, from the caller).
    pub deploy: DeployId,
    pub trigger: DeployTrigger,
    /// A tag or digest of the service's repository (deploy hook `imgURL`, API
    /// `imageUrl`); `None` deploys the service's configured image. Must be
    /// `None` for rollbacks, which deploy the target's recorded digest.
    pub image: Option<String>,
    /// For trigger `rollback` (and only then): the deploy to roll back to.
    pub rollback_of: Option<DeployId>,
}

impl DeployRequest {
    /// Deploy the service's configured image.
    pub fn new(deploy: DeployId, trigger: DeployTrigger) -> Self {
        DeployRequest {
            deploy,
            trigger,
            image: None,
            rollback_of: None,
        }
    }

    /// Deploy another tag or digest of the service's repository.
    pub fn with_image(deploy: DeployId, trigger: DeployTrigger, image: &str) -> Self {
        DeployRequest {
            image: Some(image.to_owned()),
            ..DeployRequest::new(deploy, trigger)
        }
    }

    /// Roll back to `target`'s recorded digest.
    pub fn rollback(deploy: DeployId, target: DeployId) -> Self {
        DeployRequest {
            deploy,
            trigger: DeployTrigger::Rollback,
            image: None,
            rollback_of: Some(target),
        }
    }
}

/// What a caller (API, bus command, worker) asks of a service.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create the service and start its initial deploy.
    Create(Box<CreateService>),
    /// Give up a creation that was never finished: a service id that has
    /// no `service_created` can never be created afterwards. Nothing when
    /// the service was created (or given up) already.
    AbandonCreation,
    /// Change settings; `deploy` is used if the change needs a redeploy.
    Update {
        settings: Box<ServiceSettings>,
        deploy: DeployId,
    },
    /// Renames the service's disk, grows it, or moves where it is
    /// mounted (each optional; its size never shrinks).
    UpdateDisk {
        name: Option<String>,
        mount_path: Option<String>,
        size_gb: Option<u32>,
    },
    /// Give a service without a disk one (`deploy` brings it to the
    /// instance, when the service is active).
    AddDisk {
        disk: berth_schemas::model::Disk,
        deploy: DeployId,
    },
    /// Remove the service's disk and its data (`deploy` starts an
    /// instance without it, when the service is active).
    RemoveDisk {
        deploy: DeployId,
    },
    /// Ask the disk's node for a snapshot of the disk now.
    RequestDiskSnapshot,
    /// The disk's node took a snapshot of `disk`.
    RecordDiskSnapshot {
        disk: DiskId,
        key: DiskSnapshotKey,
        node: NodeId,
        bytes: u64,
    },
    /// Set the disk back to its snapshot `key` (`deploy` brings it to the
    /// instance, when the service is active).
    RestoreDiskSnapshot {
        key: DiskSnapshotKey,
        deploy: DeployId,
    },
    /// The disk's node measured what `disk` holds (recorded when its use
    /// crosses into or out of high).
    RecordDiskUsage {
        disk: DiskId,
        used_bytes: u64,
        size_bytes: u64,
    },
    /// Set, change or (`None`) remove its override of the owner's log stream.
    SetLogStream(Option<berth_schemas::model::LogStreamOverride>),
    Suspend,
    /// Resume and deploy (trigger `service_resumed`) as `deploy`.
    Resume {
        deploy: DeployId,
    },
    Delete,
    Scale {
        num_instances: u32,
    },
    /// Set (`Some`) or remove (`None`) its autoscaling.
    SetAutoscaling(Option<berth_schemas::model::AutoscalingConfig>),
    /// The autoscaler's change of count from `from` instances, decided on
    /// the autoscaling `on` (nothing when either is no longer so).
    Autoscale {
        from: u32,
        on: berth_schemas::model::AutoscalingConfig,
        change: autoscaling::Change,
    },
    /// The autoscaler's change to `to` instances is done.
    RecordAutoscalingEnded {
        to: u32,
    },
    Restart,
    RegenerateHookKey {
        hook_key: Sealed,
    },
    RequestDeploy(DeployRequest),
    CancelDeploy {
        deploy: DeployId,
    },

    // ---- custom domains (web services) ----
    /// Attach a custom domain, normalised and already claimed for this
    /// service on its own subject (`crate::custom_domain`).
    AddCustomDomain {
        domain: CustomDomainId,
        name: String,
    },
    /// Detach a custom domain (its claim is released after).
    RemoveCustomDomain {
        name: String,
    },
    /// Record what the certificate issuer found for one of the service's
    /// custom domains: a `certificate_issued` or `certificate_failed`.
    RecordCertificate(Box<Event>),

    // ---- facts reported by the workers about the running deploy ----
    /// The resolver turned the reference into a digest.
    RecordResolved {
        deploy: DeployId,
        image: ResolvedImage,
    },
    /// Resolving met a transient registry failure and is tried again at
    /// `retry_at` (recorded while the deploy still waits for its digest).
    RecordRetrying {
        deploy: DeployId,
        attempt: u32,
        retry_at: DateTime<Utc>,
        message: String,
    },
    /// A resolve or pull failed. `deploy: None` (or the live deploy) is a
    /// failure outside a deploy (restart, scale-out, cron run): recorded only.
    RecordPullFailed {
        deploy: Option<DeployId>,
        node: Option<NodeId>,
        image: String,
        reason: PullFailureReason,
        message: String,
    },
    /// A node holds the digest.
    RecordPulled {
        deploy: DeployId,
        node: NodeId,
        digest: String,
    },
    RecordPreDeployStarted {
        deploy: DeployId,
    },
    RecordPreDeployEnded {
        deploy: DeployId,
        success: bool,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
    RecordUpdateStarted {
        deploy: DeployId,
    },
    /// New instances are healthy, traffic moved, digest verified.
    RecordLive {
        deploy: DeployId,
        digest: String,
    },
    /// `status` is `update_failed` or `pre_deploy_failed`.
    RecordFailed {
        deploy: DeployId,
        status: DeployStatus,
        reason: String,
    },
    /// The registry no longer holds a deploy's digest.
    MarkRollbackTargetMissing {
        deploy: DeployId,
        digest: String,
    },

    /// A node saw `fact` about one of the service's instances (pull
    /// progress, started, healthy, exited, restarted, stopped): recorded as
    /// it is ([`crate::node::report`]).
    RecordInstanceFact(Box<Event>),

    // ---- placement, decided by the scheduler ----
    /// Place new instances and move instances off lost nodes, as one decision.
    Place {
        scheduled: Vec<InstanceScheduled>,
        rescheduled: Vec<InstanceRescheduled>,
    },
    /// `node` was lost: the service's instances there are marked lost.
    RecordServerFailed {
        node: NodeId,
    },
    /// Unwanted instances no node will report stopped (on a lost node, or
    /// never started) are recorded stopped.
    Release {
        instances: Vec<InstanceId>,
    },
    /// Take running instances out of routing before they are stopped.
    Drain {
        instances: Vec<InstanceId>,
    },
    /// Some of a deploy's instances found no node with room.
    RecordPlacementBlocked(PlacementBlocked),

    // ---- cron runs ----
    /// Start a run of the live digest. `manual` runs cancel an active run;
    /// scheduled ones (`scheduled_for` required) are skipped while one is active.
    StartCronRun {
        run: CronRunId,
        manual: bool,
        scheduled_for: Option<DateTime<Utc>>,
    },
    CancelCronRun {
        run: CronRunId,
    },
    /// The active run was given to `node` to run.
    RecordCronRunPlaced {
        run: CronRunId,
        node: NodeId,
    },
    /// `status`: `succeeded`, `failed`, `canceled` or `timed_out`.
    /// `reason`: why it failed, when its exit code does not say.
    RecordCronRunEnded {
        run: CronRunId,
        status: String,
        exit_code: Option<i32>,
        reason: Option<String>,
    },

    // ---- one-off jobs ----
    /// Run `start_command` once in a container of the live deploy's image,
    /// on `plan` (the service's own when `None`).
    CreateJob {
        job: JobId,
        start_command: String,
        plan: Option<Plan>,
    },
    /// Cancel a pending or running job.
    CancelJob {
        job: JobId,
    },
    /// A command is being sent to run in `instance` on its node (an
    /// audit fact; refused for an instance the service does not have).
    RecordCommandRequested {
        instance: InstanceId,
        /// The command's first word.
        program: String,
        /// A terminal session, not one command.
        terminal: bool,
    },
    /// How a command sent to `instance` (or a terminal opened there)
    /// ended: an audit fact, recorded whether or not the instance is still
    /// the service's.
    RecordCommandEnded(berth_schemas::events::InstanceCommandEnded),
    /// The job was given to `node` to run.
    RecordJobPlaced {
        job: JobId,
        node: NodeId,
    },
    /// A node started the job's container.
    RecordJobStarted {
        job: JobId,
    },
    /// The job's container ended by itself (`success`: exit code 0).
    RecordJobEnded {
        job: JobId,
        success: bool,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
}

/// Under which name a service's fold is stored (see
/// `EventStore::persist_states`); a new name when `apply` changes.
pub const STATE_SNAPSHOT: &str = "service-v3";

/// The service aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Service;

impl Aggregate for Service {
    type State = ServiceState;
    type Command = Command;

    fn apply(state: ServiceState, event: &Event) -> ServiceState {
        apply(state, event)
    }

    fn fold(state: ServiceState, envelope: &Envelope) -> ServiceState {
        fold(state, envelope)
    }

    fn decide(
        state: &ServiceState,
        command: Command,
        ctx: &Ctx,
    ) -> Result<Vec<Event>, DomainError> {
        decide(state, command, ctx)
    }

    /// A cron run or job belongs to the deploy that is live when it
    /// starts, ends or is skipped: the digest it runs is that deploy's.
    fn correlation(state: &ServiceState, event: &Event) -> Option<DeployId> {
        match event {
            Event::CronJobRunStarted(_)
            | Event::CronJobRunEnded(_)
            | Event::CronJobRunPlaced(_)
            | Event::CronJobRunSkipped(_)
            | Event::JobCreated(_)
            | Event::JobStarted(_)
            | Event::JobPlaced(_)
            | Event::JobEnded(_) => state.live.clone(),
            _ => None,
        }
    }
}

/// A service's state folded with every deploy it ever had
/// ([`ServiceState::keeping_every_deploy`]): what a look past the recent
/// deploys a service holds is decided or answered on. A type of its own,
/// so the store never mistakes it for the usual fold.
#[derive(Debug, Clone, PartialEq)]
pub struct EveryDeploy(pub ServiceState);

impl Default for EveryDeploy {
    fn default() -> Self {
        EveryDeploy(ServiceState::keeping_every_deploy())
    }
}

/// The service aggregate over [`EveryDeploy`]: the same rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceHistory;

impl Aggregate for ServiceHistory {
    type State = EveryDeploy;
    type Command = Command;

    fn apply(state: EveryDeploy, event: &Event) -> EveryDeploy {
        EveryDeploy(apply(state.0, event))
    }

    fn fold(state: EveryDeploy, envelope: &Envelope) -> EveryDeploy {
        EveryDeploy(fold(state.0, envelope))
    }

    fn decide(state: &EveryDeploy, command: Command, ctx: &Ctx) -> Result<Vec<Event>, DomainError> {
        decide(&state.0, command, ctx)
    }

    fn correlation(state: &EveryDeploy, event: &Event) -> Option<DeployId> {
        Service::correlation(&state.0, event)
    }
}

/// Folds an envelope (records its time): `fold(S, &Envelope) -> S` for the store.
pub fn fold(state: ServiceState, envelope: &Envelope) -> ServiceState {
    apply_at(state, &envelope.event, Some(envelope.time))
}

/// Decides what a command means for the service.
pub fn decide(
    state: &ServiceState,
    command: Command,
    ctx: &Ctx,
) -> Result<Vec<Event>, DomainError> {
    if let Command::Create(c) = command {
        return lifecycle::create(state, *c, ctx);
    }
    if let Command::AbandonCreation = command {
        return Ok(lifecycle::abandon_creation(state));
    }
    if let Command::RecordInstanceFact(fact) = command {
        return crate::node::report(state, *fact);
    }
    // A deleted service's instances are still taken out of routing and let
    // go by the scheduler: refused, they would run on and hold their
    // nodes' CPU and memory for good.
    let stopping = matches!(command, Command::Drain { .. } | Command::Release { .. });
    let known = state.exists() || (stopping && state.status == ServiceStatus::Deleted);
    if !known {
        return Err(DomainError::not_found("service", ""));
    }
    match command {
        Command::Create(_) => Err(DomainError::conflict("service already exists")),
        Command::AbandonCreation | Command::RecordInstanceFact(_) => Ok(vec![]),
        Command::Update { settings, deploy } => lifecycle::update(state, *settings, deploy, ctx),
        Command::UpdateDisk {
            name,
            mount_path,
            size_gb,
        } => lifecycle::update_disk(state, name, mount_path, size_gb),
        Command::SetLogStream(stream) => lifecycle::set_log_stream(state, stream),
        Command::AddDisk { disk, deploy } => lifecycle::add_disk(state, disk, deploy),
        Command::RemoveDisk { deploy } => lifecycle::remove_disk(state, deploy),
        Command::RequestDiskSnapshot => snapshots::request(state),
        Command::RecordDiskSnapshot {
            disk,
            key,
            node,
            bytes,
        } => snapshots::taken(state, disk, key, node, bytes),
        Command::RestoreDiskSnapshot { key, deploy } => snapshots::restore(state, key, deploy),
        Command::RecordDiskUsage {
            disk,
            used_bytes,
            size_bytes,
        } => disk_usage::record(state, disk, used_bytes, size_bytes),
        Command::Suspend => Ok(lifecycle::suspend(state)),
        Command::Resume { deploy } => lifecycle::resume(state, deploy),
        Command::Delete => Ok(lifecycle::delete(state)),
        Command::Scale { num_instances } => lifecycle::scale(state, num_instances, ctx),
        Command::Restart => lifecycle::restart(state),
        Command::SetAutoscaling(to) => autoscaling::set(state, to, ctx.max_instances),
        Command::Autoscale { from, on, change } => autoscaling::autoscale(state, from, &on, change),
        Command::RecordAutoscalingEnded { to } => autoscaling::ended(state, to),
        Command::RegenerateHookKey { hook_key } => {
            Ok(vec![berth_schemas::events::DeployHookKeyRegenerated {
                hook_key,
            }
            .into()])
        }
        Command::RequestDeploy(req) => deploys::request(state, req),
        Command::CancelDeploy { deploy } => deploys::cancel(state, &deploy),
        Command::AddCustomDomain { domain, name } => domains::add(state, domain, name),
        Command::RemoveCustomDomain { name } => domains::remove(state, &name),
        Command::RecordCertificate(fact) => domains::certificate(state, *fact),
        Command::RecordResolved { deploy, image } => deploys::resolved(state, deploy, image),
        Command::RecordRetrying {
            deploy,
            attempt,
            retry_at,
            message,
        } => deploys::retrying(state, deploy, attempt, retry_at, message),
        Command::RecordPullFailed {
            deploy,
            node,
            image,
            reason,
            message,
        } => deploys::pull_failed(state, deploy, node, image, reason, message),
        Command::RecordPulled {
            deploy,
            node,
            digest,
        } => deploys::pulled(state, deploy, node, digest),
        Command::RecordPreDeployStarted { deploy } => deploys::pre_deploy_started(state, deploy),
        Command::RecordPreDeployEnded {
            deploy,
            success,
            exit_code,
            reason,
        } => deploys::pre_deploy_ended(state, deploy, success, exit_code, reason),
        Command::RecordUpdateStarted { deploy } => deploys::update_started(state, deploy),
        Command::RecordLive { deploy, digest } => deploys::live(state, deploy, digest),
        Command::RecordFailed {
            deploy,
            status,
            reason,
        } => deploys::failed(state, deploy, status, reason),
        Command::MarkRollbackTargetMissing { deploy, digest } => {
            deploys::rollback_target_missing(state, deploy, digest)
        }
        Command::Place {
            scheduled,
            rescheduled,
        } => instances::placement::place(state, scheduled, rescheduled),
        Command::RecordServerFailed { node } => {
            Ok(instances::placement::server_failed(state, node))
        }
        Command::Release { instances } => instances::placement::release(state, instances),
        Command::Drain { instances } => Ok(instances::placement::drain(state, instances)),
        Command::RecordPlacementBlocked(blocked) => instances::placement::blocked(state, blocked),
        Command::StartCronRun {
            run,
            manual,
            scheduled_for,
        } => cron::start_cron_run(state, run, manual, scheduled_for),
        Command::CancelCronRun { run } => cron::cancel_cron_run(state, &run),
        Command::RecordCronRunPlaced { run, node } => cron::cron_run_placed(state, &run, node),
        Command::RecordCronRunEnded {
            run,
            status,
            exit_code,
            reason,
        } => cron::cron_run_ended(state, &run, status, exit_code, reason),
        Command::CreateJob {
            job,
            start_command,
            plan,
        } => jobs::create(state, job, start_command, plan),
        Command::CancelJob { job } => jobs::cancel(state, &job),
        Command::RecordJobStarted { job } => jobs::started(state, &job),
        Command::RecordJobPlaced { job, node } => jobs::placed(state, &job, node),
        Command::RecordCommandRequested {
            instance,
            program,
            terminal,
        } => {
            let node = state
                .container_node(&instance)
                .ok_or_else(|| DomainError::not_found("instance", instance.as_str()))?;
            Ok(vec![berth_schemas::events::InstanceCommandRequested {
                instance,
                node,
                program,
                terminal,
            }
            .into()])
        }
        Command::RecordCommandEnded(ended) => Ok(vec![ended.into()]),
        Command::RecordJobEnded {
            job,
            success,
            exit_code,
            reason,
        } => jobs::ended(state, &job, success, exit_code, reason),
    }
}

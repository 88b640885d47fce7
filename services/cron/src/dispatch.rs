//! From the log's cron facts to node work, through a durable consumer on
//! the service subjects (explicit acks, bounded redelivery, dead letters:
//! `berth_eventlog::worker`). Per commit:
//!
//! - `cron_job_run_started` of a run that is still active → the run's
//!   `RunOnce{purpose: CronRun}` on a placed node, `Nats-Msg-Id` = the run
//!   id, so a redelivered commit (a crash between enqueue and ack) does not
//!   enqueue it twice within the server's duplicate window;
//! - `cron_job_run_ended` `canceled` (cancel, manual trigger, suspend,
//!   delete) or `timed_out` → `StopInstance` of the run's container on every live node
//!   (which node runs it is not in the log; the others answer "not running
//!   here"). Only for cancels younger than [`STOP_HORIZON`], so a new
//!   consumer replaying an old log sends no flood of stale stops;
//! - a pull failure ends the run `failed`: the node records that itself,
//!   by the run's id (so a late failure of a canceled run changes nothing);
//! - a run no live node has room for ends `failed` at once;
//! - one-off jobs the same way: `job_created` of a job still pending →
//!   its `RunOnce{purpose: Job}` (`Nats-Msg-Id` = the job id), a job no
//!   live node has room for ends `failed`, `job_ended` `canceled` → the
//!   stops.
//!
//! The run's env values and registry login are opened with the
//! installation key and sealed to the node it goes to
//! (`berth_runtime::node_key`); a node that has published no public key
//! yet gets nothing: the commit is retried, never sealed otherwise.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use berth_domain::credential::{self, CredentialState};
use berth_domain::reference::Reference;
use berth_domain::scheduler::place;
use berth_domain::service::{self, JobStatus, ServiceState};
use berth_eventlog::worker::{Job, WorkError, WorkHandler, Worker, WorkerConfig};
use berth_eventlog::EventStore;
use berth_runtime::node_key::{ForNode, NodePublicKey};
use berth_runtime::SecretKey;
use berth_schemas::commands::{NodeRunSpec, NodeWork, OneOffPurpose};
use berth_schemas::ids::{CredentialId, CronRunId, InstanceId, JobId, NodeId, OwnerId, ServiceId};
use berth_schemas::model::Plan;
use berth_schemas::model::Sealed;
use berth_schemas::{Actor, AggregateId, Commit, Envelope, Event, Subjects};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::view::{CronView, Stuck};
use crate::{decide, run_instance, CronError, CronOptions};

/// Cancels older than this are not turned into stops.
pub const STOP_HORIZON: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The dispatch worker; its durable consumer exists once this returns.
/// Waits while the log cannot answer; `None` when `shutdown` comes first.
pub(crate) async fn worker(
    store: &EventStore,
    opts: &CronOptions,
    shutdown: &CancellationToken,
) -> Result<Option<Worker>, CronError> {
    let subjects = store.subjects();
    let cfg = WorkerConfig {
        description: Some(
            "berth cron: cron_job_run_started, job_created → RunOnce; canceled → StopInstance"
                .to_owned(),
        ),
        ack_wait: opts.ack_wait,
        max_deliver: opts.max_deliver,
        concurrency: opts.concurrency,
        ..WorkerConfig::on_stream(
            &opts.consumer,
            &subjects.events_stream(),
            &subjects.aggregate_kind("service"),
            DeliverPolicy::All,
        )
    };
    store
        .worker_at_start(cfg, shutdown)
        .await
        .map_err(|e| CronError::Store(e.to_string()))
}

/// Runs the worker until `shutdown`.
pub(crate) async fn serve(
    store: EventStore,
    key: Arc<SecretKey>,
    view: Arc<RwLock<CronView>>,
    opts: CronOptions,
    worker: Worker,
    shutdown: CancellationToken,
) {
    let stuck_after = opts.stuck_after;
    let handler = Arc::new(Dispatch {
        store,
        key,
        view,
        opts,
    });
    let sweep =
        stuck_after.map(|after| tokio::spawn(sweep(Arc::clone(&handler), after, shutdown.clone())));
    if let Err(e) = worker.run(handler, shutdown).await {
        tracing::error!(error = %e, "cron dispatch stopped with an error");
    }
    if let Some(sweep) = sweep {
        let _ = sweep.await;
    }
}

/// Every `after / 3` (1–30 s), dispatches again what has waited for its
/// dispatch longer than `after` ([`CronView::stuck`]): a job still
/// pending, a run given to no node. Its delivery was dead-lettered after
/// its retries (the log's copy was behind for longer than they last, a
/// store that did not answer) or came to nothing; dispatching twice
/// enqueues once (the work's message id is the job's or run's) and
/// records the placement once (by key).
async fn sweep(dispatch: Arc<Dispatch>, after: Duration, shutdown: CancellationToken) {
    let every = berth_eventlog::worker::sweep_period(after);
    let Ok(overdue) = chrono::TimeDelta::from_std(after) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let stuck = dispatch
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .stuck(chrono::Utc::now() - overdue);
        for s in stuck {
            let done = match &s {
                Stuck::Job { service, job } => {
                    tracing::warn!(service.id = %service, job.id = %job, "job still pending: dispatching it again");
                    dispatch.start_job(service, job, 0).await
                }
                Stuck::Run { service, run } => {
                    tracing::warn!(service.id = %service, run.id = %run, "cron run given to no node: dispatching it again");
                    dispatch.start(service, run, 0).await
                }
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "dispatching again failed; the next sweep tries again");
            }
        }
    }
}

/// A one-off container to run: a cron run or a job.
struct RunOnce<'a> {
    /// The container's id (derived from the run's or job's).
    instance: InstanceId,
    digest: &'a str,
    /// The command, when not the image's own.
    command: Option<String>,
    plan: &'a Plan,
    purpose: OneOffPurpose,
    /// The enqueue's message id: a redelivered commit (a crash between
    /// enqueue and ack) does not enqueue it twice.
    msg_id: &'a str,
    /// The stream sequence of the commit that started it: the node reads
    /// the service at least that far.
    seen: u64,
}

/// The node whose loss ended a run or job, from the end's causation id
/// (`node-lost:<node>`, as the tick records it).
fn lost_node(env: &Envelope) -> Option<NodeId> {
    env.causation_id
        .as_deref()?
        .strip_prefix(crate::tick::NODE_LOST_CAUSE)?
        .parse()
        .ok()
}

struct Dispatch {
    store: EventStore,
    /// Opens the service's secrets to seal them to the run's node.
    key: Arc<SecretKey>,
    view: Arc<RwLock<CronView>>,
    opts: CronOptions,
}

/// Why a job or cron run no node had room for ends.
fn no_room(plan: &Plan) -> String {
    format!(
        "no node has room for it: needs {} millicores and {} MiB",
        plan.cpu_millis, plan.memory_mib
    )
}

fn retry(what: &str, e: impl std::fmt::Display) -> WorkError {
    WorkError::Retry(format!("{what}: {e}"))
}

impl WorkHandler for Dispatch {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let commit = Commit::decode(&job.payload).map_err(|e| WorkError::Fatal(e.to_string()))?;
        for env in &commit.events {
            let AggregateId::Service(service) = &env.aggregate else {
                continue;
            };
            let span = tracing::info_span!("cron_dispatch", service.id = %service, stream.seq = job.stream_seq, event = env.event.type_name());
            self.event(service, env, job.stream_seq)
                .instrument(span)
                .await?;
        }
        Ok(())
    }
}

impl Dispatch {
    /// Acts on `env`, of the commit at stream sequence `seen`.
    async fn event(&self, service: &ServiceId, env: &Envelope, seen: u64) -> Result<(), WorkError> {
        match &env.event {
            Event::CronJobRunStarted(e) => self.start(service, &e.run, seen).await,
            Event::JobCreated(e) => self.start_job(service, &e.job, seen).await,
            // A cancel, or a cap the cron component enforced because the
            // node never reported: the container may still run.
            Event::CronJobRunEnded(e) if e.status == "canceled" || e.status == "timed_out" => {
                if chrono::Utc::now() - env.time > STOP_HORIZON {
                    return Ok(());
                }
                let instance = run_instance(&e.run);
                self.stop(service, &instance).await
            }
            Event::JobEnded(e) if e.status == "canceled" => {
                if chrono::Utc::now() - env.time > STOP_HORIZON {
                    return Ok(());
                }
                let instance = service::job_instance(&e.job);
                self.stop(service, &instance).await
            }
            // Ended for its node's loss: should that node only have been
            // cut off, the container it may still run stops when it is
            // back, before a later run could overlap it.
            Event::CronJobRunEnded(e) => {
                self.stop_if_lost(service, env, run_instance(&e.run)).await
            }
            Event::JobEnded(e) => {
                self.stop_if_lost(service, env, service::job_instance(&e.job))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The service as of the commit at stream sequence `seen` or later: a
    /// copy of the log that is behind (it would not have the run or job
    /// yet, and the work would be dropped as "no longer active") is read
    /// again later.
    async fn load(&self, service: &ServiceId, seen: u64) -> Result<ServiceState, WorkError> {
        let (state, _) = self
            .store
            .state_holding(&AggregateId::Service(service.clone()), service::fold, seen)
            .await
            .map_err(|e| retry("loading the service", e))?;
        Ok(ServiceState::clone(&state))
    }

    async fn start(
        &self,
        service: &ServiceId,
        run: &CronRunId,
        seen: u64,
    ) -> Result<(), WorkError> {
        let state = self.load(service, seen).await?;
        let (Some(active), Some(cfg), Some(live)) =
            (&state.cron.active, &state.config, state.live_deploy())
        else {
            return Ok(());
        };
        if &active.id != run {
            tracing::debug!(run.id = %run, "run no longer active; not dispatched");
            return Ok(());
        }
        let run_once = RunOnce {
            instance: run_instance(run),
            digest: &active.digest,
            command: cfg.docker_command.clone(),
            plan: &cfg.plan,
            purpose: OneOffPurpose::CronRun { run: run.clone() },
            msg_id: run.as_str(),
            seen,
        };
        if !self.dispatch(service, cfg, live, run_once).await? {
            // Nodes register once and stay known, so no room now means no
            // node can take it: the run fails rather than blocking every
            // later due time until the cap.
            tracing::warn!(run.id = %run, "no live node has room for the cron run; run failed");
            return self
                .end_run(service, run, "cron-unplaced", no_room(&cfg.plan))
                .await;
        }
        Ok(())
    }

    /// A pending job → its `RunOnce` on a node with room, or its end
    /// `failed` when none has.
    async fn start_job(
        &self,
        service: &ServiceId,
        job: &JobId,
        seen: u64,
    ) -> Result<(), WorkError> {
        let state = self.load(service, seen).await?;
        let (Some(j), Some(cfg), Some(live)) =
            (state.jobs.get(job), &state.config, state.live_deploy())
        else {
            return Ok(());
        };
        if j.status != JobStatus::Pending {
            tracing::debug!(job.id = %job, "job no longer pending; not dispatched");
            return Ok(());
        }
        let run_once = RunOnce {
            instance: service::job_instance(job),
            digest: &j.digest,
            command: Some(j.start_command.clone()),
            plan: &j.plan,
            purpose: OneOffPurpose::Job { job: job.clone() },
            msg_id: job.as_str(),
            seen,
        };
        if !self.dispatch(service, cfg, live, run_once).await? {
            tracing::warn!(job.id = %job, "no live node has room for the job; job failed");
            let command = service::Command::RecordJobEnded {
                job: job.clone(),
                success: false,
                exit_code: None,
                reason: Some(no_room(&j.plan)),
            };
            return self
                .record(service, &format!("job-unplaced:{job}"), command)
                .await;
        }
        Ok(())
    }

    /// Enqueues `run` on a node with room for its plan, its env and
    /// registry login sealed to that node; `false` when no live node has
    /// room.
    async fn dispatch(
        &self,
        service: &ServiceId,
        cfg: &service::ServiceConfig,
        live: &service::Deploy,
        run: RunOnce<'_>,
    ) -> Result<bool, WorkError> {
        let instance = run.instance;
        let reference = Reference::parse(&live.image)
            .map_err(|e| WorkError::Fatal(format!("live image {}: {e}", live.image)))?;
        let nodes = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .capacities();
        let Some(node) = place(&nodes, run.plan, 1, &[])
            .ok()
            .and_then(|n| n.into_iter().next())
        else {
            return Ok(false);
        };
        let Some(to) = self.node_key(&node) else {
            return Err(WorkError::Retry(format!(
                "node {node} has published no public key yet; the run waits for it"
            )));
        };
        let seal = ForNode {
            key: &self.key,
            node: &node,
            to: &to,
        };
        let env = seal
            .seal_env(service, &instance, &cfg.env_vars)
            .map_err(|e| retry("sealing the run's env to its node", e))?;
        let files = seal
            .seal_files(service, &instance, &cfg.secret_files)
            .map_err(|e| retry("sealing the run's secret files to its node", e))?;
        let login = match &cfg.credential {
            None => None,
            Some(id) => {
                self.sealed_login(
                    &seal,
                    service,
                    &instance,
                    id,
                    &cfg.owner,
                    reference.domain(),
                )
                .await?
            }
        };
        let spec = NodeRunSpec {
            service: service.clone(),
            deploy: live.id.clone(),
            instance: instance.clone(),
            image: reference.name(),
            digest: run.digest.to_owned(),
            credential: cfg.credential.clone(),
            login,
            env,
            files,
            command: run.command,
            port: None,
            plan: Some(run.plan.clone()),
            shutdown_delay_secs: u32::from(cfg.shutdown_delay_secs),
            disk_restore: None,
        };
        let timeout_secs = u32::try_from(self.opts.run_timeout.as_secs()).unwrap_or(u32::MAX);
        let work = NodeWork::RunOnce {
            spec,
            timeout_secs,
            purpose: Some(run.purpose.clone()),
            seen: run.seen,
        };
        let payload =
            rmp_serde::to_vec_named(&work).map_err(|e| WorkError::Fatal(e.to_string()))?;
        self.store
            .enqueue(
                &Subjects::node_queue(&node),
                instance.as_str(),
                payload.into(),
                run.msg_id,
            )
            .await
            .map_err(|e| retry("enqueueing the run", e))?;
        tracing::info!(instance.id = %instance, node.id = %node, digest = %run.digest, "one-off run dispatched");
        // Where it went, so a lost node fails its run or job rather than
        // leaving it active until the cap (or, for a job, for good).
        let (key, command) = match &run.purpose {
            OneOffPurpose::CronRun { run: id } => (
                format!("cron-placed:{id}"),
                service::Command::RecordCronRunPlaced {
                    run: id.clone(),
                    node: node.clone(),
                },
            ),
            OneOffPurpose::Job { job } => (
                format!("job-placed:{job}"),
                service::Command::RecordJobPlaced {
                    job: job.clone(),
                    node: node.clone(),
                },
            ),
            OneOffPurpose::PreDeploy => return Ok(true),
        };
        self.record(service, &key, command).await?;
        Ok(true)
    }

    /// The public key `node` registered, as the view has it.
    fn node_key(&self, node: &NodeId) -> Option<NodePublicKey> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let text = view.nodes.get(node)?.public_key.as_deref()?;
        match NodePublicKey::from_base64(text) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(node.id = %node, error = %e, "node registered an unusable public key");
                None
            }
        }
    }

    /// The login of credential `id` sealed to the run's node; `None` when
    /// `owner` may not use it for the registry `domain` or its token does
    /// not open (the node, checking the same, records the pull
    /// `unauthorized`).
    async fn sealed_login(
        &self,
        seal: &ForNode<'_>,
        service: &ServiceId,
        instance: &InstanceId,
        id: &CredentialId,
        owner: &OwnerId,
        domain: &str,
    ) -> Result<Option<Sealed>, WorkError> {
        let (state, _) = self
            .store
            .state::<CredentialState, _>(&AggregateId::Credential(id.clone()), credential::fold)
            .await
            .map_err(|e| retry("loading the credential", e))?;
        let c = match state.usable(id, owner, domain) {
            Ok(c) => c,
            Err(reason) => {
                tracing::info!(credential.id = %id, reason = %reason, "credential not usable; the node will report the pull unauthorized");
                return Ok(None);
            }
        };
        match seal.seal_login(service, instance, id, &c.username, &c.token) {
            Ok(login) => Ok(Some(login)),
            Err(e) => {
                tracing::error!(credential.id = %id, error = %e, "credential token cannot be opened; the pull will be unauthorized");
                Ok(None)
            }
        }
    }

    /// Stops a one-off's container wherever it runs.
    async fn stop(&self, service: &ServiceId, instance: &InstanceId) -> Result<(), WorkError> {
        let nodes = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .live_nodes();
        self.stop_on(service, instance, nodes).await
    }

    /// Stops `instance` on the node whose loss ended it (`env`'s causation
    /// id says which), if one did, lately.
    async fn stop_if_lost(
        &self,
        service: &ServiceId,
        env: &Envelope,
        instance: InstanceId,
    ) -> Result<(), WorkError> {
        let Some(node) = lost_node(env) else {
            return Ok(());
        };
        if chrono::Utc::now() - env.time > STOP_HORIZON {
            return Ok(());
        }
        self.stop_on(service, &instance, vec![node]).await
    }

    /// Enqueues the stop of `instance` on each of `nodes` (a lost node's
    /// waits in its queue until it is back).
    async fn stop_on(
        &self,
        service: &ServiceId,
        instance: &InstanceId,
        nodes: Vec<NodeId>,
    ) -> Result<(), WorkError> {
        let work = NodeWork::StopInstance {
            service: service.clone(),
            instance: instance.clone(),
        };
        let payload =
            rmp_serde::to_vec_named(&work).map_err(|e| WorkError::Fatal(e.to_string()))?;
        for node in nodes {
            // Its own key: the run's RunOnce holds the instance's key on the
            // node until it ends, and the stop must not wait behind it.
            self.store
                .enqueue(
                    &Subjects::node_queue(&node),
                    &format!("stop-{instance}"),
                    payload.clone().into(),
                    &format!("stop-{instance}-{node}"),
                )
                .await
                .map_err(|e| retry("enqueueing the stop", e))?;
        }
        tracing::info!(instance.id = %instance, "run canceled; its container is being stopped");
        Ok(())
    }

    /// Ends `run` `failed` for `reason` (once per `why`).
    async fn end_run(
        &self,
        service: &ServiceId,
        run: &CronRunId,
        why: &str,
        reason: String,
    ) -> Result<(), WorkError> {
        let command = service::Command::RecordCronRunEnded {
            run: run.clone(),
            status: "failed".to_owned(),
            exit_code: None,
            reason: Some(reason),
        };
        self.record(service, &format!("{why}:{run}"), command).await
    }

    /// Records a run's or job's end or placement (once per `key`).
    async fn record(
        &self,
        service: &ServiceId,
        key: &str,
        command: service::Command,
    ) -> Result<(), WorkError> {
        match decide(
            &self.store,
            service,
            key,
            command,
            &Actor::system("cron"),
            key,
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(CronError::Refused(e)) => {
                tracing::warn!(error = %e, "recording the run's fact refused");
                Ok(())
            }
            Err(e) => Err(retry("recording the run's fact", e)),
        }
    }
}

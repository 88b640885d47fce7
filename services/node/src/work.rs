//! The node's work queue handler: `RunInstance` (pull → unpack → start →
//! `InstanceStarted`), `StopInstance` and `RunOnce`, each safe to receive
//! twice (a redelivery after a crash or a lost ack). A stopped instance
//! leaves a marker that refuses a late start; markers are kept
//! [`crate::NodeOptions::done_kept`] (7 days), and a start enqueued longer
//! ago than that is dead-lettered instead of run.
//!
//! Verdicts: a pull failure that is the image's fault (SPEC §9) is recorded
//! as `ImagePullFailed` and the job is done — retrying cannot fix a deleted
//! image; a failure of this node (disk, runc) is retried and, after the
//! queue's bounded redelivery, dead-lettered.
//!
//! Secrets: an item's env values and registry login are sealed to this
//! node's key and bound to this node, service and instance; an item sealed
//! for another node (or copied from another instance's) does not open and
//! is dead-lettered. The credential a pull uses is checked as the resolver
//! checks it (live, the service owner's, made for the image's registry)
//! before its login is sent anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::{Agent, AgentError, ImageConfig, ImageRoot, InstanceSpec, Limits};
use berth_agent::{ExitStatus, OneOffOutcome};
use berth_agent::{NetworkSpec, Publish};
use berth_domain::credential::{self, CredentialState};
use berth_domain::reference::Reference;
use berth_domain::service::platform_env::platform_env;
use berth_domain::service::{ServiceConfig, ServiceState};
use berth_domain::{service, DomainError};
use berth_eventlog::worker::{Job, WorkError, WorkHandler};
use berth_eventlog::ExecuteError;
use berth_oci::Credential;
use berth_puller::{unpack_image, Progress, PullRequest, Puller, UnpackOptions};
use berth_runtime::node_key::NodeKeyPair;
use berth_schemas::commands::{NodeRunSpec, NodeWork, OneOffPurpose};
use berth_schemas::events::{ImagePullProgressed, InstanceExited};
use berth_schemas::ids::ServiceId;

use berth_schemas::model::{PullFailureReason, ServiceType};
use berth_schemas::{AggregateId, Event};
use tokio::sync::watch;

use crate::config::NodeChecks;
use crate::gc::Gc;
use crate::health::{Check, Health};
use crate::report::{older_than, Placement, Reporter};
use crate::sealed::{open_env, open_files, open_login};

/// Handles one node's work items.
#[derive(Debug)]
pub struct NodeHandler {
    pub(crate) agent: Agent,
    pub(crate) puller: Puller,
    pub(crate) reporter: Reporter,
    /// Opens what work items carry sealed to this node.
    pub(crate) key: Arc<NodeKeyPair>,
    pub(crate) health: Health,
    pub(crate) checks: NodeChecks,
    /// Held from picking a port to recording it in the placement, so two
    /// starts never pick the same one.
    pub(crate) ports: std::sync::Mutex<()>,
    pub(crate) gc: Arc<Gc>,
    /// How images are unpacked here (the disk reserve is the node's).
    pub(crate) unpack: UnpackOptions,
    /// How long stopped instances are remembered; older starts are refused.
    pub(crate) done_kept: Duration,
    /// Where web services are reachable, when known (`RENDER_EXTERNAL_URL`).
    pub(crate) services_url: Option<String>,
}

/// `7 days`, `2 s`: a horizon as the refusal names it.
fn humantime(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        s => format!("{s} s"),
    }
}

fn retry(what: &str, e: impl std::fmt::Display) -> WorkError {
    WorkError::Retry(format!("{what}: {e}"))
}

/// A refusal by the service's rules (unknown service or deploy, another
/// digest) cannot change on retry: the item is dead-lettered for a person.
fn verdict(what: &str, e: ExecuteError<DomainError>) -> WorkError {
    match e {
        ExecuteError::Rejected(r) => WorkError::Fatal(format!("{what}: refused: {r}")),
        other => retry(what, other),
    }
}

/// A pull that failed because of the image (recorded, not retried).
struct ImageFault {
    reason: PullFailureReason,
    message: String,
}

impl WorkHandler for NodeHandler {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let work: NodeWork = rmp_serde::from_slice(&job.payload)
            .map_err(|e| WorkError::Fatal(format!("not a NodeWork item: {e}")))?;
        let starts = matches!(work, NodeWork::RunInstance(_) | NodeWork::RunOnce { .. });
        if starts
            && job
                .enqueued_at
                .is_some_and(|at| older_than(at, std::time::SystemTime::now(), self.done_kept))
        {
            // Whether it was stopped meanwhile is no longer known here.
            return Err(WorkError::Fatal(format!(
                "a start enqueued more than {} ago is not run (stopped instances are remembered that long)",
                humantime(self.done_kept)
            )));
        }
        match work {
            NodeWork::RunInstance(spec) => self.run_instance(spec).await,
            NodeWork::StopInstance { service, instance } => {
                // A draining instance is not reported unhealthy.
                self.health.unwatch(&instance);
                // First: a RunInstance redelivered after this stop must not
                // bring the instance back.
                self.reporter
                    .mark_done(&instance)
                    .map_err(|e| retry("recording the stop", e))?;
                // The stop goes on in the agent (SIGTERM, the shutdown
                // delay, SIGKILL) and its fact is recorded when it ends; the
                // item is done now, so stops never hold the queue's slots
                // and run side by side. After a node restart, instances
                // marked done are stopped again (`Node::serve`).
                match self.agent.begin_stop(&instance) {
                    Ok(()) => Ok(()),
                    // Already stopped (a redelivery) or never here: the
                    // stop's fact was recorded when it happened.
                    Err(AgentError::UnknownInstance(_)) => {
                        tracing::info!(service.id = %service, instance.id = %instance, "stop: instance not running here");
                        Ok(())
                    }
                    Err(e) => Err(retry("stopping", e)),
                }
            }
            NodeWork::RunOnce {
                spec,
                timeout_secs,
                purpose,
                seen,
            } => {
                if self.reporter.is_done(&spec.instance) {
                    tracing::info!(instance.id = %spec.instance, "one-off already ran here");
                    return Ok(());
                }
                if self.interrupted(&spec, purpose.as_ref(), seen).await? {
                    return self
                        .reporter
                        .mark_done(&spec.instance)
                        .map_err(|e| retry("recording the one-off's end", e));
                }
                // An item this node cannot open is refused before anything
                // is pulled for it.
                let (env, files) = self.open_secrets(&spec)?;
                // Its tree stays until the run ends.
                let _keep = self.gc.protect(&spec.digest);
                let prepared = {
                    let _pulling = self.gc.pulling().await;
                    self.prepare(&spec).await?
                };
                let Some(image) = prepared else {
                    // The pull failure is recorded; a cron run or job it was
                    // for ends `failed` here, by its own id (a late failure
                    // of a canceled one changes nothing).
                    let command = match purpose {
                        Some(OneOffPurpose::CronRun { run }) => {
                            Some(service::Command::RecordCronRunEnded {
                                run,
                                status: "failed".to_owned(),
                                exit_code: None,
                                reason: Some(not_pulled(&spec.digest)),
                            })
                        }
                        Some(OneOffPurpose::Job { job }) => {
                            Some(service::Command::RecordJobEnded {
                                job,
                                success: false,
                                exit_code: None,
                                reason: Some(not_pulled(&spec.digest)),
                            })
                        }
                        Some(OneOffPurpose::PreDeploy) | None => None,
                    };
                    if let Some(command) = command {
                        self.record_end(&spec, command, "recording the one-off's end")
                            .await?;
                    }
                    return Ok(());
                };
                // The service as it is now: a cron run canceled (or
                // replaced) while its image was pulled is not started; the
                // run joins its owner's network.
                let state = self.service_state(&spec.service, seen).await?;
                let gone = match &purpose {
                    Some(OneOffPurpose::CronRun { run }) => {
                        state.cron.active.as_ref().is_none_or(|a| &a.id != run)
                    }
                    Some(OneOffPurpose::Job { job }) => match state.jobs.get(job) {
                        Some(j) => !j.status.is_active(),
                        // A job is recorded before its run is queued: the
                        // log's copy that answered (any replica) is
                        // behind. Read again later rather than drop it.
                        None => {
                            return Err(retry(
                                "reading the job",
                                "the log's copy that answered does not have it yet",
                            ))
                        }
                    },
                    Some(OneOffPurpose::PreDeploy) | None => false,
                };
                if gone {
                    tracing::info!(instance.id = %spec.instance, "run canceled meanwhile; not started");
                    return self
                        .reporter
                        .mark_done(&spec.instance)
                        .map_err(|e| retry("recording the one-off's end", e));
                }
                if let Some(OneOffPurpose::Job { job }) = &purpose {
                    self.reporter
                        .decide(
                            &spec.service,
                            Some(&spec.deploy),
                            service::Command::RecordJobStarted { job: job.clone() },
                            &format!("{}:started", spec.instance),
                        )
                        .await
                        .map_err(|e| verdict("recording the job's start", e))?;
                }
                if let Some(OneOffPurpose::CronRun { .. }) = &purpose {
                    self.reporter
                        .mark_started(&spec.instance)
                        .map_err(|e| retry("recording the cron run's start", e))?;
                }
                let mut s = self.instance_spec(&spec, image, env, files);
                self.add_platform_env(&spec, state.config.as_ref(), &mut s);
                s.network = Some(network(&spec.service, state.config.as_ref(), None));
                let out = self
                    .agent
                    .run_once(s, Duration::from_secs(u64::from(timeout_secs)))
                    .await
                    .map_err(|e| retry("one-off run", e))?;
                tracing::info!(service.id = %spec.service, instance.id = %spec.instance, outcome = ?out, "one-off run ended");
                if let Some(purpose) = purpose {
                    let command = ended(&spec, purpose, out, timeout_secs);
                    self.record_end(&spec, command, "recording the one-off's end")
                        .await?;
                }
                self.reporter
                    .mark_done(&spec.instance)
                    .map_err(|e| retry("recording the one-off's end", e))
            }
        }
    }
}

impl NodeHandler {
    async fn run_instance(&self, spec: NodeRunSpec) -> Result<(), WorkError> {
        if self.reporter.is_done(&spec.instance) {
            // Stopped already: a late redelivery must not bring it back.
            tracing::info!(instance.id = %spec.instance, "instance already ended here; not started again");
            return Ok(());
        }
        if self.agent.instances().contains(&spec.instance) {
            // A redelivery of a start that went through: make sure the fact
            // is recorded (same key → appended at most once), nothing else.
            tracing::info!(instance.id = %spec.instance, "already running here");
            let p = self
                .reporter
                .placement(&spec.instance)
                .unwrap_or(Placement {
                    service: spec.service.clone(),
                    deploy: spec.deploy.clone(),
                    digest: spec.digest.clone(),
                    addr: None,
                    published: None,
                    port: None,
                    check: None,
                    detect: false,
                    private: false,
                });
            self.reporter
                .started(&spec.instance, &p)
                .await
                .map_err(|e| retry("recording start", e))?;
            self.health.watch(&self.agent, &spec.instance, &p);
            return Ok(());
        }
        // An item this node cannot open is refused before anything is
        // pulled for it.
        let (env, files) = self.open_secrets(&spec)?;
        // Kept from the collector until the placement protects it.
        let _keep = self.gc.protect(&spec.digest);
        let prepared = {
            let _pulling = self.gc.pulling().await;
            self.prepare(&spec).await?
        };
        let Some(image) = prepared else {
            return Ok(());
        };
        let service = self.service_state(&spec.service, 0).await?;
        let config = service.config.as_ref();
        let mut s = self.instance_spec(&spec, image, env, files);
        s.disk = config.and_then(|c| c.disk.clone());
        self.add_platform_env(&spec, config, &mut s);
        let placement = self
            .place(&spec, config, service.detected_port, &mut s)
            .await?;
        self.agent
            .run_instance(s)
            .await
            .map_err(|e| retry("starting", e))?;
        self.reporter
            .started(&spec.instance, &placement)
            .await
            .map_err(|e| retry("recording start", e))?;
        self.health.watch(&self.agent, &spec.instance, &placement);
        Ok(())
    }

    /// Whether `spec`'s run began on this node before and was ended by the
    /// node's restart (the agent ends the one-offs it finds as it starts):
    /// a job (its start is in the log) or a cron run (its start is marked
    /// here) is then not run a second time, as it may have done part of its
    /// work. It ends failed, saying why, before its image is pulled.
    async fn interrupted(
        &self,
        spec: &NodeRunSpec,
        purpose: Option<&OneOffPurpose>,
        seen: u64,
    ) -> Result<bool, WorkError> {
        if self.agent.instances().contains(&spec.instance) {
            return Ok(false);
        }
        let command = match purpose {
            Some(OneOffPurpose::Job { job }) => {
                let state = self.service_state(&spec.service, seen).await?;
                let started = state
                    .jobs
                    .get(job)
                    .is_some_and(|j| j.status == service::JobStatus::Running);
                if !started {
                    return Ok(false);
                }
                service::Command::RecordJobEnded {
                    job: job.clone(),
                    success: false,
                    exit_code: None,
                    reason: Some(RUN_INTERRUPTED.to_owned()),
                }
            }
            Some(OneOffPurpose::CronRun { run }) if self.reporter.was_started(&spec.instance) => {
                service::Command::RecordCronRunEnded {
                    run: run.clone(),
                    status: "failed".to_owned(),
                    exit_code: None,
                    reason: Some(RUN_INTERRUPTED.to_owned()),
                }
            }
            _ => return Ok(false),
        };
        tracing::warn!(service.id = %spec.service, instance.id = %spec.instance, "run interrupted by a node restart; not run again");
        self.reporter
            .say(&spec.service, &spec.instance, RUN_INTERRUPTED)
            .await;
        self.record_end(spec, command, "recording the interrupted run's end")
            .await?;
        Ok(true)
    }

    /// A one-off's end (`command`), recorded once per instance whichever
    /// way the run ended.
    async fn record_end(
        &self,
        spec: &NodeRunSpec,
        command: service::Command,
        what: &str,
    ) -> Result<(), WorkError> {
        self.reporter
            .decide(
                &spec.service,
                Some(&spec.deploy),
                command,
                &format!("{}:ended", spec.instance),
            )
            .await
            .map_err(|e| verdict(what, e))
    }

    /// The service as the log has it now, holding at least the commit at
    /// stream sequence `seen` (the one the work was sent for): a copy of
    /// the log that is behind is read again later, not taken to mean the
    /// run was canceled.
    async fn service_state(
        &self,
        service: &ServiceId,
        seen: u64,
    ) -> Result<ServiceState, WorkError> {
        let (state, _) = self
            .reporter
            .store
            .state_holding(&AggregateId::Service(service.clone()), service::fold, seen)
            .await
            .map_err(|e| retry("loading the service", e))?;
        Ok(ServiceState::clone(&state))
    }

    /// Gives an instance its network (a web instance also a published
    /// host port), picks its check, and records the placement (before the
    /// start, so a node restart finds it; first with the host port alone,
    /// which reserves it, then with the address the network gave).
    ///
    /// An instance of a service that sets no `PORT` is served on the port
    /// its service's instances were last detected on (`detected`), if
    /// any, else on its `PORT`; either way a port it is then found on
    /// instead is detected again.
    async fn place(
        &self,
        spec: &NodeRunSpec,
        config: Option<&ServiceConfig>,
        detected: Option<u16>,
        s: &mut InstanceSpec,
    ) -> Result<Placement, WorkError> {
        let ty = config.map(|c| c.service_type);
        let listens = match ty {
            Some(t) => matches!(t, ServiceType::WebService | ServiceType::PrivateService),
            None => spec.port.is_some(),
        };
        let detect = listens && !s.env.contains_key("PORT");
        s.port = listens.then(|| listen_port(s, spec.port));
        let port = s.port.map(|p| detected.filter(|_| detect).unwrap_or(p));
        let private = ty == Some(ServiceType::PrivateService);
        // A private instance is published too where other nodes can reach
        // this one: for its owner's instances there (see
        // `berth_agent::net::Directory`).
        let published = listens && (!private || self.checks.reach().is_some());
        let mut placement = Placement {
            service: spec.service.clone(),
            deploy: spec.deploy.clone(),
            digest: spec.digest.clone(),
            addr: None,
            published: None,
            port: None,
            check: None,
            detect,
            private,
        };
        {
            let _held = self.ports.lock().unwrap_or_else(|p| p.into_inner());
            if published {
                let host = free_port(&self.checks.ports, &self.reporter.ports_in_use())
                    .ok_or_else(|| {
                        retry("allocating a port", "no free port in BERTH_NODE_PORTS")
                    })?;
                let addr = std::net::SocketAddr::new(self.checks.advertise, host).to_string();
                placement.port = Some(host);
                if private {
                    placement.published = Some(addr);
                } else {
                    placement.addr = Some(addr);
                }
            }
            self.reporter
                .place(&spec.instance, placement.clone())
                .map_err(|e| retry("recording placement", e))?;
        }
        let publish = port.zip(placement.port).map(|(c, h)| Publish {
            container_port: c,
            host_port: h,
        });
        s.network = Some(network(&spec.service, config, publish));
        let ip = self
            .agent
            .attach_network(s)
            .await
            .map_err(|e| retry("attaching the instance network", e))?;
        // Checks go to this instance's own address: no other instance can
        // answer them.
        let own = port
            .zip(ip)
            .map(|(p, ip)| std::net::SocketAddr::from((ip, p)).to_string());
        placement.check = match (ty, own) {
            (Some(ServiceType::PrivateService), Some(addr)) => {
                placement.addr = Some(addr.clone());
                Some(Check::Tcp { addr })
            }
            // A web service's health check path when it has one; without
            // one, as on Render, listening on its port is enough (an API
            // with no page at `/` is healthy).
            (_, Some(addr)) => Some(
                match config
                    .and_then(|c| c.health_check_path.clone())
                    .filter(|p| p.starts_with('/'))
                {
                    Some(path) => Check::Http {
                        addr,
                        path,
                        host: check_host(&s.env),
                    },
                    None => Check::Tcp { addr },
                },
            ),
            (Some(ServiceType::BackgroundWorker), None) => Some(Check::Uptime),
            _ => None,
        };
        self.reporter
            .place(&spec.instance, placement.clone())
            .map_err(|e| retry("recording placement", e))?;
        Ok(placement)
    }

    /// Pull and unpack; `None` when the image is at fault (recorded).
    async fn prepare(&self, spec: &NodeRunSpec) -> Result<Option<ImageRoot>, WorkError> {
        match self.pull(spec).await {
            Ok(image) => Ok(Some(image)),
            Err(Ok(fault)) => {
                tracing::warn!(service.id = %spec.service, deploy.id = %spec.deploy, reason = ?fault.reason, message = %fault.message, "image pull failed");
                let command = service::Command::RecordPullFailed {
                    deploy: Some(spec.deploy.clone()),
                    node: Some(self.reporter.node.clone()),
                    image: format!("{}@{}", spec.image, spec.digest),
                    reason: fault.reason,
                    message: fault.message,
                };
                self.reporter
                    .decide(
                        &spec.service,
                        Some(&spec.deploy),
                        command,
                        &format!("{}:pull_failed", spec.instance),
                    )
                    .await
                    .map_err(|e| verdict("recording pull failure", e))?;
                Ok(None)
            }
            Err(Err(e)) => Err(e),
        }
    }

    async fn pull(&self, spec: &NodeRunSpec) -> Result<ImageRoot, Result<ImageFault, WorkError>> {
        let fault = |reason, message: String| Err(Ok(ImageFault { reason, message }));
        let reference = match Reference::parse(&spec.image) {
            Ok(r) => r,
            Err(e) => {
                return fault(
                    PullFailureReason::ImageNotFound,
                    format!("{:?} is not an image name: {e}", spec.image),
                )
            }
        };
        let credential = match &spec.credential {
            None => None,
            Some(id) => match self.credential(spec, id, reference.domain()).await? {
                Ok(c) => Some(c),
                Err(message) => return fault(PullFailureReason::Unauthorized, message),
            },
        };
        let req = PullRequest {
            host: reference.registry_host(),
            repository: reference.path(),
            digest: &spec.digest,
            credential: credential.as_ref(),
        };
        // Progress goes through a watch: the pull never waits on the event
        // log, and only the newest figure is appended (the puller already
        // bounds the rate).
        let (tx, mut rx) = watch::channel(None::<Progress>);
        let on_progress = move |p: Progress| {
            let _ = tx.send(Some(p));
        };
        let pull = self.puller.pull(&req, &on_progress);
        tokio::pin!(pull);
        let result = loop {
            tokio::select! {
                r = &mut pull => break r,
                changed = rx.changed() => {
                    if changed.is_err() { continue; }
                    let p = *rx.borrow_and_update();
                    if let Some(p) = p {
                        self.progress(spec, p).await;
                    }
                }
            }
        };
        // The puller's final figure may land just as the pull completes.
        if result.is_ok() && rx.has_changed().unwrap_or(false) {
            let p = *rx.borrow_and_update();
            if let Some(p) = p {
                self.progress(spec, p).await;
            }
        }
        let pulled = match result {
            Ok(p) => p,
            Err(e) => {
                return match e.reason() {
                    Some(reason) => fault(reason, e.to_string()),
                    None => Err(Err(retry("pulling", e))),
                }
            }
        };
        let command = service::Command::RecordPulled {
            deploy: spec.deploy.clone(),
            node: self.reporter.node.clone(),
            digest: pulled.digest.to_string(),
        };
        self.reporter
            .decide(
                &spec.service,
                Some(&spec.deploy),
                command,
                &format!("{}:pulled", spec.instance),
            )
            .await
            .map_err(|e| Err(verdict("recording pull", e)))?;
        let store = self.puller.store().clone();
        let digest = pulled.digest.clone();
        let unpack = self.unpack.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let rootfs = unpack_image(&store, &digest, &unpack)?;
            let config = store.read(&pulled.config, 1 << 20)?;
            Ok::<_, berth_puller::UnpackError>((rootfs, config))
        })
        .await
        .map_err(|e| Err(retry("unpacking", e)))?;
        let (rootfs, config) = match unpacked {
            Ok(x) => x,
            // A local disk or permission failure says nothing about the
            // image: it is this node's, retried, never recorded against it.
            Err(e) => {
                return match e.reason() {
                    Some(reason) => fault(reason, e.to_string()),
                    None => Err(Err(retry("unpacking", e))),
                }
            }
        };
        let config = match ImageConfig::from_json(&config) {
            Ok(c) => c,
            Err(e) => return fault(PullFailureReason::UnsupportedPlatform, e.to_string()),
        };
        Ok(ImageRoot {
            digest: pulled.digest.to_string(),
            rootfs,
            config,
        })
    }

    async fn progress(&self, spec: &NodeRunSpec, p: Progress) {
        let fact = Event::ImagePullProgressed(ImagePullProgressed {
            deploy: spec.deploy.clone(),
            node: self.reporter.node.clone(),
            bytes_done: p.done,
            bytes_total: p.total,
        });
        let key = format!("{}:progress:{}:{}", spec.instance, p.done, p.total);
        if let Err(e) = self
            .reporter
            .fact(&spec.service, Some(&spec.deploy), fact, &key)
            .await
        {
            // Progress is informational: a lost figure is replaced by the next.
            tracing::debug!(error = %e, "recording pull progress failed");
        }
    }

    /// The registry login of credential `id` for `spec`'s pull from the
    /// registry `domain`: `Ok(Err(message))` when the pull is unauthorized
    /// (the credential is gone, not the service owner's, made for another
    /// registry, or its login did not come sealed to this node).
    async fn credential(
        &self,
        spec: &NodeRunSpec,
        id: &berth_schemas::ids::CredentialId,
        domain: &str,
    ) -> Result<Result<Credential, String>, Result<ImageFault, WorkError>> {
        let (state, _) = self
            .reporter
            .store
            .state::<CredentialState, _>(&AggregateId::Credential(id.clone()), credential::fold)
            .await
            .map_err(|e| Err(retry("loading credential", e)))?;
        let service = self.service_state(&spec.service, 0).await.map_err(Err)?;
        let Some(owner) = service.config.as_ref().map(|c| &c.owner) else {
            return Ok(Err(format!(
                "registry credential {id}: service {} does not exist",
                spec.service
            )));
        };
        if let Err(message) = state.usable(id, owner, domain) {
            return Ok(Err(message));
        }
        Ok(open_login(&self.key, &self.reporter.node, spec, id))
    }

    /// `spec`'s env values and secret files opened with this node's key;
    /// an item sealed for another node or instance is dead-lettered
    /// (retrying cannot open it).
    fn open_secrets(&self, spec: &NodeRunSpec) -> Result<(Opened, Opened), WorkError> {
        let node = &self.reporter.node;
        let env = open_env(&self.key, node, spec).map_err(WorkError::Fatal)?;
        let files = open_files(&self.key, node, spec).map_err(WorkError::Fatal)?;
        Ok((env, files))
    }

    /// Render's platform variables ([`platform_env`]) where the service's
    /// own env does not set them.
    fn add_platform_env(
        &self,
        spec: &NodeRunSpec,
        config: Option<&ServiceConfig>,
        s: &mut InstanceSpec,
    ) {
        let Some(cfg) = config else {
            return;
        };
        let plan = spec.plan.as_ref().unwrap_or(&cfg.plan);
        let services = self.services_url.as_deref();
        for (k, v) in platform_env(cfg, &spec.service, &spec.instance, plan, services) {
            s.env.entry(k.to_owned()).or_insert(v);
        }
    }

    fn instance_spec(
        &self,
        spec: &NodeRunSpec,
        image: ImageRoot,
        env: Opened,
        secret_files: Opened,
    ) -> InstanceSpec {
        InstanceSpec {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            image,
            command: spec.command.clone(),
            env,
            port: spec.port,
            limits: Limits {
                cpu_millis: spec.plan.as_ref().map(|p| p.cpu_millis),
                memory_mib: spec.plan.as_ref().map(|p| p.memory_mib),
                pids: None,
            },
            shutdown_delay: Duration::from_secs(u64::from(spec.shutdown_delay_secs.clamp(1, 300))),
            network: None,
            disk: None,
            disk_restore: spec.disk_restore.clone(),
            secret_files,
        }
    }
}

/// Values opened from a work item, by name.
type Opened = BTreeMap<String, String>;

/// The port an instance listens on inside its namespace, as on Render: the
/// service's `PORT`, else the `PORT` the image's own environment sets
/// (`ENV PORT=5000`: the image's author said where it listens; Render
/// would override it with 10000), else the one TCP port the image exposes
/// (`EXPOSE 8080`), else `default` (the scheduler's, 10000).
fn listen_port(s: &InstanceSpec, default: Option<u16>) -> u16 {
    s.env
        .get("PORT")
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0)
        .or_else(|| s.image.config.env_port())
        .or_else(|| s.image.config.single_tcp_port())
        .or(default)
        .unwrap_or(10000)
}

/// The `Host` a web instance's health checks ask for: the name it is
/// served under, as the instance itself is told it
/// (`RENDER_EXTERNAL_HOSTNAME`), when that is a plain host name — so a
/// framework admitting only the hosts it serves (Django's
/// `ALLOWED_HOSTS`, Rails' `config.hosts`) admits its checks too.
fn check_host(env: &BTreeMap<String, String>) -> Option<String> {
    let host = env.get("RENDER_EXTERNAL_HOSTNAME")?.trim();
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| host.to_owned())
}

/// How an instance of `service` joins the node's network: with its owner's
/// instances; a private service's under its name.
fn network(
    service: &ServiceId,
    config: Option<&ServiceConfig>,
    publish: Option<Publish>,
) -> NetworkSpec {
    NetworkSpec {
        group: config.map_or_else(|| service.to_string(), |c| c.owner.to_string()),
        name: config
            .filter(|c| c.service_type == ServiceType::PrivateService)
            .map(|c| c.name.clone()),
        publish,
    }
}

/// A port of `range` not handed to another instance here and free now,
/// starting at a random point (nodes sharing a machine in tests, and a
/// port just freed, are less likely to be picked twice).
fn free_port(
    range: &std::ops::RangeInclusive<u16>,
    taken: &std::collections::HashSet<u16>,
) -> Option<u16> {
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    let span = hi - lo + 1;
    let start = rand::random_range(0..span);
    (0..span)
        .map(|i| (lo + (start + i) % span) as u16)
        .filter(|p| !taken.contains(p))
        // Free on every address now: instances usually bind 0.0.0.0.
        .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
}

/// Why a job or cron run whose image was not pulled ends.
fn not_pulled(digest: &str) -> String {
    format!("the image {digest} was not pulled")
}

/// Why a job or cron run found started by an earlier delivery of its
/// work ends.
pub const RUN_INTERRUPTED: &str =
    "interrupted: its node restarted while it ran; not run again, as it may have done part of its work";

/// The service command a one-off's end becomes.
fn ended(
    spec: &NodeRunSpec,
    purpose: OneOffPurpose,
    out: OneOffOutcome,
    timeout_secs: u32,
) -> service::Command {
    let (success, exit_code, reason, status) = match out {
        OneOffOutcome::Exited(ExitStatus::Code(0)) => (true, Some(0), None, "succeeded"),
        OneOffOutcome::Exited(ExitStatus::Code(c)) => (false, Some(c), None, "failed"),
        OneOffOutcome::CannotRun { status, why } => {
            // Said as the run's exit line says it.
            let exit = InstanceExited {
                cannot_run: Some(why),
                ..crate::report::exited(&spec.instance, status)
            };
            let reason = service::instances::run_exit_message(&exit);
            (false, exit.exit_code, Some(reason), "failed")
        }
        OneOffOutcome::Exited(ExitStatus::Signal(s)) => {
            (false, None, Some(format!("killed by signal {s}")), "failed")
        }
        OneOffOutcome::OutOfMemory(st) => (
            false,
            match st {
                ExitStatus::Code(c) => Some(c),
                _ => None,
            },
            Some(service::instances::out_of_memory(
                spec.plan.as_ref().map(|p| p.memory_mib),
            )),
            "failed",
        ),
        OneOffOutcome::Exited(ExitStatus::Unknown) => (
            false,
            None,
            Some("ended with an unknown status".to_owned()),
            "failed",
        ),
        OneOffOutcome::FilledDisk { written, limit } => (
            false,
            None,
            Some(service::instances::evicted_for_disk(
                written.div_ceil(1 << 20),
                limit.map(|l| l >> 20),
            )),
            "failed",
        ),
        OneOffOutcome::TimedOut(_) => (
            false,
            None,
            Some(format!("timed out after {timeout_secs} s")),
            "timed_out",
        ),
    };
    match purpose {
        OneOffPurpose::PreDeploy => service::Command::RecordPreDeployEnded {
            deploy: spec.deploy.clone(),
            success,
            exit_code,
            reason,
        },
        OneOffPurpose::CronRun { run } => service::Command::RecordCronRunEnded {
            run,
            status: status.to_owned(),
            exit_code,
            reason,
        },
        OneOffPurpose::Job { job } => service::Command::RecordJobEnded {
            job,
            success,
            exit_code,
            reason,
        },
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use berth_schemas::ids::{DeployId, InstanceId};

    #[test]
    fn checks_ask_for_the_external_host_name_when_it_is_a_plain_name() {
        let env = |v: &str| BTreeMap::from([("RENDER_EXTERNAL_HOSTNAME".to_owned(), v.to_owned())]);
        assert_eq!(
            check_host(&env("web.example.com")).as_deref(),
            Some("web.example.com")
        );
        assert_eq!(
            check_host(&env("web.localhost:8080")).as_deref(),
            Some("web.localhost:8080")
        );
        for not_a_name in [
            "",
            "  ",
            "a b",
            "web.example.com\r\nX-Evil: 1",
            "wéb.example",
        ] {
            assert_eq!(check_host(&env(not_a_name)), None, "{not_a_name:?}");
        }
        assert_eq!(check_host(&BTreeMap::new()), None);
    }

    #[test]
    fn a_pre_deploy_run_over_its_memory_limit_fails_saying_so() {
        let spec = NodeRunSpec {
            service: ServiceId::generate(),
            deploy: DeployId::generate(),
            instance: InstanceId::generate(),
            image: "registry.example/app".into(),
            digest: "sha256:00".into(),
            credential: None,
            login: None,
            env: Default::default(),
            files: Default::default(),
            command: None,
            port: None,
            plan: Some(berth_schemas::model::Plan {
                name: "starter".into(),
                cpu_millis: 500,
                memory_mib: 512,
            }),
            shutdown_delay_secs: 30,
            disk_restore: None,
        };
        let oom = "ran out of memory: killed for going over its memory limit of 512 MiB";
        let filled = "killed for filling the node's disk: it had written 3072 MiB to its filesystem, the most of the node's instances, when the node's disk ran low; what it wrote is gone";
        let over = "killed for writing more than an instance may here: it had written 3072 MiB to its filesystem, over the node's limit of 1024 MiB; what it wrote is gone";
        let outcomes = [
            (
                OneOffOutcome::OutOfMemory(ExitStatus::Code(137)),
                (false, Some(137), Some(oom)),
            ),
            (
                OneOffOutcome::Exited(ExitStatus::Code(0)),
                (true, Some(0), None),
            ),
            (
                OneOffOutcome::Exited(ExitStatus::Code(2)),
                (false, Some(2), None),
            ),
            (
                OneOffOutcome::FilledDisk {
                    written: 3 << 30,
                    limit: None,
                },
                (false, None, Some(filled)),
            ),
            (
                OneOffOutcome::FilledDisk {
                    written: 3 << 30,
                    limit: Some(1 << 30),
                },
                (false, None, Some(over)),
            ),
            (
                OneOffOutcome::CannotRun {
                    status: ExitStatus::Code(127),
                    why: "/migrate.sh is not in the image".into(),
                },
                (
                    false,
                    Some(127),
                    Some("exited with status 127: /migrate.sh is not in the image"),
                ),
            ),
        ];
        for (out, want) in outcomes {
            let service::Command::RecordPreDeployEnded {
                success,
                exit_code,
                reason,
                ..
            } = ended(&spec, OneOffPurpose::PreDeploy, out.clone(), 60)
            else {
                panic!("not a pre-deploy end");
            };
            assert_eq!((success, exit_code, reason.as_deref()), want, "{out:?}");
        }
    }
}

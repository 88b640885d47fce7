//! The agent: runs instances and one-off containers on this node, reports
//! what happens to them, heart-beats, and on start adopts or cleans up
//! whatever a previous agent process left in its runc root.
//!
//! Outcomes go to the caller through an [`AgentEvent`] channel (the
//! scheduler turns them into log events); log lines and heartbeats go
//! straight to core NATS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_schemas::heartbeat::Heartbeat;
use berth_schemas::metrics::{InstanceUsage, UsageSample};

use crate::usage::CgroupReader;
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::Subjects;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bundle::{self, InstanceDir, InstanceSpec, RootfsKind};
use crate::error::{agent_io, AgentError};
use crate::net::{Cni, NetworkConfig};
use crate::process::{self, ExitStatus, RestartPolicy};
use crate::runtime::{Runtime, Signal};
use crate::supervise::{self, Asks, Ended, Running};

/// Debian's `tini` package's static build: it runs in any image, with or
/// without a libc.
const DEFAULT_INIT: &str = "/usr/bin/tini-static";

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node.
    pub node: NodeId,
    /// Instance dirs and state files live here.
    pub state_dir: PathBuf,
    /// Crash restarts.
    pub restart: RestartPolicy,
    /// How often a heartbeat is published.
    pub heartbeat_interval: Duration,
    /// How often each instance's resource use is published (`None`:
    /// never).
    pub usage_interval: Option<Duration>,
    /// Liveness poll for processes the agent cannot reap.
    pub exit_poll: Duration,
    /// How long to wait for a killed container to be gone.
    pub kill_wait: Duration,
    /// The static init run as every container's PID 1 (`tini`); `None`:
    /// the app is PID 1 (it then ignores SIGTERM unless it handles it, and
    /// orphans it does not reap stay zombies).
    pub init: Option<PathBuf>,
    /// The node's instance network; `None`: instances that ask for one
    /// fail to start (agents in tests run without).
    pub network: Option<NetworkConfig>,
    /// How many lines of output each run of an instance may publish.
    pub log_rate: crate::logs::LogRate,
    /// The free space kept on the filesystem of the instances' files: below
    /// it, the instance that wrote the most is killed and its writes
    /// removed ([`crate::disk`]); 0: never.
    pub disk_reserve: u64,
    /// How often that free space is read.
    pub disk_check: Duration,
    /// The most an instance or one-off run may write to its filesystem:
    /// over it, it is killed and its writes removed, as when the node's
    /// disk runs low ([`crate::disk`]); 0: no limit.
    pub instance_disk_limit: u64,
    /// How often every instance's writes are measured against that limit
    /// (a walk over every file they made).
    pub disk_limit_check: Duration,
    /// Run instances in a user namespace with these ids (their root is an
    /// unprivileged user of the host); `None`: uid 0 inside is uid 0 on
    /// the host. The images' trees must be owned for the same ids.
    pub user_namespace: Option<bundle::UserNamespace>,
}

impl AgentConfig {
    /// Defaults for `node` under `state_dir`.
    pub fn new(node: NodeId, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            node,
            state_dir: state_dir.into(),
            restart: RestartPolicy::default(),
            heartbeat_interval: Duration::from_secs(5),
            usage_interval: Some(Duration::from_secs(15)),
            exit_poll: Duration::from_millis(200),
            kill_wait: Duration::from_secs(10),
            init: Some(PathBuf::from(DEFAULT_INIT)).filter(|p| p.is_file()),
            network: None,
            log_rate: crate::logs::LogRate::default(),
            disk_reserve: 0,
            disk_check: Duration::from_secs(1),
            instance_disk_limit: 0,
            disk_limit_check: Duration::from_secs(10),
            user_namespace: None,
        }
    }
}

/// Long-running service instance or a one-off run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Restarted when it crashes; stopped on request.
    Service,
    /// Runs once (pre-deploy command, cron run) with a timeout.
    OneOff,
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOutcome {
    /// The last signal needed: `Term` when it exited within the delay.
    pub escalated_to_kill: bool,
    /// How the process ended (`None`: it was not running).
    pub status: Option<ExitStatus>,
    /// From the stop request to the process gone.
    pub elapsed: Duration,
}

/// How a one-off run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OneOffOutcome {
    /// The process exited by itself.
    Exited(ExitStatus),
    /// It failed after the kernel killed a process of it for going over
    /// its memory limit (out of memory).
    OutOfMemory(ExitStatus),
    /// Its program could not be run (`why`: [`crate::runnable`]); it
    /// exited with `status`.
    CannotRun {
        /// How it exited.
        status: ExitStatus,
        /// Why its program could not be run.
        why: String,
    },
    /// The timeout passed and it was stopped.
    TimedOut(StopOutcome),
    /// Killed when the node's disk ran low, as the run or instance that had
    /// written the most to its filesystem (`written` bytes, removed), or
    /// for writing more than `limit`.
    FilledDisk {
        /// What it had written, in bytes.
        written: u64,
        /// The limit it went over, in bytes; `None`: killed for the
        /// node's disk.
        limit: Option<u64>,
    },
}

/// What happened to an instance; sent on the agent's event channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The process runs (after a start or a restart).
    Started {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// Host pid.
        pid: u32,
        /// 0 for the first start, then counts restarts.
        restarts: u32,
        /// Request (or restart) to process running.
        startup: Duration,
        /// When.
        at: DateTime<Utc>,
    },
    /// Creating or starting the container failed.
    StartFailed {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// Why.
        error: String,
    },
    /// The process ended by itself.
    Exited {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// How.
        status: ExitStatus,
        /// Whether the kernel killed a process of it for going over its
        /// memory limit while it ran (out of memory).
        oom_killed: bool,
        /// The memory limit it went over (with `oom_killed`), in MiB.
        memory_limit_mib: Option<u32>,
        /// Stopped by the agent to be started again at once (a live
        /// instance failing its health checks), not ended by itself.
        restarted: bool,
        /// Killed by the agent when the node's disk ran low, as the
        /// instance that had written the most to its filesystem: the bytes
        /// it had written (gone now).
        disk_written: Option<u64>,
        /// With `disk_written`: the limit it went over, in bytes (killed
        /// for writing more than an instance may, whatever the node's
        /// free space); `None`: killed for the node's disk.
        #[serde(default)]
        disk_limit: Option<u64>,
        /// Why its program could not be run, found in the image before
        /// the start ([`crate::runnable`]), when it then exited failing.
        #[serde(default)]
        cannot_run: Option<String>,
        /// How long it ran.
        ran: Duration,
        /// When.
        at: DateTime<Utc>,
    },
    /// A crashed instance will be started again after `after`.
    RestartScheduled {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// Backoff.
        after: Duration,
    },
    /// Stopped on request (or by a one-off's timeout).
    Stopped {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// How.
        outcome: StopOutcome,
    },
    /// A running container left by a previous agent process is supervised again.
    Adopted {
        /// Service.
        service: ServiceId,
        /// Instance.
        instance: InstanceId,
        /// Host pid.
        pid: u32,
    },
    /// A container or instance dir with no live owner was removed.
    CleanedUp {
        /// The container id / instance dir name.
        container: String,
        /// Why.
        reason: String,
    },
}

/// The agent's record of one instance (`instance.json`), enough to adopt
/// or restart it after the agent itself restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub spec: InstanceSpec,
    pub kind: Kind,
    pub rootfs: RootfsKind,
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    pub restarts: u32,
}

struct Supervised {
    /// The service it is an instance of.
    service: ServiceId,
    /// The service's disk it mounts, if any.
    disk: Option<berth_schemas::ids::DiskId>,
    stop: CancellationToken,
    /// Restarts and evictions asked of it.
    asks: Arc<Asks>,
    task: Option<JoinHandle<Ended>>,
}

pub(crate) struct Inner {
    pub cfg: AgentConfig,
    pub runtime: Arc<dyn Runtime>,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub events: mpsc::UnboundedSender<AgentEvent>,
    instances: Mutex<HashMap<InstanceId, Supervised>>,
    /// What every container's sandbox gets on this node.
    pub sandbox: bundle::Sandbox,
    /// The node's instance network, when configured.
    pub net: Option<Cni>,
    /// Whether runc mounts instance roots inside their containers (until
    /// it refuses once: then on the host, see [`bundle::RootfsKind`]).
    pub rootfs_inside: std::sync::atomic::AtomicBool,
    /// Whether instances in a user namespace mount a sysfs of their own
    /// network (until runc is refused one: then the host's `/sys`).
    pub own_sysfs: std::sync::atomic::AtomicBool,
    /// The instances' cgroups (what an exit's memory kills were).
    pub cgroups: CgroupReader,
    pub detach: CancellationToken,
    tracker: TaskTracker,
}

impl Inner {
    pub fn report(&self, e: AgentEvent) {
        tracing::info!(event = ?e, "agent event");
        let _ = self.events.send(e);
    }

    fn table(&self) -> MutexGuard<'_, HashMap<InstanceId, Supervised>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self, i: &InstanceId) -> InstanceDir {
        InstanceDir::new(&self.cfg.state_dir, i)
    }

    /// Whether the kernel killed a process of `spec`'s instance for going
    /// over its memory limit while it ran, and that limit (MiB) when it
    /// did. Read before the container (and its cgroup) goes.
    pub fn out_of_memory(&self, spec: &InstanceSpec) -> (bool, Option<u32>) {
        let killed = self
            .cgroups
            .oom_kills(&spec.instance)
            .is_some_and(|n| n > 0);
        (killed, spec.limits.memory_mib.filter(|_| killed))
    }

    /// Every supervised instance's asks (restart, kill for the disk).
    pub(crate) fn asks(&self) -> Vec<(InstanceId, Arc<Asks>)> {
        self.table()
            .iter()
            .map(|(i, s)| (i.clone(), s.asks.clone()))
            .collect()
    }

    /// Whether an instance asked to go for the disk still holds its files.
    pub(crate) fn disk_kill_pending(&self) -> bool {
        self.table()
            .values()
            .any(|s| s.asks.written.load(Ordering::Relaxed) != 0)
    }

    pub fn forget(&self, i: &InstanceId) {
        self.table().remove(i);
    }

    /// Remove an instance's network, if it has one (logged, not fatal: the
    /// next start deletes what is left).
    pub async fn release_network(&self, i: &InstanceId) {
        if let Some(net) = &self.net {
            if let Err(e) = net.detach(i).await {
                tracing::warn!(instance = %i, error = %e, "network not fully removed");
            }
        }
    }
}

/// The node agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.inner.cfg.node)
            .field("state_dir", &self.inner.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Start the agent: become the child subreaper (so container exit
    /// codes come back to this process), adopt or clean up what a
    /// previous agent left, and start heart-beating.
    pub async fn start(
        cfg: AgentConfig,
        runtime: Arc<dyn Runtime>,
        client: async_nats::Client,
        subjects: Subjects,
        events: mpsc::UnboundedSender<AgentEvent>,
    ) -> Result<Agent, AgentError> {
        // Root only: instance rootfs trees hold the images' setuid files,
        // which a host user must not reach and run.
        let instances_dir = cfg.state_dir.join("instances");
        let searcher = cfg.user_namespace.map(|u| u.host);
        for d in [&cfg.state_dir, &instances_dir] {
            bundle::private_dir(d, searcher).map_err(agent_io(d))?;
        }
        if let Some(init) = cfg.init.as_ref().filter(|p| !p.is_file()) {
            return Err(AgentError::Io {
                path: init.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the container init is not a file",
                ),
            });
        }
        raise_open_files();
        if cfg.user_namespace.is_some() {
            raise_key_quota();
        }
        let sandbox = bundle::Sandbox {
            user_namespace: cfg.user_namespace,
            ..bundle::Sandbox::detect(cfg.init.clone())
        };
        tracing::info!(
            init = ?sandbox.init,
            swap_limit = sandbox.swap_limit,
            open_files_max = sandbox.open_files_max,
            user_namespace = ?sandbox.user_namespace,
            "container sandbox"
        );
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| agent_io("prctl(PR_SET_CHILD_SUBREAPER)")(e.into()))?;
        let net = match &cfg.network {
            Some(n) => Some(
                Cni::open(NetworkConfig {
                    user_namespace: cfg.user_namespace,
                    ..n.clone()
                })
                .await?,
            ),
            None => None,
        };
        let agent = Agent {
            inner: Arc::new(Inner {
                cfg,
                runtime,
                client,
                subjects,
                events,
                instances: Mutex::new(HashMap::new()),
                sandbox,
                net,
                rootfs_inside: std::sync::atomic::AtomicBool::new(true),
                own_sysfs: std::sync::atomic::AtomicBool::new(true),
                cgroups: CgroupReader::host(),
                detach: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        };
        agent.recover().await?;
        let me = agent.clone();
        agent
            .inner
            .tracker
            .spawn(async move { me.heartbeats().await });
        if agent.inner.cfg.disk_reserve > 0 {
            let me = agent.clone();
            agent
                .inner
                .tracker
                .spawn(async move { crate::disk::keep_free(&me.inner).await });
        }
        if agent.inner.cfg.instance_disk_limit > 0 {
            let me = agent.clone();
            agent
                .inner
                .tracker
                .spawn(async move { crate::disk::keep_within(&me.inner).await });
        }
        if let Some(every) = agent.inner.cfg.usage_interval {
            let me = agent.clone();
            agent
                .inner
                .tracker
                .spawn(async move { me.usage(every, me.inner.cgroups.clone()).await });
        }
        Ok(agent)
    }

    /// Instances supervised now.
    pub fn instances(&self) -> Vec<InstanceId> {
        let mut v: Vec<_> = self.inner.table().keys().cloned().collect();
        v.sort_by_key(|i| i.to_string());
        v
    }

    /// The service an instance this agent runs (a one-off too) belongs
    /// to.
    pub fn service_of(&self, instance: &InstanceId) -> Option<ServiceId> {
        Some(self.inner.table().get(instance)?.service.clone())
    }

    /// The disks the instances this agent runs mount.
    pub fn disks_in_use(&self) -> std::collections::BTreeSet<berth_schemas::ids::DiskId> {
        self.inner
            .table()
            .values()
            .filter_map(|s| s.disk.clone())
            .collect()
    }

    /// The address of an instance on the node's bridge.
    pub fn address(&self, instance: &InstanceId) -> Option<std::net::Ipv4Addr> {
        Some(self.inner.net.as_ref()?.attachment(instance)?.ip)
    }

    /// Start a service instance; returns once its process runs (restarts
    /// after crashes follow by themselves). Returns the host pid.
    pub async fn run_instance(&self, spec: InstanceSpec) -> Result<u32, AgentError> {
        let (pid, _) = self.launch_new(spec, Kind::Service).await?;
        Ok(pid)
    }

    /// Run a one-off container to completion, stopping it (SIGTERM, then
    /// SIGKILL after the spec's shutdown delay) when `timeout` passes.
    pub async fn run_once(
        &self,
        spec: InstanceSpec,
        timeout: Duration,
    ) -> Result<OneOffOutcome, AgentError> {
        let instance = spec.instance.clone();
        let (_, task) = self.launch_new(spec, Kind::OneOff).await?;
        let Some(mut task) = task else {
            return Err(AgentError::ShuttingDown);
        };
        let ended = match tokio::time::timeout(timeout, &mut task).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(s) = self.inner.table().get(&instance) {
                    s.stop.cancel();
                }
                task.await
            }
        };
        match ended {
            // A run that still succeeded (a child was killed, the
            // command coped) ended as it says.
            Ok(Ended::Exited {
                disk_written: Some(written),
                disk_limit,
                ..
            }) => Ok(OneOffOutcome::FilledDisk {
                written,
                limit: disk_limit,
            }),
            Ok(Ended::Exited {
                status,
                oom_killed: true,
                ..
            }) if status != ExitStatus::Code(0) => Ok(OneOffOutcome::OutOfMemory(status)),
            Ok(Ended::Exited {
                status,
                cannot_run: Some(why),
                ..
            }) => Ok(OneOffOutcome::CannotRun { status, why }),
            Ok(Ended::Exited { status, .. }) => Ok(OneOffOutcome::Exited(status)),
            Ok(Ended::Stopped(o)) => Ok(OneOffOutcome::TimedOut(o)),
            Ok(Ended::Detached) | Err(_) => Err(AgentError::ShuttingDown),
        }
    }

    /// Give `spec`'s instance its network before it starts (a no-op for an
    /// instance without one, or one already attached); its address. The
    /// network goes with the instance, or, if it never starts, at the next
    /// agent start.
    pub async fn attach_network(
        &self,
        spec: &InstanceSpec,
    ) -> Result<Option<std::net::Ipv4Addr>, AgentError> {
        Ok(supervise::network(&self.inner, spec).await?.map(|a| a.ip))
    }

    /// Points a running instance's published host port at `port` inside
    /// it: the port it turned out to listen on.
    pub async fn republish(&self, instance: &InstanceId, port: u16) -> Result<(), AgentError> {
        let net = self
            .inner
            .net
            .as_ref()
            .ok_or_else(|| crate::net::NetError::Unknown(instance.to_string()))?;
        Ok(net.republish(instance, port).await?)
    }

    /// Applies what the node knows of the other nodes and their private
    /// services ([`crate::net::Directory`]); a no-op without a network.
    pub async fn set_directory(&self, directory: crate::net::Directory) -> Result<(), AgentError> {
        match &self.inner.net {
            Some(net) => Ok(net.set_directory(directory).await?),
            None => Ok(()),
        }
    }

    /// Runs a command in a running instance as its own process runs
    /// ([`crate::exec`]): refused for an instance not on this node or not
    /// running (between restarts, stopping).
    pub async fn exec(
        &self,
        instance: &InstanceId,
        req: &crate::exec::ExecRequest,
    ) -> Result<crate::exec::ExecOutput, AgentError> {
        let (id, dir) = self.running_container(instance).await?;
        Ok(self.inner.runtime.exec(&id, req, &dir).await?)
    }

    /// Opens a terminal in a running instance with a program on it
    /// ([`crate::terminal`]); refused as [`Agent::exec`] is.
    pub async fn terminal(
        &self,
        instance: &InstanceId,
        req: &crate::terminal::TerminalRequest,
    ) -> Result<crate::terminal::Terminal, AgentError> {
        let (id, dir) = self.running_container(instance).await?;
        Ok(self.inner.runtime.terminal(&id, req, &dir).await?)
    }

    /// The container id and bundle directory of an instance of this node
    /// whose container runs now.
    async fn running_container(
        &self,
        instance: &InstanceId,
    ) -> Result<(String, std::path::PathBuf), AgentError> {
        if !self.inner.table().contains_key(instance) {
            return Err(AgentError::UnknownInstance(instance.to_string()));
        }
        let id = instance.to_string();
        let running = self
            .inner
            .runtime
            .state(&id)
            .await?
            .is_some_and(|s| s.status == crate::runtime::ContainerStatus::Running);
        if !running {
            return Err(AgentError::NotRunning(id));
        }
        Ok((id, self.inner.dir(instance).bundle()))
    }

    /// Begin stopping an instance and return at once: SIGTERM, SIGKILL
    /// after its shutdown delay, then its container, files and network are
    /// removed and `Stopped` is reported, while other work goes on (a slow
    /// stop never holds up a start).
    pub fn begin_stop(&self, instance: &InstanceId) -> Result<(), AgentError> {
        let t = self.inner.table();
        let s = t
            .get(instance)
            .ok_or_else(|| AgentError::UnknownInstance(instance.to_string()))?;
        s.stop.cancel();
        Ok(())
    }

    /// Stop an instance: SIGTERM, SIGKILL after its shutdown delay; its
    /// container and files are removed.
    pub async fn stop_instance(&self, instance: &InstanceId) -> Result<StopOutcome, AgentError> {
        let task = {
            let mut t = self.inner.table();
            let s = t
                .get_mut(instance)
                .ok_or_else(|| AgentError::UnknownInstance(instance.to_string()))?;
            s.stop.cancel();
            s.task.take()
        };
        let Some(task) = task else {
            return Err(AgentError::UnknownInstance(instance.to_string()));
        };
        match task.await {
            Ok(Ended::Stopped(o)) => Ok(o),
            Ok(Ended::Exited { status, .. }) => Ok(StopOutcome {
                escalated_to_kill: false,
                status: Some(status),
                elapsed: Duration::ZERO,
            }),
            Ok(Ended::Detached) | Err(_) => Err(AgentError::ShuttingDown),
        }
    }

    /// Restart a service instance in place: its process is stopped
    /// (SIGTERM, SIGKILL after the shutdown delay) and started again at
    /// once, without the crash backoff; the new start is reported as
    /// `Started` with `restarts` counted up. Used when a live instance
    /// keeps failing its health check (SPEC §6).
    pub fn restart_instance(&self, instance: &InstanceId) -> Result<(), AgentError> {
        let t = self.inner.table();
        let s = t
            .get(instance)
            .ok_or_else(|| AgentError::UnknownInstance(instance.to_string()))?;
        // A stored permit: a request made while the supervisor is busy
        // (e.g. relaunching) is acted on when it next waits.
        s.asks.restart.notify_one();
        Ok(())
    }

    /// Stop every instance (node drain).
    pub async fn stop_all(&self) {
        let ids = self.instances();
        let stops = ids.iter().map(|i| self.stop_instance(i));
        for (i, r) in ids.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = r {
                tracing::warn!(instance = %i, error = %e, "stop failed");
            }
        }
    }

    /// Stop supervising and return, leaving containers running and their
    /// records in place for the next agent process to adopt (what happens
    /// when the agent is upgraded or crashes).
    pub async fn detach(&self) {
        self.inner.detach.cancel();
        self.inner.tracker.close();
        let tasks: Vec<_> = self
            .inner
            .table()
            .values_mut()
            .filter_map(|s| s.task.take())
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        self.inner.tracker.wait().await;
        // With nothing left running, nothing of the network is left either.
        if let Some(net) = &self.inner.net {
            if self.inner.table().is_empty() {
                if let Err(e) = net.close().await {
                    tracing::warn!(error = %e, "node network not removed");
                }
            }
        }
    }

    async fn launch_new(
        &self,
        spec: InstanceSpec,
        kind: Kind,
    ) -> Result<(u32, Option<JoinHandle<Ended>>), AgentError> {
        if self.inner.detach.is_cancelled() {
            return Err(AgentError::ShuttingDown);
        }
        let instance = spec.instance.clone();
        let stop = CancellationToken::new();
        let asks = Arc::new(Asks::default());
        {
            let mut t = self.inner.table();
            if t.contains_key(&instance) {
                return Err(AgentError::Duplicate(instance.to_string()));
            }
            t.insert(
                instance.clone(),
                Supervised {
                    service: spec.service.clone(),
                    disk: spec.disk.as_ref().map(|d| d.id.clone()),
                    stop: stop.clone(),
                    asks: asks.clone(),
                    task: None,
                },
            );
        }
        let requested = Instant::now();
        let running = match supervise::launch(&self.inner, &spec, kind, 0).await {
            Ok(r) => r,
            Err(e) => {
                self.inner.forget(&instance);
                let _ = self.inner.runtime.delete(&instance.to_string()).await;
                bundle::remove_instance(&self.inner.dir(&instance));
                self.inner.release_network(&instance).await;
                supervise::start_failed(&self.inner, &spec, &e).await;
                return Err(e);
            }
        };
        let pid = running.pid;
        self.inner.report(AgentEvent::Started {
            service: spec.service.clone(),
            instance: instance.clone(),
            pid,
            restarts: 0,
            startup: requested.elapsed(),
            at: Utc::now(),
        });
        let task = self.spawn_supervisor(spec, kind, Some(running), 0, stop, asks);
        // A one-off's handle goes to run_once (which owns its timeout); a
        // service's lives in the table for stop_instance and detach.
        if kind == Kind::OneOff {
            return Ok((pid, Some(task)));
        }
        if let Some(s) = self.inner.table().get_mut(&instance) {
            s.task = Some(task);
        }
        Ok((pid, None))
    }

    fn spawn_supervisor(
        &self,
        spec: InstanceSpec,
        kind: Kind,
        running: Option<Running>,
        restarts: u32,
        stop: CancellationToken,
        asks: Arc<Asks>,
    ) -> JoinHandle<Ended> {
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let instance = spec.instance.clone();
            let ended =
                supervise::supervise(&inner, spec, kind, running, restarts, stop, asks).await;
            if !matches!(ended, Ended::Detached) {
                inner.forget(&instance);
            }
            ended
        })
    }

    async fn heartbeats(&self) {
        let mut tick = tokio::time::interval(self.inner.cfg.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.detach.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = Heartbeat {
                node: self.inner.cfg.node.clone(),
                time: Utc::now(),
                instances: self.instances(),
            };
            if let Ok(p) = serde_json::to_vec(&hb) {
                if let Err(e) = self
                    .inner
                    .client
                    .publish(self.inner.subjects.heartbeat(), p.into())
                    .await
                {
                    tracing::warn!(error = %e, "heartbeat not published");
                }
            }
        }
    }

    /// Every `every`, each service's instances' resource use, read from
    /// their cgroups: one sample per service on `subjects.usage(service,
    /// node)` (kept a day by the metrics stream), and per service the
    /// node's totals as this process's Prometheus gauges (per service, not
    /// per instance, so instance churn does not grow the page; a service
    /// that left the node reads 0).
    async fn usage(&self, every: Duration, cgroups: CgroupReader) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each instance's CPU time at the previous sample, for a rate.
        let mut last: HashMap<InstanceId, (u64, std::time::Instant)> = HashMap::new();
        let mut shown: std::collections::HashSet<ServiceId> = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = self.inner.detach.cancelled() => return,
                _ = tick.tick() => {}
            }
            let running: Vec<(InstanceId, ServiceId)> = self
                .inner
                .table()
                .iter()
                .map(|(i, s)| (i.clone(), s.service.clone()))
                .collect();
            let now = std::time::Instant::now();
            let mut by_service: HashMap<ServiceId, Vec<InstanceUsage>> = HashMap::new();
            let mut totals: HashMap<ServiceId, (f64, u64)> = HashMap::new();
            let mut seen = HashMap::new();
            let disks = {
                let dir = crate::persistent::dir(&self.inner.cfg.state_dir);
                tokio::task::spawn_blocking(move || crate::persistent::usage(&dir))
                    .await
                    .unwrap_or_default()
            };
            for (mut u, service) in cgroups.read_all(running).await {
                if let Some((used, size)) = disks.get(service.as_str()) {
                    u.disk_used_bytes = Some(*used);
                    u.disk_capacity_bytes = Some(*size);
                }
                let instance = u.instance.clone();
                let cores = last.get(&instance).map_or(0.0, |(cpu, at)| {
                    let secs = now.duration_since(*at).as_secs_f64();
                    if secs > 0.0 {
                        u.cpu_nanos.saturating_sub(*cpu) as f64 / 1e9 / secs
                    } else {
                        0.0
                    }
                });
                seen.insert(instance, (u.cpu_nanos, now));
                let t = totals.entry(service.clone()).or_default();
                t.0 += cores;
                t.1 += u.memory_bytes;
                by_service.entry(service).or_default().push(u);
            }
            last = seen;
            for service in shown.iter().filter(|s| !totals.contains_key(*s)) {
                let name = service.to_string();
                metrics::gauge!("berth_service_cpu_cores", "service" => name.clone()).set(0.0);
                metrics::gauge!("berth_service_memory_bytes", "service" => name).set(0.0);
            }
            for (service, (cores, memory)) in &totals {
                let name = service.to_string();
                metrics::gauge!("berth_service_cpu_cores", "service" => name.clone()).set(*cores);
                metrics::gauge!("berth_service_memory_bytes", "service" => name)
                    .set(*memory as f64);
                shown.insert(service.clone());
            }
            let time = Utc::now();
            for (service, instances) in by_service {
                let sample = UsageSample {
                    node: self.inner.cfg.node.clone(),
                    time,
                    instances,
                };
                let Ok(payload) = serde_json::to_vec(&sample) else {
                    continue;
                };
                let subject = self.inner.subjects.usage(&service, &self.inner.cfg.node);
                if let Err(e) = self.inner.client.publish(subject, payload.into()).await {
                    tracing::warn!(error = %e, "resource sample not published");
                }
            }
        }
    }

    /// Wait (bounded) for a killed container's process to be gone, reaping
    /// it when this process is its subreaper — the previous agent may have
    /// been this same process (an in-process restart), and a zombie would
    /// otherwise outlive its container.
    async fn reap(&self, pid: u32, started: Option<u64>) {
        if pid == 0 {
            return;
        }
        let wait = process::wait_exit(pid, started, self.inner.cfg.exit_poll);
        if tokio::time::timeout(self.inner.cfg.kill_wait, wait)
            .await
            .is_err()
        {
            tracing::warn!(pid, "killed container process still present");
        }
    }

    /// Adopt running service containers recorded by a previous agent;
    /// restart recorded ones that died meanwhile; remove everything else
    /// (containers without a record, interrupted one-offs, stray dirs).
    async fn recover(&self) -> Result<(), AgentError> {
        let inner = &self.inner;
        let dir = inner.cfg.state_dir.join("instances");
        let mut records: HashMap<String, Record> = HashMap::new();
        let mut stray: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(agent_io(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match supervise::read_record(&entry.path().join("instance.json")) {
                Some(r) if r.spec.instance.to_string() == name => {
                    records.insert(name, r);
                }
                _ => stray.push(name),
            }
        }
        for c in inner.runtime.list().await? {
            if !records.contains_key(&c.id) {
                if c.status.can_kill() {
                    let _ = inner.runtime.kill(&c.id, Signal::Kill).await;
                }
                inner.runtime.delete(&c.id).await?;
                self.reap(c.pid, None).await;
                stray.retain(|s| *s != c.id);
                bundle::remove_instance(&InstanceDir {
                    root: dir.join(&c.id),
                });
                inner.report(AgentEvent::CleanedUp {
                    container: c.id,
                    reason: "container without a record".into(),
                });
            }
        }
        for name in stray {
            bundle::remove_instance(&InstanceDir {
                root: dir.join(&name),
            });
            inner.report(AgentEvent::CleanedUp {
                container: name,
                reason: "instance dir without a record or container".into(),
            });
        }
        // Networks before any supervisor (re)launches: recorded service
        // instances keep theirs (checked, rules restored); every other
        // network state left here is deleted.
        if let Some(net) = &inner.net {
            let keep = records
                .values()
                .filter(|r| r.kind == Kind::Service)
                .map(|r| {
                    let pid = r.pid.filter(|p| process::alive(*p, r.pid_start));
                    (r.spec.instance.clone(), pid)
                })
                .collect();
            net.recover(&keep).await?;
        }
        for (id, rec) in records {
            let idir = inner.dir(&rec.spec.instance);
            if rec.kind == Kind::OneOff {
                inner.runtime.delete(&id).await?;
                if let Some(pid) = rec.pid {
                    self.reap(pid, rec.pid_start).await;
                }
                bundle::remove_instance(&idir);
                inner.report(AgentEvent::CleanedUp {
                    container: id,
                    reason: "one-off interrupted by an agent restart".into(),
                });
                continue;
            }
            let stop = CancellationToken::new();
            let asks = Arc::new(Asks::default());
            inner.table().insert(
                rec.spec.instance.clone(),
                Supervised {
                    service: rec.spec.service.clone(),
                    disk: rec.spec.disk.as_ref().map(|d| d.id.clone()),
                    stop: stop.clone(),
                    asks: asks.clone(),
                    task: None,
                },
            );
            let running = supervise::adopt(inner, &rec).await;
            match &running {
                Some(r) => inner.report(AgentEvent::Adopted {
                    service: rec.spec.service.clone(),
                    instance: rec.spec.instance.clone(),
                    pid: r.pid,
                }),
                None => {
                    let (oom_killed, memory_limit_mib) = inner.out_of_memory(&rec.spec);
                    inner.runtime.delete(&id).await?;
                    if let Some(pid) = rec.pid {
                        self.reap(pid, rec.pid_start).await;
                    }
                    inner.report(AgentEvent::Exited {
                        service: rec.spec.service.clone(),
                        instance: rec.spec.instance.clone(),
                        status: ExitStatus::Unknown,
                        oom_killed,
                        memory_limit_mib,
                        restarted: false,
                        disk_written: None,
                        disk_limit: None,
                        cannot_run: None,
                        ran: Duration::ZERO,
                        at: Utc::now(),
                    });
                }
            }
            let instance = rec.spec.instance.clone();
            // A recorded instance had started: starting it again now is a
            // restart, reported as one.
            let restarts = match running {
                Some(_) => rec.restarts,
                None => rec.restarts.saturating_add(1),
            };
            let task = self.spawn_supervisor(rec.spec, rec.kind, running, restarts, stop, asks);
            if let Some(s) = inner.table().get_mut(&instance) {
                s.task = Some(task);
            }
        }
        Ok(())
    }
}

/// Each instance holds open files in this process (its two log pipes and
/// its network namespace), so a node with thousands of instances needs
/// more than the usual soft limit of 1,024: raised to the hard limit.
/// The kernel's key quota for users other than root, which instances in a
/// user namespace all are (one host uid): runc gives each container a
/// session keyring of its own, and at the default 200 keys and 20,000
/// bytes per user the ~200th container fails to start ("unable to create
/// session key: disk quota exceeded"). Raised to what root has, as LXD
/// advises for hosts of many containers; never lowered. A host setting:
/// it also lets the machine's other users hold that many keys.
fn raise_key_quota() {
    for (name, floor) in [("maxkeys", 1_000_000u64), ("maxbytes", 25_000_000)] {
        let path = std::path::Path::new("/proc/sys/kernel/keys").join(name);
        let now = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        match now {
            Some(v) if v >= floor => {}
            _ => match std::fs::write(&path, floor.to_string()) {
                Ok(()) => {
                    tracing::info!(setting = %path.display(), was = ?now, now = floor, "kernel key quota of non-root users raised for instances in a user namespace")
                }
                Err(e) => {
                    tracing::warn!(setting = %path.display(), error = %e, "kernel key quota not raised: instances past the ~200th on this node may fail to start")
                }
            },
        }
    }
}

fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "open files limit not raised");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "open files limit unknown"),
    }
}

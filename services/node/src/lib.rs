//! berth-node: the `node` component — the puller and the agent of one
//! machine behind one durable work queue (SPEC §8, §9, §11, §12).
//!
//! On start the node takes its identity and its key pair from its data dir
//! (created once, so a restarted node is the same node), registers its
//! capacity and public key on its node aggregate, starts the agent (which
//! adopts or cleans up the containers a previous process left and
//! heart-beats), and consumes
//! `work.node.<node id>`: [`NodeWork`](berth_schemas::commands::NodeWork)
//! items the scheduler enqueues. What happens to instances becomes events on
//! the service's subject, correlated with the deploy.
//!
//! A node never holds the installation's secret key. The env values and
//! registry login a work item needs arrive sealed to this node's public key
//! (`berth_runtime::node_key`), bound to the node, service and instance;
//! the private key stays in `node.key` in the data dir (mode 0600). What a
//! node's disk or memory gives away is what its own work needed.
//!
//! Every instance has a network namespace of its own on the node's bridge
//! (an address from `BERTH_NODE_SUBNET`; see `berth_agent::net`), so every
//! instance of a service listens on the same port, as on Render: the
//! service's `PORT`, else the one TCP port its image exposes, else 10000.
//! A web instance's port is published on a host port from
//! `BERTH_NODE_PORTS`; its `addr` in `instance_started` is
//! `<BERTH_NODE_ADVERTISE_ADDR>:<host port>`, where the router on any
//! machine sends it traffic. A private instance is not published: its
//! `addr` is its own address, and its owner's instances reach it by the
//! service's name. Health checks ([`health`]) go to the instance's own
//! address, which no other instance can answer.
//!
//! On shutdown the node stops taking work, lets in-flight items finish or
//! naks them, and detaches from its containers: they keep running and the
//! next node process adopts them (an upgrade or crash never kills
//! workloads; stopping an instance is an explicit work item).

mod config;
pub mod directory;
pub mod disks;
mod exec;
mod gc;
pub mod health;
pub mod preflight;
mod report;
mod sealed;
mod shell;
pub mod userns;
mod work;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_agent::net::NetworkConfig;
use berth_agent::{Agent, AgentConfig, Runc};
use berth_domain::node::{self as rules, Capacity, Command};
use berth_eventlog::start::until_available;
use berth_eventlog::worker::WorkerConfig;
use berth_eventlog::{EventStore, Stamp};
use berth_oci::RegistryClient;
use berth_puller::{ContentStore, PullConfig, Puller, VerifyPolicy};
use berth_runtime::node_key::NodeKeyPair;
use berth_runtime::{BoxError, Component, ComponentContext};
use berth_schemas::ids::NodeId;
use berth_schemas::{Actor, AggregateId, Subjects};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use config::{NodeArgs, NodeChecks, NodeOptions, Userns, USERNS_AUTO_HOST, USERNS_IDS};
pub use gc::GcOptions;
pub use health::{Check, Health, HealthOptions};
pub use report::{Placement, Reporter, DONE_KEPT};
pub use work::NodeHandler;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node state dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node id file {path} is corrupt: {reason}")]
    BadId { path: PathBuf, reason: String },
    #[error("content store: {0}")]
    Store(#[from] berth_puller::StoreError),
    #[error("registry client: {0}")]
    Client(String),
    #[error("agent: {0}")]
    Agent(#[from] berth_agent::AgentError),
    #[error("registering the node: {0}")]
    Register(String),
    /// The node's key pair could not be read or created.
    #[error("node key: {0}")]
    Key(#[from] berth_runtime::SecretError),
    #[error("work queue: {0}")]
    Queue(#[from] berth_eventlog::StoreError),
    /// The machine lacks what running containers takes (root, runc, CNI
    /// plugins, …): one sentence naming all of it ([`preflight`]).
    #[error("{0}")]
    Preflight(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The node's id, created in `dir/node-id` on the first start.
pub fn load_or_create_id(dir: &Path) -> Result<NodeId, NodeError> {
    load_or_adopt_id(dir, None)
}

/// The node's id in `dir`; a node without one takes `given` (the id its
/// NATS credentials are bound to), else a fresh one. A node whose id is not
/// `given` is refused: its credentials would not let it take its own work.
pub fn load_or_adopt_id(dir: &Path, given: Option<&NodeId>) -> Result<NodeId, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id: NodeId = s.trim().parse().map_err(|e| NodeError::BadId {
                path: path.clone(),
                reason: format!("{e}"),
            })?;
            match given {
                Some(g) if *g != id => Err(NodeError::BadId {
                    path: path.clone(),
                    reason: format!(
                        "this node is {id} but its NATS credentials are for {g}: use that node's \
                         credentials, or another BERTH_NODE_DIR"
                    ),
                }),
                _ => Ok(id),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = given.cloned().unwrap_or_else(NodeId::generate);
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            Ok(id)
        }
        Err(e) => Err(NodeError::Io { path, source: e }),
    }
}

/// The node's X25519 key pair, created in `dir/node.key` (mode 0600) on
/// the first start. Its public part is published in the registration.
pub fn load_or_create_key(dir: &Path) -> Result<NodeKeyPair, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    Ok(NodeKeyPair::load_or_create(&dir.join("node.key"))?)
}

/// How long facts still in flight at shutdown may take to be recorded.
const FORWARD_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// The `node` component.
#[derive(Debug)]
pub struct Node {
    store: EventStore,
    opts: NodeOptions,
    checks: NodeChecks,
    gc: GcOptions,
    /// The id the node's NATS credentials are bound to, if any.
    bound_id: Option<NodeId>,
}

impl Node {
    /// A node with the default instance addresses and health checks.
    pub fn new(store: EventStore, opts: NodeOptions) -> Self {
        Self {
            store,
            opts,
            checks: NodeChecks::default(),
            gc: GcOptions::default(),
            bound_id: None,
        }
    }

    /// Binds the node to the id its NATS credentials name: a node dir
    /// without an id takes it, one with another id is refused at start.
    pub fn with_bound_id(mut self, id: Option<NodeId>) -> Self {
        self.bound_id = id;
        self
    }

    /// Sets when and how far the content store is collected
    /// ([`NodeArgs::gc`]).
    pub fn with_gc(mut self, gc: GcOptions) -> Self {
        self.gc = gc;
        self
    }

    /// Sets how instances are addressed and health-checked
    /// ([`NodeArgs::checks`]).
    pub fn with_checks(mut self, checks: NodeChecks) -> Self {
        self.checks = checks;
        self
    }

    /// Runs the node until `ctx.shutdown`.
    pub async fn run(mut self, ctx: ComponentContext) -> Result<(), NodeError> {
        let dir = self.opts.state_dir(&ctx.config.data_dir);
        let ready = ctx.ready.clone();
        // The store's client: it presents the node's own credentials, which
        // may not be the process's (`berth up` runs the control plane
        // beside the node).
        let client = self.store.client().clone();
        // The NATS servers as configured and as the cluster advertises
        // them: no instance may speak to them.
        let servers: Vec<String> = ctx
            .config
            .nats_servers
            .iter()
            .map(|s| endpoint(s.host(), s.port()))
            .chain(client.server_info().connect_urls)
            .collect();
        let found = control_plane(servers).await;
        tracing::info!(endpoints = ?found, "control plane closed to instances");
        self.checks.control_plane.extend(found);
        self.serve(client, dir, ctx.shutdown, move |r| ready.set(r))
            .await
    }

    /// Runs the node with its state in `dir` until `shutdown`; `ready` is
    /// told when work intake starts and stops.
    pub async fn serve(
        self,
        client: async_nats::Client,
        dir: PathBuf,
        shutdown: CancellationToken,
        ready: impl Fn(bool),
    ) -> Result<(), NodeError> {
        // Before registering: a node that cannot run containers must not
        // offer capacity the scheduler would place instances on.
        let opts = self.opts.clone();
        let verdict = tokio::task::spawn_blocking(move || preflight::check_machine(&opts))
            .await
            .map_err(|e| NodeError::Preflight(format!("checking this machine failed: {e}")))?;
        for warning in verdict.into_result()? {
            tracing::warn!(warning = %warning, "node preflight");
        }
        let subjects = self.store.subjects().clone();
        let id = load_or_adopt_id(&dir, self.bound_id.as_ref())?;
        let key = Arc::new(load_or_create_key(&dir)?);
        if !self.register(&id, &key, &shutdown).await? {
            return Ok(());
        }

        let (userns, dir) = userns::decide(self.opts.user_namespace, &dir, &id)?;
        let mut content = ContentStore::open(dir.join("store"), VerifyPolicy::Size)?;
        if let Some(ns) = userns {
            berth_puller::searchable_by(&dir, ns.host).map_err(io(&dir))?;
            content = content.with_id_shift(berth_puller::IdShift {
                host: ns.host,
                size: ns.size,
            })?;
        }
        let registry = RegistryClient::new(self.opts.client.clone())
            .map_err(|e| NodeError::Client(e.to_string()))?;
        let puller = Puller::new(
            registry,
            content,
            PullConfig {
                progress_interval: self.opts.progress_interval,
                ..PullConfig::default()
            },
        );
        let agent_dir = dir.join("agent");
        let mut agent_cfg = AgentConfig::new(id.clone(), &agent_dir);
        agent_cfg.heartbeat_interval = self.opts.heartbeat;
        agent_cfg.usage_interval = self.opts.usage_interval;
        agent_cfg.restart = self.opts.restart;
        agent_cfg.log_rate = self.opts.log_rate;
        agent_cfg.disk_reserve = self.opts.min_free_disk;
        agent_cfg.instance_disk_limit = self.opts.instance_disk_limit;
        agent_cfg.user_namespace = userns;
        agent_cfg.network = Some(NetworkConfig {
            subnet: self.checks.subnet,
            cni_path: self.opts.cni_path.clone(),
            state_dir: agent_dir.join("net"),
            closed: self.checks.control_plane.clone(),
            services: self.checks.services,
            user_namespace: userns,
        });
        let runc = Runc::new(&self.opts.runc, agent_dir.join("runc"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The forwarder starts before the agent so adoption reports are kept.
        let placements = dir.join("placements");
        let reporter =
            Reporter::new(self.store.clone(), id.clone(), placements.clone()).map_err(io(&dir))?;
        let health = Health::new(self.checks.health, reporter.clone(), placements);
        // The health checker sees every agent event (is the process up?)
        // before it is recorded; the relay ends when the agent is gone.
        let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
        let observer = health.clone();
        let speaker = reporter.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                observer.observe(&e);
                speaker.say_exit(&e).await;
                if relay_tx.send(e).is_err() {
                    return;
                }
            }
        });
        let forward_stop = CancellationToken::new();
        let recorded = health.clone();
        let mut forwarder = tokio::spawn(reporter.clone().forward(
            relay_rx,
            forward_stop.clone(),
            move |e| recorded.recorded(e),
        ));
        let finished = tx.clone();
        let agent = Agent::start(
            agent_cfg,
            Arc::new(runc),
            client.clone(),
            subjects.clone(),
            tx,
        )
        .await?;
        tracing::info!(node.id = %id, node.name = %self.opts.name, dir = %dir.display(), "node running");
        // Adopted instances are probed again where their checks left off;
        // those whose stop had begun when the node went down are stopped.
        let adopted = agent.instances();
        for instance in &adopted {
            if reporter.is_done(instance) {
                if let Err(e) = agent.begin_stop(instance) {
                    tracing::warn!(instance.id = %instance, error = %e, "stop not resumed");
                }
            } else if let Some(p) = reporter.placement(instance) {
                health.watch(&agent, instance, &p);
            }
        }
        // A stop that ended while the node went down (its container gone,
        // its placement still here) had its fact not recorded yet: without
        // it the log would keep the instance for good. Recorded now, with
        // the same key as ever.
        for instance in reporter.placed() {
            if !reporter.is_done(&instance) || adopted.contains(&instance) {
                continue;
            }
            if let Some(p) = reporter.placement(&instance) {
                tracing::info!(instance.id = %instance, "recording a stop that ended while the node was down");
                let _ = finished.send(berth_agent::AgentEvent::Stopped {
                    service: p.service,
                    instance,
                    outcome: berth_agent::StopOutcome {
                        escalated_to_kill: false,
                        status: None,
                        elapsed: std::time::Duration::ZERO,
                    },
                });
            }
        }
        drop(finished);

        let gc = Arc::new(gc::Gc::default());
        // Ends the node's housekeeping (image GC, marker pruning) once
        // its work has stopped.
        let housekeeping_stop = CancellationToken::new();
        // Markers of instances stopped long ago, now and every few hours.
        let pruner = tokio::spawn(prune_done(
            reporter.clone(),
            agent.clone(),
            self.opts.done_kept,
            housekeeping_stop.clone(),
        ));
        let collector = tokio::spawn(gc.clone().run(
            self.gc,
            puller.store().clone(),
            reporter.clone(),
            housekeeping_stop.clone(),
        ));
        // Disks of deleted services, now and every few seconds.
        let disk_sweeper = tokio::spawn(disks::sweep(
            disks::Sweep {
                store: self.store.clone(),
                agent: agent.clone(),
                reporter: reporter.clone(),
                disks: berth_agent::persistent::dir(&agent_dir),
                snapshot_every: self.opts.disk_snapshot_every,
                reserve: self.opts.min_free_disk,
            },
            housekeeping_stop.clone(),
        ));
        // Where the other nodes and their private services are (a node
        // no other reaches is alone and follows nothing).
        let directory = self.checks.reach().map(|_| {
            tokio::spawn(directory::follow(
                self.store.clone(),
                id.clone(),
                agent.clone(),
                housekeeping_stop.clone(),
            ))
        });
        // Commands the control plane runs in this node's instances.
        let terminals = tokio::spawn(shell::serve(
            client.clone(),
            subjects.clone(),
            id.clone(),
            agent.clone(),
            reporter.clone(),
            housekeeping_stop.clone(),
        ));
        let commands = tokio::spawn(exec::serve(
            client,
            subjects.exec(&id),
            agent.clone(),
            reporter.clone(),
            housekeeping_stop.clone(),
        ));
        let handler = Arc::new(NodeHandler {
            agent: agent.clone(),
            puller,
            reporter,
            key,
            health: health.clone(),
            checks: self.checks.clone(),
            ports: std::sync::Mutex::new(()),
            done_kept: self.opts.done_kept,
            services_url: self.opts.services_url.clone(),
            gc,
            unpack: berth_puller::UnpackOptions {
                limits: berth_puller::UnpackLimits {
                    min_free_disk: self.opts.min_free_disk,
                    ..berth_puller::UnpackLimits::default()
                },
                ..berth_puller::UnpackOptions::default()
            },
        });
        let q = Subjects::node_queue(&id);
        let cfg = WorkerConfig {
            ack_wait: self.opts.ack_wait,
            max_deliver: self.opts.max_deliver,
            concurrency: self.opts.concurrency,
            // Consumer names cannot contain dots.
            consumer: Subjects::node_consumer(&id),
            // The scheduler parks what this queue exhausts: that road reads
            // the work stream by sequence, which a node may not.
            park_by_advisory: false,
            ..WorkerConfig::new(&q)
        };
        let worked = match self.store.worker_at_start(cfg, &shutdown).await {
            Ok(Some(worker)) => {
                ready(true);
                let worked = worker.run(handler, shutdown).await;
                ready(false);
                worked
            }
            // Stopped before the consumer existed, or failed to make it.
            stopped_or_failed => stopped_or_failed.map(|_| ()),
        };
        housekeeping_stop.cancel();
        if let Some(d) = directory {
            let _ = d.await;
        }
        let _ = collector.await;
        let _ = disk_sweeper.await;
        let _ = pruner.await;
        let _ = commands.await;
        let _ = terminals.await;
        health.shutdown();
        // Containers keep running; the next node process adopts them.
        agent.detach().await;
        // The channel closes with the last agent handle: facts reported
        // until then still reach the log, within a bound.
        drop(agent);
        if tokio::time::timeout(FORWARD_DRAIN, &mut forwarder)
            .await
            .is_err()
        {
            forward_stop.cancel();
            let _ = forwarder.await;
        }
        if let Err(e) = &worked {
            tracing::error!(node.id = %id, error = %e, "work intake failed");
        }
        worked?;
        tracing::info!(node.id = %id, "node stopped");
        Ok(())
    }

    /// Records the node's capacity and key, waiting while the log cannot
    /// answer; `false` when `shutdown` comes first.
    async fn register(
        &self,
        id: &NodeId,
        keys: &NodeKeyPair,
        shutdown: &CancellationToken,
    ) -> Result<bool, NodeError> {
        let cap = Capacity {
            name: self.opts.name.clone(),
            cpu_millis: self.opts.cpu_millis,
            memory_mib: self.opts.memory_mib,
        };
        let public_key = keys.public().to_base64();
        let reach = self.checks.reach();
        let key = format!(
            "{id}:registered:{}:{}:{}:{}:{}",
            cap.name,
            cap.cpu_millis,
            cap.memory_mib,
            keys.public().kid(),
            reach
                .as_ref()
                .map(|r| format!("{}:{}", r.addr, r.ports_text()))
                .unwrap_or_default()
        );
        let aggregate = AggregateId::Node(id.clone());
        let stamp = Stamp::new(Actor::system("node"));
        let registered = until_available(shutdown, "node not registered", || {
            self.store.execute::<rules::Node>(
                &aggregate,
                &key,
                &stamp,
                Command::Register {
                    capacity: cap.clone(),
                    public_key: public_key.clone(),
                    reach: reach.clone(),
                },
            )
        });
        let done = registered
            .await
            .map_err(|e| NodeError::Register(e.to_string()))?;
        Ok(done.is_some())
    }
}

impl Component for Node {
    fn name(&self) -> &'static str {
        "node"
    }

    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move { (*self).run(ctx).await.map_err(BoxError::from) })
    }
}

/// How often stopped instances' old `.done` markers are looked for.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Removes `.done` markers older than `kept` (none of the running
/// instances'), at start and every [`PRUNE_EVERY`] until `stop`.
async fn prune_done(
    reporter: Reporter,
    agent: Agent,
    kept: std::time::Duration,
    stop: CancellationToken,
) {
    loop {
        let running = agent.instances().into_iter().collect();
        let pruner = reporter.clone();
        let removed = tokio::task::spawn_blocking(move || pruner.prune_done(kept, &running))
            .await
            .unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "removed the markers of instances stopped long ago");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// `host:port`, an IPv6 host in brackets.
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The IPv4 addresses `endpoints` (`host:port`, or a URL such as
/// `nats://host:port`) resolve to now, each once; loopback and unspecified
/// ones left out (an instance reaches none of the node's own listeners),
/// and names that do not resolve within 5 s (logged).
async fn control_plane(endpoints: impl IntoIterator<Item = String>) -> Vec<std::net::SocketAddrV4> {
    let mut found = Vec::new();
    for e in endpoints {
        let bare = e.rsplit_once("://").map_or(e.as_str(), |(_, rest)| rest);
        let bare = bare.rsplit_once('@').map_or(bare, |(_, host)| host);
        // Bounded: a resolver that does not answer must not hold up the
        // node's start.
        let lookup = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host(bare),
        );
        match lookup
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
        {
            Ok(addrs) => {
                for a in addrs {
                    if let std::net::SocketAddr::V4(v4) = a {
                        let ip = v4.ip();
                        if !ip.is_loopback() && !ip.is_unspecified() && !found.contains(&v4) {
                            found.push(v4);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(endpoint = bare, error = %e, "a control plane endpoint did not resolve; instances are not kept from it")
            }
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[tokio::test]
    async fn the_control_plane_is_the_nats_servers_outside_this_machine() {
        let given = [
            "nats://user:pass@10.1.2.3:4222",
            "10.1.2.3:4222",
            "10.9.9.9:6222",
            "nats://127.0.0.1:4222",
            "0.0.0.0:4222",
            "[::1]:4222",
            "localhost:4222",
        ];
        let found = control_plane(given.iter().map(|s| s.to_string())).await;
        let want: Vec<std::net::SocketAddrV4> = ["10.1.2.3:4222", "10.9.9.9:6222"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(found, want);
        assert_eq!(endpoint("::1", 4222), "[::1]:4222");
        assert_eq!(endpoint("nats.internal", 4222), "nats.internal:4222");
    }

    #[test]
    fn node_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_id(dir.path()).unwrap();
        let b = load_or_create_id(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join("node-id"), "garbage").unwrap();
        assert!(matches!(
            load_or_create_id(dir.path()),
            Err(NodeError::BadId { .. })
        ));
    }

    #[test]
    fn node_key_is_created_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn every_bad_setting_is_reported_together() {
        let cli = Cli::parse_from([
            "x",
            "--node-name",
            " ",
            "--node-cpu-millis",
            "0",
            "--node-concurrency",
            "0",
            "--node-insecure-registries",
            "a/b",
            "--node-cni-path",
            "lib/cni",
        ]);
        let errors = cli.node.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        let ok = Cli::parse_from(["x", "--node-name", "n1"])
            .node
            .validate()
            .unwrap();
        assert_eq!(ok.name, "n1");
        assert_eq!(ok.cni_path, PathBuf::from("/usr/lib/cni"));
        assert!(ok.cpu_millis >= 1000 && ok.memory_mib > 0);
    }

    #[test]
    fn instance_address_and_check_settings_are_validated() {
        let ok = Cli::parse_from(["x"]).node.checks().unwrap();
        assert_eq!(ok, NodeChecks::default());
        let gc = Cli::parse_from(["x", "--node-gc-interval-secs", "0"])
            .node
            .gc();
        assert_eq!(gc.interval, None, "0 turns collection off");
        let custom = Cli::parse_from([
            "x",
            "--node-advertise-addr",
            "10.0.0.7",
            "--node-ports",
            "31000-31009",
            "--node-unhealthy-after-ms",
            "1500",
            "--node-health-restart-after-ms",
            "6000",
        ])
        .node
        .checks()
        .unwrap();
        assert_eq!(custom.advertise.to_string(), "10.0.0.7");
        assert_eq!(custom.ports, 31000..=31009);
        assert_eq!(custom.health.unhealthy_after.as_millis(), 1500);
        let bad = Cli::parse_from([
            "x",
            "--node-advertise-addr",
            "0.0.0.0",
            "--node-ports",
            "9-3",
            "--node-health-interval-ms",
            "0",
            "--node-unhealthy-after-ms",
            "20000",
            "--node-health-restart-after-ms",
            "10000",
        ]);
        assert_eq!(bad.node.checks().unwrap_err().len(), 4);
        // The same problems stop the node's settings from validating.
        assert!(bad.node.validate().unwrap_err().len() >= 4);
    }

    #[test]
    fn work_items_round_trip_as_messagepack() {
        use berth_schemas::commands::NodeWork;
        use berth_schemas::ids::{InstanceId, ServiceId};
        let w = NodeWork::StopInstance {
            service: ServiceId::generate(),
            instance: InstanceId::generate(),
        };
        let bytes = rmp_serde::to_vec_named(&w).unwrap();
        assert_eq!(rmp_serde::from_slice::<NodeWork>(&bytes).unwrap(), w);
    }
}

//! Setup for the scheduler tests: a real nats-server with the event store
//! under a unique prefix, a registry holding two versions of a busybox
//! image, the resolver component, node components (each with its own data
//! dir, node id and runc root) and the scheduler, plus helpers to create and
//! deploy services and to wait for facts in the log.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::registry::{Registry, RegistryAuth};
use crate::{NatsServer, NatsVersion};
use berth_domain::service::{self, Command, CreateService, DeployRequest, ServiceState};
use berth_eventlog::{EventStore, StoreConfig};
use berth_node::{HealthOptions, Node, NodeChecks, NodeOptions};
use berth_oci::RetryPolicy;
use berth_resolver::{Resolver, ResolverOptions};
use berth_runtime::secrets::SecretKey;
use berth_scheduler::{Scheduler, SchedulerOptions};
use berth_schemas::ids::{DeployId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{DeployTrigger, Sealed, ServiceType};
use berth_schemas::{AggregateId, Envelope, Event, Subjects};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{busybox_image, mounts_under, runc_list};

pub const REPO: &str = "app/web";

/// Scheduler options for tests: quick lost-node detection and sweeps.
pub fn scheduler_options() -> SchedulerOptions {
    SchedulerOptions {
        heartbeat_timeout: Duration::from_secs(3),
        sweep_interval: Duration::from_secs(2),
        readiness_window: Duration::from_secs(60),
        ack_wait: Duration::from_secs(5),
        ..SchedulerOptions::default()
    }
}

pub fn node_options(name: &str, dir: &Path) -> NodeOptions {
    NodeOptions {
        dir: Some(dir.to_owned()),
        ..crate::node::test_options(name, 8000, 8192)
    }
}

/// Quick probes: a worker is healthy after 300 ms up, a web instance once
/// it answers its health check path.
pub fn health_options() -> HealthOptions {
    HealthOptions {
        starting_interval: Duration::from_millis(100),
        healthy_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        unhealthy_after: Duration::from_secs(3),
        restart_after: Duration::from_secs(30),
        worker_grace: Duration::from_millis(300),
        // Off: instances listening elsewhere are there to fail.
        detect_after: Duration::from_secs(600),
    }
}

/// What a service's containers run: a web server on `$PORT` serving the
/// image's `/app` (health check path `/hello.txt`), else a sleeper.
pub fn command_for(service_type: ServiceType) -> &'static str {
    match service_type {
        ServiceType::WebService => "sh -c 'exec busybox httpd -f -p $PORT -h /app'",
        _ => "sleep 600",
    }
}

fn resolver_options() -> ResolverOptions {
    let mut o = ResolverOptions::default();
    for c in [&mut o.deploy_client, &mut o.check_client] {
        c.retry = RetryPolicy::fast();
    }
    o.ack_wait = Duration::from_secs(5);
    o.retry_delay = Duration::from_millis(100);
    o
}

/// A running node component.
#[derive(Debug)]
pub struct RunningNode {
    pub id: NodeId,
    pub dir: PathBuf,
    pub stop: CancellationToken,
    pub task: Option<JoinHandle<Result<(), berth_node::NodeError>>>,
}

impl RunningNode {
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("agent").join("runc")
    }

    /// Container ids runc shows for this node.
    pub fn containers(&self) -> Vec<String> {
        if self.runc_root().exists() {
            runc_list(&self.runc_root())
        } else {
            Vec::new()
        }
    }

    /// [`Self::containers`] without panicking (for drops): a failed list
    /// reads as empty.
    fn listed(&self) -> Vec<String> {
        crate::runc::try_runc_list(&self.runc_root()).unwrap_or_default()
    }

    /// Stops the component (containers keep running: they are detached).
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("node stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Kills every container of this node, as a machine dying would.
    pub fn kill_containers(&self) {
        self.kill_listed();
    }

    /// Kills what `runc list` shows; whether it showed anything.
    fn kill_listed(&self) -> bool {
        let listed = self.listed();
        for id in &listed {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["delete", "--force", id])
                .status();
        }
        !listed.is_empty()
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop.cancel();
        // Until the node has detached its supervisors, a container killed
        // here may be started again (a crash restart), and a launch may be
        // under way: wait for the node where its runtime can run it
        // meanwhile, then kill, then look again for what a `runc` still
        // running created afterwards.
        if let Some(task) = self.task.take() {
            finish_in_drop(task, Duration::from_secs(30));
        }
        for _ in 0..3 {
            if !self.kill_listed() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for m in mounts_under(&self.dir) {
            let _ = std::process::Command::new("umount")
                .args(["-l", &m])
                .status();
        }
    }
}

/// Waits up to `limit` for `task` from a synchronous drop, where that can
/// work: on a multi-thread runtime (the task runs on another worker). On a
/// current-thread runtime the task cannot run while the drop blocks; it
/// ends with the runtime.
fn finish_in_drop<T>(task: JoinHandle<T>, limit: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return;
    }
    tokio::task::block_in_place(|| {
        let _ = handle.block_on(tokio::time::timeout(limit, task));
    });
}

/// NATS, store, registry with two image versions, resolver.
#[derive(Debug)]
pub struct World {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub store: EventStore,
    pub registry: Registry,
    /// Digests of `:v1` and `:v2`.
    pub v1: String,
    pub v2: String,
    pub key: SecretKey,
    /// Each node dir's subnet (dropped before `dir`: each removes what of
    /// its network is left, reading the node's network state in `dir`).
    subnets: std::sync::Mutex<std::collections::HashMap<PathBuf, crate::net::SubnetLease>>,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl World {
    pub async fn start() -> World {
        Self::start_on(NatsVersion::Modern).await
    }

    pub async fn start_on(version: NatsVersion) -> World {
        crate::agent::require_root_and_runc();
        crate::init_tracing();
        let nats = NatsServer::start(version).unwrap();
        let client = nats.connect().await.unwrap();
        let store = EventStore::open(
            client.clone(),
            crate::unique_subjects(),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        let cfg = |v: &str| json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin", format!("V={v}")] });
        let v1 = busybox_image(cfg("1"));
        let v2 = busybox_image(cfg("2"));
        registry.push_image(REPO, "v1", &v1).await.unwrap();
        registry.push_image(REPO, "v2", &v2).await.unwrap();
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
        let w = World {
            nats,
            client,
            store,
            registry,
            v1: v1.digest,
            v2: v2.digest,
            key,
            subnets: Default::default(),
            dir: tempfile::tempdir().unwrap(),
            shutdown: CancellationToken::new(),
        };
        let resolver = Resolver::new(w.store.clone(), w.key.clone(), resolver_options()).unwrap();
        let sd = w.shutdown.clone();
        tokio::spawn(async move { resolver.run(sd, None).await.unwrap() });
        w
    }

    pub fn subjects(&self) -> &Subjects {
        self.store.subjects()
    }

    pub async fn start_node(&self, name: &str) -> RunningNode {
        let dir = self.dir.path().join(name);
        self.start_node_with(node_options(name, &dir)).await
    }

    pub async fn start_node_with(&self, opts: NodeOptions) -> RunningNode {
        self.start_node_on(opts, crate::net::lease_subnet).await
    }

    /// A node on a /21 (2,045 instances; [`crate::net::lease_wide_subnet`])
    /// instead of a /24.
    pub async fn start_wide_node_with(&self, opts: NodeOptions) -> RunningNode {
        self.start_node_on(opts, crate::net::lease_wide_subnet)
            .await
    }

    async fn start_node_on(
        &self,
        opts: NodeOptions,
        lease: fn() -> crate::net::SubnetLease,
    ) -> RunningNode {
        let dir = opts.dir.clone().unwrap();
        let id = berth_node::load_or_create_id(&dir).unwrap();
        // A node restarted on the same dir keeps its subnet.
        let subnet = {
            let mut leases = self.subnets.lock().unwrap();
            let lease = leases.entry(dir.clone()).or_insert_with(|| {
                let mut l = lease();
                l.net_dir = Some(dir.join("agent").join("net"));
                l
            });
            lease.parsed()
        };
        let checks = NodeChecks {
            // Nodes share this machine's network: each hands out its own
            // ports.
            ports: crate::node_ports(),
            subnet,
            health: health_options(),
            ..NodeChecks::default()
        };
        let node = Node::new(self.store.clone(), opts).with_checks(checks);
        let stop = self.shutdown.child_token();
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let task =
            tokio::spawn(
                node.serve(self.client.clone(), dir.clone(), stop.clone(), move |r| {
                    let _ = tx.send(r);
                }),
            );
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r))
            .await
            .expect("node ready within 20 s")
            .unwrap();
        RunningNode {
            id,
            dir,
            stop,
            task: Some(task),
        }
    }

    /// A scheduler in this process; cancel the token to stop it.
    pub async fn start_scheduler(&self) -> (CancellationToken, JoinHandle<()>) {
        self.start_scheduler_with(scheduler_options()).await
    }

    pub async fn start_scheduler_with(
        &self,
        opts: SchedulerOptions,
    ) -> (CancellationToken, JoinHandle<()>) {
        let stop = self.shutdown.child_token();
        let ready = berth_runtime::ReadyFlag::default();
        let s = Scheduler::new(self.store.clone(), self.key.clone(), opts);
        let (sd, rd) = (stop.clone(), ready.clone());
        let task = tokio::spawn(async move { s.run(sd, Some(rd)).await.unwrap() });
        let t0 = Instant::now();
        while !ready.get() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "scheduler not ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (stop, task)
    }

    pub fn image(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.registry.host)
    }

    /// Creates a service of `:v1`; `edit` adjusts the creation first.
    pub async fn create(
        &self,
        service_type: ServiceType,
        edit: impl FnOnce(&mut CreateService),
    ) -> (ServiceId, DeployId) {
        self.create_as(ServiceId::generate(), service_type, edit)
            .await
    }

    /// [`World::create`] of the service `service` (its secrets sealed for
    /// its id beforehand).
    pub async fn create_as(
        &self,
        service: ServiceId,
        service_type: ServiceType,
        edit: impl FnOnce(&mut CreateService),
    ) -> (ServiceId, DeployId) {
        let deploy = DeployId::generate();
        let mut c = CreateService::new(
            OwnerId::User(UserId::generate()),
            &format!("svc-{}", &service.as_str()[4..12]),
            service_type,
            &self.image("v1"),
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            deploy.clone(),
        );
        c.docker_command = Some(command_for(service_type).into());
        if service_type == ServiceType::WebService {
            c.health_check_path = Some("/hello.txt".into());
        }
        c.shutdown_delay_secs = Some(1);
        edit(&mut c);
        self.command(&service, Command::Create(Box::new(c))).await;
        (service, deploy)
    }

    /// Requests a deploy of `:tag`.
    pub async fn deploy(&self, service: &ServiceId, tag: &str) -> DeployId {
        let d = DeployId::generate();
        self.command(
            service,
            Command::RequestDeploy(DeployRequest::with_image(
                d.clone(),
                DeployTrigger::Api,
                &self.image(tag),
            )),
        )
        .await;
        d
    }

    /// Runs a service command as the API would.
    pub async fn command(&self, service: &ServiceId, command: Command) {
        crate::eventlog::service_command(&self.store, service, command)
            .await
            .unwrap();
    }

    pub async fn events(&self, service: &ServiceId) -> Vec<Envelope> {
        self.store
            .load(&AggregateId::Service(service.clone()))
            .await
            .unwrap()
            .events
    }

    pub async fn state(&self, service: &ServiceId) -> ServiceState {
        self.events(service)
            .await
            .iter()
            .fold(ServiceState::default(), service::fold)
    }

    /// The service's events once `pred` holds (polls the log).
    pub async fn wait_events(
        &self,
        service: &ServiceId,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.events(service).await;
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; events: {:?}",
                types(&events)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `within`) until `deploy` failed; the service's events
    /// then, and the failure.
    pub async fn wait_failed(
        &self,
        service: &ServiceId,
        deploy: &DeployId,
        within: Duration,
    ) -> (Vec<Envelope>, berth_schemas::events::DeployFailed) {
        let failed_of = |ev: &[Envelope]| {
            ev.iter().find_map(|e| match &e.event {
                Event::DeployFailed(f) if &f.deploy == deploy => Some(f.clone()),
                _ => None,
            })
        };
        let ev = self
            .wait_events(service, within, "deploy failed", |ev| {
                failed_of(ev).is_some()
            })
            .await;
        let failed = failed_of(&ev).expect("the failure the wait saw");
        (ev, failed)
    }

    /// Waits until `deploy` is live.
    pub async fn wait_live(&self, service: &ServiceId, deploy: &DeployId) -> Vec<Envelope> {
        self.wait_events(service, Duration::from_secs(90), "deploy live", |ev| {
            ev.iter()
                .any(|e| matches!(&e.event, Event::DeployLive(l) if &l.deploy == deploy))
        })
        .await
    }
}

pub use crate::node::{count, types};

/// Position of the first event of `type_name`.
pub fn pos(events: &[Envelope], type_name: &str) -> Option<usize> {
    events.iter().position(|e| e.event.type_name() == type_name)
}

/// Asserts that the first event of each of `order` is there, in that order.
pub fn assert_in_order(events: &[Envelope], order: &[&str]) {
    let t = types(events);
    let at: Vec<usize> = order
        .iter()
        .map(|n| pos(events, n).unwrap_or_else(|| panic!("no {n} in {t:?}")))
        .collect();
    assert!(at.windows(2).all(|p| p[0] < p[1]), "out of order: {t:?}");
}

/// Waits until the service has `n` healthy instances, matching the
/// containers on the nodes; returns their ids.
pub async fn settled(w: &World, svc: &ServiceId, nodes: &[&RunningNode], n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let s = w.state(svc).await;
        let ids: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
        let healthy = s.instances.iter().all(|i| i.is_healthy());
        if ids.len() == n && healthy && containers(nodes) == ids {
            return ids;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not settled at {n}: {:?} vs containers {:?}",
            s.instances,
            containers(nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every container of every node.
pub fn containers(nodes: &[&RunningNode]) -> Vec<String> {
    let mut all: Vec<String> = nodes.iter().flat_map(|n| n.containers()).collect();
    all.sort();
    all
}

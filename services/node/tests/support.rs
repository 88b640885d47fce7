//! Setup for the health check tests on top of the shared node world: a
//! service of any type (with a health check path), run specs for it, a
//! node component with test-speed health checks, and small probes of an
//! instance's address from the outside.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use berth_domain::service::{Command, CreateService};
use berth_node::{GcOptions, HealthOptions, Node, NodeChecks, NodeOptions};
use berth_schemas::commands::{NodeRunSpec, NodeWork};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{ResolvedImage, Sealed, ServiceType};
use berth_schemas::{Envelope, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use berth_tests::node::{World, REPO};

/// Test-speed checks: probes every 200 ms, unhealthy after 1.5 s of
/// failing, restarted after 6 s, workers healthy after 1 s up, no port
/// detection.
pub fn fast_checks() -> NodeChecks {
    NodeChecks {
        health: HealthOptions {
            starting_interval: Duration::from_millis(200),
            healthy_interval: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            unhealthy_after: Duration::from_millis(1500),
            restart_after: Duration::from_secs(6),
            worker_grace: Duration::from_secs(1),
            // Off unless a test turns it on: most tests' instances that
            // listen elsewhere are there to fail.
            detect_after: Duration::from_secs(600),
        },
        ports: berth_tests::node_ports(),
        ..NodeChecks::default()
    }
}

pub fn options() -> NodeOptions {
    berth_tests::node::test_options("health-node", 4000, 4096)
}

/// A node component running in-process.
pub struct Running {
    pub id: NodeId,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), berth_node::NodeError>>,
}

impl Running {
    /// Stops the component; its containers keep running (detached).
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("node stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

pub async fn start_node(w: &World, checks: NodeChecks) -> Running {
    start_node_with(w, checks, GcOptions::default()).await
}

pub async fn start_node_with(w: &World, checks: NodeChecks, gc: GcOptions) -> Running {
    start_node_opts(w, checks, gc, options()).await
}

/// [`start_node_with`] with node options of the test's own.
pub async fn start_node_opts(
    w: &World,
    checks: NodeChecks,
    gc: GcOptions,
    opts: NodeOptions,
) -> Running {
    let dir: PathBuf = w.node_dir();
    let id = berth_node::load_or_create_id(&dir).unwrap();
    let checks = NodeChecks {
        subnet: w.subnet.parsed(),
        ..checks
    };
    let node = Node::new(w.store.clone(), opts)
        .with_checks(checks)
        .with_gc(gc);
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(node.serve(w.client.clone(), dir, stop.clone(), move |r| {
        let _ = ready_tx.send(r);
    }));
    let ready = tokio::time::timeout(Duration::from_secs(20), ready_rx.wait_for(|r| *r))
        .await
        .expect("node ready within 20 s")
        .map(|_| ());
    if ready.is_err() {
        // It ended before taking work: say why.
        panic!("the node stopped before it was ready: {:?}", task.await);
    }
    Running { id, stop, task }
}

/// A service of type `ty` (web: with `health_path`) whose first deploy
/// resolved to the pushed image's digest.
pub async fn service(
    w: &World,
    ty: ServiceType,
    health_path: Option<&str>,
) -> (ServiceId, DeployId) {
    service_at(w, ty, health_path, &w.digest.clone()).await
}

/// [`service`] resolved to `digest` (another image in the registry).
pub async fn service_at(
    w: &World,
    ty: ServiceType,
    health_path: Option<&str>,
    digest: &str,
) -> (ServiceId, DeployId) {
    let owner = OwnerId::User(UserId::generate());
    let name = format!(
        "svc-{}",
        &ServiceId::generate().as_str()[4..12].to_lowercase()
    );
    service_of(w, &owner, &name, ty, health_path, digest).await
}

/// A service of `owner` named `name` whose first deploy resolved to
/// `digest`.
pub async fn service_of(
    w: &World,
    owner: &OwnerId,
    name: &str,
    ty: ServiceType,
    health_path: Option<&str>,
    digest: &str,
) -> (ServiceId, DeployId) {
    service_with(w, owner, name, ty, digest, |c| {
        c.health_check_path = health_path.map(str::to_owned)
    })
    .await
}

/// A service of `owner` named `name`, created as `edit` sets it, whose
/// first deploy resolved to `digest`.
pub async fn service_with(
    w: &World,
    owner: &OwnerId,
    name: &str,
    ty: ServiceType,
    digest: &str,
    edit: impl FnOnce(&mut CreateService),
) -> (ServiceId, DeployId) {
    let service = ServiceId::generate();
    let deploy = DeployId::generate();
    let mut create = CreateService::new(
        owner.clone(),
        name,
        ty,
        &format!("{}/{REPO}:v1", w.registry.host),
        Sealed {
            kid: "k".into(),
            ciphertext: "x".into(),
        },
        deploy.clone(),
    );
    edit(&mut create);
    w.command(&service, Command::Create(Box::new(create))).await;
    w.command(
        &service,
        Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: digest.to_owned(),
                index_digest: None,
                compressed_size: 1,
            },
        },
    )
    .await;
    (service, deploy)
}

/// A run spec for a new instance of `service` running `command`; `port`
/// as the scheduler sends it (it is replaced by the node's own).
pub fn spec(
    w: &World,
    service: &ServiceId,
    deploy: &DeployId,
    command: &str,
    port: Option<u16>,
) -> NodeRunSpec {
    NodeRunSpec {
        service: service.clone(),
        deploy: deploy.clone(),
        instance: InstanceId::generate(),
        image: format!("{}/{REPO}", w.registry.host),
        digest: w.digest.clone(),
        credential: None,
        login: None,
        env: Default::default(),
        files: Default::default(),
        command: Some(command.to_owned()),
        port,
        plan: None,
        shutdown_delay_secs: 1,
        disk_restore: None,
    }
}

/// Enqueues a `RunInstance` of `spec` on `node`.
pub async fn run(w: &World, node: &NodeId, spec: &NodeRunSpec) {
    let work = NodeWork::RunInstance(spec.clone());
    w.enqueue(node, &work, &format!("run:{}", spec.instance))
        .await;
}

/// Enqueues a `StopInstance` of `service`'s `instance` on `node`.
pub async fn stop(w: &World, node: &NodeId, service: &ServiceId, instance: &InstanceId) {
    let work = NodeWork::StopInstance {
        service: service.clone(),
        instance: instance.clone(),
    };
    w.enqueue(node, &work, &format!("stop:{instance}")).await;
}

/// The events about `instance`, in order.
pub fn of<'a>(events: &'a [Envelope], instance: &InstanceId) -> Vec<&'a Envelope> {
    events
        .iter()
        .filter(|e| match &e.event {
            Event::InstanceStarted(x) => &x.instance == instance,
            Event::InstanceHealthy(x) => &x.instance == instance,
            Event::InstanceUnhealthy(x) => &x.instance == instance,
            Event::InstancePortDetected(x) => &x.instance == instance,
            Event::InstanceExited(x) => &x.instance == instance,
            Event::ServerRestarted(x) => &x.instance == instance,
            Event::InstanceStopped(x) => &x.instance == instance,
            _ => false,
        })
        .collect()
}

/// Type names of the events about `instance`.
pub fn kinds(events: &[Envelope], instance: &InstanceId) -> Vec<&'static str> {
    of(events, instance)
        .iter()
        .map(|e| e.event.type_name())
        .collect()
}

/// How many events of `type_name` about `instance`.
pub fn count_of(events: &[Envelope], instance: &InstanceId, type_name: &str) -> usize {
    kinds(events, instance)
        .into_iter()
        .filter(|k| *k == type_name)
        .count()
}

/// The `addr` of `instance`'s `instance_started`.
pub fn addr_of(events: &[Envelope], instance: &InstanceId) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        Event::InstanceStarted(s) if &s.instance == instance => s.addr.clone(),
        _ => None,
    })
}

/// `GET path` on `addr` from the outside: (status, body).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not HTTP: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Kills the whole container of `instance` (its init), as in a crash.
pub fn kill_container(w: &World, instance: &InstanceId) {
    let killed = std::process::Command::new("runc")
        .arg("--root")
        .arg(w.runc_root())
        .args(["kill", instance.as_str(), "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits until `instance` of `service`, which crashed once, is healthy
/// again: the log has it exited, restarted, then healthy anew.
pub async fn healthy_again(w: &World, service: &ServiceId, instance: &InstanceId) {
    let events = w
        .wait_events(service, Duration::from_secs(60), |ev| {
            count_of(ev, instance, "instance_healthy") == 2
        })
        .await;
    assert_eq!(
        kinds(&events, instance),
        vec![
            "instance_started",
            "instance_healthy",
            "instance_exited",
            "server_restarted",
            "instance_healthy"
        ]
    );
}

/// The text of `instance`'s lines among `lines`, in the order published.
pub fn lines_of(lines: &[berth_schemas::logs::LogLine], instance: &InstanceId) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.instance.as_ref() == Some(instance))
        .map(|l| l.line.clone())
        .collect()
}

/// `spec` with `env` as the service's variables, sealed to `node` as the
/// scheduler seals them.
pub async fn with_env(w: &World, node: &NodeId, spec: &mut NodeRunSpec, env: &[(&str, &str)]) {
    use berth_runtime::node_key::ForNode;
    use berth_runtime::secrets::{Secret, SecretKey};
    use berth_schemas::model::{seal_context, EnvVars};
    let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
    let mut sealed = EnvVars::new();
    for (name, value) in env {
        let context = seal_context::env_var(&spec.service, name);
        sealed.insert(
            (*name).to_owned(),
            key.seal(&Secret::new(*value), &context).unwrap(),
        );
    }
    let to = w.node_key(node).await;
    let seal = ForNode {
        key: &key,
        node,
        to: &to,
    };
    spec.env = seal
        .seal_env(&spec.service, &spec.instance, &sealed)
        .unwrap();
}

/// `service`'s events once each of `ids` has been recorded healthy once
/// (within 60 s).
pub async fn healthy_once(w: &World, service: &ServiceId, ids: &[&InstanceId]) -> Vec<Envelope> {
    w.wait_events(service, Duration::from_secs(60), |ev| {
        ids.iter().all(|i| count_of(ev, i, "instance_healthy") == 1)
    })
    .await
}

/// Runs `args` inside the running container `id`
/// ([`berth_tests::agent::exec_in`]): (exit code, output).
pub fn exec(w: &World, id: &InstanceId, args: &[&str]) -> (i32, String) {
    let out = berth_tests::agent::exec_in(&w.runc_root(), id.as_str(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The host pid of the running container `id`'s first process.
pub fn container_pid(w: &World, id: &InstanceId) -> u32 {
    berth_tests::agent::container_pid(&w.runc_root(), id.as_str())
}

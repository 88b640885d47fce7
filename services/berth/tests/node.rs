//! The real `berth run node` process (as root, real runc, nats-server and
//! registry): it registers, runs an instance from its work queue, is
//! `kill -9`ed, and the next process adopts the still-running instance
//! (its log lines continue, in order), leaves no orphan container, keeps its
//! identity, and stops the instance on request. Everything it started is
//! removed at the end, also when the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use berth_domain::service::{self, CreateService};
use berth_eventlog::{EventStore, StoreConfig};
use berth_schemas::commands::{NodeRunSpec, NodeWork};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::model::{ResolvedImage, Sealed, ServiceType};
use berth_schemas::{AggregateId, Envelope, Event, Subjects};
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::{NatsServer, NatsVersion};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

use crate::cli_support::{
    berth, busybox_image, events_of, node_id, require_root_and_runc, runc_list, runc_root,
    spawn_server, wait_for, Cleanup,
};

fn spawn_node(data: &Path, nats_url: &str, prefix: &str) -> Child {
    let mut c = berth(data, nats_url, prefix);
    c.args(["run", "node"])
        .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
        .env("BERTH_NODE_NAME", "proc-node")
        .env("BERTH_NODE_CPU_MILLIS", "2000")
        .env("BERTH_NODE_MEMORY_MIB", "1024")
        .env("BERTH_NODE_HEARTBEAT_MS", "200")
        // The test registry is on loopback, which `berth run` refuses by default.
        .env("BERTH_ALLOW_TARGETS", "loopback")
        .env("BERTH_LOG", "info");
    let (child, mut out) = spawn_server(c);
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    child
}

fn count(events: &[Envelope], type_name: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event.type_name() == type_name)
        .count()
}

/// The next `tick-N` numbers on the logs subject until `n` were seen.
async fn ticks(sub: &mut async_nats::Subscriber, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("log lines within 10 s")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let line = v["line"].as_str().unwrap_or_default();
        if let Some(t) = line.strip_prefix("tick-") {
            out.push(t.parse().unwrap());
        }
    }
    out
}

/// A `berth run node` process running one worker instance, and what the
/// tests need to look at it.
struct OneInstance {
    // Fields drop in this order: the node process, then its containers and
    // network, then the servers and the dirs.
    berth: Child,
    _cleanup: Cleanup,
    logs: async_nats::Subscriber,
    service: AggregateId,
    spec: NodeRunSpec,
    node: NodeId,
    runc_root: std::path::PathBuf,
    data: std::path::PathBuf,
    store: EventStore,
    prefix: String,
    subjects: Subjects,
    client: async_nats::Client,
    nats: NatsServer,
    _registry: Registry,
    _dir: tempfile::TempDir,
}

impl OneInstance {
    async fn start() -> Self {
        Self::start_in(0o755).await
    }

    /// With the test's temp dir, above the node's state, at `mode`.
    async fn start_in(mode: u32) -> Self {
        require_root_and_runc();
        let nats = NatsServer::start(NatsVersion::Legacy).unwrap();
        let client = nats.connect().await.unwrap();
        let prefix = berth_tests::unique_prefix();
        let subjects = Subjects::new(&prefix).unwrap();
        let store = EventStore::open(client.clone(), subjects.clone(), StoreConfig::default())
            .await
            .unwrap();
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        let image = busybox_image("proc");
        registry.push_image("app/proc", "v1", &image).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let data = dir.path().join("data");
        let runc_root = runc_root(&data);
        let _cleanup = Cleanup {
            child: None,
            data: data.clone(),
        };

        let berth = spawn_node(&data, &nats.url(), &prefix);
        let node: NodeId = node_id(&data).await;
        wait_for("node registered", Duration::from_secs(30), async || {
            count(
                &events_of(&store, AggregateId::Node(node.clone())).await,
                "node_registered",
            ) == 1
        })
        .await;

        // The service and its resolved first deploy, as ingress and the
        // resolver leave them.
        let (service_id, deploy) = (ServiceId::generate(), DeployId::generate());
        let create = CreateService::new(
            OwnerId::User(UserId::generate()),
            "proc",
            ServiceType::BackgroundWorker,
            &format!("{}/app/proc:v1", registry.host),
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            deploy.clone(),
        );
        let resolved = service::Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: image.digest.clone(),
                index_digest: None,
                compressed_size: 1,
            },
        };
        for c in [service::Command::Create(Box::new(create)), resolved] {
            berth_tests::eventlog::service_command(&store, &service_id, c)
                .await
                .unwrap();
        }
        let spec = NodeRunSpec {
            service: service_id,
            deploy,
            instance: InstanceId::generate(),
            image: format!("{}/app/proc", registry.host),
            digest: image.digest.clone(),
            credential: None,
            login: None,
            env: Default::default(),
            files: Default::default(),
            command: Some(
                "sh -c 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done'".into(),
            ),
            port: None,
            plan: None,
            shutdown_delay_secs: 2,
            disk_restore: None,
        };
        let logs = client
            .subscribe(subjects.logs(&spec.service))
            .await
            .unwrap();
        client.flush().await.unwrap();
        store
            .enqueue(
                &Subjects::node_queue(&node),
                spec.service.as_str(),
                rmp_serde::to_vec_named(&NodeWork::RunInstance(spec.clone()))
                    .unwrap()
                    .into(),
                "run-1",
            )
            .await
            .unwrap();
        let service = AggregateId::Service(spec.service.clone());
        wait_for("instance started", Duration::from_secs(30), async || {
            count(
                &events_of(&store, service.clone()).await,
                "instance_started",
            ) == 1
        })
        .await;
        OneInstance {
            berth,
            _cleanup,
            logs,
            service,
            spec,
            node,
            runc_root,
            data,
            store,
            prefix,
            subjects,
            client,
            nats,
            _registry: registry,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn kill_9_then_restart_adopts_the_instance_with_no_orphans() {
    // Bound in reverse drop order (see the struct).
    let OneInstance {
        _dir,
        _registry,
        nats,
        client,
        subjects,
        prefix,
        store,
        data,
        runc_root,
        node,
        spec,
        service,
        mut logs,
        _cleanup,
        mut berth,
    } = OneInstance::start().await;
    let before = ticks(&mut logs, 5).await;
    assert_eq!(runc_list(&runc_root), vec![spec.instance.to_string()]);

    // kill -9: no shutdown code runs at all.
    kill(Pid::from_raw(berth.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    berth.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runc_list(&runc_root),
        vec![spec.instance.to_string()],
        "the instance outlives the node process"
    );

    // Start again: same identity, the instance adopted, logs continue.
    let mut heartbeats = client.subscribe(subjects.heartbeat()).await.unwrap();
    client.flush().await.unwrap();
    let mut berth = spawn_node(&data, &nats.url(), &prefix);
    let hb = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), heartbeats.next())
            .await
            .expect("heartbeat within 30 s")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["node"] == node.as_str() && !v["instances"].as_array().unwrap().is_empty() {
            break v;
        }
    };
    assert_eq!(hb["instances"][0], spec.instance.as_str(), "{hb}");
    let after = ticks(&mut logs, 10).await;
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive after adoption: {after:?}"
    );
    assert!(
        after[0] > *before.last().unwrap(),
        "{before:?} then {after:?}"
    );
    assert_eq!(
        runc_list(&runc_root),
        vec![spec.instance.to_string()],
        "no orphan containers"
    );
    // Adopted with its network: the same namespace and address.
    let subnet = berth_tests::net::subnet_for(&data);
    let prefix24 = subnet.rsplit_once('.').unwrap().0.to_owned();
    let addr = berth_tests::agent::exec_in(
        &runc_root,
        spec.instance.as_str(),
        &["/bin/busybox", "ip", "-4", "addr", "show", "eth0"],
    );
    let addr = String::from_utf8_lossy(&addr.stdout).into_owned();
    assert!(addr.contains(&format!("inet {prefix24}.")), "{addr}");
    let node_events = events_of(&store, AggregateId::Node(node.clone())).await;
    assert_eq!(
        count(&node_events, "node_registered"),
        1,
        "same identity, nothing new"
    );
    let svc = events_of(&store, service.clone()).await;
    assert_eq!(count(&svc, "instance_started"), 1);
    assert_eq!(count(&svc, "instance_exited"), 0);

    // Stop it through the queue.
    store
        .enqueue(
            &Subjects::node_queue(&node),
            spec.service.as_str(),
            rmp_serde::to_vec_named(&NodeWork::StopInstance {
                service: spec.service.clone(),
                instance: spec.instance.clone(),
            })
            .unwrap()
            .into(),
            "stop-1",
        )
        .await
        .unwrap();
    wait_for("instance stopped", Duration::from_secs(30), async || {
        count(
            &events_of(&store, service.clone()).await,
            "instance_stopped",
        ) == 1
    })
    .await;
    let svc = events_of(&store, service.clone()).await;
    let stopped = svc
        .iter()
        .find(|e| matches!(e.event, Event::InstanceStopped(_)))
        .unwrap();
    assert_eq!(
        stopped.correlation_id.as_ref(),
        Some(&spec.deploy),
        "the deploy is known to the restarted node"
    );
    assert!(runc_list(&runc_root).is_empty());

    // A clean stop.
    kill(Pid::from_raw(berth.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), berth.wait())
        .await
        .expect("berth exits within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        berth_tests::net::leftovers(&subnet, &[spec.instance.to_string()]),
        Vec::<String>::new(),
        "no namespace, veth or rule of the network is left"
    );
}

/// A stop that ended while the node was down (the container gone, the
/// `instance_stopped` not recorded: a crash between the two) is recorded
/// when the node starts again, or the log would keep the instance for good.
#[tokio::test]
async fn a_stop_that_ended_while_the_node_was_down_is_recorded_on_restart() {
    let OneInstance {
        _dir,
        _registry,
        nats,
        store,
        data,
        runc_root,
        prefix,
        spec,
        service,
        _cleanup,
        mut berth,
        ..
    } = OneInstance::start().await;
    kill(Pid::from_raw(berth.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    berth.wait().await.unwrap();
    // What the node leaves when it dies right after a stop ended: the stop
    // marked, the container and the agent's record of it removed, no fact.
    let instance = spec.instance.to_string();
    std::fs::write(data.join(format!("node/placements/{instance}.done")), b"").unwrap();
    let removed = std::process::Command::new("runc")
        .arg("--root")
        .arg(&runc_root)
        .args(["delete", "--force", &instance])
        .status()
        .unwrap();
    assert!(removed.success());
    let record = data.join(format!("node/agent/instances/{instance}"));
    for m in berth_tests::runc::mounts_under(&record) {
        let _ = std::process::Command::new("umount")
            .args(["-l", &m])
            .status();
    }
    std::fs::remove_dir_all(&record).unwrap();
    assert_eq!(
        count(
            &events_of(&store, service.clone()).await,
            "instance_stopped"
        ),
        0
    );

    let _berth = spawn_node(&data, &nats.url(), &prefix);
    wait_for("the stop recorded", Duration::from_secs(30), async || {
        count(
            &events_of(&store, service.clone()).await,
            "instance_stopped",
        ) == 1
    })
    .await;
    assert!(runc_list(&runc_root).is_empty());
}

/// The host uid of the instance's first process.
fn host_uid(runc_root: &Path, instance: &InstanceId) -> u32 {
    let pid = berth_tests::agent::container_pid(runc_root, instance.as_str());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// By default (`BERTH_NODE_USERNS=auto`) a node runs its instances in a
/// user namespace, their root a host user from 1000000000, where the
/// machine lets it: below a directory that bars that user (a checkout
/// under /root), through its state dir's alias in /run/berth/nodes.
#[tokio::test]
async fn by_default_instances_run_in_a_user_namespace_wherever_the_state_dir_is() {
    for (mode, alias) in [(0o711, false), (0o700, true)] {
        let one = OneInstance::start_in(mode).await;
        assert_eq!(
            host_uid(&one.runc_root, &one.spec.instance),
            1_000_000_000,
            "above it: {mode:o}"
        );
        let made = berth_node::userns::alias_of(&one.node);
        assert_eq!(
            made.exists() && made.join("node-id").exists(),
            alias,
            "above it: {mode:o}"
        );
    }
}

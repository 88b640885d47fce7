//! Shared setup for the agent tests (real runc as root, real nats-server,
//! real registry): a busybox image built from the host's static busybox,
//! pushed, pulled and unpacked with berth-puller, and an [`Agent`] with a
//! private state dir and runc root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::Image;
use crate::layers::{self, Comp, Entry};
use crate::registry::{Registry, RegistryAuth};
use crate::{NatsServer, NatsVersion};
use berth_agent::{
    Agent, AgentConfig, AgentEvent, ExitStatus, ImageConfig, ImageRoot, InstanceSpec, Limits,
    LogLine, OneOffOutcome, RestartPolicy, Runc,
};
use berth_oci::{ClientConfig, RegistryClient, RetryPolicy};
use berth_puller::{
    unpack_image, ContentStore, PullConfig, PullRequest, Puller, UnpackOptions, VerifyPolicy,
};
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::Subjects;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

// Kept here under their old names for the many tests that use them.
#[allow(unused_imports)]
pub use crate::runc::{mounts_under, require_root_and_runc, runc_list};

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "env", "pwd", "id", "cat", "true", "false", "seq", "printf", "ls", "dd",
];

/// Static busybox, its applet links and passwd/group (user `app`, 1000,
/// also in `www-data`, 33): the entries of a base layer.
pub fn busybox_base() -> Vec<Entry> {
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut base = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &bb).mode(0o755),
        Entry::dir("etc"),
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/work:/bin/sh\n",
        ),
        Entry::file("etc/group", b"root:x:0:\napp:x:1000:\nwww-data:x:33:app\n"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("work"),
    ];
    for a in APPLETS {
        base.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    base
}

/// A two-layer linux/amd64 image: [`busybox_base`], then an app layer;
/// `config` is the image config's `config` object.
pub fn busybox_image(config: Value) -> Image {
    let app = vec![Entry::dir("app"), Entry::file("app/hello.txt", b"hello\n")];
    let layers = vec![
        layers::layer(&busybox_base(), Comp::Gzip).unwrap(),
        layers::layer(&app, Comp::Gzip).unwrap(),
    ];
    layers::image_with_config(layers, config).unwrap()
}

/// The default test image: Cmd is a shell.
pub fn default_config() -> Value {
    json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] })
}

/// One node: nats, registry, store, agent.
#[derive(Debug)]
pub struct Node {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub registry: Registry,
    /// The agent's instance network (dropped before `dir`: it removes what
    /// of the network is left, reading the agent's state in `dir`).
    pub subnet: crate::net::SubnetLease,
    pub dir: tempfile::TempDir,
    pub agent: Agent,
    pub events: mpsc::UnboundedReceiver<AgentEvent>,
    pub cfg: AgentConfig,
}

/// Fast test policy: 300 ms doubling to 5 s.
pub fn fast_restarts() -> RestartPolicy {
    RestartPolicy {
        initial: Duration::from_millis(300),
        max: Duration::from_secs(5),
        healthy_after: Duration::from_secs(60),
    }
}

impl Node {
    pub async fn start() -> Node {
        Self::start_with(fast_restarts()).await
    }

    pub async fn start_with(restart: RestartPolicy) -> Node {
        Self::start_tuned(|c| c.restart = restart).await
    }

    /// A node whose agent settings `tune` changes from the tests' own.
    pub async fn start_tuned(tune: impl FnOnce(&mut AgentConfig)) -> Node {
        require_root_and_runc();
        crate::init_tracing();
        let nats = NatsServer::start(NatsVersion::Legacy).unwrap();
        let client = nats.connect().await.unwrap();
        let subjects = crate::unique_subjects();
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::new(NodeId::generate(), dir.path().join("agent"));
        cfg.user_namespace = crate::node::test_user_namespace();
        cfg.restart = fast_restarts();
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.exit_poll = Duration::from_millis(50);
        let mut subnet = crate::net::lease_subnet();
        let net_dir = dir.path().join("agent").join("net");
        cfg.network = Some(berth_agent::net::NetworkConfig {
            subnet: subnet.parsed(),
            cni_path: "/usr/lib/cni".into(),
            state_dir: net_dir.clone(),
            closed: Vec::new(),
            services: berth_agent::net::DEFAULT_SERVICES,
            user_namespace: None,
        });
        subnet.net_dir = Some(net_dir);
        tune(&mut cfg);
        let (agent, events) = start_agent(&cfg, &client, &subjects, "runc").await;
        Node {
            nats,
            client,
            subjects,
            registry,
            subnet,
            dir,
            agent,
            events,
            cfg,
        }
    }

    /// Push `image` and pull + unpack it like a node does (for the agent's
    /// user namespace, when it has one).
    pub async fn image(&self, image: &Image) -> ImageRoot {
        let shift = self.cfg.user_namespace.map(|ns| berth_puller::IdShift {
            host: ns.host,
            size: ns.size,
        });
        self.image_for(image, shift).await
    }

    /// [`Node::image`] with its files owned as `shift` says (`None`: as
    /// the layers say).
    pub async fn image_for(
        &self,
        image: &Image,
        shift: Option<berth_puller::IdShift>,
    ) -> ImageRoot {
        self.registry
            .push_image("app/svc", "v1", image)
            .await
            .unwrap();
        let client = RegistryClient::new(ClientConfig {
            retry: RetryPolicy::fast(),
            ..ClientConfig::default()
        })
        .unwrap();
        let mut store =
            ContentStore::open(self.dir.path().join("store"), VerifyPolicy::Size).unwrap();
        if let Some(shift) = shift {
            store = store.with_id_shift(shift).unwrap();
        }
        let puller = Puller::new(client, store.clone(), PullConfig::default());
        let pulled = puller
            .pull(
                &PullRequest {
                    host: &self.registry.host,
                    repository: "app/svc",
                    digest: &image.digest,
                    credential: None,
                },
                &|_| {},
            )
            .await
            .unwrap();
        let rootfs = unpack_image(&store, &pulled.digest, &UnpackOptions::default()).unwrap();
        let config = ImageConfig::from_json(&store.read(&pulled.config, 1 << 20).unwrap()).unwrap();
        ImageRoot {
            digest: pulled.digest.to_string(),
            rootfs,
            config,
        }
    }

    pub fn runc_root(&self) -> PathBuf {
        self.cfg.state_dir.join("runc")
    }

    /// Where `instance`'s writes land: its overlay's upper dir.
    pub fn upper(&self, instance: &InstanceId) -> PathBuf {
        self.cfg
            .state_dir
            .join("instances")
            .join(instance.as_str())
            .join("upper")
    }

    /// Subscribe to an instance's log lines (before it starts).
    pub async fn logs(&self, spec: &InstanceSpec) -> async_nats::Subscriber {
        let s = self
            .client
            .subscribe(self.subjects.logs(&spec.service))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        s
    }

    /// Runs `spec` once to a clean exit (code 0 within 10 s); the
    /// subscription to its log lines, taken before it started.
    pub async fn run_once_ok(&self, spec: &InstanceSpec) -> async_nats::Subscriber {
        let sub = self.logs(spec).await;
        let out = self
            .agent
            .run_once(spec.clone(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)));
        sub
    }

    /// The next event matching `pred` within `within`.
    pub async fn event(
        &mut self,
        within: Duration,
        pred: impl Fn(&AgentEvent) -> bool,
    ) -> AgentEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(e)) if pred(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("agent event channel closed"),
                Err(_) => panic!("no matching agent event within {within:?}"),
            }
        }
    }
}

/// A failed test must not leak containers or mounts onto the machine:
/// delete whatever is left in this node's runc root and unmount its
/// instance rootfs mounts (the tempdir is removed after this).
impl Drop for Node {
    fn drop(&mut self) {
        crate::runc::remove_leftovers(&self.runc_root(), self.dir.path());
    }
}

/// An agent for `cfg` running containers with the `runc` binary given.
pub async fn start_agent(
    cfg: &AgentConfig,
    client: &async_nats::Client,
    subjects: &Subjects,
    runc: impl Into<std::path::PathBuf>,
) -> (Agent, mpsc::UnboundedReceiver<AgentEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let runc = Runc::new(runc, cfg.state_dir.join("runc"));
    let agent = Agent::start(
        cfg.clone(),
        Arc::new(runc),
        client.clone(),
        subjects.clone(),
        tx,
    )
    .await
    .unwrap();
    (agent, rx)
}

/// An instance spec for `image` with a custom command.
pub fn spec(image: &ImageRoot, command: &str) -> InstanceSpec {
    InstanceSpec {
        service: ServiceId::generate(),
        instance: InstanceId::generate(),
        image: image.clone(),
        command: Some(command.to_string()),
        env: BTreeMap::new(),
        port: Some(10000),
        limits: Limits {
            cpu_millis: Some(500),
            memory_mib: Some(128),
            pids: None,
        },
        shutdown_delay: Duration::from_secs(5),
        network: None,
        disk: None,
        disk_restore: None,
        secret_files: Default::default(),
    }
}

/// Log lines received until `until` matches one (inclusive) or `within` passes.
pub async fn collect_logs(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    until: impl Fn(&LogLine) -> bool,
) -> Vec<LogLine> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(m)) => {
                let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
                let done = until(&l);
                out.push(l);
                if done {
                    return out;
                }
            }
            _ => return out,
        }
    }
}

/// For [`collect_logs`]: true at the `n`th line (from 1) reading `text`.
pub fn nth_line(text: &str, n: usize) -> impl Fn(&LogLine) -> bool {
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let text = text.to_owned();
    move |l| l.line == text && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n
}

/// Host pids of processes in any of `instances`' cgroups (runc puts each
/// container in `/berth/<instance>`).
pub fn processes_of(instances: &[&InstanceId]) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if instances
            .iter()
            .any(|i| cg.contains(&format!("/berth/{i}")))
        {
            pids.push(pid);
        }
    }
    pids
}

/// The host pid of the running container `id`'s first process, from the
/// runc state under `runc_root`.
pub fn container_pid(runc_root: &Path, id: &str) -> u32 {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root)
        .args(["state", id])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "runc state {id}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    u32::try_from(state["pid"].as_u64().unwrap()).unwrap()
}

/// Runs `args` inside the running container `id` (its namespaces, root,
/// cwd and environment, as its root user) through `nsenter`: a look from
/// the outside, without the container's cgroup, capabilities or seccomp
/// filter (`berth exec`, the agent's `runc exec`, has them), which also
/// reaches instances whose network namespace the host's user namespace
/// owns (started by an earlier berth).
pub fn exec_in(runc_root: &Path, id: &str, args: &[&str]) -> std::process::Output {
    let pid = container_pid(runc_root, id).to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env = environ.split(|b| *b == 0).filter_map(|kv| {
        let kv = String::from_utf8_lossy(kv).into_owned();
        kv.split_once('=')
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    });
    std::process::Command::new("nsenter")
        .env_clear()
        .envs(env)
        .args(["-t", &pid, "--all", "--root", "--wd", "--"])
        .args(args)
        .output()
        .unwrap()
}

/// Checks that `attempt` (something run beside an instance: a command, a
/// terminal) is refused as "not on this node" for an instance the node
/// does not have, and for `instance` once stopped (this stops it).
pub async fn refused_unless_on_the_node<T, Fut>(
    node: &Node,
    instance: &InstanceId,
    attempt: impl Fn(InstanceId) -> Fut,
) where
    T: std::fmt::Debug,
    Fut: std::future::Future<Output = Result<T, berth_agent::AgentError>>,
{
    for (id, stop) in [(InstanceId::generate(), false), (instance.clone(), true)] {
        if stop {
            node.agent.stop_instance(instance).await.unwrap();
        }
        let err = attempt(id).await.unwrap_err();
        assert!(
            matches!(err, berth_agent::AgentError::UnknownInstance(_)),
            "{err}"
        );
    }
}

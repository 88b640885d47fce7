//! One installation the suite breaks: a nats-server (one, or a 3-node
//! 2.15 cluster with R3 streams, each member in a network namespace of its
//! own when it is to be cut off), an anonymous registry holding two tags of
//! a busybox image behind a proxy that can be made slow, and berth's
//! components each as its own `berth run` process sharing one data dir, so
//! each can be killed, paused and started again on its own (a second node,
//! the notifier and a webhook receiver, and the node's dir on a tmpfs of
//! its own that can be filled, when the test asks). Everything it started (processes,
//! containers, mounts, namespaces, the nodes' networks) is removed on drop,
//! also when a test fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_runtime::SecretKey;
use berth_schemas::Subjects;
use berth_tests::netns::Netns;
use berth_tests::proxy::DelayProxy;
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::webhook::Receiver;
use berth_tests::{free_port, NatsCluster, NatsServer, NatsVersion, Place};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The components run as processes of their own, each a fault target.
pub const COMPONENTS: &[&str] = &["resolver", "scheduler", "node", "api"];

/// What an installation has beyond the basics, as its faults need.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// A 3-node cluster rather than one server.
    pub cluster: bool,
    /// Each cluster member in a network namespace of its own.
    pub netns: bool,
    /// A second node (`node2`).
    pub second_node: bool,
    /// The node's dir on a tmpfs of 1184 MiB.
    pub small_disk: bool,
    /// The notifier, a webhook channel to a receiver of the test's, and
    /// deploys of a tag the registry does not have (they fail).
    pub notify: bool,
}

/// The repository every service deploys from; tags `v1` and `v2`.
pub const REPO: &str = "app/svc";

/// `line` without the terminal color codes the components' logs carry.
fn without_colors(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How long the scheduler waits for a silent node before it is lost:
/// longer than any pause (4 s); with network cuts, longer than a cut (up
/// to 8 s) and the TCP retransmission backoff after it. A node declared
/// lost and then back keeps the containers of the instances replaced
/// meanwhile (seed 208826437 with 12 s, a cut of 6.7 s): a finding about
/// the node, not something this suite should trip over in every run.
fn heartbeat_timeout_ms(setup: Setup) -> &'static str {
    if setup.netns {
        "30000"
    } else {
        "12000"
    }
}

/// Pushes tags `v1` and `v2` as built by `build`: each build's images
/// differ (by their config), so deploying them pulls.
async fn push_images(registry: &Registry, build: usize) -> anyhow::Result<()> {
    for tag in ["v1", "v2"] {
        let env = [
            "PATH=/bin".to_owned(),
            format!("VERSION={tag}"),
            format!("BUILD={build}"),
        ];
        let config = json!({"Cmd": ["/bin/sh"], "Env": env});
        let image = berth_tests::agent::busybox_image(config);
        registry.push_image(REPO, tag, &image).await?;
    }
    Ok(())
}

/// The nats-server(s) under the installation.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    pub fn urls(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(c) => c.servers.len(),
        }
    }
}

/// A service the workload drives.
#[derive(Debug, Clone)]
pub struct Svc {
    pub id: String,
    pub name: String,
    /// `/deploy/srv-…?key=…`
    pub hook: String,
}

/// Shared by the workload's lanes and the fault injector: what faults
/// change sits behind locks held only while breaking or healing.
pub struct World {
    pub setup: Setup,
    pub nats: Mutex<Nats>,
    /// The cluster's namespaces (dropped after the servers in them).
    pub netns: Option<Netns>,
    nats_urls: String,
    replicas: usize,
    pub registry: tokio::sync::Mutex<Registry>,
    /// What every image reference names: the registry through the proxy.
    pub proxy: DelayProxy,
    pub receiver: Option<Receiver>,
    /// The processes the faults pick from.
    pub components: Vec<&'static str>,
    procs: Mutex<BTreeMap<&'static str, Child>>,
    /// Nodes killed for good (a machine gone).
    pub(crate) lost: Mutex<Vec<&'static str>>,
    /// Images pushed since the first.
    builds: std::sync::atomic::AtomicUsize,
    /// Host ports of `node` and `node2` (`first-last`), handed to no other
    /// node of this process: the suites run side by side on one network.
    node_ports: [String; 2],
    pub data: PathBuf,
    pub subjects: Subjects,
    pub api_port: u16,
    pub api_key: String,
    pub owner: String,
    pub http: reqwest::Client,
    /// The test's own NATS client: bus commands and reading the log.
    pub bus: async_nats::Client,
    pub services: Vec<Svc>,
    secret_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let procs = self.procs.get_mut().unwrap_or_else(|p| p.into_inner());
        for child in procs.values_mut() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            }
        }
        // Gone before their networks go: a node still alive (a signal is
        // delivered when the process next runs) must not make its bridge
        // or chains again after they are removed.
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in procs.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Networks first (their state is under the node dirs), then the
        // containers, then every mount under the data dir (the tmpfs too).
        let remove_networks = || {
            for node in self.nodes() {
                berth_tests::net::remove_network(
                    &self.subnet(node),
                    Some(&self.node_dir(node).join("agent/net")),
                );
            }
        };
        remove_networks();
        for node in self.nodes() {
            berth_tests::runc::remove_leftovers(&self.runc_root(node), &self.node_dir(node));
            berth_tests::node::remove_alias(&self.node_dir(node));
        }
        berth_tests::runc::remove_leftovers(&self.runc_root("node"), &self.data);
        // What a command a killed node had started (an `iptables` run
        // outlives the process that ran it) made meanwhile goes too.
        remove_networks();
    }
}

impl World {
    /// Starts everything and creates the services (two web services and a
    /// worker), waiting for nothing but the API.
    pub async fn start(setup: Setup) -> World {
        berth_tests::runc::require_root_and_runc();
        let netns = setup.netns.then(|| Netns::create(3).unwrap());
        let nats = match &netns {
            Some(net) => {
                let places: Vec<Place> = (0..3)
                    .map(|i| Place {
                        host: net.addr(i).to_owned(),
                        netns: Some(net.name(i).to_owned()),
                    })
                    .collect();
                let cluster = NatsCluster::start_at(NatsVersion::Modern, &places).await;
                Nats::Cluster(cluster.unwrap())
            }
            None if setup.cluster => {
                Nats::Cluster(NatsCluster::start(NatsVersion::Modern, 3).await.unwrap())
            }
            None => Nats::Single(NatsServer::start(NatsVersion::Modern).unwrap()),
        };
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        push_images(&registry, 0).await.unwrap();
        let proxy = DelayProxy::start(&registry.host).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let receiver = if setup.notify {
            // Every third request refused: deliveries are retried, under
            // the same webhook-id.
            Some(Receiver::start(3).await.unwrap())
        } else {
            None
        };
        let mut components = COMPONENTS.to_vec();
        if setup.second_node {
            components.push("node2");
        }
        if setup.notify {
            components.push("notifier");
        }
        let bus = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(
                nats.urls()
                    .split(',')
                    .map(|u| u.parse::<async_nats::ServerAddr>().unwrap())
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        // Installs rustls' crypto provider, which any reqwest client needs.
        berth_tests::registry::http_client().unwrap();
        let http = reqwest::Client::builder()
            // The API behind the port is killed and started again.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut world = World {
            setup,
            nats_urls: nats.urls(),
            replicas: nats.replicas(),
            nats: Mutex::new(nats),
            netns,
            registry: tokio::sync::Mutex::new(registry),
            proxy,
            receiver,
            components,
            procs: Mutex::default(),
            lost: Mutex::default(),
            builds: Default::default(),
            node_ports: [(); 2].map(|_| {
                let p = berth_tests::node_ports();
                format!("{}-{}", p.start(), p.end())
            }),
            data,
            subjects: Subjects::new(&berth_tests::unique_prefix()).unwrap(),
            api_port: free_port(),
            api_key: String::new(),
            owner: String::new(),
            http,
            bus,
            services: Vec::new(),
            secret_key: SecretKey::generate_base64(),
            _dir: dir,
        };
        if setup.small_disk {
            world.mount_small_disk();
        }
        // The API provisions the streams; the rest wait for them.
        world.spawn("api");
        world.wait_for_api(Duration::from_secs(60)).await;
        for c in world.components.clone() {
            if c != "api" {
                world.spawn(c);
            }
        }
        let creds: Value =
            serde_json::from_slice(&std::fs::read(world.data.join("credentials.json")).unwrap())
                .unwrap();
        world.api_key = creds["apiKey"].as_str().unwrap().to_owned();
        world.owner = creds["ownerId"].as_str().unwrap().to_owned();
        if let Some(r) = &world.receiver {
            let path = format!("/v1/notification-settings/owners/{}", world.owner);
            let secret = format!("whsec_{}", data_encoding::BASE64.encode(&[7u8; 32]));
            let body = json!({"webhookUrl": r.url, "webhookSecret": secret});
            let answer = world.call(reqwest::Method::PATCH, &path, Some(body)).await;
            assert!(
                matches!(answer, Some((200, _))),
                "notification settings: {answer:?}"
            );
        }
        world.create_services().await;
        if world.netns.is_some() {
            world.assert_control_plane_closed().await;
        }
        world
    }

    /// With NATS on addresses of their own (namespaces, as other
    /// machines), the node found its servers and closed them to
    /// instances: one drop rule per server in its bridge's forward chain
    /// (once the node has started: nothing above waits for it).
    async fn assert_control_plane_closed(&self) {
        let subnet = self.subnet("node");
        let addr: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
        let chain = format!("BTH-{:08x}-FWD", u32::from(addr));
        let wanted: Vec<(String, String)> = self
            .nats_urls
            .split(',')
            .map(|url| {
                let endpoint = url.trim().trim_start_matches("nats://");
                let (ip, port) = endpoint.rsplit_once(':').unwrap();
                let rule = format!("-A {chain} -d {ip}/32 -p tcp -m tcp --dport {port} -j DROP");
                (endpoint.to_owned(), rule)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::process::Command::new("iptables")
                .args(["-w", "-S", &chain])
                .output()
                .unwrap();
            let rules = String::from_utf8_lossy(&out.stdout).into_owned();
            let missing = wanted
                .iter()
                .find(|(_, rule)| !rules.lines().any(|l| l == rule));
            let Some((endpoint, _)) = missing else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "the NATS server {endpoint} is not closed to instances:\n{rules}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// New images for `v1` and `v2`, as a build pipeline pushes them
    /// (retried while another fault has the registry down).
    pub async fn push_new_images(&self) {
        let build = self
            .builds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The lock is not held between tries: healing the registry takes it.
            let pushed = push_images(&*self.registry.lock().await, build).await;
            match pushed {
                Ok(()) => return,
                Err(e) => assert!(Instant::now() < deadline, "pushing new images: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn image(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.proxy.host)
    }

    fn log_file(&self, component: &str) -> PathBuf {
        self.data.join(format!("{component}.log"))
    }

    /// The last lines each component wrote, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for c in &self.components {
            let text = std::fs::read_to_string(self.log_file(c)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {c}\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The lines of `component`'s log that mention any of `needles`.
    pub fn log_lines(&self, component: &str, needles: &[&str]) -> Vec<String> {
        std::fs::read_to_string(self.log_file(component))
            .unwrap_or_default()
            .lines()
            .map(without_colors)
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .collect()
    }

    /// Starts `berth run <component>` (again).
    pub fn spawn(&self, component: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(component))
            .unwrap();
        // `node2` is a second `berth run node` with a dir of its own.
        let (run, node_dir) = match component {
            "node2" => ("node", self.node_dir(component)),
            _ => (component, self.node_dir("node")),
        };
        let node_name = format!("faults-{component}");
        let ports = &self.node_ports[usize::from(component == "node2")];
        let mut c = Command::new(BERTH);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BERTH_DATA_DIR", &self.data)
            // The API records itself here, where no other test and no real
            // installation looks (not /run/berth).
            .env("XDG_RUNTIME_DIR", self.data.with_file_name("run"))
            .env("BERTH_NATS_URL", &self.nats_urls)
            .env("BERTH_REPLICAS", self.replicas.to_string())
            .env("BERTH_SUBJECT_PREFIX", self.subjects.prefix())
            .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
            .env("BERTH_ALLOW_TARGETS", "loopback")
            .env("BERTH_SHUTDOWN_GRACE_SECS", "5")
            .env("BERTH_LOG", "warn")
            // Quick retries of a registry that is down, bounded.
            .env("BERTH_RESOLVER_RETRY_BASE_MS", "200")
            .env("BERTH_RESOLVER_RETRY_CAP_MS", "2000")
            .env("BERTH_RESOLVER_RETRY_TOTAL_MS", "30000")
            .env("BERTH_RESOLVER_ACK_WAIT_SECS", "5")
            .env(
                "BERTH_SCHEDULER_HEARTBEAT_TIMEOUT_MS",
                heartbeat_timeout_ms(self.setup),
            )
            .env("BERTH_SCHEDULER_SWEEP_MS", "2000")
            .env("BERTH_SCHEDULER_DRAIN_MS", "200")
            .env("BERTH_SCHEDULER_READINESS_WINDOW_SECS", "60")
            .env("BERTH_NODE_NAME", node_name)
            .env("BERTH_NODE_DIR", node_dir)
            .env("BERTH_NODE_PORTS", ports)
            .env(
                "BERTH_NODE_SUBNET",
                self.subnet(if component == "node2" {
                    "node2"
                } else {
                    "node"
                }),
            )
            .env("BERTH_NODE_CPU_MILLIS", "8000")
            .env("BERTH_NODE_MEMORY_MIB", "8192")
            .env("BERTH_NODE_HEARTBEAT_MS", "500")
            .env("BERTH_NODE_USAGE_MS", "0")
            .env("BERTH_NODE_ACK_WAIT_SECS", "10")
            .env("BERTH_NODE_HEALTH_INTERVAL_MS", "200")
            .env("BERTH_NODE_WORKER_GRACE_MS", "500")
            .env("BERTH_NODE_GC_INTERVAL_SECS", "0")
            .env("BERTH_NOTIFIER_RETRY_MS", "1000")
            .env("BERTH_NOTIFIER_ACK_WAIT_SECS", "5")
            .env("BERTH_NOTIFIER_SEND_TIMEOUT_SECS", "5")
            .env("BERTH_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            .args(["run", run])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // A node never holds the installation's key.
        if run != "node" {
            c.env("BERTH_SECRET_KEY", &self.secret_key);
        }
        let child = c.spawn().unwrap();
        self.procs().insert(component, child);
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Child>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pid(&self, component: &str) -> Option<Pid> {
        self.procs()
            .get(component)?
            .id()
            .map(|p| Pid::from_raw(p as i32))
    }

    /// `kill -9`, reaped.
    pub async fn kill9(&self, component: &'static str) {
        let child = self.procs().remove(component);
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub fn signal(&self, component: &str, signal: Signal) {
        if let Some(pid) = self.pid(component) {
            let _ = kill(pid, signal);
        }
    }

    /// Fails the test when a component exited by itself (a crash the suite
    /// did not cause).
    pub fn assert_all_running(&self) {
        let mut dead = Vec::new();
        for (name, c) in self.procs().iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                dead.push(format!("{name} exited by itself: {status}"));
            }
        }
        assert!(dead.is_empty(), "{dead:?}\n{}", self.log_tails());
    }

    async fn wait_for_api(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.api_port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the API did not listen within {within:?}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// One API call; `None` when it got no answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let (url, timeout) = (self.url(path), Duration::from_secs(10));
        let answer = berth_tests::api::call(
            &self.http,
            &url,
            &self.api_key,
            method,
            body.as_ref(),
            timeout,
        );
        answer.await.ok()
    }

    /// A GET that must be answered 200 (retried while the API is away).
    pub async fn get(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.call(reqwest::Method::GET, path, None).await {
                Some((200, v)) => return v,
                other => assert!(
                    Instant::now() < deadline,
                    "GET {path}: {other:?}\n{}",
                    self.log_tails()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create_services(&mut self) {
        let web_cmd = "sh -c 'exec busybox httpd -f -p $PORT -h /app'";
        let specs = [
            ("web-a", "web_service", 2, Some(web_cmd)),
            ("web-b", "web_service", 1, Some(web_cmd)),
            ("worker", "background_worker", 1, Some("sleep 3600")),
        ];
        for (name, kind, n, cmd) in specs {
            let mut details = json!({
                "numInstances": n,
                "shutdownDelaySeconds": 1,
                "envSpecificDetails": {"dockerCommand": cmd},
            });
            if kind == "web_service" {
                details["healthCheckPath"] = json!("/hello.txt");
            }
            let body = json!({
                "type": kind,
                "name": name,
                "image": {"imagePath": self.image("v1")},
                "serviceDetails": details,
            });
            // The resolver answers the image check once it is up.
            let deadline = Instant::now() + Duration::from_secs(60);
            let (s, v) = loop {
                let answer = self
                    .call(reqwest::Method::POST, "/v1/services", Some(body.clone()))
                    .await;
                match answer {
                    Some((503, _)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some(a) => break a,
                    None => panic!("create {name}: no answer\n{}", self.log_tails()),
                }
            };
            assert_eq!(s, 201, "create {name}: {v}");
            self.services.push(Svc {
                id: v["service"]["id"].as_str().unwrap().to_owned(),
                name: name.to_owned(),
                hook: v["deployHookUrl"].as_str().unwrap().to_owned(),
            });
        }
    }

    /// The stream leader's index among the cluster's servers (`n<i>`).
    pub async fn stream_leader(&self) -> Option<usize> {
        let js = async_nats::jetstream::new(self.bus.clone());
        let mut stream = tokio::time::timeout(
            Duration::from_secs(3),
            js.get_stream(self.subjects.events_stream()),
        )
        .await
        .ok()?
        .ok()?;
        let info = tokio::time::timeout(Duration::from_secs(3), stream.info())
            .await
            .ok()?
            .ok()?;
        let leader = info.cluster.as_ref()?.leader.as_ref()?;
        leader.strip_prefix('n')?.parse().ok()
    }
}

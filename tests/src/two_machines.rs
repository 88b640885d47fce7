//! Two machines on one: an installation whose second node runs in a
//! network namespace of its own, so that traffic between the nodes really
//! crosses a network (a DNAT to an address of the same host is never
//! translated twice; between namespaces it is), and a third namespace as a
//! machine outside the installation.
//!
//! Machine A is the host: the control plane (`berth run api`, `scheduler`,
//! `resolver`, each a process of its own) and node A, advertising the
//! address `.1` of a [`Netns`] bridge. Machine B is namespace 0 of that
//! bridge (`.10`): node B runs there (`nsenter --net`, so it shares the
//! host's mounts and cgroups as a node on its own machine has its own),
//! advertising `.10`. The outsider is namespace 1 (`.11`): no berth
//! process runs there. NATS and the registry listen on the host's loopback
//! and are also reachable at `.1` through [`Forward`]s, so node B reaches
//! them over the bridge as over a network. Either node can be restarted
//! ([`TwoMachines::restart`]): its containers keep running and the new
//! process adopts them.
//!
//! Everything started (processes, containers, mounts, the nodes' networks,
//! the namespaces) is removed on drop, also when a test panics.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_eventlog::{EventStore, StoreConfig};
use berth_schemas::ids::ServiceId;
use berth_schemas::{AggregateId, Subjects};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::net::SubnetLease;
use crate::netns::Netns;
use crate::registry::{Registry, RegistryAuth};
use crate::{NatsServer, NatsVersion};

/// A TCP forwarder: connections to `addr` are joined to `upstream`. Its
/// tasks end when it is dropped.
#[derive(Debug)]
pub struct Forward {
    /// Where clients connect.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Forward {
    /// Listens on a free port of `ip` and forwards to `upstream`.
    pub async fn start(ip: IpAddr, upstream: SocketAddr) -> Result<Forward> {
        let listener = TcpListener::bind((ip, crate::free_port()))
            .await
            .with_context(|| format!("listen on {ip}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Forward { addr, task })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection's task.
        self.task.abort();
    }
}

/// One of the two machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// The host: the control plane and node A.
    A,
    /// Namespace 0 of the bridge: node B alone.
    B,
}

impl Machine {
    fn index(self) -> usize {
        match self {
            Machine::A => 0,
            Machine::B => 1,
        }
    }

    /// Its node's process (and log) name.
    fn process(self) -> &'static str {
        match self {
            Machine::A => "node-a",
            Machine::B => "node-b",
        }
    }
}

/// What a node offers to instances (`BERTH_NODE_CPU_MILLIS`,
/// `BERTH_NODE_MEMORY_MIB`): how a test steers placement.
#[derive(Debug, Clone, Copy)]
pub struct NodeSize {
    pub cpu_millis: u32,
    pub memory_mib: u32,
}

#[derive(Debug)]
struct NodeConf {
    dir: PathBuf,
    subnet: SubnetLease,
    /// `first-last`.
    ports: String,
    advertise: String,
    nats_url: String,
    /// `BERTH_HTTP_ADDR`.
    http_addr: String,
    size: NodeSize,
}

/// The installation over two machines, and an outsider.
#[derive(Debug)]
pub struct TwoMachines {
    procs: Mutex<BTreeMap<&'static str, Child>>,
    berth: PathBuf,
    pub data: PathBuf,
    pub subjects: Subjects,
    pub api_port: u16,
    /// The first owner's API key and id (`credentials.json`).
    pub api_key: String,
    pub owner: String,
    /// The installation key (`BERTH_SECRET_KEY`, base64).
    pub secret_key: String,
    pub http: reqwest::Client,
    /// The test's own NATS client (anonymous, as every process's).
    pub bus: async_nats::Client,
    /// Opened once the API has provisioned the streams.
    store: Option<EventStore>,
    /// `<.1>:<port>`: the registry as image references name it.
    pub registry_host: String,
    nodes: [NodeConf; 2],
    // Dropped after the processes are gone (Drop::drop), in this order.
    _registry_forward: Forward,
    _nats_forward: Forward,
    pub registry: Registry,
    pub nats: NatsServer,
    /// Member 0 is machine B, member 1 the outsider.
    pub net: Netns,
    _dir: tempfile::TempDir,
}

impl Drop for TwoMachines {
    fn drop(&mut self) {
        let procs = self.procs.get_mut().unwrap_or_else(|p| p.into_inner());
        for child in procs.values_mut() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        // Gone before their networks go: a node still alive must not make
        // its bridge or chains again after they are removed.
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in procs.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let remove_networks = |nodes: &[NodeConf; 2], ns: &str| {
            let a = &nodes[0];
            crate::net::remove_network(&a.subnet.subnet, Some(&a.dir.join("agent/net")));
            // Node B's rules and bridge are inside its namespace (they go
            // with it too; this is for a namespace something still holds).
            let b = &nodes[1];
            let (subnet, dir) = (b.subnet.subnet.clone(), b.dir.join("agent/net"));
            let _ = in_netns(ns, move || {
                crate::net::remove_network(&subnet, Some(&dir));
                Ok(())
            });
        };
        remove_networks(&self.nodes, self.net.name(0));
        for node in &self.nodes {
            crate::runc::remove_leftovers(&node.dir.join("agent/runc"), &node.dir);
            crate::node::remove_alias(&node.dir);
        }
        crate::runc::remove_leftovers(&self.data.join("node/agent/runc"), &self.data);
        // What a command a killed node had started made meanwhile goes too.
        remove_networks(&self.nodes, self.net.name(0));
    }
}

/// Runs `f` on a thread of its own in network namespace `ns` (a name under
/// `/run/netns`); processes it starts are in that namespace too.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
}

/// `GET path` of each of `targets` from network namespace `ns`, all at
/// once, each within `timeout`: what each answered (the whole response),
/// or why no connection was made or no answer came.
pub async fn http_get_from(
    ns: &str,
    targets: &[SocketAddr],
    path: &str,
    timeout: Duration,
) -> Vec<(SocketAddr, Result<String>)> {
    let mut tasks = Vec::new();
    for &target in targets {
        let (ns, path) = (ns.to_owned(), path.to_owned());
        tasks.push(tokio::task::spawn_blocking(move || {
            let answer = in_netns(&ns, move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect_timeout(&target, timeout)
                    .with_context(|| format!("connect {target}"))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                let req = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n");
                s.write_all(req.as_bytes())?;
                let mut out = Vec::new();
                // What came before a timeout counts too.
                let read = s.read_to_end(&mut out);
                if out.is_empty() {
                    read.with_context(|| format!("read from {target}"))?;
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
            });
            (target, answer)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a probe thread"));
    }
    out
}

/// `s` as a query value: everything but unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ports_text(range: &std::ops::RangeInclusive<u16>) -> String {
    format!("{}-{}", range.start(), range.end())
}

impl TwoMachines {
    /// Starts NATS (modern), the registry, the bridge with machine B and the
    /// outsider, the control plane and both nodes; returns once both nodes
    /// are registered and heart-beating, as the API sees them.
    pub async fn start(berth: &str, a: NodeSize, b: NodeSize) -> TwoMachines {
        crate::runc::require_root_and_runc();
        let net = Netns::create(2).unwrap();
        let host_ip: IpAddr = net
            .addr(0)
            .rsplit_once('.')
            .map(|(p, _)| format!("{p}.1"))
            .unwrap()
            .parse()
            .unwrap();
        let nats = NatsServer::start(NatsVersion::Modern).unwrap();
        let nats_forward = Forward::start(host_ip, ([127, 0, 0, 1], nats.port()).into())
            .await
            .unwrap();
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        let registry_forward = Forward::start(host_ip, registry.host.parse().unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let node = |i: usize, size: NodeSize| {
            let dir = data.join(["node-a", "node-b"][i]);
            let mut subnet = crate::net::lease_subnet();
            subnet.net_dir = Some(dir.join("agent/net"));
            let (advertise, nats_url, http_addr) = if i == 0 {
                (host_ip.to_string(), nats.url(), "127.0.0.1:0".to_owned())
            } else {
                let b = net.addr(0).to_owned();
                let http = format!("{b}:{}", crate::free_port());
                (b, format!("nats://{}", nats_forward.addr), http)
            };
            NodeConf {
                dir,
                subnet,
                ports: ports_text(&crate::node_ports()),
                advertise,
                nats_url,
                http_addr,
                size,
            }
        };
        let nodes = [node(0, a), node(1, b)];
        let bus = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(nats.url())
            .await
            .unwrap();
        // Installs rustls' crypto provider, which any reqwest client needs.
        crate::registry::http_client().unwrap();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let subjects = Subjects::new(&crate::unique_prefix()).unwrap();
        let mut m = TwoMachines {
            procs: Mutex::default(),
            berth: PathBuf::from(berth),
            data,
            subjects: subjects.clone(),
            api_port: crate::free_port(),
            api_key: String::new(),
            owner: String::new(),
            secret_key: berth_runtime::SecretKey::generate_base64(),
            http,
            bus,
            store: None,
            registry_host: registry_forward.addr.to_string(),
            nodes,
            _registry_forward: registry_forward,
            _nats_forward: nats_forward,
            registry,
            nats,
            net,
            _dir: dir,
        };
        // The API provisions the streams; the rest wait for them.
        m.spawn("api");
        m.wait_for_api(Duration::from_secs(60)).await;
        let creds: Value =
            serde_json::from_slice(&std::fs::read(m.data.join("credentials.json")).unwrap())
                .unwrap();
        m.api_key = creds["apiKey"].as_str().unwrap().to_owned();
        m.owner = creds["ownerId"].as_str().unwrap().to_owned();
        for c in ["resolver", "scheduler", "node-a", "node-b"] {
            m.spawn(c);
        }
        m.wait_for_nodes(Duration::from_secs(60)).await;
        m
    }

    fn log_file(&self, process: &str) -> PathBuf {
        self.data.join(format!("{process}.log"))
    }

    /// The last lines each process wrote, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in ["api", "resolver", "scheduler", "node-a", "node-b"] {
            let text = std::fs::read_to_string(self.log_file(p)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {p}\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Starts `berth run <process>` (node B through `nsenter` in machine
    /// B's namespace).
    fn spawn(&self, process: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(process))
            .unwrap();
        let mut c = match process {
            "node-b" => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", self.net.name(0)))
                    .arg(&self.berth);
                c
            }
            _ => Command::new(&self.berth),
        };
        let insecure = self.registry_host.clone();
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BERTH_DATA_DIR", &self.data)
            .env("XDG_RUNTIME_DIR", self.data.with_file_name("run"))
            .env("BERTH_NATS_URL", self.nats.url())
            .env("BERTH_REPLICAS", "1")
            .env("BERTH_SUBJECT_PREFIX", self.subjects.prefix())
            .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
            // The registry is at the bridge's address, a private one.
            .env("BERTH_ALLOW_TARGETS", "loopback,private")
            .env("BERTH_RESOLVER_INSECURE_REGISTRIES", &insecure)
            .env("BERTH_NODE_INSECURE_REGISTRIES", &insecure)
            .env("BERTH_SHUTDOWN_GRACE_SECS", "5")
            .env("BERTH_LOG", "info")
            .env("BERTH_RESOLVER_RETRY_BASE_MS", "200")
            .env("BERTH_RESOLVER_RETRY_CAP_MS", "2000")
            .env("BERTH_RESOLVER_RETRY_TOTAL_MS", "30000")
            .env("BERTH_SCHEDULER_HEARTBEAT_TIMEOUT_MS", "12000")
            .env("BERTH_SCHEDULER_SWEEP_MS", "2000")
            .env("BERTH_SCHEDULER_DRAIN_MS", "200")
            .env("BERTH_SCHEDULER_READINESS_WINDOW_SECS", "60")
            .env("BERTH_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let run = match process {
            "node-a" | "node-b" => {
                let machine = if process == Machine::A.process() {
                    Machine::A
                } else {
                    Machine::B
                };
                let n = &self.nodes[machine.index()];
                c.env("BERTH_NATS_URL", &n.nats_url)
                    .env("BERTH_HTTP_ADDR", &n.http_addr)
                    .env("BERTH_NODE_NAME", process)
                    .env("BERTH_NODE_DIR", &n.dir)
                    .env("BERTH_NODE_PORTS", &n.ports)
                    .env("BERTH_NODE_SUBNET", &n.subnet.subnet)
                    .env("BERTH_NODE_ADVERTISE_ADDR", &n.advertise)
                    .env("BERTH_NODE_CPU_MILLIS", n.size.cpu_millis.to_string())
                    .env("BERTH_NODE_MEMORY_MIB", n.size.memory_mib.to_string())
                    .env("BERTH_NODE_HEARTBEAT_MS", "500")
                    .env("BERTH_NODE_USAGE_MS", "0")
                    .env("BERTH_NODE_ACK_WAIT_SECS", "10")
                    .env("BERTH_NODE_HEALTH_INTERVAL_MS", "200")
                    .env("BERTH_NODE_WORKER_GRACE_MS", "500")
                    .env("BERTH_NODE_GC_INTERVAL_SECS", "0");
                "node"
            }
            other => {
                // A node never holds the installation's key.
                c.env("BERTH_SECRET_KEY", &self.secret_key);
                other
            }
        };
        let child = c.args(["run", run]).spawn().unwrap();
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(process, child);
    }

    /// Stops the node of machine `m` (SIGTERM; waits up to 30 s for it
    /// to exit: its containers keep running) and starts it again with the
    /// same environment and directory, so that it adopts them. Returns as
    /// the new process is started, with how the old one ended and how long
    /// it took to.
    pub async fn restart(&self, m: Machine) -> (std::process::ExitStatus, Duration) {
        let process = m.process();
        let mut child = self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(process)
            .unwrap_or_else(|| panic!("{process} is not running"));
        let pid = child.id().expect("the node has not been waited for");
        let t0 = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let within = Duration::from_secs(30);
        let status = match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.unwrap(),
            // Dropping the child kills it.
            Err(_) => panic!(
                "{process} did not exit within {within:?} of SIGTERM\n{}",
                self.log_tails()
            ),
        };
        let stopped = t0.elapsed();
        self.spawn(process);
        (status, stopped)
    }

    /// What the node of machine `m` has logged so far, every process of
    /// it (a restarted node appends to the same file).
    pub fn node_log(&self, m: Machine) -> String {
        std::fs::read_to_string(self.log_file(m.process())).unwrap_or_default()
    }

    /// Fails the test when a process exited by itself.
    pub fn assert_all_running(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let dead: Vec<String> = procs
            .iter_mut()
            .filter_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited by itself: {status}")),
                _ => None,
            })
            .collect();
        drop(procs);
        assert!(dead.is_empty(), "{dead:?}\n{}", self.log_tails());
    }

    async fn wait_for_api(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while TcpStream::connect(("127.0.0.1", self.api_port))
            .await
            .is_err()
            || !self.data.join("credentials.json").exists()
        {
            assert!(
                Instant::now() < deadline,
                "the API did not listen within {within:?}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The streams exist now: a store that loads from them.
        self.store = Some(
            EventStore::open(
                self.bus.clone(),
                self.subjects.clone(),
                StoreConfig::default(),
            )
            .await
            .unwrap(),
        );
    }

    /// Both nodes registered with the size they were given and heard from.
    async fn wait_for_nodes(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_all_running();
            let ids = [self.node_id(Machine::A), self.node_id(Machine::B)];
            let listed = match self
                .call(&self.api_key, reqwest::Method::GET, "/v1/nodes", None)
                .await
            {
                Some((200, v)) => v,
                _ => Value::Null,
            };
            let up = |m: Machine| {
                let Some(id) = &ids[m.index()] else {
                    return false;
                };
                let size = self.nodes[m.index()].size;
                listed.as_array().into_iter().flatten().any(|n| {
                    n["id"] == id.as_str()
                        && n["state"] == "alive"
                        && n["lastHeartbeatAt"].is_string()
                        && n["cpuMillis"] == size.cpu_millis
                        && n["memoryMib"] == size.memory_mib
                })
            };
            if up(Machine::A) && up(Machine::B) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "both nodes not up within {within:?}: ids {ids:?}, /v1/nodes {listed}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node's id, once it has written it.
    pub fn node_id(&self, m: Machine) -> Option<String> {
        std::fs::read_to_string(self.nodes[m.index()].dir.join("node-id"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The address the node advertises.
    pub fn advertise(&self, m: Machine) -> &str {
        &self.nodes[m.index()].advertise
    }

    /// The host ports the node publishes instances on.
    pub fn ports(&self, m: Machine) -> std::ops::RangeInclusive<u16> {
        let (a, b) = self.nodes[m.index()].ports.split_once('-').unwrap();
        a.parse().unwrap()..=b.parse().unwrap()
    }

    /// Node B's own HTTP listener (`/healthz`, `/metrics`) at `.10`: a
    /// port of machine B that anyone on the network reaches.
    pub fn node_b_http(&self) -> SocketAddr {
        self.nodes[1].http_addr.parse().unwrap()
    }

    /// The outsider's namespace (`ip netns exec <this>`) and address.
    pub fn outsider(&self) -> (&str, &str) {
        (self.net.name(1), self.net.addr(1))
    }

    /// Pushes `image` as `repo:tag`; the reference to deploy it by (the
    /// registry at the bridge's address, which both machines reach).
    pub async fn push(&self, repo: &str, tag: &str, image: &crate::image::Image) -> String {
        self.registry.push_image(repo, tag, image).await.unwrap();
        format!("{}/{repo}:{tag}", self.registry_host)
    }

    /// One API call with `key`; `None` when it got no answer.
    pub async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        let timeout = Duration::from_secs(10);
        crate::api::call(&self.http, &url, key, method, body.as_ref(), timeout)
            .await
            .ok()
    }

    /// `POST /v1/services` with `key` (retried while the resolver is not
    /// up yet); the new service's id.
    pub async fn create_service(&self, key: &str, body: Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self
                .call(
                    key,
                    reqwest::Method::POST,
                    "/v1/services",
                    Some(body.clone()),
                )
                .await;
            match answer {
                Some((201, v)) => return v["service"]["id"].as_str().unwrap().to_owned(),
                Some((503, _)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("create {body}: {other:?}\n{}", self.log_tails()),
            }
        }
    }

    /// `GET /v1/services/{id}/instances` with `key`.
    pub async fn instances(&self, key: &str, service: &str) -> Vec<Value> {
        let path = format!("/v1/services/{service}/instances");
        match self.call(key, reqwest::Method::GET, &path, None).await {
            Some((200, Value::Array(v))) => v,
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// Every event of the service as the log holds it, as JSON
    /// (`{"type": …, "data": {…}}`): fields the test's build of the
    /// schemas does not know yet are read all the same.
    pub async fn service_events(&self, service: &str) -> Vec<Value> {
        let id: ServiceId = service.parse().unwrap();
        let loaded = self.store().load(&AggregateId::Service(id)).await.unwrap();
        loaded
            .events
            .iter()
            .map(|e| serde_json::to_value(&e.event).unwrap())
            .collect()
    }

    /// Lines of the service's kept output (`GET /v1/logs`, newest first,
    /// at most 100) containing `text`, as `key`'s owner `owner` reads them.
    pub async fn log_lines(
        &self,
        key: &str,
        owner: &str,
        service: &str,
        text: &str,
    ) -> Result<Vec<String>> {
        let mut query = vec![("ownerId", owner), ("resource", service), ("limit", "100")];
        if !text.is_empty() {
            query.push(("text", text));
        }
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let url = format!(
            "http://127.0.0.1:{}/v1/logs?{}",
            self.api_port,
            query.join("&")
        );
        let resp = self
            .http
            .get(url)
            .bearer_auth(key)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = serde_json::from_str(&text)?;
        if !status.is_success() {
            bail!("GET /v1/logs: {status} {v}");
        }
        Ok(v["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["message"].as_str().map(str::to_owned))
            .collect())
    }

    /// A store over the installation's log (for another owner's
    /// bootstrap, say).
    pub fn store(&self) -> &EventStore {
        self.store.as_ref().expect("the API is up")
    }
}

/// The `instance_started` events (their `data`) of `events`.
pub fn started(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "instance_started")
        .map(|e| &e["data"])
        .collect()
}

/// A service create body for the busybox test image: `script` run by
/// `sh` (from the env var `SCRIPT`, so it needs no quoting), `env` added.
pub fn service_body(
    kind: &str,
    name: &str,
    image: &str,
    plan: &str,
    script: &str,
    env: &[(&str, &str)],
) -> Value {
    let mut vars = vec![json!({"key": "SCRIPT", "value": script})];
    vars.extend(env.iter().map(|(k, v)| json!({"key": k, "value": v})));
    json!({
        "type": kind,
        "name": name,
        "image": {"imagePath": image},
        "envVars": vars,
        "serviceDetails": {
            "plan": plan,
            "numInstances": 1,
            "envSpecificDetails": {"dockerCommand": "sh -c 'eval \"$SCRIPT\"'"},
        },
    })
}

//! Support for the CLI end-to-end tests: a `berth up` child with its own
//! API port, data dir and prefix (and cleanup of the containers it ran), and
//! a runner for `berth` client commands that captures what they print.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_tests::free_port;
use berth_tests::layers::{self, Comp, Entry};
use berth_tests::registry::RegistryAuth;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub(crate) const BERTH: &str = env!("CARGO_BIN_EXE_berth");

pub(crate) use berth_tests::runc::{require_root_and_runc, runc_list};

/// Static busybox and a few applets; `marker` (in /etc/marker) makes
/// images with different digests.
pub(crate) fn busybox_image(marker: &str) -> berth_tests::image::Image {
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &bb).mode(0o755),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("etc"),
        Entry::file("etc/marker", marker.as_bytes()),
    ];
    for a in ["sh", "echo", "sleep", "true"] {
        entries.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    layers::image(vec![layers::layer(&entries, Comp::Gzip).unwrap()]).unwrap()
}

/// Stops `berth up` and removes any container or mount it left under `data`.
pub(crate) struct Cleanup {
    pub(crate) child: Option<Child>,
    pub(crate) data: PathBuf,
}

/// Where the node under `data` keeps its runc state.
pub(crate) fn runc_root(data: &Path) -> PathBuf {
    data.join("node/agent/runc")
}

/// Processes whose command line names `path` (the nats-server a killed
/// `berth up` started for this data dir outlives it).
pub(crate) fn processes_naming(path: &Path) -> Vec<i32> {
    let want = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&want))
                .unwrap_or(false)
        })
        .collect()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(id) = self.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(id as i32), Signal::SIGKILL);
        }
        // berth up killed at once leaves the nats-server it started.
        for pid in processes_naming(&self.data.join("nats-server.conf")) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        berth_tests::runc::remove_leftovers(&runc_root(&self.data), &self.data);
        berth_tests::node::remove_alias(&self.data.join("node"));
        berth_tests::net::remove_network(
            &berth_tests::net::subnet_for(&self.data),
            Some(&self.data.join("node/agent/net")),
        );
    }
}

/// How to run the CLI against this installation.
#[derive(Clone)]
pub(crate) struct Cli {
    pub(crate) data: PathBuf,
    pub(crate) nats_url: String,
    pub(crate) prefix: String,
}

pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Cli {
    pub(crate) async fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Out {
        let mut c = berth(&self.data, &self.nats_url, &self.prefix);
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let t0 = Instant::now();
        let mut child = c.spawn().unwrap();
        if let Some(input) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(input.as_bytes()).await.unwrap();
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("berth {args:?} did not finish in 180 s"))
            .unwrap();
        if t0.elapsed() > Duration::from_secs(3) {
            println!("(berth {args:?} took {:.1?})", t0.elapsed());
        }
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[], None).await
    }

    /// Runs and expects exit 0.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "berth {args:?}: {out:?}");
        out.stdout
    }

    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} --json: {e}: {text}"))
    }
}

/// The runtime dir (`XDG_RUNTIME_DIR`) of the test that keeps its data in
/// `data`: beside it, so the `berth up` of one test records itself where
/// no other test, and no real installation, looks.
pub(crate) fn runtime_dir(data: &Path) -> PathBuf {
    data.with_file_name("run")
}

/// `berth` with a clean environment aimed at one installation (data dir,
/// NATS server, subject prefix, runtime dir), killed when dropped.
pub(crate) fn berth(data: &Path, nats_url: &str, prefix: &str) -> Command {
    let mut c = Command::new(BERTH);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BERTH_DATA_DIR", data)
        .env("XDG_RUNTIME_DIR", runtime_dir(data))
        .env("BERTH_NATS_URL", nats_url)
        .env("BERTH_SUBJECT_PREFIX", prefix)
        .env("BERTH_NODE_SUBNET", berth_tests::net::subnet_for(data))
        .kill_on_drop(true);
    c
}

/// Spawns a long-running `berth` (`up`, `run node`) with its stderr on the
/// test's; the caller reads (or drains) its stdout lines.
pub(crate) fn spawn_server(mut c: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, out)
}

pub(crate) async fn start_up(data: &Path, nats_url: &str, prefix: &str, api_port: u16) -> Child {
    start_up_with(data, nats_url, prefix, api_port, &[]).await
}

/// [`start_up`] with settings of the test's own in its environment.
pub(crate) async fn start_up_with(
    data: &Path,
    nats_url: &str,
    prefix: &str,
    api_port: u16,
    env: &[(&str, &str)],
) -> Child {
    let mut c = berth(data, nats_url, prefix);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("BERTH_HTTP_ADDR", "127.0.0.1:0")
        .env("BERTH_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_NODE_NAME", "cli-node")
        .env("BERTH_NODE_PORTS", {
            let ports = berth_tests::node_ports();
            format!("{}-{}", ports.start(), ports.end())
        })
        .env("BERTH_NODE_CPU_MILLIS", "4000")
        .env("BERTH_NODE_MEMORY_MIB", "4096")
        .env("BERTH_NODE_HEARTBEAT_MS", "200")
        .env("BERTH_SHUTDOWN_GRACE_SECS", "10")
        .env("BERTH_LOG", "warn")
        .arg("up");
    let (child, mut out) = spawn_server(c);
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.trim().starts_with("components:") {
                return;
            }
        }
        panic!("berth up exited before printing its summary");
    })
    .await
    .expect("berth up did not start in 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    // The summary can come before the API listens.
    eventually("the API to listen", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .is_ok()
    })
    .await;
    child
}

/// Polls `check` until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A nats-server, an anonymous registry, and a `berth up` using them.
pub(crate) struct Setup {
    pub(crate) registry: berth_tests::registry::Registry,
    pub(crate) cli: Cli,
    pub(crate) api_url: String,
    // Dropped in this order: berth up and its containers, then the dirs.
    pub(crate) cleanup: Cleanup,
    /// A server the test started; `None` when `berth up` started its own
    /// (with a NATS user per role; it stops it on the way out).
    _nats: Option<berth_tests::NatsServer>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Pushes the busybox test image marked `tag` as `repo:tag` to the
    /// test's registry; the reference to deploy it by.
    pub(crate) async fn push(&self, repo: &str, tag: &str) -> String {
        self.registry
            .push_image(repo, tag, &busybox_image(tag))
            .await
            .unwrap();
        format!("{}/{repo}:{tag}", self.registry.host)
    }

    /// `berth up` as a new user runs it: it starts its own nats-server
    /// (the modern one on PATH) with users and permissions; anonymous
    /// registry.
    pub(crate) async fn start() -> Self {
        Self::start_on(None, RegistryAuth::None, &[]).await
    }

    /// [`Setup::start`] with settings of the test's own (`BERTH_…`).
    pub(crate) async fn start_env(env: &[(&str, &str)]) -> Self {
        Self::start_on(None, RegistryAuth::None, env).await
    }

    /// `berth up` on a running, anonymous nats-server of `version`.
    pub(crate) async fn start_with(version: berth_tests::NatsVersion, auth: RegistryAuth) -> Self {
        let nats = berth_tests::NatsServer::start(version).unwrap();
        Self::start_on(Some(nats), auth, &[]).await
    }

    async fn start_on(
        nats: Option<berth_tests::NatsServer>,
        auth: RegistryAuth,
        env: &[(&str, &str)],
    ) -> Self {
        require_root_and_runc();
        let nats_url = match &nats {
            Some(n) => n.url(),
            None => format!("nats://127.0.0.1:{}", free_port()),
        };
        let prefix = berth_tests::unique_prefix();
        let registry = berth_tests::registry::Registry::start(auth).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let api_port = free_port();
        let mut cleanup = Cleanup {
            child: None,
            data: data.clone(),
        };
        cleanup.child = Some(start_up_with(&data, &nats_url, &prefix, api_port, env).await);
        Self {
            registry,
            cli: Cli {
                data,
                nats_url,
                prefix,
            },
            api_url: format!("http://127.0.0.1:{api_port}"),
            cleanup,
            _nats: nats,
            _dir: dir,
        }
    }

    /// SIGTERM to `berth up`, waiting for it to exit. On a server `berth
    /// up` started, no component may have been refused anything: each
    /// role's permissions cover all it does.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.cleanup.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        }
        if self._nats.is_none() {
            let log =
                std::fs::read_to_string(self.cli.data.join("nats-server.log")).unwrap_or_default();
            let refused: Vec<&str> = log
                .lines()
                // `Publish Violation`, `Subscription Violation`.
                .filter(|l| l.contains(" Violation - "))
                // Integrations are refused on purpose by the tests.
                .filter(|l| !l.contains("user:int-"))
                .collect();
            assert!(
                refused.is_empty(),
                "berth's own components were refused:\n{}",
                refused.join("\n")
            );
        }
    }
}

/// Every event of one aggregate.
pub(crate) async fn events_of(
    store: &berth_eventlog::EventStore,
    id: berth_schemas::AggregateId,
) -> Vec<berth_schemas::Envelope> {
    store.load(&id).await.unwrap().events
}

/// Polls `check` every 50 ms until it holds or `within` passes.
/// The id of the node keeping its state under `data`, once it wrote it.
pub(crate) async fn node_id(data: &Path) -> berth_schemas::ids::NodeId {
    let id_file = data.join("node/node-id");
    wait_for("node id file", Duration::from_secs(30), async || {
        id_file.exists()
    })
    .await;
    std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub(crate) async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

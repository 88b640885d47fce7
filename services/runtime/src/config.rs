//! Configuration shared by every berth binary.
//!
//! Raw values come from flags or `BERTH_*` environment variables (clap derive,
//! `env` on every field) as plain strings, so that *every* problem is found by
//! [`RawConfig::validate`] in one pass and reported together, before any port
//! is bound. Mains map a [`ConfigError`] to exit code 64.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
use berth_schemas::subjects::Subjects;

use crate::egress::{self, AddressPolicy};
use crate::local_nats::SyncInterval;

/// Options every berth binary accepts, as given (not yet validated).
#[derive(Debug, Clone, clap::Args)]
pub struct RawConfig {
    /// Directory for local state: the secret key, a local nats-server's store.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./.berth")]
    pub data_dir: String,

    /// NATS server URL(s), comma separated, each with a scheme (`nats://host:port`).
    #[arg(
        long,
        help_heading = "NATS",
        env = "BERTH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// File with this process's NATS credentials (JSON: user, password,
    /// inbox prefix; mode 0600). `berth up` generates one per role under
    /// `<data dir>/nats-creds/` for a nats-server it starts.
    #[arg(long, help_heading = "NATS", env = "BERTH_NATS_CREDS")]
    pub nats_creds: Option<String>,

    /// Prefix of every subject and stream name (lets installations share an account).
    #[arg(
        long,
        help_heading = "NATS",
        env = "BERTH_SUBJECT_PREFIX",
        default_value = "berth"
    )]
    pub subject_prefix: String,

    /// Address of the health (`/healthz`) and metrics (`/metrics`) listener; port 0 picks one.
    #[arg(long, env = "BERTH_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: String,

    /// Seconds in-flight work gets to finish after SIGINT/SIGTERM.
    #[arg(long, env = "BERTH_SHUTDOWN_GRACE_SECS", default_value = "30")]
    pub shutdown_grace_secs: String,

    /// Replicas of berth's streams: 1 on a single server, 3 on a cluster
    /// (replicated streams need nats-server 2.11 or newer).
    #[arg(
        long,
        help_heading = "NATS",
        env = "BERTH_REPLICAS",
        default_value = "1"
    )]
    pub replicas: String,

    /// Internal addresses that registry hosts and notification endpoints
    /// named by owners may be: comma list of `loopback`, `private`,
    /// `link-local`, or `none` [default: `loopback` for `berth up`, `none`
    /// for `berth run`].
    #[arg(long, env = "BERTH_ALLOW_TARGETS")]
    pub allow_targets: Option<String>,

    /// Log format: `pretty` or `json`.
    #[arg(long, env = "BERTH_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,

    /// Log filter (tracing env-filter syntax); `RUST_LOG` is used when unset.
    #[arg(long, env = "BERTH_LOG")]
    pub log: Option<String>,

    /// How often a nats-server berth starts fsyncs JetStream writes: `always`
    /// (an acknowledged write is on disk) or an interval such as `2m` (faster;
    /// a machine crash loses what was acknowledged since the last sync).
    /// A server berth did not start keeps its own `sync_interval`.
    #[arg(
        long,
        help_heading = "NATS",
        env = "BERTH_NATS_SYNC_INTERVAL",
        default_value = "always"
    )]
    pub nats_sync_interval: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Pretty,
    /// One JSON object per line, for collectors.
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Servers to connect to (at least one).
    pub nats_servers: Vec<ServerAddr>,
    /// The URL as given, for messages.
    pub nats_url: String,
    /// `BERTH_NATS_CREDS`: the credentials file to connect with.
    pub nats_creds: Option<PathBuf>,
    /// Local state directory.
    pub data_dir: PathBuf,
    /// Subject and stream names.
    pub subjects: Subjects,
    /// Health/metrics listener address.
    pub http_addr: SocketAddr,
    /// Grace period for shutdown.
    pub shutdown_grace: Duration,
    /// Stream replicas (1, 3 or 5).
    pub replicas: usize,
    /// `BERTH_ALLOW_TARGETS` when set; `None` leaves the choice to the
    /// binary (one machine or many).
    pub allow_targets: Option<AddressPolicy>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive, if given (`BERTH_LOG`, else `RUST_LOG`, else `info`).
    pub log_filter: String,
    /// JetStream's fsync policy on a nats-server berth starts.
    pub nats_sync: SyncInterval,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Environment variable (the flag is its lowercase, dashed form).
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Everything wrong with a configuration; the caller's fault, never retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Each problem found (never empty).
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.setting, p.message)?;
        }
        Ok(())
    }
}

/// Collects problems so one run reports all of them.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigProblem>);

impl Problems {
    /// Records a problem with `setting`.
    pub fn add(&mut self, setting: &'static str, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            setting,
            message: message.into(),
        });
    }

    /// `Ok(value)` when nothing was recorded and there is a value.
    pub fn finish<T>(mut self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => {
                if self.0.is_empty() {
                    self.add("config", "incomplete configuration");
                }
                Err(ConfigError { problems: self.0 })
            }
        }
    }

    /// Problems so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl RawConfig {
    /// Checks everything, reporting every problem at once.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let config = self.validate_into(&mut problems);
        problems.finish(config)
    }

    /// Validates into `problems` so callers with more settings (a binary's own)
    /// can report theirs in the same list. `None` when anything was wrong.
    pub fn validate_into(&self, problems: &mut Problems) -> Option<Config> {
        let nats_servers = parse_nats_urls(&self.nats_url)
            .map_err(|m| problems.add("BERTH_NATS_URL", m))
            .ok();
        let data_dir = if self.data_dir.trim().is_empty() {
            problems.add("BERTH_DATA_DIR", "must not be empty");
            None
        } else {
            Some(PathBuf::from(&self.data_dir))
        };
        let subjects = Subjects::new(&self.subject_prefix)
            .map_err(|e| problems.add("BERTH_SUBJECT_PREFIX", e.to_string()))
            .ok();
        let http_addr = self
            .http_addr
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.add(
                    "BERTH_HTTP_ADDR",
                    format!("{:?} is not an IP:port address", self.http_addr),
                )
            })
            .ok();
        let shutdown_grace = match self.shutdown_grace_secs.trim().parse::<u64>() {
            Ok(s) if (1..=3600).contains(&s) => Some(Duration::from_secs(s)),
            _ => {
                problems.add(
                    "BERTH_SHUTDOWN_GRACE_SECS",
                    format!(
                        "{:?} is not a whole number of seconds in 1..=3600",
                        self.shutdown_grace_secs
                    ),
                );
                None
            }
        };
        let replicas = match self.replicas.trim().parse::<usize>() {
            Ok(r @ (1 | 3 | 5)) => Some(r),
            _ => {
                problems.add(
                    "BERTH_REPLICAS",
                    format!("{:?} is not one of: 1, 3, 5", self.replicas),
                );
                None
            }
        };
        let allow_targets = match self.allow_targets.as_deref().map(AddressPolicy::parse) {
            None => Some(None),
            Some(Ok(policy)) => Some(Some(policy)),
            Some(Err(m)) => {
                problems.add(egress::SETTING, m);
                None
            }
        };
        let log_format = match self.log_format.trim() {
            "pretty" | "text" => Some(LogFormat::Pretty),
            "json" => Some(LogFormat::Json),
            other => {
                problems.add(
                    "BERTH_LOG_FORMAT",
                    format!("{other:?} is not one of: pretty, json"),
                );
                None
            }
        };
        let log_filter = self
            .log
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
            .unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            problems.add("BERTH_LOG", format!("{log_filter:?}: {e}"));
        }
        let nats_sync = SyncInterval::parse(&self.nats_sync_interval)
            .map_err(|m| problems.add("BERTH_NATS_SYNC_INTERVAL", m))
            .ok();
        Some(Config {
            nats_servers: nats_servers?,
            nats_url: self.nats_url.clone(),
            nats_creds: self
                .nats_creds
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            data_dir: data_dir?,
            subjects: subjects?,
            http_addr: http_addr?,
            shutdown_grace: shutdown_grace?,
            replicas: replicas?,
            allow_targets: allow_targets?,
            log_format: log_format?,
            log_filter,
            nats_sync: nats_sync?,
        })
    }
}

/// The problem with setting `var` to `url` when it must be an `http(s)://`
/// URL (where clients or web services are reached); none when unset.
pub fn http_url_problem(var: &str, url: Option<&str>) -> Option<String> {
    let url = url?;
    (!(url.starts_with("http://") || url.starts_with("https://")))
        .then(|| format!("{var} must start with http:// or https://"))
}

/// Parses a comma-separated list of NATS URLs. Unlike async-nats we insist on
/// a scheme: `garbage` would otherwise silently mean `nats://garbage:4222`.
pub fn parse_nats_urls(s: &str) -> Result<Vec<ServerAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("{s:?} contains an empty URL"));
        }
        if !part.contains("://") {
            return Err(format!(
                "{part:?} is not a NATS URL (expected nats://host:port)"
            ));
        }
        if part
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or_default().contains('@'))
        {
            // Never echoed: the part holds a password.
            return Err(
                "a NATS URL must not carry a user or password: put them in a \
                        credentials file named by BERTH_NATS_CREDS"
                    .to_owned(),
            );
        }
        let addr: ServerAddr = part
            .parse()
            .map_err(|e| format!("{part:?} is not a NATS URL: {e}"))?;
        if addr.host().is_empty() {
            return Err(format!("{part:?} has no host"));
        }
        out.push(addr);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        raw: RawConfig,
    }

    fn raw(args: &[&str]) -> RawConfig {
        let mut v = vec!["x"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v) {
            Ok(c) => c.raw,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = raw(&[]).validate();
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn nats_sync_defaults_to_always_and_takes_durations() {
        let sync = |v: Option<&str>| {
            let arg = v.map(|v| format!("--nats-sync-interval={v}"));
            raw(arg.as_deref().as_slice())
                .validate()
                .map(|c| c.nats_sync)
        };
        assert_eq!(sync(None), Ok(SyncInterval::Always));
        assert_eq!(
            sync(Some("2m")),
            Ok(SyncInterval::Every(Duration::from_secs(120)))
        );
        for bad in ["", "never", "0s", "2", "2 m", "-1s", "2d", "61m", "1.5s"] {
            let Err(e) = sync(Some(bad)) else {
                unreachable!("{bad:?} accepted")
            };
            assert_eq!(e.problems[0].setting, "BERTH_NATS_SYNC_INTERVAL", "{bad:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let r = raw(&[
            "--nats-url",
            "garbage",
            "--http-addr",
            "nope",
            "--subject-prefix",
            "UP",
            "--shutdown-grace-secs",
            "0",
            "--replicas",
            "2",
            "--log-format",
            "xml",
            "--nats-sync-interval",
            "sometimes",
        ]);
        let Err(e) = r.validate() else {
            unreachable!("garbage config accepted")
        };
        let settings: Vec<_> = e.problems.iter().map(|p| p.setting).collect();
        assert_eq!(
            settings,
            [
                "BERTH_NATS_URL",
                "BERTH_SUBJECT_PREFIX",
                "BERTH_HTTP_ADDR",
                "BERTH_SHUTDOWN_GRACE_SECS",
                "BERTH_REPLICAS",
                "BERTH_LOG_FORMAT",
                "BERTH_NATS_SYNC_INTERVAL"
            ]
        );
    }

    #[test]
    fn http_url_settings_must_name_http_or_https() {
        assert_eq!(http_url_problem("X_URL", None), None);
        assert_eq!(
            http_url_problem("X_URL", Some("https://apps.example.com")),
            None
        );
        assert_eq!(
            http_url_problem("X_URL", Some("http://localhost:8080")),
            None
        );
        assert_eq!(
            http_url_problem("X_URL", Some("apps.example.com")).as_deref(),
            Some("X_URL must start with http:// or https://")
        );
    }

    #[test]
    fn nats_urls() {
        assert!(parse_nats_urls("nats://127.0.0.1:4222").is_ok());
        assert_eq!(
            parse_nats_urls("nats://a:1, nats://b:2").map(|v| v.len()),
            Ok(2)
        );
        assert!(parse_nats_urls("garbage").is_err());
        let err = parse_nats_urls("nats://u:s3cret@h:1").err();
        assert!(
            err.as_ref().is_some_and(|e| !e.contains("s3cret")),
            "{err:?}"
        );
        assert!(parse_nats_urls("http://x:1").is_err());
        assert!(parse_nats_urls("nats://a:1,").is_err());
    }

    #[test]
    fn allowed_targets_are_left_to_the_binary_unless_set() {
        let targets = |args: &[&str]| raw(args).validate().map(|c| c.allow_targets);
        assert_eq!(targets(&[]), Ok(None));
        assert_eq!(
            targets(&["--allow-targets", "private,loopback"]),
            Ok(Some(AddressPolicy {
                allow_loopback: true,
                allow_private: true,
                allow_link_local: false
            }))
        );
        assert_eq!(
            targets(&["--allow-targets", "none"]),
            Ok(Some(AddressPolicy::PUBLIC_ONLY))
        );
        let Err(e) = targets(&["--allow-targets", "loopback,intranet"]) else {
            unreachable!("an unknown word accepted")
        };
        assert_eq!(e.problems[0].setting, "BERTH_ALLOW_TARGETS");
        assert!(e.problems[0].message.contains("\"intranet\""), "{e}");
    }
}

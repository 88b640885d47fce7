//! The router's settings (`BERTH_ROUTER_*`), validated together before any
//! port is bound (exit 64 on a problem, like every component).

use std::net::SocketAddr;
use std::time::Duration;

/// Router options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Where the router listens for public HTTP.
    #[arg(long, env = "BERTH_ROUTER_ADDR", default_value = "127.0.0.1:8080")]
    pub router_addr: String,

    /// Services answer at `<service-name>.<base-domain>`.
    #[arg(long, env = "BERTH_ROUTER_BASE_DOMAIN", default_value = "localhost")]
    pub router_base_domain: String,

    /// Milliseconds to wait for a TCP connect to an instance before trying
    /// another one.
    #[arg(long, env = "BERTH_ROUTER_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    pub router_connect_timeout_ms: u64,

    /// Instances tried for one request at most (a failed connect moves on).
    #[arg(long, env = "BERTH_ROUTER_MAX_ATTEMPTS", default_value_t = 3)]
    pub router_max_attempts: usize,

    /// Seconds an idle pooled connection to an instance is kept.
    #[arg(long, env = "BERTH_ROUTER_POOL_IDLE_SECS", default_value_t = 30)]
    pub router_pool_idle_secs: u64,

    /// Seconds an instance has to start answering a request (status and
    /// headers; the body may then stream for as long as it takes) before
    /// the client gets a 504. 0: no limit.
    #[arg(
        long,
        env = "BERTH_ROUTER_RESPONSE_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub router_response_timeout_secs: u64,

    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "BERTH_ROUTER_DRAIN_SECS", default_value_t = 30)]
    pub router_drain_secs: u64,

    /// Milliseconds between samples of each service's requests (counts by
    /// status class, latency; kept a day by the metrics stream); 0: none.
    #[arg(long, env = "BERTH_ROUTER_METRICS_MS", default_value_t = 15_000)]
    pub router_metrics_ms: u64,

    /// Threads serving requests, each with its own event loop and pool of
    /// connections to instances (as nginx's worker processes); 0: one per
    /// CPU.
    #[arg(long, env = "BERTH_ROUTER_WORKERS", default_value_t = 0)]
    pub router_workers: usize,

    /// One log line per request (target `berth::access`: service, method,
    /// path without the query, status, bytes, time to the head and in
    /// all, client, request id).
    #[arg(
        long,
        env = "BERTH_ROUTER_ACCESS_LOG",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub router_access_log: bool,

    /// Seconds a client has to send a request's headers before its
    /// connection is closed (slow clients).
    #[arg(long, env = "BERTH_ROUTER_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub router_header_timeout_secs: u64,
}

impl Default for RouterArgs {
    fn default() -> Self {
        RouterArgs {
            router_addr: "127.0.0.1:8080".to_owned(),
            router_base_domain: "localhost".to_owned(),
            router_connect_timeout_ms: 2000,
            router_max_attempts: 3,
            router_pool_idle_secs: 30,
            router_response_timeout_secs: 300,
            router_drain_secs: 30,
            router_metrics_ms: 15_000,
            router_workers: 0,
            router_access_log: true,
            router_header_timeout_secs: 30,
        }
    }
}

/// Validated router options.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Listen address.
    pub addr: SocketAddr,
    /// Lower-case base domain, without leading or trailing dots.
    pub base_domain: String,
    /// Connect timeout per instance.
    pub connect_timeout: Duration,
    /// Instances tried per request (>= 1).
    pub max_attempts: usize,
    /// Idle time of pooled connections.
    pub pool_idle: Duration,
    /// Time an instance has to start answering; `None`: no limit.
    pub response_timeout: Option<Duration>,
    /// Between request samples; `None`: none published.
    pub metrics_interval: Option<Duration>,
    /// Grace period for in-flight requests on shutdown.
    pub drain: Duration,
    /// Threads serving requests (>= 1).
    pub workers: usize,
    /// Whether each request is logged.
    pub access_log: bool,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
}

impl RouterArgs {
    /// Checks every option; returns all problems at once.
    pub fn validate(&self) -> Result<RouterOptions, Vec<String>> {
        let mut problems = Vec::new();
        let addr = match self.router_addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "BERTH_ROUTER_ADDR must be ip:port, got {:?}",
                    self.router_addr
                ));
                None
            }
        };
        let base_domain = self
            .router_base_domain
            .trim_matches('.')
            .to_ascii_lowercase();
        // Lower-cased above, so each label must pass as a service name does.
        let label_ok = |l: &str| berth_domain::service::validate::name(l).is_ok();
        if base_domain.is_empty() || !base_domain.split('.').all(label_ok) {
            problems.push(format!(
                "BERTH_ROUTER_BASE_DOMAIN must be a DNS name, got {:?}",
                self.router_base_domain
            ));
        }
        if self.router_connect_timeout_ms == 0 {
            problems.push("BERTH_ROUTER_CONNECT_TIMEOUT_MS must be > 0".to_owned());
        }
        if self.router_metrics_ms != 0 && !(1_000..=30_000).contains(&self.router_metrics_ms) {
            problems.push(
                "BERTH_ROUTER_METRICS_MS must be 0 (off) or 1000-30000 (a sample at least every 30 s)"
                    .to_owned(),
            );
        }
        if self.router_max_attempts == 0 || self.router_max_attempts > 10 {
            problems.push("BERTH_ROUTER_MAX_ATTEMPTS must be 1-10".to_owned());
        }
        if self.router_workers > 256 {
            problems.push("BERTH_ROUTER_WORKERS must be 0 (one per CPU) to 256".to_owned());
        }
        if !(1..=3600).contains(&self.router_header_timeout_secs) {
            problems.push("BERTH_ROUTER_HEADER_TIMEOUT_SECS must be 1-3600".to_owned());
        }
        let workers = match self.router_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        match (addr, problems.is_empty()) {
            (Some(addr), true) => Ok(RouterOptions {
                addr,
                base_domain,
                connect_timeout: Duration::from_millis(self.router_connect_timeout_ms),
                max_attempts: self.router_max_attempts,
                pool_idle: Duration::from_secs(self.router_pool_idle_secs),
                response_timeout: (self.router_response_timeout_secs > 0)
                    .then(|| Duration::from_secs(self.router_response_timeout_secs)),
                drain: Duration::from_secs(self.router_drain_secs),
                metrics_interval: (self.router_metrics_ms > 0)
                    .then(|| Duration::from_millis(self.router_metrics_ms)),
                workers,
                access_log: self.router_access_log,
                header_timeout: Duration::from_secs(self.router_header_timeout_secs),
            }),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let o = RouterArgs::default().validate().map_err(|p| p.join("; "));
        let o = o.unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(o.base_domain, "localhost");
        assert_eq!(o.addr.port(), 8080);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let args = RouterArgs {
            router_addr: "nope".to_owned(),
            router_base_domain: "a..b".to_owned(),
            router_max_attempts: 0,
            ..RouterArgs::default()
        };
        let problems = args.validate().err().unwrap_or_default();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn base_domain_is_normalised() {
        let args = RouterArgs {
            router_base_domain: ".Apps.Example.COM.".to_owned(),
            ..RouterArgs::default()
        };
        let o = args.validate().map_err(|p| p.join("; "));
        assert_eq!(
            o.map(|o| o.base_domain).ok().as_deref(),
            Some("apps.example.com")
        );
    }
}

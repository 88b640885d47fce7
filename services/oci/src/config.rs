//! Knobs of the registry client. Defaults are SPEC values (10 s backoff
//! doubling to 5 min, 10 GB size limit); tests shrink them.

use std::time::Duration;

use berth_runtime::egress::AddressPolicy;

/// Retry policy for transient registry failures (connect errors, timeouts,
/// 5xx, 429): wait `initial_backoff`, doubling up to `max_backoff`, or longer
/// when the registry sends `Retry-After`; give up once the next wait would
/// end after `max_total` from the first attempt.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First wait (SPEC: 10 s).
    pub initial_backoff: Duration,
    /// Cap for the doubling (SPEC: 5 min).
    pub max_backoff: Duration,
    /// Bound on the whole operation including waits.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            // 10+20+40+80+160+300 s of waiting: six retries.
            max_total: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// Millisecond-scale policy for tests.
    pub fn fast() -> Self {
        Self {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_total: Duration::from_secs(2),
        }
    }
}

/// Registry client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Hosts (`host` or `host:port`) spoken to over plain http. Loopback
    /// addresses and `localhost` are always plain http.
    pub insecure_hosts: Vec<String>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Largest accepted compressed image (config + layers). SPEC: 10 GB.
    pub max_image_size: u64,
    /// Largest manifest or image config body read from a registry; registry
    /// answers are hostile input.
    pub max_manifest_bytes: usize,
    /// TCP connect timeout per request.
    pub connect_timeout: Duration,
    /// Whole-request timeout for manifest/token requests.
    pub request_timeout: Duration,
    /// A blob stream that yields nothing for this long fails (SPEC §8: 60 s).
    pub stall_timeout: Duration,
    /// Sent as `User-Agent`.
    pub user_agent: String,
    /// Internal addresses registry hosts (and the token services and
    /// redirects they name) may be. The default allows loopback only: local
    /// test registries work, the metadata service and private networks do
    /// not; the binary sets what `BERTH_ALLOW_TARGETS` says.
    pub targets: AddressPolicy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            insecure_hosts: Vec::new(),
            retry: RetryPolicy::default(),
            max_image_size: 10_000_000_000,
            max_manifest_bytes: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).to_string(),
            targets: AddressPolicy::LOOPBACK,
        }
    }
}

impl ClientConfig {
    /// Whether `host` (as in an image reference, with port) is spoken to
    /// over plain http.
    pub fn is_insecure(&self, host: &str) -> bool {
        if self.insecure_hosts.iter().any(|h| h == host) {
            return true;
        }
        let bare = host_without_port(host);
        if bare == "localhost" {
            return true;
        }
        bare.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Parses a configured list of plain-http registry hosts (`host[:port]`
/// each), dropping blanks; `setting` names the option in the error.
pub fn parse_insecure_hosts(hosts: &[String], setting: &str) -> Result<Vec<String>, String> {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    match hosts
        .iter()
        .find(|h| h.contains('/') || h.contains(char::is_whitespace))
    {
        Some(bad) => Err(format!("{setting}: {bad:?} is not a host[:port]")),
        None => Ok(hosts),
    }
}

/// `host:port` → `host`, `[::1]:5000` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_hosts_are_plain_http() {
        let cfg = ClientConfig {
            insecure_hosts: vec!["registry.lan:5000".into()],
            ..ClientConfig::default()
        };
        assert!(cfg.is_insecure("localhost:5000"));
        assert!(cfg.is_insecure("127.0.0.1:41234"));
        assert!(cfg.is_insecure("[::1]:5000"));
        assert!(cfg.is_insecure("registry.lan:5000"));
        assert!(!cfg.is_insecure("registry.lan"));
        assert!(!cfg.is_insecure("ghcr.io"));
        assert!(!cfg.is_insecure("10.0.0.1:5000"));
    }
}

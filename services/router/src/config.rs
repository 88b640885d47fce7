//! The router's settings (`BERTH_ROUTER_*`), validated together before any
//! port is bound (exit 64 on a problem, like every component).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::OperatorCert;

/// Let's Encrypt's production directory: the CA when none is configured.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

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
    /// Seconds a client may keep a request body waiting for its next
    /// bytes before the request is cut off with `408` (slow or stalled
    /// uploads).
    #[arg(long, env = "BERTH_ROUTER_BODY_TIMEOUT_SECS", default_value_t = 60)]
    pub router_body_timeout_secs: u64,
    /// Seconds a write to a client may wait for the client to read before
    /// the connection is closed (clients that stop reading their answer).
    #[arg(long, env = "BERTH_ROUTER_SEND_TIMEOUT_SECS", default_value_t = 60)]
    pub router_send_timeout_secs: u64,
    /// Where the router listens for HTTPS (TLS, HTTP/2 and HTTP/1.1 by
    /// ALPN); unset: no HTTPS. Needs the installation's secret key (the
    /// certificate store seals private keys with it).
    #[arg(long, env = "BERTH_ROUTER_HTTPS_ADDR")]
    pub router_https_addr: Option<String>,

    /// PEM certificate chain of the operator's certificate for
    /// `<name>.<base-domain>` (a wildcard, typically); with
    /// BERTH_ROUTER_TLS_KEY.
    #[arg(long, env = "BERTH_ROUTER_TLS_CERT")]
    pub router_tls_cert: Option<PathBuf>,

    /// PEM private key of the operator's certificate.
    #[arg(long, env = "BERTH_ROUTER_TLS_KEY")]
    pub router_tls_key: Option<PathBuf>,

    /// Plain HTTP requests to a host the router holds a certificate for are
    /// redirected to HTTPS (except ACME HTTP-01 challenges).
    #[arg(
        long,
        env = "BERTH_ROUTER_HTTPS_REDIRECT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub router_https_redirect: bool,

    /// `Strict-Transport-Security: max-age=<this>` on HTTPS answers; 0: no
    /// header.
    #[arg(long, env = "BERTH_ROUTER_HSTS_MAX_AGE", default_value_t = 0)]
    pub router_hsts_max_age: u64,

    /// The ACME directory of the CA managed certificates come from.
    #[arg(long, env = "BERTH_ACME_DIRECTORY", default_value = LETS_ENCRYPT)]
    pub acme_directory: String,

    /// Contact address given to the CA for the ACME account.
    #[arg(long, env = "BERTH_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// A PEM root certificate to trust for the ACME directory instead of
    /// the system's (a private or test CA such as Pebble).
    #[arg(long, env = "BERTH_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,

    /// The proxies in front of the router (comma-separated address blocks,
    /// e.g. a load balancer's `10.0.0.0/8`): for a request from one of
    /// them, the client is the last address of its `X-Forwarded-For` that
    /// is not one of them — what services' IP allow lists are checked
    /// against. Empty: the client is who connected.
    #[arg(long, env = "BERTH_ROUTER_TRUSTED_PROXIES", default_value = "")]
    pub router_trusted_proxies: String,
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
            router_body_timeout_secs: 60,
            router_send_timeout_secs: 60,
            router_https_addr: None,
            router_tls_cert: None,
            router_tls_key: None,
            router_https_redirect: true,
            router_hsts_max_age: 0,
            acme_directory: LETS_ENCRYPT.to_owned(),
            acme_email: None,
            acme_ca_root: None,
            router_trusted_proxies: String::new(),
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
    /// Time a client may keep a request body waiting between two reads.
    pub body_timeout: Duration,
    /// Time a write to a client may wait for the client to read.
    pub send_timeout: Duration,
    /// The HTTPS side; `None`: plain HTTP only.
    pub https: Option<HttpsOptions>,
    /// The proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: std::sync::Arc<[berth_schemas::cidr::Cidr]>,
    /// Where managed certificates come from.
    pub acme: AcmeOptions,
}

/// The HTTPS listener's settings.
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    /// Listen address.
    pub addr: SocketAddr,
    /// The operator's certificate for `<name>.<base-domain>`, if given.
    pub operator: Option<OperatorCert>,
    /// Redirect plain HTTP to HTTPS for hosts with a certificate.
    pub redirect: bool,
    /// `Strict-Transport-Security` max-age; `None`: no header.
    pub hsts_max_age: Option<u64>,
}

/// The ACME settings of the certificate issuer.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// Directory URL of the CA.
    pub directory: String,
    /// Contact for the account.
    pub email: Option<String>,
    /// A root to trust for the directory's HTTPS instead of the system's.
    pub ca_root: Option<PathBuf>,
    /// First retry after a failure; doubles per attempt.
    pub retry_min: Duration,
    /// Longest wait between attempts.
    pub retry_max: Duration,
    /// How often held certificates are checked for renewal.
    pub check_every: Duration,
    /// How long the issuance lock is held without being refreshed (a dead
    /// replica's lock is taken over after this).
    pub lock_lease: Duration,
    /// How long the CA gets to validate an order and to issue.
    pub order_timeout: Duration,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        AcmeOptions {
            directory: LETS_ENCRYPT.to_owned(),
            email: None,
            ca_root: None,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            check_every: Duration::from_secs(3600),
            lock_lease: Duration::from_secs(300),
            order_timeout: Duration::from_secs(120),
        }
    }
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
        if !(1..=3600).contains(&self.router_body_timeout_secs) {
            problems.push("BERTH_ROUTER_BODY_TIMEOUT_SECS must be 1-3600".to_owned());
        }
        if !(1..=3600).contains(&self.router_send_timeout_secs) {
            problems.push("BERTH_ROUTER_SEND_TIMEOUT_SECS must be 1-3600".to_owned());
        }
        let workers = match self.router_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let https = self.https(&mut problems);
        let acme = self.acme(&mut problems);
        let mut trusted_proxies = Vec::new();
        for block in self
            .router_trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            match block.parse::<berth_schemas::cidr::Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(e) => problems.push(format!("BERTH_ROUTER_TRUSTED_PROXIES: {block:?}: {e}")),
            }
        }
        match (addr, problems.is_empty()) {
            (Some(addr), true) => Ok(RouterOptions {
                https,
                trusted_proxies: trusted_proxies.into(),
                acme,
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
                body_timeout: Duration::from_secs(self.router_body_timeout_secs),
                send_timeout: Duration::from_secs(self.router_send_timeout_secs),
            }),
            _ => Err(problems),
        }
    }
}

impl RouterArgs {
    fn https(&self, problems: &mut Vec<String>) -> Option<HttpsOptions> {
        let operator = match (&self.router_tls_cert, &self.router_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => match OperatorCert::load(cert, key) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(format!("BERTH_ROUTER_TLS_CERT/BERTH_ROUTER_TLS_KEY: {e}"));
                    None
                }
            },
            _ => {
                problems
                    .push("BERTH_ROUTER_TLS_CERT and BERTH_ROUTER_TLS_KEY go together".to_owned());
                None
            }
        };
        let Some(text) = &self.router_https_addr else {
            if operator.is_some() {
                problems.push(
                    "BERTH_ROUTER_TLS_CERT is set but BERTH_ROUTER_HTTPS_ADDR is not".to_owned(),
                );
            }
            return None;
        };
        let Ok(addr) = text.parse::<SocketAddr>() else {
            problems.push(format!(
                "BERTH_ROUTER_HTTPS_ADDR must be ip:port, got {text:?}"
            ));
            return None;
        };
        if self.router_addr.parse::<SocketAddr>().ok() == Some(addr) && addr.port() != 0 {
            problems.push("BERTH_ROUTER_HTTPS_ADDR must differ from BERTH_ROUTER_ADDR".to_owned());
        }
        // Two years is what HSTS preload lists ask for; more is a typo.
        if self.router_hsts_max_age > 2 * 31_536_000 {
            problems.push("BERTH_ROUTER_HSTS_MAX_AGE must be 0-63072000 seconds".to_owned());
        }
        Some(HttpsOptions {
            addr,
            operator,
            redirect: self.router_https_redirect,
            hsts_max_age: (self.router_hsts_max_age > 0).then_some(self.router_hsts_max_age),
        })
    }

    fn acme(&self, problems: &mut Vec<String>) -> AcmeOptions {
        let directory = self.acme_directory.trim().to_owned();
        let url_ok = directory
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
            && directory.parse::<http::Uri>().is_ok();
        if !url_ok {
            problems.push(format!(
                "BERTH_ACME_DIRECTORY must be an https:// URL, got {:?}",
                self.acme_directory
            ));
        }
        if let Some(email) = &self.acme_email {
            let ok = email
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
                && !email.contains(char::is_whitespace);
            if !ok {
                problems.push(format!(
                    "BERTH_ACME_EMAIL must be an email address, got {email:?}"
                ));
            }
        }
        if let Some(root) = &self.acme_ca_root {
            if let Err(e) = crate::tls::read_root(root) {
                problems.push(format!("BERTH_ACME_CA_ROOT: {e}"));
            }
        }
        AcmeOptions {
            directory,
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
            ..AcmeOptions::default()
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
    fn https_settings_are_checked() {
        let o = RouterArgs::default().validate().unwrap();
        assert!(o.https.is_none(), "HTTPS is off unless asked for");
        let args = RouterArgs {
            router_https_addr: Some("443".to_owned()),
            router_tls_cert: Some("/nonexistent/cert.pem".into()),
            acme_directory: "http://acme.example/dir".to_owned(),
            acme_email: Some("nobody".to_owned()),
            ..RouterArgs::default()
        };
        let problems = args.validate().err().unwrap_or_default();
        let text = problems.join("\n");
        for want in [
            "BERTH_ROUTER_HTTPS_ADDR must be ip:port",
            "go together",
            "BERTH_ACME_DIRECTORY must be an https:// URL",
            "BERTH_ACME_EMAIL",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let args = RouterArgs {
            router_https_addr: Some("127.0.0.1:8443".to_owned()),
            router_tls_cert: Some(cert),
            router_tls_key: Some(key),
            ..RouterArgs::default()
        };
        let problems = args.validate().err().unwrap_or_default().join("\n");
        assert!(problems.contains("no certificate"), "{problems}");
        assert!(
            !problems.contains("c2VjcmV0"),
            "key material in an error: {problems}"
        );

        let args = RouterArgs {
            router_https_addr: Some("127.0.0.1:8443".to_owned()),
            router_hsts_max_age: 31_536_000,
            ..RouterArgs::default()
        };
        let https = args.validate().unwrap().https.unwrap();
        assert_eq!(https.hsts_max_age, Some(31_536_000));
        assert!(https.redirect);
        assert!(https.operator.is_none());
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

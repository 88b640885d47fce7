//! # berth-api: the HTTP front door, deploy hooks and bus commands
//!
//! Operators, CI pipelines and internal services reach berth here (SPEC §6,
//! §12, §14). Every write goes through the `berth-ingress` application
//! layer (pure decision on one aggregate, appended with optimistic
//! concurrency); reads come from the aggregate itself or from this crate's
//! read model ([`index`]) folded from the log.
//!
//! - [`router`]: the Render-shaped JSON API under `/v1` (bearer API keys,
//!   owner isolation: another owner's resource is 404), the deploy hook
//!   under `/deploy/srv-…` and the OpenAPI document;
//! - [`hooks`]: deploy hooks, answered 200 only once the deploy is durable;
//! - `GET /v1/logs`: the kept output of the caller's services, from the
//!   logs stream this component provisions (`berth_eventlog::logs`), and
//!   `GET /v1/logs/subscribe`, its new lines live over a WebSocket
//!   ([`logtap`]);
//! - [`bus`]: `scale` / `restart` / `deploy` commands on the bus, validated
//!   by the same functions as the API, answered with errors as data;
//! - [`bootstrap`]: the first owner and API key of a fresh installation;
//! - [`guard`]: refused credentials answered from memory, failed
//!   authentication limited per client address;
//! - [`dashboard`]: the web dashboard at `/` of the same listener
//!   (sessions from API keys, pages over the same typed views and
//!   handlers, live updates over SSE);
//! - [`Api`]: the `api` component of `berth up`.

pub mod app;
pub mod bootstrap;
pub mod bus;
pub mod dashboard;
pub mod error;
pub mod guard;
pub mod hooks;
pub mod index;
pub mod logtap;
pub mod metrics;
pub mod openapi;
pub mod query;
mod routes;
pub mod views;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::response::IntoResponse;
use axum::Router;
use berth_eventlog::logs::LogLimits;
use berth_eventlog::start::until_available;
use berth_eventlog::EventStore;
use berth_ingress::terminal::TerminalLimits;
use berth_ingress::{IngressError, IngressOptions};
use berth_runtime::config::http_url_problem;
use berth_runtime::{BoxError, Component, ComponentContext, SecretKey};
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub use app::AppState;
pub use bootstrap::{bootstrap, bootstrap_store, Bootstrapped};
pub use error::ApiError;
pub use guard::FailureLimits;

/// The API's settings (flags or `BERTH_API_*` variables).
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address the HTTP API and deploy hooks listen on.
    #[arg(long, env = "BERTH_API_ADDR", default_value = "127.0.0.1:7000")]
    pub api_addr: SocketAddr,
    /// URL clients reach the API at (written to credentials.json); default
    /// `http://<api addr>`.
    #[arg(long, env = "BERTH_API_PUBLIC_URL")]
    pub api_public_url: Option<String>,
    /// Where web services are reachable, as `http(s)://<base-domain>[:port]`
    /// (a service answers with its name in front of the host); shown as
    /// their `url`. `berth up` derives it from the router's settings.
    #[arg(long, env = "BERTH_API_SERVICES_URL")]
    pub api_services_url: Option<String>,
    /// How long service creation waits for the resolver's image check, in seconds.
    #[arg(long, env = "BERTH_API_CHECK_TIMEOUT_SECS", default_value_t = 30)]
    pub api_check_timeout_secs: u64,
    /// Seconds a client gets to send a request's headers before its
    /// connection is closed (slow clients holding connections open); a
    /// kept-alive connection idle that long is closed too.
    #[arg(long, env = "BERTH_API_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub api_header_read_timeout_secs: u64,
    /// Failed authentications (bad API keys, bad deploy-hook calls) a client
    /// address may make at once before it is answered 429.
    #[arg(long, env = "BERTH_API_AUTH_FAILURE_BURST", default_value_t = 20)]
    pub api_auth_failure_burst: u32,
    /// Failed authentications a client address may make per minute after
    /// its burst.
    #[arg(long, env = "BERTH_API_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    pub api_auth_failures_per_minute: u32,
    /// Seconds a name claim or credential attachment that no service backs
    /// (left by an operation a crash interrupted) is left alone before it
    /// is given back: longer than any operation takes.
    #[arg(long, env = "BERTH_API_REPAIR_GRACE_SECS", default_value_t = 30)]
    pub api_repair_grace_secs: u64,
    /// Most bytes the metrics stream keeps (a day of samples, oldest
    /// dropped first when full).
    #[arg(long, env = "BERTH_API_METRICS_MAX_BYTES", default_value_t = 1 << 30)]
    pub api_metrics_max_bytes: i64,
    /// Hours instance log lines are kept.
    #[arg(long, env = "BERTH_API_LOGS_MAX_AGE_HOURS", default_value_t = 168)]
    pub api_logs_max_age_hours: u64,
    /// MiB of log lines kept per service, counted in lines of the largest
    /// size (16 KiB): the default keeps each service's newest 16,384 lines
    /// (see docs/logs.md).
    #[arg(long, env = "BERTH_API_LOGS_MIB_PER_SERVICE", default_value_t = 256)]
    pub api_logs_mib_per_service: u64,
    /// MiB of log lines kept in all, on each server holding a replica; the
    /// oldest lines of any service go first. 0: no bound but the
    /// per-service ones.
    #[arg(long, env = "BERTH_API_LOGS_MAX_MIB", default_value_t = 10240)]
    pub api_logs_max_mib: u64,
    /// Seconds a terminal in an instance (`berth shell`, the dashboard's)
    /// may go with nothing typed and nothing shown before it is closed.
    #[arg(long, env = "BERTH_API_TERMINAL_IDLE_SECS", default_value_t = 3600)]
    pub api_terminal_idle_secs: u64,
    /// Seconds a terminal may stay open in all.
    #[arg(long, env = "BERTH_API_TERMINAL_MAX_SECS", default_value_t = 43_200)]
    pub api_terminal_max_secs: u64,
    /// Seconds between the API's pings on a terminal's WebSocket; a
    /// client that sends nothing (not even the answer) for three of them
    /// is taken for gone and its terminal closed.
    #[arg(long, env = "BERTH_API_TERMINAL_PING_SECS", default_value_t = 15)]
    pub api_terminal_ping_secs: u64,
}

impl ApiArgs {
    /// The URL clients use.
    pub fn public_url(&self) -> String {
        self.api_public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.api_addr))
    }

    /// Checks the settings; returns every problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(1..=600).contains(&self.api_check_timeout_secs) {
            problems.push("BERTH_API_CHECK_TIMEOUT_SECS must be 1–600".to_owned());
        }
        if !(1..=300).contains(&self.api_header_read_timeout_secs) {
            problems.push("BERTH_API_HEADER_READ_TIMEOUT_SECS must be 1–300".to_owned());
        }
        if !(1..=10_000).contains(&self.api_auth_failure_burst) {
            problems.push("BERTH_API_AUTH_FAILURE_BURST must be 1–10000".to_owned());
        }
        if !(1..=60_000).contains(&self.api_auth_failures_per_minute) {
            problems.push("BERTH_API_AUTH_FAILURES_PER_MINUTE must be 1–60000".to_owned());
        }
        if !(1..=3600).contains(&self.api_repair_grace_secs) {
            problems.push("BERTH_API_REPAIR_GRACE_SECS must be 1–3600".to_owned());
        }
        if self.api_metrics_max_bytes < 1 << 20 {
            problems.push("BERTH_API_METRICS_MAX_BYTES must be at least 1 MiB".to_owned());
        }
        if !(1..=87_600).contains(&self.api_logs_max_age_hours) {
            problems.push("BERTH_API_LOGS_MAX_AGE_HOURS must be 1–87600".to_owned());
        }
        if !(1..=1 << 20).contains(&self.api_logs_mib_per_service) {
            problems.push("BERTH_API_LOGS_MIB_PER_SERVICE must be 1–1048576".to_owned());
        }
        if self.api_logs_max_mib > 1 << 30 {
            problems.push("BERTH_API_LOGS_MAX_MIB must be 0–1073741824".to_owned());
        }
        if !(1..=604_800).contains(&self.api_terminal_idle_secs) {
            problems.push("BERTH_API_TERMINAL_IDLE_SECS must be 1–604800".to_owned());
        }
        if !(1..=604_800).contains(&self.api_terminal_max_secs) {
            problems.push("BERTH_API_TERMINAL_MAX_SECS must be 1–604800".to_owned());
        }
        if !(1..=300).contains(&self.api_terminal_ping_secs) {
            problems.push("BERTH_API_TERMINAL_PING_SECS must be 1–300".to_owned());
        }
        let urls = [
            ("BERTH_API_SERVICES_URL", &self.api_services_url),
            ("BERTH_API_PUBLIC_URL", &self.api_public_url),
        ];
        problems.extend(
            urls.into_iter()
                .filter_map(|(var, u)| http_url_problem(var, u.as_deref())),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Where views link to.
    pub fn links(&self) -> views::Links {
        views::Links {
            dashboard: self.public_url(),
            services: self
                .api_services_url
                .clone()
                .unwrap_or_else(|| "http://localhost".to_owned()),
        }
    }

    /// How many failed authentications each client address may make.
    pub fn failure_limits(&self) -> FailureLimits {
        FailureLimits {
            burst: self.api_auth_failure_burst,
            per_minute: self.api_auth_failures_per_minute,
        }
    }

    /// How long a client may take to send a request's headers.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.api_header_read_timeout_secs)
    }

    /// What the logs stream keeps.
    pub fn log_limits(&self) -> LogLimits {
        LogLimits {
            max_age: Duration::from_secs(self.api_logs_max_age_hours * 3600),
            bytes_per_service: self.api_logs_mib_per_service << 20,
            max_bytes: (self.api_logs_max_mib > 0).then_some(self.api_logs_max_mib << 20),
        }
    }

    /// The application layer's options.
    pub fn ingress_options(&self) -> IngressOptions {
        let defaults = IngressOptions::default();
        IngressOptions {
            check_timeout: Duration::from_secs(self.api_check_timeout_secs),
            repair_grace: Duration::from_secs(self.api_repair_grace_secs),
            terminal: TerminalLimits {
                idle: Duration::from_secs(self.api_terminal_idle_secs),
                max: Duration::from_secs(self.api_terminal_max_secs),
                client_ping: Duration::from_secs(self.api_terminal_ping_secs),
            },
            base_domain: self
                .api_services_url
                .as_deref()
                .and_then(url_host)
                .unwrap_or(defaults.base_domain.clone()),
            ..defaults
        }
    }
}

/// The host of an `http(s)://host[:port][/…]` URL, in lower case.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Every route of the API: the table in [`openapi`], which the OpenAPI
/// document is made from too.
pub fn router(state: AppState) -> Router {
    openapi::add_routes(Router::new())
        .fallback(|uri: axum::http::Uri| async move {
            // The API's paths answer in its error shape; any other is a
            // page nothing serves.
            let p = uri.path();
            if p == "/v1" || p.starts_with("/v1/") || p.starts_with("/deploy/") {
                ApiError::not_found("route").into_response()
            } else {
                dashboard::not_found()
            }
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(app::MAX_BODY_BYTES))
        // A plain function over every answer, not axum's `map_response`
        // (which boxes a future per request: ~0.8 µs of a deploy hook's
        // ~46 µs of CPU).
        .layer(tower::util::MapResponseLayer::new(error::json_errors))
        .with_state(state)
}

/// Serves `state`'s API on `listener` until `shutdown`, then waits for the
/// requests in flight.
///
/// hyper's HTTP/1 connection rather than `axum::serve`, which offers no
/// header read timeout: a client gets `header_read_timeout` to send each
/// request's headers, so slow clients cannot hold connections open for
/// free. Each request carries its peer address ([`ConnectInfo`]), which
/// the failure limits are keyed by ([`guard`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let app = router(state);
    berth_runtime::http1::serve(
        listener,
        &shutdown,
        header_read_timeout,
        berth_runtime::http1::SEND_TIMEOUT,
        None,
        "api",
        move |peer| {
            let app = app.clone();
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            })
        },
    )
    .await;
    Ok(())
}

/// Why the API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// The read models could not be built.
    #[error(transparent)]
    Ingress(#[from] IngressError),
    /// The listener could not be bound or failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The bus command subscription failed.
    #[error("bus commands: {0}")]
    Bus(String),
    /// The logs stream could not be provisioned.
    #[error("logs stream: {0}")]
    Logs(#[from] berth_eventlog::StoreError),
    /// The metrics stream could not be provisioned.
    #[error("metrics stream: {0}")]
    Metrics(berth_eventlog::StoreError),
}

/// The `api` component: HTTP API, deploy hooks, bus commands.
#[derive(Debug)]
pub struct Api {
    store: EventStore,
    key: SecretKey,
    args: ApiArgs,
}

impl Api {
    /// An API over `store`, sealing secrets with `key`.
    pub fn new(store: EventStore, key: SecretKey, args: ApiArgs) -> Self {
        Self { store, key, args }
    }

    /// Runs until `shutdown`; sets `ready` once listening.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        ready: Option<berth_runtime::ReadyFlag>,
    ) -> Result<(), ApiStartError> {
        let logs = self.args.log_limits();
        // The streams and the read model wait for a log that cannot answer
        // yet (a NATS node restarting, no quorum) rather than stop.
        let provisioned = until_available(&shutdown, "logs stream not provisioned", || {
            self.store.provision_logs(&logs)
        });
        if provisioned.await?.is_none() {
            return Ok(());
        }
        tracing::info!(
            max_age_hours = self.args.api_logs_max_age_hours,
            lines_per_service = logs.lines_per_service(),
            max_mib = self.args.api_logs_max_mib,
            "instance logs kept"
        );
        let state = match AppState::start(
            self.store.clone(),
            self.key.clone(),
            self.args.ingress_options(),
            shutdown.clone(),
            &tracker,
        )
        .await
        {
            Ok(state) => state,
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        .with_failure_limits(self.args.failure_limits())
        .with_links(self.args.links());
        let metrics = until_available(&shutdown, "metrics stream not provisioned", || {
            metrics::ensure_stream(&self.store, self.args.api_metrics_max_bytes)
        });
        if metrics.await.map_err(ApiStartError::Metrics)?.is_none() {
            return Ok(());
        }
        let ingress = state.ingress.clone();
        let bus = bus::subscribe(&ingress)
            .await
            .map_err(|e| ApiStartError::Bus(e.to_string()))?;
        tracker.spawn(bus::serve(ingress, bus, shutdown.clone()));
        let addr = self.args.api_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiStartError::Listen { addr, source })?;
        tracing::info!(addr = %addr, "API listening");
        if let Some(r) = &ready {
            r.set(true);
        }
        let served = serve(listener, state, shutdown, self.args.header_read_timeout()).await;
        if let Some(r) = &ready {
            r.set(false);
        }
        served.map_err(|source| ApiStartError::Listen { addr, source })
    }
}

impl Component for Api {
    fn name(&self) -> &'static str {
        "api"
    }

    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move {
            (*self)
                .run(
                    ctx.shutdown.clone(),
                    ctx.tracker.clone(),
                    Some(ctx.ready.clone()),
                )
                .await
                .map_err(|e| Box::new(e) as BoxError)
        })
    }
}

/// The `api` component for `berth up` / `berth run api`.
pub fn component(store: EventStore, key: SecretKey, args: ApiArgs) -> Box<dyn Component> {
    Box::new(Api::new(store, key, args))
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn the_base_domain_is_the_services_url_host() {
        for (url, want) in [
            ("http://apps.example.com", Some("apps.example.com")),
            ("https://Apps.Example.com:8443/x", Some("apps.example.com")),
            ("http://localhost:8080", Some("localhost")),
            ("http://", None),
        ] {
            assert_eq!(url_host(url).as_deref(), want, "{url}");
        }
    }
}

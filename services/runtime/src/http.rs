//! The operations listener every berth process serves: `/healthz` (200 when
//! all readiness checks pass, 503 otherwise, JSON body naming each check) and
//! `/metrics` (Prometheus text, rendered from a handle: the exporter's own
//! HTTP listener is never started).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// A readiness flag a component sets once it can do its work.
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Check {
    Flag(ReadyFlag),
    Nats(async_nats::Client),
}

impl Check {
    fn passes(&self) -> bool {
        match self {
            Check::Flag(f) => f.get(),
            Check::Nats(c) => c.connection_state() == async_nats::connection::State::Connected,
        }
    }
}

/// The set of readiness checks behind `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

impl Health {
    /// No checks yet (an empty set is healthy).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named flag, initially not ready.
    pub fn register(&self, name: impl Into<String>) -> ReadyFlag {
        let flag = ReadyFlag::default();
        self.push(name.into(), Check::Flag(flag.clone()));
        flag
    }

    /// Adds a check that passes while `client` is connected.
    pub fn nats(&self, client: async_nats::Client) {
        self.push("nats".to_owned(), Check::Nats(client));
    }

    fn push(&self, name: String, check: Check) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.push((name, check));
        }
    }

    /// Whether all checks pass, and each check's result.
    pub fn report(&self) -> (bool, Vec<(String, bool)>) {
        let checks = match self.checks.lock() {
            Ok(c) => c.clone(),
            Err(_) => return (false, Vec::new()),
        };
        let results: Vec<_> = checks
            .iter()
            .map(|(n, c)| (n.clone(), c.passes()))
            .collect();
        (results.iter().all(|(_, ok)| *ok), results)
    }
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

static METRICS: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle, so tests and `berth up` may call it freely).
pub fn install_metrics() -> Result<PrometheusHandle, MetricsError> {
    METRICS
        .get_or_init(|| {
            // Request latencies as histograms (the same bounds as the
            // metrics stream's samples); a histogram of a service not
            // requested for ten minutes is dropped, so the page follows the
            // services in use.
            let bounds: Vec<f64> = berth_schemas::metrics::LATENCY_BUCKETS_MS
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .collect();
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("berth_http_request_duration_seconds".to_owned()),
                    &bounds,
                )
                .map_err(|e| e.to_string())?
                .idle_timeout(
                    MetricKindMask::HISTOGRAM,
                    Some(std::time::Duration::from_secs(600)),
                )
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map(|()| handle)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(MetricsError)
}

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
}

/// The router, for in-process tests (`oneshot`) and for [`HttpServer`].
pub fn router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics })
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let (ok, checks) = s.health.report();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "checks": checks.into_iter().map(|(n, ok)| (n, serde_json::Value::Bool(ok))).collect::<serde_json::Map<_, _>>(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Upkeep here instead of a timer task: histograms are drained when read.
    s.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// A bound (not yet serving) operations listener. Binding is separate from
/// serving so the caller learns the real address (port 0) before anything runs.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on a tracked task until shutdown begins.
    pub fn serve(self, health: Health, metrics: PrometheusHandle, shutdown: &Shutdown) {
        let app = router(health, metrics);
        let token = shutdown.token();
        let addr = self.local_addr;
        shutdown.spawn("http", async move {
            tracing::info!(http.addr = %addr, "serving /healthz and /metrics");
            let result = axum::serve(self.listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "health/metrics listener failed");
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_follows_the_flags_and_metrics_render() {
        let health = Health::new();
        let flag = health.register("projector");
        let metrics = install_metrics().unwrap();
        metrics::counter!("berth_test_counter_total").increment(3);
        let s = Shutdown::new(std::time::Duration::from_secs(1));
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        server.serve(health, metrics, &s);

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
        flag.set(true);
        let ok = get(addr, "/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"projector\":true"), "{ok}");
        let m = get(addr, "/metrics").await;
        assert!(m.contains("berth_test_counter_total 3"), "{m}");
        assert_eq!(s.wait_for_tasks().await, crate::shutdown::Drained::Clean);
    }
}

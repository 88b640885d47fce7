//! A pass-through HTTP proxy in front of a test registry that answers the
//! first `fail_first` requests with a chosen status (429 or 503) and an
//! optional `Retry-After`, then forwards everything. It records when each
//! request arrived so tests can measure how long a client waited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

struct Inner {
    upstream: String,
    fail_first: usize,
    status: StatusCode,
    retry_after: Option<String>,
    /// Requests still to fail on top of the first ones ([`FlakyProxy::fail_next`]).
    more: AtomicUsize,
    seen: Mutex<Vec<(Instant, u16)>>,
    http: reqwest::Client,
}

/// A running flaky proxy; stops when dropped.
pub struct FlakyProxy {
    /// `127.0.0.1:PORT` to use as the registry host.
    pub host: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FlakyProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyProxy")
            .field("host", &self.host)
            .finish()
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyProxy {
    /// Proxy to `upstream` (`127.0.0.1:PORT`), failing the first
    /// `fail_first` requests with `status` and `retry_after`.
    pub async fn start(
        upstream: &str,
        fail_first: usize,
        status: u16,
        retry_after: Option<&str>,
    ) -> Result<Self> {
        let inner = Arc::new(Inner {
            upstream: upstream.to_string(),
            fail_first,
            status: StatusCode::from_u16(status)?,
            retry_after: retry_after.map(str::to_string),
            more: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            http: super::http_client()?,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { host, inner, task })
    }

    /// Fails the next `n` requests too (the registry goes down for a
    /// while, later on).
    pub fn fail_next(&self, n: usize) {
        self.inner.more.store(n, Ordering::SeqCst);
    }

    /// Arrival time and the status answered, per request so far.
    pub fn requests(&self) -> Vec<(Instant, u16)> {
        self.inner
            .seen
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

async fn forward(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let n = {
        let seen = inner.seen.lock();
        seen.map(|s| s.len()).unwrap_or(0)
    };
    let now = Instant::now();
    let more = inner
        .more
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| m.checked_sub(1))
        .is_ok();
    if n < inner.fail_first || more {
        if let Ok(mut s) = inner.seen.lock() {
            s.push((now, inner.status.as_u16()));
        }
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = inner.status;
        if let Some(ra) = &inner.retry_after {
            if let Ok(v) = HeaderValue::from_str(ra) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        return resp;
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut up = inner.http.request(
        req.method().clone(),
        format!("http://{}{path}", inner.upstream),
    );
    for name in ["accept", "authorization"] {
        if let Some(v) = req.headers().get(name) {
            up = up.header(name, v.clone());
        }
    }
    let result = up.send().await;
    let mut out = Response::new(Body::empty());
    match result {
        Ok(r) => {
            *out.status_mut() = r.status();
            for name in ["content-type", "docker-content-digest", "www-authenticate"] {
                for v in r.headers().get_all(name) {
                    out.headers_mut().append(name, v.clone());
                }
            }
            let body = r.bytes().await.unwrap_or_default();
            *out.body_mut() = Body::from(body);
        }
        Err(_) => *out.status_mut() = StatusCode::BAD_GATEWAY,
    }
    if let Ok(mut s) = inner.seen.lock() {
        s.push((now, out.status().as_u16()));
    }
    out
}

//! The HTTPS side of the router.
//!
//! - [`serve`]: the listener — TLS (rustls, certificates by SNI), then
//!   HTTP/2 or HTTP/1.1 as ALPN chose: HTTP/1.1 by berth's own path
//!   ([`crate::h1`]) for what it takes, then, as for HTTP/2, hyper-util's
//!   auto builder (which also reads the HTTP/2 preface from clients that
//!   skip ALPN); HTTP/1.1 keeps protocol upgrades (WebSocket). The plain listener's accept loop
//!   (`berth_runtime::http1::accept_until`) and shutdown story: stop
//!   accepting, let in-flight requests finish for up to the drain time;
//! - what plain HTTP does for it: ACME HTTP-01 answers from the
//!   certificate store ([`challenge`]) and the redirect to HTTPS for hosts
//!   with a certificate ([`redirect_to`]).

use std::sync::Arc;
use std::time::Duration;

use berth_runtime::http1::WriteStall;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certstore::CertStore;
use crate::challenges::{Answer, Challenges};
use crate::config::HttpsOptions;
use crate::h1::{self, Rewound};
use crate::proxy::{host_of, page, Peer, Proxy, ProxyBody, Scheme, NOT_FOUND};
use crate::tls::Certificates;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send its request headers, and a write
/// to it may wait for it to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientTimeouts {
    pub header: Duration,
    pub send: Duration,
}

/// Serves HTTPS on `listener` until `shutdown`, then waits up to `drain`
/// for open requests.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Arc<Proxy>,
    shutdown: &CancellationToken,
    drain: Duration,
    timeouts: ClientTimeouts,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = berth_runtime::http1::MAX_HEAD_BYTES;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        // hyper-util's builder has no exact header cap for HTTP/1.1; the
        // read buffer's bound keeps a head from growing past it by much.
        .max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let what = "router-https";
    berth_runtime::http1::accept_until(listener, shutdown, Some(drain), what, |stream, peer| {
        let acceptor = acceptor.clone();
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let stop = shutdown.clone();
        async move {
            let tls = tokio::select! {
                _ = stop.cancelled() => return,
                tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(WriteStall::new(stream, timeouts.send))) => tls,
            };
            let tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::counter!("berth_router_tls_handshake_failures_total").increment(1);
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("berth_router_tls_handshake_failures_total").increment(1);
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = Peer::from(peer);
            // HTTP/1.1 goes by berth's own path first, as plain HTTP does;
            // HTTP/2 (and what that path leaves) by hyper's.
            let io = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Rewound::new(tls)
            } else {
                match h1::serve(&proxy, tls, &client, Scheme::Https, timeouts.header, &stop).await {
                    Some(rest) => rest,
                    None => return,
                }
            };
            let service =
                service_fn(move |req| Arc::clone(&proxy).handle_https(req, client.clone()));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            berth_runtime::http1::drive(conn, |c| c.graceful_shutdown(), &stop, what, peer).await;
        }
    })
    .await;
}

/// What the proxy needs of the HTTPS side.
#[derive(Debug, Clone)]
pub struct HttpsSide {
    pub opts: HttpsOptions,
    /// The managed certificates now (which hosts redirect).
    pub certs: Certificates,
    /// Where HTTP-01 answers are kept.
    pub store: CertStore,
    /// The HTTP-01 answers pending, followed from `store`.
    pub challenges: Challenges,
    /// The `Strict-Transport-Security` value, when HSTS is on.
    pub hsts: Option<HeaderValue>,
}

impl HttpsSide {
    /// Whether the router can serve `host` (no port, lower case) over HTTPS.
    fn has_certificate(&self, host: &str) -> bool {
        self.certs.load().contains_key(host)
            || self.opts.operator.as_ref().is_some_and(|o| o.covers(host))
    }
}

/// Where HTTP-01 challenges are fetched (RFC 8555 §8.3).
pub(crate) const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The answer to an HTTP-01 challenge fetch: the key authorization the
/// issuer stored for `token`, on any host, never redirected.
pub(crate) async fn challenge(https: &HttpsSide, token: &str) -> Response<ProxyBody> {
    match https.challenges.answer(&https.store, token).await {
        Answer::Found(answer) => {
            let mut resp = Response::new(
                Full::new(Bytes::from(answer))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        Answer::Unknown => page(StatusCode::NOT_FOUND, "Not found", NOT_FOUND),
        Answer::Unavailable => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "Try again in a moment.",
        ),
    }
}

/// The redirect to HTTPS for a request whose host the router holds a
/// certificate for: the same host, path and query; the HTTPS listener's
/// port unless it is 443. GET and HEAD get 301, other methods 308 (which
/// keeps the method and body).
pub(crate) fn redirect_to<B>(req: &Request<B>, https: &HttpsSide) -> Option<Response<ProxyBody>> {
    let host = host_of(req)?;
    let host = strip_port(&host.trim().to_ascii_lowercase()).to_owned();
    let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
    if !https.has_certificate(&host) {
        return None;
    }
    let port = https.opts.addr.port();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let location = HeaderValue::from_str(&location).ok()?;
    let status = if req.method() == Method::GET || req.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

/// `host[:port]` → `host`.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

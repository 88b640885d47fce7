//! The HTTPS listener: TLS (rustls, certificates by SNI), then HTTP/2 or
//! HTTP/1.1 as ALPN chose (hyper-util's auto builder, which also reads the
//! HTTP/2 preface from clients that skip ALPN); HTTP/1.1 keeps protocol
//! upgrades (WebSocket). The same shutdown story as the plain listener:
//! stop accepting, let in-flight requests finish for up to the drain time.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{Proxy, HEADER_READ_TIMEOUT};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTPS on `listener` until `shutdown`, then waits up to `drain`
/// for open requests.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Arc<Proxy>,
    shutdown: &CancellationToken,
    drain: Duration,
) {
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = "router-https", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let proxy = Arc::clone(&proxy);
        let builder = Arc::clone(&builder);
        let stop = shutdown.clone();
        connections.spawn(async move {
            let tls = tokio::select! {
                _ = stop.cancelled() => return,
                tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => tls,
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
            let service = service_fn(move |req| Arc::clone(&proxy).handle_https(req, peer));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(listener = "router-https", error = %e, client = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = "router-https",
            grace = ?drain,
            "in-flight requests still open after the grace period"
        );
    }
}

//! The accept loop of berth's public HTTP/1 listeners (the API, the
//! router): hyper's connection builder with a header read timeout (a
//! client that trickles its headers is cut off) and a cap on the size of
//! the headers, `TCP_NODELAY`, accept
//! errors (out of file descriptors and the like) backed off rather than
//! fatal, protocol upgrades (WebSocket and the like: a handler that answers
//! `101` takes the connection over), and a graceful shutdown that lets
//! in-flight requests finish.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The most a request line and headers may take, in bytes; more is
/// answered `431 Request Header Fields Too Large`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `listener` until `shutdown`, each connection with the service
/// `service(peer)` makes; then waits for in-flight connections, at most
/// `drain` when given. `what` names the listener in logs.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    header_read_timeout: Duration,
    drain: Option<Duration>,
    what: &'static str,
    service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Each connection is a tracked task that, on shutdown, stops taking
    // new requests on its connection and finishes the one in flight. (A
    // connection handed over by an upgrade is its handler's from then on.)
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(stream), service(peer))
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(listener = what, error = %e, client = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    match drain {
        Some(grace) => {
            if tokio::time::timeout(grace, connections.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    listener = what,
                    ?grace,
                    "in-flight requests still open after the grace period"
                );
            }
        }
        None => connections.wait().await,
    }
}

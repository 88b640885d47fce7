//! The accept loop of berth's public HTTP/1 listeners (the API, the
//! router): hyper's connection builder with a header read timeout (a
//! client that trickles its headers is cut off), `TCP_NODELAY`, accept
//! errors (out of file descriptors and the like) backed off rather than
//! fatal, and a graceful shutdown that lets in-flight requests finish.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn StdError + Send + Sync>;

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
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
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
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service(peer)));
        // Watched by `graceful`, which the shutdown below waits on.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = what, error = %e, client = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    match drain {
        Some(grace) => {
            if tokio::time::timeout(grace, graceful.shutdown())
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
        None => graceful.shutdown().await,
    }
}

//! The accept loop of berth's public HTTP/1 listeners (the API, the
//! router): hyper's connection builder with a header read timeout (a
//! client that trickles its headers is cut off) and a cap on the size of
//! the headers, `TCP_NODELAY`, accept
//! errors (out of file descriptors and the like) backed off rather than
//! fatal, protocol upgrades (WebSocket and the like: a handler that answers
//! `101` takes the connection over), and a graceful shutdown that lets
//! in-flight requests finish.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The most a request line and headers may take, in bytes; more is
/// answered `431 Request Header Fields Too Large`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long a write to a client may wait for the client to read (nginx's
/// `send_timeout`), where no setting says otherwise.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A client connection whose writes fail with `TimedOut` once one has
/// waited `limit` for the client to take data: a client that stops
/// reading (its receive window full) cannot hold a connection, and the
/// instance's behind it, for ever. Only a blocked write counts; an idle
/// connection, or a stream with nothing to send, is not timed.
#[derive(Debug)]
pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteStall<T> {
    /// `inner`, its writes cut off after waiting `limit`.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// A write's poll with the timer: done (disarmed), or waiting (armed;
    /// an error once it ran out).
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.timer = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {limit:?}"),
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}

/// Serves `listener` until `shutdown`, each connection with the service
/// `service(peer)` makes; then waits for in-flight connections, at most
/// `drain` when given. `what` names the listener in logs. A write that
/// waits `send_timeout` for the client to read ends the connection.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, S, B>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    header_read_timeout: Duration,
    send_timeout: Duration,
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
    let http = builder(header_read_timeout);
    accept_until(listener, shutdown, drain, what, |stream, peer| {
        serve_io(
            &http,
            WriteStall::new(stream, send_timeout),
            service(peer),
            shutdown.clone(),
            what,
            peer,
        )
    })
    .await;
}

/// hyper's HTTP/1 server side as berth's listeners set it up: a header
/// read timeout and the cap on a request's head.
pub fn builder(header_read_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    http
}

/// Serves the client connection `io` with `service` (protocol upgrades
/// included) until it ends; once `stop` is cancelled, the request in
/// flight is finished and the connection closed.
pub fn serve_io<I, S, B>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    stop: CancellationToken,
    what: &'static str,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    async move { drive(conn, |c| c.graceful_shutdown(), &stop, what, peer).await }
}

/// Drives the client connection `conn` to its end; once `stop` is
/// cancelled, `graceful` asks it to finish the request in flight and
/// close. `what` and `peer` name it in logs.
pub async fn drive<C, E>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    stop: &CancellationToken,
    what: &'static str,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(listener = what, error = %e, client = %peer, "connection ended with an error");
    }
}

/// Accepts on `listener` until `shutdown`, each connection (with
/// `TCP_NODELAY`) served by the future `serve_one` makes for it on a
/// tracked task; then waits for those tasks, at most `drain` when given.
/// Each such future, on shutdown, should stop taking new requests on its
/// connection and finish the one in flight (a connection handed over by an
/// upgrade is its handler's from then on). Accept errors (out of file
/// descriptors and the like) are logged and tried again after 50 ms.
/// `what` names the listener in logs.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    drain: Option<Duration>,
    what: &'static str,
    mut serve_one: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connections = TaskTracker::new();
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
        connections.spawn(serve_one(stream, peer));
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

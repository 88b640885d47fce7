//! Connections to instances: one pool per router worker, so a request and
//! the connection that carries it stay on the worker's thread, and taking
//! or giving back a connection is an uncontended lock of that worker alone.
//!
//! A connection goes back to the pool when the instance's response body
//! has ended (never while it still streams, so a long response or an event
//! stream never holds up another request), and is dropped when the
//! response is dropped early, when it was upgraded, or after `idle_for`
//! unused. A pooled connection the instance closed in the meantime fails
//! as [`SendError::Stale`]: nothing reached the instance, so the caller may
//! send the request again on a fresh connection.
//!
//! Two shelves of the same kind: connections hyper's client drives, and
//! plain ones berth's own HTTP/1.1 path ([`crate::h1`]) reads and writes
//! itself; one of those the instance closed while it waited is found out
//! by the request that meets it (nothing answered), which is sent again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Returnable;

/// Idle connections kept per instance address at most.
const MAX_IDLE_PER_ADDR: usize = 512;

/// What a plain connection reads at a time.
pub(crate) const RAW_BUF: usize = 16 * 1024;

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    #[error("connecting: {0}")]
    Connect(String),
    /// A pooled connection had been closed by the instance; the request
    /// was not sent.
    #[error("pooled connection closed by the instance")]
    Stale,
    /// The request was (maybe partly) sent, then the exchange failed.
    #[error("{0}")]
    Request(hyper::Error),
}

impl SendError {
    /// Nothing reached the instance: another attempt is always safe.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A connection that can wait on a shelf: whether it is known closed.
pub(crate) trait Shelved {
    fn is_closed(&self) -> bool;
}

impl Shelved for SendRequest<Returnable> {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Idle connections by instance address, most recently used last.
struct Shelf<C> {
    idle: Mutex<HashMap<String, Vec<Idle<C>>, foldhash::quality::RandomState>>,
    idle_for: Duration,
}

impl<C: Shelved> Shelf<C> {
    fn new(idle_for: Duration) -> Self {
        Shelf {
            idle: Mutex::new(HashMap::default()),
            idle_for,
        }
    }

    /// The most recently used idle connection to `addr` that has not
    /// been idle too long (older ones are dropped, which closes them).
    fn checkout(&self, addr: &str) -> Option<C> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) < self.idle_for && !c.conn.is_closed() {
                return Some(c.conn);
            }
        }
        idle.remove(addr);
        None
    }

    fn checkin(&self, addr: &str, conn: C) {
        if conn.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        // The address is copied only for the first connection kept for it.
        if !idle.contains_key(addr) {
            idle.insert(addr.to_owned(), Vec::new());
        }
        let Some(list) = idle.get_mut(addr) else {
            return;
        };
        // The oldest are first: drop those idle too long.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) >= self.idle_for)
            .count();
        list.drain(..expired);
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(Idle { conn, since: now });
        }
    }

    fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) < self.idle_for && !c.conn.is_closed());
            !list.is_empty()
        });
    }
}

/// One worker's connections to instances: those hyper drives (requests
/// with bodies, upgrades, HTTP/2 and HTTPS clients) and the plain ones
/// berth's own HTTP/1 path writes to ([`crate::h1`]).
pub struct Upstreams {
    hyper: Shelf<SendRequest<Returnable>>,
    raw: Shelf<Raw>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_for", &self.hyper.idle_for)
            .finish_non_exhaustive()
    }
}

/// A connection to an instance that berth's own HTTP/1 path reads and
/// writes, with what it has read past the last response (nothing, when
/// it is shelved).
#[derive(Debug)]
pub(crate) struct Raw {
    pub stream: TcpStream,
    pub buf: bytes::BytesMut,
}

impl Shelved for Raw {
    /// Closed by the instance (or sent something unasked) while it waited:
    /// a read that does not block. It costs no system call unless the
    /// socket was reported readable since its last read, which an idle
    /// connection is only when the instance closed it (Node.js does after
    /// 5 s idle): otherwise a burst's worth of shelved connections gone
    /// stale would each be found by a request, and the second would make
    /// the instance look unreachable.
    fn is_closed(&self) -> bool {
        match self.stream.try_read(&mut [0u8; 1]) {
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_for: Duration) -> Arc<Self> {
        Arc::new(Upstreams {
            hyper: Shelf::new(idle_for),
            raw: Shelf::new(idle_for),
            connect_timeout,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on a pooled
    /// connection if one is idle, else on a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: &str,
        req: Request<Returnable>,
    ) -> Result<Response<Pooled>, SendError> {
        if let Some(mut sender) = self.hyper.checkout(addr) {
            // Ready at once, or as soon as the previous response's end is
            // processed; an error means the instance closed it.
            if sender.ready().await.is_err() {
                return Err(SendError::Stale);
            }
            return match sender.try_send_request(req).await {
                Ok(resp) => Ok(self.wrap(addr, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(_unsent) => Err(SendError::Stale),
                    None => Err(SendError::Request(e.into_error())),
                },
            };
        }
        let stream = self.connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "instance connection ended with an error");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(addr, sender, resp)),
            Err(mut e) => match e.take_message() {
                Some(_unsent) => Err(SendError::Connect(
                    "connection closed before the request was sent".to_owned(),
                )),
                None => Err(SendError::Request(e.into_error())),
            },
        }
    }

    /// A new connection to `addr` (`TCP_NODELAY`), within the connect
    /// timeout.
    async fn connect(&self, addr: &str) -> Result<TcpStream, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
                Err(_) => return Err(SendError::Connect("timed out".to_owned())),
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// An idle plain connection to `addr` (and `true`), else a new one.
    pub(crate) async fn raw(&self, addr: &str) -> Result<(Raw, bool), SendError> {
        if let Some(raw) = self.raw.checkout(addr) {
            return Ok((raw, true));
        }
        let stream = self.connect(addr).await?;
        Ok((
            Raw {
                stream,
                buf: bytes::BytesMut::with_capacity(RAW_BUF),
            },
            false,
        ))
    }

    /// Shelves a plain connection whose last response has ended.
    pub(crate) fn give_back_raw(&self, addr: &str, raw: Raw) {
        self.raw.checkin(addr, raw);
    }

    /// Drops every connection idle longer than `idle_for` (called now and
    /// then, for instances no request goes to any more).
    pub fn sweep(&self) {
        self.hyper.sweep();
        self.raw.sweep();
    }

    fn wrap(
        self: &Arc<Self>,
        addr: &str,
        sender: SendRequest<Returnable>,
        resp: Response<Incoming>,
    ) -> Response<Pooled> {
        let (parts, body) = resp.into_parts();
        // A body already at its end (a 204, an empty answer) gives the
        // connection back at once.
        let mut pooled = Pooled {
            body,
            home: Some((Arc::downgrade(self), addr.to_owned(), sender)),
        };
        if pooled.body.is_end_stream() && parts.status != http::StatusCode::SWITCHING_PROTOCOLS {
            pooled.give_back();
        }
        Response::from_parts(parts, pooled)
    }
}

/// An instance's response body; its connection goes back to the pool when
/// the body ends.
pub struct Pooled {
    body: Incoming,
    home: Option<(Weak<Upstreams>, String, SendRequest<Returnable>)>,
}

impl Pooled {
    fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.home.take() {
            if let Some(pool) = pool.upgrade() {
                pool.hyper.checkin(&addr, sender);
            }
        }
    }

    /// The connection is not to be reused (it was upgraded).
    pub fn keep_connection(&mut self) {
        self.home = None;
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

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

struct Idle {
    sender: SendRequest<Returnable>,
    since: Instant,
}

/// One worker's connections to instances.
pub struct Upstreams {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_for: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_for", &self.idle_for)
            .finish_non_exhaustive()
    }
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_for: Duration) -> Arc<Self> {
        Arc::new(Upstreams {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_for,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on a pooled
    /// connection if one is idle, else on a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: &str,
        req: Request<Returnable>,
    ) -> Result<Response<Pooled>, SendError> {
        if let Some(mut sender) = self.checkout(addr) {
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
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
                Err(_) => return Err(SendError::Connect("timed out".to_owned())),
            };
        let _ = stream.set_nodelay(true);
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

    /// The most recently used idle connection to `addr` that has not
    /// been idle too long (older ones are dropped, which closes them).
    fn checkout(&self, addr: &str) -> Option<SendRequest<Returnable>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) < self.idle_for && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        idle.remove(addr);
        None
    }

    fn checkin(&self, addr: &str, sender: SendRequest<Returnable>) {
        if sender.is_closed() {
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
            list.push(Idle { sender, since: now });
        }
    }

    /// Drops every connection idle longer than `idle_for` (called now and
    /// then, for instances no request goes to any more).
    pub fn sweep(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) < self.idle_for && !c.sender.is_closed());
            !list.is_empty()
        });
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
                pool.checkin(&addr, sender);
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

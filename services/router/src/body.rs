//! A request body that comes back when the attempt to send it failed before
//! any of it was read, so the request can go to another instance.
//!
//! The pooled client takes the request by value; if the connect fails it
//! drops the request without polling the body. [`Returnable`] notices that
//! drop and hands the untouched body back through a oneshot channel. Once a
//! frame has been read it is gone (the body streams, nothing is buffered),
//! and the request is not retried.
//!
//! A client that stops sending its body part way (a slow or stalled
//! upload holding a connection to the instance) is cut off: when no frame
//! arrives for the idle limit the body ends in an error, which aborts the
//! request to the instance, and [`Stall`] tells the proxy to answer `408`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// See the module docs.
#[derive(Debug)]
pub struct Returnable {
    inner: Option<Incoming>,
    read: bool,
    back: Option<oneshot::Sender<Incoming>>,
    stall: Option<Stall>,
    /// Armed while the client keeps the body waiting.
    timer: Option<Pin<Box<Sleep>>>,
}

/// How long a client may keep its request body waiting between two
/// frames, and whether one did (shared by every attempt of a request).
#[derive(Debug, Clone)]
pub struct Stall {
    limit: Duration,
    tripped: Arc<AtomicBool>,
}

impl Stall {
    /// A body waiting `limit` for its next frame is cut off.
    pub fn after(limit: Duration) -> Self {
        Stall {
            limit,
            tripped: Arc::default(),
        }
    }

    /// Whether a body was cut off.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// The client sent no body data for the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct BodyStalled(Duration);

impl Returnable {
    /// Wraps `body`, cut off after `stall`; the receiver gets it back if
    /// it is dropped unread.
    pub fn new(body: Incoming, stall: Stall) -> (Self, oneshot::Receiver<Incoming>) {
        let (tx, rx) = oneshot::channel();
        (
            Returnable {
                inner: Some(body),
                read: false,
                back: Some(tx),
                stall: Some(stall),
                timer: None,
            },
            rx,
        )
    }
}

impl Returnable {
    /// An empty body: nothing to give back, any number of copies.
    pub fn empty() -> Self {
        Returnable {
            inner: None,
            read: false,
            back: None,
            stall: None,
            timer: None,
        }
    }
}

impl Body for Returnable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                if frame.is_some() {
                    this.read = true;
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let Some(stall) = &this.stall else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall.limit)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                stall.tripped.store(true, Ordering::Relaxed);
                // Nothing more is read from this body.
                this.read = true;
                this.inner = None;
                this.timer = None;
                Poll::Ready(Some(Err(BodyStalled(stall.limit).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Returnable {
    fn drop(&mut self) {
        if self.read {
            return;
        }
        if let (Some(body), Some(back)) = (self.inner.take(), self.back.take()) {
            // The receiver may be gone (the request already answered): fine.
            let _ = back.send(body);
        }
    }
}

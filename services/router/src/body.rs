//! A request body that comes back when the attempt to send it failed before
//! any of it was read, so the request can go to another instance.
//!
//! The pooled client takes the request by value; if the connect fails it
//! drops the request without polling the body. [`Returnable`] notices that
//! drop and hands the untouched body back through a oneshot channel. Once a
//! frame has been read it is gone (the body streams, nothing is buffered),
//! and the request is not retried.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// See the module docs.
#[derive(Debug)]
pub struct Returnable {
    inner: Option<Incoming>,
    read: bool,
    back: Option<oneshot::Sender<Incoming>>,
}

impl Returnable {
    /// Wraps `body`; the receiver gets it back if it is dropped unread.
    pub fn new(body: Incoming) -> (Self, oneshot::Receiver<Incoming>) {
        let (tx, rx) = oneshot::channel();
        (
            Returnable {
                inner: Some(body),
                read: false,
                back: Some(tx),
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
        }
    }
}

impl Body for Returnable {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(_)) = &polled {
            this.read = true;
        }
        polled
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

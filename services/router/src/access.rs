//! The access log: one structured line per request (target `berth::access`,
//! level INFO; `BERTH_LOG_FORMAT=json` makes each a JSON object), written
//! when the response has been sent whole or the client went away, so it
//! holds the bytes sent and the whole duration as well as the time to the
//! response head (which is what the per-service request metrics count).
//! The query string is left out: it may carry tokens.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};

use crate::proxy::ProxyBody;

/// What is known of a request when its response head is ready.
#[derive(Debug)]
pub struct Entry {
    pub service: String,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub client: IpAddr,
    pub request_id: Option<HeaderValue>,
    pub start: Instant,
    pub head: Duration,
}

/// A response body that writes the request's access line when it ends or
/// is dropped.
pub struct Logged {
    inner: ProxyBody,
    entry: Entry,
    bytes: u64,
    complete: bool,
}

impl Logged {
    pub fn new(inner: ProxyBody, entry: Entry) -> Self {
        let complete = inner.is_end_stream();
        Logged {
            inner,
            entry,
            bytes: 0,
            complete,
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.complete = true;
                }
            }
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.entry.log(self.bytes, self.complete);
    }
}

impl Entry {
    /// Writes the access line: `bytes` of the body sent, `complete` when
    /// the whole response was.
    pub fn log(&self, bytes: u64, complete: bool) {
        let e = self;
        let request_id = e
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        tracing::info!(
            target: "berth::access",
            service = %e.service,
            method = %e.method,
            path = %e.path,
            status = e.status,
            bytes,
            head_ms = e.head.as_secs_f64() * 1000.0,
            duration_ms = e.start.elapsed().as_secs_f64() * 1000.0,
            complete,
            client = %e.client,
            request_id,
            "request"
        );
    }
}

//! berth's own HTTP/1.1 path for the requests most traffic is made of: a
//! GET or HEAD without a body, for a service that is serving. The client's
//! head is parsed once; the head the instance gets is written straight
//! from the client's bytes (hop-by-hop headers dropped, `X-Forwarded-*`
//! and a request id added); the instance's answer goes back as it comes,
//! its head rewritten the same way and its body copied in its own framing
//! (a length, chunks, or until the instance closes), read and written on
//! the client connection's own task — no re-framing, no task or channel
//! per instance connection, which is where hyper's client spent most of
//! the router's own CPU.
//!
//! Anything else — a request with a body, an upgrade (WebSocket),
//! `Expect`, HTTP/1.0, an absolute URI, a head that does not parse or is
//! too large, a host the router does not serve, a suspended service, an
//! HTTPS redirect or an ACME challenge — hands the connection, with what
//! was read of it, to hyper ([`crate::proxy`]), which serves it from then
//! on. Both paths share the routes, round robin, the ejection of
//! unreachable instances, the retries and timeouts, the request metrics
//! and the access log.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::headers::{is_hop_by_hop, request_id_digits, usable_request_id, Peer};
use crate::https::ACME_CHALLENGE;
use crate::proxy::{no_healthy_instance, page_html, Attempts, Proxy, Scheme, BAD_GATEWAY_TITLE};
use crate::table::{Route, RouteState, RoutingTable};
use crate::upstream::{Raw, SendError, RAW_BUF};

/// The most headers a head may have here (hyper's own limit); more is
/// left to hyper, which refuses it.
const MAX_HEADERS: usize = 100;

/// What a client connection reads at a time.
const CLIENT_BUF: usize = 8 * 1024;

/// A connection handed to hyper: what was read of it and not yet served,
/// then the connection itself.
pub(crate) struct Rewound<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewound<T> {
    /// A connection nothing was read from yet.
    pub(crate) fn new(inner: T) -> Self {
        Rewound {
            read: Bytes::new(),
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `client`'s requests on this path until the connection ends (then
/// `None`) or a request needs hyper (then the connection, rewound to that
/// request). A head must arrive whole within `header_timeout` of the
/// connection waiting for it; once `stop` is cancelled, the request in
/// flight is finished (its answer saying the connection closes, once the
/// proxy knows it is stopping) and the connection closed.
pub(crate) async fn serve<T>(
    proxy: &Proxy,
    mut client: T,
    peer: &Peer,
    scheme: Scheme,
    header_timeout: Duration,
    stop: &CancellationToken,
) -> Option<Rewound<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(CLIENT_BUF);
    // Waited on between requests; made once per connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    // The header timeout: one timer per connection, moved only when it
    // fires early (a timer set per request cost ~3 % of the router's CPU).
    let mut deadline = tokio::time::Instant::now() + header_timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    // The routing table, looked at again only when a new one was
    // published (an atomic read, where loading it takes a shared lock).
    let mut swaps = proxy.routes.swaps();
    let mut table = Arc::clone(&swaps.borrow_and_update());
    loop {
        deadline = tokio::time::Instant::now() + header_timeout;
        let request = loop {
            if !buf.is_empty() {
                if swaps.has_changed().unwrap_or(false) {
                    table = Arc::clone(&swaps.borrow_and_update());
                }
                match read_request(proxy, &table, &buf, peer, scheme) {
                    Head::Partial if buf.len() < berth_runtime::http1::MAX_HEAD_BYTES => {}
                    // hyper answers a head too large with 431.
                    Head::Partial | Head::HandOver => {
                        return Some(Rewound {
                            read: buf.freeze(),
                            inner: client,
                        })
                    }
                    Head::Forward(r) => break r,
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(CLIENT_BUF);
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                biased;
                _ = &mut stopped, if idle => return None,
                read = client.read_buf(&mut buf) => read,
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        // The head did not come in time.
                        return None;
                    }
                    timer.as_mut().reset(deadline);
                    continue;
                }
            };
            match read {
                Ok(n) if n > 0 => {}
                // Closed or failed.
                _ => return None,
            }
        };
        buf.advance(request.head_len);
        // Once the router stops, each answer says the connection closes
        // after it (decided as its head is written), so the client sends
        // no more on it.
        let close = request.close;
        let kept = forward(proxy, request, &mut client, peer).await;
        if !kept || close || proxy.is_stopping() {
            let _ = client.shutdown().await;
            return None;
        }
    }
}

/// A request this path forwards.
struct Request {
    /// Bytes of the client's head.
    head_len: usize,
    /// The head the instance gets.
    out: Vec<u8>,
    head_only: bool,
    /// The client asked to close after this answer.
    close: bool,
    route: Arc<Route>,
    request_id: RequestId,
    hsts: Option<HeaderValue>,
    /// Method and path (no query) for the access log, when it is on.
    logged: Option<(Method, String)>,
}

/// A request's id: the client's when usable, else a new one (made
/// without an allocation: most requests carry none).
enum RequestId {
    Ours([u8; 16]),
    Client(HeaderValue),
}

impl RequestId {
    fn new() -> Self {
        RequestId::Ours(request_id_digits())
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Ours(digits) => digits,
            RequestId::Client(v) => v.as_bytes(),
        }
    }

    fn header_value(&self) -> Option<HeaderValue> {
        match self {
            RequestId::Ours(digits) => HeaderValue::from_bytes(digits).ok(),
            RequestId::Client(v) => Some(v.clone()),
        }
    }
}

impl Request {
    /// Whether the answer says the connection closes after it: the client
    /// asked, or the router is stopping (asked as the head is written).
    fn closing(&self, proxy: &Proxy) -> bool {
        self.close || proxy.is_stopping()
    }
}

enum Head {
    Partial,
    HandOver,
    Forward(Request),
}

/// `Connection`'s tokens.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Whether a header a `Connection` header names is dropped with it: any
/// but the host and what frames the message, which a peer naming them
/// must not make the next hop read differently.
fn may_drop(name: &[u8]) -> bool {
    !name.is_empty()
        && !["host", "content-length", "transfer-encoding"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// The client's head in `buf`, if it is whole and this path takes it.
fn read_request(
    proxy: &Proxy,
    table: &RoutingTable,
    buf: &[u8],
    peer: &Peer,
    scheme: Scheme,
) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::HandOver;
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Head::HandOver,
    };
    if !path.starts_with('/') {
        return Head::HandOver;
    }
    // What the headers ask of this hop.
    let mut host = None;
    let mut close = false;
    let mut named: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        let n = h.name;
        if is(n, "host") {
            if host.is_some() {
                return Head::HandOver;
            }
            host = Some(h.value);
        } else if is(n, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Head::HandOver;
                } else if !t.eq_ignore_ascii_case(b"keep-alive") && may_drop(t) {
                    named.push(t);
                }
            }
        } else if is(n, "content-length") {
            if h.value.trim_ascii() != b"0" {
                return Head::HandOver;
            }
        } else if is(n, "transfer-encoding") || is(n, "upgrade") || is(n, "expect") {
            return Head::HandOver;
        }
    }
    let Some(host_value) = host else {
        return Head::HandOver;
    };
    let Ok(host) = std::str::from_utf8(host_value) else {
        return Head::HandOver;
    };
    let Some(route) = table.route_for_host(host, &proxy.opts.base_domain).cloned() else {
        return Head::HandOver;
    };
    // What is not passed on as it is (a suspended service, one in
    // maintenance, one with an IP allow list) is answered by the full path.
    if !matches!(route.state, RouteState::Serving(_)) || route.allow.is_some() {
        return Head::HandOver;
    }
    let mut hsts = None;
    if let Some(https) = &proxy.https {
        if path.starts_with(ACME_CHALLENGE) {
            return Head::HandOver;
        }
        if route.https_redirect {
            match scheme {
                Scheme::Http if https.opts.redirect => return Head::HandOver,
                Scheme::Https => hsts = https.hsts.clone(),
                Scheme::Http => {}
            }
        }
    }

    let mut out = Vec::with_capacity(head_len + 192);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut prior_chain = None;
    let mut request_id = None;
    for h in req.headers.iter() {
        let n = h.name;
        if is_hop_by_hop(n)
            || named.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes()))
            || is(n, "x-forwarded-proto")
            || is(n, "x-forwarded-host")
        {
            continue;
        }
        if is(n, "x-forwarded-for") {
            prior_chain.get_or_insert(h.value);
            continue;
        }
        if is(n, "x-request-id") {
            // The first one decides, as for hyper's path.
            if request_id.is_none() {
                request_id = Some(
                    usable_request_id(h.value)
                        .then(|| HeaderValue::from_bytes(h.value).ok())
                        .flatten()
                        .map_or_else(RequestId::new, RequestId::Client),
                );
            }
            continue;
        }
        header_line(&mut out, n.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = prior_chain {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.forwarded_for());
    out.extend_from_slice(match scheme {
        Scheme::Http => b"\r\nx-forwarded-proto: http\r\n",
        Scheme::Https => b"\r\nx-forwarded-proto: https\r\n",
    });
    header_line(&mut out, b"x-forwarded-host", host_value);
    let request_id = request_id.unwrap_or_else(RequestId::new);
    header_line(&mut out, b"x-request-id", request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    let logged = proxy.opts.access_log.then(|| {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let method = if head_only { Method::HEAD } else { Method::GET };
        (method, path.to_owned())
    });
    Head::Forward(Request {
        head_len,
        out,
        head_only,
        close,
        route,
        request_id,
        hsts,
        logged,
    })
}

/// A `Date` header line for now; the value is made once a second per
/// thread.
fn date_line(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    NOW.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        header_line(out, b"date", cached.1.as_bytes());
    });
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How an instance's answer body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (a HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// An instance's answer head, made ready for the client.
struct Answer {
    /// The head the client gets.
    out: Vec<u8>,
    status: u16,
    framing: Framing,
    /// The instance keeps the connection open after the body.
    reusable: bool,
}

/// Why an attempt at an instance got no answer head.
enum Failure {
    /// Not connected; nothing was sent.
    Connect(SendError),
    /// A shelved connection the instance had closed: nothing was answered.
    Stale,
    /// No head within the response timeout.
    TimedOut(Duration),
    /// Sent, then the exchange failed.
    Broken(io::Error),
    /// The instance answered with something this request cannot take.
    Refused(&'static str),
}

/// Forwards one request and passes the answer back to the client; whether
/// the client connection can carry another request.
async fn forward<T>(proxy: &Proxy, req: Request, client: &mut T, peer: &Peer) -> bool
where
    T: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut attempts = Attempts::new(Arc::clone(&req.route), proxy.opts.max_attempts);
    // A shelved connection the instance closed is replaced once.
    let mut stale_retry = true;
    let outcome = loop {
        let Some(target) = proxy.next_target(&mut attempts).await else {
            attempts.gave_up();
            break Err(bad_gateway(&attempts.route.name));
        };
        let name = &attempts.route.name;
        match attempt(proxy, &target, &req).await {
            Ok(answered) => break Ok((target, answered)),
            Err(Failure::Stale) if stale_retry => {
                tracing::debug!(service.name = %name, instance.addr = %target, "pooled connection closed under the request; sent again");
                stale_retry = false;
            }
            Err(Failure::TimedOut(limit)) => {
                // Not retried: the instance may be acting on it.
                tracing::warn!(service.name = %name, instance.addr = %target, timeout = ?limit, "instance did not answer in time");
                break Err(own_page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Timed out",
                    &format!("{name} did not answer in time."),
                ));
            }
            Err(Failure::Refused(why)) => {
                tracing::warn!(service.name = %name, instance.addr = %target, why, "instance answer refused");
                break Err(bad_gateway(name));
            }
            Err(e) => {
                let (connect, error) = match e {
                    Failure::Connect(e) => (true, e.to_string()),
                    Failure::Stale => (true, "pooled connection closed".to_owned()),
                    Failure::Broken(e) => (false, e.to_string()),
                    Failure::TimedOut(_) | Failure::Refused(_) => (false, String::new()),
                };
                if connect {
                    proxy.ejected.eject(&target, Instant::now());
                }
                tracing::debug!(service.name = %name, instance.addr = %target, connect, %error, "instance attempt failed");
                metrics::counter!("berth_router_failed_attempts_total", "connect" => if connect { "true" } else { "false" }).increment(1);
                // A GET or HEAD without a body is sent again anywhere.
                attempts.failed(proxy, target);
            }
        }
    };
    // Counted as the answer's head is ready (an event stream's body may
    // go on for hours).
    let head_at = Instant::now();
    let status = match &outcome {
        Ok((_, (_, answer))) => answer.status,
        Err(page) => page.status,
    };
    proxy
        .stats
        .record(&req.route.service, status, head_at - start, head_at);
    let (sent, kept) = match outcome {
        Ok((target, (mut raw, answer))) => {
            let sent = pass_answer(&mut raw, &answer, client).await;
            if sent.is_ok() && answer.reusable && raw.buf.is_empty() {
                proxy.upstreams.give_back_raw(&target, raw);
            }
            let kept = sent.is_ok() && answer.framing != Framing::UntilClose;
            (sent, kept)
        }
        Err(page) => {
            let mut out = page.head(req.closing(proxy));
            // A HEAD gets the page's head alone.
            let body: &[u8] = if req.head_only { &[] } else { &page.body };
            out.extend_from_slice(body);
            let sent = client.write_all(&out).await.map(|()| body.len() as u64);
            let kept = sent.is_ok();
            (sent, kept)
        }
    };
    log(&req, peer, status, start, head_at, sent);
    kept
}

/// The access line, when the log is on: `sent` is the body's bytes, or
/// how the answer broke off.
fn log(
    req: &Request,
    peer: &Peer,
    status: u16,
    start: Instant,
    head_at: Instant,
    sent: io::Result<u64>,
) {
    let Some((method, path)) = &req.logged else {
        return;
    };
    let (bytes, complete) = match sent {
        Ok(b) => (b, true),
        Err(_) => (0, false),
    };
    crate::access::Entry {
        service: req.route.service.to_string(),
        method: method.clone(),
        path: path.clone(),
        status,
        client: peer.addr().ip(),
        request_id: req.request_id.header_value(),
        start,
        head: head_at.saturating_duration_since(start),
    }
    .log(bytes, complete);
}

/// One try at `target`: the request sent, the answer's head read.
async fn attempt(proxy: &Proxy, target: &str, req: &Request) -> Result<(Raw, Answer), Failure> {
    let (mut raw, shelved) = proxy
        .upstreams
        .raw(target)
        .await
        .map_err(Failure::Connect)?;
    if let Err(e) = raw.stream.write_all(&req.out).await {
        return Err(if shelved {
            Failure::Stale
        } else {
            Failure::Broken(e)
        });
    }
    let head = read_answer(proxy, &mut raw, req, shelved);
    let answer = match proxy.opts.response_timeout {
        Some(limit) => tokio::time::timeout(limit, head)
            .await
            .map_err(|_| Failure::TimedOut(limit))??,
        None => head.await?,
    };
    Ok((raw, answer))
}

/// Reads the instance's answer head (passing over interim `1xx` answers).
async fn read_answer(
    proxy: &Proxy,
    raw: &mut Raw,
    req: &Request,
    shelved: bool,
) -> Result<Answer, Failure> {
    let mut heard = false;
    loop {
        if !raw.buf.is_empty() {
            match answer_head(&raw.buf, req, req.closing(proxy)).map_err(Failure::Refused)? {
                Parsed::Partial => {}
                Parsed::Interim(n) => {
                    raw.buf.advance(n);
                    continue;
                }
                Parsed::Answer(n, answer) => {
                    raw.buf.advance(n);
                    return Ok(answer);
                }
            }
            if raw.buf.len() >= berth_runtime::http1::MAX_HEAD_BYTES {
                return Err(Failure::Refused("answer head too large"));
            }
        }
        if raw.buf.capacity() - raw.buf.len() < 1024 {
            raw.buf.reserve(RAW_BUF);
        }
        match raw.stream.read_buf(&mut raw.buf).await {
            Ok(n) if n > 0 => heard = true,
            // A shelved connection the instance closed before answering.
            Ok(_) | Err(_) if shelved && !heard => return Err(Failure::Stale),
            Ok(_) => {
                return Err(Failure::Broken(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "instance closed the connection before answering",
                )))
            }
            Err(e) => return Err(Failure::Broken(e)),
        }
    }
}

enum Parsed {
    Partial,
    /// A `1xx` of this many bytes, to pass over.
    Interim(usize),
    Answer(usize, Answer),
}

/// The instance's answer head in `buf`, rewritten for the client.
fn answer_head(buf: &[u8], req: &Request, close: bool) -> Result<Parsed, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err("answer head does not parse"),
    };
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err("answer head does not parse");
    };
    if code == 101 {
        return Err("switched protocols unasked");
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Interim(head_len));
    }
    // HTTP/1.0 closes unless asked not to.
    let mut instance_closes = version == 0;
    let mut named: Vec<&[u8]> = Vec::new();
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut has_request_id = false;
    let mut has_date = false;
    for h in resp.headers.iter() {
        let n = h.name;
        if is(n, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    instance_closes = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    instance_closes &= version != 0;
                } else if may_drop(t) {
                    named.push(t);
                }
            }
        } else if is(n, "transfer-encoding") {
            // The last coding says whether the body is chunked.
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
            chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if is(n, "content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("answer length does not parse")?;
            if length.is_some_and(|l| l != v) {
                return Err("answer lengths differ");
            }
            length = Some(v);
        } else if is(n, "x-request-id") {
            has_request_id = true;
        } else if is(n, "date") {
            has_date = true;
        }
    }
    let framing = if req.head_only || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(l)) => Framing::Length(l),
        }
    };
    let close = close || framing == Framing::UntilClose;

    let mut out = Vec::with_capacity(head_len + 96);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    match resp.reason.filter(|r| !r.is_empty()) {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(
            StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let n = h.name;
        // The body goes on in the instance's own framing, so its
        // Transfer-Encoding goes with it (and a Content-Length beside one
        // does not).
        let framing_header = is(n, "transfer-encoding");
        if (is_hop_by_hop(n) && !framing_header)
            || named.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes()))
            || (is(n, "content-length") && chunked.is_some())
            || (is(n, "strict-transport-security") && req.hsts.is_some())
        {
            continue;
        }
        header_line(&mut out, n.as_bytes(), h.value);
    }
    if !has_request_id {
        header_line(&mut out, b"x-request-id", req.request_id.as_bytes());
    }
    // A proxy adds the Date an answer lacks (RFC 9110 §6.6.1).
    if !has_date {
        date_line(&mut out);
    }
    if let Some(hsts) = &req.hsts {
        header_line(&mut out, b"strict-transport-security", hsts.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Answer(
        head_len,
        Answer {
            out,
            status: code,
            framing,
            reusable: !instance_closes && framing != Framing::UntilClose,
        },
    ))
}

/// Sends the answer's head and copies its body from the instance to the
/// client as it comes; the body's bytes sent.
async fn pass_answer<T>(raw: &mut Raw, answer: &Answer, client: &mut T) -> io::Result<u64>
where
    T: AsyncWrite + Unpin,
{
    let mut body = Body {
        framing: answer.framing,
        left: match answer.framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        chunks: Chunks::default(),
    };
    // The head goes out with what of the body came with it.
    let (n, mut done) = body.part(&raw.buf)?;
    let mut first = Vec::with_capacity(answer.out.len() + n);
    first.extend_from_slice(&answer.out);
    first.extend_from_slice(&raw.buf[..n]);
    raw.buf.advance(n);
    client.write_all(&first).await?;
    let mut sent = n as u64;
    while !done {
        if raw.buf.capacity() - raw.buf.len() < 1024 {
            raw.buf.reserve(RAW_BUF);
        }
        if raw.stream.read_buf(&mut raw.buf).await? == 0 {
            if answer.framing == Framing::UntilClose {
                break;
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "instance closed the connection inside the answer's body",
            ));
        }
        let (n, end) = body.part(&raw.buf)?;
        client.write_all(&raw.buf[..n]).await?;
        raw.buf.advance(n);
        sent += n as u64;
        done = end;
    }
    Ok(sent)
}

/// Where an answer's body stands.
struct Body {
    framing: Framing,
    /// Bytes of a length-framed body still to come.
    left: u64,
    chunks: Chunks,
}

impl Body {
    /// How many bytes at the front of `buf` belong to the body, and
    /// whether the body ends with them (bytes past its end are not its).
    fn part(&mut self, buf: &[u8]) -> io::Result<(usize, bool)> {
        Ok(match self.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.left -= n as u64;
                (n, self.left == 0)
            }
            Framing::Chunked => {
                let n = self
                    .chunks
                    .feed(buf)
                    .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
                (n, self.chunks.is_done())
            }
            Framing::UntilClose => (buf.len(), false),
        })
    }
}

/// Where a chunked body stands (RFC 9112 §7.1), followed byte by byte so
/// the body is passed on unchanged and its end is known.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// Before a chunk's size.
    #[default]
    Start,
    /// In a chunk's size: its value so far.
    Size(u64),
    /// After the size: an extension or whitespace, up to the line's end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In a trailer line (after the last chunk): its length so far.
    Trailer(usize),
    TrailerLf(bool),
    Done,
}

/// The longest trailer line taken.
const MAX_TRAILER_LINE: usize = 8 * 1024;

impl Chunks {
    fn is_done(&self) -> bool {
        *self == Chunks::Done
    }

    /// How many bytes of `bytes` belong to the body (all, unless it ends
    /// inside them).
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunks::Data(n) = *self {
                let take = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                i += take;
                let n = n - take as u64;
                *self = if n == 0 {
                    Chunks::DataCr
                } else {
                    Chunks::Data(n)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunks::Done, _) => return Ok(i - 1),
                (Chunks::Start, _) | (Chunks::Size(_), _) if b.is_ascii_hexdigit() => {
                    let v = match *self {
                        Chunks::Size(v) => v,
                        _ => 0,
                    };
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    let v = v
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or("chunk size too large")?;
                    Chunks::Size(v)
                }
                (Chunks::Size(v), b';' | b' ' | b'\t') => Chunks::Extension(v),
                (Chunks::Size(v), b'\r') => Chunks::SizeLf(v),
                (Chunks::Extension(v), b'\r') => Chunks::SizeLf(v),
                (Chunks::Extension(_) | Chunks::Trailer(_), b'\n') => {
                    return Err("a line ends without CR")
                }
                (Chunks::Extension(v), _) => Chunks::Extension(v),
                (Chunks::SizeLf(0), b'\n') => Chunks::Trailer(0),
                (Chunks::SizeLf(v), b'\n') => Chunks::Data(v),
                (Chunks::DataCr, b'\r') => Chunks::DataLf,
                (Chunks::DataLf, b'\n') => Chunks::Start,
                (Chunks::Trailer(n), b'\r') => Chunks::TrailerLf(n == 0),
                (Chunks::Trailer(n), _) if n < MAX_TRAILER_LINE => Chunks::Trailer(n + 1),
                (Chunks::TrailerLf(true), b'\n') => Chunks::Done,
                (Chunks::TrailerLf(false), b'\n') => Chunks::Trailer(0),
                _ => return Err("chunked body does not parse"),
            };
        }
        Ok(i)
    }
}

/// A page of the router's own, ready to write.
struct OwnPage {
    status: u16,
    body: Vec<u8>,
}

impl OwnPage {
    fn head(&self, close: bool) -> Vec<u8> {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/html; charset=utf-8\r\n\
             cache-control: no-store\r\ncontent-length: {}\r\n",
            self.status,
            self.body.len()
        )
        .into_bytes();
        date_line(&mut out);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn own_page(status: StatusCode, title: &str, text: &str) -> OwnPage {
    OwnPage {
        status: status.as_u16(),
        body: page_html(status, title, text).into_bytes(),
    }
}

fn bad_gateway(name: &str) -> OwnPage {
    own_page(
        StatusCode::BAD_GATEWAY,
        BAD_GATEWAY_TITLE,
        &no_healthy_instance(name),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use berth_schemas::ids::{InstanceId, ServiceId};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::RouterArgs;
    use crate::stats::HttpStats;
    use crate::table::{Routes, RoutingTable, Target};

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        let body =
            b"5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
        // Whole, then byte by byte: the end is found at the same place and
        // what follows it is not taken.
        let mut whole = body.to_vec();
        whole.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut c = Chunks::default();
        assert_eq!(c.feed(&whole), Ok(body.len()));
        assert!(c.is_done());
        let mut c = Chunks::default();
        for (i, b) in body.iter().enumerate() {
            assert!(!c.is_done(), "ended early at {i}");
            assert_eq!(c.feed(std::slice::from_ref(b)), Ok(1));
        }
        assert!(c.is_done());
        assert_eq!(c.feed(b"more"), Ok(0));
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloX",
            b"0\r\nx: 1\n",
            b"ffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(Chunks::default().feed(bad).is_err(), "{bad:?} taken");
        }
    }

    /// An instance on loopback that answers each request on a connection
    /// with the next of `answers` (all connections share the list; an
    /// empty part is a 300 ms pause), and keeps every head it read.
    struct Instance {
        addr: SocketAddr,
        heads: Arc<Mutex<Vec<String>>>,
        accepted: Arc<Mutex<u32>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Instance {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// An answer, and whether the instance closes the connection after it.
    type Scripted = (&'static [&'static [u8]], bool);

    async fn instance(answers: Vec<Scripted>) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let answers = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
        let (h, a) = (Arc::clone(&heads), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *a.lock().unwrap() += 1;
                let (heads, answers) = (Arc::clone(&h), Arc::clone(&answers));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head: Vec<u8> = buf.drain(..end).collect();
                        heads.lock().unwrap().push(String::from_utf8(head).unwrap());
                        let Some((parts, close)) = answers.lock().unwrap().pop_front() else {
                            return;
                        };
                        for part in parts {
                            // An empty part: the instance takes its time.
                            if part.is_empty() {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            s.write_all(part).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        Instance {
            addr,
            heads,
            accepted,
            task,
        }
    }

    fn proxy_to(addr: SocketAddr) -> Proxy {
        let routes = Routes::default();
        let target = Target {
            instance: InstanceId::generate(),
            addr: addr.to_string(),
        };
        routes.store(RoutingTable::of([Route::new(
            ServiceId::generate(),
            "web".into(),
            RouteState::Serving(vec![target]),
        )]));
        let opts = RouterArgs::default().validate().unwrap();
        Proxy::new(routes, opts, Arc::new(HttpStats::new(1)))
    }

    fn peer() -> Peer {
        Peer::from("192.0.2.7:5555".parse::<SocketAddr>().unwrap())
    }

    /// Serves `requests` as one client connection; what the client read
    /// and what is left for hyper, if anything.
    async fn exchange(proxy: &Proxy, requests: &[u8]) -> (String, Option<Vec<u8>>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(requests).await.unwrap();
        let stop = CancellationToken::new();
        let peer = peer();
        let served = serve(
            proxy,
            server,
            &peer,
            Scheme::Http,
            Duration::from_secs(2),
            &stop,
        );
        let rest = match tokio::time::timeout(Duration::from_secs(10), served).await {
            Ok(Some(mut rest)) => {
                let mut left = vec![0u8; rest.read.len()];
                rest.read_exact(&mut left).await.unwrap();
                drop(rest);
                Some(left)
            }
            Ok(None) => None,
            Err(_) => panic!("the connection was not served in time"),
        };
        let mut read = Vec::new();
        client.read_to_end(&mut read).await.unwrap();
        (String::from_utf8(read).unwrap(), rest)
    }

    #[tokio::test]
    async fn answers_pass_back_in_their_own_framing_on_one_instance_connection() {
        let backend = instance(vec![
            (&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive, Content-Length\r\n\r\nhello"], false),
            (
                &[
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n3\r\nabc\r\n",
                    b"4\r\ndefg\r\n0\r\nx-sum: 7\r\n\r\n",
                ],
                false,
            ),
            (&[b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n", b"HTTP/1.1 204 No Content\r\nx-request-id: mine\r\n\r\n"], false),
            (&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"], false),
            (
                &[b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\nno"],
                false,
            ),
        ])
        .await;
        let proxy = proxy_to(backend.addr);
        let requests = [
            &b"GET /a?q=1 HTTP/1.1\r\nHost: web.localhost\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nx-app: kept\r\n\r\n"[..],
            b"GET /b HTTP/1.1\r\nHost: WEB.localhost:80\r\nx-request-id: abc-1\r\nConnection: host\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
            b"HEAD /d HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
            b"GET /e HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        let (read, rest) = exchange(&proxy, &requests).await;
        assert!(rest.is_none(), "handed to hyper");

        // What the client read: each answer whole, in order, framed as the
        // instance framed it, the 1xx passed over; the last closes.
        let answers: Vec<&str> = read.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 5, "{read}");
        assert!(answers[0].starts_with("200 OK\r\n") && answers[0].ends_with("\r\n\r\nhello"));
        assert!(!answers[0].to_ascii_lowercase().contains("connection:"));
        // What frames an answer stays, even when its Connection names it.
        assert!(
            answers[0].contains("content-length: 5\r\n"),
            "{}",
            answers[0]
        );
        assert!(answers[1].contains("transfer-encoding: chunked\r\n"));
        assert!(!answers[1].contains("content-length"), "{}", answers[1]);
        assert!(answers[1].ends_with("\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-sum: 7\r\n\r\n"));
        assert!(answers[1].contains("x-request-id: abc-1\r\n"));
        assert!(answers[2].starts_with("204 No Content\r\n"));
        assert!(answers[2].contains("x-request-id: mine\r\n"));
        assert!(!answers[2].contains("103"));
        // A HEAD's answer: the length of what a GET would get, no body.
        assert!(answers[3].starts_with("200 OK\r\ncontent-length: 5\r\n"));
        assert!(answers[3].ends_with("\r\n\r\n"), "{}", answers[3]);
        assert!(answers[4].starts_with("404 Not Found\r\n"));
        assert!(answers[4].contains("connection: close\r\n"));
        assert!(answers[4].ends_with("\r\n\r\nno"));
        assert!(answers[4].contains("\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"));
        for a in &answers {
            assert_eq!(a.matches("\r\ndate: ").count(), 1, "one Date: {a}");
        }

        // What the instance read: one connection for all five; hop-by-hop
        // headers gone; the forwarded ones and a request id added.
        assert_eq!(*backend.accepted.lock().unwrap(), 1);
        let heads = backend.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 5);
        let first = heads[0].to_ascii_lowercase();
        assert!(first.starts_with("get /a?q=1 http/1.1\r\n"), "{first}");
        for gone in ["connection:", "x-hop:", "te:", "x-forwarded-proto: https"] {
            assert!(!first.contains(gone), "{gone} forwarded: {first}");
        }
        for kept in [
            "host: web.localhost\r\n",
            "x-app: kept\r\n",
            "x-forwarded-for: 10.0.0.1, 192.0.2.7\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: web.localhost\r\n",
        ] {
            assert!(first.contains(kept), "{kept} missing: {first}");
        }
        let id = first
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap();
        assert_eq!(id.len(), 16, "{id}");
        assert!(heads[1].contains("x-request-id: abc-1\r\n"));
        assert!(heads[1].contains("x-forwarded-host: WEB.localhost:80\r\n"));
        // The host stays, even when the client's Connection names it.
        assert!(
            heads[1].contains("Host: WEB.localhost:80\r\n"),
            "{}",
            heads[1]
        );
        assert!(heads[3].starts_with("HEAD /d HTTP/1.1\r\n"));
        assert!(!heads[4].to_ascii_lowercase().contains("connection:"));
    }

    /// One client connection served while `talk` drives the client's end:
    /// what `serve` returned and what `talk` did.
    async fn converse<F: std::future::Future>(
        proxy: &Proxy,
        header_timeout: Duration,
        stop: &CancellationToken,
        talk: impl FnOnce(tokio::io::DuplexStream) -> F,
    ) -> (Option<Rewound<tokio::io::DuplexStream>>, F::Output) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let peer = peer();
        let served = serve(proxy, server, &peer, Scheme::Http, header_timeout, stop);
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(served, talk(client))
        })
        .await
        .expect("served in time")
    }

    /// Sends a GET for the route and reads into `read` until `answered`.
    async fn ask(
        client: &mut tokio::io::DuplexStream,
        read: &mut Vec<u8>,
        answered: impl Fn(&[u8]) -> bool,
    ) {
        client.write_all(GET).await.unwrap();
        while !answered(read) {
            let mut chunk = [0u8; 1024];
            let got = client.read(&mut chunk).await.unwrap();
            assert!(got > 0, "closed before the answer");
            read.extend_from_slice(&chunk[..got]);
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n";

    #[tokio::test]
    async fn the_plain_listener_serves_gets_on_this_path() {
        // hyper writes header names in lower case; this path passes them
        // on as the client wrote them, which tells the two apart.
        let ok: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
        let backend = instance(vec![(ok, false)]).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let timeouts = crate::https::ClientTimeouts {
            header: Duration::from_secs(5),
            send: Duration::from_secs(5),
        };
        let proxy = Arc::new(proxy_to(backend.addr));
        let stopper = stop.clone();
        let listening = tokio::spawn(async move {
            crate::worker(listener, proxy, &stopper, Duration::from_secs(1), timeouts).await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Case-Kept: 1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut read = String::new();
        client.read_to_string(&mut read).await.unwrap();
        assert!(read.ends_with("\r\n\r\nok"), "{read}");
        let heads = backend.heads.lock().unwrap().clone();
        assert!(heads[0].contains("\r\nX-Case-Kept: 1\r\n"), "{}", heads[0]);
        stop.cancel();
        listening.await.unwrap();
    }

    #[tokio::test]
    async fn the_header_timeout_runs_from_each_wait_for_a_request() {
        let ok: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
        let backend = instance(vec![(ok, false), (ok, false), (ok, false)]).await;
        let proxy = proxy_to(backend.addr);
        let limit = Duration::from_millis(400);
        let talk = |mut client| async move {
            // Three requests 250 ms apart: longer than the limit in all,
            // never that long between two.
            let mut read = Vec::new();
            for n in 1..=3 {
                ask(&mut client, &mut read, |r| {
                    r.windows(2).filter(|w| w == b"ok").count() >= n
                })
                .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // Then half a head, and nothing more: cut off.
            let waiting = tokio::time::Instant::now();
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            waiting.elapsed()
        };
        let (rest, waited) = converse(&proxy, limit, &CancellationToken::new(), talk).await;
        assert!(rest.is_none());
        assert!(
            waited >= Duration::from_millis(100),
            "cut off after {waited:?}"
        );
        assert!(
            waited < limit + Duration::from_millis(300),
            "cut off after {waited:?}"
        );
        assert_eq!(backend.heads.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_kept_connection_follows_the_routing_table() {
        let a: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"];
        let b: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"];
        let (first, second) = (
            instance(vec![(a, false)]).await,
            instance(vec![(b, false)]).await,
        );
        let proxy = proxy_to(first.addr);
        let (proxy_ref, second_addr) = (&proxy, second.addr);
        let talk = |mut client: tokio::io::DuplexStream| async move {
            let mut answers = Vec::new();
            for body in [b"a", b"b"] {
                ask(&mut client, &mut answers, |r| r.ends_with(body)).await;
                // The service moves to the second instance.
                proxy_ref.routes.store(RoutingTable::of([Route::new(
                    ServiceId::generate(),
                    "web".into(),
                    RouteState::Serving(vec![Target {
                        instance: InstanceId::generate(),
                        addr: second_addr.to_string(),
                    }]),
                )]));
            }
            drop(client);
        };
        converse(
            &proxy,
            Duration::from_secs(5),
            &CancellationToken::new(),
            talk,
        )
        .await;
        assert_eq!(first.heads.lock().unwrap().len(), 1);
        assert_eq!(second.heads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_answer_sent_while_stopping_closes_its_connection() {
        let slow: &[&[u8]] = &[b"", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];
        let backend = instance(vec![(slow, false), (slow, false)]).await;
        let proxy = proxy_to(backend.addr);
        let stop = CancellationToken::new();
        let (proxy_ref, stop_ref, backend_ref) = (&proxy, &stop, &backend);
        let talk = |mut client: tokio::io::DuplexStream| async move {
            client.write_all(GET).await.unwrap();
            // The router stops while the instance is still answering.
            while backend_ref.heads.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            proxy_ref.stop_taking();
            stop_ref.cancel();
            let mut read = Vec::new();
            client.read_to_end(&mut read).await.unwrap();
            String::from_utf8(read).unwrap()
        };
        let (rest, read) = converse(&proxy, Duration::from_secs(5), &stop, talk).await;
        assert!(rest.is_none());
        assert!(read.starts_with("HTTP/1.1 200 OK\r\n"), "{read}");
        assert!(read.contains("connection: close\r\n"), "{read}");
        assert!(read.ends_with("\r\n\r\nok"), "{read}");
    }

    #[tokio::test]
    async fn shelved_connections_the_instance_closed_are_passed_over() {
        // An instance that answers after 50 ms and closes a connection
        // idle for 100 ms, saying nothing (as Node.js does after 5 s).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0u32));
        let count = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            let idle = Duration::from_millis(100);
                            match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        buf.clear();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = proxy_to(addr);
        let one = || {
            exchange(
                &proxy,
                b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n",
            )
        };
        // Three at once: three connections shelved; then all three closed.
        let (a, b, c) = tokio::join!(one(), one(), one());
        for (read, _) in [a, b, c] {
            assert!(read.starts_with("HTTP/1.1 200 OK"), "{read}");
        }
        assert_eq!(*accepted.lock().unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (read, _) = one().await;
        assert!(read.starts_with("HTTP/1.1 200 OK"), "{read}");
        assert_eq!(*accepted.lock().unwrap(), 4);
        server.abort();
    }

    #[tokio::test]
    async fn an_answer_ended_by_closing_closes_the_client_connection_too() {
        let backend = instance(vec![(
            &[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"],
            true,
        )])
        .await;
        let proxy = proxy_to(backend.addr);
        let (read, rest) = exchange(
            &proxy,
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\nGET /never HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
        )
        .await;
        assert!(rest.is_none());
        assert!(read.contains("connection: close\r\n"), "{read}");
        assert!(read.ends_with("\r\n\r\nuntil the end"), "{read}");
        assert_eq!(backend.heads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn what_this_path_does_not_take_goes_to_hyper_unread() {
        let taken = GET;
        for left in [
            &b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"GET /chat HTTP/1.1\r\nHost: web.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: web.localhost\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n",
            b"GET http://web.localhost/ HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\nHost: other.localhost\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost web.localhost\r\n\r\n",
        ] {
            let mut requests = taken.to_vec();
            requests.extend_from_slice(left);
            let backend = instance(vec![(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], false)]).await;
            let proxy = proxy_to(backend.addr);
            let (read, rest) = exchange(&proxy, &requests).await;
            // The first is answered here; the next is left whole for hyper.
            assert!(read.ends_with("\r\n\r\nok"), "{read}");
            assert_eq!(rest.as_deref(), Some(left), "{}", String::from_utf8_lossy(left));
        }
    }
}

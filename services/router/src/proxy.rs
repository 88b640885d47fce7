//! The public HTTP side: `Host: <name>.<base-domain>` (or one of the
//! service's custom domains) → one healthy instance
//! of that web service, streamed both ways through a pooled HTTP/1 client
//! (a GET or HEAD without a body over HTTP/1.1 takes berth's own path,
//! [`crate::h1`], with the same rules).
//!
//! - round robin over the route's targets; a failed connect moves on to the
//!   next instance (the unread body comes back, see [`crate::body`]); a
//!   GET/HEAD whose empty body was sent is retried on any error before a
//!   response, other requests are not (the instance may have acted on them);
//! - every attempt reads the table afresh, and when the instances tried are
//!   all unreachable the request waits briefly for the next table: the old
//!   instances of a rollout may go down a moment before this router has
//!   applied the `deploy_live` that moved traffic off them;
//! - answers of its own are short pages (404 unknown host, 502 no healthy
//!   instance, 503 suspended) that name nothing internal;
//! - with HTTPS on ([`HttpsSide`]): plain HTTP answers ACME HTTP-01
//!   challenges from the certificate store, and redirects every other
//!   request for a host the router holds a certificate for to HTTPS;
//!   HTTPS answers carry `Strict-Transport-Security` when configured.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_domain::service::validate;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::{Returnable, Stall};
use crate::config::RouterOptions;
pub use crate::headers::Peer;
use crate::headers::{forwarded_headers, strip_hop_by_hop, upgrade_asked, X_REQUEST_ID};
use crate::https::{challenge, redirect_to, HttpsSide, ACME_CHALLENGE};
use crate::stats::HttpStats;
use crate::table::{Route, RouteState, Routes};
use crate::upstream::{Pooled, SendError, Upstreams};

/// What the router answers with.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How long an instance that refused or timed out a connect is passed over
/// (unless every instance is): a dead address costs one failed connect,
/// not one per request, until the log says it is gone.
pub const EJECT_FOR: Duration = Duration::from_secs(5);

/// The 404 for a host no service answers at (counted apart: it belongs to
/// no service).
fn unknown() -> Response<ProxyBody> {
    metrics::counter!("berth_router_unknown_host_total").increment(1);
    page(StatusCode::NOT_FOUND, "Not found", NOT_FOUND)
}

/// Forwards requests by host name.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) routes: Routes,
    pub(crate) opts: RouterOptions,
    pub(crate) upstreams: Arc<Upstreams>,
    pub(crate) ejected: Ejected,
    /// Requests per service, for the metrics.
    pub(crate) stats: Arc<HttpStats>,
    pub(crate) https: Option<HttpsSide>,
    /// Set once the router stops taking requests: answers still sent
    /// say the connection closes after them.
    stopping: std::sync::atomic::AtomicBool,
}

/// How a request reached the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// Addresses whose last connect failed, until when.
#[derive(Debug, Default)]
pub(crate) struct Ejected(Mutex<HashMap<String, Instant>>);

impl Ejected {
    pub(crate) fn eject(&self, addr: &str, now: Instant) {
        if let Ok(mut m) = self.0.lock() {
            // Forget expired entries so the map stays small.
            m.retain(|_, until| *until > now);
            m.insert(addr.to_owned(), now + EJECT_FOR);
        }
    }

    fn is_ejected(&self, addr: &str, now: Instant) -> bool {
        match self.0.lock() {
            Ok(m) => !m.is_empty() && m.get(addr).is_some_and(|until| *until > now),
            Err(_) => false,
        }
    }
}

impl Proxy {
    /// A proxy over `routes`, counting requests into `stats`.
    pub fn new(routes: Routes, opts: RouterOptions, stats: Arc<HttpStats>) -> Self {
        let upstreams = Upstreams::new(opts.connect_timeout, opts.pool_idle);
        Proxy {
            routes,
            opts,
            upstreams,
            ejected: Ejected::default(),
            stats,
            https: None,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The router is stopping: every answer from now on closes its
    /// connection after it.
    pub(crate) fn stop_taking(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the router is stopping (a relaxed load: cheap per request).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops connections to instances idle longer than the pool allows
    /// (call now and then, from the worker's thread).
    pub fn sweep(&self) {
        self.upstreams.sweep();
    }

    /// The proxy with its HTTPS side (challenges, redirects, HSTS).
    pub fn with_https(mut self, https: HttpsSide) -> Self {
        self.https = Some(https);
        self
    }

    /// Answers one plain HTTP request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let Some(https) = &self.https {
            if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE) {
                return Ok(challenge(https, token).await);
            }
        }
        self.serve(req, peer, Scheme::Http).await
    }

    /// Answers one HTTPS request (HTTP/2 or HTTP/1.1) from `peer`.
    pub async fn handle_https(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, Infallible> {
        self.serve(req, peer, Scheme::Https).await
    }

    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        scheme: Scheme,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let Some(host) = host_of(&req) else {
            return Ok(unknown());
        };
        let table = self.routes.load();
        let Some(route) = table.route_for_host(&host, &self.opts.base_domain).cloned() else {
            return Ok(unknown());
        };
        drop(table);
        // Who the client is matters only to an allow list: the chain of
        // X-Forwarded-For is read only then.
        if route.allow.is_some()
            && !route.lets_in(crate::headers::client_ip(
                peer.addr().ip(),
                req.headers(),
                &self.opts.trusted_proxies,
            ))
        {
            let resp = page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Your address is not on this service's IP allow list.",
            );
            self.stats.record(
                &route.service,
                resp.status().as_u16(),
                start.elapsed(),
                Instant::now(),
            );
            return Ok(resp);
        }
        // The service's HTTPS redirect: plain HTTP to a host with a
        // certificate goes to HTTPS; HTTPS answers carry HSTS.
        let mut hsts = None;
        if let Some(https) = self.https.as_ref().filter(|_| route.https_redirect) {
            match scheme {
                Scheme::Http if https.opts.redirect => {
                    if let Some(to) = redirect_to(&req, https) {
                        return Ok(to);
                    }
                }
                Scheme::Https => hsts = https.hsts.clone(),
                Scheme::Http => {}
            }
        }
        let logged = self
            .opts
            .access_log
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let service = route.service.clone();
        let mut resp = match &route.state {
            RouteState::Suspended => page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service suspended",
                &format!("{} is suspended by its owner.", route.name),
            ),
            RouteState::Maintenance { uri } => maintenance(&route.name, uri),
            RouteState::Serving(_) => self.forward(route, req, &peer, scheme, &host).await,
        };
        if let Some(v) = hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
        // Until the answer's head: what the client waited for.
        let now = Instant::now();
        let head = now.saturating_duration_since(start);
        let status = resp.status().as_u16();
        self.stats.record(&service, status, head, now);
        let Some((method, path)) = logged else {
            return Ok(resp);
        };
        let request_id = resp.headers().get(&X_REQUEST_ID).cloned();
        let entry = crate::access::Entry {
            service: service.to_string(),
            method,
            path,
            status,
            client: peer.addr().ip(),
            request_id,
            start,
            head,
        };
        Ok(resp.map(|body| crate::access::Logged::new(body, entry).boxed()))
    }

    async fn forward(
        &self,
        first: Arc<Route>,
        req: Request<Incoming>,
        peer: &Peer,
        scheme: Scheme,
        host: &str,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // A protocol upgrade (WebSocket): asked of the instance as the
        // client asked it; on its `101` both connections are joined.
        let upgrade = upgrade_asked(&parts.headers);
        let mut client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<OnUpgrade>());
        let mut headers = forwarded_headers(parts.headers, peer, scheme, host);
        let request_id = headers.get(&X_REQUEST_ID).cloned();
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let method = parts.method;
        let path = match parts.uri.path_and_query() {
            Some(p) => Uri::from(p.clone()),
            None => Uri::from_static("/"),
        };
        let retry_any = method == Method::GET || method == Method::HEAD;
        let name = first.name.clone();

        // A request without a body can be sent again as often as needed,
        // even when the client does not hand the (empty) body back.
        let empty = body.is_end_stream();
        let mut body = Some(body);
        let stall = Stall::after(self.opts.body_timeout);
        let mut attempts = Attempts::new(first, self.opts.max_attempts);
        // A pooled connection the instance had closed is replaced once.
        let mut stale_retry = true;
        loop {
            let Some(target) = self.next_target(&mut attempts).await else {
                break;
            };
            let (wrapped, mut back) = if empty {
                (Returnable::empty(), None)
            } else {
                let Some(b) = body.take() else { break };
                let (wrapped, back) = Returnable::new(b, stall.clone());
                (wrapped, Some(back))
            };
            let out = build_request(&method, &path, &headers, wrapped);
            let sent = self.upstreams.send(&target, out);
            let answered = match self.opts.response_timeout {
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Not retried: the instance may be acting on it.
                        tracing::warn!(service.name = %name, instance.addr = %target, timeout = ?limit, "instance did not answer in time");
                        return page(
                            StatusCode::GATEWAY_TIMEOUT,
                            "Timed out",
                            &format!("{name} did not answer in time."),
                        );
                    }
                },
                None => sent.await,
            };
            match answered {
                Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let Some(client) = client_upgrade.take() else {
                        return bad_gateway(&name);
                    };
                    resp.body_mut().keep_connection();
                    let instance = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client, instance));
                    return switched(resp);
                }
                Ok(resp) => {
                    let mut out = response(resp);
                    if let Some(id) = request_id {
                        out.headers_mut().entry(X_REQUEST_ID).or_insert(id);
                    }
                    return out;
                }
                // A pooled connection the instance closed as the request
                // went out (its keep-alive ran out): a GET or HEAD is sent
                // again on a new connection, as if nothing happened.
                Err(SendError::Request(e))
                    if stale_retry && retry_any && empty && e.is_incomplete_message() =>
                {
                    tracing::debug!(service.name = %name, instance.addr = %target, "pooled connection closed under the request; sent again");
                    stale_retry = false;
                    continue;
                }
                Err(SendError::Stale) if stale_retry => {
                    // Nothing was sent: try again, on a new connection.
                    stale_retry = false;
                    if let Some(back) = back.as_mut() {
                        match back.try_recv() {
                            Ok(b) => body = Some(b),
                            Err(_) => return bad_gateway(&name),
                        }
                    }
                    continue;
                }
                Err(_) if stall.tripped() => {
                    tracing::info!(service.name = %name, timeout = ?self.opts.body_timeout, "request body stalled; cut off");
                    return page(
                        StatusCode::REQUEST_TIMEOUT,
                        "Request timeout",
                        "The request body stopped arriving.",
                    );
                }
                Err(e) => {
                    let connect = e.is_connect() || matches!(e, SendError::Stale);
                    if connect {
                        self.ejected.eject(&target, Instant::now());
                    }
                    tracing::debug!(service.name = %name, instance.addr = %target, connect, error = %e, "instance attempt failed");
                    metrics::counter!("berth_router_failed_attempts_total", "connect" => if connect { "true" } else { "false" }).increment(1);
                    attempts.failed(self, target);
                    let again = (connect || retry_any)
                        && match back.as_mut().map(|b| b.try_recv()) {
                            None => true,
                            Some(Ok(b)) => {
                                body = Some(b);
                                true
                            }
                            Some(Err(_)) => false,
                        };
                    if !again {
                        tracing::warn!(service.name = %name, error = %e, "request failed after it was sent; not retried");
                        return bad_gateway(&name);
                    }
                }
            }
        }
        attempts.gave_up();
        bad_gateway(&name)
    }

    /// The instance a request tries next: round robin over its route's
    /// targets not tried yet, ejected ones last; once every one tried has
    /// failed, the next table is waited for once (the old instances of a
    /// rollout may go down a moment before this router has applied the
    /// `deploy_live` that moved traffic off them). `None`: give up.
    pub(crate) async fn next_target(&self, a: &mut Attempts) -> Option<String> {
        loop {
            if a.tried.len() < a.budget {
                if let Some(target) = pick(&a.route, &a.tried, &self.ejected) {
                    return Some(target);
                }
            }
            if a.waited || a.tried.is_empty() {
                return None;
            }
            a.waited = true;
            a.budget = a.tried.len() + self.opts.max_attempts;
            a.route = self.next_route(&a.route.name, &a.route).await?;
        }
    }

    /// Waits (up to the connect timeout) for a table whose route for `name`
    /// differs from `current`.
    async fn next_route(&self, name: &str, current: &Arc<Route>) -> Option<Arc<Route>> {
        let mut swaps = self.routes.swaps();
        let deadline = tokio::time::Instant::now() + self.opts.connect_timeout;
        loop {
            // The receiver holds the table itself; marking it seen makes
            // `changed` wait for the next one.
            let latest = swaps.borrow_and_update().get(name).cloned();
            if let Some(r) = latest.filter(|r| !Arc::ptr_eq(r, current)) {
                return Some(r);
            }
            match tokio::time::timeout_at(deadline, swaps.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

/// Where one request's tries at its service's instances stand.
#[derive(Debug)]
pub(crate) struct Attempts {
    pub route: Arc<Route>,
    tried: Vec<String>,
    budget: usize,
    waited: bool,
}

impl Attempts {
    pub(crate) fn new(route: Arc<Route>, budget: usize) -> Self {
        Attempts {
            route,
            tried: Vec::new(),
            budget,
            waited: false,
        }
    }

    /// `target` failed: not tried again for this request; the route is
    /// read afresh.
    pub(crate) fn failed(&mut self, proxy: &Proxy, target: String) {
        self.tried.push(target);
        if let Some(r) = proxy.routes.load().get(&self.route.name) {
            self.route = Arc::clone(r);
        }
    }

    /// No instance answered: logged when some were tried.
    pub(crate) fn gave_up(&self) {
        if !self.tried.is_empty() {
            tracing::warn!(service.name = %self.route.name, attempts = self.tried.len(), "no instance reachable");
        }
    }
}

/// The next target in round-robin order not tried yet for this request,
/// passing over ejected ones unless nothing else is left.
fn pick(route: &Route, tried: &[String], ejected: &Ejected) -> Option<String> {
    let targets = route.targets();
    if targets.is_empty() {
        return None;
    }
    let start = route.next_start();
    let now = Instant::now();
    let mut fallback = None;
    for k in 0..targets.len() {
        let addr = &targets[(start + k) % targets.len()].addr;
        if tried.contains(addr) {
            continue;
        }
        if !ejected.is_ejected(addr, now) {
            return Some(addr.clone());
        }
        fallback.get_or_insert(addr);
    }
    fallback.cloned()
}

/// The request to an instance: origin-form URI, HTTP/1.1, the forwarded
/// headers.
fn build_request(
    method: &Method,
    path: &Uri,
    headers: &HeaderMap,
    body: Returnable,
) -> Request<Returnable> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = path.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers.clone();
    req
}

/// The instance's `101`, passed on with the protocol it switched to.
fn switched(resp: Response<Pooled>) -> Response<ProxyBody> {
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    let mut out = response(resp);
    out.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = protocol {
        out.headers_mut().insert(header::UPGRADE, p);
    }
    out
}

/// Joins the client's upgraded connection to the instance's until either
/// side closes. The instance keeps it through a deploy until it is
/// stopped (its shutdown delay), as an open request would.
async fn tunnel(client: OnUpgrade, instance: OnUpgrade) {
    let (client, instance) = match tokio::join!(client, instance) {
        (Ok(c), Ok(i)) => (c, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade not completed");
            return;
        }
    };
    let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn response(resp: Response<Pooled>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

/// The host the client asked for: the absolute-form URI's (and HTTP/2's
/// `:authority`), else `Host`.
pub(crate) fn host_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(match a.port_u16() {
            Some(port) => format!("{}:{port}", a.host()),
            None => a.host().to_owned(),
        });
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A request's host as routes are keyed: lower case, without a port or a
/// trailing dot (borrowed when the host is already so, as most are).
pub(crate) fn normal_host(host: &str) -> std::borrow::Cow<'_, str> {
    let mut host = host.trim();
    if let Some((h, port)) = host.rsplit_once(':') {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            host = h;
        }
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// `name.base[:port]` → `name` (lower case), when it is a valid service
/// name (a single DNS label).
pub fn service_name(host: &str, base_domain: &str) -> Option<String> {
    service_label(&normal_host(host), base_domain).map(str::to_owned)
}

/// The service name in a host already made [`normal_host`].
pub(crate) fn service_label<'a>(host: &'a str, base_domain: &str) -> Option<&'a str> {
    let name = host.strip_suffix(base_domain)?.strip_suffix('.')?;
    validate::name(name).is_ok().then_some(name)
}

/// The HTML of [`page`].
pub(crate) fn page_html(status: StatusCode, title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\
         <body><h1>{code} {title}</h1><p>{text}</p></body></html>\n",
        code = status.as_u16()
    )
}

pub(crate) const NOT_FOUND: &str = "There is no service at this address.";

fn bad_gateway(name: &str) -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        BAD_GATEWAY_TITLE,
        &no_healthy_instance(name),
    )
}

pub(crate) const BAD_GATEWAY_TITLE: &str = "No healthy instance";

/// The text of the 502 a service with no instance to answer gets.
pub(crate) fn no_healthy_instance(name: &str) -> String {
    format!("{name} has no healthy instance to answer right now. Try again in a moment.")
}

/// A short HTML page. `text` is a service name (a DNS label) or fixed text,
/// so nothing needs escaping.
pub(crate) fn page(status: StatusCode, title: &str, text: &str) -> Response<ProxyBody> {
    html_answer(status, page_html(status, title, text))
}

/// An answer of `status` carrying the page `html`, not to be cached.
fn html_answer(status: StatusCode, html: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(html))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// How long a client is told to wait before asking again a service in
/// maintenance.
const MAINTENANCE_RETRY_AFTER: &str = "120";

/// The 503 a service in maintenance answers with: berth's page, which
/// sends browsers on to `uri` when one is set (a `Refresh` header and a
/// link; the router never fetches it). `uri` was checked when it was set
/// (an `http(s)` address without spaces, quotes, `<` or `>`) and is
/// escaped here all the same.
fn maintenance(name: &str, uri: &str) -> Response<ProxyBody> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let title = "Down for maintenance";
    let text = format!("{name} is down for maintenance. Please try again shortly.");
    let escaped = html_escape(uri);
    let html = if uri.is_empty() {
        page_html(status, title, &text)
    } else {
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"0; url={escaped}\">\
             <title>503 {title}</title></head><body><h1>503 {title}</h1><p>{text} \
             <a href=\"{escaped}\">More</a></p></body></html>\n"
        )
    };
    let mut resp = html_answer(status, html);
    let h = resp.headers_mut();
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(MAINTENANCE_RETRY_AFTER),
    );
    if !uri.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&format!("0; url={uri}")) {
            h.insert(http::header::HeaderName::from_static("refresh"), v);
        }
    }
    resp
}

/// `s` with the characters HTML gives a meaning escaped.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn service_names_from_hosts() {
        let cases = [
            ("web.localhost", Some("web")),
            ("WEB.Localhost:8080", Some("web")),
            ("web.localhost.", Some("web")),
            ("a-b-1.apps.example.com", None),
            ("localhost", None),
            (".localhost", None),
            ("a.b.localhost", None),
            ("web.localhostx", None),
            ("weblocalhost", None),
            ("we_b.localhost", None),
            ("web.localhost:port", None),
            ("-web.localhost", None),
            ("web-.localhost", None),
        ];
        for (host, want) in cases {
            assert_eq!(service_name(host, "localhost").as_deref(), want, "{host}");
        }
        assert_eq!(
            service_name("a-b-1.apps.example.com:80", "apps.example.com").as_deref(),
            Some("a-b-1")
        );
    }

    #[test]
    fn pick_goes_round_and_passes_over_ejected_instances() {
        use crate::table::Target;
        use berth_schemas::ids::{InstanceId, ServiceId};
        let targets = (1..=3)
            .map(|i| Target {
                instance: InstanceId::generate(),
                addr: format!("127.0.0.1:{i}"),
            })
            .collect();
        let route = Route::new(
            ServiceId::generate(),
            "web".into(),
            RouteState::Serving(targets),
        );
        let none = Ejected::default();
        let picks: Vec<String> = (0..6).map(|_| pick(&route, &[], &none).unwrap()).collect();
        assert_eq!(
            picks,
            ["1", "2", "3", "1", "2", "3"].map(|p| format!("127.0.0.1:{p}"))
        );

        let ejected = Ejected::default();
        ejected.eject("127.0.0.1:2", Instant::now());
        for _ in 0..6 {
            assert_ne!(pick(&route, &[], &ejected).unwrap(), "127.0.0.1:2");
        }
        // Tried the others already: the ejected one is still better than 502.
        let tried = ["127.0.0.1:1".to_owned(), "127.0.0.1:3".to_owned()];
        assert_eq!(pick(&route, &tried, &ejected).unwrap(), "127.0.0.1:2");
        let all = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"].map(String::from);
        assert_eq!(pick(&route, &all, &ejected), None);
        // Ejection ends.
        assert!(!ejected.is_ejected("127.0.0.1:2", Instant::now() + EJECT_FOR));
    }
}

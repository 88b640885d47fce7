//! The headers a proxied request and its answer carry between the client
//! and the instance: hop-by-hop ones dropped (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` set and a request id added, upgrades recognised.

use std::net::{IpAddr, SocketAddr};

use berth_schemas::cidr::Cidr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::Scheme;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `X-Forwarded-For` entries looked at, at most, from the right.
const FORWARDED_LOOKED_AT: usize = 32;

/// Who a request comes from: who connected, or — when that is one of the
/// `trusted` proxies — the last address of the request's `X-Forwarded-For`
/// chain that is not one of them. Each proxy appends who connected to it,
/// so what is left of the first untrusted entry is the client's own word
/// and never believed; an entry that is not an address stops the walk at
/// the proxy that sent it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let trusts = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !trusts(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev().take(FORWARDED_LOOKED_AT) {
        let parsed = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()));
        let Some(ip) = parsed else {
            return client;
        };
        if !trusts(ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// A client connection's address, with the `X-Forwarded-For` entry it adds
/// made once per connection rather than per request.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    forwarded_for: Option<HeaderValue>,
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer {
            addr,
            forwarded_for: HeaderValue::from_str(&addr.ip().to_string()).ok(),
        }
    }
}

impl Peer {
    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's address as an `X-Forwarded-For` entry.
    pub(crate) fn forwarded_for(&self) -> &[u8] {
        self.forwarded_for
            .as_ref()
            .map_or(b"", HeaderValue::as_bytes)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// The request's headers as the instance gets them: hop-by-hop ones
/// dropped, `X-Forwarded-*` added (the client's address appended to any
/// chain it sent; the original Host kept, so apps see their public name).
pub(crate) fn forwarded_headers(
    mut h: HeaderMap,
    peer: &Peer,
    scheme: Scheme,
    authority: &str,
) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    // HTTP/2 carries the host in `:authority`, not in a Host header: the
    // instance (HTTP/1.1) gets it as Host.
    if !h.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            h.insert(header::HOST, v);
        }
    }
    let host = h.get(header::HOST).cloned();
    // Room for the headers added below, so the map grows at most once.
    h.reserve(4);
    let chain = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.addr.ip())).ok(),
        None => peer.forwarded_for.clone(),
    };
    if let Some(v) = chain {
        h.insert(X_FORWARDED_FOR, v);
    }
    let proto = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
    // A request id the instance and the client both see: the client's
    // own when it sent a usable one, else a new one.
    let usable = h
        .get(&X_REQUEST_ID)
        .is_some_and(|v| usable_request_id(v.as_bytes()));
    if !usable {
        h.insert(X_REQUEST_ID, new_request_id());
    }
    h
}

/// Whether a request id the client sent is kept: 1 to 128 characters,
/// letters, digits and `-_.:` only.
pub(crate) fn usable_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// Whether a header names one hop only (RFC 9110 §7.6.1), whatever its
/// case; the names a `Connection` header lists are hop-by-hop too.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case("keep-alive")
        || name.eq_ignore_ascii_case("proxy-connection")
}

/// 16 hex digits: a per-process random start plus a counter, so ids never
/// repeat within a router and rarely across routers.
pub(crate) fn new_request_id() -> HeaderValue {
    let hex = request_id_digits();
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}

/// The digits of a new request id (see [`new_request_id`]).
pub(crate) fn request_id_digits() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(rand::random);
    let id = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        let nibble = (id >> (60 - 4 * i)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    hex
}

/// The tokens of the `Connection` header(s), trimmed.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages have none: one pass over their few names instead of a
    // lookup per hop-by-hop name.
    if !h.keys().any(|n| is_hop_by_hop(n.as_str())) {
        return;
    }
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// The protocol a request asks to upgrade to (`Upgrade`, when its
/// `Connection` names `upgrade`).
pub(crate) fn upgrade_asked(h: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(h)
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
        .then(|| h.get(header::UPGRADE).cloned())
        .flatten()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_address_behind_trusted_proxies() {
        let lb: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |chains: &[&str]| {
            let mut h = HeaderMap::new();
            for c in chains {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(c).unwrap());
            }
            h
        };
        let from = |peer: &str, chains: &[&str], trusted: &[Cidr]| {
            client_ip(ip(peer), &with(chains), trusted)
        };
        // Not behind a trusted proxy: the chain is the client's word.
        assert_eq!(
            from("198.51.100.7", &["203.0.113.9"], &lb),
            ip("198.51.100.7")
        );
        assert_eq!(from("10.0.0.2", &["203.0.113.9"], &[]), ip("10.0.0.2"));
        // Behind the balancer: what it saw.
        assert_eq!(from("10.0.0.2", &["203.0.113.9"], &lb), ip("203.0.113.9"));
        // A client writing its own entry first is not believed: the last
        // untrusted entry is who reached the balancer.
        assert_eq!(
            from("10.0.0.2", &["203.0.113.9, 198.51.100.1"], &lb),
            ip("198.51.100.1")
        );
        // Two proxies of ours, over two headers; ports and IPv6.
        assert_eq!(
            from("10.0.0.2", &["203.0.113.9:5050", "10.1.1.1"], &lb),
            ip("203.0.113.9")
        );
        assert_eq!(
            from("fd00::1", &["[2001:db8::5]:443"], &lb),
            ip("2001:db8::5")
        );
        // Garbage stops at the proxy that sent it; no header: the proxy.
        assert_eq!(
            from("10.0.0.2", &["203.0.113.9, unknown"], &lb),
            ip("10.0.0.2")
        );
        assert_eq!(from("10.0.0.2", &[], &lb), ip("10.0.0.2"));
        // Only our proxies all the way: the first of them.
        assert_eq!(
            from("10.0.0.2", &["10.9.9.9, 10.1.1.1"], &lb),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarded_added() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("web.localhost"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let out = forwarded_headers(
            h,
            &Peer::from(
                "192.0.2.7:5555"
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|_| unreachable!()),
            ),
            Scheme::Http,
            // A Host header sent is kept, whatever the request's authority.
            "other.test",
        );
        for gone in ["connection", "x-secret-hop", "keep-alive", "te"] {
            assert!(out.get(gone).is_none(), "{gone} forwarded");
        }
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "web.localhost");
        assert_eq!(out["host"], "web.localhost");
        assert_eq!(out["x-app"], "kept");

        // No chain sent, one hop-by-hop header alone, no request id: the
        // client's address, the header gone, a fresh id each time.
        let peer = Peer::from(
            "[2001:db8::7]:443"
                .parse::<SocketAddr>()
                .unwrap_or_else(|_| unreachable!()),
        );
        let plain = || {
            let mut h = HeaderMap::new();
            h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
            forwarded_headers(h, &peer, Scheme::Https, "web.example.com")
        };
        let (one, two) = (plain(), plain());
        assert!(one.get("proxy-connection").is_none());
        assert_eq!(one["x-forwarded-for"], "2001:db8::7");
        assert_eq!(one["x-forwarded-proto"], "https");
        assert_eq!(one["host"], "web.example.com");
        for out in [&one, &two] {
            let id = out["x-request-id"].as_bytes();
            assert_eq!(id.len(), 16);
            assert!(id
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(one["x-request-id"], two["x-request-id"]);
    }
}

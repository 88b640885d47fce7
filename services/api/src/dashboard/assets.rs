//! The dashboard's script and style sheet, compiled into the binary: no
//! CDN, nothing fetched from elsewhere. Their URLs carry a hash of their
//! content, so a new build is never served an old cached copy.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const JS: &str = include_str!("assets/dashboard.js");
const CSS: &str = include_str!("assets/dashboard.css");

/// FNV-1a of `bytes`: a cache key, not a security measure.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn versioned(path: &'static str, body: &str, cell: &'static OnceLock<String>) -> &'static str {
    cell.get_or_init(|| format!("{path}?v={:016x}", fnv(body.as_bytes())))
}

/// Where pages load the script from.
pub fn js_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/dashboard.js", JS, &URL)
}

/// Where pages load the style sheet from.
pub fn css_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/dashboard.css", CSS, &URL)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The URL changes with the content: cache for a day.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// GET /assets/dashboard.js
pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

/// GET /assets/dashboard.css
pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

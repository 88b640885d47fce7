//! The dashboard's script and style sheet, compiled into the binary: no
//! CDN, nothing fetched from elsewhere. Their URLs carry a hash of their
//! content, so a new build is never served an old cached copy.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const JS: &str = include_str!("assets/dashboard.js");
const CSS: &str = include_str!("assets/dashboard.css");
/// The terminal page's own script, and xterm.js (vendored: see
/// `assets/vendor/xterm/README.md`).
const TERMINAL_JS: &str = include_str!("assets/terminal.js");
const XTERM_JS: &str = include_str!("assets/vendor/xterm/xterm.js");
const XTERM_CSS: &str = include_str!("assets/vendor/xterm/xterm.css");
const XTERM_FIT_JS: &str = include_str!("assets/vendor/xterm/addon-fit.js");

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

/// Where the terminal page loads its script from.
pub fn terminal_js_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/terminal.js", TERMINAL_JS, &URL)
}

/// Where the terminal page loads xterm.js from.
pub fn xterm_js_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/xterm.js", XTERM_JS, &URL)
}

/// Where the terminal page loads xterm.js's style sheet from.
pub fn xterm_css_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/xterm.css", XTERM_CSS, &URL)
}

/// Where the terminal page loads xterm.js's fit add-on from.
pub fn xterm_fit_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    versioned("/assets/xterm-fit.js", XTERM_FIT_JS, &URL)
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

/// GET /assets/terminal.js
pub async fn terminal_js() -> Response {
    asset(TERMINAL_JS, "text/javascript; charset=utf-8")
}

/// GET /assets/xterm.js
pub async fn xterm_js() -> Response {
    asset(XTERM_JS, "text/javascript; charset=utf-8")
}

/// GET /assets/xterm.css
pub async fn xterm_css() -> Response {
    asset(XTERM_CSS, "text/css; charset=utf-8")
}

/// GET /assets/xterm-fit.js
pub async fn xterm_fit() -> Response {
    asset(XTERM_FIT_JS, "text/javascript; charset=utf-8")
}

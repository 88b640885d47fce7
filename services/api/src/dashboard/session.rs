//! Sessions: an API key exchanged for a session ([`super::login`]).
//!
//! Sessions live in this process's memory only (a restart signs everyone
//! out; nothing about them reaches the log). The cookie holds 256 random
//! bits; the map is keyed by their SHA-256, so the table itself holds no
//! usable token. A session:
//! - is sent as an HttpOnly, `SameSite=Strict` cookie (plus `Secure` when
//!   the API's public URL is https), and ends after [`SESSION_TTL`] or on
//!   sign-out;
//! - acts as the API key it was opened with: every request checks the key
//!   is still valid in the read model, so revoking the key ends the session;
//! - carries a CSRF token that every form posts back ([`Posted`]); the
//!   sign-in form, which has no session yet, is checked against a token in
//!   a short-lived cookie of its own (double submit).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use berth_ingress::{same_secret, Caller};
use berth_schemas::ids::{ApiKeyId, OwnerId};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{layout, see_other};
use crate::app::{AppState, MAX_BODY_BYTES};

/// The session cookie.
pub const COOKIE: &str = "berth_session";
/// The sign-in form's own CSRF cookie.
pub(super) const LOGIN_COOKIE: &str = "berth_login";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; past it the one closest to expiry goes.
const MAX_SESSIONS: usize = 10_000;

/// A one-time message shown on the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Self {
        Flash {
            error: false,
            text: text.into(),
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Flash {
            error: true,
            text: text.into(),
        }
    }
}

#[derive(Debug)]
struct Session {
    owner: OwnerId,
    key: ApiKeyId,
    key_sha: String,
    csrf: String,
    expires: Instant,
    flash: Option<Flash>,
}

/// Every open session; see the module doc.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// Cookies carry `Secure` (the dashboard is served over https).
    secure: bool,
}

/// 256 random bits, URL-safe.
pub(super) fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

fn sha(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

impl Sessions {
    /// Sessions whose cookies carry `Secure` when `secure`.
    pub fn new(secure: bool) -> Self {
        Sessions {
            map: Mutex::default(),
            secure,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // Entries are inserted and removed whole: a panic elsewhere leaves
        // the map usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for `caller`'s key; returns the cookie's token.
    pub(super) fn open(&self, owner: OwnerId, key: ApiKeyId, key_sha: String) -> String {
        let now = Instant::now();
        let token = token();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            sha(&token),
            Session {
                owner,
                key,
                key_sha,
                // Unrelated to the session token: a page's source never
                // holds anything that opens the session.
                csrf: self::token(),
                expires: now + SESSION_TTL,
                flash: None,
            },
        );
        token
    }

    /// Ends the session `id` (the SHA-256 of its token).
    pub(super) fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sets the message the session's next page shows.
    pub fn flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(flash);
        }
    }

    /// Takes the message waiting for the session's next page.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id).and_then(|s| s.flash.take())
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|s| s.expires > now).count()
    }

    pub(super) fn cookie(&self, name: &str, value: &str, path: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name` in the request's headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A signed-in request: the caller its session acts as.
#[derive(Debug, Clone)]
pub struct Signed {
    pub caller: Caller,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
    /// The session's id (SHA-256 of its token).
    pub(super) id: String,
    /// The page's script re-reading it for live updates: a message waiting
    /// for the next page a person opens is left for it.
    refresh: bool,
}

/// The header the page's script sends when it re-reads a page.
pub const REFRESH_HEADER: &str = "x-berth-live";

impl Signed {
    /// The message waiting for this page, if any.
    pub fn take_flash(&self, st: &AppState) -> Option<Flash> {
        if self.refresh {
            return None;
        }
        st.dashboard.sessions.take_flash(&self.id)
    }

    /// Leaves a message for the next page.
    pub fn flash(&self, st: &AppState, flash: Flash) {
        st.dashboard.sessions.flash(&self.id, flash);
    }

    /// Whether the session still stands: not expired, not signed out, its
    /// API key not revoked.
    pub fn still_valid(&self, st: &AppState) -> bool {
        session_of(st, &self.id).is_some()
    }
}

/// The caller and CSRF token of session `id`, if it stands.
fn session_of(st: &AppState, id: &str) -> Option<(Caller, String)> {
    let (owner, key, key_sha, csrf) = {
        let mut map = st.dashboard.sessions.lock();
        let s = map.get(id)?;
        if s.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        (
            s.owner.clone(),
            s.key.clone(),
            s.key_sha.clone(),
            s.csrf.clone(),
        )
    };
    // The key must still be valid: revoking it ends its sessions.
    let caller = Caller::api_key(owner, key);
    if !crate::app::still_valid(st, &caller, &key_sha) {
        st.dashboard.sessions.end(id);
        return None;
    }
    Some((caller, csrf))
}

/// Where a request without a session is sent: sign-in, then back.
fn to_login(parts: &Parts) -> Response {
    if parts.method != Method::GET {
        return see_other("/login");
    }
    let back = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if back == "/" {
        return see_other("/login");
    }
    let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
    see_other(&format!("/login?next={next}"))
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(to_login(parts));
        };
        let id = sha(token);
        match session_of(st, &id) {
            Some((caller, csrf)) => Ok(Signed {
                caller,
                csrf,
                id,
                refresh: parts.headers.contains_key(REFRESH_HEADER),
            }),
            None => Err(to_login(parts)),
        }
    }
}

/// A form's fields, in order (a repeated name keeps every value).
#[derive(Debug, Clone, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> Self {
        FormData(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, trimmed; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Whether a checkbox called `name` was checked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The page every refused form gets: its CSRF token did not match (an
/// old page, or a form posted from elsewhere).
pub(super) fn forbidden(why: &str) -> Response {
    layout::bare(
        StatusCode::FORBIDDEN,
        "Form refused",
        maud::html! {
            h1 { "This form was refused" }
            p { (why) }
            p { a href="/" { "Back to the dashboard" } }
        },
    )
}

/// A cross-site origin: the `Origin` a browser sends with a form post
/// names another host than the one the form was posted to.
pub(super) fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin != "null" && origin_host != host
}

pub(super) async fn body(req: Request, st: &AppState) -> Result<Bytes, Response> {
    let bytes = Bytes::from_request(req, st)
        .await
        .map_err(|_| forbidden("The form could not be read."))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(forbidden("The form is too large."));
    }
    Ok(bytes)
}

/// A form posted by a signed-in user, its CSRF token checked.
#[derive(Debug)]
pub struct Posted {
    pub who: Signed,
    pub form: FormData,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body_) = req.into_parts();
        let who = Signed::from_request_parts(&mut parts, st).await?;
        if foreign_origin(&parts.headers) {
            return Err(forbidden("The form was posted from another site."));
        }
        let bytes = body(Request::from_parts(parts, body_), st).await?;
        let form = FormData::parse(&bytes);
        let given = form.get("_csrf").unwrap_or_default();
        if !same_secret(given.as_bytes(), who.csrf.as_bytes()) {
            return Err(forbidden(
                "The page it came from is out of date. Reload the page and try again.",
            ));
        }
        Ok(Posted { who, form })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; berth_session=tok; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "berth_login"), None);
    }

    #[test]
    fn origins_of_other_hosts_are_foreign() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7000"));
        assert!(!foreign_origin(&h), "no Origin: a same-origin navigation");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7000"),
        );
        assert!(!foreign_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(foreign_origin(&h));
    }

    #[test]
    fn sessions_end_and_carry_flashes() {
        let s = Sessions::new(false);
        let owner: OwnerId = "usr-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let token = s.open(owner, ApiKeyId::generate(), "sha".into());
        let id = sha(&token);
        s.flash(&id, Flash::ok("done"));
        assert_eq!(s.take_flash(&id), Some(Flash::ok("done")));
        assert_eq!(s.take_flash(&id), None);
        assert_eq!(s.count(), 1);
        s.end(&id);
        assert_eq!(s.count(), 0);
        let c = s.cookie(COOKIE, "v", "/", 10);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(Sessions::new(true)
            .cookie(COOKIE, "v", "/", 10)
            .to_str()
            .unwrap()
            .ends_with("; Secure"));
    }
}

//! The service page's terminal (Render's Shell): a page of its own with
//! xterm.js (vendored, served by the API) on a WebSocket that carries the
//! same session as `GET /v1/services/{id}/shell`, under the signed-in
//! session. The socket is accepted only from the dashboard's own origin
//! with the session's CSRF token (a page of another site cannot open one
//! with the user's cookie); a terminal that cannot be opened is said on
//! the page (`{"type":"ended","message":…}`: a browser shows nothing of
//! a refused upgrade).

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_ingress::same_secret;
use maud::html;

use super::assets;
use super::layout::{self, Section};
use super::session::{forbidden, foreign_origin, Signed};
use crate::app::AppState;
use crate::query::Listing;
use crate::routes::services::service_id;
use crate::routes::terminal::{self as api_terminal, ShellQuery};

/// The terminal page's policy: the dashboard's, with the inline styles
/// xterm.js sets on the elements it draws.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; \
    base-uri 'none'";

/// The query of the terminal page.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct PageQuery {
    /// The instance, or the running job or cron run, to open it in (the
    /// API's `instanceId`); a running instance of the live deploy when
    /// absent.
    #[serde(default, deserialize_with = "crate::query::one")]
    pub instance: Option<String>,
}

/// GET /services/{serviceId}/terminal: the page.
pub async fn page(
    State(st): State<AppState>,
    Path(id): Path<String>,
    who: Signed,
    Listing(q): Listing<PageQuery>,
) -> Response {
    let service = match service_id(&id) {
        Ok(s) => s,
        Err(e) => return super::refused(&who, Section::Services, &e),
    };
    let container = match crate::routes::exec::instance_param(q.instance.as_deref()) {
        Ok(_) => q.instance,
        Err(e) => return super::refused(&who, Section::Services, &e),
    };
    let name = match st.ingress.show_service(&who.caller, &service).await {
        Ok(s) => s.config.map(|c| c.name).unwrap_or_default(),
        Err(e) => return super::refused(&who, Section::Services, &e.into()),
    };
    // The token is URL-safe base64; an id, letters, digits and `-`.
    let mut socket = format!("/services/{service}/terminal/socket?csrf={}", who.csrf);
    if let Some(c) = &container {
        socket.push_str(&format!("&instance={c}"));
    }
    let mut resp = layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        "Terminal",
        None,
        html! {
            link rel="stylesheet" href=(assets::xterm_css_url());
            p { a href={ "/services/" (service) } { "← Back to " (name) } }
            h1 { "Terminal in " (name) @if let Some(c) = &container { " — " code { (c) } } }
            p #terminal-status .muted role="status" { "Opening a terminal in a running instance…" }
            div #terminal data-socket=(socket) {}
            noscript { p { "The terminal needs JavaScript; the service page's shell runs one command without it." } }
            script src=(assets::xterm_js_url()) {}
            script src=(assets::xterm_fit_url()) {}
            script src=(assets::terminal_js_url()) {}
        },
    );
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    resp
}

/// GET /services/{serviceId}/terminal/socket: the page's WebSocket.
pub async fn socket(
    State(st): State<AppState>,
    Path(id): Path<String>,
    who: Signed,
    headers: HeaderMap,
    Listing(q): Listing<SocketQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers always send the page's origin with a WebSocket.
    if !headers.contains_key(header::ORIGIN) || foreign_origin(&headers) {
        return forbidden("The terminal was opened from another site.");
    }
    let given = q.csrf.unwrap_or_default();
    if !same_secret(given.as_bytes(), who.csrf.as_bytes()) {
        return forbidden("The page it came from is out of date. Reload the page and try again.");
    }
    let opened = service_id(&id).and_then(|service| {
        api_terminal::terminal_input(ShellQuery {
            cols: q.cols,
            rows: q.rows,
            instance_id: q.instance,
            ..ShellQuery::default()
        })
        .map(|input| (service, input))
    });
    api_terminal::limited(upgrade)
        .on_upgrade(move |socket| async move {
            match opened {
                Ok((service, input)) => {
                    api_terminal::open_on(socket, &st, &who.caller, &service, input).await
                }
                Err(e) => api_terminal::refuse_on(socket, &e.message).await,
            }
        })
        .into_response()
}

/// The query of the page's WebSocket.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct SocketQuery {
    /// The session's CSRF token (from the page).
    #[serde(default, deserialize_with = "crate::query::one")]
    pub csrf: Option<String>,
    #[serde(default, deserialize_with = "crate::query::one")]
    pub cols: Option<String>,
    #[serde(default, deserialize_with = "crate::query::one")]
    pub rows: Option<String>,
    /// As the page's.
    #[serde(default, deserialize_with = "crate::query::one")]
    pub instance: Option<String>,
}

//! # The web dashboard
//!
//! Served at `/` of the API's listener, beside `/v1` (SPEC §14): server
//! rendered HTML (maud templates, checked at compile time) that reads well
//! without JavaScript, plus one small script compiled into the binary
//! ([`assets`]) that adds live updates and conveniences.
//!
//! It is a client of the API's own contract, in process: every page shows
//! the typed views the `/v1` handlers answer (`ServiceView`, `DeployView`,
//! `InstanceView`, `TimelineEvent`, …) and every form calls the `/v1`
//! handler that does the same thing, with the same body type and so the
//! same validation and errors; another owner's service is a 404 here too.
//!
//! - [`login`] and [`session`]: sign-in with an API key, sessions, CSRF on
//!   every form;
//! - [`pages`], [`service`], [`actions`], [`settings`], [`owner`]: the
//!   pages and forms;
//! - [`feed`] and [`live`]: the log's tail and the SSE streams that keep
//!   pages current, resumable by `Last-Event-ID`.
//!
//! Its routes are the `PAGES` table in [`crate::openapi`], kept out of the
//! OpenAPI document, which describes the JSON API only.

pub mod actions;
pub mod assets;
pub mod feed;
mod layout;
pub mod live;
pub mod login;
pub mod observe;
pub mod owner;
pub mod pages;
mod progress;
pub mod secret_files;
pub mod service;
pub mod service_log_stream;
pub mod session;
pub mod settings;
pub mod shell;
pub mod terminal;
pub mod webhooks;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::error::ApiError;
use feed::LiveFeed;
use layout::Section;
use session::{Flash, Sessions, Signed};

/// What the dashboard keeps beside the API's state.
#[derive(Debug)]
pub struct Dashboard {
    pub sessions: Sessions,
    pub feed: LiveFeed,
    /// How far the API's read model has applied the log.
    pub applied: watch::Receiver<u64>,
    /// Ends the live streams when the API stops.
    pub shutdown: CancellationToken,
}

impl Dashboard {
    pub fn new(
        feed: LiveFeed,
        applied: watch::Receiver<u64>,
        shutdown: CancellationToken,
        secure_cookies: bool,
    ) -> Self {
        Dashboard {
            sessions: Sessions::new(secure_cookies),
            feed,
            applied,
            shutdown,
        }
    }
}

/// 303 to `to` (after a form, or to sign in).
pub fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// What the user reads of a refusal: the API's message (which names each
/// invalid field).
fn message(e: &ApiError) -> String {
    match e.status {
        StatusCode::NOT_FOUND => "Not found: it does not exist, or is not yours.".to_owned(),
        StatusCode::SERVICE_UNAVAILABLE => format!("berth is busy, try again: {}", e.message),
        _ => e.message.clone(),
    }
}

/// The page for a request the API refused (a 404 for anything the owner
/// cannot see, as the API answers).
pub fn refused(who: &Signed, section: Section, e: &ApiError) -> Response {
    let title = if e.status == StatusCode::NOT_FOUND {
        "Not found"
    } else {
        "Something went wrong"
    };
    layout::page(
        e.status,
        who,
        section,
        title,
        None,
        maud::html! {
            h1 { (title) }
            p { (message(e)) }
            p { a href="/" { "Back to your services" } }
        },
    )
}

/// After a form: back to `to`, with what happened as the next page's
/// message.
pub fn after(st: &AppState, who: &Signed, to: &str, outcome: Result<String, ApiError>) -> Response {
    let flash = match outcome {
        Ok(text) => Flash::ok(text),
        Err(e) => Flash::error(message(&e)),
    };
    who.flash(st, flash);
    see_other(to)
}

/// The answer to a page path nothing serves.
pub fn not_found() -> Response {
    layout::bare(
        StatusCode::NOT_FOUND,
        "Not found",
        maud::html! {
            h1 { "Not found" }
            p { "There is no such page." }
            p { a href="/" { "Back to the dashboard" } }
        },
    )
}

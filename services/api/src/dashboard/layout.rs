//! The pages' frame and the small pieces every page uses (status badges,
//! times, the CSRF field), as maud templates: checked when berth is
//! compiled, every value escaped.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_schemas::model::DeployStatus;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::assets;
use super::session::{Flash, Signed};

/// Which part of the site a page belongs to (the navigation marks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Services,
    Credentials,
    Notifications,
    LogStream,
    Webhooks,
    ApiKeys,
}

const NAV: &[(Section, &str, &str)] = &[
    (Section::Services, "/", "Services"),
    (Section::Credentials, "/credentials", "Registry credentials"),
    (Section::Notifications, "/notifications", "Notifications"),
    (Section::LogStream, "/log-stream", "Log stream"),
    (Section::Webhooks, "/webhooks", "Webhooks"),
    (Section::ApiKeys, "/api-keys", "API keys"),
];

/// An HTML answer: no caching (pages hold an owner's data), no framing,
/// scripts and styles from this origin only.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · berth" }
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::js_url()) defer {}
        }
    }
}

/// A page without navigation (sign-in, refusals).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    respond(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    main #main { (body) }
                }
            }
        },
    )
}

/// A signed-in page: navigation, sign-out, the waiting message, `body`.
pub fn page(
    status: StatusCode,
    who: &Signed,
    section: Section,
    title: &str,
    flash: Option<Flash>,
    body: Markup,
) -> Response {
    respond(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        nav aria-label="Main" {
                            a.brand href="/" { "berth" }
                            ul {
                                @for (s, href, label) in NAV {
                                    li {
                                        @if *s == section {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                            span.muted.mono title="Signed in as this owner" { (who.caller.owner) }
                            form.inline method="post" action="/logout" {
                                (csrf(who))
                                button.secondary type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main tabindex="-1" {
                        @if let Some(f) = flash {
                            @if f.error {
                                p.flash.error role="alert" { (f.text) }
                            } @else {
                                p.flash.ok role="status" { (f.text) }
                            }
                        }
                        (body)
                    }
                }
            }
        },
    )
}

/// The hidden CSRF field every form carries.
pub fn csrf(who: &Signed) -> Markup {
    html! { input type="hidden" name="_csrf" value=(who.csrf); }
}

/// A time as people read it, machine-readable in `datetime`.
pub fn time(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
        },
        None => html! { span.muted { "—" } },
    }
}

/// Render's wire name of a deploy status.
pub fn status_name(s: DeployStatus) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(n)) => n,
        _ => String::new(),
    }
}

/// The snake_case wire name of any unit enum the API answers with.
pub fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(n)) => n,
        _ => String::new(),
    }
}

/// A deploy status as a badge.
pub fn deploy_badge(s: DeployStatus) -> Markup {
    let class = match s {
        DeployStatus::Live => "st-ok",
        DeployStatus::UpdateInProgress | DeployStatus::PreDeployInProgress => "st-run",
        DeployStatus::Created | DeployStatus::Queued => "st-wait",
        DeployStatus::UpdateFailed | DeployStatus::PreDeployFailed => "st-bad",
        DeployStatus::Canceled | DeployStatus::Deactivated => "st-off",
    };
    badge(class, &status_name(s))
}

/// A badge of class `class` saying `text`.
pub fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

/// A digest shortened for tables, whole in its title.
pub fn digest(d: Option<&str>) -> Markup {
    match d {
        Some(d) => {
            let short = d
                .split_once(':')
                .map_or(d, |(_, hex)| hex)
                .chars()
                .take(12)
                .collect::<String>();
            html! { code title=(d) { (short) } }
        }
        None => html! { span.muted { "not resolved" } },
    }
}

/// Bytes in MB, one decimal.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

//! The owner's webhooks page (Render's webhooks): list, add, turn on or
//! off, delete; a webhook's own page shows its signing secret, changes
//! its name, URL and event types, and lists what its last posts got.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_ingress::WebhookView;
use maud::{html, Markup};

use super::layout::{self, csrf, Section};
use super::session::{FormData, Posted, Signed};
use super::{after, refused};
use crate::app::{AppState, Authed, JsonBody, Page};
use crate::query::Listing;
use crate::routes::webhooks::{self, CreateBody, SendsQuery, UpdateBody, WebhooksQuery};

/// The event types a form names: comma- or space-separated; none: all.
fn event_types(form: &FormData) -> Vec<String> {
    form.get("eventFilter")
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn events_of(h: &WebhookView) -> String {
    if h.event_filter.is_empty() {
        "every event".to_owned()
    } else {
        h.event_filter.join(", ")
    }
}

fn rows(who: &Signed, hooks: &[WebhookView]) -> Markup {
    html! {
        @if hooks.is_empty() {
            p.muted { "No webhooks: nothing is posted." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Events" }
                    th.opt scope="col" { "URL" } th scope="col" { span.muted { "Actions" } }
                } }
                tbody {
                    @for h in hooks {
                        tr id={ "hook-" (h.id) } {
                            td { a href={ "/webhooks/" (h.id) } { (h.name) } br; code.muted { (h.id) } }
                            td { (if h.enabled { "on" } else { "off" }) }
                            td { (events_of(h)) }
                            td.opt { code { (h.url) } }
                            td {
                                form.inline method="post" action={ "/webhooks/" (h.id) } {
                                    (csrf(who))
                                    input type="hidden" name="enabled" value=(if h.enabled { "false" } else { "true" });
                                    button.secondary type="submit" { (if h.enabled { "Turn off" } else { "Turn on" }) }
                                }
                                form.inline method="post" action={ "/webhooks/" (h.id) "/delete" } {
                                    (csrf(who))
                                    button.secondary type="submit" data-confirm={ "Delete webhook " (h.name) "?" } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn add_form(who: &Signed) -> Markup {
    html! {
        section.card aria-labelledby="add-hook" {
            h2 #add-hook { "Add a webhook" }
            form method="post" action="/webhooks" {
                (csrf(who))
                div.row {
                    div { label for="w-name" { "Name" } input #w-name type="text" name="name" required; }
                    div { label for="w-url" { "URL" } input #w-url type="url" name="url" required placeholder="https://example.com/berth"; }
                }
                label for="w-events" { "Event types" }
                input #w-events type="text" name="eventFilter" placeholder="deploy_ended, server_failed";
                p.help { "Comma-separated (the types of a service's events); empty: every event. Posts are signed Standard-Webhooks style with a secret berth makes, shown on the webhook's page." }
                label.check { input type="checkbox" name="off"; "Create it turned off" }
                button type="submit" { "Add webhook" }
            }
        }
    }
}

/// GET /webhooks
pub async fn page(State(st): State<AppState>, who: Signed) -> Response {
    let listed = webhooks::list(
        State(st.clone()),
        Authed(who.caller.clone()),
        Listing(WebhooksQuery {
            owner_id: Vec::new(),
            page: Page {
                limit: Some("100".to_owned()),
                cursor: None,
            },
        }),
    )
    .await;
    let hooks: Vec<WebhookView> = match listed {
        Ok(l) => l.0.into_iter().map(|i| i.webhook).collect(),
        Err(e) => return refused(&who, Section::Webhooks, &e),
    };
    let body = html! {
        h1 { "Webhooks" }
        p.help { "Your services' events, posted as they happen to each webhook that asks for their type." }
        (rows(&who, &hooks))
        (add_form(&who))
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Webhooks,
        "Webhooks",
        who.take_flash(&st),
        body,
    )
}

/// POST /webhooks
pub async fn add(State(st): State<AppState>, Posted { who, form }: Posted) -> Response {
    let body = CreateBody {
        owner_id: Some(who.caller.owner.to_string()),
        url: form.text("url"),
        name: form.text("name"),
        enabled: Some(!form.checked("off")),
        event_filter: Some(event_types(&form)),
    };
    let done = webhooks::create(
        State(st.clone()),
        Authed(who.caller.clone()),
        JsonBody(body),
    )
    .await
    .map(|(_, h)| {
        format!(
            "Webhook {} added; its signing secret is on its page.",
            h.0.name
        )
    });
    after(&st, &who, "/webhooks", done)
}

/// GET /webhooks/{webhookId}: its settings, secret and last posts.
pub async fn one(State(st): State<AppState>, Path(id): Path<String>, who: Signed) -> Response {
    let caller = || Authed(who.caller.clone());
    let h = match webhooks::get(State(st.clone()), caller(), Path(id.clone())).await {
        Ok(h) => h.0,
        Err(e) => return refused(&who, Section::Webhooks, &e),
    };
    let q = SendsQuery {
        sent_before: None,
        sent_after: None,
        page: Page {
            limit: Some("50".to_owned()),
            cursor: None,
        },
    };
    let sends = match webhooks::events(State(st.clone()), caller(), Path(id), Listing(q)).await {
        Ok(s) => s.0,
        Err(e) => return refused(&who, Section::Webhooks, &e),
    };
    let body = html! {
        h1 { "Webhook " (h.name) }
        section.card {
            p { "Posts to " code { (h.url) } " — " (if h.enabled { "on" } else { "off" }) ", " (events_of(&h)) "." }
            details {
                summary { "Signing secret" }
                p { code.secret #hook-secret { (h.secret) } " " button.secondary type="button" data-copy="hook-secret" hidden { "Copy" } }
                p.help { "Check each post's webhook-signature with it (any Standard Webhooks library)." }
            }
            form method="post" action={ "/webhooks/" (h.id) } {
                (csrf(&who))
                div.row {
                    div { label for="e-name" { "Name" } input #e-name type="text" name="name" required value=(h.name); }
                    div { label for="e-url" { "URL" } input #e-url type="url" name="url" required value=(h.url); }
                }
                label for="e-events" { "Event types" }
                input #e-events type="text" name="eventFilter" value=(h.event_filter.join(", "));
                p.help { "Empty: every event." }
                input type="hidden" name="events" value="given";
                button type="submit" { "Save webhook" }
            }
        }
        section.card aria-labelledby="sends" {
            h2 #sends { "Last posts" }
            @if sends.is_empty() {
                p.muted { "Nothing posted yet." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Sent" } th scope="col" { "Event" } th scope="col" { "Answer" } th.opt scope="col" { "Delivery" }
                    } }
                    tbody {
                        @for s in &sends {
                            @let e = &s.webhook_event;
                            tr {
                                td { (layout::time(Some(e.sent_at))) }
                                td { (e.event_type) br; code.muted { (e.event_id) } }
                                td {
                                    @if let Some(code) = e.status_code { (code) } @else { "no answer" }
                                    @if let Some(err) = &e.error { br; span.muted { (err) } }
                                }
                                td.opt { code.muted { (e.id) } }
                            }
                        }
                    }
                }
            }
        }
        p { a href="/webhooks" { "All webhooks" } }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Webhooks,
        "Webhook",
        who.take_flash(&st),
        body,
    )
}

/// POST /webhooks/{webhookId}: what the form gives changes (the list's
/// on/off button gives only `enabled`).
pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let body = UpdateBody {
        name: form.text("name"),
        url: form.text("url"),
        enabled: form.get("enabled").map(|v| v == "true"),
        event_filter: form.checked("events").then(|| event_types(&form)),
    };
    let to = if form.checked("events") {
        format!("/webhooks/{id}")
    } else {
        "/webhooks".to_owned()
    };
    let done = webhooks::update(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id),
        JsonBody(body),
    )
    .await
    .map(|h| {
        format!(
            "Webhook {} saved ({}).",
            h.0.name,
            if h.0.enabled { "on" } else { "off" }
        )
    });
    after(&st, &who, &to, done)
}

/// POST /webhooks/{webhookId}/delete
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = webhooks::delete(State(st.clone()), Authed(who.caller.clone()), Path(id))
        .await
        .map(|_| "Webhook deleted: nothing more is posted to it.".to_owned());
    after(&st, &who, "/webhooks", done)
}

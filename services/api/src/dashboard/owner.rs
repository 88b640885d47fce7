//! The owner's own pages: registry credentials (add, rotate, delete; a
//! credential in use is refused with the services named), notification
//! settings, the log stream, and API keys (a new key shown once).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_domain::service::ServiceState;
use berth_schemas::model::{NotifySetting, RegistryKind};
use maud::{html, Markup};

use super::layout::{self, csrf, time, wire, Section};
use super::pages::credentials;
use super::session::{Posted, Signed};
use super::{after, refused};
use crate::app::{AppState, Authed, JsonBody, Page};
use crate::error::ApiError;
use crate::query::Listing;
use crate::routes::log_streams::{self, OwnerView};
use crate::routes::notifications::{self, OwnerBody, SettingView};
use crate::routes::owner::{self, ApiKeyBody, CredentialBody, CredentialOut, NewApiKey};
use crate::routes::services::ServicesQuery;

const REGISTRIES: &[(RegistryKind, &str)] = &[
    (RegistryKind::Docker, "Docker Hub"),
    (RegistryKind::Github, "GitHub (ghcr.io)"),
    (RegistryKind::Gitlab, "GitLab"),
    (RegistryKind::GoogleArtifact, "Google Artifact Registry"),
    (RegistryKind::Generic, "Any other registry (give its host)"),
];

/// The owner's services that use credential `id`, by name.
async fn users_of(st: &AppState, who: &Signed, id: &str) -> Vec<(String, String)> {
    let q = ServicesQuery {
        limit: Some("100".to_owned()),
        ..ServicesQuery::default()
    };
    let mut out = Vec::new();
    let mut q = q;
    // Every page: a credential may be used by any of them.
    loop {
        let page = crate::routes::services::page_of(
            st,
            &who.caller,
            &q,
            |sid, state: &ServiceState, view| {
                let uses = state
                    .config
                    .as_ref()
                    .and_then(|c| c.credential.as_ref())
                    .is_some_and(|c| c.as_str() == id);
                (sid.to_string(), uses.then_some(view.name))
            },
        )
        .await
        .unwrap_or_default();
        let last = page.last().map(|(sid, _)| sid.clone());
        let full = page.len() == 100;
        out.extend(
            page.into_iter()
                .filter_map(|(sid, name)| name.map(|n| (sid, n))),
        );
        match last {
            Some(l) if full => q.cursor = Some(l),
            _ => break,
        }
    }
    out
}

fn credential_rows(who: &Signed, creds: &[CredentialOut]) -> Markup {
    html! {
        @if creds.is_empty() {
            p.muted { "No registry credentials: services pull public images anonymously." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Registry" } th scope="col" { "Username" }
                    th.opt scope="col" { "Updated" } th scope="col" { span.muted { "Actions" } }
                } }
                tbody {
                    @for c in creds {
                        tr id={ "cred-" (c.id) } {
                            td { (c.name) br; code.muted { (c.id) } }
                            td { (wire(&c.kind)) @if let Some(h) = &c.host { br; code { (h) } } }
                            td { (c.username) }
                            td.opt { (time(Some(c.updated_at))) }
                            td {
                                details {
                                    summary { "Rotate token" }
                                    form method="post" action={ "/credentials/" (c.id) "/rotate" } {
                                        (csrf(who))
                                        label for={ "tok-" (c.id) } { "New token" }
                                        input id={ "tok-" (c.id) } type="password" name="authToken" required autocomplete="off";
                                        label for={ "user-" (c.id) } { "Username" }
                                        input id={ "user-" (c.id) } type="text" name="username" value=(c.username);
                                        p { button.secondary type="submit" { "Rotate" } }
                                    }
                                }
                                form.inline method="post" action={ "/credentials/" (c.id) "/delete" } {
                                    (csrf(who))
                                    button.secondary type="submit" data-confirm={ "Delete credential " (c.name) "?" } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn add_credential(who: &Signed) -> Markup {
    html! {
        section.card aria-labelledby="add-title" {
            h2 #add-title { "Add a credential" }
            form method="post" action="/credentials" {
                (csrf(who))
                div.row {
                    div { label for="c-name" { "Name" } input #c-name type="text" name="name" required; }
                    div {
                        label for="c-registry" { "Registry" }
                        select #c-registry name="registry" {
                            @for (k, label) in REGISTRIES { option value=(wire(k)) { (label) } }
                        }
                    }
                    div { label for="c-host" { "Host (other registries)" } input #c-host type="text" name="host" placeholder="registry.example.com"; }
                }
                div.row {
                    div { label for="c-user" { "Username" } input #c-user type="text" name="username" required autocomplete="off"; }
                    div { label for="c-token" { "Token or password" } input #c-token type="password" name="authToken" required autocomplete="off"; }
                }
                p.help { "The token is sealed at rest and never shown again." }
                button type="submit" { "Add credential" }
            }
        }
    }
}

/// GET /credentials
pub async fn credentials_page(State(st): State<AppState>, who: Signed) -> Response {
    let creds = credentials(&st, &who).await;
    let body = html! {
        h1 { "Registry credentials" }
        p.help { "Used by your services to pull private images. A credential in use cannot be deleted: give those services another one first." }
        (credential_rows(&who, &creds))
        (add_credential(&who))
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Credentials,
        "Registry credentials",
        who.take_flash(&st),
        body,
    )
}

/// POST /credentials
pub async fn add(State(st): State<AppState>, Posted { who, form }: Posted) -> Response {
    let body = CredentialBody {
        name: form.text("name"),
        registry: form.text("registry"),
        host: form.text("host"),
        username: form.text("username"),
        auth_token: form.text("authToken"),
        owner_id: None,
    };
    let done = owner::create_credential(
        State(st.clone()),
        Authed(who.caller.clone()),
        JsonBody(body),
    )
    .await
    .map(|c| format!("Credential {} added.", c.0.name));
    after(&st, &who, "/credentials", done)
}

/// POST /credentials/{registryCredentialId}/rotate
pub async fn rotate(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let body = CredentialBody {
        name: None,
        registry: None,
        host: None,
        username: form.text("username"),
        auth_token: form.text("authToken"),
        owner_id: None,
    };
    let done = owner::update_credential(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id),
        JsonBody(body),
    )
    .await
    .map(|c| format!("Token of {} rotated; later pulls use it.", c.0.name));
    after(&st, &who, "/credentials", done)
}

/// POST /credentials/{registryCredentialId}/delete: a refusal because
/// services use it names them.
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    match owner::delete_credential(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
    )
    .await
    {
        Ok(_) => after(
            &st,
            &who,
            "/credentials",
            Ok("Credential deleted.".to_owned()),
        ),
        Err(e) if e.status == StatusCode::CONFLICT => {
            let users = users_of(&st, &who, &id).await;
            let names = users
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let text = if names.is_empty() {
                e.message.clone()
            } else {
                format!("Not deleted: the credential is in use by {names}. Give those services another credential first.")
            };
            after(
                &st,
                &who,
                "/credentials",
                Err(ApiError { message: text, ..e }),
            )
        }
        Err(e) => after(&st, &who, "/credentials", Err(e)),
    }
}

const SETTINGS: &[(NotifySetting, &str)] = &[
    (NotifySetting::All, "Every deploy"),
    (NotifySetting::Failure, "Failures only"),
    (NotifySetting::None, "None"),
];

fn notifications_form(who: &Signed, n: &SettingView) -> Markup {
    let set = |on: bool| if on { "set" } else { "not set" };
    html! {
        form method="post" action="/notifications" {
            (csrf(who))
            label for="n-send" { "Send notifications for" }
            select #n-send name="notificationsToSend" {
                @for (v, label) in SETTINGS { option value=(wire(v)) selected[n.notifications_to_send == *v] { (label) } }
            }
            p.help { "Each service follows this unless its settings say otherwise." }
            fieldset {
                legend { "Email" }
                label for="n-email" { "Recipient" }
                input #n-email type="email" name="email" value=[n.email.as_deref()] placeholder="ops@example.com";
                p.help { "Empty: no email." }
            }
            fieldset {
                legend { "Slack (" (set(n.slack_configured)) ")" }
                label for="n-slack" { "Incoming webhook URL" }
                input #n-slack type="url" name="slackWebhookUrl" autocomplete="off" placeholder=(if n.slack_configured { "kept as it is" } else { "https://hooks.slack.com/…" });
                label.check { input type="checkbox" name="slackRemove"; "Remove the Slack webhook" }
            }
            fieldset {
                legend { "Webhook (" (set(n.webhook_configured)) ")" }
                label for="n-hook" { "URL" }
                input #n-hook type="url" name="webhookUrl" autocomplete="off" placeholder=(if n.webhook_configured { "kept as it is" } else { "https://example.com/berth" });
                label for="n-secret" { "Signing secret" }
                input #n-secret type="password" name="webhookSecret" autocomplete="off" placeholder="whsec_…";
                p.help { "Requests are signed Standard-Webhooks style; a URL needs its secret." }
                label.check { input type="checkbox" name="webhookRemove"; "Remove the webhook" }
            }
            p.help { "URLs and secrets are sealed at rest and never shown; leave a field empty to keep what is set." }
            button type="submit" { "Save notification settings" }
        }
    }
}

/// GET /notifications
pub async fn notifications_page(State(st): State<AppState>, who: Signed) -> Response {
    let owner = who.caller.owner.to_string();
    let n =
        match notifications::get_owner(State(st.clone()), Authed(who.caller.clone()), Path(owner))
            .await
        {
            Ok(n) => n.0,
            Err(e) => return refused(&who, Section::Notifications, &e),
        };
    let body = html! {
        h1 { "Notifications" }
        section.card { (notifications_form(&who, &n)) }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Notifications,
        "Notifications",
        who.take_flash(&st),
        body,
    )
}

/// POST /notifications: `PATCH /v1/notification-settings/owners/{id}`.
pub async fn save_notifications(
    State(st): State<AppState>,
    Posted { who, form }: Posted,
) -> Response {
    let wanted = form
        .get("notificationsToSend")
        .and_then(|v| SETTINGS.iter().find(|(s, _)| wire(s) == v).map(|(s, _)| *s));
    // An empty secret field keeps what is set; "remove" clears it.
    let secret = |field: &str, remove: &str| {
        if form.checked(remove) {
            Some(String::new())
        } else {
            form.text(field)
        }
    };
    let body = OwnerBody {
        notifications_to_send: wanted,
        email_enabled: None,
        _preview_notifications_enabled: None,
        email: Some(form.text("email").unwrap_or_default()),
        slack_webhook_url: secret("slackWebhookUrl", "slackRemove"),
        webhook_url: secret("webhookUrl", "webhookRemove"),
        webhook_secret: secret("webhookSecret", "webhookRemove"),
    };
    let owner = who.caller.owner.to_string();
    let done = notifications::patch_owner(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(owner),
        JsonBody(body),
    )
    .await
    .map(|_| "Notification settings saved.".to_owned());
    after(&st, &who, "/notifications", done)
}

fn log_stream_form(who: &Signed, v: &OwnerView) -> Markup {
    html! {
        form method="post" action="/log-stream" {
            (csrf(who))
            label for="ls-endpoint" { "Endpoint (HOST:PORT)" }
            input #ls-endpoint type="text" name="endpoint" required value=[v.endpoint.as_deref()] placeholder="logs.example.com:6514";
            p.help { "A syslog endpoint that takes TLS over TCP (your provider's TLS syslog port, often 6514)." }
            label for="ls-token" { "Token (" (if v.token_configured { "set" } else { "not set" }) ")" }
            input #ls-token type="password" name="token" autocomplete="off" placeholder=(if v.token_configured { "kept as it is" } else { "optional" });
            p.help { "Written before each line, for providers that tell accounts apart by it. Sealed at rest and never shown; a new endpoint without a new token drops it." }
            label.check { input type="checkbox" name="tokenRemove"; "Remove the token" }
            button type="submit" { "Save log stream" }
        }
        @if v.endpoint.is_some() {
            form method="post" action="/log-stream/remove" {
                (csrf(who))
                button.danger type="submit" { "Stop sending lines" }
            }
        }
    }
}

/// GET /log-stream
pub async fn log_stream_page(State(st): State<AppState>, who: Signed) -> Response {
    let owner = who.caller.owner.to_string();
    let v = match log_streams::get_owner(State(st.clone()), Authed(who.caller.clone()), Path(owner))
        .await
    {
        Ok(v) => v.0,
        Err(e) => return refused(&who, Section::LogStream, &e),
    };
    let body = html! {
        h1 { "Log stream" }
        section.card {
            p { "Every line your services write (berth's own “==>” lines included) is sent, as it is stored, to this endpoint as RFC 5424 syslog over TLS. A service can drop its lines or send them elsewhere: "
                code { "berth log-stream service NAME --drop" } "." }
            @if let Some(d) = &v.delivery {
                p.flash.error role="status" {
                    "Lines do not reach " code { (v.endpoint.as_deref().unwrap_or_default()) }
                    " since " (layout::time(Some(d.failing_since))) ": " (d.error)
                    ". Lines that come meanwhile are dropped; it is tried again, and this goes once they arrive."
                }
            }
            (log_stream_form(&who, &v))
        }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::LogStream,
        "Log stream",
        who.take_flash(&st),
        body,
    )
}

/// POST /log-stream: `PUT /v1/logs/streams/owner/{id}`.
pub async fn save_log_stream(State(st): State<AppState>, Posted { who, form }: Posted) -> Response {
    let token = if form.checked("tokenRemove") {
        Some(String::new())
    } else {
        form.text("token")
    };
    let body = log_streams::OwnerBody {
        preview: Some(berth_schemas::model::LogStreamSetting::Send),
        endpoint: form.text("endpoint"),
        token,
    };
    let owner = who.caller.owner.to_string();
    let done = log_streams::put_owner(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(owner),
        JsonBody(body),
    )
    .await
    .map(|v| format!("Lines are sent to {}.", v.0.endpoint.unwrap_or_default()));
    after(&st, &who, "/log-stream", done)
}

/// POST /log-stream/remove: `DELETE /v1/logs/streams/owner/{id}`.
pub async fn remove_log_stream(State(st): State<AppState>, Posted { who, .. }: Posted) -> Response {
    let owner = who.caller.owner.to_string();
    let done =
        log_streams::delete_owner(State(st.clone()), Authed(who.caller.clone()), Path(owner))
            .await
            .map(|_| "Log stream removed: no line is sent.".to_owned());
    after(&st, &who, "/log-stream", done)
}

fn keys_page(
    st: &AppState,
    who: &Signed,
    keys: &[berth_ingress::ApiKeyView],
    new: Option<&NewApiKey>,
    status: StatusCode,
) -> Response {
    let this = match &who.caller.actor {
        berth_schemas::Actor::ApiKey { key } => Some(key.to_string()),
        _ => None,
    };
    let body = html! {
        h1 { "API keys" }
        @if let Some(k) = new {
            div.flash.ok role="status" {
                p { "Key " strong { (k.label) } " created. Copy it now: it is not shown again." }
                p { code.secret #new-key { (k.key) } " " button.secondary type="button" data-copy="new-key" hidden { "Copy" } }
            }
        }
        table {
            thead { tr { th scope="col" { "Label" } th scope="col" { "Id" } th scope="col" { "State" } th scope="col" { span.muted { "Actions" } } } }
            tbody {
                @for k in keys {
                    tr {
                        td { (k.label) @if this.as_deref() == Some(k.id.as_str()) { span.muted { " (this session)" } } }
                        td { code { (k.id) } }
                        td { @if k.revoked { span.muted { "revoked" } } @else { "active" } }
                        td {
                            @if !k.revoked {
                                form.inline method="post" action={ "/api-keys/" (k.id) "/revoke" } {
                                    (csrf(who))
                                    button.secondary type="submit" data-confirm={ "Revoke " (k.label) "? Anything using it stops working." } { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="newkey-title" {
            h2 #newkey-title { "Create a key" }
            form.row method="post" action="/api-keys" {
                (csrf(who))
                div { label for="k-label" { "Label" } input #k-label type="text" name="label" required placeholder="ci"; }
                button type="submit" { "Create key" }
            }
        }
    };
    layout::page(
        status,
        who,
        Section::ApiKeys,
        "API keys",
        who.take_flash(st),
        body,
    )
}

async fn list_keys(
    st: &AppState,
    who: &Signed,
) -> Result<Vec<berth_ingress::ApiKeyView>, ApiError> {
    owner::list_api_keys(
        State(st.clone()),
        Authed(who.caller.clone()),
        Listing(Page {
            limit: Some("100".to_owned()),
            cursor: None,
        }),
    )
    .await
    .map(|k| k.0)
}

/// GET /api-keys
pub async fn api_keys_page(State(st): State<AppState>, who: Signed) -> Response {
    match list_keys(&st, &who).await {
        Ok(keys) => keys_page(&st, &who, &keys, None, StatusCode::OK),
        Err(e) => refused(&who, Section::ApiKeys, &e),
    }
}

/// POST /api-keys: the new key is shown on the page this answers, once.
pub async fn create_key(State(st): State<AppState>, Posted { who, form }: Posted) -> Response {
    let body = ApiKeyBody {
        label: form.text("label"),
    };
    match owner::create_api_key(
        State(st.clone()),
        Authed(who.caller.clone()),
        JsonBody(body),
    )
    .await
    {
        Ok((_, new)) => match list_keys(&st, &who).await {
            Ok(keys) => keys_page(&st, &who, &keys, Some(&new.0), StatusCode::CREATED),
            Err(e) => refused(&who, Section::ApiKeys, &e),
        },
        Err(e) => after(&st, &who, "/api-keys", Err(e)),
    }
}

/// POST /api-keys/{apiKeyId}/revoke
pub async fn revoke_key(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = owner::revoke_api_key(State(st.clone()), Authed(who.caller.clone()), Path(id))
        .await
        .map(|_| "Key revoked.".to_owned());
    after(&st, &who, "/api-keys", done)
}

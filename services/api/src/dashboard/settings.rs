//! A service's settings page: its settings (`PATCH /v1/services/{id}`),
//! env vars (values hidden until revealed), secret files
//! ([`super::secret_files`]), its log stream setting
//! ([`super::service_log_stream`]), the deploy hook URL (revealed,
//! copied, regenerated) and deleting it with its name typed out.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_schemas::model::OverlapPolicy;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, csrf, wire, Section};
use super::pages::{credential_select, credentials, notify_of, text_input, NOTIFY};
use super::service::common;
use super::session::{Posted, Signed};
use super::{after, refused};
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};
use crate::routes::env_vars::{self, EnvVarItem, EnvVarsQuery, SetBody};
use crate::routes::owner::CredentialOut;
use crate::routes::services::{self, DetailsBody, EnvSpecific, ImageBody, UpdateBody};
use crate::views::{ServiceDetails, ServiceView, PLANS};

/// Query of the settings page: what to reveal (`env`, `files`, `hook`).
#[derive(Debug, Default, Deserialize)]
pub struct SettingsQuery {
    #[serde(default, deserialize_with = "query::one")]
    reveal: Option<String>,
}

fn settings_form(who: &Signed, s: &ServiceView, creds: &[CredentialOut]) -> Markup {
    let c = common(s);
    let current_cred = s.image.registry_credential_id.as_deref();
    let notify = wire(&s.notifications_to_send);
    html! {
        form method="post" action={ "/services/" (s.id) "/settings" } {
            (csrf(who))
            (text_input("name", "Name", Some(&s.name), None, None))
            (text_input("imagePath", "Image", Some(&s.image_path), Some("Deploys of \"latest reference\" resolve this tag now."), None))
            label for="credential" { "Registry credential" }
            (credential_select(creds, current_cred))
            (text_input("dockerCommand", "Command", Some(&c.env_specific_details.docker_command), Some("Empty runs the image's CMD."), None))
            (text_input("preDeployCommand", "Pre-deploy command", c.pre_deploy_command.as_deref(), Some("Empty removes it."), None))
            @match &s.service_details {
                ServiceDetails::Web(w) => (text_input("healthCheckPath", "Health check path", Some(&w.health_check_path), Some("An absolute path answered 2xx or 3xx, e.g. /healthz."), None)),
                ServiceDetails::Cron(cr) => (text_input("schedule", "Schedule", Some(&cr.schedule), Some("5 fields, UTC."), None)),
                _ => {}
            }
            div.row {
                div {
                    label for="plan" { "Instance type" }
                    select #plan name="plan" {
                        @for (name, cpu, mem) in PLANS {
                            option value=(name) selected[c.plan == *name] { (name) " (" (cpu) " mCPU, " (mem) " MiB)" }
                        }
                    }
                }
                div {
                    label for="overlapPolicy" { "While a deploy runs, a new one" }
                    select #overlapPolicy name="overlapPolicy" {
                        option value="wait" selected[c.overlap_policy == OverlapPolicy::Wait] { "waits (queued)" }
                        option value="cancel" selected[c.overlap_policy == OverlapPolicy::Cancel] { "cancels it" }
                    }
                }
                @if let ServiceDetails::Web(w) = &s.service_details {
                    div {
                        label for="httpsRedirect" { "Plain HTTP, once a certificate exists" }
                        select #httpsRedirect name="httpsRedirect" {
                            option value="on" selected[w.https_redirect] { "redirects to HTTPS" }
                            option value="off" selected[!w.https_redirect] { "is served as is" }
                        }
                    }
                    @let m = w.maintenance_mode.clone().unwrap_or_default();
                    div {
                        label for="maintenance" { "Maintenance mode" }
                        select #maintenance name="maintenance" {
                            option value="off" selected[!m.enabled] { "off: requests reach the instances" }
                            option value="on" selected[m.enabled] { "on: every request gets a 503 maintenance page" }
                        }
                    }
                    div {
                        label for="maintenanceUri" { "Maintenance page (optional)" }
                        input #maintenanceUri type="url" name="maintenanceUri" value=(m.uri) placeholder="https://status.example.com/";
                    }
                    @let allow = w.ip_allow_list.as_ref();
                    div {
                        label for="allow" { "Who reaches it" }
                        select #allow name="allow" {
                            option value="every" selected[allow.is_none()] { "every client" }
                            option value="only" selected[allow.is_some()] { "only the address blocks below (others get 403)" }
                        }
                    }
                    div {
                        label for="ipAllowList" { "IP allow list: one block per line, a description after a space" }
                        textarea #ipAllowList name="ipAllowList" rows="3" placeholder="203.0.113.0/24 office" {
                            @for b in allow.into_iter().flatten() {
                                (b.cidr_block) @if !b.description.is_empty() { " " (b.description) } "\n"
                            }
                        }
                    }
                }
                div {
                    label for="notifyOnFail" { "Failure notifications" }
                    select #notifyOnFail name="notifyOnFail" {
                        @for (v, label) in NOTIFY {
                            option value=(v) selected[notify == *v] { (label) }
                        }
                    }
                }
            }
            p.help { "Changing the image, credential, command, pre-deploy command, health check path or instance type redeploys the service." }
            button type="submit" { "Save settings" }
        }
    }
}

fn env_section(who: &Signed, s: &ServiceView, values: Option<&[EnvVarItem]>) -> Markup {
    let base = format!("/services/{}", s.id);
    html! {
        section.card #env aria-labelledby="env-title" {
            h2 #env-title { "Environment variables" }
            @if s.env_var_keys.is_empty() {
                p.muted { "None." }
            } @else {
                p {
                    @if values.is_some() {
                        a href={ (base) "/settings#env" } { "Hide values" }
                    } @else {
                        a href={ (base) "/settings?reveal=env#env" } { "Reveal values" }
                    }
                }
                table {
                    thead { tr { th scope="col" { "Key" } th scope="col" { "Value" } th scope="col" { span.muted { "Actions" } } } }
                    tbody {
                        @for key in &s.env_var_keys {
                            tr {
                                td { code { (key) } }
                                td {
                                    @match values.and_then(|v| v.iter().find(|i| &i.env_var.key == key)) {
                                        Some(i) => code.secret { (i.env_var.value) },
                                        None => span.muted aria-label="hidden" { "••••••••" },
                                    }
                                }
                                td {
                                    form.inline method="post" action={ (base) "/env-vars/" (key) "/delete" } {
                                        (csrf(who))
                                        button.secondary type="submit" data-confirm={ "Delete " (key) "? The service redeploys." } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form.row method="post" action={ (base) "/env-vars" } {
                (csrf(who))
                div { label for="env-key" { "Key" } input #env-key type="text" name="key" required spellcheck="false"; }
                div { label for="env-value" { "Value" } input #env-value type="password" name="value" autocomplete="off"; }
                button.secondary type="submit" { "Set variable" }
            }
            p.help { "Setting or deleting a variable redeploys the service; the others stay as they are." }
        }
    }
}

fn hook_section(who: &Signed, st: &AppState, s: &ServiceView, url: Option<&str>) -> Markup {
    let base = format!("/services/{}", s.id);
    let full = url.map(|u| format!("{}{u}", st.links.dashboard.trim_end_matches('/')));
    html! {
        section.card #hook aria-labelledby="hook-title" {
            h2 #hook-title { "Deploy hook" }
            p.help { "A GET or POST to this secret URL deploys the service (add " code { "&imgURL=" } " for another tag or digest of its repository)." }
            @match full {
                Some(u) => {
                    p { code.secret #hook-url { (u) } " " button.secondary type="button" data-copy="hook-url" hidden { "Copy" } }
                    p { a href={ (base) "/settings#hook" } { "Hide" } }
                }
                None => p { a href={ (base) "/settings?reveal=hook#hook" } { "Reveal the URL" } },
            }
            form method="post" action={ (base) "/deploy-hook/regenerate" } {
                (csrf(who))
                button.secondary type="submit" data-confirm="Regenerate the hook key? The current URL stops working." { "Regenerate key" }
            }
        }
    }
}

fn delete_section(who: &Signed, s: &ServiceView) -> Markup {
    html! {
        section.card #delete aria-labelledby="delete-title" {
            h2 #delete-title { "Delete this service" }
            p { "Its instances stop and it cannot be brought back. Its name is free again afterwards." }
            form method="post" action={ "/services/" (s.id) "/delete" } {
                (csrf(who))
                label for="confirm" { "Type " code { (s.name) } " to confirm" }
                input #confirm type="text" name="confirm" required autocomplete="off" spellcheck="false"
                    data-confirm-name=(s.name);
                p { button.danger type="submit" { "Delete service" } }
            }
        }
    }
}

/// GET /services/{serviceId}/settings
pub async fn page(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Listing(q): Listing<SettingsQuery>,
) -> Response {
    let authed = || Authed(who.caller.clone());
    let service = match services::get(State(st.clone()), authed(), Path(id.clone())).await {
        Ok(s) => s.0,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let reveal = q.reveal.as_deref();
    let values = match reveal {
        Some("env") => env_vars::list(
            State(st.clone()),
            authed(),
            Path(id.clone()),
            Listing(EnvVarsQuery {
                cursor: None,
                limit: Some("100".to_owned()),
            }),
        )
        .await
        .ok()
        .map(|v| v.0),
        _ => None,
    };
    let hook = match reveal {
        Some("hook") => services::hook(State(st.clone()), authed(), Path(id.clone()))
            .await
            .ok()
            .map(|h| h.0.url),
        _ => None,
    };
    let files = super::secret_files::list(&st, &who, &id).await;
    let log_stream = super::service_log_stream::get(&st, &who, &id).await;
    let creds = credentials(&st, &who).await;
    let s = &service;
    let body = html! {
        p { a href={ "/services/" (s.id) } { "← " (s.name) } }
        h1 { "Settings of " (s.name) }
        section.card aria-label="Settings" { (settings_form(&who, s, &creds)) }
        (env_section(&who, s, values.as_deref()))
        (super::secret_files::section(&who, s, &files, reveal == Some("files")))
        (super::service_log_stream::section(&who, s, log_stream.as_ref()))
        (hook_section(&who, &st, s, hook.as_deref()))
        (delete_section(&who, s))
    };
    let title = format!("Settings of {}", s.name);
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        &title,
        who.take_flash(&st),
        body,
    )
}

/// Only what the form changed, as the API's update body: an unchanged
/// field is left out, so saving changes nothing it does not show.
fn update_body(s: &ServiceView, f: &super::session::FormData) -> UpdateBody {
    let c = common(s);
    let changed = |name: &str, now: &str| {
        f.get(name)
            .map(str::trim)
            .filter(|v| *v != now)
            .map(str::to_owned)
    };
    let image_path = changed("imagePath", &s.image_path).filter(|v| !v.is_empty());
    let cred = changed(
        "registryCredentialId",
        s.image
            .registry_credential_id
            .as_deref()
            .unwrap_or_default(),
    );
    let nullable = |v: String| if v.is_empty() { None } else { Some(v) };
    let docker = changed("dockerCommand", &c.env_specific_details.docker_command).map(nullable);
    let pre = changed(
        "preDeployCommand",
        c.pre_deploy_command.as_deref().unwrap_or_default(),
    )
    .map(nullable);
    let (health, schedule) = match &s.service_details {
        ServiceDetails::Web(w) => (
            changed("healthCheckPath", &w.health_check_path).map(nullable),
            None,
        ),
        ServiceDetails::Cron(cr) => (None, changed("schedule", &cr.schedule)),
        _ => (None, None),
    };
    let overlap = match f.get("overlapPolicy") {
        Some("cancel") if c.overlap_policy != OverlapPolicy::Cancel => Some(OverlapPolicy::Cancel),
        Some("wait") if c.overlap_policy != OverlapPolicy::Wait => Some(OverlapPolicy::Wait),
        _ => None,
    };
    let https_redirect = match (&s.service_details, f.get("httpsRedirect")) {
        (ServiceDetails::Web(w), Some("on")) if !w.https_redirect => Some(true),
        (ServiceDetails::Web(w), Some("off")) if w.https_redirect => Some(false),
        _ => None,
    };
    let maintenance_mode = match &s.service_details {
        ServiceDetails::Web(w) => {
            let now = w.maintenance_mode.clone().unwrap_or_default();
            let asked = berth_schemas::model::MaintenanceMode {
                enabled: f.get("maintenance").map_or(now.enabled, |v| v == "on"),
                uri: f
                    .get("maintenanceUri")
                    .map_or(now.uri.clone(), |v| v.trim().to_owned()),
            };
            (asked != now).then_some(asked)
        }
        _ => None,
    };
    let ip_allow_list = match &s.service_details {
        ServiceDetails::Web(w) => match f.get("allow") {
            Some("every") => w.ip_allow_list.is_some().then_some(None),
            Some("only") => {
                let asked: Vec<berth_schemas::model::CidrBlock> = f
                    .get("ipAllowList")
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (cidr, description) = l.split_once(' ').unwrap_or((l, ""));
                        berth_schemas::model::CidrBlock {
                            cidr_block: cidr.to_owned(),
                            description: description.trim().to_owned(),
                        }
                    })
                    .collect();
                (w.ip_allow_list.as_ref() != Some(&asked)).then_some(Some(asked))
            }
            _ => None,
        },
        _ => None,
    };
    let details = DetailsBody {
        plan: changed("plan", &c.plan),
        maintenance_mode,
        ip_allow_list,
        health_check_path: health,
        pre_deploy_command: pre,
        schedule,
        overlap_policy: overlap,
        https_redirect,
        env_specific_details: docker.map(|d| EnvSpecific {
            docker_command: Some(d),
            ..EnvSpecific::default()
        }),
        ..DetailsBody::default()
    };
    let any_detail = details.plan.is_some()
        || details.health_check_path.is_some()
        || details.pre_deploy_command.is_some()
        || details.schedule.is_some()
        || details.overlap_policy.is_some()
        || details.https_redirect.is_some()
        || details.maintenance_mode.is_some()
        || details.ip_allow_list.is_some()
        || details.env_specific_details.is_some();
    UpdateBody {
        name: changed("name", &s.name).filter(|v| !v.is_empty()),
        image: (image_path.is_some() || cred.is_some()).then_some(ImageBody {
            image_path,
            registry_credential_id: cred.map(Some),
            owner_id: None,
        }),
        env_vars: None,
        service_details: any_detail.then_some(details),
        notify_on_fail: changed("notifyOnFail", &wire(&s.notifications_to_send))
            .map(|n| notify_of(Some(&n))),
        render: Default::default(),
    }
}

fn settings_of(id: &str) -> String {
    format!("/services/{id}/settings")
}

/// POST /services/{serviceId}/settings: `PATCH /v1/services/{id}`.
pub async fn update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let authed = || Authed(who.caller.clone());
    let done = match services::get(State(st.clone()), authed(), Path(id.clone())).await {
        Ok(current) => {
            let body = update_body(&current.0, &form);
            services::update(
                State(st.clone()),
                authed(),
                Path(id.clone()),
                JsonBody(body),
            )
            .await
            .map(|_| "Settings saved.".to_owned())
        }
        Err(e) => Err(e),
    };
    after(&st, &who, &settings_of(&id), done)
}

/// POST /services/{serviceId}/env-vars: sets one variable.
pub async fn set_env(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let key = form.text("key").unwrap_or_default();
    let body = SetBody {
        value: Some(form.get("value").unwrap_or_default().to_owned()),
        generate_value: None,
    };
    let done = env_vars::set(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), key)),
        JsonBody(body),
    )
    .await
    .map(|v| format!("{} set; the service redeploys.", v.0.key));
    after(&st, &who, &format!("{}#env", settings_of(&id)), done)
}

/// POST /services/{serviceId}/env-vars/{envVarKey}/delete
pub async fn delete_env(
    State(st): State<AppState>,
    Path((id, key)): Path<(String, String)>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = env_vars::delete(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path((id.clone(), key.clone())),
    )
    .await
    .map(|_| format!("{key} deleted; the service redeploys."));
    after(&st, &who, &format!("{}#env", settings_of(&id)), done)
}

/// POST /services/{serviceId}/deploy-hook/regenerate: then shows the new URL.
pub async fn regenerate_hook(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, .. }: Posted,
) -> Response {
    let done = services::regenerate_hook(
        State(st.clone()),
        Authed(who.caller.clone()),
        Path(id.clone()),
        JsonBody(services::Empty {}),
    )
    .await
    .map(|_| "New hook key made; the old URL no longer works.".to_owned());
    let to = match done {
        Ok(_) => format!("{}?reveal=hook#hook", settings_of(&id)),
        Err(_) => settings_of(&id),
    };
    after(&st, &who, &to, done)
}

/// POST /services/{serviceId}/delete: only with the service's name typed.
pub async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Posted { who, form }: Posted,
) -> Response {
    let authed = || Authed(who.caller.clone());
    let current = match services::get(State(st.clone()), authed(), Path(id.clone())).await {
        Ok(s) => s.0,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    if form.get("confirm").map(str::trim) != Some(current.name.as_str()) {
        let e = ApiError::field(
            "confirm",
            format!("type the service's name, {}, to delete it", current.name),
        );
        return after(&st, &who, &format!("{}#delete", settings_of(&id)), Err(e));
    }
    match services::delete(State(st.clone()), authed(), Path(id.clone())).await {
        Ok(_) => after(
            &st,
            &who,
            "/",
            Ok(format!("Service {} deleted.", current.name)),
        ),
        Err(e) => after(&st, &who, &settings_of(&id), Err(e)),
    }
}

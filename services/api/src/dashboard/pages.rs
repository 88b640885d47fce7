//! The services list (`/`) and the new-service form: the page of
//! `GET /v1/services` with its filters, and `POST /v1/services` from a form.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use berth_domain::service::ServiceState;
use berth_schemas::model::{DeployStatus, ServiceType};
use maud::{html, Markup};

use super::layout::{self, badge, csrf, digest, wire, Section};
use super::session::{FormData, Posted, Signed};
use super::{after, refused};
use crate::app::{AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::Listing;
use crate::routes::owner::CredentialOut;
use crate::routes::services::{
    self, CreateBody, DetailsBody, EnvSpecific, EnvVarBody, ImageBody, NotifyBody, ServicesQuery,
};
use crate::views::{DeployView, ServiceDetails, ServiceView, PLANS};

/// Services on one page of the list unless `limit` says otherwise.
const PAGE: &str = "50";

/// A row of the services list: the service's view and its deploys' views.
#[derive(Debug)]
pub struct Row {
    pub service: ServiceView,
    pub live: Option<DeployView>,
    /// The running deploy.
    pub active: Option<DeployView>,
    /// The newest deploy.
    pub latest: Option<DeployView>,
    pub queued: usize,
    /// Instances of the live deploy passing health checks, and all
    /// instances (a rollout's or a restart's included).
    pub healthy: usize,
    pub instances: usize,
}

impl Row {
    fn of(state: &ServiceState, service: ServiceView) -> Self {
        Row {
            service,
            live: state.live_deploy().map(DeployView::of),
            active: state.active_deploy().map(DeployView::of),
            latest: state.deploys.last().map(|d| DeployView::of(d)),
            queued: state.queue.len(),
            healthy: state
                .live
                .as_ref()
                .map_or(0, |d| state.instances.healthy_count(d)),
            instances: state.instances.len(),
        }
    }
}

/// The service types, as the API names them, with what people call them.
pub const TYPES: &[(ServiceType, &str)] = &[
    (ServiceType::WebService, "Web service"),
    (ServiceType::PrivateService, "Private service"),
    (ServiceType::BackgroundWorker, "Background worker"),
    (ServiceType::CronJob, "Cron job"),
];

pub fn type_label(t: ServiceType) -> &'static str {
    TYPES
        .iter()
        .find(|(k, _)| *k == t)
        .map_or("service", |(_, l)| l)
}

/// A service's state in one badge: suspended, deploying, live, failed.
pub fn service_status(
    service: &ServiceView,
    active: Option<&DeployView>,
    live: Option<&DeployView>,
    latest: Option<&DeployView>,
) -> Markup {
    let failed = |d: &DeployView| {
        matches!(
            d.status,
            DeployStatus::UpdateFailed | DeployStatus::PreDeployFailed
        )
    };
    if !service.suspenders.is_empty() {
        badge("st-off", "suspended")
    } else if let Some(a) = active {
        badge(
            "st-run",
            &format!("deploying ({})", layout::status_name(a.status)),
        )
    } else if latest.is_some_and(failed) && live.is_some() {
        badge("st-wait", "live, last deploy failed")
    } else if live.is_some() {
        badge("st-ok", "live")
    } else if latest.is_some_and(failed) {
        badge("st-bad", "failed")
    } else {
        badge("st-off", "not deployed")
    }
}

/// The instances a service wants (none for cron jobs: one per run).
pub fn wanted(service: &ServiceView) -> Option<u32> {
    match &service.service_details {
        ServiceDetails::Web(d) => Some(d.num_instances),
        ServiceDetails::Private(d) => Some(d.num_instances),
        ServiceDetails::Worker(d) => Some(d.num_instances),
        ServiceDetails::Cron(_) => None,
    }
}

fn filters(q: &ServicesQuery) -> Markup {
    let name = q.name.first().cloned().unwrap_or_default();
    let ty = q.types.first().cloned().unwrap_or_default();
    let susp = q.suspended.first().cloned().unwrap_or_default();
    html! {
        form.filters method="get" action="/" role="search" aria-label="Filter services" {
            div {
                label for="f-name" { "Name" }
                input #f-name type="text" name="name" value=(name);
            }
            div {
                label for="f-type" { "Type" }
                select #f-type name="type" {
                    option value="" selected[ty.is_empty()] { "Any type" }
                    @for (t, label) in TYPES {
                        @let v = wire(t);
                        option value=(v) selected[ty == v] { (label) }
                    }
                }
            }
            div {
                label for="f-susp" { "State" }
                select #f-susp name="suspended" {
                    option value="" selected[susp.is_empty()] { "Any" }
                    option value="not_suspended" selected[susp == "not_suspended"] { "Running" }
                    option value="suspended" selected[susp == "suspended"] { "Suspended" }
                }
            }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
    }
}

fn row(r: &Row) -> Markup {
    let s = &r.service;
    let wanted = wanted(s);
    html! {
        tr {
            td { a href={ "/services/" (s.id) } { (s.name) } }
            td.opt { (type_label(s.service_type)) }
            td {
                (service_status(s, r.active.as_ref(), r.live.as_ref(), r.latest.as_ref()))
                @if r.queued > 0 { " " span.muted { "+" (r.queued) " queued" } }
            }
            td {
                @match &r.live {
                    Some(d) => { code { (d.id) } br; (digest(d.image.sha.as_deref())) }
                    None => span.muted { "none" },
                }
            }
            td.opt { code.secret { (s.image_path) } }
            td {
                @match wanted {
                    Some(n) => { (r.healthy) " / " (n) @if r.instances > r.healthy { span.muted { " (" (r.instances) " running)" } } }
                    None => span.muted { "per run" },
                }
            }
        }
    }
}

/// The query of the list page: the API's filters, a smaller default page.
fn query_of(mut q: ServicesQuery) -> ServicesQuery {
    q.types.retain(|t| !t.is_empty());
    q.suspended.retain(|t| !t.is_empty());
    q.name.retain(|t| !t.is_empty());
    if q.limit.is_none() {
        q.limit = Some(PAGE.to_owned());
    }
    q
}

/// The link to the page after `cursor`, the filters kept.
fn next_link(q: &ServicesQuery, cursor: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for n in &q.name {
        out.append_pair("name", n);
    }
    for t in &q.types {
        out.append_pair("type", t);
    }
    for s in &q.suspended {
        out.append_pair("suspended", s);
    }
    if let Some(l) = q.limit.as_deref().filter(|l| *l != PAGE) {
        out.append_pair("limit", l);
    }
    out.append_pair("cursor", cursor);
    format!("/?{}", out.finish())
}

/// GET /: the services list.
pub async fn index(
    State(st): State<AppState>,
    who: Signed,
    Listing(q): Listing<ServicesQuery>,
) -> Response {
    let q = query_of(q);
    let seen = *st.dashboard.applied.borrow();
    let rows = services::page_of(&st, &who.caller, &q, |_, state, view| Row::of(state, view)).await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let full = q
        .limit
        .as_deref()
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| rows.len() == l);
    let body = html! {
        div.row {
            h1 { "Services" }
            a.button href="/services/new" { "New service" }
        }
        (filters(&q))
        div #services data-live data-live-src={ "/live?after=" (seen) } {
            @if rows.is_empty() {
                p.muted { "No services" @if q.cursor.is_some() { " on this page" } "." }
            } @else {
                table {
                    caption {
                        (rows.len()) @if rows.len() == 1 { " service" } @else { " services" }
                        " " span #live-state .muted {}
                    }
                    thead { tr {
                        th scope="col" { "Name" }
                        th.opt scope="col" { "Type" }
                        th scope="col" { "Status" }
                        th scope="col" { "Live deploy" }
                        th.opt scope="col" { "Image" }
                        th scope="col" { "Instances" }
                    } }
                    tbody { @for r in &rows { (row(r)) } }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.cursor.is_some() { a href="/" { "First page" } }
            @if let (true, Some(last)) = (full, rows.last()) {
                a href=(next_link(&q, &last.service.id)) rel="next" { "Next page" }
            }
        }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        "Services",
        who.take_flash(&st),
        body,
    )
}

/// The owner's credentials, for the credential choices of a form.
pub async fn credentials(st: &AppState, who: &Signed) -> Vec<CredentialOut> {
    crate::routes::owner::list_credentials(
        State(st.clone()),
        Authed(who.caller.clone()),
        Listing(crate::routes::owner::CredentialsQuery {
            limit: Some("100".to_owned()),
            ..Default::default()
        }),
    )
    .await
    .map(|j| j.0)
    .unwrap_or_default()
}

/// A credential chooser; `current` selected.
pub fn credential_select(creds: &[CredentialOut], current: Option<&str>) -> Markup {
    html! {
        select #credential name="registryCredentialId" aria-describedby="credential-help" {
            option value="" selected[current.is_none()] { "None (a public image)" }
            @for c in creds {
                option value=(c.id) selected[current == Some(c.id.as_str())] {
                    (c.name) " (" (wire(&c.kind)) ", " (c.username) ")"
                }
            }
        }
        p #credential-help .help { "Registry credentials are managed under " a href="/credentials" { "Registry credentials" } "." }
    }
}

fn field_error(e: Option<&ApiError>, fields: &[&str]) -> Option<String> {
    let e = e?;
    let found: Vec<String> = e
        .fields
        .iter()
        .filter(|f| fields.contains(&f.field.as_str()))
        .map(|f| f.message.clone())
        .collect();
    (!found.is_empty()).then(|| found.join("; "))
}

/// One text input with its label, help, value and any error the API gave
/// for its fields.
pub fn text_input(
    id: &str,
    label: &str,
    value: Option<&str>,
    help: Option<&str>,
    error: Option<String>,
) -> Markup {
    let help_id = format!("{id}-help");
    html! {
        label for=(id) { (label) }
        input id=(id) type="text" name=(id) value=[value]
            aria-invalid=[error.as_ref().map(|_| "true")]
            aria-describedby=[help.map(|_| help_id.as_str())];
        @if let Some(e) = error { p.help.flash.error { (e) } }
        @if let Some(h) = help { p.help id=(help_id) { (h) } }
    }
}

/// The new-service form, filled with `form` and showing `error`.
fn new_form(
    who: &Signed,
    creds: &[CredentialOut],
    form: &FormData,
    error: Option<&ApiError>,
) -> Markup {
    let ty = form.get("type").unwrap_or("web_service");
    let plan = form.get("plan").unwrap_or("starter");
    let notify = form.get("notifyOnFail").unwrap_or("default");
    let err = |fields: &[&str]| field_error(error, fields);
    html! {
        h1 { "New service" }
        @if let Some(e) = error {
            div.flash.error role="alert" {
                p { "The service was not created: " (e.message) }
            }
        }
        form method="post" action="/services" {
            (csrf(who))
            label for="type" { "Type" }
            select #type name="type" {
                @for (t, label) in TYPES {
                    @let v = wire(t);
                    option value=(v) selected[ty == v] { (label) }
                }
            }
            (text_input("name", "Name", form.get("name"), Some("Unique among your services; a web service is served at <name>.<your base domain>."), err(&["name"])))
            (text_input("imagePath", "Image", form.get("imagePath"), Some("A prebuilt image, e.g. ghcr.io/you/app:1.0; berth checks it can pull it before anything is created."), err(&["image.imagePath", "image"])))
            label for="credential" { "Registry credential" }
            (credential_select(creds, form.text("registryCredentialId").as_deref()))
            div.row {
                div {
                    label for="numInstances" { "Instances" }
                    input #numInstances type="number" name="numInstances" min="1" max="100"
                        value=(form.get("numInstances").unwrap_or("1"));
                }
                div {
                    label for="plan" { "Instance type" }
                    select #plan name="plan" {
                        @for (name, cpu, mem) in PLANS {
                            option value=(name) selected[plan == *name] { (name) " (" (cpu) " mCPU, " (mem) " MiB)" }
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
            fieldset {
                legend { "Optional" }
                (text_input("healthCheckPath", "Health check path (web services)", form.get("healthCheckPath"), Some("Answered 2xx or 3xx by a healthy instance, e.g. /healthz."), err(&["healthCheckPath", "serviceDetails.healthCheckPath"])))
                (text_input("schedule", "Schedule (cron jobs)", form.get("schedule"), Some("5 fields, UTC, e.g. */15 * * * *."), err(&["schedule", "serviceDetails.schedule"])))
                (text_input("dockerCommand", "Command", form.get("dockerCommand"), Some("Runs instead of the image's CMD; the ENTRYPOINT is kept."), err(&["dockerCommand", "serviceDetails.envSpecificDetails.dockerCommand"])))
                (text_input("preDeployCommand", "Pre-deploy command", form.get("preDeployCommand"), Some("Runs once per deploy in the new image before any instance starts."), err(&["preDeployCommand", "serviceDetails.preDeployCommand"])))
                label for="envVars" { "Environment variables" }
                textarea #envVars name="envVars" aria-describedby="envVars-help" spellcheck="false" {
                    (form.get("envVars").unwrap_or_default())
                }
                p #envVars-help .help { "One KEY=value per line. Values are stored sealed." }
            }
            fieldset {
                legend { "Disk (optional)" }
                p.help { "Kept across restarts and deploys, on one node; the service then runs one instance, and a deploy stops the old instance before the new one starts. Not for cron jobs." }
                div.row {
                    div { (text_input("diskName", "Disk name", form.get("diskName"), None, err(&["serviceDetails.disk.name", "disk.name", "disk"]))) }
                    div { (text_input("diskMountPath", "Mount path", form.get("diskMountPath"), Some("e.g. /var/lib/postgresql/data"), err(&["serviceDetails.disk.mountPath", "disk.mountPath"]))) }
                    div {
                        label for="diskSizeGB" { "Size (GB)" }
                        input #diskSizeGB type="number" name="diskSizeGB" min="1" max="1024"
                            value=(form.get("diskSizeGB").unwrap_or("1"));
                    }
                }
            }
            button type="submit" { "Create service" }
        }
    }
}

/// The notification choices of a service, as the API spells them.
pub const NOTIFY: &[(&str, &str)] = &[
    ("default", "Owner's default"),
    ("all", "Every deploy"),
    ("failure", "Failures only"),
    ("none", "None"),
];

/// `KEY=value` lines as the API's env var bodies.
pub fn env_lines(text: &str) -> Result<Vec<EnvVarBody>, ApiError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ApiError::field(
                "envVars",
                format!("line {} is not KEY=value", n + 1),
            ));
        };
        out.push(EnvVarBody {
            key: k.trim().to_owned(),
            value: Some(v.to_owned()),
            generate_value: None,
        });
    }
    Ok(out)
}

/// A notification choice of a form.
pub fn notify_of(v: Option<&str>) -> Option<NotifyBody> {
    match v? {
        "all" => Some(NotifyBody::All),
        "failure" => Some(NotifyBody::Failure),
        "none" => Some(NotifyBody::None),
        _ => Some(NotifyBody::Default),
    }
}

/// The API's create body from the form.
fn create_body(f: &FormData) -> Result<CreateBody, ApiError> {
    let num = match f.text("numInstances") {
        None => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            ApiError::field("serviceDetails.numInstances", "must be a whole number")
        })?),
    };
    // A disk when a name or path is given (the size alone has a default).
    let disk = match (f.text("diskName"), f.text("diskMountPath")) {
        (None, None) => None,
        (name, mount_path) => Some(crate::routes::services::DiskBody {
            name,
            mount_path,
            size_gb: match f.text("diskSizeGB") {
                None => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| {
                    ApiError::field("serviceDetails.disk.sizeGB", "must be a whole number")
                })?),
            },
        }),
    };
    Ok(CreateBody {
        service_type: f.text("type"),
        name: f.text("name"),
        owner_id: None,
        image: Some(ImageBody {
            image_path: f.text("imagePath"),
            registry_credential_id: f.text("registryCredentialId").map(Some),
            owner_id: None,
        }),
        env_vars: Some(env_lines(f.get("envVars").unwrap_or_default())?),
        service_details: Some(DetailsBody {
            plan: f.text("plan"),
            num_instances: num,
            health_check_path: f.text("healthCheckPath").map(Some),
            pre_deploy_command: f.text("preDeployCommand").map(Some),
            schedule: f.text("schedule"),
            env_specific_details: f.text("dockerCommand").map(|c| EnvSpecific {
                docker_command: Some(Some(c)),
                ..EnvSpecific::default()
            }),
            disk,
            ..DetailsBody::default()
        }),
        notify_on_fail: notify_of(f.get("notifyOnFail")),
        render: Default::default(),
    })
}

/// GET /services/new
pub async fn new_service(State(st): State<AppState>, who: Signed) -> Response {
    let creds = credentials(&st, &who).await;
    let body = new_form(&who, &creds, &FormData::default(), None);
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        "New service",
        who.take_flash(&st),
        body,
    )
}

/// POST /services: `POST /v1/services` with the form's fields.
pub async fn create(State(st): State<AppState>, Posted { who, form }: Posted) -> Response {
    let created = match create_body(&form) {
        Ok(body) => {
            services::create(
                State(st.clone()),
                Authed(who.caller.clone()),
                JsonBody(body),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok((_, created)) => {
            let c = created.0;
            after(
                &st,
                &who,
                &format!("/services/{}", c.service.id),
                Ok(format!(
                    "Service {} created; its first deploy {} has started.",
                    c.service.name, c.deploy_id
                )),
            )
        }
        Err(e) => {
            let creds = credentials(&st, &who).await;
            let status = if e.status.is_client_error() {
                e.status
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            layout::page(
                status,
                &who,
                Section::Services,
                "New service",
                None,
                new_form(&who, &creds, &form, Some(&e)),
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_key_value_pairs() {
        let vars = env_lines("A=1\n\n# note\nB= two=2 \r\n").unwrap();
        assert_eq!(vars.len(), 2);
        assert_eq!(
            (vars[1].key.as_str(), vars[1].value.as_deref()),
            ("B", Some(" two=2 "))
        );
        let e = env_lines("A=1\nnope").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
    }
}

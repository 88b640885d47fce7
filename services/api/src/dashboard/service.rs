//! A service's page: what the `/v1` handlers answer for the service (its
//! view, deploys, instances or cron runs, jobs, its disk's snapshots,
//! events), the deploy in progress
//! ([`super::progress`]) followed live; its forms post to
//! [`super::actions`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use berth_domain::timeline::TimelineEvent;
use berth_schemas::model::{DeployStatus, ServiceType};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, badge, csrf, deploy_badge, digest, time, wire, Section};
use super::pages::{service_status, type_label, wanted};
use super::progress::{outcome, progress};
use super::refused;
use super::session::Signed;
use crate::app::{AppState, Authed};
use crate::error::ApiError;
use crate::query::{self, Listing};
use crate::routes::deploys::{self, DeployItem, DeploysQuery};
use crate::routes::disks::{self, DiskSnapshotView};
use crate::routes::events::{self, EventItem, EventsQuery};
use crate::routes::jobs::{self, JobItem, JobsQuery};
use crate::routes::services::{self, InstanceView};
use crate::views::{CommonDetails, DeployView, ServerPort, ServiceDetails, ServiceView};

/// Deploys and events on the page.
const DEPLOYS: &str = "20";
const EVENTS: &str = "25";
/// Jobs on the page (the newest).
const JOBS: &str = "10";

/// Query of a service page: where its deploy and event listings start.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default, deserialize_with = "query::one")]
    deploys: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    events: Option<String>,
}

/// Everything the page shows, as the API answers it.
struct Seen {
    service: ServiceView,
    deploys: Vec<DeployItem>,
    instances: Vec<InstanceView>,
    events: Vec<EventItem>,
    runs: Vec<EventItem>,
    jobs: Vec<JobItem>,
    /// Its disk's snapshots, newest first (none without a disk).
    snapshots: Vec<DiskSnapshotView>,
}

async fn load(st: &AppState, who: &Signed, id: &str, q: &PageQuery) -> Result<Seen, ApiError> {
    let (s, a) = (State(st.clone()), || Authed(who.caller.clone()));
    let path = || Path(id.to_owned());
    let service = services::get(s.clone(), a(), path()).await?.0;
    let deploys = deploys::list(
        s.clone(),
        a(),
        path(),
        Listing(DeploysQuery {
            cursor: q.deploys.clone(),
            limit: Some(DEPLOYS.to_owned()),
            ..DeploysQuery::default()
        }),
    )
    .await?
    .0;
    let instances = services::instances(s.clone(), a(), path()).await?.0;
    let events = events::list(
        s.clone(),
        a(),
        path(),
        Listing(EventsQuery {
            all_types: Some("true".to_owned()),
            cursor: q.events.clone(),
            limit: Some(EVENTS.to_owned()),
            ..EventsQuery::default()
        }),
    )
    .await?
    .0;
    let jobs = jobs::list(
        s.clone(),
        a(),
        path(),
        Listing(JobsQuery {
            limit: Some(JOBS.to_owned()),
            ..JobsQuery::default()
        }),
    )
    .await?
    .0;
    let runs = if service.service_type == ServiceType::CronJob {
        events::list(
            s,
            a(),
            path(),
            Listing(EventsQuery {
                types: vec![
                    "cron_job_run_started".to_owned(),
                    "cron_job_run_ended".to_owned(),
                ],
                limit: Some("40".to_owned()),
                ..EventsQuery::default()
            }),
        )
        .await?
        .0
    } else {
        Vec::new()
    };
    let snapshots = match &common(&service).disk {
        Some(d) => {
            disks::snapshots(State(st.clone()), a(), Path(d.id.clone()))
                .await?
                .1
                 .0
        }
        None => Vec::new(),
    };
    Ok(Seen {
        service,
        deploys,
        instances,
        events,
        runs,
        jobs,
        snapshots,
    })
}

fn detail<'a>(e: &'a TimelineEvent, key: &str) -> Option<&'a str> {
    e.details.get(key).and_then(Value::as_str)
}

/// One timeline entry in words.
fn summary(e: &TimelineEvent) -> Markup {
    let dep = detail(e, "deployId");
    html! {
        strong { (e.kind.replace('_', " ")) }
        @if let Some(d) = dep { " " code { (d) } }
        @match e.kind.as_str() {
            "deploy_started" => {
                @if let Some(t) = detail(e, "triggerName") { ", trigger " (t) }
            }
            "deploy_ended" | "cron_job_run_ended" => {
                @if let Some(o) = e.outcome() { ": " (o) }
                @if let Some(m) = detail(e, "message") { " — " (m) }
                @if let Some(c) = e.details.get("exitCode").and_then(Value::as_i64) { " (exit " (c) ")" }
            }
            "pre_deploy_ended" => {
                @if let Some(o) = detail(e, "preDeployStatus") { ": " (o) }
                @if let Some(m) = detail(e, "message") { " — " (m) }
            }
            "image_pull_failed" => {
                @if let Some(r) = detail(e, "pullFailure") { ": " (r) }
                @if let Some(m) = detail(e, "message") { " — " (m) }
            }
            "instance_count_changed" => {
                ": " (e.details.get("fromInstances").map(ToString::to_string).unwrap_or_default())
                " → " (e.details.get("toInstances").map(ToString::to_string).unwrap_or_default())
            }
            "placement_blocked" => {
                @if let Some(r) = detail(e, "reason") { ": " (r) }
            }
            "instance_exited" | "instance_port_detected" | "disk_placed" | "disk_updated"
            | "disk_added" | "disk_removed" | "disk_snapshot_restored"
            | "service_disk_usage_high" | "service_disk_usage_recovered" => {
                @if let Some(m) = detail(e, "message") { ": " (m) }
            }
            "instance_command_requested" => {
                ": " code { (detail(e, "program").unwrap_or_default()) }
                @if e.details.get("terminal") == Some(&serde_json::Value::Bool(true)) { " (a terminal)" }
                " in " span.mono { (detail(e, "instanceId").unwrap_or_default()) }
            }
            "instance_command_ended" => {
                ": " code { (detail(e, "program").unwrap_or_default()) }
                @if e.details.get("timedOut") == Some(&serde_json::Value::Bool(true)) {
                    " killed at its timeout"
                } @else if let Some(code) = e.details.get("exitCode") {
                    " exit code " (code)
                } @else if let Some(r) = detail(e, "reason") {
                    ": " (r)
                }
            }
            "rollback_target_missing" => {
                ": the registry no longer holds " (digest(detail(e, "digest")))
            }
            _ => {}
        }
    }
}

/// The settings every service type has.
pub fn common(s: &ServiceView) -> &CommonDetails {
    match &s.service_details {
        ServiceDetails::Web(d) => &d.common,
        ServiceDetails::Private(d) => &d.common,
        ServiceDetails::Worker(d) => &d.common,
        ServiceDetails::Cron(d) => &d.common,
    }
}

fn rollback_cell(who: &Signed, s: &ServiceView, d: &DeployView) -> Markup {
    let live = s.live_deploy_id.as_deref() == Some(d.id.as_str());
    let settled = matches!(
        d.status,
        DeployStatus::Live
            | DeployStatus::Deactivated
            | DeployStatus::UpdateFailed
            | DeployStatus::PreDeployFailed
            | DeployStatus::Canceled
    );
    if live || !settled || d.image.sha.is_none() {
        return html! {};
    }
    let reason_id = format!("rb-why-{}", d.id);
    html! {
        form.inline method="post" action={ "/services/" (s.id) "/rollback" } {
            (csrf(who))
            input type="hidden" name="deployId" value=(d.id);
            @if d.rollback_eligible {
                button.secondary type="submit" { "Roll back to this" }
            } @else {
                button.secondary type="submit" disabled aria-describedby=(reason_id) { "Roll back to this" }
                " " span.muted id=(reason_id) { "its digest is no longer in the registry" }
            }
        }
    }
}

fn deploys_table(who: &Signed, s: &ServiceView, items: &[DeployItem]) -> Markup {
    html! {
        table {
            caption { "Newest first" }
            thead { tr {
                th scope="col" { "Deploy" } th scope="col" { "Status" } th scope="col" { "Trigger" }
                th scope="col" { "Digest" } th.opt scope="col" { "Created" } th.opt scope="col" { "Finished" }
                th scope="col" { span.muted { "Actions" } }
            } }
            tbody {
                @for item in items {
                    @let d = &item.deploy;
                    tr id={ "deploy-" (d.id) } {
                        td { code { (d.id) } }
                        td.status { (deploy_badge(d.status)) @if let Some(r) = &d.reason { br; span.muted { (r) } } }
                        td { (wire(&d.trigger)) @if d.first_deploy { span.muted { " (first)" } } }
                        td { (digest(d.image.sha.as_deref())) }
                        td.opt { (time(d.created_at)) }
                        td.opt { (time(d.finished_at)) }
                        td {
                            @if matches!(d.status, DeployStatus::Queued | DeployStatus::Created | DeployStatus::UpdateInProgress | DeployStatus::PreDeployInProgress) {
                                form.inline method="post" action={ "/services/" (s.id) "/deploys/" (d.id) "/cancel" } {
                                    (csrf(who))
                                    button.secondary type="submit" { "Cancel" }
                                }
                            }
                            (rollback_cell(who, s, d))
                        }
                    }
                }
            }
        }
    }
}

/// Run a one-off job: outside the live region, so an update never wipes
/// what is being typed.
fn job_form(who: &Signed, s: &ServiceView) -> Markup {
    html! {
        form.actions method="post" action={ "/services/" (s.id) "/jobs" } {
            (csrf(who))
            label for="job-command" { "Command" }
            " "
            input #job-command type="text" name="startCommand" required placeholder="rake db:migrate";
            " "
            button type="submit" { "Run job" }
        }
    }
}

/// The newest jobs: how each went, a cancel for those still going.
fn jobs_table(who: &Signed, s: &ServiceView, items: &[JobItem]) -> Markup {
    html! {
        @if items.is_empty() {
            p.muted { "No jobs yet." }
        } @else {
            table {
                caption { "Newest first" }
                thead { tr {
                    th scope="col" { "Job" } th scope="col" { "Status" } th scope="col" { "Command" }
                    th.opt scope="col" { "Created" } th.opt scope="col" { "Finished" }
                    th scope="col" { span.muted { "Actions" } }
                } }
                tbody {
                    @for item in items {
                        @let j = &item.job;
                        @let class = match j.status.as_str() {
                            "succeeded" => "st-ok",
                            "failed" => "st-bad",
                            "canceled" => "st-off",
                            "running" => "st-run",
                            _ => "st-wait",
                        };
                        tr id={ "job-" (j.id) } {
                            td { code { (j.id) } }
                            td.status {
                                (badge(class, &j.status))
                                @if let Some(c) = j.exit_code { " " span.muted { "exit " (c) } }
                                @if let Some(r) = &j.reason { br; span.muted { (r) } }
                            }
                            td { code { (j.start_command) } }
                            td.opt { (time(Some(j.created_at))) }
                            td.opt { (time(j.finished_at)) }
                            td {
                                @if j.status == "running" {
                                    a href={ "/services/" (s.id) "/terminal?instance=" (j.id) } { "Terminal" }
                                    " "
                                }
                                @if matches!(j.status.as_str(), "pending" | "running") {
                                    form.inline method="post" action={ "/services/" (s.id) "/jobs/" (j.id) "/cancel" } {
                                        (csrf(who))
                                        button.secondary type="submit" { "Cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn instances_table(items: &[InstanceView]) -> Markup {
    html! {
        @if items.is_empty() {
            p.muted { "No instances." }
        } @else {
            table {
                thead { tr { th scope="col" { "Instance" } th scope="col" { "Node" } th scope="col" { "Deploy" } th scope="col" { "Phase" } th.opt scope="col" { "Since" } } }
                tbody {
                    @for i in items {
                        tr {
                            td { code { (i.id) } }
                            td { code { (i.node_id) } }
                            td { code { (i.deploy_id) } }
                            td {
                                (badge(if i.healthy { "st-ok" } else { "st-wait" }, &wire(&i.phase)))
                                @if let Some(p) = &i.problem { " " span.muted { (p) } }
                            }
                            td.opt { (time(Some(i.created_at))) }
                        }
                    }
                }
            }
        }
    }
}

/// Cron runs from the timeline: each run's start and end.
fn runs_table(who: &Signed, s: &ServiceView, items: &[EventItem]) -> Markup {
    struct Run<'a> {
        id: &'a str,
        started: Option<&'a TimelineEvent>,
        ended: Option<&'a TimelineEvent>,
    }
    let mut runs: Vec<Run> = Vec::new();
    for item in items {
        let e = &item.event;
        let Some(id) = detail(e, "cronJobRunId") else {
            continue;
        };
        let run = match runs.iter_mut().find(|r| r.id == id) {
            Some(r) => r,
            None => {
                runs.push(Run {
                    id,
                    started: None,
                    ended: None,
                });
                let last = runs.len() - 1;
                &mut runs[last]
            }
        };
        match e.kind.as_str() {
            "cron_job_run_started" => run.started = Some(e),
            _ => run.ended = Some(e),
        }
    }
    let active = runs.iter().any(|r| r.ended.is_none());
    html! {
        div.actions {
            form method="post" action={ "/services/" (s.id) "/cron-runs" } {
                (csrf(who))
                button type="submit" { "Run now" }
            }
            @if active {
                form method="post" action={ "/services/" (s.id) "/cron-runs/cancel" } {
                    (csrf(who))
                    button.secondary type="submit" { "Cancel the active run" }
                }
            }
        }
        @if runs.is_empty() {
            p.muted { "No runs yet." }
        } @else {
            table {
                thead { tr { th scope="col" { "Run" } th scope="col" { "Trigger" } th scope="col" { "Started" } th scope="col" { "Outcome" } } }
                tbody {
                    @for r in &runs {
                        tr {
                            td { code { (r.id) } }
                            td { @match r.started.and_then(|e| e.details.get("manual")).and_then(Value::as_bool) {
                                Some(true) => "manual", Some(false) => "schedule", None => span.muted { "—" },
                            } }
                            td { (time(r.started.map(|e| e.timestamp))) }
                            td { @match r.ended {
                                Some(e) => { (e.outcome().unwrap_or("ended"))
                                    @if let Some(c) = e.details.get("exitCode").and_then(Value::as_i64) { " (exit " (c) ")" } }
                                None => {
                                    (badge("st-run", "running")) " "
                                    a href={ "/services/" (s.id) "/terminal?instance=" (r.id) } { "Terminal" }
                                }
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn facts(s: &ServiceView, seen: &Seen, live: Option<&DeployView>) -> Markup {
    html! {
        dl.facts {
            dt { "Type" } dd { (type_label(s.service_type)) }
            dt { "Image" } dd { code.secret { (s.image_path) } }
            dt { "Credential" } dd { @match &s.registry_credential { Some(c) => (c.name), None => span.muted { "none (public image)" } } }
            dt { "Live deploy" } dd { @match live { Some(d) => { code { (d.id) } " " (digest(d.image.sha.as_deref())) }, None => span.muted { "none" } } }
            @if let Some(n) = wanted(s) {
                @let serving = seen.instances.iter().filter(|i| Some(i.deploy_id.as_str()) == s.live_deploy_id.as_deref());
                @let others = seen.instances.iter().filter(|i| Some(i.deploy_id.as_str()) != s.live_deploy_id.as_deref()).count();
                dt { "Instances" }
                dd {
                    (serving.filter(|i| i.healthy).count()) " healthy of " (n)
                    @if others > 0 { span.muted { " (" (others) " of other deploys)" } }
                }
            }
            @match &s.service_details {
                ServiceDetails::Web(w) => {
                    dt { "URL" } dd { a href=(w.url) { (w.url) } }
                    (detected_port(&w.open_ports))
                }
                ServiceDetails::Private(p) => {
                    dt { "Reached at" } dd { code { (p.url) } }
                    (detected_port(&p.open_ports))
                }
                ServiceDetails::Cron(c) => { dt { "Schedule" } dd { code { (c.schedule) } " (UTC)" } }
                ServiceDetails::Worker(_) => {}
            }
            @if let Some(d) = &common(s).disk {
                dt { "Disk" }
                dd {
                    (d.name) " at " code { (d.mount_path) } ", " (d.size_gb) " GB"
                    span.muted {
                        " kept across restarts and deploys"
                        @match &d.node_id { Some(n) => { ", on " code { (n) } }, None => { ", not placed yet" } }
                    }
                    @if d.usage_high {
                        " " strong.warning { "over 90 % full" }
                        span.muted { " — grow it in its settings or free space in it" }
                    }
                }
            }
            dt { "Created" } dd { (time(Some(s.created_at))) }
        }
    }
}

/// The port berth detected the service's instances serving on, if any.
fn detected_port(ports: &[ServerPort]) -> Markup {
    html! {
        @for p in ports {
            dt { "Port" }
            dd { code { (p.port) } span.muted { " detected: the service sets no PORT" } }
        }
    }
}

fn actions(who: &Signed, s: &ServiceView) -> Markup {
    let base = format!("/services/{}", s.id);
    let suspended = !s.suspenders.is_empty();
    html! {
        div.actions {
            form method="post" action={ (base) "/deploys" } {
                (csrf(who))
                button type="submit" disabled[suspended] { "Deploy latest reference" }
            }
            form.row method="post" action={ (base) "/deploys" } {
                (csrf(who))
                div {
                    label for="imageUrl" { "Or deploy this tag or digest" }
                    input #imageUrl type="text" name="imageUrl" placeholder=(s.image_path) required;
                }
                button.secondary type="submit" disabled[suspended] { "Deploy image" }
            }
        }
        div.actions {
            @if let Some(n) = wanted(s) {
                @if let Some(a) = common(s).autoscaling.as_ref().filter(|a| a.enabled) {
                    p.autoscaling { "This service runs " (a) ": " (n) " now." }
                    form method="post" action={ (base) "/autoscaling/delete" } {
                        (csrf(who))
                        button.secondary type="submit" { "Stop autoscaling" }
                    }
                } @else {
                    form.row method="post" action={ (base) "/scale" } {
                        (csrf(who))
                        div {
                            label for="numInstances" { "Instances" }
                            input #numInstances type="number" name="numInstances" min="0" max="100" value=(n) required;
                        }
                        button.secondary type="submit" { "Scale" }
                    }
                    @if common(s).disk.is_none() {
                        form.row method="post" action={ (base) "/autoscaling" } {
                            (csrf(who))
                            div {
                                label for="asMin" { "Autoscale from" }
                                input #asMin type="number" name="min" min="1" max="100" value=(n) required;
                            }
                            div {
                                label for="asMax" { "to" }
                                input #asMax type="number" name="max" min="1" max="100" value=(n.max(1) * 2) required;
                            }
                            div {
                                label for="asCpu" { "CPU target %" }
                                input #asCpu type="number" name="cpu" min="1" max="100" placeholder="70";
                            }
                            div {
                                label for="asMemory" { "Memory target %" }
                                input #asMemory type="number" name="memory" min="1" max="100";
                            }
                            button.secondary type="submit" { "Autoscale" }
                        }
                    }
                }
                form method="post" action={ (base) "/restart" } {
                    (csrf(who))
                    button.secondary type="submit" disabled[suspended] { "Restart" }
                }
            }
            @if suspended {
                form method="post" action={ (base) "/resume" } {
                    (csrf(who))
                    button.secondary type="submit" { "Resume" }
                }
            } @else {
                form method="post" action={ (base) "/suspend" } {
                    (csrf(who))
                    button.secondary type="submit" data-confirm="Suspend this service? Its instances stop." { "Suspend" }
                }
            }
            a.button.secondary href={ (base) "/logs" } { "Logs" }
            a.button.secondary href={ (base) "/metrics" } { "Metrics" }
            a.button.secondary href={ (base) "/settings" } { "Settings" }
        }
    }
}

/// The disk's snapshots, each with a restore, and a snapshot taken now.
fn snapshots_table(who: &Signed, s: &ServiceView, items: &[DiskSnapshotView]) -> Markup {
    let base = format!("/services/{}/disk-snapshots", s.id);
    html! {
        p.muted { "Its node copies the disk once a day; the 7 newest are kept. A restore sets the disk back and deploys the service on it." }
        form method="post" action=(base) {
            (csrf(who))
            button.secondary type="submit" { "Take a snapshot now" }
        }
        @if items.is_empty() {
            p.muted { "No snapshots yet." }
        } @else {
            table {
                thead { tr { th { "Snapshot" } th { "Taken" } th { "Size" } th {} } }
                tbody {
                    @for snap in items {
                        tr {
                            td { code { (snap.snapshot_key) } }
                            td { (time(Some(snap.created_at))) }
                            td { (format!("{:.1} MiB", snap.size_bytes as f64 / 1_048_576.0)) }
                            td {
                                form method="post" action={ (base) "/restore" } {
                                    (csrf(who))
                                    input type="hidden" name="snapshotKey" value=(snap.snapshot_key);
                                    button.secondary type="submit" data-confirm="Set the disk back to this snapshot? What was written since is lost; the service deploys on it." { "Restore" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn older(base: &str, key: &str, cursor: Option<&str>) -> Markup {
    html! {
        @if let Some(c) = cursor {
            nav.pager { a href={ (base) "?" (key) "=" (c) } { "Older" } a href=(base) { "Newest" } }
        }
    }
}

/// GET /services/{serviceId}
pub async fn page(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Listing(q): Listing<PageQuery>,
) -> Response {
    let seen_seq = *st.dashboard.applied.borrow();
    let seen = match load(&st, &who, &id, &q).await {
        Ok(s) => s,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let s = &seen.service;
    let views: Vec<&DeployView> = seen.deploys.iter().map(|i| &i.deploy).collect();
    let live = views
        .iter()
        .copied()
        .find(|d| s.live_deploy_id.as_deref() == Some(d.id.as_str()));
    let running = views.iter().copied().find(|d| {
        matches!(
            d.status,
            DeployStatus::UpdateInProgress | DeployStatus::PreDeployInProgress
        )
    });
    let queued: Vec<&DeployView> = views
        .iter()
        .copied()
        .filter(|d| d.status == DeployStatus::Queued)
        .rev()
        .collect();
    let base = format!("/services/{}", s.id);
    let body = html! {
        div #service data-live-src={ (base) "/live?after=" (seen_seq) } {
            h1 { (s.name) " " span #service-status data-live { (service_status(s, running, live, views.first().copied())) } }
            div #overview data-live { (facts(s, &seen, live)) }
            section.card aria-labelledby="actions-title" {
                h2 #actions-title { "Actions" }
                (actions(&who, s))
            }
            section.card #progress data-live aria-live="polite" aria-labelledby="progress-title" {
                @match running {
                    Some(d) => (progress(&st, s, d, &seen.instances, &queued)),
                    None => (outcome(s, views.first().copied())),
                }
                span #live-state .muted {}
            }
            section #deploys data-live aria-labelledby="deploys-title" {
                h2 #deploys-title { "Deploy history" }
                (deploys_table(&who, s, &seen.deploys))
                (older(&base, "deploys", seen.deploys.last().filter(|_| seen.deploys.len().to_string() == DEPLOYS).map(|d| d.cursor.as_str())))
            }
            @if s.service_type == ServiceType::CronJob {
                section #runs data-live aria-labelledby="runs-title" {
                    h2 #runs-title { "Runs" }
                    (runs_table(&who, s, &seen.runs))
                }
            } @else {
                section #instances data-live aria-labelledby="instances-title" {
                    h2 #instances-title { "Instances" }
                    (instances_table(&seen.instances))
                }
            }
            @if common(s).disk.is_some() {
                section #snapshots aria-labelledby="snapshots-title" {
                    h2 #snapshots-title { "Disk snapshots" }
                    (snapshots_table(&who, s, &seen.snapshots))
                }
            }
            section aria-labelledby="shell-title" {
                h2 #shell-title { "Shell" }
                (super::shell::form(&who, &s.id, ""))
            }
            section aria-labelledby="jobs-title" {
                h2 #jobs-title { "Jobs" }
                (job_form(&who, s))
                div #jobs data-live { (jobs_table(&who, s, &seen.jobs)) }
            }
            section #events data-live aria-labelledby="events-title" {
                h2 #events-title { "Events" }
                @if seen.events.is_empty() { p.muted { "No events." } }
                ol.timeline reversed {
                    @for item in &seen.events {
                        li { (time(Some(item.event.timestamp))) " — " (summary(&item.event)) }
                    }
                }
                (older(&base, "events", seen.events.last().filter(|_| seen.events.len().to_string() == EVENTS).map(|e| e.cursor.as_str())))
            }
        }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        &s.name,
        who.take_flash(&st),
        body,
    )
}

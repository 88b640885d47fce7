//! The deploy in progress, step by step: resolve (the digest), pull onto
//! each node (bytes as nodes report them), the pre-deploy command, new
//! instances healthy, cut-over; or, when none runs, the newest deploy's
//! outcome.

use berth_schemas::model::DeployPhase;
use maud::{html, Markup};

use super::feed::PullProgress;
use super::layout::{deploy_badge, digest, megabytes, time, wire};
use super::pages::wanted;
use super::service::common;
use crate::app::AppState;
use crate::routes::services::InstanceView;
use crate::views::{DeployView, ServiceView};

/// A step of the deploy in progress.
fn step(state: &str, title: &str, body: Markup) -> Markup {
    html! { li class=(state) { strong { (title) } " " span.muted { "(" (state_word(state)) ")" } div { (body) } } }
}

fn state_word(state: &str) -> &str {
    match state {
        "done" => "done",
        "now" => "in progress",
        "failed" => "failed",
        "skipped" => "skipped",
        _ => "waiting",
    }
}

fn pulls(d: &DeployView, progress: &[PullProgress]) -> Markup {
    html! {
        @if progress.is_empty() && d.pulled_on.is_empty() {
            span.muted { "no node has reported yet" }
        }
        ul {
            @for p in progress {
                li {
                    code { (p.node) } " "
                    @if p.bytes_total > 0 {
                        progress id={ "pull-" (d.id) "-" (p.node) } max=(p.bytes_total) value=(p.bytes_done) {
                            (megabytes(p.bytes_done))
                        }
                        " " (megabytes(p.bytes_done)) " / " (megabytes(p.bytes_total))
                    } @else {
                        "every layer already on the node"
                    }
                    @if p.done { " — verified" }
                }
            }
            @for n in &d.pulled_on {
                @if !progress.iter().any(|p| p.node.as_str() == n) {
                    li { code { (n) } " — verified" }
                }
            }
        }
    }
}

/// The running deploy, step by step: resolve, pull per node, pre-deploy,
/// health, cut-over.
pub fn progress(
    st: &AppState,
    s: &ServiceView,
    d: &DeployView,
    instances: &[InstanceView],
    queued: &[&DeployView],
) -> Markup {
    let phase = d.phase;
    let at = |p: DeployPhase| phase == Some(p);
    let past = |p: DeployPhase| {
        let order = [
            DeployPhase::Resolving,
            DeployPhase::Pulling,
            DeployPhase::PreDeploy,
            DeployPhase::Updating,
        ];
        let pos = |x| order.iter().position(|o| *o == x);
        matches!((phase.and_then(pos), pos(p)), (Some(now), Some(q)) if now > q)
    };
    let mark = |p: DeployPhase| {
        if at(p) {
            "now"
        } else if past(p) {
            "done"
        } else {
            "todo"
        }
    };
    let pre = common(s).pre_deploy_command.as_deref();
    let pulled =
        d.id.parse()
            .map(|id| st.dashboard.feed.pulls(&id))
            .unwrap_or_default();
    let want = wanted(s).unwrap_or(1);
    let mine: Vec<&InstanceView> = instances.iter().filter(|i| i.deploy_id == d.id).collect();
    let healthy = mine.iter().filter(|i| i.healthy).count();
    html! {
        h2 #progress-title { "Deploy " code { (d.id) } " in progress " (deploy_badge(d.status)) }
        p.muted { "Trigger " (wire(&d.trigger)) ", image " code.secret { (d.image.reference) } }
        ol.steps {
            (step(if d.image.sha.is_some() { "done" } else { mark(DeployPhase::Resolving) }, "Resolve the image",
                html! {
                    (digest(d.image.sha.as_deref()))
                    // A registry that is down: which attempt failed, when the next is.
                    @if let Some(r) = &d.retrying {
                        span.warning role="status" {
                            "registry unavailable, retry " (r.attempt + 1) " at " (time(Some(r.retry_at)))
                            ": " (r.message)
                        }
                    }
                }))
            (step(mark(DeployPhase::Pulling), "Pull onto the nodes",
                pulls(d, &pulled)))
            @if let Some(cmd) = pre {
                (step(mark(DeployPhase::PreDeploy), "Pre-deploy command", html! { code { (cmd) } }))
            } @else {
                (step("skipped", "Pre-deploy command", html! { span.muted { "none set" } }))
            }
            (step(mark(DeployPhase::Updating), "Start instances and pass health checks",
                html! { (healthy) " of " (want) " healthy" @if mine.len() > healthy { ", " (mine.len() - healthy) " starting" } }))
            (step("todo", "Cut over", html! { span.muted { "traffic moves and old instances stop once every new one is healthy" } }))
        }
        @if !queued.is_empty() {
            p { (queued.len()) " queued behind it: "
                @for (n, q) in queued.iter().enumerate() { @if n > 0 { ", " } code { (q.id) } } }
        }
    }
}

/// What the page says when no deploy runs: the newest deploy's outcome.
pub fn outcome(s: &ServiceView, latest: Option<&DeployView>) -> Markup {
    html! {
        h2 #progress-title { "Latest deploy" }
        @match latest {
            Some(d) => p #deploy-outcome {
                "Latest deploy " code { (d.id) } " " (deploy_badge(d.status))
                @if let Some(r) = &d.reason { " — " (r) }
                @if s.live_deploy_id.as_deref() == Some(d.id.as_str()) { " and serving." }
            },
            None => p #deploy-outcome .muted { "No deploy yet." },
        }
    }
}

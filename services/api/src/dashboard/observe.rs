//! A service's logs and metrics pages, read through the `/v1` handlers
//! (`GET /v1/logs`, `GET /v1/metrics/…`) like every other page.
//!
//! Logs: the newest lines first, at most [`LINES`] a page (the browser
//! never holds more), older ones a page at a time from the server, every
//! line escaped (maud escapes all text). Following puts each new line at
//! the top as it is kept: the page's script follows
//! `/services/{id}/logs/live` (SSE, one message per line: its row, drawn
//! here) and drops the oldest rows beyond [`LINES`]; when that stream
//! breaks or falls behind, the page is read again. Without JavaScript the
//! page re-reads itself every few seconds instead. Metrics: the last hour
//! as charts drawn on the server (SVG, no script, no CDN).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use berth_schemas::ids::ServiceId;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use super::layout::{self, time, Section};
use super::refused;
use super::session::Signed;
use crate::app::{AppState, Authed};
use crate::query::{self, Listing};
use crate::routes::logs::{self, LabelName, LogsQuery, LogsSubscribeQuery};
use crate::routes::metrics::{self, MetricsQuery, TimeSeries};
use crate::routes::services;

/// Lines on one logs page.
pub const LINES: usize = 200;

/// Query of the logs page.
#[derive(Debug, Default, Deserialize)]
pub struct LogsPageQuery {
    /// Lines older than this (the previous page's oldest).
    #[serde(default, deserialize_with = "query::one")]
    before: Option<String>,
    /// Only lines holding this text.
    #[serde(default, deserialize_with = "query::one")]
    text: Option<String>,
    /// Re-read every few seconds.
    #[serde(default, deserialize_with = "query::one")]
    follow: Option<String>,
}

/// GET /services/{serviceId}/logs
pub async fn logs_page(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Listing(q): Listing<LogsPageQuery>,
) -> Response {
    let a = || Authed(who.caller.clone());
    let service = match services::get(State(st.clone()), a(), Path(id.clone())).await {
        Ok(s) => s.0,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let text = q.text.clone().filter(|t| !t.is_empty());
    let page = logs::list(
        State(st.clone()),
        a(),
        Listing(LogsQuery {
            lines: LogsSubscribeQuery {
                resource: vec![id.clone()],
                text: text.iter().cloned().collect(),
                ..LogsSubscribeQuery::default()
            },
            // A day back, or up to the page before.
            start_time: Some((Utc::now() - chrono::Duration::days(7)).to_rfc3339()),
            end_time: q.before.clone(),
            limit: Some("100".to_owned()),
            ..LogsQuery::default()
        }),
    )
    .await;
    let page = match page {
        Ok(p) => p.0,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let mut lines = page.logs;
    lines.truncate(LINES);
    let follow = q.follow.as_deref() == Some("1") && q.before.is_none();
    let base = format!("/services/{}/logs", service.id);
    let filter = text.as_deref().map(|t| {
        format!(
            "text={}",
            form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>()
        )
    });
    let older = page.has_more.then(|| {
        let mut u = format!(
            "{base}?before={}",
            form_urlencoded::byte_serialize(page.next_end_time.to_rfc3339().as_bytes())
                .collect::<String>()
        );
        if let Some(f) = &filter {
            u.push('&');
            u.push_str(f);
        }
        u
    });
    let live = follow.then(|| match &filter {
        Some(f) => format!("{base}/live?{f}"),
        None => format!("{base}/live"),
    });
    let body = html! {
        @if follow {
            // Without a script, following re-reads the page.
            noscript { (PreEscaped("<meta http-equiv=\"refresh\" content=\"3\">")) }
        }
        h1 { a href={ "/services/" (service.id) } { (service.name) } " — logs" }
        form.inline method="get" action=(base) {
            label for="text" { "Lines holding" }
            input #text type="text" name="text" value=[text.as_deref()];
            button type="submit" { "Filter" }
            @if follow {
                a.button.secondary href=(base) { "Stop following" }
                " " span #logs-state .muted { noscript { "· read again every 3 s" } }
            } @else {
                a.button.secondary href={ (base) "?follow=1" } { "Follow" }
            }
        }
        @if lines.is_empty() {
            p.muted #no-lines { "No lines kept in this window." }
        }
        @if !lines.is_empty() || live.is_some() {
            table.logs data-live-logs=[live.as_deref()] data-max=(LINES) {
                thead { tr { th { "Time" } th { "Instance" } th { "Level" } th { "Line" } } }
                tbody {
                    @for e in &lines { (row(e)) }
                }
            }
        }
        nav.pager {
            @if let Some(u) = &older { a href=(u) { "Older" } }
            @if q.before.is_some() { a href=(base) { "Newest" } }
        }
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        &format!("{} logs", service.name),
        None,
        body,
    )
}

/// A line's row on the logs page.
fn row(e: &logs::LogEntry) -> Markup {
    let label = |name: LabelName| {
        e.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
            .unwrap_or_default()
    };
    html! {
        tr {
            td { (time(Some(e.timestamp))) }
            td {
                // berth's lines about a deploy belong to no instance.
                @match label(LabelName::Instance) {
                    "" => span.muted { "—" },
                    i => code { (i) },
                }
            }
            td { (label(LabelName::Level)) }
            td { code.line { (e.message) } }
        }
    }
}

/// Query of a logs page's live stream.
#[derive(Debug, Default, Deserialize)]
pub struct LiveLogsQuery {
    /// Only lines holding this text.
    #[serde(default, deserialize_with = "query::one")]
    text: Option<String>,
}

/// How often a live logs stream checks that its session still stands.
const RECHECK: Duration = Duration::from_secs(30);

/// GET /services/{serviceId}/logs/live: SSE, one `line` message per new
/// line of the service (its row's HTML as a JSON string); `reset` when
/// the stream fell behind or broke (read the page again), `gone` when the
/// session ended or the service is no longer the owner's.
pub async fn logs_live(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    Listing(q): Listing<LiveLogsQuery>,
) -> Response {
    let Ok(id) = id.parse::<ServiceId>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !super::live::owned(&st, &who, &id).await {
        return StatusCode::NOT_FOUND.into_response();
    }
    let texts = q.text.into_iter().filter(|t| !t.is_empty()).collect();
    let wants = logs::Subscription::holding(texts);
    let store = st.ingress.store();
    let watch = match st
        .log_tap
        .watch(store, &who.caller.owner, BTreeSet::from([id.clone()]))
        .await
    {
        Ok(w) => w,
        Err(e) => return (e.status, e.message).into_response(),
    };
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tail = Tail {
        wants,
        id,
        st,
        who,
        watch,
        recheck,
        ended: false,
    };
    super::live::sse(futures::stream::unfold(tail, |mut t| async move {
        t.next().await.map(|e| (Ok::<_, Infallible>(e), t))
    }))
}

/// One browser's live logs stream.
struct Tail {
    st: AppState,
    who: Signed,
    id: ServiceId,
    wants: logs::Subscription,
    watch: crate::logtap::Watch,
    recheck: tokio::time::Interval,
    ended: bool,
}

impl Tail {
    async fn next(&mut self) -> Option<SseEvent> {
        let shutdown = self.st.dashboard.shutdown.clone();
        while !self.ended {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                line = self.watch.next() => match line {
                    Ok(kept) if self.wants.keeps(&kept) => {
                        let seq = kept.seq;
                        let html = row(&logs::live_entry(kept)).into_string();
                        return Some(SseEvent::default()
                            .id(seq.to_string())
                            .event("line")
                            .json_data(html)
                            .unwrap_or_else(|_| SseEvent::default().event("reset").data("{}")));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.ended = true;
                        return Some(SseEvent::default().event("reset").data("{}"));
                    }
                },
                _ = self.recheck.tick() => {
                    if !super::live::may_go_on(&self.st, &self.who, &self.id) {
                        self.ended = true;
                        return Some(SseEvent::default().event("gone").data("{}"));
                    }
                }
            }
        }
        None
    }
}

/// One chart: a series' points over the window as an SVG polyline, with
/// its last value and largest in words (what a screen reader reads).
fn chart(
    title: &str,
    unit: &str,
    series: &[TimeSeries],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let span = (to - from).num_milliseconds().max(1) as f64;
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().map(|p| p.value))
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let polyline = |s: &TimeSeries| {
        s.values
            .iter()
            .map(|p| {
                let x = (p.timestamp - from).num_milliseconds() as f64 / span * W;
                let y = H - p.value / top * H;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let name = |s: &TimeSeries| {
        s.labels
            .iter()
            .filter(|l| l.field != "resource")
            .map(|l| l.value.clone())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let fmt = |v: f64| {
        if unit == "bytes" {
            format!("{:.1} MiB", v / 1_048_576.0)
        } else if unit == "cpu" {
            format!("{v:.3} cores")
        } else if unit == "ms" {
            format!("{v:.0} ms")
        } else {
            format!("{v:.0}")
        }
    };
    html! {
        section.card.chart aria-label=(title) {
            h2 { (title) }
            @if series.iter().all(|s| s.values.is_empty()) {
                p.muted { "No samples in the last hour." }
            } @else {
                svg viewBox={ "0 0 " (W) " " (H) } width="100%" height="120" role="img"
                    aria-label={ (title) ", largest " (fmt(max)) } {
                    @for (i, s) in series.iter().enumerate() {
                        polyline points=(polyline(s)) fill="none" stroke-width="2"
                            class={ "series-" (i % 6) } stroke="currentColor" {}
                    }
                }
                ul.legend {
                    @for s in series {
                        li {
                            (name(s)) ": now "
                            (s.values.last().map(|p| fmt(p.value)).unwrap_or_default())
                        }
                    }
                }
            }
        }
    }
}

/// GET /services/{serviceId}/metrics: the last hour.
pub async fn metrics_page(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
) -> Response {
    let a = || Authed(who.caller.clone());
    let service = match services::get(State(st.clone()), a(), Path(id.clone())).await {
        Ok(s) => s.0,
        Err(e) => return refused(&who, Section::Services, &e),
    };
    let to = Utc::now();
    let from = to - chrono::Duration::hours(1);
    let q = || MetricsQuery {
        resource: Some(id.clone()),
        start_time: Some(from.to_rfc3339()),
        end_time: Some(to.to_rfc3339()),
        resolution_seconds: Some("60".to_owned()),
        ..MetricsQuery::default()
    };
    let s = || State(st.clone());
    // Four reads of the stream, side by side.
    let results = tokio::join!(
        metrics::cpu(s(), a(), Listing(q())),
        metrics::memory(s(), a(), Listing(q())),
        metrics::http_requests(s(), a(), Listing(q())),
        metrics::http_latency(s(), a(), Listing(q())),
    );
    let (cpu, mem, req, lat) = match results {
        (Ok(c), Ok(m), Ok(r), Ok(l)) => (c.0, m.0, r.0, l.0),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return refused(&who, Section::Services, &e)
        }
    };
    // A service with a disk: how full it is.
    let disk = match super::service::common(&service).disk {
        None => None,
        Some(_) => match metrics::disk_usage(s(), a(), Listing(q())).await {
            Ok(d) => Some(d.0),
            Err(e) => return refused(&who, Section::Services, &e),
        },
    };
    let body = html! {
        h1 { a href={ "/services/" (service.id) } { (service.name) } " — metrics" }
        p.muted { "The last hour, a point a minute; samples are kept a day." }
        (chart("CPU per instance", "cpu", &cpu, from, to))
        (chart("Memory per instance", "bytes", &mem, from, to))
        @if let Some(d) = &disk { (chart("Disk in use", "bytes", d, from, to)) }
        (chart("Requests per minute, by status", "count", &req, from, to))
        (chart("Latency (p95)", "ms", &lat, from, to))
    };
    layout::page(
        StatusCode::OK,
        &who,
        Section::Services,
        &format!("{} metrics", service.name),
        None,
        body,
    )
}

//! Live updates over server-sent events, on the API's own listener.
//!
//! A service page follows `/services/{id}/live`, the services list
//! `/live` (all of the owner's services). Each SSE message is one commit
//! of the log: its `id` is the commit's stream sequence and its data the
//! commit's events (type, deploy, the timeline entry users see, pull
//! progress). A browser that loses the stream reconnects with
//! `Last-Event-ID` and gets every commit after it: from the feed's ring
//! while it reaches back that far, else read from the log
//! ([`berth_eventlog::EventStore::commits_between`]). A page's first
//! connection starts from the sequence the page was rendered at (`after`),
//! so nothing between the render and the connection is missed.
//!
//! The owner's stream of the services list only needs to know *that*
//! something changed: when its ring no longer reaches back it sends one
//! `reset` (re-read the page) instead of replaying.
//!
//! Streams end when the session does (sign-out, expiry, the key revoked),
//! when the service is deleted (`gone`), and when the API shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_domain::timeline::TimelineEvent;
use berth_schemas::ids::ServiceId;
use berth_schemas::{AggregateId, Envelope, Event};
use serde::Serialize;
use tokio::sync::watch;

use super::feed::{Entry, Since, Topic};
use super::session::Signed;
use crate::app::AppState;

/// How often an idle stream checks its session still stands.
const RECHECK: Duration = Duration::from_secs(30);
/// Commits read from the log in one go when the ring does not reach back.
const LOG_BATCH: usize = 256;
/// What browsers wait before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// One commit as a live view receives it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveCommit {
    /// The commit's stream sequence (also the SSE event id).
    pub seq: u64,
    pub service_id: String,
    pub events: Vec<LiveEvent>,
}

/// One event of a commit, with what a page shows of it. Never a secret:
/// the type, the deploy, the timeline entry the API serves, pull bytes.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullBytes>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullBytes {
    pub node: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl LiveEvent {
    fn of(env: &Envelope) -> Self {
        LiveEvent {
            kind: env.event.type_name(),
            deploy_id: env.event.deploy().map(ToString::to_string),
            timeline: TimelineEvent::from_envelope(env),
            pull: match &env.event {
                Event::ImagePullProgressed(p) => Some(PullBytes {
                    node: p.node.to_string(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                }),
                _ => None,
            },
        }
    }
}

fn commit_event(seq: u64, service: &ServiceId, envs: &[&Envelope]) -> SseEvent {
    let commit = LiveCommit {
        seq,
        service_id: service.to_string(),
        events: envs.iter().map(|e| LiveEvent::of(e)).collect(),
    };
    SseEvent::default()
        .id(seq.to_string())
        .event("commit")
        .json_data(&commit)
        .unwrap_or_else(|_| SseEvent::default().id(seq.to_string()).event("reset"))
}

/// Entries grouped into one SSE event per commit.
fn commits(entries: &[Arc<Entry>]) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let seq = entries[i].seq;
        let end = entries[i..]
            .iter()
            .position(|e| e.seq != seq || e.service != entries[i].service)
            .map_or(entries.len(), |n| i + n);
        let envs: Vec<&Envelope> = entries[i..end].iter().map(|e| e.envelope()).collect();
        out.push(commit_event(seq, &entries[i].service, &envs));
        i = end;
    }
    out
}

/// One browser's stream.
struct Follower {
    st: AppState,
    who: Signed,
    topic: Topic,
    /// The last sequence this stream has covered.
    last: u64,
    newest: watch::Receiver<u64>,
    applied: watch::Receiver<u64>,
    pending: VecDeque<SseEvent>,
    ended: bool,
}

impl Follower {
    /// Whether the stream may go on: the session stands and, for a
    /// service, it is still one of the owner's.
    fn allowed(&self) -> bool {
        match &self.topic {
            Topic::Service(id) => may_go_on(&self.st, &self.who, id),
            Topic::Owner(_) => self.who.still_valid(&self.st),
        }
    }

    /// Queues what happened after `last` up to `upto`.
    async fn fill(&mut self, upto: u64) {
        let feed = &self.st.dashboard.feed;
        match feed.since(&self.topic, self.last, upto) {
            Since::Entries(entries) => {
                self.pending.extend(commits(&entries));
                self.last = upto;
            }
            Since::Gap { complete_after } => match &self.topic {
                Topic::Service(id) => {
                    let until = complete_after.min(upto);
                    let read = self
                        .st
                        .ingress
                        .store()
                        .commits_between(
                            &AggregateId::Service(id.clone()),
                            self.last,
                            until,
                            LOG_BATCH,
                        )
                        .await;
                    match read {
                        Ok(found) => {
                            for (seq, commit) in &found {
                                let envs: Vec<&Envelope> = commit.events.iter().collect();
                                self.pending.push_back(commit_event(*seq, id, &envs));
                            }
                            self.last = match found.last() {
                                Some((seq, _)) if found.len() == LOG_BATCH => *seq,
                                _ => until,
                            };
                        }
                        Err(e) => {
                            // The browser reconnects from its last id.
                            tracing::warn!(error = %e, "live view could not read the log");
                            self.ended = true;
                        }
                    }
                }
                Topic::Owner(_) => {
                    self.pending.push_back(
                        SseEvent::default()
                            .id(upto.to_string())
                            .event("reset")
                            .data("{}"),
                    );
                    self.last = upto;
                }
            },
        }
    }

    async fn next(&mut self) -> Option<SseEvent> {
        let shutdown = self.st.dashboard.shutdown.clone();
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            let newest = *self.newest.borrow_and_update();
            if newest > self.last {
                // The commit is whole once the read model has applied it.
                let reached = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    r = self.applied.wait_for(|a| *a >= newest) => r.is_ok(),
                };
                if !reached {
                    return None;
                }
                let upto = *self.applied.borrow();
                self.fill(upto).await;
                if !self.allowed() {
                    self.ended = true;
                    self.pending
                        .push_back(SseEvent::default().event("gone").data("{}"));
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = self.newest.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep(RECHECK) => {
                    if !self.allowed() {
                        return None;
                    }
                }
            }
        }
    }
}

/// Where a stream starts: the browser's `Last-Event-ID` when it
/// reconnects, else the page's `after`, else now.
fn start_of(st: &AppState, headers: &HeaderMap, uri: &Uri) -> u64 {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let query = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "after")
            .and_then(|(_, v)| v.parse().ok())
    });
    header
        .or(query)
        .unwrap_or_else(|| *st.dashboard.applied.borrow())
}

fn stream(st: AppState, who: Signed, topic: Topic, after: u64) -> Response {
    let follower = Follower {
        newest: st.dashboard.feed.subscribe(topic.clone()),
        applied: st.dashboard.applied.clone(),
        st,
        who,
        topic,
        last: after,
        pending: VecDeque::from([SseEvent::default().retry(RETRY).comment("berth")]),
        ended: false,
    };
    let events = futures::stream::unfold(follower, |mut f| async move {
        f.next().await.map(|e| (Ok::<_, Infallible>(e), f))
    });
    sse(events)
}

/// `events` as an SSE response: kept alive, never cached.
pub fn sse(
    events: impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Whether service `id` is the signed-in owner's (one created a moment
/// ago is waited for): a stream on it opens only then.
pub async fn owned(st: &AppState, who: &Signed, id: &ServiceId) -> bool {
    let owns = |st: &AppState| st.read(|i| i.owns(&who.caller.owner, id)).unwrap_or(false);
    owns(st) || (st.caught_up().await.is_ok() && owns(st))
}

/// Whether a stream on service `id` may go on: the session stands and the
/// service is still the owner's.
pub fn may_go_on(st: &AppState, who: &Signed, id: &ServiceId) -> bool {
    who.still_valid(st) && st.read(|i| i.owns(&who.caller.owner, id)).unwrap_or(false)
}

/// GET /services/{serviceId}/live: the service's commits.
pub async fn service(
    State(st): State<AppState>,
    who: Signed,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Ok(id) = id.parse::<ServiceId>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !owned(&st, &who, &id).await {
        return StatusCode::NOT_FOUND.into_response();
    }
    let after = start_of(&st, &headers, &uri);
    stream(st, who, Topic::Service(id), after)
}

/// GET /live: commits of all of the owner's services.
pub async fn owner(
    State(st): State<AppState>,
    who: Signed,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let after = start_of(&st, &headers, &uri);
    let topic = Topic::Owner(who.caller.owner.clone());
    stream(st, who, topic, after)
}

//! The live lines of every service, for the API's log subscriptions
//! (`GET /v1/logs/subscribe`, a followed logs page of the dashboard): one
//! consumer on the logs stream per API process, opened when the first
//! subscription starts and let go when the last one ends, whose lines go
//! to the subscriptions of their service only. However many subscriptions
//! are open, the server holds one consumer for them, and a line costs the
//! process one lookup plus one hand-off per subscription to its service:
//! at 10,000 services, lines of services nobody follows cost a lookup.
//! A consumer lost (nats-server restarting, a leader moving) is opened
//! again after the last line handed on, so subscriptions miss nothing.
//!
//! Bounds: at most [`PER_OWNER`] subscriptions per owner and [`OPEN_MAX`]
//! in all are open at once (the next is a 429); a subscription whose
//! client has not taken [`QUEUE_LINES`] lines or [`QUEUE_BYTES`] bytes is
//! ended as fallen behind (its client pages the rest from `GET /v1/logs`),
//! so what waits for slow clients is at most `OPEN_MAX × QUEUE_BYTES`
//! (256 MiB) of lines.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use berth_eventlog::logs::KeptLine;
use berth_eventlog::{EventStore, StoreError};
use berth_schemas::ids::{OwnerId, ServiceId};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Most subscriptions one owner may have open at once.
pub const PER_OWNER: usize = 16;

/// Most subscriptions open at once in one API process.
pub const OPEN_MAX: usize = 256;

/// Lines a subscription's client may leave untaken before it is ended.
pub const QUEUE_LINES: usize = 1024;

/// Bytes of lines a subscription's client may leave untaken before it is
/// ended.
pub const QUEUE_BYTES: usize = 1 << 20;

/// See the module doc. Shared as an `Arc`.
#[derive(Debug, Default)]
pub struct LogTap {
    /// The feed while any subscription holds it.
    live: tokio::sync::Mutex<std::sync::Weak<Feed>>,
    /// Open subscriptions per owner, and in all.
    open: Mutex<Open>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    per_owner: HashMap<OwnerId, usize>,
    total: usize,
}

/// Where each service's lines go: its subscriptions.
type Routes = Arc<Mutex<HashMap<ServiceId, Vec<Arc<Route>>>>>;

/// One subscription as the feed sees it.
#[derive(Debug)]
struct Route {
    id: u64,
    services: BTreeSet<ServiceId>,
    lines: mpsc::Sender<Arc<KeptLine>>,
    queued: Arc<AtomicUsize>,
    behind: Arc<AtomicBool>,
}

/// The consumer's task (finished once the consumer stopped) and the
/// routes it hands lines along.
#[derive(Debug)]
struct Feed {
    routes: Routes,
    task: tokio::task::AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The consumer stops being read, and the server lets it go.
        self.task.abort();
    }
}

/// Why a subscription's lines ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its client fell too far behind.
    Behind,
    /// The logs stream could not be followed any more.
    Stopped,
}

/// One open subscription: its services' lines, in the stream's order.
#[derive(Debug)]
pub struct Watch {
    lines: mpsc::Receiver<Arc<KeptLine>>,
    queued: Arc<AtomicUsize>,
    behind: Arc<AtomicBool>,
    /// Its route's id and services (the route alone holds the sender, so
    /// the lines end once it is taken off).
    id: u64,
    services: BTreeSet<ServiceId>,
    feed: Arc<Feed>,
    _slot: Slot,
}

impl Watch {
    /// The services whose lines it hands on (no other's).
    pub fn services(&self) -> &BTreeSet<ServiceId> {
        &self.services
    }

    /// The next line, or why there is none.
    pub async fn next(&mut self) -> Result<Arc<KeptLine>, Ended> {
        match self.lines.recv().await {
            Some(line) => {
                self.queued
                    .fetch_sub(line.line.line.len(), Ordering::Relaxed);
                Ok(line)
            }
            None if self.behind.load(Ordering::Relaxed) => Err(Ended::Behind),
            None => Err(Ended::Stopped),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.feed.routes.lock() {
            unroute(&mut routes, self.id, &self.services);
        }
    }
}

/// Takes route `id` off each of `services`.
fn unroute(
    routes: &mut HashMap<ServiceId, Vec<Arc<Route>>>,
    id: u64,
    services: &BTreeSet<ServiceId>,
) {
    for s in services {
        if let Some(list) = routes.get_mut(s) {
            list.retain(|r| r.id != id);
            if list.is_empty() {
                routes.remove(s);
            }
        }
    }
}

/// A count of open subscriptions, given back on drop.
#[derive(Debug)]
struct Slot {
    tap: Arc<LogTap>,
    owner: OwnerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.tap.open.lock() {
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.per_owner.get_mut(&self.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.per_owner.remove(&self.owner);
                }
            }
        }
    }
}

impl LogTap {
    /// Opens a subscription of `owner` to `services`: their lines stored
    /// from now on.
    pub async fn watch(
        self: &Arc<Self>,
        store: &EventStore,
        owner: &OwnerId,
        services: BTreeSet<ServiceId>,
    ) -> Result<Watch, ApiError> {
        let slot = self.slot(owner)?;
        let feed = {
            let mut live = self.live.lock().await;
            match live.upgrade() {
                // A feed whose consumer stopped is replaced.
                Some(feed) if !feed.task.is_finished() => feed,
                _ => {
                    let feed = Arc::new(open(store).await?);
                    *live = Arc::downgrade(&feed);
                    feed
                }
            }
        };
        let (tx, lines) = mpsc::channel(QUEUE_LINES);
        let (queued, behind) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let route = Arc::new(Route {
            id,
            services: services.clone(),
            lines: tx,
            queued: queued.clone(),
            behind: behind.clone(),
        });
        {
            let mut routes = feed.routes.lock().map_err(|_| unavailable())?;
            for s in &route.services {
                routes.entry(s.clone()).or_default().push(route.clone());
            }
        }
        Ok(Watch {
            lines,
            queued,
            behind,
            id,
            services,
            feed,
            _slot: slot,
        })
    }

    fn slot(self: &Arc<Self>, owner: &OwnerId) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().map_err(|_| unavailable())?;
        if open.total >= OPEN_MAX {
            return Err(ApiError::too_many(format!(
                "this server has {OPEN_MAX} log subscriptions open, as many as it takes; try again later"
            )));
        }
        let n = open.per_owner.entry(owner.clone()).or_default();
        if *n >= PER_OWNER {
            return Err(ApiError::too_many(format!(
                "at most {PER_OWNER} log subscriptions may be open at once; close one first"
            )));
        }
        *n += 1;
        open.total += 1;
        Ok(Slot {
            tap: self.clone(),
            owner: owner.clone(),
        })
    }
}

/// How long the feed tries to follow the logs stream again after it
/// lost it (nats-server restarting, a leader moving) before it gives up
/// and its subscriptions end.
const REOPEN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the consumer and starts handing its lines along. When the
/// consumer is lost, it is opened again after the last line handed on,
/// so subscriptions neither miss nor repeat a line across the gap.
async fn open(store: &EventStore) -> Result<Feed, ApiError> {
    let first = store.follow_logs(None).await.map_err(|e| {
        tracing::warn!(error = %e, "the logs stream could not be followed");
        unavailable()
    })?;
    let routes = Routes::default();
    let (to, store) = (routes.clone(), store.clone());
    let task = tokio::spawn(async move {
        let mut follow = first.boxed();
        let mut last = None;
        loop {
            match follow.next().await {
                Some(Ok(kept)) => {
                    last = Some(kept.seq);
                    hand(&to, kept);
                }
                lost => {
                    let why = match lost {
                        Some(Err(e)) => e.to_string(),
                        _ => "the consumer ended".to_owned(),
                    };
                    tracing::warn!(error = %why, "following the logs stream: lost; opening it again");
                    match reopen(&store, last).await {
                        Some(again) => follow = again,
                        None => break,
                    }
                }
            }
        }
        // Every subscription sees its lines end.
        if let Ok(mut routes) = to.lock() {
            routes.clear();
        }
    })
    .abort_handle();
    Ok(Feed { routes, task })
}

/// The logs stream followed again after `last`, tried every second for
/// [`REOPEN_FOR`].
async fn reopen(
    store: &EventStore,
    last: Option<u64>,
) -> Option<futures::stream::BoxStream<'static, Result<KeptLine, StoreError>>> {
    let deadline = tokio::time::Instant::now() + REOPEN_FOR;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match store.follow_logs(last).await {
            Ok(again) => return Some(again.boxed()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the logs stream cannot be followed yet");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the logs stream could not be followed again; live subscriptions end");
                return None;
            }
        }
    }
}

/// Hands `kept` to the subscriptions of its service; one whose client is
/// too far behind is taken off every service, which ends its lines.
fn hand(routes: &Mutex<HashMap<ServiceId, Vec<Arc<Route>>>>, kept: KeptLine) {
    let Ok(mut routes) = routes.lock() else {
        return;
    };
    let Some(list) = routes.get(&kept.line.service) else {
        return;
    };
    let size = kept.line.line.len();
    let line = Arc::new(kept);
    let mut behind = Vec::new();
    for r in list {
        // Counted before it is sent: the client may take it at once, and
        // its count must not go below zero.
        let was = r.queued.fetch_add(size, Ordering::Relaxed);
        if was + size > QUEUE_BYTES || r.lines.try_send(line.clone()).is_err() {
            r.queued.fetch_sub(size, Ordering::Relaxed);
            r.behind.store(true, Ordering::Relaxed);
            behind.push(r.clone());
        }
    }
    for r in behind {
        unroute(&mut routes, r.id, &r.services);
    }
}

/// 503: retry later.
fn unavailable() -> ApiError {
    ApiError::from(berth_ingress::IngressError::Store(
        "the logs stream cannot be followed now".to_owned(),
    ))
}

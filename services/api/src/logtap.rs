//! The live lines of every service, for the API's log subscriptions
//! (`GET /v1/logs/subscribe`): one consumer on the logs stream per API
//! process, opened when the first subscription starts and let go when the
//! last one ends, whose lines every subscription receives and filters to
//! its own services. However many subscriptions are open, the server
//! holds one consumer for them.
//!
//! Bounds: an owner has at most [`PER_OWNER`] subscriptions open at once
//! (the next is a 429); a subscription that falls more than [`BUFFER`]
//! lines behind the stream is told so and ended (its client pages the
//! rest from `GET /v1/logs`), so a slow client holds no memory of its own:
//! the lines not yet read by every subscription are at most [`BUFFER`] of
//! at most 16 KiB (the logs stream's largest message), 64 MiB in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use berth_eventlog::logs::KeptLine;
use berth_eventlog::EventStore;
use berth_schemas::ids::OwnerId;
use futures::StreamExt;
use tokio::sync::broadcast;

use crate::error::ApiError;

/// Most subscriptions one owner may have open at once.
pub const PER_OWNER: usize = 16;

/// Lines a subscription may be behind before it is ended.
pub const BUFFER: usize = 4096;

/// See the module doc. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct LogTap {
    /// The feed while any subscription holds it.
    live: tokio::sync::Mutex<Weak<Feed>>,
    /// Open subscriptions per owner.
    open: Mutex<HashMap<OwnerId, usize>>,
}

/// The consumer's lines, handed to every subscription.
#[derive(Debug)]
struct Feed {
    /// Held by the task alone, so subscriptions see the end of the stream
    /// when it stops.
    lines: broadcast::WeakSender<Arc<KeptLine>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The consumer stops being read, and the server lets it go.
        self.task.abort();
    }
}

/// One open subscription: its lines, in the stream's order.
#[derive(Debug)]
pub struct Watch {
    pub lines: broadcast::Receiver<Arc<KeptLine>>,
    _feed: Arc<Feed>,
    _slot: Slot,
}

/// An owner's count of open subscriptions, given back on drop.
#[derive(Debug)]
struct Slot {
    tap: Arc<LogTap>,
    owner: OwnerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.tap.open.lock() {
            if let Some(n) = open.get_mut(&self.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.owner);
                }
            }
        }
    }
}

impl LogTap {
    /// Opens a subscription for `owner`: the lines stored from now on.
    pub async fn watch(
        self: &Arc<Self>,
        store: &EventStore,
        owner: &OwnerId,
    ) -> Result<Watch, ApiError> {
        let slot = self.slot(owner)?;
        let mut live = self.live.lock().await;
        // A feed whose consumer stopped is replaced.
        if let Some(feed) = live.upgrade() {
            if let Some(sender) = feed.lines.upgrade() {
                return Ok(Watch {
                    lines: sender.subscribe(),
                    _feed: feed,
                    _slot: slot,
                });
            }
        }
        let (feed, lines) = open(store).await?;
        let feed = Arc::new(feed);
        *live = Arc::downgrade(&feed);
        Ok(Watch {
            lines,
            _feed: feed,
            _slot: slot,
        })
    }

    fn slot(self: &Arc<Self>, owner: &OwnerId) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().map_err(|_| unavailable())?;
        let n = open.entry(owner.clone()).or_default();
        if *n >= PER_OWNER {
            return Err(ApiError::too_many(format!(
                "at most {PER_OWNER} log subscriptions may be open at once; close one first"
            )));
        }
        *n += 1;
        Ok(Slot {
            tap: self.clone(),
            owner: owner.clone(),
        })
    }
}

/// Opens the consumer and starts handing its lines out; also the first
/// subscription to them.
async fn open(store: &EventStore) -> Result<(Feed, broadcast::Receiver<Arc<KeptLine>>), ApiError> {
    let mut follow = store.follow_logs().await.map_err(|e| {
        tracing::warn!(error = %e, "the logs stream could not be followed");
        unavailable()
    })?;
    let (out, first) = broadcast::channel(BUFFER);
    let lines = out.downgrade();
    let task = tokio::spawn(async move {
        while let Some(next) = follow.next().await {
            match next {
                // With no subscription left the feed is being dropped.
                Ok(kept) => {
                    let _ = out.send(Arc::new(kept));
                }
                Err(e) => {
                    // Subscriptions end (their receivers close) and say so.
                    tracing::warn!(error = %e, "following the logs stream stopped");
                    return;
                }
            }
        }
    })
    .abort_handle();
    Ok((Feed { lines, task }, first))
}

/// 503: retry later.
fn unavailable() -> ApiError {
    ApiError::from(berth_ingress::IngressError::Store(
        "the logs stream cannot be followed now".to_owned(),
    ))
}

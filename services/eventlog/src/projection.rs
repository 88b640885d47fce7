//! Read models rebuilt from the log. A [`ProjectionRunner`] restores the last
//! snapshot (state + the stream sequence it covers) from the snapshot bucket,
//! replays only the tail after it through an ordered consumer, then follows
//! the log live, snapshotting every N events or T seconds, so start-up time
//! does not grow with history. A snapshot is the whole read model, so its
//! cost grows with the model: one is written only once folding the commits
//! since the last took [`FOLDING_PER_SNAPSHOT`] times as long as that
//! snapshot did. Snapshots then cost at most a fraction of the folding they
//! save a restart (a model of 10,000 services is not serialized every
//! 10,000 commits during a burst of hooks), and the tail a restart replays
//! stays within a few snapshots' worth of work.
//!
//! A message that is not a usable commit (garbage bytes, an event version
//! newer than this build) is reported with its stream sequence, through
//! tracing and the `on_bad_event` callback, then skipped or halts the runner
//! according to [`BadEventPolicy`]. Nothing panics.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use berth_schemas::{Commit, Envelope};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::EventStore;

/// Held while a snapshot is read and decoded, or encoded and written: the
/// read models of one process (API index, probe view, cron's view, the
/// projector) take turns, so their snapshots' bytes are never all in
/// memory at once beside the states they hold (at 10,000 services each
/// is tens of megabytes, decoded a few times that).
static SNAPSHOT_TURN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A snapshot waits until folding the commits since the last one took this
/// many times as long as writing the last one did (see the module docs).
pub const FOLDING_PER_SNAPSHOT: u32 = 4;

/// A read model folded from the log.
pub trait Projection: Send + Sync + 'static {
    /// What is stored in a snapshot.
    type Snapshot: Serialize + DeserializeOwned + Send + 'static;

    /// Applies one event; `stream_seq` is the position of its commit.
    fn apply(&mut self, stream_seq: u64, env: &Envelope);

    /// Applies one commit's events in order. A read model that keeps
    /// events can keep the shared commit instead of copies of them.
    fn apply_commit(&mut self, stream_seq: u64, events: &Arc<[Envelope]>) {
        for env in events.iter() {
            self.apply(stream_seq, env);
        }
    }

    /// The state to persist.
    fn snapshot(&self) -> Self::Snapshot;

    /// The state to persist, borrowed: a projection that is its own
    /// snapshot is written without a copy of itself.
    fn snapshot_ref(&self) -> Option<&Self::Snapshot> {
        None
    }

    /// Replaces the state with a persisted one.
    fn restore(&mut self, snapshot: Self::Snapshot);
}

/// What to do with a message that is not a usable commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadEventPolicy {
    /// Report it and go on (the projection misses that commit).
    #[default]
    Skip,
    /// Report it and stop the runner with [`ProjectionError::Halted`].
    Halt,
}

/// A message the projection could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    /// Its position in the stream.
    pub stream_seq: u64,
    /// Its subject.
    pub subject: String,
    /// Why it is unusable.
    pub reason: String,
    /// True when it is a newer event version than this build knows.
    pub unknown_version: bool,
}

/// Called for every bad event (e.g. to count it in a metric).
pub type BadEventHook = Arc<dyn Fn(&BadEvent) + Send + Sync>;

/// How a runner reads, snapshots and reacts to bad events.
#[derive(Clone)]
pub struct ProjectionOptions {
    /// Snapshot key in the bucket (`[A-Za-z0-9_-]`); `None` disables snapshots.
    pub snapshot_key: Option<String>,
    /// Snapshot after this many commits applied since the last one …
    pub snapshot_every_commits: u64,
    /// … or after this long, if anything was applied; either way only once
    /// folding them took [`FOLDING_PER_SNAPSHOT`] times the last
    /// snapshot's cost.
    pub snapshot_every: Duration,
    /// Subject filter; defaults to the whole event log.
    pub filter: Option<String>,
    /// What to do with unusable messages.
    pub policy: BadEventPolicy,
    /// Called for each unusable message.
    pub on_bad_event: Option<BadEventHook>,
}

impl std::fmt::Debug for ProjectionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionOptions")
            .field("snapshot_key", &self.snapshot_key)
            .field("snapshot_every_commits", &self.snapshot_every_commits)
            .field("snapshot_every", &self.snapshot_every)
            .field("filter", &self.filter)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            snapshot_key: None,
            snapshot_every_commits: 10_000,
            snapshot_every: Duration::from_secs(30),
            filter: None,
            policy: BadEventPolicy::Skip,
            on_bad_event: None,
        }
    }
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A bad event under [`BadEventPolicy::Halt`].
    #[error("projection halted at stream sequence {stream_seq}: {reason}")]
    Halted {
        /// Where.
        stream_seq: u64,
        /// Why.
        reason: String,
    },
    /// The snapshot exists but cannot be read back (not retried: rebuilding
    /// silently from scratch could hide a bug; delete the key to rebuild).
    #[error("snapshot {key} unreadable: {reason}")]
    Snapshot {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached while catching up.
    #[error("catching up failed: {0}")]
    Request(String),
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatchUp {
    /// Stream sequence the snapshot covered (0 without one).
    pub restored_seq: u64,
    /// Commits read from the stream after the snapshot.
    pub commits: u64,
    /// Events applied.
    pub events: u64,
    /// Stream sequence applied up to.
    pub applied_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotRecord<S> {
    seq: u64,
    state: S,
}

/// Keeps one projection up to date with the log.
#[derive(Debug)]
pub struct ProjectionRunner<P: Projection> {
    store: EventStore,
    state: Arc<RwLock<P>>,
    applied: watch::Sender<u64>,
    opts: ProjectionOptions,
    since_snapshot: u64,
    last_snapshot: Instant,
    /// Time spent folding commits since the last snapshot.
    folding: Duration,
    /// How long the last snapshot took to encode and write.
    snapshot_cost: Duration,
}

impl<P: Projection + std::fmt::Debug> ProjectionRunner<P> {
    /// A runner over `projection` (its starting state, usually empty).
    pub fn new(store: &EventStore, projection: P, opts: ProjectionOptions) -> Self {
        Self {
            store: store.clone(),
            state: Arc::new(RwLock::new(projection)),
            applied: watch::channel(0).0,
            opts,
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            folding: Duration::ZERO,
            snapshot_cost: Duration::ZERO,
        }
    }

    /// Shared read access to the projection.
    pub fn state(&self) -> Arc<RwLock<P>> {
        Arc::clone(&self.state)
    }

    /// The last stream sequence applied; wait on it for read-your-writes
    /// (`rx.wait_for(|s| *s >= appended.version.stream_seq)`).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Restores the snapshot, if any; returns the stream sequence it covers.
    pub async fn restore(&mut self) -> Result<u64, ProjectionError> {
        let Some(key) = self.opts.snapshot_key.clone() else {
            return Ok(0);
        };
        // One snapshot's bytes at a time beside what they decode to.
        let _turn = SNAPSHOT_TURN.acquire().await;
        let snap_err = |reason: String| ProjectionError::Snapshot {
            key: key.clone(),
            reason,
        };
        let read = crate::snapshots::read_streamed(&self.store.snapshots, &key, |r| {
            rmp_serde::from_read::<_, SnapshotRecord<P::Snapshot>>(r).map_err(|e| e.to_string())
        })
        .await;
        let record = match read {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(0),
            Err(crate::snapshots::ReadError::Request(e)) => {
                return Err(ProjectionError::Request(e))
            }
            Err(crate::snapshots::ReadError::Broken(e)) => return Err(snap_err(e)),
        };
        self.state
            .write()
            .map_err(|_| snap_err("state lock poisoned".to_owned()))?
            .restore(record.state);
        self.applied.send_replace(record.seq);
        tracing::info!(snapshot = %key, stream.seq = record.seq, "projection restored from snapshot");
        Ok(record.seq)
    }

    /// Writes a snapshot now. Failures are logged, not fatal: the log is the
    /// truth and the next snapshot will try again.
    pub async fn snapshot_now(&mut self) {
        let Some(key) = self.opts.snapshot_key.clone() else {
            return;
        };
        // One snapshot encoded at a time: each is a copy of a whole read
        // model while it is written.
        let _turn = SNAPSHOT_TURN.acquire().await;
        let started = Instant::now();
        let seq = self.applied_seq();
        let chunk = crate::snapshots::chunk_size(self.store.client.server_info().max_payload);
        // Distinct per write, so chunks of two writers never mix.
        let generation = seq ^ chrono::Utc::now().timestamp_micros().unsigned_abs();
        // Encoded under the state's read lock, on a blocking thread, as the
        // chunks are written: only this runner changes the state, and it
        // waits here meanwhile.
        let state = Arc::clone(&self.state);
        let written = crate::snapshots::write_streamed(
            &self.store.snapshots,
            &key,
            chunk,
            generation,
            move |sink| {
                let state = state.read().map_err(|_| "state lock poisoned".to_owned())?;
                match state.snapshot_ref() {
                    Some(borrowed) => rmp_serde::encode::write_named(
                        sink,
                        &SnapshotRecord {
                            seq,
                            state: borrowed,
                        },
                    ),
                    None => rmp_serde::encode::write_named(
                        sink,
                        &SnapshotRecord {
                            seq,
                            state: state.snapshot(),
                        },
                    ),
                }
                .map_err(|e| e.to_string())
            },
        )
        .await;
        if let Err(e) = written {
            tracing::warn!(snapshot = %key, error = %e, "snapshot not written");
            return;
        }
        tracing::debug!(
            snapshot = %key,
            stream.seq = seq,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        self.since_snapshot = 0;
        self.folding = Duration::ZERO;
        self.last_snapshot = Instant::now();
        self.snapshot_cost = started.elapsed();
    }

    /// Whether to snapshot now: `asked` (enough commits, or time) and the
    /// folding since the last snapshot outweighs what one costs.
    fn snapshot_due(&self, asked: bool) -> bool {
        asked
            && self.opts.snapshot_key.is_some()
            && self.since_snapshot > 0
            && self.folding >= self.snapshot_cost * FOLDING_PER_SNAPSHOT
    }

    /// Restores the snapshot and applies everything up to the current end
    /// of the log.
    pub async fn catch_up(&mut self) -> Result<CatchUp, ProjectionError> {
        // Once: a runner already following (caught up before `run`) must
        // not go back to an older snapshot.
        let restored_seq = if self.applied_seq() == 0 {
            self.restore().await?
        } else {
            0
        };
        let target = self
            .store
            .last_stream_seq()
            .await
            .map_err(|e| ProjectionError::Request(e.to_string()))?;
        let mut stats = CatchUp {
            restored_seq,
            ..Default::default()
        };
        if target > self.applied_seq() {
            self.consume(Some(target), &CancellationToken::new(), &mut stats)
                .await?;
        }
        stats.applied_seq = self.applied_seq();
        Ok(stats)
    }

    /// [`Self::catch_up`] at a component's start: waits while the log
    /// cannot answer yet ([`crate::start`]); `None` when `shutdown` comes
    /// first.
    pub async fn catch_up_at_start(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<CatchUp>, ProjectionError> {
        // `start::until_available`'s loop, written out: the step borrows
        // `self` mutably.
        use crate::start::Retryable;
        let mut wait = crate::start::Wait::default();
        loop {
            match self.catch_up().await {
                Ok(stats) => return Ok(Some(stats)),
                Err(e) if e.is_retryable() => {
                    if !wait.after(&e, "projection not caught up", shutdown).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Catches up, then follows the log until `shutdown`, snapshotting as
    /// configured and once more on the way out.
    /// A log that cannot answer yet (a NATS node restarting, no quorum)
    /// is waited for, not an error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ProjectionError> {
        let Some(mut stats) = self.catch_up_at_start(&shutdown).await? else {
            return Ok(());
        };
        let result = self.consume(None, &shutdown, &mut stats).await;
        if self.since_snapshot > 0 {
            self.snapshot_now().await;
        }
        result
    }

    /// Reads from `applied + 1` until `until` (or forever), recreating the
    /// ordered consumer from the last applied sequence after any error: after
    /// a server restart the client's own recovery takes ~20 s (NOTES.md).
    async fn consume(
        &mut self,
        until: Option<u64>,
        shutdown: &CancellationToken,
        stats: &mut CatchUp,
    ) -> Result<(), ProjectionError> {
        let mut backoff = Duration::from_millis(100);
        let mut tick =
            tokio::time::interval(self.opts.snapshot_every.max(Duration::from_millis(100)));
        loop {
            if until.is_some_and(|t| self.applied_seq() >= t) || shutdown.is_cancelled() {
                return Ok(());
            }
            let start = self.applied_seq() + 1;
            let config = OrderedConfig {
                filter_subject: self
                    .opts
                    .filter
                    .clone()
                    .unwrap_or_else(|| self.store.subjects.events_all()),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            };
            let messages = match self.store.events.create_consumer(config).await {
                Ok(c) => {
                    // Nothing matching the filter is left before the target.
                    if let Some(t) = until.filter(|_| c.cached_info().num_pending == 0) {
                        self.applied.send_replace(t.max(self.applied_seq()));
                        return Ok(());
                    }
                    c.messages().await
                }
                Err(e) => Err(async_nats::jetstream::consumer::StreamError::with_source(
                    async_nats::jetstream::consumer::StreamErrorKind::Other,
                    e,
                )),
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, stream.seq = start, "projection consumer not created, retrying");
                    if sleep_or_cancel(backoff, shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        if self.snapshot_due(self.last_snapshot.elapsed() >= self.opts.snapshot_every) {
                            self.snapshot_now().await;
                        }
                        continue;
                    }
                    next = messages.next() => next,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, stream.seq = self.applied_seq(), "projection consumer failed; recreating from last applied");
                        break;
                    }
                    None => break,
                };
                backoff = Duration::from_millis(100);
                let Ok(info) = msg.info() else {
                    break;
                };
                let (seq, pending) = (info.stream_sequence, info.pending);
                self.handle(seq, msg.subject.as_str(), &msg.payload, stats)?;
                if self.snapshot_due(self.since_snapshot >= self.opts.snapshot_every_commits) {
                    self.snapshot_now().await;
                }
                if let Some(t) = until.filter(|&t| seq >= t || pending == 0) {
                    self.applied.send_replace(t.max(seq));
                    return Ok(());
                }
            }
            if sleep_or_cancel(backoff, shutdown).await {
                return Ok(());
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn handle(
        &mut self,
        seq: u64,
        subject: &str,
        payload: &[u8],
        stats: &mut CatchUp,
    ) -> Result<(), ProjectionError> {
        let started = Instant::now();
        // What this process appended lately is taken as built, not decoded.
        let commit = match self.store.recent.get(seq, payload) {
            Some(events) => Ok(events),
            None => Commit::decode(payload).map(|c| Arc::from(c.events)),
        };
        match commit {
            Ok(events) => {
                let mut state = self.state.write().map_err(|_| ProjectionError::Halted {
                    stream_seq: seq,
                    reason: "state lock poisoned".to_owned(),
                })?;
                state.apply_commit(seq, &events);
                stats.events += events.len() as u64;
            }
            Err(e) => {
                let bad = BadEvent {
                    stream_seq: seq,
                    subject: subject.to_owned(),
                    reason: e.to_string(),
                    unknown_version: matches!(e, berth_schemas::DecodeError::UnknownVersion { .. }),
                };
                tracing::error!(stream.seq = seq, subject = %subject, error = %e, policy = ?self.opts.policy, "unusable event in the log");
                if let Some(hook) = &self.opts.on_bad_event {
                    hook(&bad);
                }
                if self.opts.policy == BadEventPolicy::Halt {
                    return Err(ProjectionError::Halted {
                        stream_seq: seq,
                        reason: bad.reason,
                    });
                }
            }
        }
        stats.commits += 1;
        self.since_snapshot += 1;
        self.folding += started.elapsed();
        self.applied.send_replace(seq);
        Ok(())
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

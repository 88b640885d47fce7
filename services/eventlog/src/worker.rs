//! Durable pull workers (STYLE.md §7): explicit acks,
//! `ack_wait` with progress acks while a job runs or waits, bounded
//! redelivery and then a dead-letter subject, bounded concurrency, one job
//! per key (e.g. per service) at a time, and one shutdown story: stop
//! fetching, let in-flight jobs finish within the grace period, nak the rest.
//! An in-order worker ([`WorkerConfig::in_order`]) runs its jobs one after
//! another as delivered and does not wait for each acknowledgement to be
//! confirmed: a stream followed in order at the rate of the handler, not
//! of round trips.
//!
//! A worker consumes one [`WorkSource`]: a queue on the work stream (the
//! default, [`WorkerConfig::new`]), or any other stream through a filter
//! subject ([`WorkerConfig::on_stream`]), e.g. the event log itself when a
//! fact is the job (the resolver follows `deploy_started` this way).
//!
//! A worker killed mid-job loses nothing: the job was not acked, so the
//! server redelivers it after `ack_wait`. Killed during the last allowed
//! delivery, a work-stream job reaches the dead-letter subject through the
//! server's max-deliveries advisory (see `dead_letter`). That advisory road
//! is work-stream only: a message of another stream exhausted that way is
//! not parked, and it is never deleted (the event log is not a work queue
//! and keeps every message); the consumer simply moves past it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::{EventStore, StoreError};

/// Most jobs an in-order worker asks for at once (the consumer's
/// `max_ack_pending` bounds what the server hands out).
const IN_ORDER_FETCH: usize = 64;

/// Header naming the key jobs are serialised on.
pub const KEY_HEADER: &str = "Berth-Work-Key";

/// How often a sweep for work whose delivery came to nothing
/// (dead-lettered after its retries, lost) looks for work waiting longer
/// than `stuck_after`: a third of it, 1 to 30 s. The resolver's and the
/// cron component's sweeps use it.
pub fn sweep_period(stuck_after: Duration) -> Duration {
    (stuck_after / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// One work item handed to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    /// Subject it was enqueued on.
    pub subject: String,
    /// The serialisation key (the `Berth-Work-Key` header, else the subject).
    pub key: String,
    /// The payload.
    pub payload: Bytes,
    /// Headers as enqueued.
    pub headers: Option<HeaderMap>,
    /// Which delivery this is (1 on the first).
    pub delivered: i64,
    /// Position in the consumed stream.
    pub stream_seq: u64,
    /// When the server stored it (`None` when the delivery carries no
    /// metadata).
    pub enqueued_at: Option<std::time::SystemTime>,
    /// Keeps the job ours a while longer (the worker already does so every
    /// `ack_wait / 3`; a handler may add its own before a long step).
    pub progress: Progress,
}

/// Progress acks for one delivery.
#[derive(Debug, Clone)]
pub struct Progress(Arc<async_nats::jetstream::Message>);

impl Progress {
    /// Resets the delivery's `ack_wait` on the server.
    pub async fn touch(&self) -> Result<(), StoreError> {
        self.0
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| StoreError::Request(format!("progress ack: {e}")))
    }
}

/// Where a worker's jobs come from.
#[derive(Debug, Clone)]
pub enum WorkSource {
    /// `subjects.work(queue)` on the work stream (work-queue retention: an
    /// acked or parked job leaves the stream). Exhausted jobs are also
    /// parked through the max-deliveries advisories.
    Queue(String),
    /// Messages of `stream` matching `filter_subject`, from `deliver_policy`
    /// on. The stream keeps them (it need not, and for the event log must
    /// not, be a work queue): dead-lettering copies the message to the
    /// dead-letter subject and terminates the delivery, nothing is deleted.
    /// No advisory road (see the module docs).
    Stream {
        /// Stream name.
        stream: String,
        /// Subject filter (wildcards allowed).
        filter_subject: String,
        /// Where a new consumer starts.
        deliver_policy: DeliverPolicy,
    },
}

/// Why a handler did not complete a job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkError {
    /// Try again later (redelivered until `max_deliver`, then dead-lettered).
    #[error("retryable: {0}")]
    Retry(String),
    /// Try again, not before `after` (instead of the worker's own delay).
    #[error("retryable: {1}")]
    RetryAfter(Duration, String),
    /// Retrying cannot help: dead-letter now.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Handles jobs of one queue.
pub trait WorkHandler: Send + Sync + 'static {
    /// Does the work. Must be idempotent: a job may be redelivered after a crash.
    fn handle(&self, job: Job) -> impl Future<Output = Result<(), WorkError>> + Send;
}

/// How a worker consumes its source.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// What is consumed.
    pub source: WorkSource,
    /// Durable consumer name (shared by every copy of the worker); also
    /// names its dead-letter subject.
    pub consumer: String,
    /// Consumer description shown by the server.
    pub description: Option<String>,
    /// How long a delivery may go unacknowledged before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before a job is dead-lettered; -1: unlimited (a job
    /// that keeps failing retryably is redelivered until it succeeds).
    pub max_deliver: i64,
    /// Jobs handled at once.
    pub concurrency: usize,
    /// Delay before a failed job is redelivered (times the delivery count).
    pub retry_delay: Duration,
    /// How long in-flight jobs may run after shutdown before they are
    /// nak'ed (`Duration::MAX`: wait for them however long they take).
    pub grace: Duration,
    /// Whether this worker parks its own exhausted jobs from the
    /// max-deliveries advisories (work-stream queues only). A node does not:
    /// that road reads work-stream messages by sequence, which would let it
    /// read any queue; the control plane drains a node's advisories for it
    /// ([`EventStore::drain_advisories`]).
    pub park_by_advisory: bool,
    /// Jobs one after another in delivery order, on the fetching task
    /// (`concurrency` is not used), each acknowledged without waiting for
    /// the server to confirm it: for a cheap handler that must see a
    /// stream in order, so a job costs no round trip of its own. A lost
    /// acknowledgement means a redelivery, which handlers take anyway.
    pub in_order: bool,
}

impl WorkerConfig {
    /// Defaults for `queue` on the work stream, with a consumer of the same name.
    pub fn new(queue: &str) -> Self {
        Self::with_source(WorkSource::Queue(queue.to_owned()), queue)
    }

    /// Defaults for consumer `consumer` on `stream`, filtered to
    /// `filter_subject`, starting at `deliver_policy`.
    pub fn on_stream(
        consumer: &str,
        stream: &str,
        filter_subject: &str,
        deliver_policy: DeliverPolicy,
    ) -> Self {
        let source = WorkSource::Stream {
            stream: stream.to_owned(),
            filter_subject: filter_subject.to_owned(),
            deliver_policy,
        };
        Self::with_source(source, consumer)
    }

    fn with_source(source: WorkSource, consumer: &str) -> Self {
        Self {
            source,
            consumer: consumer.to_owned(),
            description: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            concurrency: 8,
            retry_delay: Duration::from_secs(1),
            // Well inside `berth up`'s own grace (10 s in tests, 30 s by
            // default): a worker that used all of an equal grace outlived
            // the process's by a hair and was aborted. A job still running
            // then is nak'ed and redelivered, which is safe.
            grace: Duration::from_secs(5),
            park_by_advisory: true,
            in_order: false,
        }
    }

    /// Jobs that may run at once (one, in order).
    fn jobs_at_once(&self) -> usize {
        if self.in_order {
            1
        } else {
            self.concurrency.max(1)
        }
    }

    /// Deliveries the server may hand out before any is acknowledged.
    fn max_ack_pending(&self) -> i64 {
        if self.in_order {
            IN_ORDER_FETCH as i64
        } else {
            self.jobs_at_once() as i64 * 4
        }
    }
}

impl EventStore {
    /// Parks the exhausted jobs of another process's work-stream consumer
    /// (one that runs with `park_by_advisory: false`, like a node's) until
    /// `shutdown`: the same road that worker would take itself.
    pub async fn drain_advisories(
        &self,
        consumer: &str,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        crate::dead_letter::run_advisories(self.clone(), consumer.to_owned(), shutdown).await
    }

    /// Puts a job on `queue`, serialised with other jobs of `key`;
    /// `idempotency_key` dedupes repeated enqueues. Returns the stream sequence.
    pub async fn enqueue(
        &self,
        queue: &str,
        key: &str,
        payload: Bytes,
        idempotency_key: &str,
    ) -> Result<u64, StoreError> {
        let msg = PublishMessage::build()
            .payload(payload)
            .message_id(idempotency_key)
            .header(KEY_HEADER, key);
        let ack = self
            .js
            .send_publish(self.subjects.work(queue), msg)
            .await
            .map_err(|e| StoreError::Request(e.to_string()))?
            .await
            .map_err(|e| StoreError::Request(e.to_string()))?;
        Ok(ack.sequence)
    }

    /// Runs a worker until `shutdown`; returns once in-flight jobs are done
    /// or nak'ed. Same as [`EventStore::worker`] then [`Worker::run`].
    pub async fn run_worker<H: WorkHandler>(
        &self,
        cfg: WorkerConfig,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        self.worker(cfg).await?.run(handler, shutdown).await
    }

    /// [`EventStore::worker`] at a component's start: waits while the log
    /// cannot answer ([`crate::start`]); `None` when `shutdown` comes first.
    pub async fn worker_at_start(
        &self,
        cfg: WorkerConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<Worker>, StoreError> {
        let what = format!("consumer {} not created", cfg.consumer);
        crate::start::until_available(shutdown, &what, || self.worker(cfg.clone())).await
    }

    /// Creates (or finds) the worker's durable consumer without consuming
    /// yet, so a caller can report ready once the consumer exists.
    pub async fn worker(&self, cfg: WorkerConfig) -> Result<Worker, StoreError> {
        let (stream, filter_subject, deliver_policy) = match &cfg.source {
            WorkSource::Queue(queue) => (
                self.subjects.work_stream(),
                self.subjects.work(queue),
                DeliverPolicy::All,
            ),
            WorkSource::Stream {
                stream,
                filter_subject,
                deliver_policy,
            } => (stream.clone(), filter_subject.clone(), *deliver_policy),
        };
        let consumer = self
            .js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(cfg.consumer.clone()),
                    description: cfg.description.clone(),
                    filter_subject,
                    deliver_policy,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: cfg.ack_wait,
                    max_deliver: cfg.max_deliver,
                    max_ack_pending: cfg.max_ack_pending(),
                    ..Default::default()
                },
                stream,
            )
            .await
            .map_err(|e| {
                StoreError::provision(
                    &format!("consumer {}", cfg.consumer),
                    crate::error::consumer_request_transient(&e),
                    &e,
                )
            })?;
        Ok(Worker {
            store: self.clone(),
            cfg,
            consumer,
        })
    }
}

/// A worker whose consumer exists; [`Worker::run`] consumes.
#[derive(Debug)]
pub struct Worker {
    store: EventStore,
    cfg: WorkerConfig,
    consumer: Consumer<pull::Config>,
}

impl Worker {
    /// Runs until `shutdown`; returns once in-flight jobs are done or nak'ed.
    pub async fn run<H: WorkHandler>(
        self,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let Worker {
            store,
            cfg,
            consumer,
        } = self;
        // Jobs exhausted without a verdict (worker lost on the last
        // delivery) reach the dead-letter subject through their advisories.
        // Aborted with the worker: a killed worker takes it along. Work
        // stream only: the advisory stream captures nothing else.
        let advisories = match cfg.source {
            WorkSource::Queue(_) if cfg.park_by_advisory => Some(AbortOnDropHandle::new(
                tokio::spawn(crate::dead_letter::run_advisories(
                    store.clone(),
                    cfg.consumer.clone(),
                    shutdown.clone(),
                )),
            )),
            WorkSource::Queue(_) | WorkSource::Stream { .. } => None,
        };
        let in_order = cfg.in_order;
        let permits = Arc::new(Semaphore::new(cfg.jobs_at_once()));
        let keys = KeyLocks::default();
        let hard_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let cfg = Arc::new(cfg);
        if in_order {
            // Jobs run on this task: the grace period is kept by a timer.
            let (shutdown, hard_stop, grace) = (shutdown.clone(), hard_stop.clone(), cfg.grace);
            tasks.spawn(async move {
                tokio::select! {
                    _ = hard_stop.cancelled() => {}
                    _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => hard_stop.cancel(),
                }
            });
        }
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            // Fetch only what we can start now, so nothing waits unprocessed
            // in our buffer while its ack_wait runs out.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let free = if in_order {
                IN_ORDER_FETCH
            } else {
                permits.available_permits() + 1
            };
            let batch = consumer
                .batch()
                .max_messages(free)
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    drop(first);
                    tracing::warn!(consumer = %cfg.consumer, error = %e, "fetch failed, retrying");
                    tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut first = Some(first);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    n = batch.next() => n,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %cfg.consumer, error = %e, "fetch interrupted");
                        break;
                    }
                    None => break,
                };
                backoff = Duration::from_millis(100);
                if in_order {
                    run_job(&store, &*handler, &cfg, &keys, msg, &hard_stop).await;
                    if hard_stop.is_cancelled() {
                        break;
                    }
                    continue;
                }
                let permit = match first.take() {
                    Some(p) => p,
                    None => match Arc::clone(&permits).acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let (handler, cfg, keys, hard_stop, store) = (
                    Arc::clone(&handler),
                    Arc::clone(&cfg),
                    keys.clone(),
                    hard_stop.clone(),
                    store.clone(),
                );
                tasks.spawn(async move {
                    run_job(&store, &*handler, &cfg, &keys, msg, &hard_stop).await;
                    drop(permit);
                });
            }
        }
        // The in-order grace timer has nothing left to guard.
        if in_order {
            hard_stop.cancel();
        }
        // Shutdown: no more fetching; give in-flight jobs the grace period.
        let drained = tokio::time::timeout(cfg.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
        match advisories {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(StoreError::Request(format!("advisory task: {e}"))),
            },
        }
    }
}

/// One lock per key; entries go away when nobody holds or waits for them.
#[derive(Debug, Clone, Default)]
struct KeyLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl KeyLocks {
    fn lock_for(&self, key: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut map = self.0.lock().ok()?;
        Some(Arc::clone(map.entry(key.to_owned()).or_default()))
    }

    fn release(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            if map.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(key);
            }
        }
    }
}

async fn run_job<H: WorkHandler>(
    store: &EventStore,
    handler: &H,
    cfg: &WorkerConfig,
    keys: &KeyLocks,
    msg: async_nats::jetstream::Message,
    hard_stop: &CancellationToken,
) {
    let (stream_seq, delivered, enqueued_at) = match msg.info() {
        Ok(i) => (
            i.stream_sequence,
            i.delivered,
            Some(std::time::SystemTime::from(i.published)),
        ),
        Err(_) => (0, 1, None),
    };
    let key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(KEY_HEADER))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| msg.subject.to_string());
    let msg = Arc::new(msg);
    let job = Job {
        subject: msg.subject.to_string(),
        key: key.clone(),
        payload: msg.payload.clone(),
        headers: msg.headers.clone(),
        delivered,
        stream_seq,
        enqueued_at,
        progress: Progress(Arc::clone(&msg)),
    };
    let span = tracing::info_span!("job", consumer = %cfg.consumer, job.key = %key, stream.seq = stream_seq, delivered);

    // Progress acks keep the job ours while it waits for its key and runs.
    let progress_every = (cfg.ack_wait / 3).max(Duration::from_millis(100));
    let work = async {
        // In order, one job runs at a time: no key to wait for.
        let lock = if cfg.in_order {
            None
        } else {
            keys.lock_for(&key)
        };
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let outcome = handler.handle(job).await;
        drop(_guard);
        if lock.is_some() {
            drop(lock);
            keys.release(&key);
        }
        outcome
    };
    tokio::pin!(work);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    let outcome = loop {
        tokio::select! {
            out = &mut work => break Some(out),
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(parent: &span, error = %e, "progress ack failed");
                }
            }
            _ = hard_stop.cancelled() => break None,
        }
    };
    match outcome {
        Some(Ok(())) if cfg.in_order => {
            // Sent behind this job's own publications on the same
            // connection; not waited for (see `WorkerConfig::in_order`).
            if let Err(e) = msg.ack().await {
                tracing::warn!(parent: &span, error = %e, "ack not sent; the job may run again");
            }
        }
        Some(Ok(())) => {
            // Double ack: the job is done only once the server confirms it.
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(parent: &span, error = %e, "ack not confirmed; the job may run again");
            }
        }
        Some(Err(err)) => {
            // A `max_deliver` below 1 (NATS's -1: unlimited) never
            // dead-letters a retryable failure.
            let last = matches!(err, WorkError::Fatal(_))
                || (cfg.max_deliver > 0 && delivered >= cfg.max_deliver);
            if last {
                dead_letter(store, cfg, &msg, stream_seq, delivered, &err, &span).await;
            } else {
                tracing::warn!(parent: &span, error = %err, "job failed, will be redelivered");
                let delay = match &err {
                    WorkError::RetryAfter(after, _) => *after,
                    _ => cfg.retry_delay * u32::try_from(delivered.max(1)).unwrap_or(1),
                };
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
        None => {
            tracing::info!(parent: &span, "shutdown grace over: job handed back");
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }
}

async fn dead_letter(
    store: &EventStore,
    cfg: &WorkerConfig,
    msg: &async_nats::jetstream::Message,
    stream_seq: u64,
    delivered: i64,
    err: &WorkError,
    span: &tracing::Span,
) {
    let dead = crate::dead_letter::DeadLetter {
        consumer: &cfg.consumer,
        subject: msg.subject.as_str(),
        stream_seq,
        deliveries: delivered,
        reason: &err.to_string(),
    };
    // A work item's own headers travel with it (its key). A message of
    // another stream goes without: the event log's carry publish
    // expectations (`Nats-Expected-Last-Subject-Sequence`) that would make
    // the dead-letter publish fail.
    let headers = match cfg.source {
        WorkSource::Queue(_) => msg.headers.clone(),
        WorkSource::Stream { .. } => None,
    };
    match crate::dead_letter::publish(store, &dead, headers, msg.payload.clone()).await {
        Ok(()) => {
            tracing::error!(parent: span, error = %err, "job dead-lettered");
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                tracing::warn!(parent: span, error = %e, "term failed");
            }
        }
        Err(e) => {
            // Never drop a job we could not park: hand it back. On the last
            // delivery the server then announces max deliveries and the
            // advisory road parks it.
            tracing::error!(parent: span, error = %e, "dead-letter publish failed; nak");
            let _ = msg.ack_with(AckKind::Nak(Some(cfg.retry_delay))).await;
        }
    }
}

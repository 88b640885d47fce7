//! Work-queue consumers: bounded redelivery then the dead-letter subject, a
//! worker killed mid-job loses nothing, one job per key at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_eventlog::worker::{Job, WorkError, WorkHandler, WorkerConfig};
use berth_eventlog::{EventStore, StoreConfig, StoreError};
use berth_tests::eventlog::{open_store, work_stream_drains};
use berth_tests::{init_tracing, NatsServer, NatsVersion};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    /// payload → deliveries seen (the `delivered` of each call).
    calls: Mutex<HashMap<String, Vec<i64>>>,
    running: Mutex<HashMap<String, usize>>,
    overlap_same_key: Mutex<bool>,
    max_running: Mutex<usize>,
    started: Notify,
    /// Payload and delivery on which the handler never finishes (until
    /// the worker is killed).
    hang_on: Option<(String, i64)>,
}

impl WorkHandler for Recorder {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let body = String::from_utf8_lossy(&job.payload).to_string();
        self.calls
            .lock()
            .unwrap()
            .entry(body.clone())
            .or_default()
            .push(job.delivered);
        {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(job.key.clone()).or_default();
            *n += 1;
            if *n > 1 {
                *self.overlap_same_key.lock().unwrap() = true;
            }
            let total: usize = running.values().sum();
            let mut max = self.max_running.lock().unwrap();
            *max = (*max).max(total);
        }
        self.started.notify_one();
        if self
            .hang_on
            .as_ref()
            .is_some_and(|(b, d)| *b == body && *d == job.delivered)
        {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        *self.running.lock().unwrap().get_mut(&job.key).unwrap() -= 1;
        if body.starts_with("fail") {
            return Err(WorkError::Retry(format!("{body} always fails")));
        }
        Ok(())
    }
}

fn config() -> WorkerConfig {
    WorkerConfig {
        ack_wait: Duration::from_secs(1),
        max_deliver: 3,
        retry_delay: Duration::from_millis(50),
        concurrency: 4,
        grace: Duration::from_secs(2),
        ..WorkerConfig::new("resolve")
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A worker running in its own task.
struct Running {
    task: JoinHandle<Result<(), StoreError>>,
    shutdown: CancellationToken,
}

fn spawn_worker<H: WorkHandler>(
    store: &EventStore,
    cfg: WorkerConfig,
    handler: &Arc<H>,
) -> Running {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (store, handler, shutdown) = (store.clone(), handler.clone(), shutdown.clone());
        async move { store.run_worker(cfg, handler, shutdown).await }
    });
    Running { task, shutdown }
}

impl Running {
    /// Kill: abort the worker with whatever job is in its hands, no ack, no nak.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Graceful shutdown, which must end the worker cleanly and promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Polls the dead-letter stream (up to 20 s) for the last message on `subject`.
async fn wait_dead_letter(
    dlq: &async_nats::jetstream::stream::Stream,
    subject: &str,
    what: &str,
) -> async_nats::jetstream::message::StreamMessage {
    for _ in 0..200 {
        if let Ok(m) = dlq.get_last_raw_message_by_subject(subject).await {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: job never dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_is_redelivered_then_dead_lettered() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let cfg = config();
        let mut dlq = client
            .subscribe(store.subjects().dead_letter(&cfg.consumer))
            .await
            .unwrap();

        store
            .enqueue("resolve", "srv-a", "fail-1".into(), "j-fail")
            .await
            .unwrap();
        for i in 0..6 {
            // Two keys: jobs of one key run one at a time, the keys in parallel.
            let key = if i % 2 == 0 { "srv-a" } else { "srv-b" };
            store
                .enqueue("resolve", key, format!("ok-{i}").into(), &format!("j-{i}"))
                .await
                .unwrap();
        }
        let handler = Arc::new(Recorder::default());
        let worker = spawn_worker(&store, cfg, &handler);

        let dead = tokio::time::timeout(Duration::from_secs(20), dlq.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&dead.payload[..], b"fail-1");
        let headers = dead.headers.clone().unwrap();
        assert_eq!(headers.get("Berth-Dead-Deliveries").unwrap().as_str(), "3");
        assert!(headers
            .get("Berth-Dead-Reason")
            .unwrap()
            .as_str()
            .contains("always fails"));
        assert_eq!(
            handler.calls.lock().unwrap()["fail-1"],
            vec![1, 2, 3],
            "{version:?}"
        );
        wait_until("ok jobs", || {
            let calls = handler.calls.lock().unwrap();
            (0..6).all(|i| calls.contains_key(&format!("ok-{i}")))
        })
        .await;
        // Not delivered a fourth time after dead-lettering.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let calls = handler.calls.lock().unwrap().clone();
        assert_eq!(calls["fail-1"].len(), 3, "{version:?}");
        for i in 0..6 {
            assert_eq!(
                calls[&format!("ok-{i}")],
                vec![1],
                "{version:?}: ok-{i} ran more than once"
            );
        }
        assert!(
            !*handler.overlap_same_key.lock().unwrap(),
            "{version:?}: two jobs of one key ran at once"
        );
        assert!(
            *handler.max_running.lock().unwrap() >= 2,
            "{version:?}: keys never ran in parallel"
        );
        worker.stop().await;
    }
}

/// `max_deliver` -1 is unlimited, as NATS reads it: a job that keeps
/// failing retryably is redelivered, never dead-lettered (the notifier's
/// integration stream relies on it; a rule `delivered >= max_deliver`
/// dead-lettered it at the first failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_deliveries_never_dead_letter() {
    init_tracing();
    let server = NatsServer::start(NatsVersion::Legacy).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    let cfg = WorkerConfig {
        max_deliver: -1,
        ..config()
    };
    let mut dlq = client
        .subscribe(store.subjects().dead_letter(&cfg.consumer))
        .await
        .unwrap();
    store
        .enqueue("resolve", "srv-a", "fail-forever".into(), "j-forever")
        .await
        .unwrap();
    let handler = Arc::new(Recorder::default());
    let worker = spawn_worker(&store, cfg, &handler);
    wait_until("six deliveries", || {
        handler
            .calls
            .lock()
            .unwrap()
            .get("fail-forever")
            .is_some_and(|d| d.len() >= 6)
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), dlq.next())
            .await
            .is_err(),
        "dead-lettered"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_job_loses_nothing() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        store
            .enqueue("resolve", "srv-a", "crash-me".into(), "j-crash")
            .await
            .unwrap();

        let first = Arc::new(Recorder {
            hang_on: Some(("crash-me".to_owned(), 1)),
            ..Recorder::default()
        });
        let killed = spawn_worker(&store, config(), &first);
        tokio::time::timeout(Duration::from_secs(10), first.started.notified())
            .await
            .unwrap();
        // Kill: abort the worker with the job in its hands, no ack, no nak.
        killed.kill().await;

        let second = Arc::new(Recorder::default());
        let worker = spawn_worker(&store, config(), &second);
        wait_until("redelivery", || {
            second.calls.lock().unwrap().contains_key("crash-me")
        })
        .await;
        assert_eq!(
            second.calls.lock().unwrap()["crash-me"],
            vec![2],
            "{version:?}"
        );
        // Acked on a work-queue stream: the job is gone, done exactly once more.
        let empty = work_stream_drains(&store).await.unwrap();
        assert!(
            empty,
            "{version:?}: job still in the work stream after its ack"
        );
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_on_the_last_delivery_still_dead_letters() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let cfg = config();
        let work_seq = store
            .enqueue("resolve", "srv-a", "fail-then-hang".into(), "j-last")
            .await
            .unwrap();

        // Fails on deliveries 1 and 2, hangs on the last (3rd) one.
        let first = Arc::new(Recorder {
            hang_on: Some(("fail-then-hang".to_owned(), cfg.max_deliver)),
            ..Recorder::default()
        });
        let killed = spawn_worker(&store, cfg.clone(), &first);
        wait_until("the last delivery", || {
            first
                .calls
                .lock()
                .unwrap()
                .get("fail-then-hang")
                .is_some_and(|d| d.contains(&cfg.max_deliver))
        })
        .await;
        // Kill during the last delivery: no ack, no nak, no dead letter.
        killed.kill().await;
        // Let ack_wait run out while no worker runs: the server gives up on
        // the job now, and its advisory must not be lost for lack of a
        // listener.
        tokio::time::sleep(cfg.ack_wait * 3).await;
        let dlq = store
            .jetstream()
            .get_stream(store.subjects().dead_letter_stream())
            .await
            .unwrap();
        assert!(
            dlq.get_last_raw_message_by_subject(&store.subjects().dead_letter(&cfg.consumer))
                .await
                .is_err(),
            "{version:?}: dead-lettered before any worker ran again"
        );

        let second = Arc::new(Recorder::default());
        let worker = spawn_worker(&store, cfg.clone(), &second);
        let dead = wait_dead_letter(
            &dlq,
            &store.subjects().dead_letter(&cfg.consumer),
            &format!("{version:?}"),
        )
        .await;
        assert_eq!(&dead.payload[..], b"fail-then-hang", "{version:?}");
        assert_eq!(
            dead.headers.get("Berth-Dead-Stream-Seq").unwrap().as_str(),
            work_seq.to_string(),
            "{version:?}"
        );
        assert_eq!(
            dead.headers.get("Berth-Dead-Deliveries").unwrap().as_str(),
            cfg.max_deliver.to_string(),
            "{version:?}"
        );
        assert_eq!(
            dead.headers.get("Berth-Work-Key").unwrap().as_str(),
            "srv-a",
            "{version:?}: the job's own headers travel with it"
        );
        // Parked once, gone from the work stream, never run a fourth time.
        let empty = work_stream_drains(&store).await.unwrap();
        assert!(empty, "{version:?}: exhausted job left in the work stream");
        tokio::time::sleep(cfg.ack_wait * 2).await;
        let mut dlq = dlq;
        assert_eq!(dlq.info().await.unwrap().state.messages, 1, "{version:?}");
        assert!(
            second.calls.lock().unwrap().is_empty(),
            "{version:?}: exhausted job delivered again"
        );
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_publish_failing_on_the_last_delivery_is_retried() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let cfg = config();
        let dead_subject = store.subjects().dead_letter(&cfg.consumer);
        let work_seq = store
            .enqueue("resolve", "srv-a", "fail-unparkable".into(), "j-unparkable")
            .await
            .unwrap();
        // No dead-letter stream: parking fails on the last delivery.
        store
            .jetstream()
            .delete_stream(store.subjects().dead_letter_stream())
            .await
            .unwrap();

        let handler = Arc::new(Recorder::default());
        let worker = spawn_worker(&store, cfg.clone(), &handler);
        wait_until("the last delivery", || {
            handler
                .calls
                .lock()
                .unwrap()
                .get("fail-unparkable")
                .is_some_and(|d| d.contains(&cfg.max_deliver))
        })
        .await;
        tokio::time::sleep(cfg.ack_wait * 3).await;
        // The server is done with it, yet the job is still retrievable.
        let work = store
            .jetstream()
            .get_stream(store.subjects().work_stream())
            .await
            .unwrap();
        let kept = work.get_raw_message(work_seq).await.unwrap();
        assert_eq!(&kept.payload[..], b"fail-unparkable", "{version:?}");

        // The dead-letter stream comes back (any binary's start-up
        // provisions it): the job gets parked without another delivery.
        let again = EventStore::open(
            client.clone(),
            store.subjects().clone(),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let dlq = again
            .jetstream()
            .get_stream(again.subjects().dead_letter_stream())
            .await
            .unwrap();
        let dead = wait_dead_letter(&dlq, &dead_subject, &format!("{version:?}")).await;
        assert_eq!(&dead.payload[..], b"fail-unparkable", "{version:?}");
        assert_eq!(
            dead.headers.get("Berth-Dead-Stream-Seq").unwrap().as_str(),
            work_seq.to_string(),
            "{version:?}"
        );
        assert_eq!(
            handler.calls.lock().unwrap()["fail-unparkable"],
            vec![1, 2, 3],
            "{version:?}: delivered again after its last delivery"
        );
        let empty = work_stream_drains(&store).await.unwrap();
        assert!(empty, "{version:?}: parked job left in the work stream");
        worker.stop().await;
    }
}

/// Records the payloads it is handed, in order; fails `fail` once. Jobs
/// of key `k0` take a moment, so a worker running jobs side by side would
/// finish later ones first.
#[derive(Default)]
struct Sequence {
    seen: Mutex<Vec<String>>,
    fail: Option<String>,
    failed: Mutex<bool>,
}

impl WorkHandler for Sequence {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let body = String::from_utf8_lossy(&job.payload).to_string();
        if self.fail.as_deref() == Some(body.as_str()) && !*self.failed.lock().unwrap() {
            *self.failed.lock().unwrap() = true;
            return Err(WorkError::Retry("once".into()));
        }
        if job.key == "k0" {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        self.seen.lock().unwrap().push(body);
        Ok(())
    }
}

/// An in-order worker hands jobs over one after another in the stream's
/// order, each once; one whose consumer an earlier version made with other
/// limits brings it to its own; a failed job comes back as with any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_order_worker_runs_jobs_in_order_each_once() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        // Jobs side by side, were it not in order.
        let plain = WorkerConfig {
            concurrency: 8,
            retry_delay: Duration::from_millis(50),
            ..WorkerConfig::new("ordered")
        };
        // The consumer as a worker that is not in order made it.
        store.worker(plain.clone()).await.unwrap();
        let n = 300;
        for i in 0..n {
            store
                .enqueue(
                    "ordered",
                    &format!("k{}", i % 7),
                    format!("{i}").into(),
                    &format!("o-{i}"),
                )
                .await
                .unwrap();
        }
        let handler = Arc::new(Sequence::default());
        let cfg = WorkerConfig {
            in_order: true,
            ..plain.clone()
        };
        let worker = spawn_worker(&store, cfg.clone(), &handler);
        wait_until("every job", || handler.seen.lock().unwrap().len() >= n).await;
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(*handler.seen.lock().unwrap(), want, "{version:?}");
        let info = store
            .jetstream()
            .get_stream(store.subjects().work_stream())
            .await
            .unwrap()
            .consumer_info("ordered")
            .await
            .unwrap()
            .clone();
        assert!(
            info.config.max_ack_pending > 8 * 4,
            "{version:?}: the consumer keeps the earlier limit: {}",
            info.config.max_ack_pending
        );
        // A job that fails is delivered again; the others go on.
        let failing = Arc::new(Sequence {
            fail: Some("again-0".into()),
            ..Sequence::default()
        });
        worker.stop().await;
        for i in 0..3 {
            store
                .enqueue(
                    "ordered",
                    "k",
                    format!("again-{i}").into(),
                    &format!("a-{i}"),
                )
                .await
                .unwrap();
        }
        let worker = spawn_worker(&store, cfg, &failing);
        wait_until("the failed job again", || {
            failing.seen.lock().unwrap().len() >= 3
        })
        .await;
        let mut seen = failing.seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["again-0", "again-1", "again-2"], "{version:?}");
        worker.stop().await;
        // Nothing is left: every job was acknowledged.
        assert!(work_stream_drains(&store).await.unwrap(), "{version:?}");
    }
}

//! Projections: a rebuild from scratch equals the live one, with and without
//! a snapshot; unusable messages are reported with their stream sequence and
//! handled by policy, never a panic; commits appended in the process reach
//! its read models as built.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_eventlog::projection::{
    BadEvent, BadEventPolicy, Projection, ProjectionError, ProjectionOptions, ProjectionRunner,
};
use berth_eventlog::{StoreError, Version};
use berth_schemas::ids::EventId;
use berth_schemas::{Actor, Commit, Envelope};
use berth_tests::eventlog::{new_aggregate, open_store, step, store_elsewhere};
use berth_tests::{init_tracing, NatsServer, NatsVersion};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Per aggregate: events seen, last counter value, and the commit positions.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counters {
    by_aggregate: BTreeMap<String, (u64, u32)>,
    last_seq: u64,
    events: u64,
}

impl Projection for Counters {
    type Snapshot = Counters;
    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        let entry = self
            .by_aggregate
            .entry(env.aggregate.to_string())
            .or_default();
        entry.0 += 1;
        entry.1 = berth_tests::eventlog::count(entry.1, env);
        self.last_seq = stream_seq;
        self.events += 1;
    }
    fn snapshot(&self) -> Counters {
        self.clone()
    }
    fn restore(&mut self, snapshot: Counters) {
        *self = snapshot;
    }
}

async fn write_events(
    store: &berth_eventlog::EventStore,
    aggregates: usize,
    commits: usize,
) -> u64 {
    let aggs: Vec<_> = (0..aggregates).map(|_| new_aggregate()).collect();
    let mut versions = vec![Version::NEW; aggregates];
    let mut last = 0;
    for c in 0..commits {
        let a = c % aggregates;
        let n = versions[a].events as u32;
        // Every third commit carries two events: commits, not events, are the unit.
        let events = if c % 3 == 0 {
            vec![step(n, "x"), step(n + 1, "y")]
        } else {
            vec![step(n, "x")]
        };
        let done = store
            .append(&aggs[a], versions[a], events, &format!("{}-{c}", aggs[a]))
            .await
            .unwrap();
        versions[a] = done.version;
        last = done.version.stream_seq;
    }
    last
}

fn opts(key: Option<&str>) -> ProjectionOptions {
    ProjectionOptions {
        snapshot_key: key.map(str::to_owned),
        snapshot_every_commits: 100,
        snapshot_every: Duration::from_millis(300),
        ..ProjectionOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_projection_equals_live_with_and_without_snapshot() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        write_events(&store, 20, 300).await;

        // Live: catches up, then follows what is appended while it runs.
        let live = ProjectionRunner::new(&store, Counters::default(), opts(Some("live")));
        let (state, mut applied) = (live.state(), live.applied());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(live.run(shutdown.clone()));
        let last = write_events(&store, 20, 300).await;
        tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|s| *s >= last))
            .await
            .unwrap()
            .unwrap();
        let live_state = state.read().unwrap().clone();
        assert_eq!(live_state.last_seq, last);
        assert_eq!(live_state.events, 800, "{version:?}");
        shutdown.cancel();
        task.await.unwrap().unwrap();

        // From scratch, no snapshot.
        let mut scratch = ProjectionRunner::new(&store, Counters::default(), opts(None));
        let stats = scratch.catch_up().await.unwrap();
        assert_eq!((stats.restored_seq, stats.commits), (0, 600));
        assert_eq!(
            *scratch.state().read().unwrap(),
            live_state,
            "{version:?}: rebuild differs"
        );

        // Through a store of its own (as in another process), which
        // appended none of it: every commit decoded from its message, the
        // same state as from the envelopes this store kept as it appended.
        let elsewhere = store_elsewhere(&server, &store).await.unwrap();
        let mut decoded = ProjectionRunner::new(&elsewhere, Counters::default(), opts(None));
        decoded.catch_up().await.unwrap();
        assert_eq!(
            *decoded.state().read().unwrap(),
            live_state,
            "{version:?}: decoded rebuild differs"
        );

        // From the live runner's snapshot: only the tail is read.
        let mut snap = ProjectionRunner::new(&store, Counters::default(), opts(Some("live")));
        let stats = snap.catch_up().await.unwrap();
        assert!(
            stats.restored_seq > 0,
            "{version:?}: no snapshot was written"
        );
        assert!(
            stats.commits < 600,
            "{version:?}: snapshot restore re-read everything"
        );
        assert_eq!(
            *snap.state().read().unwrap(),
            live_state,
            "{version:?}: snapshot rebuild differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_events_are_reported_and_handled_by_policy() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        write_events(&store, 3, 10).await;

        // Garbage bytes on an aggregate subject.
        let garbage_agg = new_aggregate();
        let js = store.jetstream();
        let garbage = js
            .publish(
                store.subjects().aggregate(&garbage_agg),
                "\u{1}not msgpack".into(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
        // A well-formed commit from a newer berth (event version 99).
        let newer_agg = new_aggregate();
        let env = Envelope {
            id: EventId::generate(),
            version: 99,
            aggregate: newer_agg.clone(),
            sequence: 1,
            time: chrono::Utc::now(),
            actor: Actor::system("future"),
            correlation_id: None,
            causation_id: None,
            event: step(0, "z").event,
        };
        let bytes = Commit { events: vec![env] }.encode().unwrap();
        let newer = js
            .publish(store.subjects().aggregate(&newer_agg), bytes.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
        write_events(&store, 3, 10).await;

        // Skip: both reported with their sequence, everything else applied.
        let seen: Arc<Mutex<Vec<BadEvent>>> = Arc::default();
        let hook_seen = seen.clone();
        let mut skip = ProjectionRunner::new(
            &store,
            Counters::default(),
            ProjectionOptions {
                on_bad_event: Some(Arc::new(move |b: &BadEvent| {
                    hook_seen.lock().unwrap().push(b.clone())
                })),
                ..opts(None)
            },
        );
        skip.catch_up().await.unwrap();
        let bad = seen.lock().unwrap().clone();
        assert_eq!(
            bad.iter().map(|b| b.stream_seq).collect::<Vec<_>>(),
            vec![garbage, newer],
            "{version:?}"
        );
        assert!(!bad[0].unknown_version && bad[1].unknown_version);
        assert_eq!(skip.state().read().unwrap().events, 2 * 14, "{version:?}");

        // Halt: stops at the first one, with its sequence.
        let mut halt = ProjectionRunner::new(
            &store,
            Counters::default(),
            ProjectionOptions {
                policy: BadEventPolicy::Halt,
                ..opts(None)
            },
        );
        match halt.catch_up().await {
            Err(ProjectionError::Halted { stream_seq, .. }) => assert_eq!(stream_seq, garbage),
            other => panic!("{version:?}: expected a halt, got {other:?}"),
        }
        // Loading the broken aggregate is a typed error naming the sequence.
        match store.load(&garbage_agg).await {
            Err(StoreError::Decode { stream_seq, .. }) => assert_eq!(stream_seq, garbage),
            other => panic!("{version:?}: {other:?}"),
        }
    }
}

/// A read model whose snapshot is several times what one message holds.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Padded {
    blobs: Vec<String>,
    last_seq: u64,
}

impl Projection for Padded {
    type Snapshot = Padded;
    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        // 8 KB per event, different for every event.
        self.blobs.push(env.id.to_string().repeat(8 * 1024 / 24));
        self.last_seq = stream_seq;
    }
    fn snapshot(&self) -> Padded {
        self.clone()
    }
    fn restore(&mut self, snapshot: Padded) {
        *self = snapshot;
    }
}

/// Options snapshotting at `key` only when asked (`snapshot_now`).
fn on_demand(key: &str) -> ProjectionOptions {
    ProjectionOptions {
        snapshot_every_commits: u64::MAX,
        snapshot_every: Duration::from_secs(3600),
        ..opts(Some(key))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_bigger_than_a_message_is_chunked_and_restored() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let opts = || on_demand("big");
        for round in 0..2 {
            // 300 commits, 400 events: ~3.3 MB of state, then ~6.6 MB.
            let last = write_events(&store, 5, 300).await;
            let mut first = ProjectionRunner::new(&store, Padded::default(), opts());
            first.catch_up().await.unwrap();
            let state = first.state().read().unwrap().clone();
            assert_eq!(state.blobs.len(), 400 * (round + 1), "{version:?}");
            assert!(
                state.blobs.iter().map(String::len).sum::<usize>()
                    > 2 * client.server_info().max_payload,
                "{version:?}: the snapshot must not fit in one message"
            );
            first.snapshot_now().await;

            let mut restarted = ProjectionRunner::new(&store, Padded::default(), opts());
            let stats = restarted.catch_up().await.unwrap();
            assert_eq!(
                (stats.restored_seq, stats.commits),
                (last, 0),
                "{version:?} round {round}: not restored from the chunked snapshot"
            );
            assert_eq!(
                *restarted.state().read().unwrap(),
                state,
                "{version:?} round {round}: restored state differs"
            );
        }
    }
}

/// A chunked snapshot's manifest as the bucket holds it: every field a
/// number (the marker, generation, slot, chunks and length).
type Manifest = BTreeMap<String, u64>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_snapshot_that_is_not_whole_is_refused() {
    init_tracing();
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    let opts = || on_demand("big");
    let last = write_events(&store, 5, 300).await;
    let mut first = ProjectionRunner::new(&store, Padded::default(), opts());
    first.catch_up().await.unwrap();
    let state = first.state().read().unwrap().clone();
    first.snapshot_now().await;

    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value(store.subjects().snapshot_bucket())
        .await
        .unwrap();
    let head = kv.get("big").await.unwrap().unwrap();
    let m: Manifest = rmp_serde::from_slice(&head).unwrap();
    let (generation, chunks, len) = (m["generation"], m["chunks"], m["len"]);
    assert!(chunks >= 3, "{m:?}: the snapshot must span chunks");
    let chunk = |i: u64| format!("big.s{}.c{i}", m["slot"]);
    let with = |chunks: u64, len: u64| {
        let mut changed = m.clone();
        changed.insert("chunks".to_owned(), chunks);
        changed.insert("len".to_owned(), len);
        changed
    };
    let put_manifest = |m: Manifest| {
        let kv = kv.clone();
        async move {
            kv.put("big", rmp_serde::to_vec_named(&m).unwrap().into())
                .await
                .unwrap();
        }
    };
    let refused = |what: &'static str, expect: &'static str| {
        let store = store.clone();
        async move {
            let mut again = ProjectionRunner::new(&store, Padded::default(), opts());
            match again.catch_up().await {
                Err(ProjectionError::Snapshot { reason, .. }) => {
                    assert!(reason.contains(expect), "{what}: {reason}")
                }
                other => panic!("{what}: restored from a broken snapshot: {other:?}"),
            }
        }
    };

    // A chunk of another snapshot in the middle.
    let middle = kv.get(chunk(1)).await.unwrap().unwrap();
    let mut foreign = (generation + 1).to_be_bytes().to_vec();
    foreign.extend_from_slice(&middle[8..]);
    kv.put(chunk(1), foreign.into()).await.unwrap();
    refused("a foreign chunk", "another snapshot").await;
    kv.put(chunk(1), middle).await.unwrap();

    // Bytes after the snapshot's end.
    let mut extra = generation.to_be_bytes().to_vec();
    extra.extend_from_slice(b"trailing");
    kv.put(chunk(chunks), extra.into()).await.unwrap();
    put_manifest(with(chunks + 1, len + 8)).await;
    refused("trailing bytes", "after the snapshot's end").await;

    // The last chunk missing from the count.
    let last_len = kv.get(chunk(chunks - 1)).await.unwrap().unwrap().len() as u64 - 8;
    put_manifest(with(chunks - 1, len - last_len)).await;
    refused("a short snapshot", "").await;

    // The manifest as written: restored whole.
    put_manifest(m).await;
    let mut restored = ProjectionRunner::new(&store, Padded::default(), opts());
    let stats = restored.catch_up().await.unwrap();
    assert_eq!((stats.restored_seq, stats.commits), (last, 0));
    assert_eq!(*restored.state().read().unwrap(), state);
}

/// A read model with a set cost per event folded and per snapshot taken,
/// counting its snapshots.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Costly {
    events: u64,
    #[serde(skip)]
    fold_cost: Duration,
    #[serde(skip)]
    snapshot_cost: Duration,
    #[serde(skip)]
    snapshots: Arc<std::sync::atomic::AtomicUsize>,
}

impl Costly {
    fn new(fold_cost: Duration, snapshot_cost: Duration) -> Self {
        Self {
            fold_cost,
            snapshot_cost,
            ..Self::default()
        }
    }
    fn snapshots(&self) -> usize {
        self.snapshots.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Projection for Costly {
    type Snapshot = Costly;
    fn apply(&mut self, _: u64, _: &Envelope) {
        std::thread::sleep(self.fold_cost);
        self.events += 1;
    }
    fn snapshot(&self) -> Costly {
        std::thread::sleep(self.snapshot_cost);
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.clone()
    }
    fn restore(&mut self, snapshot: Costly) {
        self.events = snapshot.events;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_waits_until_the_folding_since_the_last_outweighs_its_cost() {
    init_tracing();
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    // 200 commits, 267 events.
    let last = write_events(&store, 4, 200).await;
    let every_ten = || ProjectionOptions {
        snapshot_every_commits: 10,
        snapshot_every: Duration::from_secs(3600),
        ..opts(Some("costly"))
    };

    // A model dear to snapshot and cheap to fold: asked for one every ten
    // commits (20 here), it takes the first and then waits for folding worth
    // four of them (~180 ms), which 200 commits do not come near.
    let mut dear = ProjectionRunner::new(
        &store,
        Costly::new(Duration::ZERO, Duration::from_millis(45)),
        every_ten(),
    );
    dear.catch_up().await.unwrap();
    let taken = dear.state().read().unwrap().snapshots();
    assert_eq!(taken, 1, "snapshots of a model dear to snapshot");

    // Restarted from that snapshot, the rest is replayed: nothing is lost.
    let mut again = ProjectionRunner::new(&store, Costly::default(), every_ten());
    let stats = again.catch_up().await.unwrap();
    assert!(stats.restored_seq > 0 && stats.commits < 200, "{stats:?}");
    assert_eq!(again.state().read().unwrap().events, 267);
    assert_eq!(*again.applied().borrow(), last);

    // A model dear to fold and cheap to snapshot still snapshots about as
    // often as asked (every ten commits of ~1.3 ms each).
    let mut cheap = ProjectionRunner::new(
        &store,
        Costly::new(Duration::from_millis(1), Duration::ZERO),
        ProjectionOptions {
            snapshot_key: Some("cheap".to_owned()),
            ..every_ten()
        },
    );
    cheap.catch_up().await.unwrap();
    let taken = cheap.state().read().unwrap().snapshots();
    assert!(
        taken >= 10,
        "a model cheap to snapshot took {taken} snapshots in 200 commits"
    );
}

/// The commits a read model was handed, by stream sequence.
#[derive(Debug, Default)]
struct Handed(BTreeMap<u64, Arc<[Envelope]>>);

impl Projection for Handed {
    type Snapshot = ();
    fn apply(&mut self, _: u64, _: &Envelope) {
        unreachable!("handed whole commits")
    }
    fn apply_commit(&mut self, stream_seq: u64, events: &Arc<[Envelope]>) {
        self.0.insert(stream_seq, Arc::clone(events));
    }
    fn snapshot(&self) {}
    fn restore(&mut self, _: ()) {}
}

/// A read model following the log in the process that appends is handed
/// the envelopes the append built (shared, not decoded again from the
/// message): kept by stream sequence once the append is acknowledged, and
/// found by the bytes published while the acknowledgement is still on its
/// way. A store elsewhere decodes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_appended_here_reach_a_read_model_as_built() {
    init_tracing();
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    let elsewhere = store_elsewhere(&server, &store).await.unwrap();

    // Acknowledged before any read model follows: taken by sequence.
    let mut appended = Vec::new();
    for i in 0..64 {
        let agg = new_aggregate();
        let events = vec![step(0, "x"), step(1, "y")];
        let key = format!("{agg}-{i}");
        appended.push(
            store
                .append(&agg, Version::NEW, events, &key)
                .await
                .unwrap(),
        );
    }
    let shutdown = CancellationToken::new();
    let follow = |store: &berth_eventlog::EventStore| {
        let runner = ProjectionRunner::new(store, Handed::default(), opts(None));
        let (state, applied) = (runner.state(), runner.applied());
        let task = tokio::spawn(runner.run(shutdown.clone()));
        (state, applied, task)
    };
    let (here, mut here_applied, here_task) = follow(&store);
    let (there, mut there_applied, there_task) = follow(&elsewhere);
    let last = appended.last().unwrap().version.stream_seq;
    for applied in [&mut here_applied, &mut there_applied] {
        tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|s| *s >= last))
            .await
            .unwrap()
            .unwrap();
    }
    for a in &appended {
        let seq = a.version.stream_seq;
        let handed = Arc::clone(here.read().unwrap().0.get(&seq).unwrap());
        assert!(
            Arc::ptr_eq(&handed, &a.events),
            "commit {seq} was decoded again in the process that appended it"
        );
        let decoded = Arc::clone(there.read().unwrap().0.get(&seq).unwrap());
        assert!(!Arc::ptr_eq(&decoded, &a.events));
        assert_eq!(
            decoded.iter().map(|e| &e.id).collect::<Vec<_>>(),
            a.events.iter().map(|e| &e.id).collect::<Vec<_>>()
        );
    }

    // An append driven only until it has published (its acknowledgement
    // not taken yet) while the read model applies its commit: found by its
    // bytes. An attempt whose acknowledgement is taken first proves
    // nothing and is tried again (on a busy machine most are: up to 50
    // attempts, until one is caught early).
    let mut in_flight = 0;
    for i in 0..50 {
        if in_flight > 0 {
            break;
        }
        let before = *here_applied.borrow();
        let agg = new_aggregate();
        let key = format!("{agg}-early-{i}");
        let append = store.append(&agg, Version::NEW, vec![step(0, "x")], &key);
        tokio::pin!(append);
        let (done, early) = loop {
            if let std::task::Poll::Ready(done) = futures::poll!(&mut append) {
                break (done.unwrap(), false);
            }
            let applied = here_applied.wait_for(|s| *s > before);
            if tokio::time::timeout(Duration::from_millis(50), applied)
                .await
                .is_ok()
            {
                break (append.await.unwrap(), true);
            }
        };
        if early {
            let seq = done.version.stream_seq;
            let handed = Arc::clone(here.read().unwrap().0.get(&seq).unwrap());
            assert!(
                Arc::ptr_eq(&handed, &done.events),
                "commit {seq}, delivered before its acknowledgement, was decoded again"
            );
            in_flight += 1;
        }
    }
    assert!(in_flight > 0, "no delivery came before its acknowledgement");
    shutdown.cancel();
    here_task.await.unwrap().unwrap();
    there_task.await.unwrap().unwrap();
}

//! Appends under contention, idempotency, and a kill -9 of the server in the
//! middle of a stream of appends — on Debian's 2.9.10 and on a current server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_domain::{Aggregate, Ctx, DomainError};
use berth_eventlog::{AppendError, Version};
use berth_schemas::Event;
use berth_tests::eventlog::{
    check_chain, contend, counting_as, new_aggregate, open_store, race_rounds, step, Count, Counter,
};
use berth_tests::{init_tracing, NatsServer, NatsVersion};

/// `load_after` hands back exactly the commits after a version (and the
/// version now), on both server versions; nothing after the latest.
#[tokio::test]
async fn load_after_returns_only_newer_commits() {
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let store = open_store(&server.connect().await.unwrap(), 1)
            .await
            .unwrap();
        let agg = new_aggregate();
        let other = new_aggregate();
        let (mut versions, mut other_v) = (vec![Version::NEW], Version::NEW);
        for i in 0..3u32 {
            let v = *versions.last().unwrap();
            let events = vec![step(2 * i, "a"), step(2 * i + 1, "b")];
            let appended = store
                .append(&agg, v, events, &format!("k{i}"))
                .await
                .unwrap();
            versions.push(appended.version);
            // Another aggregate's commits in between are not its business.
            other_v = store
                .append(&other, other_v, vec![step(i, "x")], &format!("o{i}"))
                .await
                .unwrap()
                .version;
        }
        let after_first = store.load_after(&agg, versions[1]).await.unwrap();
        let seqs: Vec<u64> = after_first.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6], "{version:?}");
        assert_eq!(after_first.version, versions[3], "{version:?}");
        let none = store.load_after(&agg, versions[3]).await.unwrap();
        assert!(none.events.is_empty(), "{version:?}");
        assert_eq!(none.version, versions[3]);
        let all = store.load_after(&agg, Version::NEW).await.unwrap();
        assert_eq!(all.events.len(), 6, "{version:?}");
        assert_eq!(all.events, store.load(&agg).await.unwrap().events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_aggregate_every_version_won_once() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        // 4 writers x 250 commands = 1,000 appends to one aggregate.
        let seen = contend(&store, 4, 250).await.unwrap();
        assert!(
            seen.conflicts > 0,
            "{version:?}: no contention happened, the test proves nothing"
        );
        // Rounds where 6 writers name the same expected version: one winner each.
        let winners = race_rounds(&store, 6, 30).await.unwrap();
        assert!(
            winners.iter().all(|w| *w == 1),
            "{version:?}: winners per round {winners:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_appends_once() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let agg = new_aggregate();

        let first = store
            .append(&agg, Version::NEW, vec![step(0, "cmd-1")], "cmd-1")
            .await
            .unwrap();
        assert!(!first.duplicate);
        assert_eq!(first.version.events, 1);
        // The same command again, as a client retrying after a lost ack would.
        let again = store
            .append(&agg, Version::NEW, vec![step(0, "cmd-1")], "cmd-1")
            .await
            .unwrap();
        assert!(again.duplicate, "{version:?}: retry was not recognised");
        assert_eq!(again.version, first.version);
        assert_eq!(
            again.events, first.events,
            "duplicate must report the original events"
        );
        // Even retried against the fresh version, the key wins over the check.
        let later = store
            .append(&agg, first.version, vec![step(1, "cmd-1")], "cmd-1")
            .await
            .unwrap();
        assert!(later.duplicate);

        // Through execute: a retried command decides again but appends nothing new.
        for _ in 0..3 {
            let done = store
                .execute::<Counter>(&agg, "cmd-2", &counting_as("cmd-2"), Count::Step)
                .await
                .unwrap();
            assert_eq!(*done.state, 2);
        }
        let loaded = store.load(&agg).await.unwrap();
        check_chain(&loaded, 2).unwrap();

        // A stale expected version with a new key is a typed conflict.
        let stale = store
            .append(&agg, first.version, vec![step(1, "cmd-3")], "cmd-3")
            .await;
        assert!(
            matches!(stale, Err(AppendError::Conflict { .. })),
            "{version:?}: {stale:?}"
        );
        assert!(stale.unwrap_err().is_retryable());
        // Bad calls are the caller's fault and not retryable.
        let empty = store
            .append(&agg, loaded.version, vec![], "cmd-4")
            .await
            .unwrap_err();
        assert!(matches!(empty, AppendError::Empty) && !empty.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_nothing_acknowledged() {
    init_tracing();
    for version in NatsVersion::BOTH {
        let mut server = NatsServer::start(version).unwrap();
        let client = server.connect().await.unwrap();
        let mut store = open_store(&client, 1).await.unwrap();
        // Short timeouts so unknown outcomes surface quickly in the test.
        let mut cfg = store.config().clone();
        cfg.request_timeout = Duration::from_millis(1500);
        store = berth_eventlog::EventStore::open(client.clone(), store.subjects().clone(), cfg)
            .await
            .unwrap();

        let stop = tokio_util::sync::CancellationToken::new();
        let mut writers = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let agg = new_aggregate();
                let mut version = Version::NEW;
                let (mut acked, mut failed) = (Vec::new(), 0u64);
                let mut last_ack = None;
                let mut i = 0u32;
                while !stop.is_cancelled() {
                    let key = format!("w{w}-c{i}");
                    match store.append(&agg, version, vec![step(i, &key)], &key).await {
                        Ok(a) => {
                            acked.push((key, a.events[0].id.clone()));
                            last_ack = Some(Instant::now());
                            version = a.version;
                            i += 1;
                        }
                        // Reported as failed: retry the same command with the
                        // same key (what makes the retry safe).
                        Err(e) if e.is_outcome_unknown() => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("w{w}: unexpected {e}"),
                    }
                }
                (agg, acked, failed, last_ack)
            }));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.kill9().unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        server.restart().unwrap();
        let restarted = Instant::now();
        // Let the client reconnect and the writers carry on for a while.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        stop.cancel();

        let mut total_failed = 0;
        for w in writers {
            let (agg, acked, failed, last_ack) = w.await.unwrap();
            total_failed += failed;
            let loaded = store.load(&agg).await.unwrap();
            // Exactly the acknowledged commands, in order, none twice.
            let causes = check_chain(&loaded, acked.len() as u64).unwrap();
            let stored: HashMap<_, _> = loaded
                .events
                .iter()
                .map(|e| (e.causation_id.clone().unwrap(), e.id.clone()))
                .collect();
            for (n, (key, id)) in acked.iter().enumerate() {
                assert_eq!(&causes[n], key, "{version:?}: order differs at {n}");
                assert_eq!(
                    stored.get(key),
                    Some(id),
                    "{version:?}: acked {key} lost or replaced"
                );
            }
            assert!(
                acked.len() > 10 && last_ack.is_some_and(|t| t > restarted),
                "{version:?}: writer made no progress after restart"
            );
        }
        assert!(
            total_failed > 0,
            "{version:?}: no append saw the outage; the test proves nothing"
        );
    }
}

/// Commands decide on the store's folded state: each folds only the events
/// appended since it was last seen (O(new events)), not the aggregate's
/// whole history; a writer elsewhere costs a catch-up of its commits only,
/// and the decision is still made on the log's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_folds_only_what_is_new() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FOLDED: AtomicU64 = AtomicU64::new(0);
    /// The counter, counting the events it folds.
    struct Counting;
    impl Aggregate for Counting {
        type State = u32;
        type Command = Count;
        fn apply(state: u32, event: &berth_schemas::Event) -> u32 {
            FOLDED.fetch_add(1, Ordering::SeqCst);
            Counter::apply(state, event)
        }
        fn decide(state: &u32, command: Count, ctx: &Ctx) -> Result<Vec<Event>, DomainError> {
            Counter::decide(state, command, ctx)
        }
    }
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    // Another process on the same log (same prefix).
    let elsewhere = berth_eventlog::EventStore::open(
        server.connect().await.unwrap(),
        store.subjects().clone(),
        berth_eventlog::StoreConfig::default(),
    )
    .await
    .unwrap();
    let agg = new_aggregate();
    for i in 0..100u32 {
        let done = store
            .execute::<Counting>(&agg, &format!("c{i}"), &counting_as("c"), Count::Step)
            .await
            .unwrap();
        assert_eq!(*done.state, i + 1);
    }
    // Folding the history each time would be 1 + 2 + … + 100 = 5,050.
    let folded = FOLDED.load(Ordering::SeqCst);
    assert!(folded <= 110, "100 commands folded {folded} events");

    // Another process appends 10 commits; the next command here conflicts
    // on its remembered state, catches up by those 10 and decides on 110.
    for i in 0..10u32 {
        elsewhere
            .execute::<Counter>(&agg, &format!("e{i}"), &counting_as("e"), Count::Step)
            .await
            .unwrap();
    }
    let before = FOLDED.load(Ordering::SeqCst);
    let done = store
        .execute::<Counting>(&agg, "after", &counting_as("after"), Count::Step)
        .await
        .unwrap();
    assert_eq!(*done.state, 111);
    let folded = FOLDED.load(Ordering::SeqCst) - before;
    assert!(folded <= 12, "catching up folded {folded} events");
    // A decision that appends nothing is trusted only on the log's state:
    // "already at 111?" is answered after catching up with the writer
    // elsewhere, not on the remembered 111.
    elsewhere
        .execute::<Counter>(&agg, "e-last", &counting_as("e"), Count::Step)
        .await
        .unwrap();
    let done = store
        .execute::<Counting>(&agg, "noop", &counting_as("x"), Count::StepBelow(111))
        .await
        .unwrap();
    assert!(done.appended.is_none());
    assert_eq!(*done.state, 112, "a no-op was decided on a stale state");
}

/// A consumer handling the commit at some stream sequence reads a state
/// that holds it; a state that does not (read from a copy of the log that
/// is behind) is a transient error to read again later, never a state to
/// decide "nothing to do" on.
#[tokio::test]
async fn a_state_that_does_not_hold_the_commit_handled_is_refused() {
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let store = open_store(&server.connect().await.unwrap(), 1)
        .await
        .unwrap();
    let agg = new_aggregate();
    for i in 0..3u32 {
        store
            .execute::<Counter>(&agg, &format!("h{i}"), &counting_as("h"), Count::Step)
            .await
            .unwrap();
    }
    let count = berth_tests::eventlog::count;
    let (_, version) = store.state(&agg, count).await.unwrap();
    let (state, held) = store
        .state_holding(&agg, count, version.stream_seq)
        .await
        .unwrap();
    assert_eq!((*state, held), (3u32, version));
    match store
        .state_holding::<u32, _>(&agg, count, version.stream_seq + 1)
        .await
    {
        Err(berth_eventlog::StoreError::Request(m)) => assert!(m.contains("behind"), "{m}"),
        other => panic!("a state older than the commit handled: {other:?}"),
    }
}

/// A fresh process (a restart) starts a registered state type from its
/// stored fold and folds only what came after; an unreadable stored fold
/// is ignored (the log is the truth); a long history is read whole and in
/// order whether streamed or read one commit at a time, and a streamed read
/// leaves no consumer behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_store_starts_from_the_stored_fold() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FOLDED: AtomicU64 = AtomicU64::new(0);
    fn counting(state: u32, env: &berth_schemas::Envelope) -> u32 {
        FOLDED.fetch_add(1, Ordering::SeqCst);
        berth_tests::eventlog::count(state, env)
    }
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let store = open_store(&server.connect().await.unwrap(), 1)
        .await
        .unwrap();
    let reopen = |stream_long_reads: bool, persist: bool| {
        let subjects = store.subjects().clone();
        let server = &server;
        async move {
            let s = berth_eventlog::EventStore::open(
                server.connect().await.unwrap(),
                subjects,
                berth_eventlog::StoreConfig {
                    stream_long_reads,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            if persist {
                s.persist_states::<u32>("count-v1", 50);
            }
            s
        }
    };
    store.persist_states::<u32>("count-v1", 50);
    let agg = new_aggregate();
    for i in 0..220u32 {
        store
            .execute::<Counter>(&agg, &format!("c{i}"), &counting_as("c"), Count::Step)
            .await
            .unwrap();
    }
    // The stored fold is written in the background: wait for the one at 200.
    let kv = store
        .jetstream()
        .get_key_value(store.subjects().snapshot_bucket())
        .await
        .unwrap();
    let key = format!("state.count-v1.{agg}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = kv.get(&key).await.unwrap();
        let events = stored
            .as_ref()
            .and_then(|b| b.get(8..16))
            .map(|e| u64::from_be_bytes(e.try_into().unwrap()));
        if events == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stored fold at 200: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let restarted = reopen(true, true).await;
    let before = FOLDED.load(Ordering::SeqCst);
    let (state, version) = restarted.state(&agg, counting).await.unwrap();
    assert_eq!((*state, version.events), (220, 220));
    let folded = FOLDED.load(Ordering::SeqCst) - before;
    assert_eq!(
        folded, 20,
        "a restart folded {folded} events, not the 20 after the stored fold"
    );

    // Garbage where the fold was: ignored, the whole log folded (streamed,
    // then one commit at a time by a store that keeps no folds).
    kv.put(&key, b"not a fold".to_vec().into()).await.unwrap();
    let consumers = || async {
        let mut events = store
            .jetstream()
            .get_stream(store.subjects().events_stream())
            .await
            .unwrap();
        events.info().await.unwrap().state.consumer_count
    };
    let consumers_before = consumers().await;
    for streamed in [true, false] {
        let cold = reopen(streamed, streamed).await;
        let before = FOLDED.load(Ordering::SeqCst);
        let (state, _) = cold.state(&agg, counting).await.unwrap();
        assert_eq!(*state, 220, "streamed: {streamed}");
        assert_eq!(FOLDED.load(Ordering::SeqCst) - before, 220);
        let loaded = cold.load(&agg).await.unwrap();
        let seqs: Vec<u64> = loaded.events.iter().map(|e| e.sequence).collect();
        assert_eq!(
            seqs,
            (1..=220).collect::<Vec<u64>>(),
            "streamed: {streamed}"
        );
    }
    // A streamed read takes its consumer along: left to linger, the
    // consumers of many reads reach the server's limit on a stream.
    assert_eq!(consumers().await, consumers_before);
}

/// An append nobody answers is an outcome unknown, retryable with the same
/// key, never a refusal: on a cluster that is what an append meets while a
/// killed server's stream leadership moves (here the stream is away for a
/// moment). Once it is back, the retry lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_nobody_answers_is_an_outcome_unknown() {
    init_tracing();
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = server.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = store.subjects().events_stream();
    let config = js
        .get_stream(&stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    js.delete_stream(&stream).await.unwrap();
    let agg = new_aggregate();
    let err = store
        .append(&agg, Version::NEW, vec![step(0, "cmd-1")], "cmd-1")
        .await
        .unwrap_err();
    assert!(
        err.is_outcome_unknown() && err.is_retryable(),
        "no answer taken for a refusal: {err:?}"
    );
    js.create_stream(config).await.unwrap();
    let landed = store
        .append(&agg, Version::NEW, vec![step(0, "cmd-1")], "cmd-1")
        .await
        .unwrap();
    assert!(!landed.duplicate);
}

/// A copy of the log that is behind (`berth_tests::behind`): its client
/// reads the log as it was (an aggregate created since is not there), any
/// other client as it is; a consumer handling a later commit is refused
/// the old state, and reads the right one once the copy catches up; a
/// state once read is not taken back by a copy further behind.
#[tokio::test]
async fn a_copy_of_the_log_that_is_behind_is_read_as_it_was() {
    use berth_tests::behind::{lagging_store, BehindCopy};
    for version in NatsVersion::BOTH {
        let server = NatsServer::start(version).unwrap();
        let store = open_store(&server.connect().await.unwrap(), 1)
            .await
            .unwrap();
        let behind = lagging_store(&server.url(), store.subjects()).await;
        let never_read = lagging_store(&server.url(), store.subjects()).await;
        let (agg, new) = (new_aggregate(), new_aggregate());
        let count = berth_tests::eventlog::count;
        store
            .execute::<Counter>(&agg, "b0", &counting_as("b"), Count::Step)
            .await
            .unwrap();
        assert_eq!(*behind.state(&agg, count).await.unwrap().0, 1);
        let copy = BehindCopy::start(&server.url(), store.subjects()).await;
        store
            .execute::<Counter>(&agg, "b1", &counting_as("b"), Count::Step)
            .await
            .unwrap();
        store
            .execute::<Counter>(&new, "n0", &counting_as("n"), Count::Step)
            .await
            .unwrap();
        let (state, now) = store.state(&agg, count).await.unwrap();
        assert_eq!(
            *state, 2,
            "{version:?}: the store's own client reads the log as it is"
        );
        let (state, then) = behind.state(&agg, count).await.unwrap();
        assert_eq!(*state, 1, "{version:?}: the lagging client reads the copy");
        assert!(then.stream_seq <= copy.at() && copy.at() < now.stream_seq);
        assert_eq!(
            *behind.state(&new, count).await.unwrap().0,
            0,
            "{version:?}: an aggregate the copy does not have yet"
        );
        match behind
            .state_holding::<u32, _>(&agg, count, now.stream_seq)
            .await
        {
            Err(berth_eventlog::StoreError::Request(m)) => assert!(m.contains("behind"), "{m}"),
            other => panic!("{version:?}: a state older than the commit handled: {other:?}"),
        }
        copy.catch_up();
        let (state, held) = behind
            .state_holding::<u32, _>(&agg, count, now.stream_seq)
            .await
            .unwrap();
        assert_eq!((*state, held), (2, now), "{version:?}");
        assert_eq!(*behind.state(&new, count).await.unwrap().0, 1);
        // Reads never go back: answered by a copy further behind, a store
        // keeps the newer state it already read; one that never read it
        // gets the copy's.
        copy.hold_at(then.stream_seq);
        assert_eq!(
            *behind.state(&agg, count).await.unwrap().0,
            2,
            "{version:?}"
        );
        assert_eq!(
            *behind.state(&new, count).await.unwrap().0,
            1,
            "{version:?}"
        );
        assert_eq!(
            *never_read.state(&agg, count).await.unwrap().0,
            1,
            "{version:?}"
        );
        assert_eq!(
            *never_read.state(&new, count).await.unwrap().0,
            0,
            "{version:?}"
        );
        copy.stop().await;
    }
}

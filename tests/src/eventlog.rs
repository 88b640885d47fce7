//! Helpers shared by the event-store tests: opening a store under a unique
//! prefix, a counter "aggregate" whose events chain (`from` → `to`), and the
//! contention scenario used on single servers and on clusters.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use berth_domain::service::{self, Command};
use berth_domain::{Aggregate, Ctx, DomainError};
use berth_eventlog::{EventStore, ExecuteError, Loaded, NewEvent, Stamp, StoreConfig};
use berth_schemas::events::InstanceCountChanged;
use berth_schemas::ids::{EventId, ServiceId};
use berth_schemas::{Actor, AggregateId, Envelope, Event};

use crate::unique_subjects;

/// Opens a store with `replicas` under a fresh prefix.
pub async fn open_store(client: &async_nats::Client, replicas: usize) -> Result<EventStore> {
    let cfg = StoreConfig {
        replicas,
        max_execute_attempts: 10_000,
        ..StoreConfig::default()
    };
    Ok(EventStore::open(client.clone(), unique_subjects(), cfg).await?)
}

/// Another store on `store`'s log, over a connection of its own to
/// `server`: as another process sees the log (it appended none of it, so
/// it decodes every commit it reads).
pub async fn store_elsewhere(server: &crate::NatsServer, store: &EventStore) -> Result<EventStore> {
    let client = server.connect().await?;
    Ok(EventStore::open(client, store.subjects().clone(), store.config().clone()).await?)
}

/// A fresh service aggregate id.
pub fn new_aggregate() -> AggregateId {
    AggregateId::Service(ServiceId::generate())
}

/// The counter event `from` → `from + 1`, caused by `cause`.
pub fn step(from: u32, cause: &str) -> NewEvent {
    NewEvent::new(
        InstanceCountChanged { from, to: from + 1 },
        Actor::system("test"),
    )
    .caused_by(cause)
}

/// Folds the counter: the last `to`.
pub fn count(state: u32, env: &Envelope) -> u32 {
    Counter::apply(state, &env.event)
}

/// The counter as an aggregate: its state is the last `to`.
#[derive(Debug, Clone, Copy)]
pub struct Counter;

/// What a counter command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// One step up from where it stands.
    Step,
    /// One step up unless it stands at this or more.
    StepBelow(u32),
}

impl Aggregate for Counter {
    type State = u32;
    type Command = Count;

    fn apply(state: u32, event: &Event) -> u32 {
        match event {
            Event::InstanceCountChanged(e) => e.to,
            _ => state,
        }
    }

    fn decide(state: &u32, command: Count, _: &Ctx) -> Result<Vec<Event>, DomainError> {
        match command {
            Count::StepBelow(n) if *state >= n => Ok(vec![]),
            _ => Ok(vec![InstanceCountChanged {
                from: *state,
                to: *state + 1,
            }
            .into()]),
        }
    }
}

/// Who runs counter commands, with `cause` as causation id.
pub fn counting_as(cause: &str) -> Stamp {
    Stamp::new(Actor::system("test")).caused_by(cause)
}

/// Checks a counter log: sequences 1..=n with no gaps, each event continuing
/// from the previous `to`, every causation id unique. Returns the causation ids.
pub fn check_chain(loaded: &Loaded, n: u64) -> Result<Vec<String>> {
    ensure!(
        loaded.events.len() as u64 == n,
        "expected {n} events, found {}",
        loaded.events.len()
    );
    ensure!(
        loaded.version.events == n,
        "version counts {}",
        loaded.version.events
    );
    let mut causes = Vec::with_capacity(n as usize);
    let mut seen = HashSet::new();
    for (i, env) in loaded.events.iter().enumerate() {
        ensure!(
            env.sequence == i as u64 + 1,
            "gap at {i}: sequence {}",
            env.sequence
        );
        let Event::InstanceCountChanged(e) = &env.event else {
            anyhow::bail!("unexpected event {:?}", env.event);
        };
        ensure!(
            e.from == i as u32 && e.to == i as u32 + 1,
            "event {} decided on stale state: {} -> {}",
            i + 1,
            e.from,
            e.to
        );
        let cause = env.causation_id.clone().context("causation id")?;
        ensure!(seen.insert(cause.clone()), "command {cause} appended twice");
        causes.push(cause);
    }
    Ok(causes)
}

/// What a contention run saw.
#[derive(Debug, Clone, Copy)]
pub struct Contention {
    /// Commands that lost at least once and re-decided.
    pub conflicts: u64,
}

/// `writers` tasks each run `per_writer` counter commands through
/// `execute` against one aggregate; then checks the log is exactly the
/// chain of all commands, each once.
pub async fn contend(store: &EventStore, writers: usize, per_writer: usize) -> Result<Contention> {
    let aggregate = new_aggregate();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let aggregate = aggregate.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..per_writer {
                let key = format!("w{w}-c{i}");
                let done = store
                    .execute::<Counter>(&aggregate, &key, &counting_as(&key), Count::Step)
                    .await?;
                conflicts += u64::from(done.attempts - 1);
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += tokio::time::timeout(Duration::from_secs(120), t).await???;
    }
    let loaded = store.load(&aggregate).await?;
    let causes = check_chain(&loaded, (writers * per_writer) as u64)?;
    let expected: HashSet<String> = (0..writers)
        .flat_map(|w| (0..per_writer).map(move |i| format!("w{w}-c{i}")))
        .collect();
    ensure!(
        causes.into_iter().collect::<HashSet<_>>() == expected,
        "the log does not hold exactly the commands sent"
    );
    Ok(Contention { conflicts })
}

/// `writers` concurrent raw appends per round, all naming the same expected
/// version: returns the number of winners of each round.
pub async fn race_rounds(store: &EventStore, writers: usize, rounds: usize) -> Result<Vec<usize>> {
    let aggregate = new_aggregate();
    let mut winners = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let expected = store.load(&aggregate).await?.version;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let aggregate = aggregate.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("r{round}-w{w}");
                store
                    .append(&aggregate, expected, vec![step(round as u32, &key)], &key)
                    .await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await? {
                Ok(_) => won += 1,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        winners.push(won);
    }
    let loaded = store.load(&aggregate).await?;
    check_chain_loose(&loaded, rounds as u64)?;
    Ok(winners)
}

/// Every event decided on the state before it (any cause).
fn check_chain_loose(loaded: &Loaded, n: u64) -> Result<()> {
    ensure!(
        loaded.events.len() as u64 == n,
        "expected {n} events, found {}",
        loaded.events.len()
    );
    for (i, env) in loaded.events.iter().enumerate() {
        ensure!(env.sequence == i as u64 + 1, "gap at {i}");
        if let Event::InstanceCountChanged(e) = &env.event {
            ensure!(e.from == i as u32, "event {} out of order", i + 1);
        }
    }
    Ok(())
}

/// Waits up to 2 s for the store's work stream to hold no message; whether it
/// emptied.
pub async fn work_stream_drains(store: &EventStore) -> Result<bool> {
    let mut stream = store
        .jetstream()
        .get_stream(store.subjects().work_stream())
        .await?;
    for _ in 0..40 {
        if stream.info().await?.state.messages == 0 {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(false)
}

/// Runs service `command` against the log as ingress, the resolver or the
/// scheduler would (actor `test`, a fresh idempotency key): test setup that
/// goes through the real service rules.
pub async fn service_command(
    store: &EventStore,
    service: &ServiceId,
    command: Command,
) -> std::result::Result<(), ExecuteError<DomainError>> {
    store
        .execute::<service::Service>(
            &AggregateId::Service(service.clone()),
            &format!("test-{}", EventId::generate()),
            &Stamp::new(Actor::system("test")),
            command,
        )
        .await
        .map(|_| ())
}

/// Every line the logs stream keeps of `service`, oldest first.
pub async fn kept_logs(
    store: &EventStore,
    service: &ServiceId,
) -> Result<Vec<berth_schemas::logs::LogLine>> {
    let mut lines = Vec::new();
    let until = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    store
        .read_logs(service, chrono::DateTime::UNIX_EPOCH, until, |k| {
            lines.push(k.line);
            std::ops::ControlFlow::Continue(())
        })
        .await?;
    Ok(lines)
}

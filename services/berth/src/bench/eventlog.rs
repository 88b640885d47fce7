//! The event log benchmark behind `berth bench eventlog`: berth's store
//! measured against raw async-nats in the same run, on the same server, with
//! the same payload sizes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use berth_schemas::events::InstanceCountChanged;
use berth_schemas::ids::{EventId, ServiceId};
use berth_schemas::{Actor, AggregateId, Commit, Envelope, Subjects};
use futures::StreamExt;

mod appends;

use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::{EventStore, NewEvent, StoreConfig};

/// Sizes of one bench run (the defaults are the sizes BENCHMARKS.md reports).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events appended in the pipelined phase.
    pub pipelined_events: u64,
    /// Aggregates they are spread over (appends to one aggregate are sequential).
    pub aggregates: u64,
    /// Sequential appends to one aggregate for the latency phase.
    pub sequential_appends: u64,
    /// Events in the log for the rebuild and restart phases.
    pub rebuild_events: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            pipelined_events: 100_000,
            aggregates: 1_000,
            sequential_appends: 5_000,
            rebuild_events: 1_000_000,
        }
    }
}

/// One measured figure beside its raw counterpart.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What is measured.
    pub name: &'static str,
    /// Unit of the figures.
    pub unit: &'static str,
    /// berth's figure.
    pub berth: f64,
    /// Raw async-nats figure (`None` when there is no raw counterpart).
    pub raw: Option<f64>,
    /// The target, in words.
    pub target: &'static str,
    /// Whether the target is met.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The server's version.
    pub server_version: String,
    /// The measured rows.
    pub rows: Vec<Row>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] berth_eventlog::StoreError),
    /// A step failed.
    #[error("bench step {step} failed: {reason}")]
    Step {
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

/// Runs every phase against the server `client` is connected to, under
/// prefixes derived from `subjects` (their streams are deleted afterwards).
pub async fn run(
    client: async_nats::Client,
    subjects: Subjects,
    opts: BenchOptions,
) -> Result<Report, BenchError> {
    let started = Instant::now();
    let store = EventStore::open(client.clone(), subjects.clone(), StoreConfig::default()).await?;
    let mut rows = Vec::new();
    let result = async {
        let p = appends::pipelined(&store, &opts).await?;
        rows.push(Row {
            name: "pipelined appends",
            unit: "events/s",
            berth: p.berth,
            raw: Some(p.raw),
            target: ">= 70% of raw",
            met: p.berth >= 0.7 * p.raw,
        });
        rows.push(Row {
            name: "pipelined, raw with 4096 in flight",
            unit: "events/s",
            berth: p.berth,
            raw: Some(p.raw_deep),
            target: "(diagnostic)",
            met: true,
        });
        rows.push(Row {
            name: "pipelined, raw with the same headers",
            unit: "events/s",
            berth: p.berth,
            raw: Some(p.raw_headers),
            target: "(diagnostic)",
            met: true,
        });
        let s = appends::sequential(&store, &opts).await?;
        rows.push(Row {
            name: "sequential append p50",
            unit: "us",
            berth: s.p50,
            raw: Some(s.raw_p50),
            target: "<= 1.3x raw",
            met: s.p50 <= 1.3 * s.raw_p50,
        });
        rows.push(Row {
            name: "sequential p50, raw with the same headers",
            unit: "us",
            berth: s.p50,
            raw: Some(s.raw_headers_p50),
            target: "(diagnostic)",
            met: true,
        });
        rows.push(Row {
            name: "sequential append p99",
            unit: "us",
            berth: s.p99,
            raw: Some(s.raw_p99),
            target: "(reported)",
            met: true,
        });
        // A log of its own so the rebuild reads exactly `rebuild_events`.
        let rsubjects = Subjects::new(&format!("{}-r", subjects.prefix()))
            .map_err(|e| step("rebuild prefix", e))?;
        let rstore = EventStore::open(client.clone(), rsubjects, StoreConfig::default()).await?;
        let rebuilt = rebuild(&rstore, &opts).await;
        let _ = delete_all(&rstore).await;
        let (raw_read, rebuild_rate, restart) = rebuilt?;
        rows.push(Row {
            name: "projection rebuild",
            unit: "events/s",
            berth: rebuild_rate,
            raw: Some(raw_read),
            target: ">= 50% of raw read",
            met: rebuild_rate >= 0.5 * raw_read,
        });
        rows.push(Row {
            name: "restart with snapshot",
            unit: "ms",
            berth: restart,
            raw: None,
            target: "< 1000 ms",
            met: restart < 1000.0,
        });
        Ok::<_, BenchError>(())
    }
    .await;
    let _ = delete_all(&store).await;
    result?;
    Ok(Report {
        server_version: store.server_version().to_string(),
        rows,
        elapsed: started.elapsed(),
    })
}

fn step(step: &'static str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Step {
        step,
        reason: e.to_string(),
    }
}

fn one_event(from: u32) -> NewEvent {
    NewEvent::new(
        InstanceCountChanged { from, to: from + 1 },
        Actor::system("bench"),
    )
}

/// The bytes berth publishes for one single-event commit, for raw runs of
/// the same size.
fn sample_payload(agg: &AggregateId, seq: u64) -> Result<Vec<u8>, BenchError> {
    let event = one_event(seq as u32);
    Commit {
        events: vec![Envelope {
            id: EventId::generate(),
            version: event.event.version(),
            aggregate: agg.clone(),
            sequence: seq,
            time: chrono::Utc::now(),
            actor: event.actor,
            correlation_id: None,
            causation_id: None,
            event: event.event,
        }],
    }
    .encode()
    .map_err(|e| step("encode", e))
}

fn aggregates(n: u64) -> Vec<AggregateId> {
    (0..n.max(1))
        .map(|_| AggregateId::Service(ServiceId::generate()))
        .collect()
}

/// What the bench projection keeps: events per aggregate.
#[derive(Debug, Default)]
struct PerAggregate {
    counts: HashMap<String, u64>,
    events: u64,
}

impl Projection for PerAggregate {
    type Snapshot = HashMap<String, u64>;
    fn apply(&mut self, _stream_seq: u64, env: &Envelope) {
        self.events += 1;
        match self.counts.get_mut(env.aggregate.id()) {
            Some(c) => *c += 1,
            None => {
                self.counts.insert(env.aggregate.id().to_owned(), 1);
            }
        }
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.counts.clone()
    }
    fn restore(&mut self, snapshot: Self::Snapshot) {
        self.counts = snapshot;
    }
}

/// Fills the log with `rebuild_events` single-event commits, then returns
/// (raw ordered-consumer read events/s, projection rebuild events/s,
/// restart-with-snapshot ms).
async fn rebuild(store: &EventStore, opts: &BenchOptions) -> Result<(f64, f64, f64), BenchError> {
    let n = opts.rebuild_events.max(1);
    let aggs = aggregates(opts.aggregates);
    let js = store.jetstream().clone();
    // Valid commits, published raw and pipelined: filling is not measured.
    let mut acks = futures::stream::iter(0..n)
        .map(|i| {
            let a = (i as usize) % aggs.len();
            let seq = i / aggs.len() as u64 + 1;
            let agg = aggs[a].clone();
            let subject = store.subjects().aggregate(&agg);
            let js = js.clone();
            async move {
                let payload = sample_payload(&agg, seq)?;
                js.publish(subject, payload.into())
                    .await
                    .map_err(|e| step("fill", e))?
                    .await
                    .map_err(|e| step("fill ack", e))
            }
        })
        .buffer_unordered(4096);
    while let Some(ack) = acks.next().await {
        ack?;
    }

    // Raw: an ordered consumer over the whole stream, counting messages.
    let stream = js
        .get_stream(store.subjects().events_stream())
        .await
        .map_err(|e| step("stream", e))?;
    let t = Instant::now();
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .map_err(|e| step("ordered consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| step("ordered consumer", e))?;
    let mut read = 0u64;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| step("raw read", e))?;
        read += 1;
        if m.info().map(|i| i.pending == 0).unwrap_or(false) {
            break;
        }
    }
    let raw = read as f64 / t.elapsed().as_secs_f64();
    drop(messages);

    let opts_with = |key: Option<&str>| ProjectionOptions {
        snapshot_key: key.map(str::to_owned),
        snapshot_every_commits: u64::MAX,
        snapshot_every: Duration::from_secs(3600),
        ..ProjectionOptions::default()
    };
    let t = Instant::now();
    let mut runner =
        ProjectionRunner::new(store, PerAggregate::default(), opts_with(Some("bench")));
    let stats = runner.catch_up().await.map_err(|e| step("rebuild", e))?;
    let rate = stats.events as f64 / t.elapsed().as_secs_f64();
    runner.snapshot_now().await;

    let t = Instant::now();
    let mut restarted =
        ProjectionRunner::new(store, PerAggregate::default(), opts_with(Some("bench")));
    let again = restarted.catch_up().await.map_err(|e| step("restart", e))?;
    let restart_ms = t.elapsed().as_secs_f64() * 1000.0;
    if again.restored_seq == 0 {
        return Err(step("restart", "snapshot was not restored"));
    }
    Ok((raw, rate, restart_ms))
}

/// Deletes the streams and bucket a bench run created.
async fn delete_all(store: &EventStore) -> Result<(), BenchError> {
    let js = store.jetstream();
    let s = store.subjects();
    for name in [
        s.events_stream(),
        s.work_stream(),
        s.dead_letter_stream(),
        s.work_advisory_stream(),
        format!("KV_{}", s.snapshot_bucket()),
    ] {
        js.delete_stream(&name)
            .await
            .map_err(|e| step("cleanup", e))?;
    }
    Ok(())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "berth bench eventlog — nats-server {}",
            self.server_version
        )?;
        writeln!(
            f,
            "{:<44} {:>14} {:>14} {:>7}  {:<22} ok",
            "measure", "berth", "raw", "ratio", "target"
        )?;
        for r in &self.rows {
            let raw = r.raw.map_or("-".to_owned(), |v| format!("{v:.1}"));
            let ratio = r
                .raw
                .filter(|v| *v > 0.0)
                .map_or("-".to_owned(), |v| format!("{:.2}", r.berth / v));
            writeln!(
                f,
                "{:<44} {:>14} {:>14} {:>7}  {:<22} {}",
                format!("{} ({})", r.name, r.unit),
                format!("{:.1}", r.berth),
                raw,
                ratio,
                r.target,
                if r.met { "yes" } else { "NO" }
            )?;
        }
        write!(f, "total {:.1}s", self.elapsed.as_secs_f64())
    }
}

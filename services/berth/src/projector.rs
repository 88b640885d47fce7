//! The projector: restores its snapshot, replays the tail of the event log
//! and then follows it live (the eventlog crate's [`ProjectionRunner`]), so
//! the read side always has current state. Today its read model is a summary
//! of the log (events per aggregate kind and per event type); the service
//! and deploy views of later issues plug in the same way.
//!
//! It reports ready on `/healthz` once it has applied the log as it stood at
//! start-up, and exports how far it has read as metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_eventlog::projection::{BadEvent, Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::start::until_available;
use berth_eventlog::EventStore;
use berth_runtime::{BoxError, Component, ComponentContext};
use berth_schemas::Envelope;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Counts of what the log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    /// Events applied.
    pub events: u64,
    /// Events per aggregate kind (`service`, `credential`, …).
    pub by_kind: BTreeMap<String, u64>,
    /// Events per event type.
    pub by_type: BTreeMap<String, u64>,
    /// Stream sequence of the last commit applied.
    pub last_seq: u64,
}

impl Projection for LogSummary {
    type Snapshot = LogSummary;

    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        self.events += 1;
        *self
            .by_kind
            .entry(env.aggregate.kind().to_owned())
            .or_default() += 1;
        *self
            .by_type
            .entry(env.event.type_name().to_owned())
            .or_default() += 1;
        self.last_seq = stream_seq;
        metrics::counter!("berth_projector_events_total").increment(1);
        metrics::gauge!("berth_projector_stream_seq").set(stream_seq as f64);
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.clone()
    }

    fn snapshot_ref(&self) -> Option<&Self::Snapshot> {
        Some(self)
    }

    fn restore(&mut self, snapshot: Self::Snapshot) {
        *self = snapshot;
    }
}

#[derive(Debug)]
pub struct Projector {
    store: Arc<EventStore>,
}

impl Projector {
    pub fn new(store: Arc<EventStore>) -> Self {
        Self { store }
    }
}

impl Component for Projector {
    fn name(&self) -> &'static str {
        "projector"
    }

    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move { self.follow(ctx).await })
    }
}

impl Projector {
    async fn follow(self, ctx: ComponentContext) -> Result<(), BoxError> {
        let target = until_available(&ctx.shutdown, "log end not read", || {
            self.store.last_stream_seq()
        });
        let Some(target) = target.await? else {
            return Ok(());
        };
        let opts = ProjectionOptions {
            snapshot_key: Some("projector-log-summary".to_owned()),
            on_bad_event: Some(Arc::new(|bad: &BadEvent| {
                metrics::counter!("berth_projector_bad_events_total", "unknown_version" => bad.unknown_version.to_string())
                    .increment(1);
            })),
            ..Default::default()
        };
        let runner = ProjectionRunner::new(&self.store, LogSummary::default(), opts);
        let state = runner.state();
        let mut applied = runner.applied();

        // Readiness: the log as it stood at start-up has been applied. The
        // runner itself is the task; this just watches its progress.
        let ready = ctx.ready.clone();
        let watch_state = state.clone();
        ctx.tracker.spawn(async move {
            if applied.wait_for(|seq| *seq >= target).await.is_ok() {
                let events = watch_state.read().map(|s| s.events).unwrap_or(0);
                tracing::info!(stream.seq = target, events, "projector caught up");
                ready.set(true);
            }
        });

        runner.run(ctx.shutdown.clone()).await?;
        let events = state.read().map(|s| s.events).unwrap_or(0);
        tracing::info!(events, "projector stopped");
        Ok(())
    }
}

//! Components: the units `berth up` runs side by side in one process and
//! `berth run <name>` runs alone. Each gets a [`ComponentContext`] (NATS
//! client, subject names, config, the shutdown token and task tracker, its
//! readiness flag) and runs until the token is cancelled.
//!
//! A component is built with whatever else it needs (an event store, a
//! registry client) before it is run, so this crate does not depend on them.

use std::fmt;
use std::sync::Arc;

use berth_schemas::subjects::Subjects;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::ReadyFlag;

/// Any error a component ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a running component is handed.
#[derive(Clone)]
pub struct ComponentContext {
    /// The component's name (for logs and metrics labels).
    pub name: &'static str,
    /// The connected NATS client.
    pub client: async_nats::Client,
    /// JetStream on that client.
    pub jetstream: async_nats::jetstream::Context,
    /// Subject and stream names.
    pub subjects: Subjects,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Cancelled when the process starts shutting down: stop taking work.
    pub shutdown: CancellationToken,
    /// Spawn any helper tasks here so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Set once the component can do its work; `/healthz` reports it.
    pub ready: ReadyFlag,
}

impl fmt::Debug for ComponentContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentContext")
            .field("name", &self.name)
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// A long-running part of berth (projector, resolver, puller, …).
pub trait Component: Send + Sync {
    /// Stable name, used by `berth run <name>`, logs, metrics and `/healthz`.
    fn name(&self) -> &'static str;

    /// Runs until `ctx.shutdown` is cancelled, then finishes or naks in-flight
    /// work and returns. Returning an error stops the whole process.
    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>>;
}

//! # berth-scheduler: drives deploys through their pipeline and keeps every
//! service's instances placed, healthy and on the recorded digest
//!
//! Sits after the resolver in the event flow (SPEC §6, §10, §11, §12): the
//! resolver turns `deploy_started` into `image_resolved`; from there the
//! scheduler runs the pre-deploy command, starts the update, places
//! instances on nodes (`work.node.<id>` queues, which `berth-node`
//! consumes), marks the deploy live once every new instance is healthy and
//! retires the old ones. What to do is the domain's pure
//! [`steps`](berth_domain::scheduler::steps) (the deploy pipeline and
//! [`reconcile`](berth_domain::scheduler::reconcile)); this crate feeds it
//! the log and the cluster and carries out the steps ([`drive`](mod@drive),
//! [`carry`](mod@carry)): appends through the store's command path, node
//! work composed with its secrets and enqueued, timers.
//!
//! Triggers, all level-triggered (a pass reads the log, never a message's
//! content), so any of them may be lost or repeated:
//! - a durable pull consumer on the log's service subjects (shared by every
//!   scheduler copy, one service at a time per copy): each commit drives
//!   its service, unless a drive in this copy has finished on a state at
//!   or past that commit since (a burst is driven once, not per commit);
//! - the plan's `requeue_after` (readiness windows, placement retries);
//! - a sweep over every service at start and every `sweep_interval`;
//! - heartbeats (core NATS): a node silent for `heartbeat_timeout` gets
//!   `node_lost`, and the services with instances there are driven, which
//!   records `server_failed` and moves the instances; a lost node that
//!   heart-beats again gets `node_recovered`, and the instances it still
//!   runs that were moved away meanwhile are stopped on it.
//!
//! Several copies may run: appends name the version they were decided on,
//! so two copies never both place the instances one decision wanted.
//!
//! Metrics: `berth_scheduler_pass_seconds` (histogram),
//! `berth_scheduler_instances_placed_total`,
//! `berth_scheduler_verdicts_total{verdict=live|update_failed}` (the
//! decisions this copy made), `berth_scheduler_nodes_declared_lost_total`.

mod autoscale;
mod carry;
mod cluster;
mod compose;
mod config;
mod drive;
mod say;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use berth_domain::node::Command as NodeCommand;
use berth_eventlog::start::{until_available, Retryable};
use berth_eventlog::worker::{Job, WorkError, WorkHandler, WorkerConfig};
use berth_eventlog::EventStore;
use berth_runtime::{BoxError, Component, ComponentContext, ReadyFlag, SecretKey};
use berth_schemas::heartbeat::Heartbeat;
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::{AggregateId, Commit};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use cluster::Cluster;
pub use config::{SchedulerArgs, SchedulerOptions};

/// Why the scheduler could not start or a pass could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Reading or writing the log or the work queue failed (retryable).
    #[error("store: {0}")]
    Store(String),
    /// A NATS request (stream info, subscribe, consumer) failed.
    #[error("nats: {0}")]
    Nats(String),
}

impl SchedulerError {
    fn store(e: impl std::fmt::Display) -> Self {
        Self::Store(e.to_string())
    }

    fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

/// Both kinds are requests to the server that may pass later.
impl Retryable for SchedulerError {
    fn is_retryable(&self) -> bool {
        true
    }
}

pub(crate) struct Inner {
    pub(crate) store: EventStore,
    /// Opens the services' secrets to seal them to the nodes that run them.
    pub(crate) key: Arc<SecretKey>,
    pub(crate) opts: SchedulerOptions,
    pub(crate) cluster: Cluster,
    /// The autoscaled services this copy knows, and their instances' use.
    pub(crate) autoscaler: autoscale::Autoscaler,
    locks: Mutex<HashMap<ServiceId, Arc<tokio::sync::Mutex<()>>>>,
    /// How far each service's drives in this copy have got.
    pub(crate) driven: drive::Driven,
    /// Services with a timer pending, and when it fires.
    timers: Mutex<HashMap<ServiceId, tokio::time::Instant>>,
    /// Nodes whose exhausted work this copy parks (a node may not read the
    /// work stream by sequence, so it does not park its own).
    parking: Mutex<std::collections::HashSet<NodeId>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    me: std::sync::Weak<Inner>,
}

impl Inner {
    fn new(
        store: &EventStore,
        key: &Arc<SecretKey>,
        opts: &SchedulerOptions,
        shutdown: &CancellationToken,
    ) -> Arc<Inner> {
        Arc::new_cyclic(|me| Inner {
            cluster: Cluster::new(store.clone(), opts.heartbeat_timeout, opts.readiness_window),
            autoscaler: autoscale::Autoscaler::new(opts.autoscale, opts.autoscale_every),
            store: store.clone(),
            key: key.clone(),
            opts: opts.clone(),
            locks: Mutex::default(),
            driven: drive::Driven::default(),
            timers: Mutex::default(),
            parking: Mutex::default(),
            tasks: TaskTracker::new(),
            shutdown: shutdown.clone(),
            me: me.clone(),
        })
    }

    /// One pass at a time per service in this copy.
    pub(crate) fn service_lock(&self, service: &ServiceId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(service.clone()).or_default().clone()
    }

    /// Forgets `service`'s lock and how far it was driven, unless another
    /// drive holds or waits on the lock (`lock` is the caller's, held).
    pub(crate) fn forget(&self, service: &ServiceId, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // The map's handle and the caller's: no one else has it.
        if locks
            .get(service)
            .is_some_and(|l| Arc::ptr_eq(l, lock) && Arc::strong_count(l) == 2)
        {
            locks.remove(service);
            self.driven.forget(service);
        }
    }

    /// Drives `service` again after `after`, unless an earlier timer is
    /// already pending for it.
    pub(crate) fn requeue(&self, service: &ServiceId, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        {
            let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            match timers.get(service) {
                Some(pending) if *pending <= at => return,
                _ => {
                    timers.insert(service.clone(), at);
                }
            }
        }
        let Some(me) = self.me.upgrade() else { return };
        let service = service.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = me.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            {
                let mut timers = me.timers.lock().unwrap_or_else(|p| p.into_inner());
                if timers.get(&service) == Some(&at) {
                    timers.remove(&service);
                }
            }
            if let Err(e) = drive::drive(&me, &service, None).await {
                me.failed(&service, &e, "timed pass failed; retrying");
            }
        });
    }
}

impl Inner {
    /// The settings the domain's steps depend on.
    pub(crate) fn timings(&self) -> berth_domain::scheduler::Timings {
        berth_domain::scheduler::Timings {
            pre_deploy_timeout_secs: self.opts.pre_deploy_timeout_secs,
            pre_deploy_grace: self.opts.pre_deploy_grace,
            duplicate_window: self.store.config().duplicate_window,
            drain_delay: self.opts.drain_delay,
            pull_backoff: self.opts.pull_backoff,
        }
    }

    /// A pass over `service` failed: it is tried again soon, unless the
    /// scheduler is stopping (then the store is likely going away too, and
    /// every retry would fail the same way and hold up the shutdown).
    fn failed(&self, service: &ServiceId, e: &SchedulerError, what: &'static str) {
        if self.shutdown.is_cancelled() {
            tracing::debug!(service.id = %service, error = %e, "pass failed while stopping; left to the next start");
            return;
        }
        tracing::warn!(service.id = %service, error = %e, "{what}");
        self.requeue(service, Duration::from_secs(1));
    }
}

/// The scheduler component.
pub struct Scheduler {
    store: EventStore,
    key: Arc<SecretKey>,
    opts: SchedulerOptions,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The scheduler as a component of `berth up` / `berth run scheduler`.
pub fn component(store: EventStore, key: SecretKey, opts: SchedulerOptions) -> Scheduler {
    Scheduler::new(store, key, opts)
}

impl Scheduler {
    /// A scheduler sealing work items' secrets with the installation `key`
    /// opened and sealed again to each item's node.
    pub fn new(store: EventStore, key: SecretKey, opts: SchedulerOptions) -> Self {
        Self {
            store,
            key: Arc::new(key),
            opts,
        }
    }

    /// Schedules until `shutdown`; `ready` is set once the consumer exists
    /// and the first sweep is done.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), SchedulerError> {
        let subjects = self.store.subjects().clone();
        let inner = Inner::new(&self.store, &self.key, &self.opts, &shutdown);
        let heartbeats = self
            .store
            .client()
            .subscribe(subjects.heartbeat())
            .await
            .map_err(SchedulerError::nats)?;
        // The log may be unavailable for a while as this copy starts (a
        // NATS node restarting, a partition healing): wait for it rather
        // than stop, as a pass waits for it.
        let nodes = until_available(&shutdown, "nodes not loaded", || {
            inner.cluster.refresh_nodes()
        });
        if nodes.await?.is_none() {
            return Ok(());
        }
        let cfg = WorkerConfig {
            description: Some("berth scheduler: every service commit drives its service".into()),
            ack_wait: self.opts.ack_wait,
            max_deliver: self.opts.max_deliver,
            concurrency: self.opts.concurrency,
            retry_delay: self.opts.retry_delay,
            ..WorkerConfig::on_stream(
                &self.opts.consumer,
                &subjects.events_stream(),
                &subjects.aggregate_kind("service"),
                // What happened before the consumer existed is the sweep's.
                DeliverPolicy::New,
            )
        };
        let worker = until_available(&shutdown, "consumer not created", || {
            self.store.worker(cfg.clone())
        });
        let Some(worker) = worker.await.map_err(SchedulerError::store)? else {
            return Ok(());
        };
        sweep(&inner).await;
        if let Some(r) = &ready {
            r.set(true);
        }
        tracing::info!(consumer = %self.opts.consumer, "scheduler running");

        let hb = tokio::spawn(listen(inner.clone(), heartbeats, shutdown.clone()));
        let periodic = tokio::spawn(periodic(inner.clone(), shutdown.clone()));
        let autoscaler = tokio::spawn(autoscale::run(inner.clone(), shutdown.clone()));
        if let Err(e) = worker.run(Arc::new(Commits(inner.clone())), shutdown).await {
            tracing::error!(error = %e, "scheduler consumer stopped with an error");
        }
        let _ = hb.await;
        let _ = periodic.await;
        let _ = autoscaler.await;
        inner.tasks.close();
        inner.tasks.wait().await;
        if let Some(r) = &ready {
            r.set(false);
        }
        tracing::info!("scheduler stopped");
        Ok(())
    }
}

impl Component for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move {
            (*self)
                .run(ctx.shutdown.clone(), Some(ctx.ready.clone()))
                .await
                .map_err(|e| Box::new(e) as BoxError)
        })
    }
}

/// Each commit on a service subject drives that service.
struct Commits(Arc<Inner>);

impl WorkHandler for Commits {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let commit = Commit::decode(&job.payload).map_err(|e| WorkError::Fatal(e.to_string()))?;
        let Some(AggregateId::Service(service)) = commit.events.first().map(|e| &e.aggregate)
        else {
            return Ok(());
        };
        drive::drive(&self.0, service, Some(job.stream_seq))
            .instrument(
                tracing::info_span!("drive", service.id = %service, stream.seq = job.stream_seq),
            )
            .await
            .map_err(|e| WorkError::Retry(e.to_string()))?;
        if self.0.shutdown.is_cancelled() {
            // The pass may have been cut short: another copy (or the next
            // start) drives the service again.
            return Err(WorkError::Retry("scheduler stopping".into()));
        }
        Ok(())
    }
}

/// Drives every service (and reloads every node).
async fn sweep(inner: &Arc<Inner>) {
    if let Err(e) = inner.cluster.refresh_nodes().await {
        tracing::warn!(error = %e, "sweep: nodes not reloaded");
    }
    let services = match inner.cluster.list("service").await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sweep: services not listed");
            return;
        }
    };
    let ids: Vec<ServiceId> = services
        .into_iter()
        .filter_map(|a| match a {
            AggregateId::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    drive_all(inner, ids).await;
}

/// Drives `services`, `concurrency` at a time. On shutdown no further
/// service is taken: a sweep over thousands of services would otherwise
/// run on past the grace period (what it has not reached, the next start's
/// sweep does).
async fn drive_all(inner: &Arc<Inner>, services: Vec<ServiceId>) {
    futures::stream::iter(services)
        .take_until(inner.shutdown.cancelled())
        .for_each_concurrent(inner.opts.concurrency, |s| async move {
            if let Err(e) = drive::drive(inner, &s, None).await {
                inner.failed(&s, &e, "pass failed; retrying");
            }
        })
        .await;
}

/// Sweeps every `sweep_interval`; checks for silent nodes more often.
async fn periodic(inner: Arc<Inner>, shutdown: CancellationToken) {
    let check_every = (inner.opts.heartbeat_timeout / 4).max(Duration::from_millis(50));
    let mut check = tokio::time::interval(check_every);
    let mut sweeps = tokio::time::interval(inner.opts.sweep_interval);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of each fires at once; the start-up sweep already ran.
    sweeps.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweeps.tick() => sweep(&inner).await,
            _ = check.tick() => lost_check(&inner).await,
        }
    }
}

/// Declares silent nodes lost and drives the services that had instances there.
async fn lost_check(inner: &Arc<Inner>) {
    for (node, last) in inner.cluster.newly_silent() {
        tracing::warn!(node.id = %node, last_heartbeat = %last, "node silent; declaring it lost");
        metrics::counter!("berth_scheduler_nodes_declared_lost_total").increment(1);
        let key = format!("lost-{node}-{}", last.timestamp_millis());
        if let Err(e) = inner
            .cluster
            .decide_node(
                &node,
                NodeCommand::DeclareLost {
                    last_heartbeat: last,
                },
                &key,
            )
            .await
        {
            tracing::warn!(node.id = %node, error = %e, "node_lost not recorded");
            continue;
        }
        drive_all(inner, inner.cluster.services_on(&node)).await;
    }
}

/// Follows heartbeats: unknown nodes are loaded, lost ones recover.
async fn listen(inner: Arc<Inner>, mut sub: async_nats::Subscriber, shutdown: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let hb: Heartbeat = match serde_json::from_slice(&msg.payload) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "not a heartbeat");
                continue;
            }
        };
        park_exhausted_work(&inner, &hb.node);
        if inner.cluster.heard(&hb.node) {
            recover_or_load(&inner, &hb.node).await;
        }
        for (service, instance) in inner.cluster.orphans(&hb.node, &hb.instances) {
            stop_orphan(&inner, &hb.node, service, instance).await;
        }
    }
}

/// Parks the work `node` ran out of deliveries for, from the first
/// heartbeat on (once per node in this copy; copies share the consumer).
fn park_exhausted_work(inner: &Arc<Inner>, node: &NodeId) {
    let first = inner
        .parking
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(node.clone());
    if !first {
        return;
    }
    let store = inner.store.clone();
    let consumer = berth_schemas::Subjects::node_consumer(node);
    let shutdown = inner.shutdown.clone();
    let node = node.clone();
    inner.tasks.spawn(async move {
        if let Err(e) = store.drain_advisories(&consumer, shutdown).await {
            tracing::warn!(node.id = %node, error = %e, "exhausted work of this node is not parked");
        }
    });
}

/// A node that was lost came back still running an instance the log moved
/// elsewhere (or let go): it is stopped there.
async fn stop_orphan(inner: &Inner, node: &NodeId, service: ServiceId, instance: InstanceId) {
    tracing::info!(node.id = %node, service.id = %service, instance.id = %instance, "stopping an instance a recovered node still runs");
    let work = berth_schemas::commands::NodeWork::StopInstance {
        service: service.clone(),
        instance: instance.clone(),
    };
    let id = format!("stop-{instance}");
    if let Err(e) = drive::enqueue(&inner.store, node, &service, &work, &id).await {
        tracing::warn!(node.id = %node, instance.id = %instance, error = %e, "stop not enqueued");
    }
}

async fn recover_or_load(inner: &Arc<Inner>, node: &NodeId) {
    if let Err(e) = inner.cluster.refresh_node(node).await {
        tracing::warn!(node.id = %node, error = %e, "node not loaded");
        return;
    }
    if inner.cluster.is_recorded_lost(node) {
        tracing::info!(node.id = %node, "lost node heart-beats again");
        let key = format!("recovered-{node}-{}", chrono::Utc::now().timestamp_millis());
        if let Err(e) = inner
            .cluster
            .decide_node(node, NodeCommand::Recover, &key)
            .await
        {
            tracing::warn!(node.id = %node, error = %e, "node_recovered not recorded");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_domain::service::Command;
    use berth_schemas::model::ServiceType;
    use berth_tests::scheduler::World;

    fn remembered(inner: &Inner, service: &ServiceId) -> (bool, usize) {
        let locks = inner.locks.lock().unwrap();
        (locks.contains_key(service), inner.driven.len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_service_leaves_what_a_copy_keeps_per_service() {
        let w = World::start().await;
        let shutdown = CancellationToken::new();
        let inner = Inner::new(
            &w.store,
            &Arc::new(w.key.clone()),
            &SchedulerOptions::default(),
            &shutdown,
        );
        let (svc, _) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
        drive::drive(&inner, &svc, None).await.unwrap();
        assert!(remembered(&inner, &svc).0, "a driven service has its lock");

        // Deleted before anything was placed: nothing of it on nodes.
        w.command(&svc, Command::Delete).await;
        drive::drive(&inner, &svc, None).await.unwrap();
        assert_eq!(
            remembered(&inner, &svc),
            (false, 0),
            "a deleted service with nothing left is forgotten"
        );

        // Another handle on the lock (the test's, held while a drive waits
        // on it) keeps it: a deleted service is not forgotten under it.
        let (other, _) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
        w.command(&other, Command::Delete).await;
        let held = inner.service_lock(&other);
        let guard = held.lock().await;
        let waiting = tokio::spawn({
            let inner = Arc::clone(&inner);
            let other = other.clone();
            async move { drive::drive(&inner, &other, None).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(guard);
        waiting.await.unwrap().unwrap();
        assert!(
            remembered(&inner, &other).0,
            "forgotten while another handle on its lock was held"
        );
        drop(held);
        drive::drive(&inner, &other, None).await.unwrap();
        assert!(!remembered(&inner, &other).0);
        shutdown.cancel();
    }
}

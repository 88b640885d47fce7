//! # berth-notifier: integration stream and notifications
//!
//! Reads the service facts of the log (SPEC §9, §12, §14) as timeline
//! events (the pure mapping to Render's service event types is
//! `berth_domain::timeline`, which the API serves as well) and sends them on
//! two ways, and sends instance logs on a third:
//!
//! - [`stream`]: the integration stream, each timeline event as JSON on
//!   `<prefix>.events.<service id>` for notification bridges (at least once);
//! - [`notify`]: failure (or all) notifications by email, Slack and signed
//!   webhooks, per the owner's default and the service's override, and
//!   every event of the types each of the owner's webhooks (Render's
//!   webhooks API) asks for, one Delivery aggregate per (event, channel)
//!   worked off a durable queue.
//!
//! - [`log_streams`]: every line of an owner's services sent to its TLS
//!   syslog endpoint (Render's log streams).
//!
//! [`component`] builds the `notifier` component running all three.

pub mod channels;
mod config;
pub mod log_streams;
pub mod notify;
pub mod settings;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use berth_eventlog::worker::{Worker, WorkerConfig};
use berth_eventlog::EventStore;
use berth_runtime::{BoxError, Component, ComponentContext, ReadyFlag, SecretKey};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use config::{NotifierArgs, NotifierOptions};

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// Creating a consumer failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
}

/// The notifier component.
#[derive(Debug)]
pub struct Notifier {
    store: EventStore,
    key: SecretKey,
    opts: NotifierOptions,
}

/// The `notifier` component over `store`, opening channel secrets with `key`.
pub fn component(store: EventStore, key: SecretKey, opts: NotifierOptions) -> Notifier {
    Notifier { store, key, opts }
}

impl Notifier {
    /// Publishes the integration stream, decides and delivers notifications
    /// until `shutdown`; `ready` once all three consumers exist.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), NotifierError> {
        let o = &self.opts;
        let publisher = Arc::new(stream::Publisher::new(self.store.clone()));
        // Each consumer waits for a log that cannot answer yet.
        let Some(stream_worker) = publisher
            .worker(&format!("{}-stream", o.consumer), o.ack_wait, &shutdown)
            .await?
        else {
            return Ok(());
        };

        let mut decide_cfg = on_service_facts(
            &self.store,
            &format!("{}-decide", o.consumer),
            "berth notifier: decides notifications",
        );
        decide_cfg.ack_wait = o.ack_wait;
        decide_cfg.max_deliver = 20;
        // In order, as the integration stream: most facts are decided on
        // the spot (not notable), so a commit costs no round trip of its
        // own; a notable one reads its service and owner, and queues its
        // deliveries, before the next is decided.
        decide_cfg.in_order = true;
        let Some(decide_worker) = start_worker(&self.store, decide_cfg, &shutdown).await? else {
            return Ok(());
        };

        let mut deliver_cfg = WorkerConfig::new(notify::QUEUE);
        deliver_cfg.consumer = format!("{}-deliver", o.consumer);
        deliver_cfg.ack_wait = o.ack_wait;
        deliver_cfg.max_deliver = o.max_attempts;
        deliver_cfg.concurrency = o.concurrency;
        deliver_cfg.retry_delay = o.retry_delay;
        deliver_cfg.description = Some("berth notifier: delivers notifications".to_owned());
        let Some(deliver_worker) = start_worker(&self.store, deliver_cfg, &shutdown).await? else {
            return Ok(());
        };
        // Where each webhook send is recorded; without it, sends still go.
        if let Err(e) = self.store.provision_webhook_sends().await {
            tracing::warn!(error = %e, "the webhook sends stream could not be made; sends are not recorded");
        }
        let senders = channels::Senders::new(o.smtp.clone(), o.send_timeout, o.targets)
            .map_err(|e| NotifierError::Client(e.0))?;
        let deliverer = Arc::new(notify::Deliverer::new(
            self.store.clone(),
            self.key.clone(),
            senders,
            o.max_attempts,
            o.retry_delay,
        ));
        let decider = Arc::new(notify::Decider::new(self.store.clone(), o.max_event_age));
        let forwarder = log_streams::Forwarder::new(
            self.store.clone(),
            self.key.clone(),
            o.targets,
            format!("{}-logs", o.consumer),
            LOG_ACK_WAIT,
        )
        .map_err(NotifierError::Client)?;

        if let Some(r) = &ready {
            r.set(true);
        }
        tracing::info!(consumer = %o.consumer, "notifier running");
        let a = tokio::spawn(stream::run(publisher, stream_worker, shutdown.clone()));
        let c = tokio::spawn(forwarder.run(shutdown.clone()));
        let b = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                if let Err(e) = decide_worker.run(decider, shutdown).await {
                    tracing::error!(error = %e, "notification decider stopped");
                }
            }
        });
        if let Err(e) = deliver_worker.run(deliverer, shutdown).await {
            tracing::error!(error = %e, "notification deliverer stopped");
        }
        let _ = a.await;
        let _ = b.await;
        let _ = c.await;
        if let Some(r) = &ready {
            r.set(false);
        }
        tracing::info!("notifier stopped");
        Ok(())
    }
}

/// A durable consumer `consumer` on every service fact of the log, from
/// the first: the integration stream and the decider read the same facts.
fn on_service_facts(store: &EventStore, consumer: &str, description: &str) -> WorkerConfig {
    let s = store.subjects();
    let mut cfg = WorkerConfig::on_stream(
        consumer,
        &s.events_stream(),
        &s.aggregate_kind("service"),
        DeliverPolicy::All,
    );
    cfg.description = Some(description.to_owned());
    cfg
}

/// Creates (or binds to) the consumer of `cfg`, waiting while the log
/// cannot answer; `None` when `shutdown` comes first.
async fn start_worker(
    store: &EventStore,
    cfg: WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Worker>, NotifierError> {
    store
        .worker_at_start(cfg, shutdown)
        .await
        .map_err(|e| NotifierError::Nats(e.to_string()))
}

impl Component for Notifier {
    fn name(&self) -> &'static str {
        "notifier"
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

/// How long a log line sent to a log stream may stay unacknowledged (its
/// connection stalled) before it is delivered again.
const LOG_ACK_WAIT: Duration = Duration::from_secs(60);

/// How long a delivery attempt may take before it counts as failed.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

//! # berth-cron: cron job runs on their 5-field UTC schedules (SPEC §10)
//!
//! Sits beside the scheduler in the event flow: the scheduler runs service
//! instances, this component runs cron jobs' one-off containers. Three parts:
//!
//! - [`view`](mod@view): a projection of every cron job's state (schedule,
//!   live digest, status, active run, the latest schedule time handled) and
//!   every node's capacity, rebuilt from the log and followed live;
//! - [`tick`](mod@tick): at each due time appends `StartCronRun` (the rules
//!   start a run, or record `cron_job_run_skipped` while one is active).
//!   The run id is derived from the service and the due time and the append
//!   carries the same idempotency key, so two copies of this component or a
//!   restart never start one due time twice. **Missed due times while no
//!   cron component ran are not caught up one by one: only the latest one
//!   (within the last day) runs.** It also ends runs that outlived the cap
//!   plus a grace period as `timed_out`, should their node never report;
//! - [`dispatch`](mod@dispatch): a durable consumer on the service subjects
//!   of the log (the log is the work queue, as for the resolver): every
//!   `cron_job_run_started` (scheduled or manual, from any process) becomes a
//!   `RunOnce{purpose: CronRun}` on a placed node with `Nats-Msg-Id` = the
//!   run id, its env values and registry login sealed to that node; every
//!   `cron_job_run_ended` `canceled` becomes a `StopInstance` of the run's
//!   container on every node; an `image_pull_failed` reported by a node for
//!   the active run's digest ends that run `failed`. Services' one-off
//!   jobs (Render's jobs) go the same way: `job_created` becomes a
//!   `RunOnce{purpose: Job}`, `job_ended` `canceled` the stops.
//!
//! The node pulls (manifest fetched on every run, SPEC §8), runs with the
//! timeout (12 h by default) and records the end with the exit code.
//!
//! [`trigger_run`] and [`cancel_run`] are what the API calls: they only
//! append to the service; dispatch does the container side wherever it runs.

mod config;
pub mod dispatch;
/// The schedule grammar lives in the domain, which validates it at create.
pub use berth_domain::schedule;
pub mod tick;
pub mod view;

use std::sync::{Arc, RwLock};

use berth_domain::service;
use berth_domain::DomainError;
use berth_eventlog::projection::{ProjectionOptions, ProjectionRunner};
use berth_eventlog::start::until_available;
use berth_eventlog::{EventStore, ExecuteError, Stamp};
use berth_runtime::{BoxError, Component, ComponentContext, ReadyFlag, SecretKey};
use berth_schemas::ids::{CronRunId, ServiceId};
use berth_schemas::{Actor, AggregateId};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use config::{Clock, CronArgs, CronOptions};
pub use schedule::{Schedule, ScheduleError};
pub use tick::{RUN_NODE_LOST, RUN_UNREPORTED};
pub use view::CronView;

/// Why the cron component stopped or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// The service's rules refused (not a cron job, no live deploy,
    /// suspended, unknown run, …).
    #[error(transparent)]
    Refused(#[from] DomainError),
    /// The log could not be read or written.
    #[error("event store: {0}")]
    Store(String),
    /// Catching up with the log failed.
    #[error("projection: {0}")]
    Projection(#[from] berth_eventlog::projection::ProjectionError),
}

impl From<ExecuteError<DomainError>> for CronError {
    fn from(e: ExecuteError<DomainError>) -> Self {
        match e {
            ExecuteError::Rejected(r) => CronError::Refused(r),
            other => CronError::Store(other.to_string()),
        }
    }
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// An id body derived from `seed`: the same seed always names the same run.
fn derived_body(seed: &str) -> String {
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(20)
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// The run id of `service`'s scheduled run due at `due`.
pub fn scheduled_run_id(
    service: &ServiceId,
    due: chrono::DateTime<chrono::Utc>,
) -> Result<CronRunId, CronError> {
    let seed = format!("{service}@{}", due.to_rfc3339());
    format!("{}-{}", CronRunId::PREFIX, derived_body(&seed))
        .parse()
        .map_err(|e| CronError::Store(format!("derived run id: {e}")))
}

pub use berth_domain::service::run_instance;

/// Runs `command` on `service` (once per `key`) as `actor`, with `cause` as
/// every event's causation id.
async fn decide(
    store: &EventStore,
    service: &ServiceId,
    key: &str,
    command: service::Command,
    actor: &Actor,
    cause: &str,
) -> Result<(), CronError> {
    // A cron run's events belong to the live deploy (the service's rule).
    store
        .execute::<service::Service>(
            &AggregateId::Service(service.clone()),
            key,
            &Stamp::new(actor.clone()).caused_by(cause),
            command,
        )
        .await?;
    Ok(())
}

/// "Trigger run": starts a run of the live digest now, canceling an active
/// one (SPEC §10). Returns the new run's id; the container starts once a
/// cron component dispatches it.
pub async fn trigger_run(
    store: &EventStore,
    service: &ServiceId,
    actor: &Actor,
) -> Result<CronRunId, CronError> {
    let run = CronRunId::generate();
    let command = service::Command::StartCronRun {
        run: run.clone(),
        manual: true,
        scheduled_for: None,
    };
    decide(
        store,
        service,
        &format!("cron-trigger:{run}"),
        command,
        actor,
        &format!("cron-trigger:{run}"),
    )
    .await?;
    Ok(run)
}

/// Cancels `run` (recorded `canceled` at once); its container is stopped
/// by dispatch. Canceling a run that already ended changes nothing.
pub async fn cancel_run(
    store: &EventStore,
    service: &ServiceId,
    run: &CronRunId,
    actor: &Actor,
) -> Result<(), CronError> {
    let command = service::Command::CancelCronRun { run: run.clone() };
    let key = format!("cron-cancel:{run}");
    decide(store, service, &key, command, actor, &key).await
}

/// The cron component.
#[derive(Debug)]
pub struct Cron {
    store: EventStore,
    key: Arc<SecretKey>,
    opts: CronOptions,
}

/// The component, as `berth` builds it.
pub fn component(store: EventStore, key: SecretKey, opts: CronOptions) -> Cron {
    Cron::new(store, key, opts)
}

impl Cron {
    /// A cron component sealing each run's secrets with the installation
    /// `key` opened and sealed again to the run's node.
    pub fn new(store: EventStore, key: SecretKey, opts: CronOptions) -> Self {
        Self {
            store,
            key: Arc::new(key),
            opts,
        }
    }

    /// Catches up with the log, then runs the schedule and dispatch until
    /// `shutdown`; `ready` is set once both run.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), CronError> {
        let runner = ProjectionRunner::new(
            &self.store,
            CronView::default(),
            ProjectionOptions {
                snapshot_key: Some(self.opts.snapshot_key.clone()),
                ..ProjectionOptions::default()
            },
        );
        let view: Arc<RwLock<CronView>> = runner.state();
        let mut applied = runner.applied();
        let target = until_available(&shutdown, "log end not read", || {
            self.store.last_stream_seq()
        });
        let Some(target) = target.await.map_err(|e| CronError::Store(e.to_string()))? else {
            return Ok(());
        };
        let follow = tokio::spawn(runner.run(shutdown.clone()));
        // Nothing is scheduled from a partial view: a due time already run
        // must be seen as run.
        tokio::select! {
            r = applied.wait_for(|s| *s >= target) => {
                r.map_err(|_| CronError::Store("the cron view stopped while catching up".to_owned()))?;
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
        let Some(worker) = dispatch::worker(&self.store, &self.opts, &shutdown).await? else {
            return Ok(());
        };
        let ticks = tokio::spawn(tick::run(
            self.store.clone(),
            Arc::clone(&view),
            self.opts.clone(),
            shutdown.clone(),
        ));
        if let Some(r) = &ready {
            r.set(true);
        }
        tracing::info!(consumer = %self.opts.consumer, "cron running");
        dispatch::serve(
            self.store.clone(),
            self.key.clone(),
            view,
            self.opts.clone(),
            worker,
            shutdown,
        )
        .await;
        let _ = ticks.await;
        match follow.await {
            Ok(Err(e)) => tracing::error!(error = %e, "cron view stopped with an error"),
            Err(e) => tracing::error!(error = %e, "cron view task failed"),
            Ok(Ok(())) => {}
        }
        if let Some(r) = &ready {
            r.set(false);
        }
        tracing::info!("cron stopped");
        Ok(())
    }
}

impl Component for Cron {
    fn name(&self) -> &'static str {
        "cron"
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn run_ids_are_derived_from_service_and_time() {
        let s = ServiceId::generate();
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let a = scheduled_run_id(&s, t).unwrap();
        assert_eq!(a, scheduled_run_id(&s, t).unwrap());
        assert_ne!(
            a,
            scheduled_run_id(&s, t + chrono::Duration::minutes(1)).unwrap()
        );
        assert_ne!(a, scheduled_run_id(&ServiceId::generate(), t).unwrap());
        let i = run_instance(&a);
        assert_eq!(&i.as_str()[4..], &a.as_str()[4..]);
    }
}

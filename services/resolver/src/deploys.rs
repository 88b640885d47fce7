//! Deploy resolution: a durable pull consumer on the event stream, filtered
//! to service subjects. The log itself is the work queue: a
//! `deploy_started` event means "resolve this deploy's image now", so
//! nothing is dual-written to a separate queue and nothing can be lost
//! between the two.
//!
//! Per event: load the service; if the deploy still waits for its digest,
//! resolve its requested image (a pinned digest is HEAD-checked and resolves
//! to itself) with the service's credential, then decide `RecordResolved`
//! or `RecordPullFailed` on the service with the usual optimistic
//! concurrency. Redelivery is harmless: the decision re-checks the state and
//! appends nothing new.
//!
//! The consuming is `berth_eventlog::worker` on a stream source: explicit
//! acks (double ack), progress acks while a resolve runs (it may retry for
//! minutes), bounded redelivery with growing delay, then the event is copied
//! to the `…dlq.resolver` subject and terminated (the log keeps it); bounded
//! concurrency and one resolution per service (subject) at a time.

use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use berth_domain::service::{self, Deploy, ServiceState};
use berth_domain::DomainError;
use berth_eventlog::worker::{Job, WorkError, WorkHandler, Worker, WorkerConfig};
use berth_eventlog::{ExecuteError, Stamp};
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::DeployPhase;
use berth_schemas::{Actor, AggregateId, Commit, Event};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access::{self, AccessError};
use crate::{Inner, ResolverError};

/// The worker over the log's service subjects, from the start of the log;
/// its durable consumer exists once this returns.
/// Waits while the log cannot answer; `None` when `shutdown` comes first.
pub(crate) async fn worker(
    inner: &Inner,
    shutdown: &CancellationToken,
) -> Result<Option<Worker>, ResolverError> {
    let subjects = inner.store.subjects();
    let opts = &inner.opts;
    let cfg = WorkerConfig {
        description: Some(
            "berth resolver: deploy_started → image_resolved / image_pull_failed".to_owned(),
        ),
        ack_wait: opts.ack_wait,
        max_deliver: opts.max_deliver,
        concurrency: opts.concurrency,
        retry_delay: opts.retry_delay,
        // In-flight resolutions finish however long they take; the ack
        // wait hands anything unfinished to the next resolver anyway.
        grace: std::time::Duration::MAX,
        ..WorkerConfig::on_stream(
            &opts.consumer,
            &subjects.events_stream(),
            &subjects.aggregate_kind("service"),
            DeliverPolicy::All,
        )
    };
    inner
        .store
        .worker_at_start(cfg, shutdown)
        .await
        .map_err(|e| ResolverError::Nats(e.to_string()))
}

/// Runs the worker until `shutdown`. A resolve still in flight then (a
/// registry being retried may take minutes) is given up, not waited for:
/// its event is delivered again to the next resolver, and resolving twice
/// records the digest once.
pub(crate) async fn serve(inner: Arc<Inner>, worker: Worker, shutdown: CancellationToken) {
    let handler = Arc::new(Deploys {
        inner,
        shutdown: shutdown.clone(),
    });
    if let Err(e) = worker.run(handler, shutdown).await {
        tracing::error!(error = %e, "resolver worker stopped with an error");
    }
}

/// Handles one commit of a service subject.
struct Deploys {
    inner: Arc<Inner>,
    shutdown: CancellationToken,
}

impl WorkHandler for Deploys {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let work = handle_commit(&self.inner, &job.payload, job.stream_seq)
            .instrument(tracing::info_span!("resolve_event", stream.seq = job.stream_seq, delivered = job.delivered, subject = %job.subject));
        tokio::select! {
            done = work => done,
            _ = self.shutdown.cancelled() => Err(WorkError::Retry(
                "shutting down: resolve given up, delivered again later".to_owned(),
            )),
        }
    }
}

/// Handles the commit at stream sequence `seq`.
async fn handle_commit(inner: &Inner, payload: &[u8], seq: u64) -> Result<(), WorkError> {
    let commit = Commit::decode(payload).map_err(|e| WorkError::Fatal(e.to_string()))?;
    for env in &commit.events {
        let (AggregateId::Service(service), Event::DeployStarted(started)) =
            (&env.aggregate, &env.event)
        else {
            continue;
        };
        resolve_deploy(inner, service, &started.deploy, Some(env.id.as_str()), seq)
            .instrument(tracing::info_span!("resolve_deploy", service.id = %service, deploy.id = %started.deploy))
            .await?;
    }
    Ok(())
}

/// Records one retry on the deploy (best effort: a retry that is not
/// recorded changes nothing but what the deploy's progress shows).
async fn record_retry(
    inner: &Inner,
    aggregate: &AggregateId,
    deploy: &DeployId,
    n: &berth_oci::RetryNotice,
    cause: Option<&str>,
) {
    let retry_at = chrono::Utc::now() + chrono::Duration::from_std(n.wait).unwrap_or_default();
    let command = service::Command::RecordRetrying {
        deploy: deploy.clone(),
        attempt: n.attempt,
        retry_at,
        message: n.message.clone(),
    };
    let stamp = stamp(deploy, cause);
    let done = inner
        .store
        .execute::<service::Service>(
            aggregate,
            &format!("resolve-{deploy}-retry-{}", n.attempt),
            &stamp,
            command,
        )
        .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "retry not recorded on the deploy");
    }
}

/// The resolver's stamp for `deploy`, caused by the event `cause`.
fn stamp(deploy: &DeployId, cause: Option<&str>) -> Stamp {
    let stamp = Stamp::of_deploy(Actor::system("resolver"), Some(deploy.clone()));
    match cause {
        Some(c) => stamp.caused_by(c),
        None => stamp,
    }
}

/// Marks a deploy as being resolved by this copy while it is held (a
/// count: two deliveries of one deploy may be resolving it at once).
struct Resolving<'a> {
    inner: &'a Inner,
    deploy: DeployId,
}

impl Drop for Resolving<'_> {
    fn drop(&mut self) {
        let mut held = self
            .inner
            .resolving
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.deploy) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.deploy);
            }
        }
    }
}

/// Whether this copy is resolving `deploy` now.
pub(crate) fn in_flight(inner: &Inner, deploy: &DeployId) -> bool {
    let held = inner.resolving.lock().unwrap_or_else(|p| p.into_inner());
    held.contains_key(deploy)
}

/// The deploy waits for its digest: running, resolving, nothing recorded.
pub(crate) fn awaits_digest(d: &Deploy) -> bool {
    d.is_running() && d.resolved.is_none() && d.phase == Some(DeployPhase::Resolving)
}

/// Resolves `deploy` of `service`, started by the commit at stream
/// sequence `seen` (or later; 0 from the sweep), the event `cause`.
pub(crate) async fn resolve_deploy(
    inner: &Inner,
    service: &ServiceId,
    deploy: &DeployId,
    cause: Option<&str>,
    seen: u64,
) -> Result<(), WorkError> {
    let _held = {
        let mut held = inner.resolving.lock().unwrap_or_else(|p| p.into_inner());
        *held.entry(deploy.clone()).or_default() += 1;
        Resolving {
            inner,
            deploy: deploy.clone(),
        }
    };
    let aggregate = AggregateId::Service(service.clone());
    let (state, _) = inner
        .store
        .state_holding::<ServiceState, _>(&aggregate, service::fold, seen)
        .await
        .map_err(|e| WorkError::Retry(e.to_string()))?;
    let (Some(d), Some(cfg)) = (state.deploy(deploy), &state.config) else {
        return Ok(());
    };
    if !awaits_digest(d) {
        tracing::debug!("deploy no longer waits for a digest; nothing to do");
        return Ok(());
    }
    // Each retry the registry client makes is recorded on the deploy as
    // it happens, so its progress shows the registry is down and when it
    // is tried again.
    let (notices, mut retries) = tokio::sync::mpsc::unbounded_channel();
    let resolving = berth_oci::watching_retries(
        move |n: &berth_oci::RetryNotice| {
            let _ = notices.send(n.clone());
        },
        access::resolve(
            &inner.store,
            &inner.key,
            &inner.deploy_client,
            &cfg.owner,
            &d.image,
            d.credential.as_ref(),
        ),
    );
    let reporting = async {
        while let Some(n) = retries.recv().await {
            record_retry(inner, &aggregate, deploy, &n, cause).await;
        }
    };
    let (outcome, ()) = tokio::join!(resolving, reporting);
    let command = match outcome {
        Ok(image) => {
            tracing::info!(image = %d.image, digest = %image.digest, index_digest = ?image.index_digest, "image resolved");
            service::Command::RecordResolved {
                deploy: deploy.clone(),
                image,
            }
        }
        Err(AccessError::Failed { reason, message }) => {
            tracing::info!(image = %d.image, reason = %reason, message = %message, "image pull failed");
            service::Command::RecordPullFailed {
                deploy: Some(deploy.clone()),
                node: None,
                image: d.image.clone(),
                reason,
                message,
            }
        }
        Err(AccessError::Store(e)) => return Err(WorkError::Retry(e)),
    };
    let stamp = stamp(deploy, cause);
    let done = inner
        .store
        .execute_when::<service::Service, DomainError>(
            &aggregate,
            &format!("resolve-{deploy}"),
            &stamp,
            |s: &ServiceState| {
                // Decided again on fresh state: a deploy canceled or already
                // resolved meanwhile gets nothing.
                Ok(s.deploy(deploy)
                    .is_some_and(awaits_digest)
                    .then(|| command.clone()))
            },
        )
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(ExecuteError::Rejected(e)) => {
            // The rules refused the fact (e.g. a pinned deploy resolved to
            // another digest): nothing to retry; it is in the log as a warning.
            tracing::warn!(error = %e, "resolution outcome refused by the service rules");
            Ok(())
        }
        Err(e) if e.is_retryable() => Err(WorkError::Retry(e.to_string())),
        Err(e) => Err(WorkError::Fatal(e.to_string())),
    }
}

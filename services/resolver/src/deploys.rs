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
//! Explicit acks (double ack), progress acks while a resolve runs (it may
//! retry for minutes), bounded redelivery with growing delay, then the event
//! is copied to the `…dlq.resolver` subject and terminated; bounded
//! concurrency and one resolution per service at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::AckKind;
use berth_domain::service::{self, Deploy, ServiceState};
use berth_domain::Ctx;
use berth_eventlog::{ExecuteError, NewEvent};
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::DeployPhase;
use berth_schemas::{Actor, AggregateId, Commit, Event};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access::{self, AccessError};
use crate::{Inner, ResolverError};

/// Why handling one event did not complete.
#[derive(Debug)]
enum Outcome {
    /// Try again on a later delivery.
    Retry(String),
    /// Retrying cannot help: dead-letter now.
    Fatal(String),
}

pub(crate) async fn consumer(
    inner: &Inner,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, ResolverError> {
    let subjects = inner.store.subjects();
    inner
        .store
        .jetstream()
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(inner.opts.consumer.clone()),
                description: Some(
                    "berth resolver: deploy_started → image_resolved / image_pull_failed"
                        .to_owned(),
                ),
                filter_subject: subjects.aggregate_kind("service"),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: inner.opts.ack_wait,
                max_deliver: inner.opts.max_deliver,
                max_ack_pending: (inner.opts.concurrency as i64).max(1) * 4,
                ..Default::default()
            },
            subjects.events_stream(),
        )
        .await
        .map_err(|e| ResolverError::Nats(format!("consumer {}: {e}", inner.opts.consumer)))
}

/// Runs the consumer until `shutdown`; in-flight events finish (or are
/// handed back) before it returns.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(inner.opts.concurrency.max(1)));
    let locks = KeyLocks::default();
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        // Fetch only what can start now: nothing waits in a buffer while
        // its ack_wait runs out.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let batch = consumer
            .batch()
            .max_messages(permits.available_permits() + 1)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                drop(first);
                tracing::warn!(error = %e, "resolver fetch failed, retrying");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut first = Some(first);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => None,
                n = batch.next() => n,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "resolver fetch interrupted");
                    break;
                }
                None => break,
            };
            backoff = Duration::from_millis(100);
            let permit = match first.take() {
                Some(p) => p,
                None => match Arc::clone(&permits).acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (inner, locks) = (Arc::clone(&inner), locks.clone());
            tasks.spawn(async move {
                delivery(&inner, &locks, msg).await;
                drop(permit);
            });
        }
    }
    // In-flight resolutions are short against the grace period only when
    // the registry answers; the ack wait hands anything unfinished to the
    // next resolver.
    while tasks.join_next().await.is_some() {}
}

async fn delivery(inner: &Inner, locks: &KeyLocks, msg: async_nats::jetstream::Message) {
    let (stream_seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let subject = msg.subject.to_string();
    let span = tracing::info_span!("resolve_event", stream.seq = stream_seq, delivered, subject = %subject);
    let work = async {
        let lock = locks.lock_for(&subject);
        let guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let out = handle_commit(inner, &msg.payload).await;
        drop(guard);
        drop(lock);
        locks.release(&subject);
        out
    };
    tokio::pin!(work);
    let every = (inner.opts.ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let outcome = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(parent: &span, error = %e, "progress ack failed");
                }
            }
        }
    };
    match outcome {
        Ok(()) => {
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(parent: &span, error = %e, "ack not confirmed; the event may be handled again (harmless)");
            }
        }
        Err(Outcome::Retry(why)) if delivered < inner.opts.max_deliver => {
            tracing::warn!(parent: &span, error = %why, "resolution failed, will be redelivered");
            let delay = inner.opts.retry_delay * u32::try_from(delivered.max(1)).unwrap_or(1);
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(Outcome::Retry(why) | Outcome::Fatal(why)) => {
            dead_letter(inner, &msg, stream_seq, delivered, &why, &span).await;
        }
    }
}

async fn handle_commit(inner: &Inner, payload: &[u8]) -> Result<(), Outcome> {
    let commit = Commit::decode(payload).map_err(|e| Outcome::Fatal(e.to_string()))?;
    for env in &commit.events {
        let (AggregateId::Service(service), Event::DeployStarted(started)) =
            (&env.aggregate, &env.event)
        else {
            continue;
        };
        resolve_deploy(inner, service, &started.deploy, env.id.as_str())
            .instrument(tracing::info_span!("resolve_deploy", service.id = %service, deploy.id = %started.deploy))
            .await?;
    }
    Ok(())
}

/// The deploy waits for its digest: running, resolving, nothing recorded.
fn awaits_digest(d: &Deploy) -> bool {
    d.is_running() && d.resolved.is_none() && d.phase == Some(DeployPhase::Resolving)
}

async fn resolve_deploy(
    inner: &Inner,
    service: &ServiceId,
    deploy: &DeployId,
    cause: &str,
) -> Result<(), Outcome> {
    let aggregate = AggregateId::Service(service.clone());
    let loaded = inner
        .store
        .load(&aggregate)
        .await
        .map_err(|e| Outcome::Retry(e.to_string()))?;
    let state = loaded
        .events
        .iter()
        .fold(ServiceState::default(), service::fold);
    let (Some(d), Some(cfg)) = (state.deploy(deploy), &state.config) else {
        return Ok(());
    };
    if !awaits_digest(d) {
        tracing::debug!("deploy no longer waits for a digest; nothing to do");
        return Ok(());
    }
    let outcome = access::resolve(
        &inner.store,
        &inner.key,
        &inner.deploy_client,
        &cfg.owner,
        &d.image,
        d.credential.as_ref(),
    )
    .await;
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
        Err(AccessError::Store(e)) => return Err(Outcome::Retry(e)),
    };
    let actor = Actor::system("resolver");
    let done = inner
        .store
        .execute(
            &aggregate,
            &format!("resolve-{deploy}"),
            service::fold,
            |s: &ServiceState| {
                // Decided again on fresh state: a deploy canceled or already
                // resolved meanwhile gets nothing.
                if !s.deploy(deploy).is_some_and(awaits_digest) {
                    return Ok(vec![]);
                }
                service::decide(s, command.clone(), &Ctx::default()).map(|events| {
                    events
                        .into_iter()
                        .map(|e| {
                            let corr = service::deploy_of(&e)
                                .cloned()
                                .unwrap_or_else(|| deploy.clone());
                            NewEvent::new(e, actor.clone())
                                .correlated(corr)
                                .caused_by(cause)
                        })
                        .collect()
                })
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
        Err(e) if e.is_retryable() => Err(Outcome::Retry(e.to_string())),
        Err(e) => Err(Outcome::Fatal(e.to_string())),
    }
}

async fn dead_letter(
    inner: &Inner,
    msg: &async_nats::jetstream::Message,
    stream_seq: u64,
    delivered: i64,
    why: &str,
    span: &tracing::Span,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Berth-Dead-Subject", msg.subject.as_str());
    headers.insert("Berth-Dead-Stream-Seq", stream_seq.to_string().as_str());
    headers.insert("Berth-Dead-Deliveries", delivered.to_string().as_str());
    headers.insert("Berth-Dead-Reason", why.replace(['\r', '\n'], " ").as_str());
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dlq-{}-{stream_seq}", inner.opts.consumer).as_str(),
    );
    let publish = PublishMessage::build()
        .payload(msg.payload.clone())
        .headers(headers);
    let subject = inner.store.subjects().dead_letter(&inner.opts.consumer);
    let sent = match inner.store.jetstream().send_publish(subject, publish).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(()) => {
            tracing::error!(parent: span, error = %why, "event dead-lettered");
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                tracing::warn!(parent: span, error = %e, "term failed");
            }
        }
        Err(e) => {
            tracing::error!(parent: span, error = %e, "dead-letter publish failed; nak");
            let _ = msg
                .ack_with(AckKind::Nak(Some(inner.opts.retry_delay)))
                .await;
        }
    }
}

/// One lock per service subject; entries go when nobody holds or waits.
#[derive(Debug, Clone, Default)]
struct KeyLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl KeyLocks {
    fn lock_for(&self, key: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut map = self.0.lock().ok()?;
        Some(Arc::clone(map.entry(key.to_owned()).or_default()))
    }

    fn release(&self, key: &str) {
        if let Ok(mut map) = self.0.lock() {
            if map.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(key);
            }
        }
    }
}

//! Parking jobs on the dead-letter subject, by two roads.
//!
//! The worker parks a job itself when its handler gives up on the last
//! allowed delivery. That road misses jobs whose worker died during the
//! last delivery, or whose dead-letter publish failed then: the server
//! will not deliver them again and, on a work-queue stream, keeps them
//! forever. For those the server announces a max-deliveries advisory
//! (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`).
//! Advisories are plain NATS messages, lost when nobody listens, so the
//! store captures them in a stream of their own ([`advisory_stream`]) and
//! every worker drains its consumer's advisories from a durable consumer:
//! a job exhausted while no worker ran is parked when one starts.
//!
//! Both roads publish with the same `Nats-Msg-Id` (consumer + work-stream
//! sequence), so a job parked by both appears once; the advisory road then
//! deletes the job from the work stream.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use berth_schemas::Subjects;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{EventStore, StoreError};

/// The stream that keeps the work stream's max-deliveries advisories.
pub(crate) fn advisory_stream(subjects: &Subjects) -> String {
    subjects.work_advisory_stream()
}

/// Advisory subject for one consumer of the work stream (`*` for all).
pub(crate) fn advisory_subject(subjects: &Subjects, consumer: &str) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{consumer}",
        subjects.work_stream()
    )
}

/// The stream config that captures the advisories. Work-queue retention:
/// an advisory is gone once handled; each worker consumer filters on its
/// own consumer name, so the filters never overlap.
pub(crate) fn advisory_stream_config(subjects: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: advisory_stream(subjects),
        subjects: vec![advisory_subject(subjects, "*")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: replicas,
        description: Some("berth work items that ran out of deliveries unparked".to_owned()),
        ..Default::default()
    }
}

/// What a dead letter carries besides the job itself.
pub(crate) struct DeadLetter<'a> {
    pub consumer: &'a str,
    pub subject: &'a str,
    pub stream_seq: u64,
    pub deliveries: i64,
    pub reason: &'a str,
}

/// Publishes a job to the dead-letter subject and waits for the ack.
pub(crate) async fn publish(
    store: &EventStore,
    dead: &DeadLetter<'_>,
    headers: Option<HeaderMap>,
    payload: Bytes,
) -> Result<(), String> {
    let mut headers = headers.unwrap_or_default();
    headers.insert("Berth-Dead-Subject", dead.subject);
    headers.insert(
        "Berth-Dead-Stream-Seq",
        dead.stream_seq.to_string().as_str(),
    );
    headers.insert(
        "Berth-Dead-Deliveries",
        dead.deliveries.to_string().as_str(),
    );
    headers.insert(
        "Berth-Dead-Reason",
        dead.reason.replace(['\r', '\n'], " ").as_str(),
    );
    // The same id on both roads: parked once even if both park it.
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dlq-{}-{}", dead.consumer, dead.stream_seq).as_str(),
    );
    let publish = PublishMessage::build().payload(payload).headers(headers);
    store
        .js
        .send_publish(store.subjects.dead_letter(dead.consumer), publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The fields of a max-deliveries advisory we use.
#[derive(Debug, serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: i64,
}

/// Drains `consumer`'s max-deliveries advisories until `shutdown`: each
/// exhausted job still in the work stream is published to the dead-letter
/// subject, then deleted from the work stream.
pub(crate) async fn run_advisories(
    store: EventStore,
    consumer: String,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let advisories = store
        .js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(format!("{consumer}-maxdeliver")),
                filter_subject: advisory_subject(&store.subjects, &consumer),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
            advisory_stream(&store.subjects),
        )
        .await
        .map_err(|e| {
            StoreError::provision(
                &format!("consumer {consumer}-maxdeliver"),
                crate::error::consumer_request_transient(&e),
                &e,
            )
        })?;
    let work = store
        .js
        .get_stream(store.subjects.work_stream())
        .await
        .map_err(|e| StoreError::Request(e.to_string()))?;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut messages = match advisories.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %consumer, error = %e, "advisory fetch failed, retrying");
                tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = messages.next() => n,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(consumer = %consumer, error = %e, "advisory stream interrupted");
                    break;
                }
                None => break,
            };
            backoff = Duration::from_millis(100);
            let ack = match park_exhausted(&store, &work, &consumer, &msg.payload).await {
                Ok(()) => AckKind::Ack,
                Err(e) => {
                    tracing::error!(consumer = %consumer, error = %e, "parking an exhausted job failed; will retry");
                    AckKind::Nak(Some(Duration::from_secs(1)))
                }
            };
            if let Err(e) = msg.ack_with(ack).await {
                tracing::warn!(consumer = %consumer, error = %e, "advisory ack failed");
            }
        }
    }
    Ok(())
}

async fn park_exhausted(
    store: &EventStore,
    work: &stream::Stream,
    consumer: &str,
    advisory: &[u8],
) -> Result<(), String> {
    let adv: MaxDeliveries = match serde_json::from_slice(advisory) {
        Ok(a) => a,
        Err(e) => {
            // Retrying cannot fix it; keep the loop going.
            tracing::error!(consumer = %consumer, error = %e, "unreadable max-deliveries advisory dropped");
            return Ok(());
        }
    };
    let job = match work.get_raw_message(adv.stream_seq).await {
        Ok(m) => m,
        // Acked, or parked and deleted by another copy of the worker.
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(e) => return Err(format!("reading work item {}: {e}", adv.stream_seq)),
    };
    let dead = DeadLetter {
        consumer,
        subject: job.subject.as_str(),
        stream_seq: adv.stream_seq,
        deliveries: adv.deliveries,
        reason:
            "max deliveries reached without a result (worker lost or dead-letter publish failed)",
    };
    publish(store, &dead, Some(job.headers.clone()), job.payload.clone()).await?;
    tracing::error!(consumer = %consumer, stream.seq = adv.stream_seq, deliveries = adv.deliveries, "exhausted job dead-lettered from its advisory");
    match work.delete_message(adv.stream_seq).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // Parked already (the id dedupes a retry); a leftover copy in
            // the work stream is never delivered again.
            tracing::warn!(consumer = %consumer, stream.seq = adv.stream_seq, error = %e, "deleting the parked job failed");
            Ok(())
        }
    }
}

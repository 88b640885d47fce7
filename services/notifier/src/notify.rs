//! Deciding and delivering notifications (SPEC §9).
//!
//! [`Decider`] follows the log's service subjects with a durable consumer.
//! For each notable timeline event it reads the service's override and the
//! owner's default and channels; for each channel the setting allows it
//! records `notification_queued` on a Delivery aggregate whose id is derived
//! from (event id, channel) — so a redelivered event queues nothing new —
//! and puts a job keyed by that id on the `notify` work queue.
//!
//! [`Deliverer`] works that queue with explicit acks, many deliveries at
//! once and one key per delivery, so a dead endpoint holds only its own
//! deliveries. Each attempt opens the channel's secrets in memory, sends
//! with the delivery id as `webhook-id` / Message-ID, and records the
//! outcome (`notification_delivered`, `notification_attempt_failed`, and
//! `notification_abandoned` after the last). A crash between send and ack
//! sends again with the same id: receivers see one delivery or the same id
//! twice (docs/integration.md).

use std::sync::Arc;

use berth_domain::delivery::{self, Delivery, DeliveryState};
use berth_domain::Aggregate;
use berth_eventlog::worker::{Job, WorkError, WorkHandler};
use berth_eventlog::{EventStore, Stamp, Version};
use berth_runtime::SecretKey;
use berth_schemas::events::NotificationQueued;
use berth_schemas::ids::{DeliveryId, OwnerId, ServiceId};
use berth_schemas::model::seal_context;
use berth_schemas::{Actor, AggregateId, Commit, Envelope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::channels::Senders;
use crate::settings::{self, Channel, OwnerNotify, ServiceNotify};
use berth_domain::timeline::TimelineEvent;

/// The work queue deliveries go through.
pub const QUEUE: &str = "notify";

fn actor() -> Actor {
    Actor::system("notifier")
}

/// The stable id of the delivery of `event` to `channel`.
pub fn delivery_id(event_id: &str, channel: Channel) -> Option<DeliveryId> {
    let hash = Sha256::digest(format!("{event_id}:{}", channel.as_str()).as_bytes());
    let body = data_encoding::BASE32_NOPAD
        .encode(&hash)
        .to_ascii_lowercase();
    format!("ntf-{}", body.get(..20)?).parse().ok()
}

/// A delivery job: what to send; never a secret (those are read at send time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryJob {
    /// The delivery (and `webhook-id`).
    pub delivery: DeliveryId,
    /// `email`, `slack` or `webhook`.
    pub channel: String,
    /// Whose channels.
    pub owner: OwnerId,
    /// What happened.
    pub event: TimelineEvent,
}

/// Decides which notifications a service event causes.
#[derive(Debug, Clone)]
pub struct Decider {
    store: EventStore,
    max_age: chrono::Duration,
}

/// Whether an event is too old to notify about: a notifier started on an
/// installation with history, or back after a long outage, does not page
/// anyone about the distant past (the timeline still has it).
pub fn too_old(
    event: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    max_age: chrono::Duration,
) -> bool {
    now - event > max_age
}

impl Decider {
    /// A decider on `store`, ignoring events older than `max_age`.
    pub fn new(store: EventStore, max_age: std::time::Duration) -> Self {
        let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        Self { store, max_age }
    }

    /// Queues the deliveries for one timeline event, of the commit at
    /// stream sequence `seen`; returns how many. The service is read at
    /// least that far: a copy of the log that is behind (a server that
    /// rejoined after a partition) may not have the service yet, and the
    /// notification would be dropped as one for a service with no owner.
    pub async fn decide(&self, event: &TimelineEvent, seen: u64) -> Result<usize, WorkError> {
        if !event.is_notable() {
            return Ok(0);
        }
        if too_old(event.timestamp, chrono::Utc::now(), self.max_age) {
            tracing::info!(event = %event.id, event_type = %event.kind, "too old to notify about");
            return Ok(0);
        }
        let Ok(service) = event.service_id.parse::<ServiceId>() else {
            return Ok(0);
        };
        let (svc, _) = self
            .store
            .state_holding(
                &AggregateId::Service(service.clone()),
                ServiceNotify::fold,
                seen,
            )
            .await
            .map_err(|e| WorkError::Retry(e.to_string()))?;
        let Some(owner_id) = svc.owner.clone() else {
            return Ok(0);
        };
        let owner = load_owner(&self.store, &owner_id).await?;
        let setting = settings::effective(&svc, &owner);
        if !settings::sends(setting, event.is_failure()) {
            tracing::debug!(service = %service, event_type = %event.kind, ?setting, "not notified");
            return Ok(0);
        }
        let mut queued = 0;
        for channel in owner.channels() {
            let Some(delivery) = delivery_id(&event.id, channel) else {
                continue;
            };
            let queued_event = NotificationQueued {
                owner: owner_id.clone(),
                service: service.clone(),
                channel: channel.as_str().to_owned(),
                source_event: event.id.clone(),
            };
            // Queued before (this event redelivered): nothing is recorded
            // and it is enqueued again below; the delivery's own history
            // keeps it to one success.
            self.store
                .execute::<Delivery>(
                    &AggregateId::Delivery(delivery.clone()),
                    &format!("queue:{delivery}"),
                    &Stamp::new(actor()).caused_by(event.id.clone()),
                    delivery::Command::Queue(queued_event),
                )
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            let job = DeliveryJob {
                delivery: delivery.clone(),
                channel: channel.as_str().to_owned(),
                owner: owner_id.clone(),
                event: event.clone(),
            };
            let payload = serde_json::to_vec(&job).map_err(|e| WorkError::Fatal(e.to_string()))?;
            self.store
                .enqueue(QUEUE, delivery.as_str(), payload.into(), delivery.as_str())
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            tracing::info!(delivery = %delivery, channel = channel.as_str(), service = %service, event_type = %event.kind, "notification queued");
            queued += 1;
        }
        Ok(queued)
    }
}

impl WorkHandler for Decider {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let Ok(commit) = Commit::decode(&job.payload) else {
            return Ok(());
        };
        for env in &commit.events {
            if let Some(t) = TimelineEvent::from_envelope(env) {
                self.decide(&t, job.stream_seq).await?;
            }
        }
        Ok(())
    }
}

async fn load_owner(store: &EventStore, owner: &OwnerId) -> Result<OwnerNotify, WorkError> {
    load_fold(store, AggregateId::Owner(owner.clone()), OwnerNotify::fold).await
}

/// `aggregate`'s events folded by `fold` from the default (a failed read is
/// retried: the server may be back soon).
async fn load_fold<S: Default + Clone + Send + Sync + 'static>(
    store: &EventStore,
    aggregate: AggregateId,
    fold: impl Fn(S, &Envelope) -> S,
) -> Result<S, WorkError> {
    let (state, _) = store
        .state(&aggregate, fold)
        .await
        .map_err(|e| WorkError::Retry(e.to_string()))?;
    Ok(S::clone(&state))
}

/// Sends queued deliveries.
#[derive(Debug)]
pub struct Deliverer {
    store: EventStore,
    key: SecretKey,
    senders: Senders,
    max_attempts: i64,
}

impl Deliverer {
    /// A deliverer giving up after `max_attempts` deliveries of a job.
    pub fn new(store: EventStore, key: SecretKey, senders: Senders, max_attempts: i64) -> Self {
        Self {
            store,
            key,
            senders,
            max_attempts,
        }
    }

    /// Records an attempt's outcome at the version the attempt was decided
    /// on (`state`).
    async fn record(
        &self,
        delivery: &DeliveryId,
        state: (Arc<DeliveryState>, Version),
        command: delivery::Command,
        key: String,
    ) {
        let aggregate = AggregateId::Delivery(delivery.clone());
        let done = self
            .store
            .execute_on::<Delivery>(&aggregate, state, &key, &Stamp::new(actor()), command)
            .await;
        if let Err(e) = done {
            // The send's outcome is what matters; a lost record only makes
            // the history shorter (a redelivery records it again).
            tracing::warn!(delivery = %delivery, error = %e, "could not record the delivery outcome");
        }
    }

    async fn send(&self, job: &DeliveryJob) -> Result<(), crate::channels::SendError> {
        use crate::channels::SendError;
        let owner = load_owner(&self.store, &job.owner)
            .await
            .map_err(|e| SendError(e.to_string()))?;
        let open = |sealed: &Option<berth_schemas::model::Sealed>, field: &str| {
            sealed
                .as_ref()
                .map(|s| {
                    self.key
                        .open(s, &seal_context::notification(&job.owner, field))
                })
                .transpose()
                .map_err(|_| SendError(format!("cannot open the sealed {field}")))
        };
        match Channel::parse(&job.channel) {
            Some(Channel::Email) => {
                let to = owner
                    .email
                    .ok_or_else(|| SendError("email channel removed".to_owned()))?;
                self.senders
                    .email(&to, job.delivery.as_str(), &job.event)
                    .await
            }
            Some(Channel::Slack) => {
                let url = open(&owner.slack_webhook_url, "slack_webhook_url")?
                    .ok_or_else(|| SendError("slack channel removed".to_owned()))?;
                self.senders.slack(&url, &job.event).await
            }
            Some(Channel::Webhook) => {
                let url = open(&owner.webhook_url, "webhook_url")?
                    .ok_or_else(|| SendError("webhook channel removed".to_owned()))?;
                let secret = open(&owner.webhook_secret, "webhook_secret")?;
                self.senders
                    .webhook(&url, secret.as_ref(), job.delivery.as_str(), &job.event)
                    .await
            }
            None => Err(SendError(format!("unknown channel {}", job.channel))),
        }
    }
}

impl WorkHandler for Deliverer {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let dj: DeliveryJob = match serde_json::from_slice(&job.payload) {
            Ok(j) => j,
            Err(e) => return Err(WorkError::Fatal(format!("bad delivery job: {e}"))),
        };
        let aggregate = AggregateId::Delivery(dj.delivery.clone());
        let loaded = self
            .store
            .state(&aggregate, Delivery::fold)
            .await
            .map_err(|e| WorkError::Retry(e.to_string()))?;
        let state = *loaded.0;
        if state.done {
            return Ok(());
        }
        let attempt = state.failed_attempts + 1;
        let started = std::time::Instant::now();
        match self.send(&dj).await {
            Ok(()) => {
                tracing::info!(delivery = %dj.delivery, channel = %dj.channel, attempt, elapsed_ms = started.elapsed().as_millis() as u64, "notification delivered");
                self.record(
                    &dj.delivery,
                    loaded,
                    delivery::Command::RecordDelivered { attempt },
                    format!("delivered:{}", dj.delivery),
                )
                .await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(delivery = %dj.delivery, channel = %dj.channel, attempt, error = %e, "notification attempt failed");
                let last = job.delivered >= self.max_attempts;
                let command = delivery::Command::RecordFailed {
                    attempt,
                    error: e.0.clone(),
                    abandon: last,
                };
                self.record(
                    &dj.delivery,
                    loaded,
                    command,
                    format!("failed:{}:{}", dj.delivery, job.delivered),
                )
                .await;
                if last {
                    Err(WorkError::Fatal(e.0))
                } else {
                    Err(WorkError::Retry(e.0))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_per_event_and_channel() {
        let a = delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", Channel::Webhook);
        assert!(a.is_some());
        assert_eq!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", Channel::Webhook));
        assert_ne!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", Channel::Slack));
        assert_ne!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaab", Channel::Webhook));
    }

    #[test]
    fn old_events_are_not_notified() {
        let now = chrono::Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(!too_old(now - chrono::Duration::minutes(59), now, hour));
        assert!(too_old(now - chrono::Duration::minutes(61), now, hour));
    }
}

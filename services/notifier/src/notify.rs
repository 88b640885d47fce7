//! Deciding and delivering notifications (SPEC §9).
//!
//! [`Decider`] follows the log's service subjects with a durable consumer.
//! For each timeline event it reads the service and its owner: each of the
//! owner's webhooks that asks for the event's type is a channel
//! (`hook:whk-…`), and for a notable event so is each of the owner's
//! notification channels its setting allows (the service's override, else
//! the owner's default). For each channel it records `notification_queued`
//! on a Delivery aggregate whose id is derived from (event id, channel) —
//! so a redelivered event queues nothing new — and puts a job keyed by that
//! id on the `notify` work queue. The webhooks are the owner's as the log
//! has them when the event is decided: one created a moment after an event
//! may still get it, one deleted a moment after may not.
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
use berth_schemas::ids::{DeliveryId, OwnerId, ServiceId, WebhookId};
use berth_schemas::model::seal_context;
use berth_schemas::webhooks::WebhookSend;
use berth_schemas::{Actor, AggregateId, Commit, Envelope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::channels::{SendError, Senders};
use crate::settings::{self, Channel, OwnerNotify, ServiceNotify};
use berth_domain::timeline::TimelineEvent;

/// The work queue deliveries go through.
pub const QUEUE: &str = "notify";

fn actor() -> Actor {
    Actor::system("notifier")
}

/// How a delivery to one of the owner's webhooks names its channel:
/// `hook:whk-…`.
pub const HOOK: &str = "hook:";

/// The stable id of the delivery of `event` on `channel` (a
/// [`Channel`]'s name, or [`HOOK`] and a webhook id).
pub fn delivery_id(event_id: &str, channel: &str) -> Option<DeliveryId> {
    let hash = Sha256::digest(format!("{event_id}:{channel}").as_bytes());
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
    /// `email`, `slack`, `webhook`, or `hook:whk-…` (one of the owner's
    /// webhooks).
    pub channel: String,
    /// Whose channels.
    pub owner: OwnerId,
    /// What happened.
    pub event: TimelineEvent,
    /// The service's name when it happened (webhooks' `serviceName`).
    #[serde(default)]
    pub service_name: String,
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
        if too_old(event.timestamp, chrono::Utc::now(), self.max_age) {
            if event.is_notable() {
                tracing::info!(event = %event.id, event_type = %event.kind, "too old to notify about");
            }
            return Ok(0);
        }
        let Ok(service) = event.service_id.parse::<ServiceId>() else {
            return Ok(0);
        };
        // Read from the log for every event, not kept from the commits
        // this decider handles: holding this commit proves the copy of the
        // log that answered is not behind it, so the owner read next (its
        // webhooks and channels) is not one from before them either.
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
        let target = Target {
            owner: &owner_id,
            service: &service,
            service_name: &svc.name,
            event,
        };
        let mut queued = 0;
        // The owner's webhooks: every event of a type each asks for.
        for (id, hook) in &owner.webhooks {
            if hook.wants(&event.kind) {
                self.queue(&target, &format!("{HOOK}{id}")).await?;
                queued += 1;
            }
        }
        if !event.is_notable() {
            return Ok(queued);
        }
        let setting = settings::effective(&svc, &owner);
        if !settings::sends(setting, event.is_failure()) {
            tracing::debug!(service = %service, event_type = %event.kind, ?setting, "not notified");
            return Ok(queued);
        }
        for channel in owner.channels() {
            self.queue(&target, channel.as_str()).await?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Records `notification_queued` for the delivery of `t.event` on
    /// `channel` (once: a redelivered event records nothing and enqueues
    /// it again; the delivery's own history keeps it to one success) and
    /// puts it on the queue.
    async fn queue(&self, t: &Target<'_>, channel: &str) -> Result<(), WorkError> {
        let Some(delivery) = delivery_id(&t.event.id, channel) else {
            return Ok(());
        };
        let queued_event = NotificationQueued {
            owner: t.owner.clone(),
            service: t.service.clone(),
            channel: channel.to_owned(),
            source_event: t.event.id.clone(),
        };
        self.store
            .execute::<Delivery>(
                &AggregateId::Delivery(delivery.clone()),
                &format!("queue:{delivery}"),
                &Stamp::new(actor()).caused_by(t.event.id.clone()),
                delivery::Command::Queue(queued_event),
            )
            .await
            .map_err(|e| WorkError::Retry(e.to_string()))?;
        let job = DeliveryJob {
            delivery: delivery.clone(),
            channel: channel.to_owned(),
            owner: t.owner.clone(),
            event: t.event.clone(),
            service_name: t.service_name.to_owned(),
        };
        let payload = serde_json::to_vec(&job).map_err(|e| WorkError::Fatal(e.to_string()))?;
        self.store
            .enqueue(QUEUE, delivery.as_str(), payload.into(), delivery.as_str())
            .await
            .map_err(|e| WorkError::Retry(e.to_string()))?;
        tracing::info!(delivery = %delivery, channel, service = %t.service, event_type = %t.event.kind, "notification queued");
        Ok(())
    }
}

/// What a delivery is queued about.
struct Target<'a> {
    owner: &'a OwnerId,
    service: &'a ServiceId,
    service_name: &'a str,
    event: &'a TimelineEvent,
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
    retry_delay: std::time::Duration,
}

/// How long a webhook's delivery waits after its `attempt`th failed: the
/// notifier's retry delay times 4, 16, … (with the default 15 s the eighth
/// attempt comes about 23 hours after the first, as Render spreads its
/// own over about a day), so a receiver down for hours still gets it.
pub fn hook_backoff(retry_delay: std::time::Duration, attempt: i64) -> std::time::Duration {
    let exp = u32::try_from(attempt.clamp(1, 12) - 1).unwrap_or(0);
    retry_delay.saturating_mul(4u32.saturating_pow(exp))
}

impl Deliverer {
    /// A deliverer giving up after `max_attempts` deliveries of a job;
    /// a webhook's delivery waits [`hook_backoff`] of `retry_delay` between
    /// attempts (notifications wait the worker's own delay).
    pub fn new(
        store: EventStore,
        key: SecretKey,
        senders: Senders,
        max_attempts: i64,
        retry_delay: std::time::Duration,
    ) -> Self {
        Self {
            store,
            key,
            senders,
            max_attempts,
            retry_delay,
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

impl Deliverer {
    /// Sends the event to the owner's webhook `hook` and records what its
    /// receiver answered; `Ok(false)` when the webhook is gone or turned
    /// off (nothing sent), an error when it did not take it (2xx).
    async fn send_hook(&self, job: &DeliveryJob, hook: &str) -> Result<bool, SendError> {
        let Ok(id) = hook.parse::<WebhookId>() else {
            return Ok(false);
        };
        let owner = load_owner(&self.store, &job.owner)
            .await
            .map_err(|e| SendError(e.to_string()))?;
        let Some(h) = owner.webhooks.get(&id).filter(|h| h.enabled) else {
            return Ok(false);
        };
        let open = |sealed, field| {
            self.key
                .open(sealed, &seal_context::webhook(&job.owner, &id, field))
                .map_err(|_| SendError(format!("cannot open the sealed webhook {field}")))
        };
        let (url, secret) = (open(&h.url, "url")?, open(&h.secret, "secret")?);
        let body = crate::channels::render_body(&job.event, &job.service_name);
        let sent_at = chrono::Utc::now();
        let answer = self
            .senders
            .to_webhook(&url, &secret, job.delivery.as_str(), body)
            .await;
        let record = WebhookSend {
            id: job.delivery.to_string(),
            event_id: job.event.id.clone(),
            event_type: job.event.kind.clone(),
            sent_at,
            status_code: answer.as_ref().ok().map(|a| a.status),
            response_body: answer.as_ref().ok().map(|a| a.body.clone()),
            error: answer.as_ref().err().map(|e| e.0.clone()),
        };
        if let Err(e) = self
            .store
            .record_webhook_send(&job.owner, &id, &record)
            .await
        {
            // The send happened; only its line in the webhook's history is lost.
            tracing::warn!(webhook = %id, error = %e, "could not record a webhook send");
        }
        match answer {
            Ok(a) if a.taken() => Ok(true),
            Ok(a) => Err(SendError(format!("endpoint answered {}", a.status))),
            Err(e) => Err(e),
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
        let sent = match dj.channel.strip_prefix(HOOK) {
            Some(hook) => self.send_hook(&dj, hook).await,
            None => self.send(&dj).await.map(|()| true),
        };
        match sent {
            Ok(false) => {
                tracing::info!(delivery = %dj.delivery, channel = %dj.channel, "webhook deleted or turned off; not sent");
                self.record(
                    &dj.delivery,
                    loaded,
                    delivery::Command::RecordFailed {
                        attempt,
                        error: "the webhook was deleted or turned off".to_owned(),
                        abandon: true,
                    },
                    format!("gone:{}", dj.delivery),
                )
                .await;
                Ok(())
            }
            Ok(true) => {
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
                } else if dj.channel.starts_with(HOOK) {
                    let after = hook_backoff(self.retry_delay, job.delivered);
                    Err(WorkError::RetryAfter(after, e.0))
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
        let a = delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", "webhook");
        assert!(a.is_some());
        assert_eq!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", "webhook"));
        assert_ne!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", "slack"));
        assert_ne!(a, delivery_id("evt-aaaaaaaaaaaaaaaaaaab", "webhook"));
        assert_ne!(
            a,
            delivery_id("evt-aaaaaaaaaaaaaaaaaaaa", "hook:whk-aaaaaaaaaaaaaaaaaaaa")
        );
    }

    #[test]
    fn a_webhook_waits_longer_after_each_failure_for_about_a_day_in_all() {
        let base = std::time::Duration::from_secs(15);
        let waits: Vec<u64> = (1..=7).map(|a| hook_backoff(base, a).as_secs()).collect();
        assert_eq!(waits, [15, 60, 240, 960, 3840, 15360, 61440]);
        let hours = waits.iter().sum::<u64>() as f64 / 3600.0;
        assert!(
            (20.0..34.0).contains(&hours),
            "{hours} h until the eighth attempt"
        );
        // Never overflows, whatever the attempt count.
        assert!(hook_backoff(base, i64::MAX) >= hook_backoff(base, 7));
    }

    #[test]
    fn old_events_are_not_notified() {
        let now = chrono::Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(!too_old(now - chrono::Duration::minutes(59), now, hour));
        assert!(too_old(now - chrono::Duration::minutes(61), now, hour));
    }
}

//! The webhook sends stream: what each attempt to send an event to one of
//! an owner's webhooks gave ([`WebhookSend`]), one subject per webhook.
//! The notifier records; the API lists (Render's webhook events). Bounded
//! by the server: [`KEPT_PER_WEBHOOK`] records per webhook, none older than
//! [`KEPT_FOR`], at most [`MAX_RECORD`] bytes each. A record is a report,
//! not a fact of the log: losing one loses a line of history, not a send.

use std::time::Duration;

use std::ops::ControlFlow;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream;
use berth_schemas::ids::{OwnerId, WebhookId};
use berth_schemas::webhooks::WebhookSend;

use crate::{EventStore, StoreError};

/// Records kept per webhook (the newest).
pub const KEPT_PER_WEBHOOK: i64 = 1000;

/// How long a record is kept.
pub const KEPT_FOR: Duration = Duration::from_secs(14 * 24 * 3600);

/// The largest record the stream takes (a response body is cut well below).
pub const MAX_RECORD: i32 = 8 * 1024;

impl EventStore {
    /// Creates the webhook sends stream, or brings an existing one to its
    /// limits. Idempotent; replicas follow the event log's.
    pub async fn provision_webhook_sends(&self) -> Result<(), StoreError> {
        self.provision_stream(stream::Config {
            name: self.subjects.webhook_sends_stream(),
            subjects: vec![self.subjects.webhook_sends_all()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: KEPT_FOR,
            max_messages_per_subject: KEPT_PER_WEBHOOK,
            max_bytes: -1,
            max_messages: -1,
            max_message_size: MAX_RECORD,
            num_replicas: self.cfg.replicas,
            duplicate_window: Duration::from_secs(60),
            description: Some("berth webhook sends: one subject per webhook".to_owned()),
            ..Default::default()
        })
        .await
    }

    /// Records one attempt, once the server has it.
    pub async fn record_webhook_send(
        &self,
        owner: &OwnerId,
        webhook: &WebhookId,
        send: &WebhookSend,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(send).map_err(|e| StoreError::Request(e.to_string()))?;
        let request = |e: &dyn std::fmt::Display| {
            StoreError::Request(format!("recording a webhook send: {e}"))
        };
        self.js
            .publish(self.subjects.webhook_sends(owner, webhook), body.into())
            .await
            .map_err(|e| request(&e))?
            .await
            .map_err(|e| request(&e))?;
        Ok(())
    }

    /// Every kept record of `webhook`, oldest first, each with its stream
    /// sequence (unique: a listing's cursor). A record that does not parse
    /// is skipped; no stream yet is no record.
    pub async fn webhook_sends(
        &self,
        owner: &OwnerId,
        webhook: &WebhookId,
    ) -> Result<Vec<(u64, WebhookSend)>, StoreError> {
        let request = |e: &dyn std::fmt::Display| {
            StoreError::Request(format!("reading the sends of webhook {webhook}: {e}"))
        };
        let Ok(stream) = self
            .js
            .get_stream_no_info(self.subjects.webhook_sends_stream())
            .await
        else {
            return Ok(Vec::new());
        };
        let config = pull::Config {
            filter_subject: self.subjects.webhook_sends(owner, webhook),
            deliver_policy: DeliverPolicy::All,
            ..crate::logs::reader_config()
        };
        let mut out = Vec::new();
        let outcome = crate::logs::read_once(&stream, config, &request, |msg, info| {
            if let Ok(send) = serde_json::from_slice::<WebhookSend>(&msg.payload) {
                out.push((info.stream_sequence, send));
            }
            if out.len() as i64 >= KEPT_PER_WEBHOOK {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await;
        match outcome {
            Ok(()) => Ok(out),
            // Never made (nothing was ever sent): nothing to list.
            Err(e) if e.to_string().contains("stream not found") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

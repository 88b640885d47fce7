//! What sending an event to one of an owner's webhooks gave, one record
//! per attempt: the notifier publishes it on
//! [`Subjects::webhook_sends`](crate::Subjects::webhook_sends), the API
//! lists them (Render's `WebhookEvent`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The most of a receiver's answer a record keeps (characters).
pub const RESPONSE_BODY_KEPT: usize = 1024;

/// One attempt to send an event to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSend {
    /// The delivery (the `webhook-id` header; the same on every attempt).
    pub id: String,
    /// The service event sent (`GET /v1/events/{eventId}`).
    pub event_id: String,
    pub event_type: String,
    pub sent_at: DateTime<Utc>,
    /// The receiver's status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The start of its answer (at most [`RESPONSE_BODY_KEPT`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// Why no answer came (refused, timed out, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

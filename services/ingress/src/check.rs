//! The client side of the resolver's image check: one core-NATS request on
//! `…resolver.check` (answered by any resolver in the queue group),
//! MessagePack both ways. The credential travels as its id; the resolver
//! opens the sealed token itself.

use std::time::Duration;

use async_nats::{RequestErrorKind, Subject};
use berth_schemas::commands::{ImageCheckReply, ImageCheckRequest};
use berth_schemas::Subjects;

/// Why a check got no usable answer (no resolver, timeout, garbage).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckError {
    /// No resolver is subscribed.
    #[error("no resolver is running")]
    NoResolver,
    /// No answer within the timeout.
    #[error("no answer from the resolver within {0:?}")]
    Timeout(Duration),
    /// The request could not be sent.
    #[error("request failed: {0}")]
    Transport(String),
    /// The answer is not an image check reply.
    #[error("undecodable answer: {0}")]
    BadReply(String),
}

/// Asks the resolver whether an image is accessible.
#[derive(Debug, Clone)]
pub struct ImageChecker {
    client: async_nats::Client,
    subject: Subject,
    timeout: Duration,
}

impl ImageChecker {
    /// A checker sending on `subjects.resolver_check()`.
    pub fn new(client: async_nats::Client, subjects: &Subjects, timeout: Duration) -> Self {
        Self {
            client,
            subject: subjects.resolver_check().into(),
            timeout,
        }
    }

    /// One check.
    pub async fn check(&self, req: &ImageCheckRequest) -> Result<ImageCheckReply, CheckError> {
        let payload =
            rmp_serde::to_vec_named(req).map_err(|e| CheckError::Transport(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let msg = self
            .client
            .send_request(self.subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => CheckError::NoResolver,
                RequestErrorKind::TimedOut => CheckError::Timeout(self.timeout),
                _ => CheckError::Transport(e.to_string()),
            })?;
        rmp_serde::from_slice(&msg.payload).map_err(|e| CheckError::BadReply(e.to_string()))
    }
}

//! The three channels: what is sent and how. Email over SMTP (lettre),
//! Slack incoming-webhook JSON, and a generic webhook signed the
//! Standard-Webhooks way. The delivery id is the webhook's `webhook-id` and
//! the email's Message-ID, and stays the same on every retry, so a receiver
//! can drop a second copy.
//!
//! Errors never carry a URL (Slack's URL is itself a secret) nor any secret:
//! they end up in `notification_attempt_failed` events and logs.
//!
//! Slack and webhook URLs are the owner's: a host on an internal address
//! the operator has not allowed (`BERTH_ALLOW_TARGETS`) is refused before
//! connecting, and the refusal names the host only. The SMTP relay is the
//! operator's own setting and is not checked.

use std::time::Duration;

use base64::Engine;
use berth_runtime::egress::{self, AddressPolicy, TargetGuard};
use berth_runtime::Secret;
use hmac::{Hmac, Mac};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;

use berth_domain::timeline::TimelineEvent;

/// A failed send, safe to record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// Where email goes.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Sender address.
    pub from: String,
    /// Login, if the relay wants one.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<Secret>,
}

/// One line saying what happened, for Slack and the email subject.
pub fn summary(event: &TimelineEvent) -> String {
    let detail = |k: &str| {
        event
            .details
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut s = format!("berth: {} on {}", event.kind, event.service_id);
    if let Some(outcome) = event
        .outcome()
        .map(str::to_owned)
        .or_else(|| detail("status"))
    {
        s.push_str(&format!(" ({outcome})"));
    }
    for key in ["message", "reason"] {
        if let Some(v) = detail(key) {
            s.push_str(&format!(": {v}"));
            break;
        }
    }
    s
}

/// The generic webhook's body: Standard-Webhooks shape `{type, timestamp, data}`.
pub fn webhook_body(event: &TimelineEvent) -> Vec<u8> {
    let body = json!({
        "type": event.kind,
        "timestamp": event.timestamp,
        "data": event,
    });
    body.to_string().into_bytes()
}

/// The body of a post to one of an owner's webhooks, in Render's shape:
/// `{type, timestamp, data: {id, serviceId, serviceName}}` (`id` is the
/// event's: a receiver reads it whole from `GET /v1/events/{id}`), with
/// the event's `status` when it has one and berth's `details` beside.
pub fn render_body(event: &TimelineEvent, service_name: &str) -> Vec<u8> {
    let mut data = json!({
        "id": event.id,
        "serviceId": event.service_id,
        "serviceName": service_name,
        "details": event.details,
    });
    // Render's word for how it ended: a deploy's `deployStatus`, else the
    // event's own status.
    let text = |k: &str| event.details.get(k).and_then(|s| s.as_str());
    if let Some(status) = text("deployStatus")
        .or_else(|| text("status"))
        .or_else(|| event.outcome())
    {
        data["status"] = json!(status);
    }
    json!({
        "type": event.kind,
        "timestamp": event.timestamp,
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// What a webhook's receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The start of its body (see `berth_schemas::webhooks::RESPONSE_BODY_KEPT`).
    pub body: String,
}

impl Answer {
    /// Whether the receiver took it (2xx).
    pub fn taken(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Slack's body.
pub fn slack_body(event: &TimelineEvent) -> Vec<u8> {
    json!({ "text": summary(event) }).to_string().into_bytes()
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the
/// secret (`whsec_` + base64 of the key bytes; a secret without the prefix
/// is taken as base64 too).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SendError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = b64
        .decode(raw)
        .map_err(|_| SendError("webhook secret is not base64 (whsec_…)".to_owned()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|_| SendError("unusable webhook secret".to_owned()))?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
}

/// The Standard-Webhooks headers of a post of `body`: `webhook-id` (the
/// delivery), `webhook-timestamp` (now) and, with a secret, its
/// `webhook-signature`.
fn standard_headers(
    delivery: &str,
    secret: Option<&Secret>,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SendError> {
    let ts = chrono::Utc::now().timestamp();
    let mut headers = vec![
        ("webhook-id", delivery.to_owned()),
        ("webhook-timestamp", ts.to_string()),
    ];
    if let Some(secret) = secret {
        headers.push((
            "webhook-signature",
            sign(secret.expose(), delivery, ts, body)?,
        ));
    }
    Ok(headers)
}

/// Sends on every channel with one HTTP client and one timeout.
#[derive(Debug, Clone)]
pub struct Senders {
    http: reqwest::Client,
    guard: TargetGuard,
    smtp: Option<SmtpConfig>,
    timeout: Duration,
}

impl Senders {
    /// Senders giving up on any one send after `timeout`, posting only to
    /// the internal addresses `targets` allows.
    pub fn new(
        smtp: Option<SmtpConfig>,
        timeout: Duration,
        targets: AddressPolicy,
    ) -> Result<Self, SendError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SendError(e.to_string()))?
            .with_platform_verifier()
            .map_err(|e| SendError(e.to_string()))?
            .with_no_client_auth();
        let guard = TargetGuard::new(targets, "webhook");
        let http = guard
            .install(reqwest::Client::builder())
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("berth-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SendError(e.to_string()))?;
        Ok(Self {
            http,
            guard,
            smtp,
            timeout,
        })
    }

    async fn post(
        &self,
        url: &Secret,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<(), SendError> {
        let resp = self.exchange(url, body, headers).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SendError(format!("endpoint answered {}", resp.status())))
        }
    }

    /// Posts `body` to `url` (checked against the address policy first)
    /// and returns the answer, whatever its status.
    async fn exchange(
        &self,
        url: &Secret,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response, SendError> {
        let mut req = self
            .http
            .post(url.expose())
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let failed = |e: reqwest::Error| match egress::refusal(&e) {
            Some(refused) => SendError(refused.to_string()),
            None => SendError(format!("post failed: {}", e.without_url())),
        };
        let req = req.build().map_err(failed)?;
        self.guard
            .check_url(req.url())
            .map_err(|refused| SendError(refused.to_string()))?;
        self.http.execute(req).await.map_err(failed)
    }

    /// Posts a signed event to one of an owner's webhooks (`delivery` is
    /// its `webhook-id`); the answer whatever its status, or why none came.
    pub async fn to_webhook(
        &self,
        url: &Secret,
        secret: &Secret,
        delivery: &str,
        body: Vec<u8>,
    ) -> Result<Answer, SendError> {
        let headers = standard_headers(delivery, Some(secret), &body)?;
        let mut resp = self.exchange(url, body, &headers).await?;
        let status = resp.status().as_u16();
        // Only the start of the answer is kept: read no more than that.
        let kept = berth_schemas::webhooks::RESPONSE_BODY_KEPT;
        let mut raw = Vec::new();
        while raw.len() < kept * 4 {
            match resp.chunk().await {
                Ok(Some(c)) => raw.extend_from_slice(&c),
                _ => break,
            }
        }
        let body = String::from_utf8_lossy(&raw)
            .chars()
            .filter(|c| !c.is_control() || *c == '\n')
            .take(kept)
            .collect();
        Ok(Answer { status, body })
    }

    /// Posts to a Slack incoming webhook.
    pub async fn slack(&self, url: &Secret, event: &TimelineEvent) -> Result<(), SendError> {
        self.post(url, slack_body(event), &[]).await
    }

    /// Posts the signed webhook; `delivery` is its `webhook-id`.
    pub async fn webhook(
        &self,
        url: &Secret,
        secret: Option<&Secret>,
        delivery: &str,
        event: &TimelineEvent,
    ) -> Result<(), SendError> {
        let body = webhook_body(event);
        let headers = standard_headers(delivery, secret, &body)?;
        self.post(url, body, &headers).await
    }

    /// Sends the email; the delivery id is in its Message-ID.
    pub async fn email(
        &self,
        to: &str,
        delivery: &str,
        event: &TimelineEvent,
    ) -> Result<(), SendError> {
        let Some(smtp) = &self.smtp else {
            return Err(SendError("no SMTP relay configured".to_owned()));
        };
        let from = smtp
            .from
            .parse()
            .map_err(|_| SendError("bad sender address".to_owned()))?;
        let to = to
            .parse()
            .map_err(|_| SendError("bad recipient address".to_owned()))?;
        let body = format!(
            "{}\n\n{}\n",
            summary(event),
            serde_json::to_string_pretty(event).unwrap_or_default()
        );
        let msg = lettre::Message::builder()
            .from(from)
            .to(to)
            .subject(summary(event))
            .message_id(Some(format!("<{delivery}@berth>")))
            .body(body)
            .map_err(|e| SendError(format!("building the email: {e}")))?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
                .port(smtp.port)
                .timeout(Some(self.timeout));
        if let (Some(user), Some(pass)) = (&smtp.username, &smtp.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.expose().to_owned()));
        }
        builder
            .build()
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| SendError(format!("smtp: {e}")))
    }
}

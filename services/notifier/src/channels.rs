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
        let resp = self.http.execute(req).await.map_err(failed)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SendError(format!("endpoint answered {}", resp.status())))
        }
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
        let ts = chrono::Utc::now().timestamp();
        let mut headers = vec![
            ("webhook-id", delivery.to_owned()),
            ("webhook-timestamp", ts.to_string()),
        ];
        if let Some(secret) = secret {
            headers.push((
                "webhook-signature",
                sign(secret.expose(), delivery, ts, &body)?,
            ));
        }
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

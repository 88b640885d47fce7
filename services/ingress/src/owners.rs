//! Owners' API keys and notification defaults (SPEC §9, §14).
//!
//! An API key is shown once, when created; the owner's aggregate keeps only
//! its SHA-256 (lowercase hex), which is what a request's bearer token is
//! hashed to and looked up by.

use berth_domain::owner::{self, NotificationSettings, OwnerState};
use berth_domain::DomainError;
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, OwnerId};
use berth_schemas::model::{seal_context, NotifySetting, Sealed};
use berth_schemas::{Actor, AggregateId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{exec, Ingress, IngressError};

/// Every API key starts with this, so leaked keys are easy to scan for.
pub const API_KEY_PREFIX: &str = "berth_";

/// An API key as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub label: String,
    pub revoked: bool,
}

/// An owner's notification default as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerNotifications {
    pub notify: NotifySetting,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether a Slack incoming webhook is set (the URL itself is a secret
    /// and never shown).
    #[serde(default)]
    pub slack_configured: bool,
    /// Whether a generic webhook (URL and signing secret) is set.
    #[serde(default)]
    pub webhook_configured: bool,
}

impl OwnerNotifications {
    fn of(n: &NotificationSettings) -> Self {
        OwnerNotifications {
            notify: n.notify,
            email: n.email.clone(),
            slack_configured: n.slack_webhook_url.is_some(),
            webhook_configured: n.webhook_url.is_some() && n.webhook_secret.is_some(),
        }
    }
}

/// New values for the secret channels: `None` keeps what is set, an empty
/// secret removes it. Sealed before anything is appended; never echoed.
#[derive(Debug, Default)]
pub struct ChannelSecrets {
    /// Slack incoming-webhook URL (`https://hooks.slack.com/…`).
    pub slack_webhook_url: Option<Secret>,
    /// Generic webhook endpoint URL.
    pub webhook_url: Option<Secret>,
    /// Standard-Webhooks signing secret, `whsec_` + base64.
    pub webhook_secret: Option<Secret>,
}

/// Which change a channel gets: keep, remove, or set to a sealed value.
type Change = Option<Option<Sealed>>;

pub(crate) fn check_url(field: &'static str, url: &str) -> Result<(), DomainError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field,
            reason: "must be an http(s) URL without spaces, at most 2048 characters".to_owned(),
        })
    }
}

fn check_webhook_secret(secret: &str) -> Result<(), DomainError> {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    match data_encoding::BASE64.decode(raw.as_bytes()) {
        Ok(bytes) if bytes.len() >= 16 && bytes.len() <= 128 => Ok(()),
        _ => Err(DomainError::Invalid {
            field: "webhookSecret",
            reason: "must be whsec_ followed by the base64 of 16–128 bytes".to_owned(),
        }),
    }
}

/// Lowercase hex SHA-256 of an API key, as stored on the owner.
pub fn api_key_sha256(secret: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(secret.as_bytes()))
}

/// A fresh API key (`API_KEY_PREFIX` and 32 random bytes).
pub fn new_api_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!(
        "{API_KEY_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(&bytes)
    ))
}

impl Ingress {
    pub(crate) async fn owner_decide(
        &self,
        owner: &OwnerId,
        key: &str,
        actor: &Actor,
        command: owner::Command,
    ) -> Result<OwnerState, IngressError> {
        let done = self.owner_run(owner, key, actor, command).await?;
        Ok(std::sync::Arc::unwrap_or_clone(done.state))
    }

    /// Decides on the owner's state as it is when the command runs (again
    /// after a conflict): `choose` merges a change into what is set, so a
    /// concurrent change is not overwritten with a stale copy.
    pub(crate) async fn owner_when(
        &self,
        owner: &OwnerId,
        key: &str,
        actor: &Actor,
        choose: impl Fn(&OwnerState) -> Result<Option<owner::Command>, DomainError>,
    ) -> Result<OwnerState, IngressError> {
        let done = exec::run_when::<owner::Owner>(
            &self.store,
            &AggregateId::Owner(owner.clone()),
            key,
            actor,
            choose,
        )
        .await?;
        Ok(std::sync::Arc::unwrap_or_clone(done.state))
    }

    /// Runs `command` on the owner's aggregate as `actor`.
    pub(crate) async fn owner_run(
        &self,
        owner: &OwnerId,
        key: &str,
        actor: &Actor,
        command: owner::Command,
    ) -> Result<berth_eventlog::Executed<OwnerState>, IngressError> {
        exec::run::<owner::Owner>(
            &self.store,
            &AggregateId::Owner(owner.clone()),
            key,
            actor,
            command,
        )
        .await
    }

    /// The owner's current state; one that was never created is not found.
    pub(crate) async fn load_owner(&self, owner: &OwnerId) -> Result<OwnerState, IngressError> {
        let state: OwnerState = self
            .load_fold(&AggregateId::Owner(owner.clone()), owner::fold)
            .await?;
        if state.owner.is_none() {
            return Err(IngressError::not_found("owner", owner));
        }
        Ok(state)
    }

    /// Issues an API key for `owner`; returns its id and the secret (shown once).
    pub async fn create_api_key(
        &self,
        owner: &OwnerId,
        label: &str,
        actor: &Actor,
    ) -> Result<(ApiKeyId, Secret), IngressError> {
        let id = ApiKeyId::generate();
        let secret = new_api_key();
        self.register_api_key(owner, &id, &secret, label, actor)
            .await?;
        Ok((id, secret))
    }

    /// Records `secret`, chosen by the caller, as the owner's key `id`.
    /// Running it again with the same id and secret changes nothing (a
    /// caller that kept them can finish after a crash or a lost answer).
    pub async fn register_api_key(
        &self,
        owner: &OwnerId,
        id: &ApiKeyId,
        secret: &Secret,
        label: &str,
        actor: &Actor,
    ) -> Result<(), IngressError> {
        let command = owner::Command::CreateApiKey {
            key: id.clone(),
            label: label.to_owned(),
            sha256: api_key_sha256(secret.expose()),
        };
        self.owner_decide(owner, &format!("api-key-create-{id}"), actor, command)
            .await?;
        tracing::info!(owner = %owner, api_key.id = %id, "API key created");
        Ok(())
    }

    /// The owner's API keys (revoked ones included, marked).
    pub async fn list_api_keys(&self, owner: &OwnerId) -> Result<Vec<ApiKeyView>, IngressError> {
        let state = self.load_owner(owner).await?;
        Ok(state
            .api_keys
            .iter()
            .map(|(id, k)| ApiKeyView {
                id: id.clone(),
                label: k.label.clone(),
                revoked: k.revoked,
            })
            .collect())
    }

    /// Revokes one of the owner's keys; requests with it fail from then on.
    pub async fn revoke_api_key(
        &self,
        owner: &OwnerId,
        key: &ApiKeyId,
        actor: &Actor,
    ) -> Result<(), IngressError> {
        self.owner_decide(
            owner,
            &format!("api-key-revoke-{key}"),
            actor,
            owner::Command::RevokeApiKey { key: key.clone() },
        )
        .await?;
        tracing::info!(owner = %owner, api_key.id = %key, "API key revoked");
        Ok(())
    }

    /// The owner's name and its notification email, if one is set (what
    /// Render's `Owner` shows).
    pub async fn owner_profile(
        &self,
        owner: &OwnerId,
    ) -> Result<(String, Option<String>), IngressError> {
        let state = self.load_owner(owner).await?;
        Ok((state.name, state.notifications.email))
    }

    /// The owner's notification default.
    pub async fn owner_notifications(
        &self,
        owner: &OwnerId,
    ) -> Result<OwnerNotifications, IngressError> {
        let state = self.load_owner(owner).await?;
        Ok(OwnerNotifications::of(&state.notifications))
    }

    /// Seals a channel change after checking it (`check` sees the clear value).
    fn channel(
        &self,
        owner: &OwnerId,
        name: &str,
        value: Option<&Secret>,
        check: impl Fn(&str) -> Result<(), DomainError>,
    ) -> Result<Change, IngressError> {
        let Some(v) = value else { return Ok(None) };
        if v.expose().is_empty() {
            return Ok(Some(None));
        }
        check(v.expose())?;
        Ok(Some(Some(
            self.key.seal(v, &seal_context::notification(owner, name))?,
        )))
    }

    /// Sets the owner's notification default: the setting, the email and,
    /// where `channels` says so, the Slack and webhook channels (the others
    /// are kept as they are).
    pub async fn set_owner_notifications(
        &self,
        owner: &OwnerId,
        settings: OwnerNotifications,
        channels: ChannelSecrets,
        actor: &Actor,
    ) -> Result<OwnerNotifications, IngressError> {
        let slack = self.channel(
            owner,
            "slack_webhook_url",
            channels.slack_webhook_url.as_ref(),
            |u| check_url("slackWebhookUrl", u),
        )?;
        let hook_url = self.channel(owner, "webhook_url", channels.webhook_url.as_ref(), |u| {
            check_url("webhookUrl", u)
        })?;
        let hook_secret = self.channel(
            owner,
            "webhook_secret",
            channels.webhook_secret.as_ref(),
            check_webhook_secret,
        )?;
        let key = format!("owner-notify-{owner}-{}", ApiKeyId::generate());
        // Merged inside the decision, so a concurrent change of the other
        // channels is not overwritten with a stale copy.
        let state = self
            .owner_when(owner, &key, actor, |s: &OwnerState| {
                let old = &s.notifications;
                let pick = |c: &Change, old: &Option<Sealed>| match c {
                    None => old.clone(),
                    Some(v) => v.clone(),
                };
                let wanted = NotificationSettings {
                    notify: settings.notify,
                    email: settings.email.clone(),
                    slack_webhook_url: pick(&slack, &old.slack_webhook_url),
                    webhook_url: pick(&hook_url, &old.webhook_url),
                    webhook_secret: pick(&hook_secret, &old.webhook_secret),
                };
                // Checked on the merged settings: a webhook is only sent
                // signed, so a URL the notifier could never use is refused
                // rather than stored and silently never called.
                if wanted.webhook_url.is_some() && wanted.webhook_secret.is_none() {
                    return Err(DomainError::Invalid {
                        field: "webhookSecret",
                        reason: "a webhook URL needs its signing secret (whsec_…): give \
                                 webhookSecret with webhookUrl, or webhookUrl \"\" to remove \
                                 the webhook"
                            .to_owned(),
                    });
                }
                Ok(Some(owner::Command::SetNotificationSettings(wanted)))
            })
            .await?;
        Ok(OwnerNotifications::of(&state.notifications))
    }
}

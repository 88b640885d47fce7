//! Owners' API keys and notification defaults (SPEC §9, §14).
//!
//! An API key is shown once, when created; the owner's aggregate keeps only
//! its SHA-256 (lowercase hex), which is what a request's bearer token is
//! hashed to and looked up by.

use berth_domain::owner::{self, NotificationSettings, OwnerState};
use berth_domain::Ctx;
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, OwnerId};
use berth_schemas::model::NotifySetting;
use berth_schemas::{Actor, AggregateId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{exec, Ingress, IngressError};

/// Every API key starts with this, so leaked keys are easy to scan for.
pub const API_KEY_PREFIX: &str = "berth_";

/// An API key as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Lowercase hex SHA-256 of an API key, as stored on the owner.
pub fn api_key_sha256(secret: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(secret.as_bytes()))
}

fn new_api_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!(
        "{API_KEY_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(&bytes)
    ))
}

impl Ingress {
    async fn owner_decide(
        &self,
        owner: &OwnerId,
        key: &str,
        actor: &Actor,
        command: owner::Command,
    ) -> Result<OwnerState, IngressError> {
        let done = exec::run(
            &self.store,
            &AggregateId::Owner(owner.clone()),
            key,
            actor,
            owner::fold,
            |s: &OwnerState| owner::decide(s, command.clone(), &Ctx::default()),
        )
        .await?;
        Ok(done.state)
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
        let command = owner::Command::CreateApiKey {
            key: id.clone(),
            label: label.to_owned(),
            sha256: api_key_sha256(secret.expose()),
        };
        self.owner_decide(owner, &format!("api-key-create-{id}"), actor, command)
            .await?;
        tracing::info!(owner = %owner, api_key.id = %id, "API key created");
        Ok((id, secret))
    }

    /// The owner's API keys (revoked ones included, marked).
    pub async fn list_api_keys(&self, owner: &OwnerId) -> Result<Vec<ApiKeyView>, IngressError> {
        let state: OwnerState = self
            .load_fold(&AggregateId::Owner(owner.clone()), owner::fold)
            .await?;
        if state.owner.is_none() {
            return Err(IngressError::not_found("owner", owner));
        }
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

    /// The owner's notification default.
    pub async fn owner_notifications(
        &self,
        owner: &OwnerId,
    ) -> Result<OwnerNotifications, IngressError> {
        let state: OwnerState = self
            .load_fold(&AggregateId::Owner(owner.clone()), owner::fold)
            .await?;
        if state.owner.is_none() {
            return Err(IngressError::not_found("owner", owner));
        }
        Ok(OwnerNotifications {
            notify: state.notifications.notify,
            email: state.notifications.email,
        })
    }

    /// Sets the owner's notification default (setting and email; the
    /// Slack and webhook channels are kept as they are).
    pub async fn set_owner_notifications(
        &self,
        owner: &OwnerId,
        settings: OwnerNotifications,
        actor: &Actor,
    ) -> Result<OwnerNotifications, IngressError> {
        let key = format!("owner-notify-{owner}-{}", ApiKeyId::generate());
        // Merged inside the decision, so a concurrent change of the other
        // channels is not overwritten with a stale copy.
        let state = exec::run(
            &self.store,
            &AggregateId::Owner(owner.clone()),
            &key,
            actor,
            owner::fold,
            |s: &OwnerState| {
                let wanted = NotificationSettings {
                    notify: settings.notify,
                    email: settings.email.clone(),
                    ..s.notifications.clone()
                };
                owner::decide(
                    s,
                    owner::Command::SetNotificationSettings(wanted),
                    &Ctx::default(),
                )
            },
        )
        .await?
        .state;
        Ok(OwnerNotifications {
            notify: state.notifications.notify,
            email: state.notifications.email,
        })
    }
}

//! An owner's webhooks (Render's webhooks API): create, list, retrieve,
//! update and delete. The URL and the signing secret are sealed on the
//! owner's aggregate and opened only to answer the owner (Render shows
//! both) and, in the notifier, to send. berth makes the secret: 32 random
//! bytes as `whsec_` + base64, the Standard-Webhooks form receivers'
//! libraries verify with.

use berth_domain::owner::{self, OwnerState};
use berth_domain::webhook::{Settings, Webhook};
use berth_runtime::Secret;
use berth_schemas::ids::{OwnerId, WebhookId};
use berth_schemas::model::seal_context;
use berth_schemas::Actor;
use rand::RngCore;
use serde::Serialize;

use crate::owners::check_url;
use crate::{Ingress, IngressError};

/// A webhook as Render's `Webhook` shows it, URL and secret opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: WebhookId,
    pub url: String,
    pub name: String,
    /// The signing secret (`whsec_…`): a receiver checks
    /// `webhook-signature` with it.
    pub secret: String,
    pub enabled: bool,
    /// The event types sent; empty: every type.
    pub event_filter: Vec<String>,
}

/// A change asked for: what is given changes.
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub name: Option<String>,
    pub url: Option<String>,
    pub enabled: Option<bool>,
    pub event_filter: Option<Vec<String>>,
}

/// A fresh signing secret.
fn new_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!("whsec_{}", data_encoding::BASE64.encode(&bytes)))
}

impl Ingress {
    fn webhook_view(
        &self,
        owner: &OwnerId,
        id: &WebhookId,
        h: &Webhook,
    ) -> Result<WebhookView, IngressError> {
        let open = |sealed, field| {
            self.key
                .open(sealed, &seal_context::webhook(owner, id, field))
                .map(|s| s.expose().to_owned())
        };
        Ok(WebhookView {
            id: id.clone(),
            url: open(&h.url, "url")?,
            name: h.name.clone(),
            secret: open(&h.secret, "secret")?,
            enabled: h.enabled,
            event_filter: h.event_filter.clone(),
        })
    }

    /// Creates a webhook of `owner` posting to `url`.
    pub async fn create_webhook(
        &self,
        owner: &OwnerId,
        name: &str,
        url: &str,
        enabled: bool,
        event_filter: Vec<String>,
        actor: &Actor,
    ) -> Result<WebhookView, IngressError> {
        check_url("url", url)?;
        let id = WebhookId::generate();
        let seal = |value: &Secret, field| {
            self.key
                .seal(value, &seal_context::webhook(owner, &id, field))
        };
        let command = owner::Command::CreateWebhook {
            webhook: id.clone(),
            settings: Settings {
                name: name.to_owned(),
                url: seal(&Secret::new(url.to_owned()), "url")?,
                enabled,
                event_filter,
            },
            secret: seal(&new_secret(), "secret")?,
        };
        let state = self
            .owner_decide(owner, &format!("webhook-create-{id}"), actor, command)
            .await?;
        tracing::info!(owner = %owner, webhook.id = %id, "webhook created");
        self.webhook_in(owner, &state, &id)
    }

    fn webhook_in(
        &self,
        owner: &OwnerId,
        state: &OwnerState,
        id: &WebhookId,
    ) -> Result<WebhookView, IngressError> {
        let h = state
            .webhooks
            .get(id)
            .ok_or_else(|| IngressError::not_found("webhook", id))?;
        self.webhook_view(owner, id, h)
    }

    /// The owner's webhooks, by id.
    pub async fn list_webhooks(&self, owner: &OwnerId) -> Result<Vec<WebhookView>, IngressError> {
        let state = self.load_owner(owner).await?;
        state
            .webhooks
            .iter()
            .map(|(id, h)| self.webhook_view(owner, id, h))
            .collect()
    }

    /// One of the owner's webhooks.
    pub async fn webhook(
        &self,
        owner: &OwnerId,
        id: &WebhookId,
    ) -> Result<WebhookView, IngressError> {
        let state = self.load_owner(owner).await?;
        self.webhook_in(owner, &state, id)
    }

    /// Whether `id` is one of the owner's webhooks (nothing opened).
    pub async fn has_webhook(&self, owner: &OwnerId, id: &WebhookId) -> Result<bool, IngressError> {
        Ok(self.load_owner(owner).await?.webhooks.contains_key(id))
    }

    /// Changes what `change` gives of one of the owner's webhooks, merged
    /// into its settings as they are when the change is decided.
    pub async fn update_webhook(
        &self,
        owner: &OwnerId,
        id: &WebhookId,
        change: WebhookChange,
        actor: &Actor,
    ) -> Result<WebhookView, IngressError> {
        let url = match &change.url {
            Some(u) => {
                check_url("url", u)?;
                Some(self.key.seal(
                    &Secret::new(u.clone()),
                    &seal_context::webhook(owner, id, "url"),
                )?)
            }
            None => None,
        };
        let key = format!("webhook-update-{id}-{}", WebhookId::generate());
        let state = self
            .owner_when(owner, &key, actor, |s: &OwnerState| {
                let Some(h) = s.webhooks.get(id) else {
                    return Err(berth_domain::DomainError::NotFound {
                        what: "webhook",
                        id: id.to_string(),
                    });
                };
                Ok(Some(owner::Command::UpdateWebhook {
                    webhook: id.clone(),
                    settings: Settings {
                        name: change.name.clone().unwrap_or_else(|| h.name.clone()),
                        url: url.clone().unwrap_or_else(|| h.url.clone()),
                        enabled: change.enabled.unwrap_or(h.enabled),
                        event_filter: change
                            .event_filter
                            .clone()
                            .unwrap_or_else(|| h.event_filter.clone()),
                    },
                }))
            })
            .await?;
        tracing::info!(owner = %owner, webhook.id = %id, "webhook updated");
        self.webhook_in(owner, &state, id)
    }

    /// Deletes one of the owner's webhooks.
    pub async fn delete_webhook(
        &self,
        owner: &OwnerId,
        id: &WebhookId,
        actor: &Actor,
    ) -> Result<(), IngressError> {
        self.owner_decide(
            owner,
            &format!("webhook-delete-{id}"),
            actor,
            owner::Command::DeleteWebhook {
                webhook: id.clone(),
            },
        )
        .await?;
        tracing::info!(owner = %owner, webhook.id = %id, "webhook deleted");
        Ok(())
    }
}

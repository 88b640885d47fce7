//! Who is told what: a service's owner and notification override, and the
//! owner's default and channels, folded from their aggregates at the moment
//! a notification is decided or sent (so a changed setting or a rotated
//! webhook secret applies to the next attempt without a cache to go stale).

use std::collections::BTreeMap;

use berth_domain::webhook::{self, Webhook};
use berth_schemas::ids::{OwnerId, WebhookId};
use berth_schemas::model::{NotifySetting, Sealed};
use berth_schemas::{Envelope, Event};

/// A service's notification facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNotify {
    /// Its owner, once created.
    pub owner: Option<OwnerId>,
    /// Its override of the owner's default.
    pub notify: Option<NotifySetting>,
    /// Its name (renames followed), for webhooks' `serviceName`.
    pub name: String,
}

impl ServiceNotify {
    /// Folds one event of the service.
    pub fn fold(mut self, env: &Envelope) -> Self {
        match &env.event {
            Event::ServiceCreated(e) => {
                self.owner = Some(e.owner.clone());
                self.notify = e.notify;
                self.name = e.name.clone();
            }
            Event::ServiceUpdated(e) => {
                if let Some(n) = e.settings.notify {
                    self.notify = n;
                }
                if let Some(name) = &e.settings.name {
                    self.name = name.clone();
                }
            }
            _ => {}
        }
        self
    }
}

/// An owner's default setting and channels (secrets still sealed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerNotify {
    /// The default (`failure` until set).
    pub notify: NotifySetting,
    /// Email recipient.
    pub email: Option<String>,
    /// Slack incoming-webhook URL.
    pub slack_webhook_url: Option<Sealed>,
    /// Generic webhook URL.
    pub webhook_url: Option<Sealed>,
    /// Generic webhook signing secret (`whsec_…`).
    pub webhook_secret: Option<Sealed>,
    /// Its webhooks (Render's webhooks API), URLs and secrets sealed.
    pub webhooks: BTreeMap<WebhookId, Webhook>,
}

impl OwnerNotify {
    /// Folds one event of the owner.
    pub fn fold(mut self, env: &Envelope) -> Self {
        match &env.event {
            Event::NotificationSettingsChanged(e) => {
                self.notify = e.notify;
                self.email = e.email.clone();
                self.slack_webhook_url = e.slack_webhook_url.clone();
                self.webhook_url = e.webhook_url.clone();
                self.webhook_secret = e.webhook_secret.clone();
            }
            e => webhook::apply(&mut self.webhooks, e),
        }
        self
    }

    /// The channels configured, in a fixed order.
    pub fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        if self.email.is_some() {
            out.push(Channel::Email);
        }
        if self.slack_webhook_url.is_some() {
            out.push(Channel::Slack);
        }
        if self.webhook_url.is_some() {
            out.push(Channel::Webhook);
        }
        out
    }
}

/// The setting in force for a service: its override, else the owner's default.
pub fn effective(service: &ServiceNotify, owner: &OwnerNotify) -> NotifySetting {
    service.notify.unwrap_or(owner.notify)
}

/// Whether `setting` sends a notification for an event that is a failure or not.
pub fn sends(setting: NotifySetting, failure: bool) -> bool {
    match setting {
        NotifySetting::All => true,
        NotifySetting::Failure => failure,
        NotifySetting::None => false,
    }
}

/// A kind of notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Email over SMTP.
    Email,
    /// Slack incoming webhook.
    Slack,
    /// Generic webhook signed Standard-Webhooks style.
    Webhook,
}

impl Channel {
    /// Its name in events (`email`, `slack`, `webhook`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Slack => "slack",
            Channel::Webhook => "webhook",
        }
    }

    /// Parses a name from [`Channel::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "email" => Some(Channel::Email),
            "slack" => Some(Channel::Slack),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

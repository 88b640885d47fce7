//! The owner aggregate (a user or a team): API keys, the per-owner namespace
//! of service names, the default notification settings and the webhooks
//! (their rules in [`crate::webhook`]).
//!
//! Service names are unique per owner (SPEC §4), so a name is claimed here,
//! on the owner's subject, before the service is created or renamed; two
//! concurrent claims of one name are decided one after the other and the
//! second is refused.

use std::collections::BTreeMap;

use berth_schemas::events::{
    ApiKeyCreated, ApiKeyRevoked, IntegrationCreated, IntegrationRevoked, LogStreamChanged,
    LogStreamDeliveryFailed, LogStreamDeliveryRecovered, NotificationSettingsChanged, OwnerCreated,
    ServiceNameClaimed, ServiceNameReleased,
};
use berth_schemas::ids::{ApiKeyId, IntegrationId, OwnerId, ServiceId, WebhookId};
use berth_schemas::model::{LogStream, NotifySetting, Sealed};
use berth_schemas::{Envelope, Event};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;
use crate::service::validate;
use crate::webhook::{self, Webhook};

const LABEL_MAX: usize = 100;

/// An issued API key; only its SHA-256 is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub label: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    pub revoked: bool,
}

/// An integration: NATS credentials bound to this owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Integration {
    pub name: String,
    /// The NATS user.
    pub user: String,
    /// bcrypt hash of its password.
    pub password_bcrypt: String,
    pub revoked: bool,
}

/// Integrations an owner may have at once (each is a NATS user every
/// server holds in memory).
pub const MAX_INTEGRATIONS: usize = 50;

/// Default deploy notification setting and channels (SPEC §9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSettings {
    pub notify: NotifySetting,
    pub email: Option<String>,
    pub slack_webhook_url: Option<Sealed>,
    pub webhook_url: Option<Sealed>,
    pub webhook_secret: Option<Sealed>,
}

/// Under which name an owner's fold is stored (see
/// `EventStore::persist_states`); a new name when `apply` changes.
pub const STATE_SNAPSHOT: &str = "owner-v2";

/// An owner's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerState {
    /// `None` until `owner_created`.
    pub owner: Option<OwnerId>,
    pub name: String,
    pub api_keys: BTreeMap<ApiKeyId, ApiKey>,
    /// Service name → the service holding it.
    pub service_names: BTreeMap<String, ServiceId>,
    pub notifications: NotificationSettings,
    #[serde(default)]
    pub integrations: BTreeMap<IntegrationId, Integration>,
    /// Where its services' log lines are sent, if anywhere.
    #[serde(default)]
    pub log_stream: Option<LogStream>,
    /// Its log stream endpoints (its own, its services') that lines do
    /// not reach now, by endpoint; at most [`KEPT_DELIVERY_FAILURES`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub log_stream_failures: BTreeMap<String, DeliveryFailure>,
    /// Its webhooks (deleted ones leave), at most
    /// [`crate::webhook::MAX_WEBHOOKS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<WebhookId, Webhook>,
}

/// Endpoints failing at once an owner's state holds (the oldest go).
pub const KEPT_DELIVERY_FAILURES: usize = 64;

/// Why lines do not reach a log stream endpoint, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailure {
    pub error: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl OwnerState {
    /// The unrevoked key with this SHA-256, for authenticating a request.
    pub fn key_by_sha256(&self, sha256: &str) -> Option<&ApiKeyId> {
        self.api_keys
            .iter()
            .find(|(_, k)| !k.revoked && k.sha256 == sha256)
            .map(|(id, _)| id)
    }

    /// The service holding a name.
    pub fn service_named(&self, name: &str) -> Option<&ServiceId> {
        self.service_names.get(name)
    }
}

/// What callers ask of an owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        owner: OwnerId,
        name: String,
    },
    /// Record a new key by its hash (the secret is shown once, by the caller).
    CreateApiKey {
        key: ApiKeyId,
        label: String,
        sha256: String,
    },
    RevokeApiKey {
        key: ApiKeyId,
    },
    /// Record a new integration by its user and password hash (the
    /// password is shown once, by the caller).
    CreateIntegration {
        integration: IntegrationId,
        name: String,
        user: String,
        password_bcrypt: String,
    },
    RevokeIntegration {
        integration: IntegrationId,
    },
    /// Take a name for a service (create or rename).
    ClaimServiceName {
        name: String,
        service: ServiceId,
    },
    /// Give a name back (rename or delete).
    ReleaseServiceName {
        name: String,
        service: ServiceId,
    },
    SetNotificationSettings(NotificationSettings),
    /// Set, change or (`None`) remove the log stream.
    SetLogStream(Option<LogStream>),
    /// What delivering to a log stream endpoint gave: `None` delivered,
    /// else why not and since when. Recorded only when it changes
    /// whether the endpoint is failing.
    RecordLogStreamDelivery {
        endpoint: String,
        failure: Option<(String, chrono::DateTime<chrono::Utc>)>,
    },
    /// Add a webhook signed with `secret` (sealed, as the URL).
    CreateWebhook {
        webhook: WebhookId,
        settings: webhook::Settings,
        secret: Sealed,
    },
    /// Change a webhook's name, URL, switch or event types.
    UpdateWebhook {
        webhook: WebhookId,
        settings: webhook::Settings,
    },
    DeleteWebhook {
        webhook: WebhookId,
    },
}

/// Applies one event.
pub fn apply(mut s: OwnerState, event: &Event) -> OwnerState {
    match event {
        Event::OwnerCreated(e) if s.owner.is_none() => {
            s.owner = Some(e.owner.clone());
            s.name = e.name.clone();
        }
        Event::ApiKeyCreated(e) => {
            s.api_keys.entry(e.key.clone()).or_insert_with(|| ApiKey {
                label: e.label.clone(),
                sha256: e.sha256.clone(),
                revoked: false,
            });
        }
        Event::ApiKeyRevoked(e) => {
            if let Some(k) = s.api_keys.get_mut(&e.key) {
                k.revoked = true;
            }
        }
        Event::IntegrationCreated(e) => {
            s.integrations
                .entry(e.integration.clone())
                .or_insert_with(|| Integration {
                    name: e.name.clone(),
                    user: e.user.clone(),
                    password_bcrypt: e.password_bcrypt.clone(),
                    revoked: false,
                });
        }
        Event::IntegrationRevoked(e) => {
            if let Some(i) = s.integrations.get_mut(&e.integration) {
                i.revoked = true;
            }
        }
        Event::ServiceNameClaimed(e) => {
            s.service_names
                .entry(e.name.clone())
                .or_insert_with(|| e.service.clone());
        }
        Event::ServiceNameReleased(e) if s.service_names.get(&e.name) == Some(&e.service) => {
            s.service_names.remove(&e.name);
        }
        Event::NotificationSettingsChanged(e) => {
            s.notifications = NotificationSettings {
                notify: e.notify,
                email: e.email.clone(),
                slack_webhook_url: e.slack_webhook_url.clone(),
                webhook_url: e.webhook_url.clone(),
                webhook_secret: e.webhook_secret.clone(),
            };
        }
        Event::LogStreamChanged(e) => s.log_stream = e.stream.clone(),
        Event::LogStreamDeliveryFailed(e) => {
            s.log_stream_failures.insert(
                e.endpoint.clone(),
                DeliveryFailure {
                    error: e.error.clone(),
                    since: e.failed_at,
                },
            );
            while s.log_stream_failures.len() > KEPT_DELIVERY_FAILURES {
                let oldest = s
                    .log_stream_failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => s.log_stream_failures.remove(&k),
                    None => break,
                };
            }
        }
        Event::LogStreamDeliveryRecovered(e) => {
            s.log_stream_failures.remove(&e.endpoint);
        }
        Event::WebhookCreated(_) | Event::WebhookUpdated(_) | Event::WebhookDeleted(_) => {
            webhook::apply(&mut s.webhooks, event);
        }
        _ => {}
    }
    s
}

/// Folds an envelope.
pub fn fold(state: OwnerState, envelope: &Envelope) -> OwnerState {
    apply(state, &envelope.event)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decides what a command means for the owner.
pub fn decide(state: &OwnerState, command: Command, _ctx: &Ctx) -> Result<Vec<Event>, DomainError> {
    if let Command::Create { owner, name } = command {
        if state.owner.is_some() {
            return Err(DomainError::conflict("owner already exists"));
        }
        if name.trim().is_empty() || name.chars().count() > LABEL_MAX {
            return Err(DomainError::invalid(
                "name",
                format!("must be 1–{LABEL_MAX} characters, not blank"),
            ));
        }
        return Ok(vec![OwnerCreated { owner, name }.into()]);
    }
    if state.owner.is_none() {
        return Err(DomainError::not_found("owner", ""));
    }
    match command {
        Command::Create { .. } => Err(DomainError::conflict("owner already exists")),
        Command::CreateApiKey { key, label, sha256 } => {
            if !is_sha256_hex(&sha256) {
                return Err(DomainError::invalid(
                    "sha256",
                    "must be 64 lowercase hex digits",
                ));
            }
            if label.chars().count() > LABEL_MAX {
                return Err(DomainError::invalid(
                    "label",
                    format!("must be at most {LABEL_MAX} characters"),
                ));
            }
            if let Some(existing) = state.api_keys.get(&key) {
                return if existing.sha256 == sha256 {
                    Ok(vec![])
                } else {
                    Err(DomainError::conflict(format!(
                        "API key id {key} is already used"
                    )))
                };
            }
            if state.api_keys.values().any(|k| k.sha256 == sha256) {
                return Err(DomainError::conflict("an API key with this secret exists"));
            }
            Ok(vec![ApiKeyCreated { key, label, sha256 }.into()])
        }
        Command::RevokeApiKey { key } => match state.api_keys.get(&key) {
            None => Err(DomainError::not_found("API key", &key)),
            Some(k) if k.revoked => Ok(vec![]),
            Some(_) => Ok(vec![ApiKeyRevoked { key }.into()]),
        },
        Command::CreateIntegration {
            integration,
            name,
            user,
            password_bcrypt,
        } => {
            if name.trim().is_empty() || name.chars().count() > LABEL_MAX {
                return Err(DomainError::invalid(
                    "name",
                    format!("must be 1–{LABEL_MAX} characters, not blank"),
                ));
            }
            if let Some(existing) = state.integrations.get(&integration) {
                return if existing.user == user && existing.password_bcrypt == password_bcrypt {
                    Ok(vec![])
                } else {
                    Err(DomainError::conflict(format!(
                        "integration id {integration} is already used"
                    )))
                };
            }
            let active: Vec<_> = state.integrations.values().filter(|i| !i.revoked).collect();
            if active.iter().any(|i| i.name == name) {
                return Err(DomainError::conflict(format!(
                    "an integration named {name:?} exists"
                )));
            }
            if active.len() >= MAX_INTEGRATIONS {
                return Err(DomainError::conflict(format!(
                    "an owner may have at most {MAX_INTEGRATIONS} integrations; revoke one first"
                )));
            }
            if !password_bcrypt.starts_with("$2") {
                return Err(DomainError::invalid(
                    "passwordBcrypt",
                    "must be a bcrypt hash",
                ));
            }
            Ok(vec![IntegrationCreated {
                integration,
                name,
                user,
                password_bcrypt,
            }
            .into()])
        }
        Command::RevokeIntegration { integration } => match state.integrations.get(&integration) {
            None => Err(DomainError::not_found("integration", &integration)),
            Some(i) if i.revoked => Ok(vec![]),
            Some(_) => Ok(vec![IntegrationRevoked { integration }.into()]),
        },
        Command::ClaimServiceName { name, service } => {
            validate::name(&name)?;
            match state.service_names.get(&name) {
                Some(holder) if *holder == service => Ok(vec![]),
                Some(holder) => Err(DomainError::NameTaken {
                    name,
                    by: holder.clone(),
                }),
                None => Ok(vec![ServiceNameClaimed { name, service }.into()]),
            }
        }
        Command::ReleaseServiceName { name, service } => match state.service_names.get(&name) {
            Some(holder) if *holder == service => {
                Ok(vec![ServiceNameReleased { name, service }.into()])
            }
            // Not held by this service: nothing to give back.
            _ => Ok(vec![]),
        },
        Command::SetNotificationSettings(settings) => {
            if let Some(email) = &settings.email {
                let ok = email.len() <= 254
                    && !email.contains(char::is_whitespace)
                    && email
                        .split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
                if !ok {
                    return Err(DomainError::invalid("email", "is not an email address"));
                }
            }
            if settings == state.notifications {
                return Ok(vec![]);
            }
            Ok(vec![NotificationSettingsChanged {
                notify: settings.notify,
                email: settings.email,
                slack_webhook_url: settings.slack_webhook_url,
                webhook_url: settings.webhook_url,
                webhook_secret: settings.webhook_secret,
            }
            .into()])
        }
        Command::SetLogStream(stream) => {
            if let Some(st) = &stream {
                crate::log_stream::check(st)?;
            }
            if stream == state.log_stream {
                return Ok(vec![]);
            }
            Ok(vec![LogStreamChanged { stream }.into()])
        }
        Command::RecordLogStreamDelivery { endpoint, failure } => {
            let failing = state.log_stream_failures.contains_key(&endpoint);
            Ok(match failure {
                Some((error, failed_at)) if !failing => vec![LogStreamDeliveryFailed {
                    endpoint,
                    error: error.chars().take(300).collect(),
                    failed_at,
                }
                .into()],
                None if failing => vec![LogStreamDeliveryRecovered { endpoint }.into()],
                _ => vec![],
            })
        }
        Command::CreateWebhook {
            webhook,
            settings,
            secret,
        } => webhook::create(&state.webhooks, webhook, settings, secret),
        Command::UpdateWebhook { webhook, settings } => {
            webhook::update(&state.webhooks, webhook, settings)
        }
        Command::DeleteWebhook { webhook } => webhook::delete(&state.webhooks, webhook),
    }
}

/// The owner aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner;

impl Aggregate for Owner {
    type State = OwnerState;
    type Command = Command;

    fn apply(state: OwnerState, event: &Event) -> OwnerState {
        apply(state, event)
    }

    fn decide(state: &OwnerState, command: Command, ctx: &Ctx) -> Result<Vec<Event>, DomainError> {
        decide(state, command, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use berth_schemas::ids::TeamId;

    fn owner() -> OwnerId {
        OwnerId::Team("tea-aaaaaaaaaaaaaaaaaaaa".parse::<TeamId>().unwrap())
    }
    fn srv(c: char) -> ServiceId {
        format!("srv-{}", c.to_string().repeat(20)).parse().unwrap()
    }
    fn created() -> Event {
        OwnerCreated {
            owner: owner(),
            name: "acme".into(),
        }
        .into()
    }
    fn when(s: &OwnerState, c: Command) -> Result<Vec<Event>, DomainError> {
        decide(s, c, &Ctx::default())
    }

    #[test]
    fn a_log_stream_endpoint_failing_is_recorded_once_until_it_delivers_and_failures_stay_few() {
        let mut s = Owner::replay(&[created()]);
        let t0 = chrono::Utc::now();
        let fail = |e: &str, error: &str| Command::RecordLogStreamDelivery {
            endpoint: e.into(),
            failure: Some((error.into(), t0)),
        };
        let ok = |e: &str| Command::RecordLogStreamDelivery {
            endpoint: e.into(),
            failure: None,
        };
        // Delivering, as it was: nothing.
        assert!(when(&s, ok("logs.test:6514")).unwrap().is_empty());
        let failed = when(&s, fail("logs.test:6514", "unreachable: refused")).unwrap();
        assert!(
            matches!(&failed[..], [Event::LogStreamDeliveryFailed(e)] if e.error == "unreachable: refused")
        );
        s = failed.iter().fold(s, apply);
        let f = &s.log_stream_failures["logs.test:6514"];
        assert_eq!((f.error.as_str(), f.since), ("unreachable: refused", t0));
        // Failing already: the first failure is kept.
        assert!(when(&s, fail("logs.test:6514", "another"))
            .unwrap()
            .is_empty());
        let back = when(&s, ok("logs.test:6514")).unwrap();
        assert!(matches!(&back[..], [Event::LogStreamDeliveryRecovered(_)]));
        s = back.iter().fold(s, apply);
        assert!(s.log_stream_failures.is_empty());
        // A long error is cut; many endpoints failing keep the newest.
        let long = when(&s, fail("a.test:1", &"x".repeat(1000))).unwrap();
        assert!(matches!(&long[..], [Event::LogStreamDeliveryFailed(e)] if e.error.len() == 300));
        for n in 0..(KEPT_DELIVERY_FAILURES + 5) {
            let e = LogStreamDeliveryFailed {
                endpoint: format!("h{n}.test:1"),
                error: "x".into(),
                failed_at: t0 + chrono::Duration::seconds(n as i64),
            };
            s = apply(s, &e.into());
        }
        assert_eq!(s.log_stream_failures.len(), KEPT_DELIVERY_FAILURES);
        assert!(!s.log_stream_failures.contains_key("h0.test:1"));
        assert!(s
            .log_stream_failures
            .contains_key(&format!("h{}.test:1", KEPT_DELIVERY_FAILURES + 4)));
    }

    #[test]
    fn service_names_are_unique_per_owner() {
        let s = Owner::replay(&[
            created(),
            ServiceNameClaimed {
                name: "web".into(),
                service: srv('a'),
            }
            .into(),
        ]);
        let err = when(
            &s,
            Command::ClaimServiceName {
                name: "web".into(),
                service: srv('b'),
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            DomainError::NameTaken {
                name: "web".into(),
                by: srv('a')
            }
        );
        assert_eq!(err.kind(), ErrorKind::Conflict);
        // The holder claiming again is a no-op; another name is free.
        assert_eq!(
            when(
                &s,
                Command::ClaimServiceName {
                    name: "web".into(),
                    service: srv('a')
                }
            )
            .unwrap(),
            vec![]
        );
        assert_eq!(
            when(
                &s,
                Command::ClaimServiceName {
                    name: "api".into(),
                    service: srv('b')
                }
            )
            .unwrap(),
            vec![ServiceNameClaimed {
                name: "api".into(),
                service: srv('b')
            }
            .into()]
        );
        // Invalid names are refused before uniqueness.
        assert_eq!(
            when(
                &s,
                Command::ClaimServiceName {
                    name: "Web".into(),
                    service: srv('b')
                }
            )
            .unwrap_err()
            .kind(),
            ErrorKind::Invalid
        );
        // Only the holder can release; then the name is free again.
        assert_eq!(
            when(
                &s,
                Command::ReleaseServiceName {
                    name: "web".into(),
                    service: srv('b')
                }
            )
            .unwrap(),
            vec![]
        );
        let released = when(
            &s,
            Command::ReleaseServiceName {
                name: "web".into(),
                service: srv('a'),
            },
        )
        .unwrap();
        let s = Owner::apply_all(s, &released);
        assert!(s.service_named("web").is_none());
        assert_eq!(
            when(
                &s,
                Command::ClaimServiceName {
                    name: "web".into(),
                    service: srv('b')
                }
            )
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn api_keys_are_created_found_and_revoked() {
        let s = Owner::replay(&[created()]);
        let key: ApiKeyId = "key-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let sha = "ab".repeat(32);
        let bad = when(
            &s,
            Command::CreateApiKey {
                key: key.clone(),
                label: "ci".into(),
                sha256: "xyz".into(),
            },
        );
        assert_eq!(bad.unwrap_err().kind(), ErrorKind::Invalid);
        let events = when(
            &s,
            Command::CreateApiKey {
                key: key.clone(),
                label: "ci".into(),
                sha256: sha.clone(),
            },
        )
        .unwrap();
        let s = Owner::apply_all(s, &events);
        assert_eq!(s.key_by_sha256(&sha), Some(&key));
        let events = when(&s, Command::RevokeApiKey { key: key.clone() }).unwrap();
        let s = Owner::apply_all(s, &events);
        assert_eq!(s.key_by_sha256(&sha), None);
        assert_eq!(when(&s, Command::RevokeApiKey { key }).unwrap(), vec![]);
    }

    #[test]
    fn commands_need_an_owner_and_settings_validate_email() {
        let empty = OwnerState::default();
        assert_eq!(
            when(
                &empty,
                Command::ClaimServiceName {
                    name: "web".into(),
                    service: srv('a')
                }
            )
            .unwrap_err()
            .kind(),
            ErrorKind::NotFound
        );
        let s = Owner::replay(&[created()]);
        let bad = NotificationSettings {
            email: Some("nope".into()),
            ..NotificationSettings::default()
        };
        assert_eq!(
            when(&s, Command::SetNotificationSettings(bad))
                .unwrap_err()
                .kind(),
            ErrorKind::Invalid
        );
        let good = NotificationSettings {
            notify: NotifySetting::All,
            email: Some("ops@example.com".into()),
            ..NotificationSettings::default()
        };
        let events = when(&s, Command::SetNotificationSettings(good.clone())).unwrap();
        let s = Owner::apply_all(s, &events);
        assert_eq!(s.notifications, good);
        assert_eq!(
            when(&s, Command::SetNotificationSettings(good)).unwrap(),
            vec![]
        );
    }
}

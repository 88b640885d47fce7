//! An owner's webhooks (Render's webhooks API): endpoints that are posted
//! the owner's service events, signed the Standard-Webhooks way with a
//! secret berth makes. Kept on the owner's aggregate (at most
//! [`MAX_WEBHOOKS`]); URL and secret are sealed before they reach it, so
//! the rules here see only names, switches and event types.

use std::collections::BTreeMap;

use berth_schemas::events::{WebhookCreated, WebhookDeleted, WebhookUpdated};
use berth_schemas::ids::WebhookId;
use berth_schemas::model::Sealed;
use berth_schemas::Event;
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::timeline::{RENDER_ONLY_TYPES, TYPES};

/// Webhooks an owner may have at once (Render's limit for a workspace).
pub const MAX_WEBHOOKS: usize = 100;

const NAME_MAX: usize = 100;

/// One webhook as the owner's state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub name: String,
    pub url: Sealed,
    pub secret: Sealed,
    pub enabled: bool,
    /// Event types sent; empty: every type.
    pub event_filter: Vec<String>,
}

impl Webhook {
    /// Whether an event of type `kind` is sent to it now.
    pub fn wants(&self, kind: &str) -> bool {
        self.enabled
            && (self.event_filter.is_empty() || self.event_filter.iter().any(|t| t == kind))
    }
}

/// What a create or an update asks for (the URL already checked and sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub name: String,
    pub url: Sealed,
    pub enabled: bool,
    pub event_filter: Vec<String>,
}

/// Whether `kind` is an event type a webhook may name: one berth records,
/// or one of Render's it never does (builds, databases, …: accepted, so a
/// filter written for Render is taken as is, and never sent).
pub fn known_type(kind: &str) -> bool {
    TYPES.contains(&kind) || RENDER_ONLY_TYPES.contains(&kind)
}

/// The settings checked: a name, and known event types, each once (in
/// the order given).
fn check(mut s: Settings) -> Result<Settings, DomainError> {
    if s.name.trim().is_empty()
        || s.name.chars().count() > NAME_MAX
        || s.name.contains(char::is_control)
    {
        return Err(DomainError::invalid(
            "name",
            format!("must be 1–{NAME_MAX} characters on one line, not blank"),
        ));
    }
    if let Some(bad) = s.event_filter.iter().find(|t| !known_type(t)) {
        let shown: String = bad.chars().take(64).collect();
        return Err(DomainError::invalid(
            "eventFilter",
            format!("{shown:?} is not an event type (see the event types of GET /v1/services/{{serviceId}}/events)"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    s.event_filter.retain(|t| seen.insert(t.clone()));
    Ok(s)
}

/// Creating `webhook` with `secret`.
pub fn create(
    hooks: &BTreeMap<WebhookId, Webhook>,
    webhook: WebhookId,
    settings: Settings,
    secret: Sealed,
) -> Result<Vec<Event>, DomainError> {
    if let Some(existing) = hooks.get(&webhook) {
        // The same create again (a retried request): nothing new.
        return if existing.secret == secret {
            Ok(vec![])
        } else {
            Err(DomainError::conflict(format!(
                "webhook id {webhook} is already used"
            )))
        };
    }
    if hooks.len() >= MAX_WEBHOOKS {
        return Err(DomainError::conflict(format!(
            "an owner may have at most {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let s = check(settings)?;
    Ok(vec![WebhookCreated {
        webhook,
        name: s.name,
        url: s.url,
        secret,
        enabled: s.enabled,
        event_filter: s.event_filter,
    }
    .into()])
}

/// Changing `webhook` to `settings` (nothing when they are what it has).
pub fn update(
    hooks: &BTreeMap<WebhookId, Webhook>,
    webhook: WebhookId,
    settings: Settings,
) -> Result<Vec<Event>, DomainError> {
    let Some(existing) = hooks.get(&webhook) else {
        return Err(DomainError::not_found("webhook", &webhook));
    };
    let s = check(settings)?;
    if s.name == existing.name
        && s.url == existing.url
        && s.enabled == existing.enabled
        && s.event_filter == existing.event_filter
    {
        return Ok(vec![]);
    }
    Ok(vec![WebhookUpdated {
        webhook,
        name: s.name,
        url: s.url,
        enabled: s.enabled,
        event_filter: s.event_filter,
    }
    .into()])
}

/// Deleting `webhook`.
pub fn delete(
    hooks: &BTreeMap<WebhookId, Webhook>,
    webhook: WebhookId,
) -> Result<Vec<Event>, DomainError> {
    if hooks.contains_key(&webhook) {
        Ok(vec![WebhookDeleted { webhook }.into()])
    } else {
        Err(DomainError::not_found("webhook", &webhook))
    }
}

/// Applies a webhook event to the owner's webhooks.
pub fn apply(hooks: &mut BTreeMap<WebhookId, Webhook>, event: &Event) {
    match event {
        Event::WebhookCreated(e) => {
            hooks.entry(e.webhook.clone()).or_insert_with(|| Webhook {
                name: e.name.clone(),
                url: e.url.clone(),
                secret: e.secret.clone(),
                enabled: e.enabled,
                event_filter: e.event_filter.clone(),
            });
        }
        Event::WebhookUpdated(e) => {
            if let Some(h) = hooks.get_mut(&e.webhook) {
                h.name = e.name.clone();
                h.url = e.url.clone();
                h.enabled = e.enabled;
                h.event_filter = e.event_filter.clone();
            }
        }
        Event::WebhookDeleted(e) => {
            hooks.remove(&e.webhook);
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn sealed(n: u8) -> Sealed {
        Sealed {
            kid: "k1".into(),
            ciphertext: format!("c{n}"),
        }
    }
    fn whk(c: char) -> WebhookId {
        format!("whk-{}", c.to_string().repeat(20)).parse().unwrap()
    }
    fn settings(filter: &[&str]) -> Settings {
        Settings {
            name: "deploys".into(),
            url: sealed(1),
            enabled: true,
            event_filter: filter.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn applied(
        mut hooks: BTreeMap<WebhookId, Webhook>,
        events: &[Event],
    ) -> BTreeMap<WebhookId, Webhook> {
        for e in events {
            apply(&mut hooks, e);
        }
        hooks
    }

    #[test]
    fn render_only_types_are_not_types_berth_records() {
        for t in RENDER_ONLY_TYPES {
            assert!(!TYPES.contains(t), "{t} is recorded by berth");
        }
    }

    #[test]
    fn a_webhook_is_created_updated_and_deleted_with_its_filter_checked() {
        let none = BTreeMap::new();
        let made = create(
            &none,
            whk('a'),
            settings(&["deploy_ended", "build_ended", "deploy_ended"]),
            sealed(9),
        )
        .unwrap();
        let hooks = applied(none, &made);
        let h = &hooks[&whk('a')];
        // Duplicates dropped; a Render type berth never records is taken.
        assert_eq!(h.event_filter, ["deploy_ended", "build_ended"]);
        assert!(h.wants("deploy_ended") && !h.wants("deploy_started"));
        assert_eq!(h.secret, sealed(9));

        let bad = create(&hooks, whk('b'), settings(&["deploy_finished"]), sealed(2)).unwrap_err();
        assert!(
            matches!(&bad, DomainError::Invalid { field: "eventFilter", reason } if reason.contains("deploy_finished"))
        );
        let mut blank = settings(&[]);
        blank.name = " ".into();
        assert_eq!(
            create(&hooks, whk('b'), blank, sealed(2))
                .unwrap_err()
                .kind(),
            ErrorKind::Invalid
        );

        // The same settings: nothing; off: every type stops.
        assert!(
            update(&hooks, whk('a'), settings(&["deploy_ended", "build_ended"]))
                .unwrap()
                .is_empty()
        );
        let mut off = settings(&[]);
        off.enabled = false;
        let off = update(&hooks, whk('a'), off).unwrap();
        let hooks = applied(hooks, &off);
        assert!(!hooks[&whk('a')].wants("deploy_ended"));
        assert_eq!(
            hooks[&whk('a')].secret,
            sealed(9),
            "an update keeps the secret"
        );
        assert_eq!(
            update(&hooks, whk('z'), settings(&[])).unwrap_err().kind(),
            ErrorKind::NotFound
        );

        let hooks = applied(hooks.clone(), &delete(&hooks, whk('a')).unwrap());
        assert!(hooks.is_empty());
        assert_eq!(
            delete(&hooks, whk('a')).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn an_owner_has_at_most_a_hundred_webhooks() {
        let mut hooks = BTreeMap::new();
        for _ in 0..MAX_WEBHOOKS {
            let id = WebhookId::generate();
            hooks = applied(
                hooks.clone(),
                &create(&hooks, id, settings(&[]), sealed(1)).unwrap(),
            );
        }
        let full = create(&hooks, whk('x'), settings(&[]), sealed(1)).unwrap_err();
        assert_eq!(full.kind(), ErrorKind::Conflict);
        assert!(full.to_string().contains("at most 100"));
    }
}

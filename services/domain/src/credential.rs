//! The registry credential aggregate (SPEC §3): an owner's registry login,
//! reusable by many services, removable only while no service uses it.
//!
//! Attaching and removing both decide on the credential's own subject with
//! the expected subject sequence, so of a concurrent "create service with X"
//! (attach) and "remove X" exactly one is decided against the state that
//! already includes the other, and refused: a removed credential cannot be
//! attached, an attached one cannot be removed.

use std::collections::BTreeSet;

use berth_schemas::events::{
    CredentialAttached, CredentialCreated, CredentialDetached, CredentialRemoved, CredentialRotated,
};
use berth_schemas::ids::{CredentialId, OwnerId, ServiceId};
use berth_schemas::model::{RegistryKind, Sealed};
use berth_schemas::{Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;
use crate::reference::{Reference, DOCKER_HUB};

const NAME_MAX: usize = 100;
const USERNAME_MAX: usize = 256;

/// A live credential. The token stays sealed; nothing here can open it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub owner: OwnerId,
    pub name: String,
    pub registry: RegistryKind,
    pub host: Option<String>,
    pub username: String,
    pub token: Sealed,
    /// Services using it.
    pub attached: BTreeSet<ServiceId>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A credential's life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CredentialState {
    /// No `credential_created` yet.
    #[default]
    NotCreated,
    Active(Box<Credential>),
    /// Removed; every command is refused as not found.
    Removed,
}

impl CredentialState {
    /// The live credential, if any.
    pub fn active(&self) -> Option<&Credential> {
        match self {
            CredentialState::Active(c) => Some(c),
            _ => None,
        }
    }

    /// The live credential `id` (this state) if `owner` may pull from the
    /// registry `domain` with it: it is `owner`'s and made for that
    /// registry. Otherwise why not, naming no secret. Every place that
    /// sends a token (the resolver's checks, a node's pulls) asks this.
    pub fn usable(
        &self,
        id: &CredentialId,
        owner: &OwnerId,
        domain: &str,
    ) -> Result<&Credential, String> {
        let Some(c) = self.active().filter(|c| &c.owner == owner) else {
            return Err(format!(
                "registry credential {id} does not exist (removed, or not this owner's)"
            ));
        };
        if !serves(c.registry, c.host.as_deref(), domain) {
            return Err(format!(
                "registry credential {id} is for {}, not for {domain}",
                c.host
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", c.registry).to_uppercase())
            ));
        }
        Ok(c)
    }
}

/// Whether a credential for `registry` (and `host`, if set) may be sent to
/// the registry `domain` of an image reference. A token is never sent to a
/// registry it was not made for.
pub fn serves(registry: RegistryKind, host: Option<&str>, domain: &str) -> bool {
    if let Some(h) = host {
        return h == domain;
    }
    match registry {
        RegistryKind::Docker => domain == DOCKER_HUB,
        RegistryKind::Github => domain == "ghcr.io",
        RegistryKind::Gitlab => domain == "registry.gitlab.com",
        RegistryKind::GoogleArtifact => {
            domain.ends_with("-docker.pkg.dev") || domain == "gcr.io" || domain.ends_with(".gcr.io")
        }
        RegistryKind::Generic => false,
    }
}

/// What callers ask of a credential.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        owner: OwnerId,
        name: String,
        registry: RegistryKind,
        /// Required for `GENERIC`; optional otherwise (e.g. a regional
        /// Artifact Registry host).
        host: Option<String>,
        username: String,
        /// Sealed by the caller with the operator's key.
        token: Sealed,
    },
    /// Replace the token (and optionally the username or name).
    Rotate {
        token: Sealed,
        username: Option<String>,
        name: Option<String>,
    },
    /// A service of `owner` starts using the credential.
    Attach {
        service: ServiceId,
        owner: OwnerId,
    },
    Detach {
        service: ServiceId,
    },
    Remove,
}

/// Applies one event without a timestamp.
pub fn apply(state: CredentialState, event: &Event) -> CredentialState {
    apply_at(state, event, None)
}

/// Folds an envelope (records its time).
pub fn fold(state: CredentialState, envelope: &Envelope) -> CredentialState {
    apply_at(state, &envelope.event, Some(envelope.time))
}

/// Applies one event, recording `time` as the last update.
pub fn apply_at(
    state: CredentialState,
    event: &Event,
    time: Option<DateTime<Utc>>,
) -> CredentialState {
    match (state, event) {
        (CredentialState::NotCreated, Event::CredentialCreated(e)) => {
            CredentialState::Active(Box::new(Credential {
                owner: e.owner.clone(),
                name: e.name.clone(),
                registry: e.registry,
                host: e.host.clone(),
                username: e.username.clone(),
                token: e.token.clone(),
                attached: BTreeSet::new(),
                updated_at: time,
            }))
        }
        (CredentialState::Active(mut c), Event::CredentialRotated(e)) => {
            c.token = e.token.clone();
            if let Some(u) = &e.username {
                c.username = u.clone();
            }
            if let Some(n) = &e.name {
                c.name = n.clone();
            }
            c.updated_at = time;
            CredentialState::Active(c)
        }
        (CredentialState::Active(mut c), Event::CredentialAttached(e)) => {
            c.attached.insert(e.service.clone());
            CredentialState::Active(c)
        }
        (CredentialState::Active(mut c), Event::CredentialDetached(e)) => {
            c.attached.remove(&e.service);
            CredentialState::Active(c)
        }
        (CredentialState::Active(_), Event::CredentialRemoved(_)) => CredentialState::Removed,
        (state, _) => state,
    }
}

fn check_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > NAME_MAX {
        return Err(DomainError::invalid(
            "name",
            format!("must be 1–{NAME_MAX} characters, not blank"),
        ));
    }
    Ok(())
}

fn check_username(username: &str) -> Result<(), DomainError> {
    if username.is_empty() || username.len() > USERNAME_MAX || username.contains(char::is_control) {
        return Err(DomainError::invalid(
            "username",
            format!("must be 1–{USERNAME_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A registry host as image references write it (`host[:port]`).
fn check_host(host: &str) -> Result<(), DomainError> {
    let probe = Reference::parse(&format!("{host}/probe"));
    match probe {
        Ok(r) if r.domain() == host => Ok(()),
        _ => Err(DomainError::invalid(
            "host",
            format!(
                "{:?} is not a registry host such as registry.example.com:5000",
                host.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// Decides what a command means for the credential.
pub fn decide(
    state: &CredentialState,
    command: Command,
    _ctx: &Ctx,
) -> Result<Vec<Event>, DomainError> {
    let not_found = || DomainError::not_found("registry credential", "");
    match (state, command) {
        (
            CredentialState::NotCreated,
            Command::Create {
                owner,
                name,
                registry,
                host,
                username,
                token,
            },
        ) => {
            check_name(&name)?;
            check_username(&username)?;
            match (&host, registry) {
                (Some(h), _) => check_host(h)?,
                (None, RegistryKind::Generic) => {
                    return Err(DomainError::invalid(
                        "host",
                        "a GENERIC credential needs the registry host",
                    ))
                }
                (None, _) => {}
            }
            Ok(vec![CredentialCreated {
                owner,
                name,
                registry,
                host,
                username,
                token,
            }
            .into()])
        }
        (_, Command::Create { .. }) => {
            Err(DomainError::conflict("registry credential already exists"))
        }
        (CredentialState::Active(c), command) => decide_active(c, command),
        (CredentialState::NotCreated | CredentialState::Removed, _) => Err(not_found()),
    }
}

fn decide_active(c: &Credential, command: Command) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Create { .. } => Err(DomainError::conflict("registry credential already exists")),
        Command::Rotate {
            token,
            username,
            name,
        } => {
            if let Some(n) = &name {
                check_name(n)?;
            }
            if let Some(u) = &username {
                check_username(u)?;
            }
            Ok(vec![CredentialRotated {
                token,
                username,
                name,
            }
            .into()])
        }
        Command::Attach { service, owner } => {
            // Nothing crosses owners; do not reveal that the credential exists.
            if owner != c.owner {
                return Err(DomainError::not_found("registry credential", ""));
            }
            if c.attached.contains(&service) {
                return Ok(vec![]);
            }
            Ok(vec![CredentialAttached { service }.into()])
        }
        Command::Detach { service } => {
            if !c.attached.contains(&service) {
                return Ok(vec![]);
            }
            Ok(vec![CredentialDetached { service }.into()])
        }
        Command::Remove => {
            if !c.attached.is_empty() {
                return Err(DomainError::CredentialInUse {
                    services: c.attached.iter().cloned().collect(),
                });
            }
            Ok(vec![CredentialRemoved {}.into()])
        }
    }
}

/// The credential aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredentialAggregate;

impl Aggregate for CredentialAggregate {
    type State = CredentialState;
    type Command = Command;

    fn apply(state: CredentialState, event: &Event) -> CredentialState {
        apply(state, event)
    }

    fn fold(state: CredentialState, envelope: &Envelope) -> CredentialState {
        fold(state, envelope)
    }

    fn decide(
        state: &CredentialState,
        command: Command,
        ctx: &Ctx,
    ) -> Result<Vec<Event>, DomainError> {
        decide(state, command, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use berth_schemas::ids::UserId;

    fn sealed(s: &str) -> Sealed {
        Sealed {
            kid: "k1".into(),
            ciphertext: s.into(),
        }
    }

    fn owner() -> OwnerId {
        OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap())
    }

    fn created(registry: RegistryKind, host: Option<&str>) -> Event {
        CredentialCreated {
            owner: owner(),
            name: "ci".into(),
            registry,
            host: host.map(str::to_owned),
            username: "bot".into(),
            token: sealed("t1"),
        }
        .into()
    }

    fn given(events: &[Event]) -> CredentialState {
        CredentialAggregate::replay(events)
    }

    fn when(state: &CredentialState, c: Command) -> Result<Vec<Event>, DomainError> {
        decide(state, c, &Ctx::default())
    }

    fn create(registry: RegistryKind, host: Option<&str>) -> Command {
        Command::Create {
            owner: owner(),
            name: "ci".into(),
            registry,
            host: host.map(str::to_owned),
            username: "bot".into(),
            token: sealed("t1"),
        }
    }

    #[test]
    fn create_checks_generic_host() {
        let s = given(&[]);
        let err = when(&s, create(RegistryKind::Generic, None)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.to_string().contains("host"), "{err}");
        for bad in ["not a host", "registry", "exa mple.com"] {
            let err = when(&s, create(RegistryKind::Generic, Some(bad))).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{bad}");
        }
        for good in ["registry.example.com", "localhost:5000", "10.0.0.1:5000"] {
            assert_eq!(
                when(&s, create(RegistryKind::Generic, Some(good))).unwrap(),
                vec![created(RegistryKind::Generic, Some(good))]
            );
        }
        assert_eq!(
            when(&s, create(RegistryKind::Docker, None)).unwrap(),
            vec![created(RegistryKind::Docker, None)]
        );
        let twice = given(&[created(RegistryKind::Docker, None)]);
        assert_eq!(
            when(&twice, create(RegistryKind::Docker, None))
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
    }

    #[test]
    fn remove_is_refused_naming_every_attached_service() {
        let a: ServiceId = "srv-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let b: ServiceId = "srv-bbbbbbbbbbbbbbbbbbbb".parse().unwrap();
        let s = given(&[
            created(RegistryKind::Github, None),
            CredentialAttached { service: b.clone() }.into(),
            CredentialAttached { service: a.clone() }.into(),
        ]);
        let err = when(&s, Command::Remove).unwrap_err();
        assert_eq!(
            err,
            DomainError::CredentialInUse {
                services: vec![a.clone(), b.clone()]
            }
        );
        assert_eq!(err.http_status(), 409);
        let msg = err.to_string();
        assert!(
            msg.contains(a.as_str()) && msg.contains(b.as_str()),
            "{msg}"
        );

        // Detach one: still refused, naming only the other.
        let events = when(&s, Command::Detach { service: a.clone() }).unwrap();
        assert_eq!(
            events,
            vec![CredentialDetached { service: a.clone() }.into()]
        );
        let s = CredentialAggregate::apply_all(s, &events);
        assert_eq!(
            when(&s, Command::Remove).unwrap_err(),
            DomainError::CredentialInUse {
                services: vec![b.clone()]
            }
        );
        let s = apply(s, &CredentialDetached { service: b }.into());
        assert_eq!(
            when(&s, Command::Remove).unwrap(),
            vec![CredentialRemoved {}.into()]
        );
    }

    #[test]
    fn attach_after_remove_is_refused_and_remove_after_attach_too() {
        let a: ServiceId = "srv-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let base = given(&[created(RegistryKind::Docker, None)]);
        // Both decided against the same state: whichever is appended first
        // makes the other's re-decision fail.
        let attach = Command::Attach {
            service: a.clone(),
            owner: owner(),
        };
        let attached =
            CredentialAggregate::apply_all(base.clone(), &when(&base, attach.clone()).unwrap());
        assert_eq!(
            when(&attached, Command::Remove).unwrap_err().kind(),
            ErrorKind::Conflict
        );
        let removed =
            CredentialAggregate::apply_all(base.clone(), &when(&base, Command::Remove).unwrap());
        assert_eq!(removed, CredentialState::Removed);
        assert_eq!(
            when(&removed, attach).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            when(&removed, Command::Remove).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn attach_is_idempotent_and_owner_scoped() {
        let a: ServiceId = "srv-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let s = given(&[
            created(RegistryKind::Docker, None),
            CredentialAttached { service: a.clone() }.into(),
        ]);
        assert_eq!(
            when(
                &s,
                Command::Attach {
                    service: a.clone(),
                    owner: owner()
                }
            )
            .unwrap(),
            vec![]
        );
        let other = OwnerId::User("usr-cccccccccccccccccccc".parse::<UserId>().unwrap());
        let b: ServiceId = "srv-bbbbbbbbbbbbbbbbbbbb".parse().unwrap();
        assert_eq!(
            when(
                &s,
                Command::Attach {
                    service: b,
                    owner: other
                }
            )
            .unwrap_err()
            .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn rotate_replaces_the_token() {
        let s = given(&[created(RegistryKind::Docker, None)]);
        let events = when(
            &s,
            Command::Rotate {
                token: sealed("t2"),
                username: None,
                name: Some("renamed".into()),
            },
        )
        .unwrap();
        let s = CredentialAggregate::apply_all(s, &events);
        let c = s.active().unwrap();
        assert_eq!(c.token, sealed("t2"));
        assert_eq!(c.name, "renamed");
        assert_eq!(c.username, "bot");
    }

    #[test]
    fn tokens_go_only_to_the_registry_they_are_for() {
        assert!(serves(RegistryKind::Docker, None, "docker.io"));
        assert!(!serves(RegistryKind::Docker, None, "ghcr.io"));
        assert!(serves(RegistryKind::Github, None, "ghcr.io"));
        assert!(!serves(RegistryKind::Github, None, "evil.example.com"));
        assert!(serves(RegistryKind::Gitlab, None, "registry.gitlab.com"));
        assert!(serves(
            RegistryKind::GoogleArtifact,
            None,
            "europe-west1-docker.pkg.dev"
        ));
        assert!(serves(RegistryKind::GoogleArtifact, None, "eu.gcr.io"));
        assert!(!serves(
            RegistryKind::GoogleArtifact,
            None,
            "pkg.dev.evil.io"
        ));
        assert!(serves(
            RegistryKind::Generic,
            Some("127.0.0.1:5000"),
            "127.0.0.1:5000"
        ));
        assert!(!serves(
            RegistryKind::Generic,
            Some("127.0.0.1:5000"),
            "127.0.0.1:5001"
        ));
        assert!(!serves(RegistryKind::Generic, None, "127.0.0.1:5000"));
        // An explicit host wins over the kind's default.
        assert!(serves(
            RegistryKind::Github,
            Some("ghcr.example.com"),
            "ghcr.example.com"
        ));
        assert!(!serves(
            RegistryKind::Github,
            Some("ghcr.example.com"),
            "ghcr.io"
        ));
    }

    #[test]
    fn usable_only_by_its_owner_for_its_registry_while_live() {
        let id: CredentialId = "rgc-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let live = given(&[created(RegistryKind::Generic, Some("reg.example.com:5000"))]);
        let c = live.usable(&id, &owner(), "reg.example.com:5000").unwrap();
        assert_eq!(c.username, "bot");
        let stranger = OwnerId::User("usr-bbbbbbbbbbbbbbbbbbbb".parse::<UserId>().unwrap());
        let e = live
            .usable(&id, &stranger, "reg.example.com:5000")
            .unwrap_err();
        assert!(e.contains("not this owner's"), "{e}");
        let e = live.usable(&id, &owner(), "ghcr.io").unwrap_err();
        assert_eq!(
            e,
            "registry credential rgc-aaaaaaaaaaaaaaaaaaaa is for reg.example.com:5000, not for ghcr.io"
        );
        let removed = given(&[
            created(RegistryKind::Generic, Some("reg.example.com:5000")),
            CredentialRemoved {}.into(),
        ]);
        assert!(removed
            .usable(&id, &owner(), "reg.example.com:5000")
            .is_err());
        assert!(CredentialState::NotCreated
            .usable(&id, &owner(), "reg.example.com:5000")
            .is_err());
    }
}

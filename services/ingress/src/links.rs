//! The links that multi-step operations keep between aggregates, folded
//! from the log, and the repairs they need.
//!
//! Three facts live away from the service they are about: an owner's
//! claim on a service name (unique per owner), a credential's attachment to
//! a service (a credential in use cannot be removed) and the claim on a
//! custom domain name (unique across owners). Creating, renaming,
//! deleting a service and changing its credential append on the owner or
//! credential and on the service one after the other, so a process that
//! dies in between leaves them disagreeing. The service is the truth:
//!
//! - an owner holds name N for service S ⇔ S exists, is the owner's, and is
//!   named N;
//! - credential C is attached to S ⇔ S exists and uses C;
//! - domain D is claimed for S ⇔ S exists and has custom domain D.
//!
//! [`Links::repairs`] lists what breaks that. A link the service does not
//! back is given back ([`Repair::Release`], [`Repair::Detach`]) only once
//! both it and the service's last change are older than a grace period:
//! before that it may be an operation still in flight (a creation between
//! its claim and its `service_created`). A service that uses a name or
//! credential it does not hold ([`Repair::Claim`], [`Repair::Attach`])
//! needs no grace: no operation ever makes the service name something
//! before it holds it, so only a late append after a release causes it.
//!
//! Times are the events' own (the deciding process's clock), so a repair
//! of leftovers from before a restart needs no waiting; a clock ahead of
//! the writer's by more than the grace period only makes an in-flight
//! operation fail and be undone (see [`crate::repair`]), never breaks the
//! links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use berth_schemas::ids::{CredentialId, OwnerId, ServiceId};
use berth_schemas::{AggregateId, Envelope, Event};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// When something happened: the event's time and its commit's position in
/// the log (which makes repair idempotency keys the same on every replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub time: DateTime<Utc>,
    pub seq: u64,
}

/// What the links need of a created, not deleted service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Uses {
    owner: OwnerId,
    name: String,
    credential: Option<CredentialId>,
    /// Its custom domains.
    #[serde(default)]
    domains: BTreeSet<String>,
}

/// A service the log has `service_created` (or its creation given up) for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Known {
    /// `None` once deleted or given up.
    uses: Option<Uses>,
    /// The last change of its name, credential or existence.
    changed: Stamp,
}

/// Name claims, credential attachments and what each service uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Links {
    services: HashMap<ServiceId, Known>,
    /// Owner → name → the service holding it, since when.
    names: HashMap<OwnerId, BTreeMap<String, (ServiceId, Stamp)>>,
    /// Credential → the services attached, since when.
    attached: HashMap<CredentialId, BTreeMap<ServiceId, Stamp>>,
    /// Removed credentials: nothing can be attached to them again.
    removed: BTreeSet<CredentialId>,
    /// Custom domain name → the owner and service holding it, since when.
    #[serde(default)]
    domains: HashMap<String, (OwnerId, ServiceId, Stamp)>,
}

/// One change that brings a link back in line with its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The owner holds `name` for `service`, which does not use it (never
    /// created, deleted, or named otherwise now): give it back.
    Release {
        owner: OwnerId,
        name: String,
        service: ServiceId,
        /// The claim's commit.
        claimed: u64,
    },
    /// `credential` is attached to `service`, which does not use it.
    Detach {
        credential: CredentialId,
        service: ServiceId,
        /// The attachment's commit.
        attached: u64,
    },
    /// `service` is named `name` but the owner does not hold it for it.
    Claim {
        owner: OwnerId,
        name: String,
        service: ServiceId,
        /// The commit that gave the service the name.
        changed: u64,
    },
    /// `service` uses `credential` but is not attached to it.
    Attach {
        credential: CredentialId,
        owner: OwnerId,
        service: ServiceId,
        /// The commit that gave the service the credential.
        changed: u64,
    },
    /// Custom domain `name` is claimed for `service`, which does not have
    /// it (an add that never reached the service, a removal or deletion
    /// that never released it): give it back.
    ReleaseDomain {
        name: String,
        service: ServiceId,
        /// The claim's commit.
        claimed: u64,
    },
    /// `service` has custom domain `name` without holding its claim (an
    /// add that stalled past a release): claim it again, or take it off
    /// the service when another service holds it by now.
    ClaimDomain {
        owner: OwnerId,
        name: String,
        service: ServiceId,
        /// The commit that last changed the service's links.
        changed: u64,
    },
}

impl Repair {
    /// The service the link is about.
    pub fn service(&self) -> &ServiceId {
        match self {
            Repair::Release { service, .. }
            | Repair::Detach { service, .. }
            | Repair::Claim { service, .. }
            | Repair::Attach { service, .. }
            | Repair::ReleaseDomain { service, .. }
            | Repair::ClaimDomain { service, .. } => service,
        }
    }

    /// The idempotency key of its append: the same on every replica that
    /// sees the same log, different for each link.
    pub fn key(&self) -> String {
        match self {
            Repair::Release {
                service, claimed, ..
            } => format!("repair-release-{service}-{claimed}"),
            Repair::Detach {
                service, attached, ..
            } => format!("repair-detach-{service}-{attached}"),
            Repair::Claim {
                service, changed, ..
            } => format!("repair-claim-{service}-{changed}"),
            Repair::Attach {
                service, changed, ..
            } => format!("repair-attach-{service}-{changed}"),
            Repair::ReleaseDomain {
                name,
                service,
                claimed,
            } => format!(
                "repair-release-domain-{service}-{}-{claimed}",
                berth_schemas::ids::DomainId::of_name(name)
            ),
            Repair::ClaimDomain {
                name,
                service,
                changed,
                ..
            } => format!(
                "repair-claim-domain-{service}-{}-{changed}",
                berth_schemas::ids::DomainId::of_name(name)
            ),
        }
    }
}

impl Links {
    /// Applies one event at stream position `stream_seq`; anything that is
    /// not about names, attachments or a service's existence is ignored.
    pub fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        let at = Stamp {
            time: env.time,
            seq: stream_seq,
        };
        match (&env.aggregate, &env.event) {
            // First claim wins, and only the holder releases: as the owner's rules.
            (AggregateId::Owner(o), Event::ServiceNameClaimed(e)) => {
                self.names
                    .entry(o.clone())
                    .or_default()
                    .entry(e.name.clone())
                    .or_insert_with(|| (e.service.clone(), at));
            }
            (AggregateId::Owner(o), Event::ServiceNameReleased(e)) => {
                if let Some(names) = self.names.get_mut(o) {
                    if names.get(&e.name).is_some_and(|(s, _)| *s == e.service) {
                        names.remove(&e.name);
                    }
                    if names.is_empty() {
                        self.names.remove(o);
                    }
                }
            }
            (AggregateId::Credential(c), Event::CredentialAttached(e))
                if !self.removed.contains(c) =>
            {
                self.attached
                    .entry(c.clone())
                    .or_default()
                    .entry(e.service.clone())
                    .or_insert(at);
            }
            (AggregateId::Credential(c), Event::CredentialDetached(e)) => {
                if let Some(services) = self.attached.get_mut(c) {
                    services.remove(&e.service);
                    if services.is_empty() {
                        self.attached.remove(c);
                    }
                }
            }
            (AggregateId::Credential(c), Event::CredentialRemoved(_)) => {
                self.attached.remove(c);
                self.removed.insert(c.clone());
            }
            // First claim wins, and only the holder releases: as the claim's rules.
            (AggregateId::Domain(_), Event::DomainClaimed(e)) => {
                self.domains
                    .entry(e.name.clone())
                    .or_insert_with(|| (e.owner.clone(), e.service.clone(), at));
            }
            (AggregateId::Domain(_), Event::DomainReleased(e))
                if self
                    .domains
                    .get(&e.name)
                    .is_some_and(|(_, s, _)| *s == e.service) =>
            {
                self.domains.remove(&e.name);
            }
            (AggregateId::Service(s), Event::CustomDomainAdded(e)) => {
                if let Some(known) = self.services.get_mut(s) {
                    if let Some(uses) = known.uses.as_mut() {
                        if uses.domains.insert(e.name.clone()) {
                            known.changed = at;
                        }
                    }
                }
            }
            (AggregateId::Service(s), Event::CustomDomainRemoved(e)) => {
                if let Some(known) = self.services.get_mut(s) {
                    if let Some(uses) = known.uses.as_mut() {
                        if uses.domains.remove(&e.name) {
                            known.changed = at;
                        }
                    }
                }
            }
            (AggregateId::Service(s), Event::ServiceCreated(e)) => {
                self.services.entry(s.clone()).or_insert_with(|| Known {
                    uses: Some(Uses {
                        owner: e.owner.clone(),
                        name: e.name.clone(),
                        credential: e.credential.clone(),
                        domains: BTreeSet::new(),
                    }),
                    changed: at,
                });
            }
            (AggregateId::Service(s), Event::ServiceUpdated(e)) => {
                let Some(known) = self.services.get_mut(s) else {
                    return;
                };
                let Some(uses) = known.uses.as_mut() else {
                    return;
                };
                let mut changed = false;
                if let Some(name) = e.settings.name.as_ref().filter(|n| **n != uses.name) {
                    uses.name = name.clone();
                    changed = true;
                }
                if let Some(cred) = e
                    .settings
                    .credential
                    .as_ref()
                    .filter(|c| **c != uses.credential)
                {
                    uses.credential = cred.clone();
                    changed = true;
                }
                if changed {
                    known.changed = at;
                }
            }
            (AggregateId::Service(s), Event::ServiceDeleted(_)) => {
                if let Some(known) = self.services.get_mut(s).filter(|k| k.uses.is_some()) {
                    known.uses = None;
                    known.changed = at;
                }
            }
            (AggregateId::Service(s), Event::ServiceCreationAbandoned(_)) => {
                self.services.entry(s.clone()).or_insert(Known {
                    uses: None,
                    changed: at,
                });
            }
            _ => {}
        }
    }

    /// Every repair due at `now` with links given back only after `grace`.
    /// One pass over the claims, attachments and services in memory: no
    /// I/O, proportional to their number.
    pub fn repairs(&self, now: DateTime<Utc>, grace: Duration) -> Vec<Repair> {
        let grace = TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
        // Old enough: neither the link nor its service changed within `grace`.
        let settled = |link: &Stamp, service: Option<&Known>| {
            let last = service.map_or(link.time, |k| k.changed.time.max(link.time));
            now.signed_duration_since(last) >= grace
        };
        let mut out = Vec::new();
        for (owner, names) in &self.names {
            for (name, (service, since)) in names {
                let known = self.services.get(service);
                let backed = known
                    .and_then(|k| k.uses.as_ref())
                    .is_some_and(|u| u.owner == *owner && u.name == *name);
                if !backed && settled(since, known) {
                    out.push(Repair::Release {
                        owner: owner.clone(),
                        name: name.clone(),
                        service: service.clone(),
                        claimed: since.seq,
                    });
                }
            }
        }
        for (credential, services) in &self.attached {
            for (service, since) in services {
                let known = self.services.get(service);
                let backed = known
                    .and_then(|k| k.uses.as_ref())
                    .is_some_and(|u| u.credential.as_ref() == Some(credential));
                if !backed && settled(since, known) {
                    out.push(Repair::Detach {
                        credential: credential.clone(),
                        service: service.clone(),
                        attached: since.seq,
                    });
                }
            }
        }
        for (name, (_, service, since)) in &self.domains {
            let known = self.services.get(service);
            let backed = known
                .and_then(|k| k.uses.as_ref())
                .is_some_and(|u| u.domains.contains(name));
            if !backed && settled(since, known) {
                out.push(Repair::ReleaseDomain {
                    name: name.clone(),
                    service: service.clone(),
                    claimed: since.seq,
                });
            }
        }
        for (service, known) in &self.services {
            let Some(uses) = &known.uses else { continue };
            for name in &uses.domains {
                let held = self
                    .domains
                    .get(name)
                    .is_some_and(|(_, holder, _)| holder == service);
                if !held {
                    out.push(Repair::ClaimDomain {
                        owner: uses.owner.clone(),
                        name: name.clone(),
                        service: service.clone(),
                        changed: known.changed.seq,
                    });
                }
            }
            let held = self
                .names
                .get(&uses.owner)
                .and_then(|n| n.get(&uses.name))
                .is_some_and(|(holder, _)| holder == service);
            if !held {
                out.push(Repair::Claim {
                    owner: uses.owner.clone(),
                    name: uses.name.clone(),
                    service: service.clone(),
                    changed: known.changed.seq,
                });
            }
            if let Some(credential) = &uses.credential {
                let attached = self
                    .attached
                    .get(credential)
                    .is_some_and(|s| s.contains_key(service));
                // A removed credential cannot be attached again: nothing to do.
                if !attached && !self.removed.contains(credential) {
                    out.push(Repair::Attach {
                        credential: credential.clone(),
                        owner: uses.owner.clone(),
                        service: service.clone(),
                        changed: known.changed.seq,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use berth_schemas::events::{
        CredentialAttached, CredentialDetached, CredentialRemoved, ServiceCreated,
        ServiceCreationAbandoned, ServiceDeleted, ServiceNameClaimed, ServiceNameReleased,
        ServiceSettings, ServiceUpdated,
    };
    use berth_schemas::ids::EventId;
    use berth_schemas::ids::UserId;
    use berth_schemas::model::{Plan, Sealed, ServiceType};
    use berth_schemas::Actor;

    const GRACE: Duration = Duration::from_secs(30);

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    struct Log {
        links: Links,
        seq: u64,
        owner: OwnerId,
    }

    impl Log {
        fn new() -> Self {
            Log {
                links: Links::default(),
                seq: 0,
                owner: OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap()),
            }
        }

        /// Appends `event` on `aggregate` at time `at`; returns its seq.
        fn at(&mut self, at: i64, aggregate: AggregateId, event: impl Into<Event>) -> u64 {
            self.seq += 1;
            let env = Envelope {
                id: EventId::generate(),
                version: 1,
                aggregate,
                sequence: 1,
                time: t(at),
                actor: Actor::system("test"),
                correlation_id: None,
                causation_id: None,
                event: event.into(),
            };
            self.links.apply(self.seq, &env);
            self.seq
        }

        fn owner(&self) -> AggregateId {
            AggregateId::Owner(self.owner.clone())
        }

        fn claim(&mut self, at: i64, name: &str, s: &ServiceId) -> u64 {
            let ev = ServiceNameClaimed {
                name: name.into(),
                service: s.clone(),
            };
            self.at(at, self.owner(), ev)
        }

        fn release(&mut self, at: i64, name: &str, s: &ServiceId) -> u64 {
            let ev = ServiceNameReleased {
                name: name.into(),
                service: s.clone(),
            };
            self.at(at, self.owner(), ev)
        }

        fn attach(&mut self, at: i64, c: &CredentialId, s: &ServiceId) -> u64 {
            let ev = CredentialAttached { service: s.clone() };
            self.at(at, AggregateId::Credential(c.clone()), ev)
        }

        fn detach(&mut self, at: i64, c: &CredentialId, s: &ServiceId) -> u64 {
            let ev = CredentialDetached { service: s.clone() };
            self.at(at, AggregateId::Credential(c.clone()), ev)
        }

        fn create(&mut self, at: i64, s: &ServiceId, name: &str, c: Option<&CredentialId>) -> u64 {
            let ev = ServiceCreated {
                owner: self.owner.clone(),
                name: name.into(),
                service_type: ServiceType::BackgroundWorker,
                image: "docker.io/library/alpine:latest".into(),
                credential: c.cloned(),
                region: "oregon".into(),
                plan: Plan {
                    name: "starter".into(),
                    cpu_millis: 500,
                    memory_mib: 512,
                },
                num_instances: 1,
                docker_command: None,
                env_vars: Default::default(),
                secret_files: Default::default(),
                pre_deploy_command: None,
                health_check_path: None,
                schedule: None,
                notify: None,
                overlap_policy: Default::default(),
                shutdown_delay_secs: 30,
                https_redirect: true,
                hook_key: Sealed {
                    kid: "k".into(),
                    ciphertext: "x".into(),
                },
                disk: None,
                maintenance_mode: None,
                ip_allow_list: None,
            };
            self.at(at, AggregateId::Service(s.clone()), ev)
        }

        fn update(&mut self, at: i64, s: &ServiceId, settings: ServiceSettings) -> u64 {
            self.at(
                at,
                AggregateId::Service(s.clone()),
                ServiceUpdated { settings },
            )
        }

        fn repairs(&self, now: i64) -> Vec<Repair> {
            let mut r = self.links.repairs(t(now), GRACE);
            r.sort_by_key(Repair::key);
            r
        }
    }

    fn srv(c: char) -> ServiceId {
        format!("srv-{}", c.to_string().repeat(20)).parse().unwrap()
    }

    fn cred(c: char) -> CredentialId {
        format!("rgc-{}", c.to_string().repeat(20)).parse().unwrap()
    }

    #[test]
    fn finished_operations_need_nothing() {
        let mut log = Log::new();
        let (a, b, c1, c2) = (srv('a'), srv('b'), cred('a'), cred('b'));
        // Create, rename, credential change, delete: every step done.
        log.claim(0, "web", &a);
        log.attach(0, &c1, &a);
        log.create(0, &a, "web", Some(&c1));
        log.claim(1, "site", &a);
        log.update(
            1,
            &a,
            ServiceSettings {
                name: Some("site".into()),
                ..Default::default()
            },
        );
        log.release(1, "web", &a);
        log.attach(2, &c2, &a);
        log.update(
            2,
            &a,
            ServiceSettings {
                credential: Some(Some(c2.clone())),
                ..Default::default()
            },
        );
        log.detach(2, &c1, &a);
        log.claim(3, "gone", &b);
        log.create(3, &b, "gone", None);
        log.at(4, AggregateId::Service(b.clone()), ServiceDeleted {});
        log.release(4, "gone", &b);
        assert_eq!(log.repairs(1000), vec![]);
    }

    #[test]
    fn an_interrupted_creation_is_given_back_after_the_grace_period() {
        let mut log = Log::new();
        let (a, c) = (srv('a'), cred('a'));
        let claimed = log.claim(0, "web", &a);
        let attached = log.attach(1, &c, &a);
        // In flight: nothing yet.
        assert_eq!(log.repairs(29), vec![]);
        assert_eq!(
            log.repairs(31),
            vec![
                Repair::Detach {
                    credential: c.clone(),
                    service: a.clone(),
                    attached
                },
                Repair::Release {
                    owner: log.owner.clone(),
                    name: "web".into(),
                    service: a.clone(),
                    claimed
                },
            ]
        );
        // Given up: still released, and the grace counts from the give-up.
        log.at(
            40,
            AggregateId::Service(a.clone()),
            ServiceCreationAbandoned {},
        );
        assert_eq!(log.repairs(69), vec![]);
        assert_eq!(log.repairs(71).len(), 2);
    }

    #[test]
    fn a_delete_or_rename_interrupted_after_the_service_changed_is_finished() {
        let mut log = Log::new();
        let (a, b, c) = (srv('a'), srv('b'), cred('a'));
        log.claim(0, "web", &a);
        log.attach(0, &c, &a);
        log.create(0, &a, "web", Some(&c));
        log.claim(0, "api", &b);
        log.create(0, &b, "api", None);
        // `a` deleted at 100, `b` renamed at 100: old links stay.
        log.at(100, AggregateId::Service(a.clone()), ServiceDeleted {});
        log.claim(100, "api2", &b);
        log.update(
            100,
            &b,
            ServiceSettings {
                name: Some("api2".into()),
                ..Default::default()
            },
        );
        // The links are old, but the services changed just now.
        assert_eq!(log.repairs(120), vec![]);
        let due = log.repairs(131);
        assert_eq!(due.len(), 3, "{due:?}");
        assert!(due.iter().any(
            |r| matches!(r, Repair::Release { name, service, .. } if name == "web" && *service == a)
        ));
        assert!(due.iter().any(
            |r| matches!(r, Repair::Release { name, service, .. } if name == "api" && *service == b)
        ));
        assert!(due
            .iter()
            .any(|r| matches!(r, Repair::Detach { service, .. } if *service == a)));
    }

    #[test]
    fn a_rename_or_credential_change_interrupted_before_the_service_changed_is_undone() {
        let mut log = Log::new();
        let (a, c1, c2) = (srv('a'), cred('a'), cred('b'));
        log.claim(0, "web", &a);
        log.attach(0, &c1, &a);
        log.create(0, &a, "web", Some(&c1));
        log.claim(100, "site", &a);
        log.attach(100, &c2, &a);
        let due = log.repairs(131);
        assert_eq!(due.len(), 2, "{due:?}");
        assert!(due
            .iter()
            .any(|r| matches!(r, Repair::Release { name, .. } if name == "site")));
        assert!(due
            .iter()
            .any(|r| matches!(r, Repair::Detach { credential, .. } if *credential == c2)));
    }

    #[test]
    fn a_service_using_what_it_does_not_hold_takes_it_at_once() {
        let mut log = Log::new();
        let (a, c) = (srv('a'), cred('a'));
        let created = log.create(0, &a, "web", Some(&c));
        let due = log.repairs(0);
        assert_eq!(
            due,
            vec![
                Repair::Attach {
                    credential: c.clone(),
                    owner: log.owner.clone(),
                    service: a.clone(),
                    changed: created
                },
                Repair::Claim {
                    owner: log.owner.clone(),
                    name: "web".into(),
                    service: a.clone(),
                    changed: created
                },
            ]
        );
        // A removed credential cannot be attached again.
        log.at(1, AggregateId::Credential(c.clone()), CredentialRemoved {});
        assert_eq!(log.repairs(1).len(), 1);
    }

    #[test]
    fn domain_claims_follow_the_services_domains() {
        use berth_schemas::events::{
            CustomDomainAdded, CustomDomainRemoved, DomainClaimed, DomainReleased,
        };
        use berth_schemas::ids::{CustomDomainId, DomainId};
        let mut log = Log::new();
        let (a, b) = (srv('a'), srv('b'));
        let claim_of = |n: &str| AggregateId::Domain(DomainId::of_name(n));
        log.claim(0, "web", &a);
        log.create(0, &a, "web", None);
        log.claim(0, "api", &b);
        log.create(0, &b, "api", None);
        let claimed = |s: &ServiceId, n: &str| DomainClaimed {
            name: n.into(),
            owner: OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap()),
            service: s.clone(),
        };
        let id = CustomDomainId::generate();
        // Finished add and remove: nothing.
        log.at(1, claim_of("a.test"), claimed(&a, "a.test"));
        let added = CustomDomainAdded {
            domain: id.clone(),
            name: "a.test".into(),
        };
        log.at(1, AggregateId::Service(a.clone()), added);
        log.at(
            2,
            AggregateId::Service(a.clone()),
            CustomDomainRemoved {
                domain: id,
                name: "a.test".into(),
            },
        );
        let released = DomainReleased {
            name: "a.test".into(),
            service: a.clone(),
        };
        log.at(2, claim_of("a.test"), released);
        assert_eq!(log.repairs(1000), vec![]);
        // An add that crashed after its claim: released after the grace.
        let claimed_at = log.at(100, claim_of("b.test"), claimed(&b, "b.test"));
        assert_eq!(log.repairs(120), vec![]);
        assert_eq!(
            log.repairs(131),
            vec![Repair::ReleaseDomain {
                name: "b.test".into(),
                service: b.clone(),
                claimed: claimed_at,
            }]
        );
        // A service with a domain it does not hold: claimed at once.
        let added = CustomDomainAdded {
            domain: CustomDomainId::generate(),
            name: "c.test".into(),
        };
        let changed = log.at(200, AggregateId::Service(a.clone()), added);
        let due = log.repairs(200);
        assert!(due.contains(&Repair::ClaimDomain {
            owner: log.owner.clone(),
            name: "c.test".into(),
            service: a.clone(),
            changed,
        }));
    }

    #[test]
    fn keys_differ_per_link_and_agree_across_replicas() {
        let mut log = Log::new();
        let a = srv('a');
        log.claim(0, "one", &a);
        log.release(1, "one", &a);
        log.claim(2, "one", &a);
        let first = log.repairs(100);
        let mut again = Log::new();
        again.claim(0, "one", &a);
        again.release(1, "one", &a);
        again.claim(2, "one", &a);
        assert_eq!(first, again.repairs(100));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key(), format!("repair-release-{a}-3"));
    }
}

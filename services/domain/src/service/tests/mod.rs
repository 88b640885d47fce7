//! Given/when/then tests of the service aggregate. `Scenario::run` decides a
//! command, applies the events, and checks after every step that replaying
//! the whole history from nothing gives the same state (determinism) and
//! that the deploy invariants hold.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod allow_list;
mod autoscaling;
mod deploys;
mod domains;
mod jobs;
mod lifecycle;
mod maintenance;
mod placement;
mod platform_env;
mod props;
mod rollback;
mod target;

use berth_schemas::ids::{DeployId, NodeId, OwnerId, UserId};
use berth_schemas::model::{
    DeployStatus, DeployTrigger, OverlapPolicy, ResolvedImage, Sealed, ServiceType,
};
use berth_schemas::Event;

use super::{decide, Command, CreateService, Deploy, DeployRequest, Service, ServiceState};
use crate::aggregate::{Aggregate, Ctx};
use crate::error::{DomainError, ErrorKind};

pub(super) const IMAGE: &str = "ghcr.io/acme/app:v1";

pub(super) fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

pub(super) fn sealed(s: &str) -> Sealed {
    Sealed {
        kid: "k1".into(),
        ciphertext: s.into(),
    }
}

pub(super) fn owner() -> OwnerId {
    OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap())
}

pub(super) fn node() -> NodeId {
    "nod-aaaaaaaaaaaaaaaaaaaa".parse().unwrap()
}

pub(super) fn create(service_type: ServiceType, deploy: &DeployId) -> CreateService {
    let mut c = CreateService::new(
        owner(),
        "app",
        service_type,
        IMAGE,
        sealed("hook"),
        deploy.clone(),
    );
    if service_type == ServiceType::CronJob {
        c.schedule = Some("*/5 * * * *".into());
    }
    c
}

/// Checks that hold after every decision.
pub(super) fn check_invariants(s: &ServiceState) {
    let running: Vec<&Deploy> = s
        .deploys
        .iter()
        .map(|d| &**d)
        .filter(|d| d.is_running())
        .collect();
    assert!(running.len() <= 1, "two deploys running: {running:?}");
    assert_eq!(
        running.first().map(|d| &d.id),
        s.active.as_ref(),
        "active pointer disagrees with statuses"
    );
    let live: Vec<&Deploy> = s
        .deploys
        .iter()
        .map(|d| &**d)
        .filter(|d| d.status == DeployStatus::Live)
        .collect();
    assert!(live.len() <= 1, "two live deploys: {live:?}");
    assert_eq!(live.first().map(|d| &d.id), s.live.as_ref());
    if let Some(l) = live.first() {
        assert!(l.digest().is_some(), "live deploy without a digest");
    }
    for q in &s.queue {
        assert_eq!(s.deploy(q).map(|d| d.status), Some(DeployStatus::Queued));
    }
    let queued = s
        .deploys
        .iter()
        .filter(|d| d.status == DeployStatus::Queued)
        .count();
    assert_eq!(queued, s.queue.len());
    if !s.queue.is_empty() {
        assert!(s.active.is_some(), "deploys queued behind nothing");
    }
    for d in &s.deploys {
        assert_ne!(d.status, DeployStatus::Created, "a deploy stuck in created");
        if d.trigger == DeployTrigger::Rollback {
            assert!(d.image.contains("@sha256:"), "rollback by tag: {}", d.image);
            assert!(!d.image.contains(":v"), "rollback kept a tag: {}", d.image);
        }
    }
}

/// A service's history and the state folded from it.
#[derive(Debug, Clone)]
pub(super) struct Scenario {
    pub history: Vec<Event>,
    pub state: ServiceState,
    pub ctx: Ctx,
}

impl Scenario {
    pub fn given(events: Vec<Event>) -> Self {
        let state = Service::replay(&events);
        Scenario {
            history: events,
            state,
            ctx: Ctx::default(),
        }
    }

    /// A service of `service_type` created through the rules, with its
    /// initial deploy running.
    pub fn created(service_type: ServiceType, first: &DeployId) -> Self {
        let mut s = Scenario::given(vec![]);
        s.run(Command::Create(Box::new(create(service_type, first))));
        s
    }

    /// A web service whose first deploy is live on `digest(1)`.
    pub fn live_web(first: &DeployId) -> Self {
        let mut s = Scenario::created(ServiceType::WebService, first);
        s.go_live(first, &digest(1));
        s
    }

    pub fn when(&self, command: Command) -> Result<Vec<Event>, DomainError> {
        decide(&self.state, command, &self.ctx)
    }

    /// Why the rules refuse `command`; fails the test if they accept it.
    pub fn refused(&self, command: Command) -> ErrorKind {
        let c = format!("{command:?}");
        match self.when(command) {
            Ok(events) => panic!("{c} accepted: {events:?}"),
            Err(e) => e.kind(),
        }
    }

    /// Decides, applies, and checks replay determinism and the invariants.
    pub fn try_run(&mut self, command: Command) -> Result<Vec<Event>, DomainError> {
        let events = self.when(command)?;
        self.append(&events);
        Ok(events)
    }

    pub fn run(&mut self, command: Command) -> Vec<Event> {
        let c = format!("{command:?}");
        match self.try_run(command) {
            Ok(e) => e,
            Err(e) => panic!("{c} refused: {e}"),
        }
    }

    pub fn append(&mut self, events: &[Event]) {
        let seen = self.state.clone();
        self.history.extend(events.iter().cloned());
        self.state = Service::apply_all(seen, events);
        assert_eq!(
            Service::replay(&self.history),
            self.state,
            "replaying the history gives another state than the decisions saw"
        );
        check_invariants(&self.state);
    }

    pub fn deploy(&self, id: &DeployId) -> &Deploy {
        self.state.deploy(id).expect("deploy exists")
    }

    pub fn status(&self, id: &DeployId) -> DeployStatus {
        self.deploy(id).status
    }

    pub fn request(&mut self, trigger: DeployTrigger) -> (DeployId, Vec<Event>) {
        let id = DeployId::generate();
        let events = self.run(Command::RequestDeploy(DeployRequest::new(
            id.clone(),
            trigger,
        )));
        (id, events)
    }

    pub fn resolve(&mut self, id: &DeployId, d: &str) -> Vec<Event> {
        self.run(Command::RecordResolved {
            deploy: id.clone(),
            image: ResolvedImage {
                digest: d.to_owned(),
                index_digest: None,
                compressed_size: 1234,
            },
        })
    }

    /// Resolve, pull, update, live: the happy path without pre-deploy.
    pub fn go_live(&mut self, id: &DeployId, d: &str) -> Vec<Event> {
        self.resolve(id, d);
        self.run(Command::RecordPulled {
            deploy: id.clone(),
            node: node(),
            digest: d.to_owned(),
        });
        self.run(Command::RecordUpdateStarted { deploy: id.clone() });
        self.run(Command::RecordLive {
            deploy: id.clone(),
            digest: d.to_owned(),
        })
    }

    pub fn set_policy(&mut self, policy: OverlapPolicy) {
        self.run(Command::Update {
            settings: Box::new(berth_schemas::events::ServiceSettings {
                overlap_policy: Some(policy),
                ..Default::default()
            }),
            deploy: DeployId::generate(),
        });
    }
}

#[test]
fn a_busy_state_round_trips_through_a_messagepack_snapshot() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    s.request(DeployTrigger::Api);
    s.request(DeployTrigger::Api);
    let bytes = rmp_serde::to_vec_named(&s.state).unwrap();
    let back: ServiceState = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, s.state);
    // The index survives: lookups and further decisions work on the copy.
    assert_eq!(back.deploy(&d0).map(|d| d.status), Some(DeployStatus::Live));
    let created: Event = berth_schemas::events::CredentialCreated {
        owner: owner(),
        name: "ci".into(),
        registry: berth_schemas::model::RegistryKind::Docker,
        host: None,
        username: "bot".into(),
        token: sealed("t"),
    }
    .into();
    let active = crate::credential::apply(Default::default(), &created);
    for credential in [active, crate::credential::CredentialState::Removed] {
        let bytes = rmp_serde::to_vec_named(&credential).unwrap();
        let back: crate::credential::CredentialState = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, credential);
    }
}

#[test]
fn events_name_the_deploy_they_belong_to() {
    let d0 = DeployId::generate();
    let s = Scenario::created(ServiceType::WebService, &d0);
    let named: Vec<_> = s.history.iter().map(berth_schemas::Event::deploy).collect();
    assert_eq!(named, vec![None, Some(&d0), Some(&d0)]);
}

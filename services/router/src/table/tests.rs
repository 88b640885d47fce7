//! The routing rules on the projection alone: which instances are targets
//! before, at and after a deploy goes live, and what each service status
//! and name clash leads to.

use berth_domain::service::{self, Command, CreateService, DeployRequest};
use berth_domain::Ctx;
use berth_schemas::events::{
    InstanceDraining, InstanceHealthy, InstanceScheduled, InstanceStarted, InstanceStopped,
    InstanceUnhealthy,
};
use berth_schemas::ids::{DeployId, EventId, InstanceId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{DeployTrigger, ResolvedImage, Sealed, ServiceType};
use berth_schemas::{Actor, AggregateId, Envelope, Event};

use super::*;

fn digest(v: u8) -> String {
    format!("sha256:{}", format!("{v:02x}").repeat(32))
}

/// One service fed into a projection, commit by commit.
struct Feed {
    id: ServiceId,
    state: ServiceState,
    events: u64,
}

struct World {
    p: RouteProjection,
    seq: u64,
}

impl World {
    fn new() -> Self {
        World {
            p: RouteProjection::default(),
            seq: 0,
        }
    }

    fn commit(&mut self, f: &mut Feed, events: Vec<Event>) {
        self.seq += 1;
        for event in events {
            f.events += 1;
            let env = Envelope {
                id: EventId::generate(),
                version: event.version(),
                aggregate: AggregateId::Service(f.id.clone()),
                sequence: f.events,
                time: chrono::Utc::now(),
                actor: Actor::system("test"),
                correlation_id: None,
                causation_id: None,
                event,
            };
            f.state = service::fold(std::mem::take(&mut f.state), &env);
            self.p.apply_envelope(self.seq, &env);
        }
    }

    fn cmd(&mut self, f: &mut Feed, c: Command) {
        let events = service::decide(&f.state, c, &Ctx::default()).unwrap();
        self.commit(f, events);
    }

    fn create(&mut self, name: &str, kind: ServiceType) -> Feed {
        let mut f = Feed {
            id: ServiceId::generate(),
            state: ServiceState::default(),
            events: 0,
        };
        let c = CreateService::new(
            OwnerId::User(UserId::generate()),
            name,
            kind,
            "registry.test/app:1",
            Sealed {
                kid: "k".into(),
                ciphertext: "AA".into(),
            },
            DeployId::generate(),
        );
        self.cmd(&mut f, Command::Create(Box::new(c)));
        f
    }

    /// Brings the running deploy to `updating` with `digest(v)` and starts
    /// one healthy instance per port; returns (deploy, instances).
    fn roll_out(&mut self, f: &mut Feed, v: u8, ports: &[u16]) -> (DeployId, Vec<InstanceId>) {
        let deploy = f.state.active.clone().unwrap();
        self.cmd(
            f,
            Command::RecordResolved {
                deploy: deploy.clone(),
                image: ResolvedImage {
                    digest: digest(v),
                    index_digest: None,
                    compressed_size: 1,
                },
            },
        );
        self.cmd(
            f,
            Command::RecordUpdateStarted {
                deploy: deploy.clone(),
            },
        );
        let node = NodeId::generate();
        let ids: Vec<InstanceId> = ports.iter().map(|_| InstanceId::generate()).collect();
        let scheduled = ids
            .iter()
            .map(|i| InstanceScheduled {
                instance: i.clone(),
                deploy: deploy.clone(),
                node: node.clone(),
                digest: digest(v),
            })
            .collect();
        self.cmd(
            f,
            Command::Place {
                scheduled,
                rescheduled: vec![],
            },
        );
        for (i, port) in ids.iter().zip(ports) {
            let started = InstanceStarted {
                instance: i.clone(),
                node: node.clone(),
                digest: digest(v),
                addr: Some(format!("127.0.0.1:{port}")),
                published: None,
            };
            let healthy = InstanceHealthy {
                instance: i.clone(),
            };
            self.commit(f, vec![started.into(), healthy.into()]);
        }
        (deploy, ids)
    }

    fn live(&mut self, f: &mut Feed, deploy: &DeployId, v: u8) {
        self.cmd(
            f,
            Command::RecordLive {
                deploy: deploy.clone(),
                digest: digest(v),
            },
        );
    }

    fn ports(&mut self, name: &str) -> Option<Vec<u16>> {
        let table = self.p.publish();
        let route = table.get(name)?;
        Some(
            route
                .targets()
                .iter()
                .map(|t| t.addr.rsplit(':').next().unwrap().parse().unwrap())
                .collect::<std::collections::BTreeSet<u16>>()
                .into_iter()
                .collect(),
        )
    }
}

#[test]
fn traffic_moves_at_deploy_live_and_only_then() {
    let mut w = World::new();
    let mut f = w.create("web", ServiceType::WebService);
    assert_eq!(w.ports("web"), Some(vec![]), "created, nothing live yet");
    let (d1, old) = w.roll_out(&mut f, 1, &[1001, 1002]);
    assert_eq!(w.ports("web"), Some(vec![]), "healthy but not live");
    w.live(&mut f, &d1, 1);
    assert_eq!(w.ports("web"), Some(vec![1001, 1002]));

    let d2 = DeployId::generate();
    w.cmd(
        &mut f,
        Command::RequestDeploy(DeployRequest::new(d2.clone(), DeployTrigger::Api)),
    );
    let (_, _new) = w.roll_out(&mut f, 2, &[2001, 2002]);
    assert_eq!(
        w.ports("web"),
        Some(vec![1001, 1002]),
        "the old live deploy serves while the new one becomes healthy"
    );
    w.live(&mut f, &d2, 2);
    assert_eq!(w.ports("web"), Some(vec![2001, 2002]), "switched at once");
    w.commit(
        &mut f,
        old.iter()
            .map(|i| {
                InstanceStopped {
                    instance: i.clone(),
                }
                .into()
            })
            .collect(),
    );
    assert_eq!(w.ports("web"), Some(vec![2001, 2002]));
}

#[test]
fn a_failed_deploy_leaves_the_live_one_serving() {
    let mut w = World::new();
    let mut f = w.create("web", ServiceType::WebService);
    let (d1, _) = w.roll_out(&mut f, 1, &[1001]);
    w.live(&mut f, &d1, 1);
    let d2 = DeployId::generate();
    w.cmd(
        &mut f,
        Command::RequestDeploy(DeployRequest::new(d2.clone(), DeployTrigger::Api)),
    );
    w.roll_out(&mut f, 2, &[2001]);
    w.cmd(
        &mut f,
        Command::RecordFailed {
            deploy: d2,
            status: berth_schemas::model::DeployStatus::UpdateFailed,
            reason: "test".into(),
        },
    );
    assert_eq!(w.ports("web"), Some(vec![1001]));
}

#[test]
fn unhealthy_instances_and_other_kinds_of_service_are_not_targets() {
    let mut w = World::new();
    let mut f = w.create("web", ServiceType::WebService);
    let (d1, ids) = w.roll_out(&mut f, 1, &[1001, 1002]);
    w.live(&mut f, &d1, 1);
    let unhealthy = InstanceUnhealthy {
        instance: ids[0].clone(),
        reason: "503".into(),
    };
    w.commit(&mut f, vec![unhealthy.into()]);
    assert_eq!(w.ports("web"), Some(vec![1002]));

    for kind in [ServiceType::PrivateService, ServiceType::BackgroundWorker] {
        let mut p = w.create("inner", kind);
        let (d, _) = w.roll_out(&mut p, 1, &[3001]);
        w.live(&mut p, &d, 1);
        assert_eq!(w.ports("inner"), None, "{kind:?} routed");
    }
}

#[test]
fn a_draining_instance_gets_no_new_requests() {
    let mut w = World::new();
    let mut f = w.create("web", ServiceType::WebService);
    let (d1, ids) = w.roll_out(&mut f, 1, &[1001, 1002]);
    w.live(&mut f, &d1, 1);
    assert_eq!(w.ports("web"), Some(vec![1001, 1002]));
    let draining = InstanceDraining {
        instance: ids[1].clone(),
    };
    w.commit(&mut f, vec![draining.into()]);
    assert_eq!(w.ports("web"), Some(vec![1001]));
}

#[test]
fn suspended_deleted_and_clashing_names() {
    let mut w = World::new();
    let mut first = w.create("shop", ServiceType::WebService);
    let (d, _) = w.roll_out(&mut first, 1, &[1001]);
    w.live(&mut first, &d, 1);
    // Another owner's service with the same name: the older one keeps it.
    let mut second = w.create("shop", ServiceType::WebService);
    let (d2, _) = w.roll_out(&mut second, 1, &[2001]);
    w.live(&mut second, &d2, 1);
    assert_eq!(w.ports("shop"), Some(vec![1001]));

    w.cmd(&mut first, Command::Suspend);
    let table = w.p.publish();
    assert_eq!(
        table.get("shop").map(|r| &r.state),
        Some(&RouteState::Suspended)
    );
    assert_eq!(
        table.get("shop").map(|r| r.service.clone()),
        Some(first.id.clone())
    );

    w.cmd(&mut first, Command::Delete);
    assert_eq!(w.ports("shop"), Some(vec![2001]), "the name passes on");
    assert!(
        !w.p.services.contains_key(&first.id),
        "deleted service kept"
    );
}

#[test]
fn nothing_changed_means_nothing_to_publish() {
    let mut w = World::new();
    let mut f = w.create("web", ServiceType::WebService);
    assert!(w.p.is_dirty());
    w.p.publish();
    assert!(!w.p.is_dirty());
    w.cmd(&mut f, Command::Scale { num_instances: 2 });
    assert!(w.p.is_dirty());
}

#[test]
fn a_custom_domain_listed_by_two_services_stays_with_the_older() {
    use berth_schemas::ids::CustomDomainId;
    let add = |name: &str| Command::AddCustomDomain {
        domain: CustomDomainId::generate(),
        name: name.into(),
    };
    let mut w = World::new();
    let mut first = w.create("one", ServiceType::WebService);
    let mut second = w.create("two", ServiceType::WebService);
    // Claims prevent this; should an unrepaired interruption leave it,
    // the route does not flap between them.
    w.cmd(&mut second, add("shop.example.test"));
    w.cmd(&mut first, add("shop.example.test"));
    w.cmd(&mut second, add("other.example.test"));
    let table = w.p.publish();
    let held =
        |t: &RoutingTable, d: &str| t.route_for_host(d, "localhost").map(|r| r.service.clone());
    assert_eq!(held(&table, "shop.example.test"), Some(first.id.clone()));
    assert_eq!(
        held(&table, "Other.Example.Test:80"),
        Some(second.id.clone())
    );
    assert_eq!(held(&table, "one.localhost"), Some(first.id.clone()));
    assert_eq!(table.custom_domains().len(), 2);
    w.cmd(&mut first, Command::Delete);
    let table = w.p.publish();
    assert_eq!(held(&table, "shop.example.test"), Some(second.id.clone()));
}

//! What a node knows of the other nodes, folded from the log: where each
//! registered node is (the addresses its private instances admit, the
//! ports its instances may not open elsewhere) and where every private
//! service's healthy instances on other nodes are published — the
//! [`Directory`] the agent turns into service addresses, names and rules
//! (`berth_agent::net::Directory`).
//!
//! Two read models follow the log from its start (no snapshot): the node
//! aggregates, and the services, of which only private ones are kept, each
//! through the service aggregate's own fold (so "live" and "healthy" mean
//! what they mean to the scheduler and the router). Deleted services leave
//! memory. At 10,000 services a node keeps the private ones only; catching
//! up reads the service subjects once per node start.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_agent::net::{Directory, Peer, Remote};
use berth_agent::Agent;
use berth_domain::node::{self as rules, NodeState};
use berth_domain::service::{self, ServiceState, ServiceStatus};
use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Envelope, Event};
use tokio_util::sync::CancellationToken;

/// The registered nodes.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: HashMap<NodeId, NodeState>,
}

impl Projection for Nodes {
    type Snapshot = ();

    fn apply(&mut self, _: u64, env: &Envelope) {
        if let AggregateId::Node(id) = &env.aggregate {
            let state = self.nodes.remove(id).unwrap_or_default();
            self.nodes.insert(id.clone(), rules::fold(state, env));
        }
    }

    fn snapshot(&self) {}

    fn restore(&mut self, (): ()) {}
}

/// A private service as a node follows it.
#[derive(Debug, Default)]
struct Tracked {
    state: ServiceState,
    /// Where each instance is published for other nodes (on the node its
    /// state names).
    published: HashMap<InstanceId, String>,
}

/// The private services.
#[derive(Debug, Default)]
pub struct Privates {
    services: HashMap<ServiceId, Tracked>,
}

impl Projection for Privates {
    type Snapshot = ();

    fn apply(&mut self, _: u64, env: &Envelope) {
        let AggregateId::Service(id) = &env.aggregate else {
            return;
        };
        if let Event::ServiceCreated(e) = &env.event {
            if e.service_type == ServiceType::PrivateService {
                self.services.entry(id.clone()).or_default();
            }
        }
        let Some(t) = self.services.get_mut(id) else {
            return;
        };
        t.state = service::fold(std::mem::take(&mut t.state), env);
        match &env.event {
            Event::InstanceStarted(e) => match &e.published {
                Some(p) => {
                    t.published.insert(e.instance.clone(), p.clone());
                }
                None => {
                    t.published.remove(&e.instance);
                }
            },
            Event::InstanceStopped(e) => {
                t.published.remove(&e.instance);
            }
            Event::InstanceRescheduled(e) => {
                t.published.remove(&e.instance);
            }
            _ => {}
        }
        if t.state.status == ServiceStatus::Deleted {
            self.services.remove(id);
        }
    }

    fn snapshot(&self) {}

    fn restore(&mut self, (): ()) {}
}

/// The directory node `me` works with: the other nodes that said where
/// they are reached (and are not lost), and the private services' healthy
/// instances of their live deploys on those nodes.
pub fn directory(me: &NodeId, nodes: &Nodes, privates: &Privates) -> Directory {
    let mut peers: Vec<Peer> = nodes
        .nodes
        .iter()
        .filter(|(id, n)| *id != me && !n.lost)
        .filter_map(|(_, n)| {
            let r = n.reach.as_ref()?;
            match r.addr {
                IpAddr::V4(addr) if !addr.is_loopback() => Some(Peer {
                    addr,
                    ports: r.ports.clone(),
                }),
                _ => None,
            }
        })
        .collect();
    peers.sort_by_key(|p| (p.addr, *p.ports.start(), *p.ports.end()));
    let mut remote: Vec<Remote> = privates
        .services
        .values()
        .filter_map(|t| remote(me, t, &peers))
        .collect();
    remote.sort();
    Directory { peers, remote }
}

/// `t` as seen from node `me`, when it has healthy instances elsewhere:
/// published on a node among `peers`, within its ports (what the log says
/// is a node's fact; a published address no registered node stands
/// behind is not a target).
fn remote(me: &NodeId, t: &Tracked, peers: &[Peer]) -> Option<Remote> {
    let cfg = t.state.config.as_ref()?;
    if t.state.status != ServiceStatus::Active {
        return None;
    }
    let live = t.state.live_deploy()?;
    let digest = live.digest()?;
    // Each target with the port its instance serves on (its own address's).
    let mut targets: Vec<(Option<u16>, SocketAddrV4)> = t
        .state
        .instances
        .of_deploy(&live.id)
        .filter(|i| i.is_healthy() && i.draining_since.is_none() && i.digest == digest)
        .filter_map(|i| {
            let addr = t.published.get(&i.id).filter(|_| i.node != *me)?;
            let target = addr.parse::<SocketAddrV4>().ok().filter(|a| {
                peers
                    .iter()
                    .any(|p| p.addr == *a.ip() && p.ports.contains(&a.port()))
            })?;
            Some((i.port(), target))
        })
        .collect();
    if targets.is_empty() {
        return None;
    }
    targets.sort();
    // One port per service address: the live deploy's instances serve on
    // the same one; should they not, those on the lowest are the targets
    // (with any whose port is not known: published, it leads to the one
    // it serves on).
    let port = targets.iter().find_map(|(p, _)| *p);
    Some(Remote {
        group: cfg.owner.to_string(),
        name: cfg.name.clone(),
        targets: targets
            .into_iter()
            .filter(|(p, _)| p.is_none() || *p == port)
            .map(|(_, t)| t)
            .collect(),
        port,
    })
}

/// How long changes are gathered before the directory is applied: a
/// deploy's events come in bursts.
const SETTLE: Duration = Duration::from_millis(100);
/// How soon a directory the agent could not apply is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often an unchanged directory is handed to the agent again.
const AGAIN: Duration = Duration::from_secs(30);

/// Follows the log and keeps `agent`'s directory current until
/// `shutdown`.
pub async fn follow(store: EventStore, me: NodeId, agent: Agent, shutdown: CancellationToken) {
    let subjects = store.subjects().clone();
    let runner = |kind: &str| ProjectionOptions {
        filter: Some(subjects.aggregate_kind(kind)),
        snapshot_key: None,
        ..ProjectionOptions::default()
    };
    let mut nodes = ProjectionRunner::new(&store, Nodes::default(), runner("node"));
    let mut privates = ProjectionRunner::new(&store, Privates::default(), runner("service"));
    // Nothing is applied before both are caught up: until then the agent
    // keeps the directory the last process saved, not a half-read one.
    let started = std::time::Instant::now();
    let mut events = 0;
    for caught in [
        nodes.catch_up_at_start(&shutdown).await,
        privates.catch_up_at_start(&shutdown).await,
    ] {
        match caught {
            Ok(Some(c)) => events += c.events,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "other nodes' private services cannot be followed");
                return;
            }
        }
    }
    tracing::info!(
        events,
        secs = started.elapsed().as_secs_f64(),
        private_services = private_count(&privates),
        "directory caught up with the log"
    );
    let (node_state, private_state) = (nodes.state(), privates.state());
    let (mut node_seq, mut private_seq) = (nodes.applied(), privates.applied());
    let stop = shutdown.child_token();
    let n = tokio::spawn(nodes.run(stop.clone()));
    let p = tokio::spawn(privates.run(stop.clone()));
    let mut last: Option<Directory> = None;
    let mut again = false;
    loop {
        let next = now(&me, &node_state, &private_state);
        // Also now and then when unchanged: a no-op unless the agent's
        // last rebuild (a start or stop of an instance) failed part way.
        if again || last.as_ref() != Some(&next) {
            match agent.set_directory(next.clone()).await {
                Ok(()) => last = Some(next),
                Err(e) => {
                    tracing::warn!(error = %e, "other nodes' private services not applied; retrying");
                    last = None;
                }
            }
        }
        again = false;
        let retry = if last.is_none() { RETRY } else { AGAIN };
        let followed = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = node_seq.changed() => r.is_ok(),
            r = private_seq.changed() => r.is_ok(),
            _ = tokio::time::sleep(retry) => {
                again = true;
                true
            }
        };
        if !followed {
            // A runner ended (it logs why): what was applied stays.
            shutdown.cancelled().await;
            break;
        }
        tokio::time::sleep(SETTLE).await;
    }
    stop.cancel();
    for (what, task) in [("nodes", n), ("private services", p)] {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, read_model = what, "stopped following the log");
        }
    }
}

fn private_count(p: &ProjectionRunner<Privates>) -> usize {
    let state = p.state();
    let held = state.read().unwrap_or_else(|p| p.into_inner());
    held.services.len()
}

fn now(me: &NodeId, nodes: &Arc<RwLock<Nodes>>, privates: &Arc<RwLock<Privates>>) -> Directory {
    let nodes = nodes.read().unwrap_or_else(|p| p.into_inner());
    let privates = privates.read().unwrap_or_else(|p| p.into_inner());
    directory(me, &nodes, &privates)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use berth_domain::node::{Capacity, Reach};
    use berth_domain::service::{Command, CreateService};
    use berth_domain::Ctx;
    use berth_schemas::events::{InstanceHealthy, InstanceScheduled, InstanceStarted};
    use berth_schemas::ids::{DeployId, EventId, OwnerId, UserId};
    use berth_schemas::model::{ResolvedImage, Sealed};
    use berth_schemas::Actor;

    use super::*;

    fn envelope(aggregate: AggregateId, sequence: u64, event: Event) -> Envelope {
        Envelope {
            id: EventId::generate(),
            version: event.version(),
            aggregate,
            sequence,
            time: chrono::Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn node(nodes: &mut Nodes, reach: Option<(&str, u16)>, lost: bool) -> NodeId {
        let id = NodeId::generate();
        let c = rules::Command::Register {
            capacity: Capacity {
                name: "n".into(),
                cpu_millis: 1000,
                memory_mib: 1024,
            },
            public_key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
            reach: reach.map(|(a, low)| Reach {
                addr: a.parse().unwrap(),
                ports: low..=low + 999,
            }),
        };
        let mut events = rules::decide(&NodeState::default(), c).unwrap();
        if lost {
            events.push(
                berth_schemas::events::NodeLost {
                    last_heartbeat: chrono::Utc::now(),
                }
                .into(),
            );
        }
        for (n, e) in events.into_iter().enumerate() {
            nodes.apply(1, &envelope(AggregateId::Node(id.clone()), n as u64 + 1, e));
        }
        id
    }

    /// A service fed to the projection through its own decisions.
    struct Feed {
        id: ServiceId,
        state: ServiceState,
        seq: u64,
    }

    impl Feed {
        fn cmd(&mut self, p: &mut Privates, c: Command) {
            let events = service::decide(&self.state, c, &Ctx::default()).unwrap();
            self.commit(p, events);
        }

        fn commit(&mut self, p: &mut Privates, events: Vec<Event>) {
            for e in events {
                self.seq += 1;
                let env = envelope(AggregateId::Service(self.id.clone()), self.seq, e);
                self.state = service::fold(std::mem::take(&mut self.state), &env);
                p.apply(self.seq, &env);
            }
        }
    }

    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    /// A live service of `kind` with one healthy instance per `(node,
    /// published)`.
    fn service(
        p: &mut Privates,
        owner: &OwnerId,
        kind: ServiceType,
        at: &[(&NodeId, &str)],
    ) -> Feed {
        let mut f = Feed {
            id: ServiceId::generate(),
            state: ServiceState::default(),
            seq: 0,
        };
        let deploy = DeployId::generate();
        let create = CreateService::new(
            owner.clone(),
            "db",
            kind,
            "registry.test/db:1",
            Sealed {
                kid: "k".into(),
                ciphertext: "AA".into(),
            },
            deploy.clone(),
        );
        f.cmd(p, Command::Create(Box::new(create)));
        let image = ResolvedImage {
            digest: digest(),
            index_digest: None,
            compressed_size: 1,
        };
        f.cmd(
            p,
            Command::RecordResolved {
                deploy: deploy.clone(),
                image,
            },
        );
        f.cmd(
            p,
            Command::RecordUpdateStarted {
                deploy: deploy.clone(),
            },
        );
        let placed: Vec<(InstanceId, &NodeId, &str)> = at
            .iter()
            .map(|(n, addr)| (InstanceId::generate(), *n, *addr))
            .collect();
        let scheduled = placed
            .iter()
            .map(|(i, n, _)| InstanceScheduled {
                instance: i.clone(),
                deploy: deploy.clone(),
                node: (*n).clone(),
                digest: digest(),
            })
            .collect();
        f.cmd(
            p,
            Command::Place {
                scheduled,
                rescheduled: vec![],
            },
        );
        for (i, n, addr) in &placed {
            let started = InstanceStarted {
                instance: i.clone(),
                node: (*n).clone(),
                digest: digest(),
                addr: Some("10.77.0.5:5432".into()),
                published: Some((*addr).to_owned()),
            };
            let healthy = InstanceHealthy {
                instance: i.clone(),
            };
            f.commit(p, vec![started.into(), healthy.into()]);
        }
        f.cmd(
            p,
            Command::RecordLive {
                deploy,
                digest: digest(),
            },
        );
        f
    }

    #[test]
    fn a_node_sees_the_other_nodes_and_the_private_instances_on_them() {
        let (mut nodes, mut p) = (Nodes::default(), Privates::default());
        let me = node(&mut nodes, Some(("192.0.2.1", 20000)), false);
        let other = node(&mut nodes, Some(("192.0.2.7", 31000)), false);
        let lost = node(&mut nodes, Some(("192.0.2.9", 20000)), true);
        // Saying no address, or a loopback one, is not being reachable.
        node(&mut nodes, None, false);
        node(&mut nodes, Some(("127.0.0.1", 20000)), false);
        let owner = OwnerId::User(UserId::generate());
        let db = service(
            &mut p,
            &owner,
            ServiceType::PrivateService,
            &[
                (&other, "192.0.2.7:31005"),
                (&me, "192.0.2.1:20005"),
                (&lost, "192.0.2.9:20006"),
                // Not where that node publishes: no target.
                (&other, "192.0.2.7:20007"),
            ],
        );
        // Web services are the router's.
        service(
            &mut p,
            &owner,
            ServiceType::WebService,
            &[(&other, "192.0.2.7:31006")],
        );
        let d = directory(&me, &nodes, &p);
        assert_eq!(
            d.peers,
            [Peer {
                addr: "192.0.2.7".parse().unwrap(),
                ports: 31000..=31999
            },],
            "neither itself, nor a lost node, nor one that gave no address"
        );
        assert_eq!(
            d.remote,
            [Remote {
                group: owner.to_string(),
                name: "db".into(),
                targets: vec!["192.0.2.7:31005".parse().unwrap()],
                port: Some(5432),
            }],
            "its own instances are reached on its bridge"
        );
        // Seen from the other node: the instance here.
        let there = directory(&other, &nodes, &p);
        assert_eq!(
            there.remote[0].targets,
            ["192.0.2.1:20005".parse::<SocketAddrV4>().unwrap()]
        );
        // A deleted service leaves.
        let mut db = db;
        db.cmd(&mut p, Command::Delete);
        assert!(directory(&me, &nodes, &p).remote.is_empty());
        assert!(p.services.is_empty(), "nothing kept of it");
    }
}

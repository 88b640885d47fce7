//! The faults: `kill -9` of a component process (started again after a
//! short random delay), SIGSTOP/SIGCONT of one, `kill -9` of a nats-server
//! of the cluster (the stream leader every other time) started again on
//! its store, one cut off from the network (its namespace's link drops
//! everything), the registry down and back or slow (every request delayed
//! by a proxy), the node's disk full (a file fills its tmpfs), and a second
//! node lost for good (killed with its containers, never back). Each is
//! injected, held for a random while, then healed (a lost node is not).

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::rng::Rng;
use crate::world::{Nats, Setup, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    NatsKill,
    Partition,
    RegistryDown,
    RegistrySlow,
    DiskFull,
    NodeLost,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill -9 component",
            FaultKind::Pause => "pause component",
            FaultKind::NatsKill => "kill -9 nats-server",
            FaultKind::Partition => "nats-server cut off",
            FaultKind::RegistryDown => "registry down",
            FaultKind::RegistrySlow => "registry slow",
            FaultKind::DiskFull => "node disk full",
            FaultKind::NodeLost => "node lost for good",
        }
    }

    /// Faults on the same server never go together in one round (faults
    /// on processes clash by the process they hit, see `main.rs`).
    pub fn clashes(self, other: FaultKind) -> bool {
        let server = |k| match k {
            FaultKind::NatsKill | FaultKind::Partition => Some("nats"),
            FaultKind::RegistryDown | FaultKind::RegistrySlow => Some("registry"),
            _ => None,
        };
        server(self).is_some() && server(self) == server(other)
    }
}

/// One fault as planned: what, when after the round starts, for how long.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub component: &'static str,
    /// Kill (or cut off) the stream leader rather than any server.
    pub leader: bool,
    pub after: Duration,
    pub hold: Duration,
    /// How much later a slow registry answers each request.
    pub delay: Duration,
}

impl Fault {
    /// `components`: the processes a kill or a pause may hit.
    pub fn plan(rng: &mut Rng, kind: FaultKind, components: &[&'static str]) -> Fault {
        let (lo, hi) = match kind {
            FaultKind::Kill => (100, 2000),
            // Shorter than the scheduler's heartbeat timeout: a paused node
            // is slow, not lost.
            FaultKind::Pause => (500, 4000),
            FaultKind::NatsKill => (500, 3000),
            // Past the cluster's election timeouts, so a cut-off leader's
            // streams get a new leader.
            FaultKind::Partition => (2000, 8000),
            FaultKind::RegistryDown => (1000, 5000),
            FaultKind::RegistrySlow => (3000, 8000),
            FaultKind::DiskFull => (2000, 6000),
            FaultKind::NodeLost => (0, 0),
        };
        Fault {
            kind,
            component: rng.pick(components),
            leader: rng.below(2) == 0,
            after: rng.millis(0, 1500),
            hold: rng.millis(lo, hi),
            delay: rng.millis(500, 3000),
        }
    }

    pub fn describe(&self) -> String {
        match self.kind {
            FaultKind::Kill | FaultKind::Pause => format!(
                "{} {} for {:?}",
                self.kind.name(),
                self.component,
                self.hold
            ),
            FaultKind::NatsKill | FaultKind::Partition => format!(
                "{} ({}) for {:?}",
                self.kind.name(),
                if self.leader { "stream leader" } else { "any" },
                self.hold
            ),
            FaultKind::RegistrySlow => format!(
                "{} ({:?} a request) for {:?}",
                self.kind.name(),
                self.delay,
                self.hold
            ),
            FaultKind::RegistryDown | FaultKind::DiskFull => {
                format!("{} for {:?}", self.kind.name(), self.hold)
            }
            FaultKind::NodeLost => format!("{} (node2)", self.kind.name()),
        }
    }
}

/// Injects `fault`, holds it, heals it. The world is borrowed mutably only
/// while breaking and healing, so the workload's clients go on meanwhile.
pub async fn inject(world: &World, fault: &Fault, rng: &mut Rng) {
    tokio::time::sleep(fault.after).await;
    match fault.kind {
        FaultKind::Kill => {
            world.kill9(fault.component).await;
            tokio::time::sleep(fault.hold).await;
            world.spawn(fault.component);
        }
        FaultKind::Pause => {
            world.signal(fault.component, Signal::SIGSTOP);
            tokio::time::sleep(fault.hold).await;
            world.signal(fault.component, Signal::SIGCONT);
        }
        FaultKind::NatsKill => {
            let leader = if fault.leader {
                world.stream_leader().await
            } else {
                None
            };
            let i = {
                let mut nats = world.nats.lock().unwrap_or_else(|p| p.into_inner());
                let Nats::Cluster(cluster) = &mut *nats else {
                    panic!("nats-server faults need the cluster");
                };
                let i = leader.unwrap_or_else(|| rng.below(cluster.servers.len()));
                cluster.servers[i].kill9().unwrap();
                i
            };
            tokio::time::sleep(fault.hold).await;
            tokio::task::block_in_place(|| {
                let mut nats = world.nats.lock().unwrap_or_else(|p| p.into_inner());
                let Nats::Cluster(cluster) = &mut *nats else {
                    unreachable!("checked above");
                };
                cluster.servers[i].restart().unwrap();
            });
        }
        FaultKind::Partition => {
            let leader = if fault.leader {
                world.stream_leader().await
            } else {
                None
            };
            let net = world
                .netns
                .as_ref()
                .expect("partitions need the cluster in namespaces");
            let i = leader.unwrap_or_else(|| rng.below(3));
            net.cut(i).unwrap();
            tokio::time::sleep(fault.hold).await;
            net.heal(i).unwrap();
        }
        FaultKind::RegistrySlow => {
            world.proxy.set_delay(fault.delay);
            tokio::time::sleep(fault.hold).await;
            world.proxy.set_delay(Duration::ZERO);
        }
        FaultKind::DiskFull => {
            world.fill_node_disk().await;
            // New images behind the tags: the deploys meeting the full
            // disk pull, not only unpack.
            tokio::join!(world.push_new_images(), tokio::time::sleep(fault.hold));
            world.free_node_disk();
        }
        FaultKind::NodeLost => world.lose_node("node2").await,
        FaultKind::RegistryDown => {
            world.registry.lock().await.stop();
            tokio::time::sleep(fault.hold).await;
            world.registry.lock().await.start_again().await.unwrap();
        }
    }
}

/// What the installation needs for `kinds`.
pub fn setup_for(kinds: &[FaultKind]) -> Setup {
    let partition = kinds.contains(&FaultKind::Partition);
    Setup {
        cluster: partition || kinds.contains(&FaultKind::NatsKill),
        netns: partition,
        second_node: kinds.contains(&FaultKind::NodeLost),
        small_disk: kinds.contains(&FaultKind::DiskFull),
        notify: false,
    }
}

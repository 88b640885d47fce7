//! The faults: `kill -9` of a component process (started again after a
//! short random delay), SIGSTOP/SIGCONT of one, `kill -9` of a nats-server
//! of the cluster (the stream leader every other time) started again on
//! its store, and the registry down and back. Each is injected, held for a
//! random while, then healed.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::rng::Rng;
use crate::world::{Nats, World, COMPONENTS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    NatsKill,
    RegistryDown,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill -9 component",
            FaultKind::Pause => "pause component",
            FaultKind::NatsKill => "kill -9 nats-server",
            FaultKind::RegistryDown => "registry down",
        }
    }
}

/// One fault as planned: what, when after the round starts, for how long.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub component: &'static str,
    /// Kill the stream leader rather than any server.
    pub leader: bool,
    pub after: Duration,
    pub hold: Duration,
}

impl Fault {
    pub fn plan(rng: &mut Rng, kind: FaultKind) -> Fault {
        let (lo, hi) = match kind {
            FaultKind::Kill => (100, 2000),
            // Shorter than the scheduler's heartbeat timeout: a paused node
            // is slow, not lost.
            FaultKind::Pause => (500, 4000),
            FaultKind::NatsKill => (500, 3000),
            FaultKind::RegistryDown => (1000, 5000),
        };
        Fault {
            kind,
            component: rng.pick(COMPONENTS),
            leader: rng.below(2) == 0,
            after: rng.millis(0, 1500),
            hold: rng.millis(lo, hi),
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
            FaultKind::NatsKill => format!(
                "{} ({}) for {:?}",
                self.kind.name(),
                if self.leader { "stream leader" } else { "any" },
                self.hold
            ),
            FaultKind::RegistryDown => format!("{} for {:?}", self.kind.name(), self.hold),
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
        FaultKind::RegistryDown => {
            world.registry.lock().await.stop();
            tokio::time::sleep(fault.hold).await;
            world.registry.lock().await.start_again().await.unwrap();
        }
    }
}

/// Whether a fault kind needs the 3-node cluster.
pub fn needs_cluster(kinds: &[FaultKind]) -> bool {
    kinds.contains(&FaultKind::NatsKill)
}

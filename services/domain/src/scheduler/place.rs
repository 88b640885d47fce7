//! Placement: which nodes new instances go to. Pure over a snapshot of node
//! capacity; the caller re-reads capacity before the next decision.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_schemas::events::PlacementBlocked;
use berth_schemas::ids::{DeployId, NodeId};
use berth_schemas::model::Plan as Size;
use chrono::{DateTime, TimeDelta, Utc};

/// One node's capacity as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub id: NodeId,
    /// Total CPU in millicores.
    pub cpu_millis: u32,
    /// Total memory in MiB.
    pub memory_mib: u32,
    /// CPU already reserved by instances on it. For [`reconcile`](super::reconcile):
    /// other services' instances; it adds the service's own itself.
    pub used_cpu: u32,
    /// Memory already reserved by instances on it (as `used_cpu`).
    pub used_mem: u32,
    /// Declared lost: nothing is ever placed on it.
    pub lost: bool,
}

impl NodeCapacity {
    fn free_cpu(&self) -> u32 {
        self.cpu_millis.saturating_sub(self.used_cpu)
    }

    fn free_mem(&self) -> u32 {
        self.memory_mib.saturating_sub(self.used_mem)
    }

    fn fits(&self, size: &Size) -> bool {
        !self.lost && self.free_cpu() >= size.cpu_millis && self.free_mem() >= size.memory_mib
    }

    fn reserve(&mut self, size: &Size) {
        self.used_cpu = self.used_cpu.saturating_add(size.cpu_millis);
        self.used_mem = self.used_mem.saturating_add(size.memory_mib);
    }
}

/// Why instances could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No live node has room for all of them.
    #[error("no capacity: {requested} instance(s) requested, room for {placeable}")]
    NoCapacity { requested: usize, placeable: usize },
}

/// Places `count` instances of `size`: each on the node holding the fewest
/// instances of this service (`existing` lists the nodes of the ones already
/// placed, one entry per instance), then the most free CPU, then the most
/// free memory, then the smallest id, so equal inputs give equal answers.
/// Lost nodes and nodes without room are never chosen. All or nothing.
pub fn place(
    nodes: &[NodeCapacity],
    size: &Size,
    count: usize,
    existing: &[NodeId],
) -> Result<Vec<NodeId>, PlacementError> {
    let mut nodes = nodes.to_vec();
    let mut spread = Spread::new(existing);
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        match place_one(&mut nodes, size, &mut spread) {
            Some(n) => placed.push(n),
            None => {
                return Err(PlacementError::NoCapacity {
                    requested: count,
                    placeable: placed.len(),
                })
            }
        }
    }
    Ok(placed)
}

/// How many instances of the service each node holds.
#[derive(Debug, Default)]
pub(crate) struct Spread(BTreeMap<NodeId, usize>);

impl Spread {
    pub(crate) fn new(existing: &[NodeId]) -> Self {
        let mut s = Spread::default();
        for n in existing {
            s.add(n);
        }
        s
    }

    fn count(&self, node: &NodeId) -> usize {
        self.0.get(node).copied().unwrap_or(0)
    }

    fn add(&mut self, node: &NodeId) {
        *self.0.entry(node.clone()).or_insert(0) += 1;
    }
}

/// Places one instance, reserving its size on the chosen node.
pub(crate) fn place_one(
    nodes: &mut [NodeCapacity],
    size: &Size,
    spread: &mut Spread,
) -> Option<NodeId> {
    let best = nodes.iter_mut().filter(|n| n.fits(size)).min_by(|a, b| {
        spread
            .count(&a.id)
            .cmp(&spread.count(&b.id))
            .then(b.free_cpu().cmp(&a.free_cpu()))
            .then(b.free_mem().cmp(&a.free_mem()))
            .then(a.id.cmp(&b.id))
    })?;
    best.reserve(size);
    spread.add(&best.id);
    Some(best.id.clone())
}

/// Reserves `size` on `node` for an instance already there (if the node is
/// in the view at all).
pub(crate) fn reserve_at(nodes: &mut [NodeCapacity], node: &NodeId, size: &Size) {
    if let Some(n) = nodes.iter_mut().find(|n| &n.id == node) {
        n.reserve(size);
    }
}

/// Why `unplaced` instances of `size` found no room: the up node that
/// comes closest to fitting one (the largest share of the CPU and of the
/// memory one needs, whichever is smaller), and what it has free.
pub fn shortfall(
    nodes: &[NodeCapacity],
    size: &Size,
    deploy: &DeployId,
    unplaced: usize,
) -> PlacementBlocked {
    // Per mille of one instance's need that is free; a need of zero is
    // always met.
    let share = |free: u32, need: u32| {
        (u64::from(free) * 1000)
            .checked_div(u64::from(need))
            .unwrap_or(u64::MAX)
    };
    let closest = nodes.iter().filter(|n| !n.lost).max_by(|a, b| {
        let fit = |n: &NodeCapacity| {
            share(n.free_cpu(), size.cpu_millis).min(share(n.free_mem(), size.memory_mib))
        };
        fit(a).cmp(&fit(b)).then(b.id.cmp(&a.id))
    });
    let needs = format!(
        "needs {} CPU / {} MiB",
        cpus(size.cpu_millis),
        size.memory_mib
    );
    let reason = match closest {
        Some(n) => format!(
            "no node has room: {needs}, largest free {} CPU / {} MiB on {}",
            cpus(n.free_cpu()),
            n.free_mem(),
            n.id
        ),
        None => format!("no node has room: {needs}, and no node is up"),
    };
    PlacementBlocked {
        deploy: deploy.clone(),
        unplaced: u32::try_from(unplaced).unwrap_or(u32::MAX),
        cpu_millis: size.cpu_millis,
        memory_mib: size.memory_mib,
        node: closest.map(|n| n.id.clone()),
        free_cpu_millis: closest.map_or(0, NodeCapacity::free_cpu),
        free_memory_mib: closest.map_or(0, NodeCapacity::free_mem),
        reason,
    }
}

/// Millicores as CPUs the way plans are written: `500` → `0.5`, `2000` → `2`.
fn cpus(millis: u32) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The nodes whose last heartbeat is more than `timeout` before `now`.
pub fn lost_nodes(
    last_heartbeats: &BTreeMap<NodeId, DateTime<Utc>>,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Vec<NodeId> {
    let Ok(timeout) = TimeDelta::from_std(timeout) else {
        // A timeout too large to represent never expires.
        return Vec::new();
    };
    last_heartbeats
        .iter()
        .filter(|(_, &seen)| now.signed_duration_since(seen) > timeout)
        .map(|(id, _)| id.clone())
        .collect()
}

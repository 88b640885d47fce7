//! Placement facts the scheduler decides about a service's instances: new
//! instances placed, instances moved off a lost node, a node's instances
//! marked lost, instances no node will report stopped (on a lost node, or
//! never started) let go, and instances no node has room for.
//!
//! Each is checked against the service so a stale plan (decided on an older
//! state by another scheduler copy) cannot place instances of a deploy that
//! ended or runs another digest; a repeat of a fact already applied yields
//! no events, so a retried decision is harmless.

use berth_schemas::events::{
    DiskPlaced, InstanceDraining, InstanceRescheduled, InstanceScheduled, InstanceStopped,
    PlacementBlocked, ServerFailed,
};
use berth_schemas::ids::{DiskId, InstanceId, NodeId};
use berth_schemas::model::DeployStatus;
use berth_schemas::Event;

use super::InstancePhase;
use crate::error::DomainError;
use crate::service::state::{ServiceState, ServiceStatus};

type Decision = Result<Vec<Event>, DomainError>;

/// New instances and replacements of lost ones, as one decision.
pub(in crate::service) fn place(
    state: &ServiceState,
    scheduled: Vec<InstanceScheduled>,
    rescheduled: Vec<InstanceRescheduled>,
) -> Decision {
    if state.status != ServiceStatus::Active {
        return Err(DomainError::conflict(
            "service is not active; nothing is placed",
        ));
    }
    let mut out: Vec<Event> = Vec::new();
    let mut disk = Disk::of(state);
    for s in scheduled {
        if let Some(existing) = state.instances.get(&s.instance) {
            if existing.deploy == s.deploy && existing.node == s.node {
                continue;
            }
            return Err(DomainError::conflict(format!(
                "instance id {} is already used",
                s.instance
            )));
        }
        let Some(d) = state.deploy(&s.deploy) else {
            return Err(DomainError::not_found("deploy", &s.deploy));
        };
        let wanted = d.is_running() || d.status == DeployStatus::Live;
        if !wanted || d.digest() != Some(s.digest.as_str()) {
            return Err(DomainError::conflict(format!(
                "deploy {} does not run {} now; no instance of it is placed",
                s.deploy, s.digest
            )));
        }
        if let Some(d) = &mut disk {
            if let Some(other) = state.instances.iter().next() {
                return Err(DomainError::conflict(format!(
                    "a service with a disk runs one instance at a time: {} has not stopped yet",
                    other.id
                )));
            }
            out.extend(d.place_on(&s.node)?);
        }
        out.push(s.into());
    }
    for r in rescheduled {
        match (
            state.instances.get(&r.instance),
            state.instances.get(&r.replacement),
        ) {
            // Only instances recorded lost move: one on a node this
            // scheduler merely does not know yet is still running there.
            (Some(old), None) if old.node == r.from_node && old.phase == InstancePhase::Lost => {
                if let Some(d) = &mut disk {
                    out.extend(d.place_on(&r.to_node)?);
                }
                out.push(r.into())
            }
            // Already moved by this same decision.
            (None, Some(_)) => {}
            _ => {
                return Err(DomainError::conflict(format!(
                    "instance {} cannot be moved from {}",
                    r.instance, r.from_node
                )))
            }
        }
    }
    Ok(out)
}

/// A service's disk as a decision places instances: where it is (or will
/// be, once the first is placed).
struct Disk {
    id: DiskId,
    node: Option<NodeId>,
}

impl Disk {
    fn of(state: &ServiceState) -> Option<Self> {
        let disk = state.config.as_ref()?.disk.as_ref()?;
        Some(Self {
            id: disk.id.clone(),
            node: state.disk_node.clone(),
        })
    }

    /// An instance goes to `node`: the disk's node, or the disk's first
    /// (`disk_placed`).
    fn place_on(&mut self, node: &NodeId) -> Result<Option<Event>, DomainError> {
        match &self.node {
            Some(at) if at == node => Ok(None),
            Some(at) => Err(DomainError::conflict(format!(
                "disk {} is on {at}: the service's instance runs there, not on {node}",
                self.id
            ))),
            None => {
                self.node = Some(node.clone());
                Ok(Some(
                    DiskPlaced {
                        disk: self.id.clone(),
                        node: node.clone(),
                    }
                    .into(),
                ))
            }
        }
    }
}

/// `node` was lost: the service's instances there are marked lost.
pub(in crate::service) fn server_failed(state: &ServiceState, node: NodeId) -> Vec<Event> {
    let instances: Vec<InstanceId> = state
        .instances
        .on_node(&node)
        .filter(|i| i.phase != InstancePhase::Lost)
        .map(|i| i.id.clone())
        .collect();
    if instances.is_empty() {
        return vec![];
    }
    vec![ServerFailed { node, instances }.into()]
}

/// Marks instances as leaving routing. Unknown, already draining and
/// not-yet-started ones are skipped, so a repeat appends nothing.
pub(in crate::service) fn drain(state: &ServiceState, instances: Vec<InstanceId>) -> Vec<Event> {
    instances
        .into_iter()
        .filter(|id| {
            state.instances.get(id).is_some_and(|i| {
                i.draining_since.is_none()
                    && !matches!(i.phase, InstancePhase::Scheduled | InstancePhase::Lost)
            })
        })
        .map(|instance| InstanceDraining { instance }.into())
        .collect()
}

/// Instances nobody needs any more that no node will report stopped: on a
/// lost node, or never started (a node that does start one later is sent a
/// stop as well, and its report of that is a harmless repeat).
pub(in crate::service) fn release(state: &ServiceState, instances: Vec<InstanceId>) -> Decision {
    let mut out: Vec<Event> = Vec::new();
    for id in instances {
        match state.instances.get(&id) {
            None => {}
            Some(i) if matches!(i.phase, InstancePhase::Lost | InstancePhase::Scheduled) => {
                out.push(InstanceStopped { instance: id }.into())
            }
            Some(_) => {
                return Err(DomainError::conflict(format!(
                    "instance {id} runs on a node that is up; that node reports its stop"
                )))
            }
        }
    }
    Ok(out)
}

/// Some of a deploy's instances found no node with room. Recorded once per
/// shortfall: the scheduler retries every few seconds and finds the same
/// one each time until something changes, which says nothing new.
pub(in crate::service) fn blocked(state: &ServiceState, e: PlacementBlocked) -> Decision {
    let Some(d) = state.deploy(&e.deploy) else {
        return Err(DomainError::not_found("deploy", &e.deploy));
    };
    // A plan decided before the deploy ended: nothing waits for room now.
    let placing = d.is_running() || d.status == DeployStatus::Live;
    if !placing || d.placement_blocked.as_deref() == Some(&e) {
        return Ok(vec![]);
    }
    Ok(vec![e.into()])
}

//! Snapshots of a service's disk (Render's disk snapshots): what the
//! service knows of them, when its node should take the next, and setting
//! the disk back to one. The copies themselves are on the disk's node
//! (`berth_agent::persistent`); the log records each one taken
//! (`disk_snapshot_taken`), so every reader lists the same ones, and the
//! node deletes a copy the service no longer lists.
//!
//! A disk keeps its [`KEPT`] newest snapshots: one a day (the node's
//! default) is a week of them. A restore counts (`DiskRestore.number`),
//! so the node copies each restore's snapshot over the disk once, before
//! the next instance mounts it, and a later start of the same deploy
//! does not copy it again.

use berth_schemas::events::{DiskSnapshotRequested, DiskSnapshotRestored, DiskSnapshotTaken};
use berth_schemas::ids::{DeployId, DiskId, DiskSnapshotKey, NodeId};
use berth_schemas::model::DiskRestore;
use berth_schemas::Event;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::deploys::config;
use super::lifecycle::redeploy_after;
use super::state::{ServiceState, ServiceStatus};
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// How many snapshots a disk keeps (the newest).
pub const KEPT: usize = 7;

/// One snapshot of the service's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub key: DiskSnapshotKey,
    pub created_at: DateTime<Utc>,
    /// What the copy takes on its node's disk.
    pub bytes: u64,
}

/// What a service knows of its disk's snapshots (empty without a disk).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSnapshots {
    /// Oldest first, at most [`KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<Snapshot>,
    /// A snapshot was asked for and not taken yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
    /// The disk's latest restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<DiskRestore>,
}

impl DiskSnapshots {
    /// The snapshot called `key`, if the disk keeps it.
    pub fn get(&self, key: &DiskSnapshotKey) -> Option<&Snapshot> {
        self.kept.iter().find(|s| &s.key == key)
    }

    /// Whether the disk's node should take a snapshot at `now`: one was
    /// asked for, or `every` has passed since the newest (since `since`,
    /// when the disk was made, before the first). `every` zero: only when
    /// asked.
    pub fn due(
        &self,
        since: DateTime<Utc>,
        every: std::time::Duration,
        now: DateTime<Utc>,
    ) -> bool {
        if self.requested {
            return true;
        }
        let Ok(every) = Duration::from_std(every) else {
            return false;
        };
        if every.is_zero() {
            return false;
        }
        let last = self.kept.last().map_or(since, |s| s.created_at);
        now - last >= every
    }
}

/// The service's disk, for a snapshot decision.
fn disk_of(state: &ServiceState) -> Result<&berth_schemas::model::Disk, DomainError> {
    let cfg = config(state)?;
    if state.status == ServiceStatus::Deleted {
        return Err(DomainError::conflict("the service is deleted"));
    }
    cfg.disk
        .as_ref()
        .ok_or_else(|| DomainError::not_found("disk", ""))
}

/// Asks the disk's node for a snapshot now (nothing when one is asked
/// for already).
pub(super) fn request(state: &ServiceState) -> Decision {
    let disk = disk_of(state)?;
    if state.disk_node.is_none() {
        return Err(DomainError::conflict(
            "the disk holds nothing yet: its first instance has not been placed",
        ));
    }
    if state.disk_snapshots.requested {
        return Ok(vec![]);
    }
    Ok(vec![DiskSnapshotRequested {
        disk: disk.id.clone(),
    }
    .into()])
}

/// A node took a snapshot: recorded when it is of the service's disk now
/// and not recorded yet (else nothing, and the node deletes the copy).
pub(super) fn taken(
    state: &ServiceState,
    disk: DiskId,
    key: DiskSnapshotKey,
    node: NodeId,
    bytes: u64,
) -> Decision {
    let Ok(current) = disk_of(state) else {
        return Ok(vec![]);
    };
    if current.id != disk || state.disk_snapshots.get(&key).is_some() {
        return Ok(vec![]);
    }
    Ok(vec![DiskSnapshotTaken {
        disk,
        key,
        node,
        bytes,
    }
    .into()])
}

/// Sets the disk back to snapshot `key` and deploys (a suspended service
/// at its resume): the node copies the snapshot over the disk before the
/// new instance mounts it.
pub(super) fn restore(state: &ServiceState, key: DiskSnapshotKey, deploy: DeployId) -> Decision {
    let disk = disk_of(state)?;
    let Some(snapshot) = state.disk_snapshots.get(&key) else {
        return Err(DomainError::not_found("snapshot", key));
    };
    let restored: Event = DiskSnapshotRestored {
        disk: disk.id.clone(),
        key,
        snapshot_created_at: snapshot.created_at,
    }
    .into();
    let mut out = redeploy_after(state, &restored, deploy)?;
    out.insert(0, restored);
    Ok(out)
}

/// Applies the snapshot events, and forgets a disk's snapshots with it.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    if super::state::disk_changed(s, event) {
        s.disk_snapshots = DiskSnapshots::default();
        return;
    }
    let current = s.disk().map(|d| &d.id);
    match event {
        Event::DiskSnapshotRequested(e) if current == Some(&e.disk) => {
            s.disk_snapshots.requested = true;
        }
        Event::DiskSnapshotTaken(e) if current == Some(&e.disk) => {
            let snaps = &mut s.disk_snapshots;
            snaps.requested = false;
            snaps.kept.push(Snapshot {
                key: e.key.clone(),
                created_at: time.unwrap_or_default(),
                bytes: e.bytes,
            });
            let over = snaps.kept.len().saturating_sub(KEPT);
            snaps.kept.drain(..over);
        }
        Event::DiskSnapshotRestored(e) if current == Some(&e.disk) => {
            let number = s.disk_snapshots.restore.as_ref().map_or(0, |r| r.number) + 1;
            s.disk_snapshots.restore = Some(DiskRestore {
                disk: e.disk.clone(),
                key: e.key.clone(),
                number,
            });
        }
        _ => {}
    }
}

//! Looks after the service disks on this node: takes their snapshots,
//! deletes the snapshots a disk keeps no more, and removes the disks of
//! deleted services, and disks removed from their service.
//!
//! A disk's snapshot is due when one was asked for, or when the node's
//! `disk_snapshot_every` has passed since its newest
//! ([`berth_domain::service::snapshots::DiskSnapshots::due`]); the node
//! copies it (`persistent::snapshot`) and records it
//! (`disk_snapshot_taken`, once per key). A snapshot the service no
//! longer lists (beyond the newest kept, or of a disk removed) is
//! deleted. The node thaws its disks as the sweep starts (one a dead node
//! left frozen mid-copy).
//!
//! What each disk holds is measured at each look; a crossing into or out
//! of high use ([`berth_domain::service::disk_usage`]) is reported to the
//! service, which records it once.
//!
//! Removal: A disk outlives its instances
//! (`berth_agent::persistent`); once its service is deleted and no
//! instance of it runs here any more, or the service no longer has it and
//! no instance here mounts it, the node removes it and what was written
//! on it. The node looks every [`SWEEP_EVERY`] (and
//! at its start, so a disk whose removal a restart cut short goes then),
//! reading each disk's service from the log: a node holds a few disks,
//! so this is a few cached reads a sweep.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use berth_agent::persistent;
use berth_agent::Agent;
use berth_domain::service::{self, disk_usage, ServiceState, ServiceStatus};
use berth_eventlog::EventStore;
use berth_schemas::ids::{DiskId, DiskSnapshotKey, ServiceId};
use berth_schemas::AggregateId;
use tokio_util::sync::CancellationToken;

use crate::report::Reporter;

/// What the sweep works with.
pub(crate) struct Sweep {
    pub store: EventStore,
    pub agent: Agent,
    pub reporter: Reporter,
    pub disks: PathBuf,
    /// Between snapshots of a disk (zero: only those asked for).
    pub snapshot_every: Duration,
    /// Bytes the node keeps free.
    pub reserve: u64,
}

/// How often the node looks for disks of deleted services.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps the node's disks until `stop`.
pub(crate) async fn sweep(sweep: Sweep, stop: CancellationToken) {
    {
        let d = sweep.disks.clone();
        let _ = tokio::task::spawn_blocking(move || persistent::thaw_all(&d)).await;
    }
    // The snapshot each disk took last: until the service's state read
    // here holds it, the read is older than the snapshot, and nothing is
    // taken or deleted on it.
    let mut taken: HashMap<DiskId, DiskSnapshotKey> = HashMap::new();
    loop {
        sweep_once(&sweep, &mut taken).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// One look: each disk whose snapshot is due gets one, and loses the
/// snapshots its service lists no more; each disk whose service is
/// deleted and has no instance here, or whose service has it no more and
/// no instance here mounts it, is removed. A service the log cannot be
/// read for keeps its disk and snapshots.
async fn sweep_once(sweep: &Sweep, taken: &mut HashMap<DiskId, DiskSnapshotKey>) {
    let Sweep {
        store,
        agent,
        disks,
        ..
    } = sweep;
    let on_disk = {
        let d = disks.to_owned();
        tokio::task::spawn_blocking(move || persistent::list(&d))
            .await
            .unwrap_or_default()
    };
    if on_disk.is_empty() {
        return;
    }
    let running: BTreeSet<ServiceId> = agent
        .instances()
        .iter()
        .filter_map(|i| agent.service_of(i))
        .collect();
    let mounted = agent.disks_in_use();
    for (disk, owner) in on_disk {
        let Ok(svc) = owner.parse::<ServiceId>() else {
            tracing::warn!(disk.id = %disk, service = %owner, "a disk names no service; kept");
            continue;
        };
        let state = match store
            .state_holding(&AggregateId::Service(svc.clone()), service::fold, 0)
            .await
        {
            Ok((state, _)) => state,
            Err(e) => {
                tracing::debug!(disk.id = %disk, service.id = %svc, error = %e, "disk kept: the service cannot be read now");
                continue;
            }
        };
        if let Ok(id) = disk.parse::<DiskId>() {
            snapshots(sweep, &svc, &id, &state, taken).await;
            usage(sweep, &svc, &id, &state).await;
        }
        if mounted.iter().any(|d| d.as_str() == disk) {
            continue;
        }
        let deleted = state.status == ServiceStatus::Deleted;
        if deleted && running.contains(&svc) {
            continue;
        }
        // Removed from a service that goes on (`disk_removed`): its id is
        // never given again, so another disk there is not this one.
        let removed = state
            .config
            .as_ref()
            .is_some_and(|c| c.disk.as_ref().is_none_or(|d| d.id.as_str() != disk));
        if !deleted && !removed {
            continue;
        }
        let (d, id) = (disks.to_owned(), disk.clone());
        match tokio::task::spawn_blocking(move || persistent::remove(&d, &id)).await {
            Ok(Ok(())) => {
                tracing::info!(disk.id = %disk, service.id = %svc, deleted, "removed a disk its service has no more")
            }
            Ok(Err(e)) => {
                tracing::warn!(disk.id = %disk, service.id = %svc, error = %e, "removing a deleted service's disk failed; tried again later")
            }
            Err(e) => tracing::warn!(disk.id = %disk, error = %e, "removing a disk failed"),
        }
    }
}

/// Takes disk `id`'s snapshot when due, and deletes the snapshots its
/// service lists no more; nothing on a read older than the last snapshot
/// taken here.
async fn snapshots(
    sweep: &Sweep,
    svc: &ServiceId,
    id: &DiskId,
    state: &ServiceState,
    taken: &mut HashMap<DiskId, DiskSnapshotKey>,
) {
    let snaps = &state.disk_snapshots;
    let current = is_current(state, id);
    if current && taken.get(id).is_some_and(|k| snaps.get(k).is_none()) {
        return;
    }
    let keep: Vec<DiskSnapshotKey> = if current {
        snaps.kept.iter().map(|s| s.key.clone()).collect()
    } else {
        Vec::new()
    };
    let due = current
        && state.status != ServiceStatus::Deleted
        && state.disk_node.as_ref() == Some(&sweep.reporter.node)
        && state
            .disk_added_at
            .or(state.created_at)
            .is_some_and(|since| snaps.due(since, sweep.snapshot_every, chrono::Utc::now()));
    let (d, disk) = (sweep.disks.clone(), id.to_string());
    let _ =
        tokio::task::spawn_blocking(move || persistent::prune_snapshots(&d, &disk, &keep)).await;
    if !due {
        return;
    }
    let key = DiskSnapshotKey::generate();
    let (d, disk, k, reserve) = (
        sweep.disks.clone(),
        id.to_string(),
        key.clone(),
        sweep.reserve,
    );
    let started = std::time::Instant::now();
    let bytes = match tokio::task::spawn_blocking(move || {
        persistent::snapshot(&d, &disk, &k, reserve)
    })
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            tracing::warn!(disk.id = %id, service.id = %svc, error = %e, "a snapshot of a disk could not be taken; tried again at the next look");
            return;
        }
        Err(e) => {
            tracing::warn!(disk.id = %id, error = %e, "a snapshot of a disk could not be taken");
            return;
        }
    };
    let command = service::Command::RecordDiskSnapshot {
        disk: id.clone(),
        key: key.clone(),
        node: sweep.reporter.node.clone(),
        bytes,
    };
    match sweep
        .reporter
        .decide(svc, None, command, key.as_str())
        .await
    {
        Ok(()) => {
            tracing::info!(disk.id = %id, service.id = %svc, snapshot = %key, bytes, took_ms = started.elapsed().as_millis() as u64, "took a snapshot of a disk");
            taken.insert(id.clone(), key);
        }
        // Not recorded: the copy is deleted once a minute old.
        Err(e) => {
            tracing::warn!(disk.id = %id, snapshot = %key, error = %e, "a snapshot taken could not be recorded")
        }
    }
}

/// Whether `id` is the service's disk now.
fn is_current(state: &ServiceState, id: &DiskId) -> bool {
    state.disk().is_some_and(|d| &d.id == id)
}

/// Reports disk `id`'s use to its service when it crossed into or out of
/// high use since what the service last recorded (a stale read reports a
/// crossing again; the service records it once).
async fn usage(sweep: &Sweep, svc: &ServiceId, id: &DiskId, state: &ServiceState) {
    if !is_current(state, id) || state.status == ServiceStatus::Deleted {
        return;
    }
    let (d, disk) = (sweep.disks.clone(), id.to_string());
    let Ok(Some((used, size))) =
        tokio::task::spawn_blocking(move || persistent::usage_of(&d, &disk)).await
    else {
        return;
    };
    let high = state.disk_usage_high;
    if disk_usage::is_high(high, used, size) == high {
        return;
    }
    let command = service::Command::RecordDiskUsage {
        disk: id.clone(),
        used_bytes: used,
        size_bytes: size,
    };
    // A fresh key: each crossing is its own report.
    let key = format!("{id}-usage-{}", berth_schemas::ids::DeployId::generate());
    if let Err(e) = sweep.reporter.decide(svc, None, command, &key).await {
        tracing::warn!(disk.id = %id, service.id = %svc, error = %e, "a disk's use could not be reported; tried again at the next look");
    }
}

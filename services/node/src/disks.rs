//! Removes the disks of deleted services, and disks removed from their
//! service, from this node. A disk outlives its instances
//! (`berth_agent::persistent`); once its service is deleted and no
//! instance of it runs here any more, or the service no longer has it and
//! no instance here mounts it, the node removes it and what was written
//! on it. The node looks every [`SWEEP_EVERY`] (and
//! at its start, so a disk whose removal a restart cut short goes then),
//! reading each disk's service from the log: a node holds a few disks,
//! so this is a few cached reads a sweep.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use berth_agent::persistent;
use berth_agent::Agent;
use berth_domain::service::{self, ServiceStatus};
use berth_eventlog::EventStore;
use berth_schemas::ids::ServiceId;
use berth_schemas::AggregateId;
use tokio_util::sync::CancellationToken;

/// How often the node looks for disks of deleted services.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Sweeps `disks` until `stop`.
pub async fn sweep(store: EventStore, agent: Agent, disks: PathBuf, stop: CancellationToken) {
    loop {
        sweep_once(&store, &agent, &disks).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// One look: each disk whose service is deleted and has no instance
/// here, or whose service has it no more and no instance here mounts it,
/// is removed. A service the log cannot be read for keeps its disk.
async fn sweep_once(store: &EventStore, agent: &Agent, disks: &std::path::Path) {
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
        if mounted.iter().any(|d| d.as_str() == disk) {
            continue;
        }
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

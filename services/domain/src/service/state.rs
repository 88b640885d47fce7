//! The state of one service (settings, deploys, instances, cron runs) and
//! the pure `apply` that builds it from the service's events, one concern
//! at a time: each concern's `apply` sits next to the decisions that
//! produce its events (`lifecycle.rs`, `deploys/`, `instances/`,
//! `cron.rs`). `apply` never fails: an event that does not fit the state
//! (an unknown deploy, a second `service_created`) leaves it unchanged, so
//! a replay cannot go wrong.

use std::collections::HashMap;
use std::sync::Arc;

use berth_schemas::events::ServiceCreated;
use berth_schemas::ids::{DeployId, NodeId};
use berth_schemas::model::{DeployStatus, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::cron::{self, CronState};
use super::deploys::{self, Deploy, PullFailures};
use super::domains::{self, CustomDomains};
use super::instances::{Instance, Instances};
use super::lifecycle;

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    /// No `service_created` yet.
    #[default]
    NotCreated,
    /// Created and not suspended.
    Active,
    /// Suspended: instances stopped, deploys refused until resumed.
    Suspended,
    /// Deleted (or its creation given up before it was created): every
    /// command is refused as not found.
    Deleted,
}

/// A service's settings, as created and then updated: the fields of its
/// `service_created` event (image normalised; `num_instances` is 1 for cron
/// jobs, which have none running), with every `service_updated` merged in.
pub type ServiceConfig = ServiceCreated;

/// Everything the service's rules need, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceState {
    pub status: ServiceStatus,
    /// `None` until `service_created`.
    pub config: Option<ServiceConfig>,
    /// Every deploy, in request order. Behind pointers: a service with a
    /// long history holds thousands, and growing one contiguous vector of
    /// them re-copied and re-faulted megabytes on every doubling (a tenth of
    /// the hook path's CPU in `perf`); a vector of pointers grows cheaply.
    /// Shared pointers: a copy of the state shares its deploys and copies
    /// only the one an event changes, so a read model and the store can
    /// each hold the state without holding every deploy twice.
    pub deploys: Vec<Arc<Deploy>>,
    /// Position of each deploy in `deploys`.
    /// A hash map: string-compared B-tree lookups on every event were ~5 %
    /// of the hook path's CPU at a few thousand deploys; hashed with
    /// foldhash (seeded per process), as SipHash was half of that again.
    pub(super) index: HashMap<DeployId, usize, foldhash::fast::RandomState>,
    /// The running deploy (at most one: SPEC §6).
    pub active: Option<DeployId>,
    /// Queued deploys, oldest first.
    pub queue: Vec<DeployId>,
    /// The deploy serving now.
    pub live: Option<DeployId>,
    pub cron: CronState,
    /// Its one-off jobs, the most recent (absent in snapshots taken before
    /// jobs existed: none then).
    #[serde(default)]
    pub jobs: super::jobs::Jobs,
    /// The instances on nodes now (absent in snapshots taken before it existed).
    #[serde(default)]
    pub instances: Instances,
    /// The latest `restart_requested`: instances placed before it are replaced.
    #[serde(default)]
    pub restart_requested_at: Option<DateTime<Utc>>,
    /// When a node last failed to pull a deploy's image (the scheduler
    /// backs off placing that deploy, and gives up on instances placed
    /// before the failure).
    #[serde(default)]
    pub pull_failures: PullFailures,
    /// The port its instances were last found serving on when that was not
    /// where berth expected them and the service sets no `PORT`
    /// (`instance_port_detected`): later instances are checked and
    /// published there first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_port: Option<u16>,
    /// The node its disk is on (`disk_placed`, with the first instance):
    /// its instances are placed there only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_node: Option<NodeId>,
    /// When its disk was added to it (`disk_added`; a disk given at
    /// create is as old as the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_added_at: Option<DateTime<Utc>>,
    /// When its disk last changed (`disk_updated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_updated_at: Option<DateTime<Utc>>,
    /// Its disk's use is high (`service_disk_usage_high`, until
    /// `service_disk_usage_recovered`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_usage_high: bool,
    /// Its disk's snapshots, and its latest restore.
    #[serde(default)]
    pub disk_snapshots: super::snapshots::DiskSnapshots,
    /// Its autoscaling, and the change of count under way.
    #[serde(default)]
    pub autoscaling: super::autoscaling::Autoscaling,
    /// Its override of the owner's log stream (`log_stream_override_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<berth_schemas::model::LogStreamOverride>,
    /// Custom domains by name (web services), each claimed on its own
    /// subject first (`crate::custom_domain`).
    #[serde(default)]
    pub custom_domains: CustomDomains,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Ended deploys no longer held here (the oldest, beyond
    /// [`KEPT_ENDED_DEPLOYS`]); the log still has them (see
    /// [`ServiceState::keeping_every_deploy`]).
    #[serde(default)]
    pub forgotten_deploys: u64,
    /// How many deploys are held before old ones are looked at again. A
    /// look costs one pass over the held deploys, so it waits for as many
    /// new ones as were still running or queued at the last look: a
    /// service whose deploys pile up unended (hooks faster than deploys
    /// end) pays a constant share per deploy, not a pass each time.
    #[serde(default)]
    pub(super) forget_check_at: usize,
    /// Which ended deploys a fold holds (never stored: a state read back
    /// holds the recent ones until told otherwise).
    #[serde(skip)]
    keep: Keep,
}

/// Which ended deploys a fold of a service holds; running, queued and live
/// deploys are always held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Keep {
    /// The newest [`KEPT_ENDED_DEPLOYS`]: what the service's rules and the
    /// first pages of its deploy listing need.
    #[default]
    Recent,
    /// Every deploy (a look into the past).
    Every,
    /// Only the newest this many deploys that served and were replaced
    /// (deactivated): the rollback targets a registry probe checks, for a
    /// view that decides nothing.
    Served(usize),
}

/// Ended deploys a service holds in memory, newest first: what its rules,
/// rollbacks to recent deploys and the first pages of its deploy listing
/// need. Older ones are read from the log when asked for, so a service
/// with a hundred thousand deploys costs what one with a hundred does.
pub const KEPT_ENDED_DEPLOYS: usize = 100;
/// Deploys beyond the kept ones before they are let go, in one pass.
const FORGET_SLACK: usize = 28;

impl ServiceState {
    /// Its disk, if it has one.
    pub fn disk(&self) -> Option<&berth_schemas::model::Disk> {
        self.config.as_ref()?.disk.as_ref()
    }

    /// Whether this fold keeps every deploy and job (a look into the
    /// past), not only the recent ones.
    pub(super) fn keeps_everything(&self) -> bool {
        self.keep == Keep::Every
    }

    /// An empty state whose fold keeps every deploy (and every job).
    pub fn keeping_every_deploy() -> Self {
        ServiceState {
            keep: Keep::Every,
            ..ServiceState::default()
        }
    }

    /// An empty state whose fold holds, of the ended deploys, only the
    /// newest `served` deactivated ones (those that served and were
    /// replaced): a view of rollback targets that decides nothing, at a
    /// fraction of the memory. Commands must never be decided on it.
    pub fn keeping_served(served: usize) -> Self {
        ServiceState {
            keep: Keep::Served(served),
            ..ServiceState::default()
        }
    }

    /// This state (read back from a snapshot, say) holding from now on only
    /// what [`ServiceState::keeping_served`] holds, the rest let go now.
    pub fn keep_only_served(&mut self, served: usize) {
        self.keep = Keep::Served(served);
        self.forget_check_at = 0;
        self.forget_old_deploys();
    }

    /// Lets the oldest ended deploys go once more than those [`Keep`]
    /// holds (plus some slack) are held; running, queued and live deploys
    /// always stay.
    pub(super) fn forget_old_deploys(&mut self) {
        let (kept, slack) = match self.keep {
            Keep::Every => return,
            Keep::Recent => (KEPT_ENDED_DEPLOYS, FORGET_SLACK),
            // A look is a pass over few deploys: one every `served` new
            // ones keeps the share per deploy constant.
            Keep::Served(n) => (n, n.max(1)),
        };
        if self.deploys.len() < self.forget_check_at.max(kept + slack + 1) {
            return;
        }
        let live = self.live.clone();
        let forgettable = |d: &Deploy| d.is_ended() && live.as_ref() != Some(&d.id);
        let counted = |d: &Deploy| match self.keep {
            Keep::Served(_) => d.status == DeployStatus::Deactivated,
            Keep::Recent | Keep::Every => true,
        };
        // Newest first: the first `kept` counted ended deploys stay, as
        // does every deploy that is not ended (or is live).
        let mut left = kept;
        let mut hold = vec![true; self.deploys.len()];
        let mut unended = 0;
        for (held, d) in hold.iter_mut().zip(&self.deploys).rev() {
            if !forgettable(d) {
                unended += 1;
            } else if counted(d) && left > 0 {
                left -= 1;
            } else {
                *held = false;
            }
        }
        let before = self.deploys.len();
        let mut hold = hold.into_iter();
        self.deploys.retain(|_| hold.next().unwrap_or(true));
        if self.deploys.len() < before {
            self.forgotten_deploys += (before - self.deploys.len()) as u64;
            self.index = self
                .deploys
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id.clone(), i))
                .collect();
        }
        self.forget_check_at = self.deploys.len() + slack.max(unended);
    }

    /// A deploy by id.
    pub fn deploy(&self, id: &DeployId) -> Option<&Deploy> {
        self.index
            .get(id)
            .and_then(|&i| self.deploys.get(i))
            .map(|d| &**d)
    }

    pub(super) fn deploy_mut(&mut self, id: &DeployId) -> Option<&mut Deploy> {
        match self.index.get(id) {
            Some(&i) => self.deploys.get_mut(i).map(Arc::make_mut),
            None => None,
        }
    }

    /// The running deploy, if any.
    pub fn active_deploy(&self) -> Option<&Deploy> {
        self.active.as_ref().and_then(|id| self.deploy(id))
    }

    /// The live deploy, if any.
    pub fn live_deploy(&self) -> Option<&Deploy> {
        self.live.as_ref().and_then(|id| self.deploy(id))
    }

    /// The port the live deploy's healthy instances serve on (that of their
    /// address), when one is: for a private service, the port its owner's
    /// other instances reach it on by name.
    pub fn serving_port(&self) -> Option<u16> {
        let live = &self.live_deploy()?.id;
        self.instances
            .of_deploy(live)
            .filter(|i| i.is_healthy())
            .find_map(Instance::port)
    }

    /// The digest instances should run: the live deploy's.
    pub fn current_digest(&self) -> Option<&str> {
        self.live_deploy().and_then(Deploy::digest)
    }

    /// True once created and not deleted.
    pub fn exists(&self) -> bool {
        matches!(
            self.status,
            ServiceStatus::Active | ServiceStatus::Suspended
        )
    }

    pub(super) fn end(&mut self, id: &DeployId) {
        if self.active.as_ref() == Some(id) {
            self.active = None;
        }
        self.queue.retain(|q| q != id);
    }
}

/// Applies one event without a timestamp.
pub fn apply(state: ServiceState, event: &Event) -> ServiceState {
    apply_at(state, event, None)
}

/// Whether `event` (applied to `s` already) left the service with
/// another disk than before, or none: what was known of the disk before
/// (its snapshots, its use) is forgotten.
pub(super) fn disk_changed(s: &ServiceState, event: &Event) -> bool {
    match event {
        Event::DiskAdded(_) => true,
        Event::DiskRemoved(_) => s.disk().is_none(),
        _ => false,
    }
}

/// Applies one event, recording `time` (the envelope's) where a timestamp
/// is kept. Each concern applies the events its decisions produce; an
/// event is about one of them (an `instance_scheduled` also clears its
/// deploy's `placement_blocked`).
pub fn apply_at(mut s: ServiceState, event: &Event, time: Option<DateTime<Utc>>) -> ServiceState {
    lifecycle::apply(&mut s, event, time);
    deploys::apply(&mut s, event, time);
    cron::apply(&mut s, event, time);
    super::jobs::apply(&mut s, event, time);
    domains::apply(&mut s, event, time);
    super::snapshots::apply(&mut s, event, time);
    super::disk_usage::apply(&mut s, event);
    super::autoscaling::apply(&mut s, event, time);
    s.instances.apply(event, time);
    if let Event::DiskPlaced(e) = event {
        s.disk_node = Some(e.node.clone());
    }
    if let Event::InstancePortDetected(e) = event {
        s.detected_port = Some(e.port);
        if s.config.as_ref().map(|c| c.service_type) == Some(ServiceType::PrivateService) {
            // A private instance is reached at its own address, now on the
            // port found (a web instance's published address stays).
            s.instances.moved_to_port(&e.instance, e.port);
        }
    }
    s
}

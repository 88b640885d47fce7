//! The scheduler's pure core: what happens next for one service, decided
//! from its state, a snapshot of the cluster and the time. [`steps`] is a
//! whole pass: the [`Step`]s the scheduler carries out in order (decide
//! this service command, enqueue this node work, look again after this
//! long), made of the running deploy's [`pipeline`] and [`reconcile`]'s
//! [`Plan`] of what should run where. The scheduler appends the resulting
//! facts, and the next pass sees them. It is level-triggered: the same
//! state and view always give the same steps, and a state where everything
//! is in place gives none.
//!
//! Rules (SPEC §6, §10, §11):
//! - a suspended or deleted service runs nothing: every instance is stopped;
//! - the deploy being rolled out (status `update_in_progress`, phase
//!   `updating`, digest resolved) gets `numInstances` instances of its
//!   digest; once all of them are healthy it is marked live; if that has not
//!   happened within the readiness window, counted from `update_started`, it
//!   fails `update_failed`;
//! - the live deploy keeps `numInstances` instances of exactly its recorded
//!   digest: missing ones are scheduled, extras stopped (unhealthy first), an
//!   instance running another digest is replaced;
//! - zero downtime: a healthy instance that is not wanted (an old live
//!   deploy's, a wrong digest's) is stopped only once its group has
//!   `numInstances` healthy instances of the right digest; unhealthy ones go
//!   at once, so the old live deploy serves until the new one is live;
//! - a restart (`restart_requested`) replaces every live instance placed
//!   before it the same way: new ones first, old ones once they serve;
//! - an instance on a lost node (or on a node missing from the view) is
//!   rescheduled on another node when it is still wanted, else stopped;
//! - placement never uses a lost node (see [`place`]), and a node's room is
//!   what every instance on it leaves, the service's own included (the view
//!   counts the other services'), until its stop is reported;
//! - the deploy being rolled out is placed before anything of the live
//!   deploy; while it rolls out, the live deploy gets no new instances for a
//!   scale-up or a restart (they would be replaced as soon as the rollout is
//!   live, and they would take the room it needs), only moves off lost nodes;
//! - instances that find no room are reported (`placement_blocked`, with
//!   the node that comes closest), and a deploy that fails for want of room
//!   says so in its reason;
//! - a service with a disk runs its one instance on the disk's node only
//!   (the first placement chooses it), and replaces it the other way round
//!   (Kubernetes' `Recreate`): the old instance stops first, the new one is
//!   placed once no other instance is left, since two programs must never
//!   write one disk. Its deploys and restarts therefore have downtime, as
//!   Render's services with a disk do.

mod pipeline;
mod place;
mod steps;

#[cfg(test)]
mod props;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod steps_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use berth_schemas::events::{
    DeployFailed, DeployLive, InstanceRescheduled, InstanceScheduled, InstanceStopped,
    PlacementBlocked,
};
use berth_schemas::ids::{DeployId, DiskId, InstanceId, NodeId};
use berth_schemas::model::{DeployPhase, DeployStatus, Plan as Size, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, TimeDelta, Utc};

pub use pipeline::pre_deploy_instance;
pub use place::{lost_nodes, place, shortfall, NodeCapacity, PlacementError};
pub use steps::{steps, Recheck, Step, Timings, Work};

use crate::service::{Deploy, Instance, InstancePhase, ServiceState, ServiceStatus};
use place::{place_one, reserve_at, Spread};

/// SPEC §6: new instances must be healthy within this window (default 15 min).
pub const DEFAULT_READINESS_WINDOW: Duration = Duration::from_secs(15 * 60);

/// How soon to try again when some instance could not be placed.
pub const PLACEMENT_RETRY: Duration = Duration::from_secs(10);

/// How often a new instance may exit before it ever passed its health
/// check before its deploy fails without waiting out the readiness window
/// (with the node's crash backoff of 10 s, then 20 s: about half a minute
/// after the first start).
pub const EXITS_BEFORE_FAILING: u32 = 3;

/// The cluster as the scheduler sees it for one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeCapacity>,
    /// How long a deploy's new instances have to become healthy.
    pub readiness_window: Duration,
}

impl ClusterView {
    /// A view over `nodes` with the default readiness window.
    pub fn new(nodes: Vec<NodeCapacity>) -> Self {
        ClusterView {
            nodes,
            readiness_window: DEFAULT_READINESS_WINDOW,
        }
    }

    /// True when `node` is recorded lost (`node_lost` is in its log).
    pub fn is_recorded_lost(&self, node: &NodeId) -> bool {
        self.nodes.iter().any(|n| &n.id == node && n.lost)
    }

    /// True when `node` may hold running instances: known and not lost.
    fn is_up(&self, node: &NodeId) -> bool {
        self.nodes.iter().any(|n| &n.id == node && !n.lost)
    }

    /// True when the instance is on a node that is up and was not itself
    /// reported lost (`server_failed`).
    fn holds(&self, i: &Instance) -> bool {
        i.phase != InstancePhase::Lost && self.is_up(&i.node)
    }
}

/// Where new instance ids come from, so decisions can be replayed in tests.
pub trait IdSource {
    fn next_instance(&mut self) -> InstanceId;
}

/// Fresh random ids, for the running scheduler.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_instance(&mut self) -> InstanceId {
        InstanceId::generate()
    }
}

/// Ids counted up from a number: `ins-aaaa…`, `ins-aaa…b`, … (deterministic).
#[derive(Debug, Default, Clone, Copy)]
pub struct SequentialIds(pub u64);

impl IdSource for SequentialIds {
    fn next_instance(&mut self) -> InstanceId {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut n = self.0;
        self.0 = self.0.wrapping_add(1);
        let mut body = [b'a'; 20];
        for c in body.iter_mut().rev() {
            *c = ALPHABET[(n % 32) as usize];
            n /= 32;
        }
        let body: String = body.iter().map(|&b| char::from(b)).collect();
        match format!("ins-{body}").parse() {
            Ok(id) => id,
            // Unreachable: the body is 20 base32 characters.
            Err(_) => InstanceId::generate(),
        }
    }
}

/// One thing the scheduler wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a new instance of `deploy` running `digest` on `node`.
    Schedule {
        instance: InstanceId,
        deploy: DeployId,
        node: NodeId,
        digest: String,
    },
    /// Replace an instance on a lost node by a new one on `to_node`.
    Reschedule {
        instance: InstanceId,
        replacement: InstanceId,
        deploy: DeployId,
        digest: String,
        from_node: NodeId,
        to_node: NodeId,
    },
    /// Stop an instance (SIGTERM, then SIGKILL after the shutdown delay).
    Stop { instance: InstanceId },
    /// All new instances are healthy and run the recorded digest.
    MarkLive { deploy: DeployId, digest: String },
    /// The deploy cannot complete; the previous live deploy keeps serving.
    FailDeploy { deploy: DeployId, reason: String },
    /// Some instances of a deploy found no node with room (recorded through
    /// the service's `decide`, which keeps repeats out of the log).
    ReportBlocked(PlacementBlocked),
}

impl Action {
    /// The fact recorded once the action is carried out. `MarkLive` and
    /// `FailDeploy` go through the service's `decide` in the real worker
    /// (which also deactivates the previous live deploy and starts the next
    /// queued one); this is the event at their core.
    pub fn event(&self) -> Event {
        match self {
            Action::Schedule {
                instance,
                deploy,
                node,
                digest,
            } => Event::InstanceScheduled(InstanceScheduled {
                instance: instance.clone(),
                deploy: deploy.clone(),
                node: node.clone(),
                digest: digest.clone(),
            }),
            Action::Reschedule {
                instance,
                replacement,
                from_node,
                to_node,
                ..
            } => Event::InstanceRescheduled(InstanceRescheduled {
                instance: instance.clone(),
                replacement: replacement.clone(),
                from_node: from_node.clone(),
                to_node: to_node.clone(),
            }),
            Action::Stop { instance } => Event::InstanceStopped(InstanceStopped {
                instance: instance.clone(),
            }),
            Action::MarkLive { deploy, digest } => Event::DeployLive(DeployLive {
                deploy: deploy.clone(),
                digest: digest.clone(),
            }),
            Action::FailDeploy { deploy, reason } => Event::DeployFailed(DeployFailed {
                deploy: deploy.clone(),
                status: DeployStatus::UpdateFailed,
                reason: reason.clone(),
            }),
            Action::ReportBlocked(b) => Event::PlacementBlocked(b.clone()),
        }
    }
}

/// What to do now, and when to look again even if nothing happens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

impl Plan {
    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// The deploy being rolled out now, if it is at the stage where its
/// instances start: running, phase `updating`, digest resolved.
pub fn rolling_out(state: &ServiceState) -> Option<&Deploy> {
    state.active_deploy().filter(|d| {
        d.status == DeployStatus::UpdateInProgress
            && d.phase == Some(DeployPhase::Updating)
            && d.digest().is_some()
    })
}

/// Decides what should change for one service. Pure: the same inputs give
/// the same plan (ids come from `ids` in order).
pub fn reconcile(
    state: &ServiceState,
    view: &ClusterView,
    now: DateTime<Utc>,
    ids: &mut dyn IdSource,
) -> Plan {
    let mut plan = Plan::default();
    let Some(cfg) = state.config.as_ref() else {
        return plan;
    };
    if state.status != ServiceStatus::Active || cfg.service_type == ServiceType::CronJob {
        // Suspended, deleted, or a cron job (whose runs are not instances).
        for i in state.instances.iter() {
            plan.actions.push(Action::Stop {
                instance: i.id.clone(),
            });
        }
        return plan;
    }
    let want = cfg.num_instances as usize;
    // The view reserves what other services' instances take; ours take
    // theirs wherever they are, stopping ones too until the node reports
    // the stop (the process holds its CPU and memory until then).
    let mut nodes = view.nodes.clone();
    for i in state.instances.iter() {
        reserve_at(&mut nodes, &i.node, &cfg.plan);
    }
    // A disk pins the service to its node once it has one.
    let pinned = cfg
        .disk
        .as_ref()
        .and_then(|d| Some((d.id.clone(), state.disk_node.clone()?)));
    if let Some((_, at)) = &pinned {
        nodes.retain(|n| n.id == *at);
    }
    let recreate = cfg.disk.is_some();
    let mut ctx = Planner {
        nodes,
        spread: Spread::new(
            &state
                .instances
                .iter()
                .filter(|i| view.holds(i))
                .map(|i| i.node.clone())
                .collect::<Vec<_>>(),
        ),
        size: cfg.plan.clone(),
        view,
        ids,
        plan,
        handled: BTreeSet::new(),
        recreate,
        pinned,
    };

    let live = state.live_deploy().filter(|d| d.digest().is_some());
    let rollout = rolling_out(state).filter(|d| Some(&d.id) != live.map(|l| &l.id));

    // The rollout first: it is what will serve, so it gets the room. Until
    // it ends the live deploy only keeps what it has (see the module doc).
    let rolled = rollout.map(|d| (d, ctx.group(state, d, want, None, true)));
    let restart = state.restart_requested_at.filter(|_| rollout.is_none());
    // Recreating, the live deploy's instance goes as soon as a rollout
    // starts (below, with the leftovers).
    let live = live.filter(|_| !(recreate && rollout.is_some()));
    let live_healthy = live.map_or(0, |d| {
        ctx.group(state, d, want, restart, rollout.is_none())
            .healthy
    });
    // A new instance that keeps exiting before it ever passed its check
    // will not come up by waiting out the window: the deploy fails now,
    // saying how it ended (a CI job waiting on the deploy learns in a
    // minute, not in fifteen).
    if let Some((d, Group { healthy, blocked })) = rolled {
        let crashing = state
            .instances
            .of_deploy(&d.id)
            .find(|i| !i.passed && i.exits >= EXITS_BEFORE_FAILING);
        if healthy >= want {
            if let Some(digest) = d.digest() {
                ctx.plan.actions.push(Action::MarkLive {
                    deploy: d.id.clone(),
                    digest: digest.to_owned(),
                });
            }
        } else if let Some(i) = crashing {
            let how = i.problem.as_deref().unwrap_or("exited");
            ctx.plan.actions.push(Action::FailDeploy {
                deploy: d.id.clone(),
                reason: format!(
                    "{}: exited {} times without passing its health check; the last time: {how}",
                    i.id, i.exits
                ),
            });
        } else if let Some(started) = d.update_started_at.or(d.started_at) {
            let window = TimeDelta::from_std(view.readiness_window).unwrap_or(TimeDelta::MAX);
            let deadline = started.checked_add_signed(window);
            match deadline {
                Some(deadline) if now >= deadline => {
                    let mut reason = format!(
                        "{healthy} of {want} new instances healthy within the readiness window"
                    );
                    if let Some(b) = &blocked {
                        reason.push_str(&format!("; {} not placed: {}", b.unplaced, b.reason));
                    }
                    // Why one of them is not: its failed check or its exit.
                    let why = state
                        .instances
                        .of_deploy(&d.id)
                        .filter(|i| !i.is_healthy())
                        .find_map(|i| Some((&i.id, i.problem.as_deref()?)));
                    if let Some((id, problem)) = why {
                        reason.push_str(&format!("; {id}: {problem}"));
                    }
                    ctx.plan.actions.push(Action::FailDeploy {
                        deploy: d.id.clone(),
                        reason,
                    });
                }
                Some(deadline) => {
                    let left = (deadline - now).to_std().unwrap_or(Duration::ZERO);
                    ctx.plan.requeue(left);
                }
                None => {}
            }
        }
    }

    // Everything else is left over from an older or failed deploy: it goes,
    // but a healthy one only once the live deploy serves in full.
    let serving = live.is_some() && live_healthy >= want;
    for i in state.instances.iter() {
        if ctx.handled.contains(&i.id) {
            continue;
        }
        if !i.is_healthy() || !ctx.view.holds(i) || serving || live.is_none() || recreate {
            ctx.stop(i);
        }
    }
    // A draining instance always goes, even if the plan wants it again (a
    // quick scale-down and up): the router no longer sends it traffic.
    for i in state.instances.iter() {
        let stopped = ctx
            .plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Stop { instance } if *instance == i.id));
        if i.draining_since.is_some() && !stopped {
            ctx.plan.actions.push(Action::Stop {
                instance: i.id.clone(),
            });
        }
    }
    ctx.plan
}

/// What [`Planner::group`] found about one deploy's instances.
struct Group {
    /// How many are healthy (before the plan is carried out).
    healthy: usize,
    /// Set when some found no room.
    blocked: Option<PlacementBlocked>,
}

/// The working state of one reconcile.
struct Planner<'a> {
    nodes: Vec<NodeCapacity>,
    spread: Spread,
    size: Size,
    view: &'a ClusterView,
    ids: &'a mut dyn IdSource,
    plan: Plan,
    /// Instances a rule has already decided about.
    handled: BTreeSet<InstanceId>,
    /// Old instances stop before new ones are placed (a service with a
    /// disk).
    recreate: bool,
    /// The service's disk and the node it is on, which `nodes` is cut to.
    pinned: Option<(DiskId, NodeId)>,
}

impl Planner<'_> {
    fn stop(&mut self, i: &Instance) {
        self.handled.insert(i.id.clone());
        self.plan.actions.push(Action::Stop {
            instance: i.id.clone(),
        });
    }

    fn place(&mut self) -> Option<NodeId> {
        let node = place_one(&mut self.nodes, &self.size, &mut self.spread);
        if node.is_none() {
            self.plan.requeue(PLACEMENT_RETRY);
        }
        node
    }

    /// Brings deploy `d` to `want` instances of its digest, placed after
    /// `restart` if given; without `grow` it only moves instances off lost
    /// nodes and starts none for missing ones. Reports instances that found
    /// no room.
    fn group(
        &mut self,
        state: &ServiceState,
        d: &Deploy,
        want: usize,
        restart: Option<DateTime<Utc>>,
        grow: bool,
    ) -> Group {
        let Some(digest) = d.digest() else {
            return Group {
                healthy: 0,
                blocked: None,
            };
        };
        let mine: Vec<&Instance> = state.instances.of_deploy(&d.id).collect();
        for i in &mine {
            self.handled.insert(i.id.clone());
        }
        let (right, wrong): (Vec<&Instance>, Vec<&Instance>) = mine.into_iter().partition(|i| {
            let stale = matches!((i.scheduled_at, restart), (Some(t), Some(r)) if t < r);
            i.digest == digest && !stale
        });
        let (mut up, down): (Vec<&Instance>, Vec<&Instance>) =
            right.into_iter().partition(|i| self.view.holds(i));

        // Extras go, unhealthy and then newest first, so healthy ones stay.
        up.sort_by(|a, b| b.is_healthy().cmp(&a.is_healthy()).then(a.id.cmp(&b.id)));
        for extra in up.iter().skip(want) {
            self.stop(extra);
        }
        up.truncate(want);
        let healthy = up.iter().filter(|i| i.is_healthy()).count();
        let mut count = up.len();
        // Recreating, nothing new is placed while any instance of the
        // service is left (what is to be replaced goes below, at once).
        let grow = grow && !(self.recreate && up.len() < state.instances.len());

        // Instances on lost nodes move while they are still needed.
        let mut unplaced = 0;
        for lost in down {
            if count < want {
                if let Some(to) = self.place() {
                    let replacement = self.ids.next_instance();
                    self.plan.actions.push(Action::Reschedule {
                        instance: lost.id.clone(),
                        replacement,
                        deploy: d.id.clone(),
                        digest: digest.to_owned(),
                        from_node: lost.node.clone(),
                        to_node: to,
                    });
                    count += 1;
                } else {
                    // Not placeable: it stays recorded until a node has room.
                    unplaced += 1;
                }
            } else {
                self.stop(lost);
            }
        }
        while grow && count + unplaced < want {
            let Some(node) = self.place() else {
                unplaced = want - count;
                break;
            };
            let instance = self.ids.next_instance();
            self.plan.actions.push(Action::Schedule {
                instance,
                deploy: d.id.clone(),
                node,
                digest: digest.to_owned(),
            });
            count += 1;
        }

        // After live, every instance runs exactly the recorded digest; and a
        // restart replaces every instance placed before it, the same way.
        for bad in wrong {
            if self.recreate || !bad.is_healthy() || !self.view.holds(bad) || healthy >= want {
                self.stop(bad);
            }
        }
        let blocked = (unplaced > 0).then(|| {
            let mut b = shortfall(&self.nodes, &self.size, &d.id, unplaced);
            if let Some((disk, at)) = &self.pinned {
                let lost = self.nodes.iter().all(|n| n.lost);
                b.reason = match lost {
                    true => format!(
                        "its disk {disk} is on {at}, which is lost (the instance runs only there)"
                    ),
                    false => format!(
                        "its disk {disk} is on {at}, which has no room: {}",
                        b.reason
                    ),
                };
            }
            b
        });
        if let Some(b) = &blocked {
            self.plan.actions.push(Action::ReportBlocked(b.clone()));
        }
        Group { healthy, blocked }
    }
}

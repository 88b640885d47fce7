//! The cron component's read model: every cron job's service state and the
//! latest schedule time already handled for it, plus every node's capacity
//! (for placing runs). Folded from the whole log by a `ProjectionRunner`;
//! services of other types are not kept, nor a job's ended deploys.
//!
//! "Handled" means a run was started or a skip recorded for that due time:
//! a scheduled start carries `cron-schedule:<time>` as its causation id
//! (the `cron_job_run_started` event itself has no schedule time), a skip
//! names it in `scheduled_for`.

use std::collections::BTreeMap;

use berth_domain::node::{self, NodeState};
use berth_domain::scheduler::NodeCapacity;
use berth_domain::service::{self, ServiceState};
use berth_eventlog::projection::Projection;
use berth_schemas::ids::{CronRunId, JobId, NodeId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Causation id prefix of scheduled starts.
pub const SCHEDULE_CAUSE: &str = "cron-schedule:";

/// Ended deploys a job's state holds beside its running, queued and live
/// ones: none. A tick reads the live deploy, the schedule and the run in
/// progress; what the service's rules decide is decided on the store's
/// state, so the view need not hold the hundred recent deploys the rules
/// keep (at 10,000 cron jobs that was most of the view).
const KEPT_SERVED: usize = 0;

/// One cron job as the component sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Job {
    pub state: ServiceState,
    /// The latest due time a run was started or skipped for.
    pub last_scheduled: Option<DateTime<Utc>>,
}

/// Every cron job and node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CronView {
    pub jobs: BTreeMap<ServiceId, Job>,
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// One-off jobs of any service given to a node and not ended: where
    /// each went (at most a service's 16 active jobs each).
    #[serde(default)]
    pub placed_jobs: BTreeMap<ServiceId, BTreeMap<JobId, NodeId>>,
    /// One-off jobs of any service created and not yet given to a node
    /// (nor ended): when each was created (at most a service's 16 active
    /// jobs each).
    #[serde(default)]
    pub pending_jobs: BTreeMap<ServiceId, BTreeMap<JobId, DateTime<Utc>>>,
}

/// A job or cron run whose dispatch is overdue: see [`CronView::stuck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stuck {
    Job { service: ServiceId, job: JobId },
    Run { service: ServiceId, run: CronRunId },
}

impl CronView {
    /// Registered nodes as placement sees them. Usage by other services'
    /// instances is not tracked here: runs go to the node with the most
    /// capacity that fits the plan.
    pub fn capacities(&self) -> Vec<NodeCapacity> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| {
                n.registered.as_ref().map(|c| NodeCapacity {
                    id: id.clone(),
                    cpu_millis: c.cpu_millis,
                    memory_mib: c.memory_mib,
                    used_cpu: 0,
                    used_mem: 0,
                    lost: n.lost,
                })
            })
            .collect()
    }

    /// Nodes that are registered and not lost.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.registered.is_some() && !n.lost)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl CronView {
    /// Keeps [`CronView::placed_jobs`] and [`CronView::pending_jobs`] as
    /// `env` of `service` says.
    fn follow_jobs(&mut self, service: &ServiceId, env: &Envelope) {
        let dispatched = |view: &mut Self, job: &JobId| {
            if let Some(jobs) = view.pending_jobs.get_mut(service) {
                jobs.remove(job);
                if jobs.is_empty() {
                    view.pending_jobs.remove(service);
                }
            }
        };
        match &env.event {
            Event::JobCreated(e) => {
                self.pending_jobs
                    .entry(service.clone())
                    .or_default()
                    .insert(e.job.clone(), env.time);
            }
            Event::JobStarted(e) => dispatched(self, &e.job),
            Event::JobPlaced(e) => {
                dispatched(self, &e.job);
                self.placed_jobs
                    .entry(service.clone())
                    .or_default()
                    .insert(e.job.clone(), e.node.clone());
            }
            Event::JobEnded(e) => {
                dispatched(self, &e.job);
                if let Some(jobs) = self.placed_jobs.get_mut(service) {
                    jobs.remove(&e.job);
                    if jobs.is_empty() {
                        self.placed_jobs.remove(service);
                    }
                }
            }
            Event::ServiceDeleted(_) => {
                self.placed_jobs.remove(service);
                self.pending_jobs.remove(service);
            }
            _ => {}
        }
    }

    /// Jobs pending and cron runs given to no node since before `before`:
    /// their dispatch came to nothing (or is still being retried).
    pub fn stuck(&self, before: DateTime<Utc>) -> Vec<Stuck> {
        let jobs = self.pending_jobs.iter().flat_map(|(service, jobs)| {
            jobs.iter()
                .filter(|(_, created)| **created < before)
                .map(|(job, _)| Stuck::Job {
                    service: service.clone(),
                    job: job.clone(),
                })
        });
        let runs = self.jobs.iter().filter_map(|(service, j)| {
            let run = j.state.cron.active.as_ref()?;
            (run.node.is_none() && run.started_at.is_some_and(|t| t < before)).then(|| Stuck::Run {
                service: service.clone(),
                run: run.id.clone(),
            })
        });
        jobs.chain(runs).collect()
    }

    /// Whether `node` was declared lost (and has not recovered).
    pub fn is_lost(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|n| n.lost)
    }
}

fn scheduled_time(env: &Envelope) -> Option<DateTime<Utc>> {
    let cause = env.causation_id.as_deref()?.strip_prefix(SCHEDULE_CAUSE)?;
    DateTime::parse_from_rfc3339(cause)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Projection for CronView {
    type Snapshot = CronView;

    fn apply(&mut self, _stream_seq: u64, env: &Envelope) {
        match &env.aggregate {
            AggregateId::Service(id) => {
                self.follow_jobs(id, env);
                if let Event::ServiceCreated(c) = &env.event {
                    if c.service_type == ServiceType::CronJob {
                        self.jobs.entry(id.clone()).or_insert_with(|| Job {
                            state: ServiceState::keeping_served(KEPT_SERVED),
                            last_scheduled: None,
                        });
                    }
                }
                let Some(job) = self.jobs.get_mut(id) else {
                    return;
                };
                job.state = service::fold(std::mem::take(&mut job.state), env);
                let handled = match &env.event {
                    Event::CronJobRunStarted(_) => scheduled_time(env),
                    Event::CronJobRunSkipped(e) => Some(e.scheduled_for),
                    _ => None,
                };
                if handled.is_some() && handled > job.last_scheduled {
                    job.last_scheduled = handled;
                }
                if matches!(env.event, Event::ServiceDeleted(_)) {
                    self.jobs.remove(id);
                }
            }
            AggregateId::Node(id) => {
                let n = self.nodes.entry(id.clone()).or_default();
                *n = node::fold(std::mem::take(n), env);
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> CronView {
        self.clone()
    }

    fn snapshot_ref(&self) -> Option<&CronView> {
        Some(self)
    }

    fn restore(&mut self, mut snapshot: CronView) {
        // Read back holding every recent deploy: down to what ticks need.
        for job in snapshot.jobs.values_mut() {
            job.state.keep_only_served(KEPT_SERVED);
        }
        *self = snapshot;
    }
}

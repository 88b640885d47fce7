//! Where a command run beside a service's program (`berth exec`) or a
//! terminal (`berth shell`) goes: one of the service's running instances,
//! or the container of one of its running one-off jobs, or of its cron
//! job's active run — with the node that runs it.

use berth_schemas::ids::{CronRunId, InstanceId, JobId, NodeId};

use super::instances::InstancePhase;
use super::{Job, JobStatus, ServiceState};
use crate::DomainError;

/// A container a command can be sent to, and its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance: InstanceId,
    pub node: NodeId,
}

/// The container (instance) a cron run runs as: the run id's random part
/// under the instance prefix, so anyone holding the run id can stop its
/// container (as a job's, [`job_instance`](super::job_instance)).
pub fn run_instance(run: &CronRunId) -> InstanceId {
    InstanceId::from_bits(run.bits())
}

/// Whether an instance in `phase` has a process to run a command beside.
fn has_process(phase: InstancePhase) -> bool {
    matches!(
        phase,
        InstancePhase::Running | InstancePhase::Healthy | InstancePhase::Unhealthy
    )
}

impl ServiceState {
    /// The container `named` names — an instance of the service, a
    /// running job's or the active cron run's — when it runs; without a
    /// name, the best running instance (of the live deploy, not draining,
    /// healthy first), or for a cron job its active run.
    pub fn command_target(&self, named: Option<&InstanceId>) -> Result<Target, DomainError> {
        let Some(id) = named else {
            return self.best_target();
        };
        if let Some(found) = self.instances.get(id) {
            if !has_process(found.phase) {
                return Err(DomainError::Conflict(format!(
                    "instance {id} is not running (it is {:?})",
                    found.phase
                )));
            }
            return Ok(Target {
                instance: id.clone(),
                node: found.node.clone(),
            });
        }
        if let Some(job) = self.job_of(id) {
            return match (&job.node, job.status) {
                (Some(node), JobStatus::Running) => Ok(Target {
                    instance: id.clone(),
                    node: node.clone(),
                }),
                (_, status) => Err(DomainError::Conflict(format!(
                    "job {} is not running (it is {})",
                    job.id,
                    status.as_str()
                ))),
            };
        }
        if let Some(run) = self.active_run(id) {
            return run;
        }
        Err(DomainError::not_found("instance", id.as_str()))
    }

    /// The node of container `instance` of the service (an instance, a
    /// job's, the active cron run's), wherever it is in its life.
    pub fn container_node(&self, instance: &InstanceId) -> Option<NodeId> {
        if let Some(i) = self.instances.get(instance) {
            return Some(i.node.clone());
        }
        if let Some(job) = self.job_of(instance) {
            return job.node.clone();
        }
        self.active_run(instance)?.ok().map(|t| t.node)
    }

    /// The job whose container `instance` is ([`job_instance`](super::job_instance) the other
    /// way), if the service still holds it.
    fn job_of(&self, instance: &InstanceId) -> Option<&Job> {
        self.jobs.get(&JobId::from_bits(instance.bits()))
    }

    /// The active cron run, if `instance` is its container.
    fn active_run(&self, instance: &InstanceId) -> Option<Result<Target, DomainError>> {
        let run = self.cron.active.as_ref()?;
        if run_instance(&run.id) != *instance {
            return None;
        }
        Some(match &run.node {
            Some(node) => Ok(Target {
                instance: instance.clone(),
                node: node.clone(),
            }),
            None => Err(DomainError::Conflict(format!(
                "cron run {} is not running yet (no node has it)",
                run.id
            ))),
        })
    }

    fn best_target(&self) -> Result<Target, DomainError> {
        let live = self.live_deploy().map(|d| &d.id);
        let best = self
            .instances
            .iter()
            .filter(|i| has_process(i.phase))
            .min_by_key(|i| {
                (
                    live != Some(&i.deploy),
                    i.draining_since.is_some(),
                    i.phase != InstancePhase::Healthy,
                    i.id.to_string(),
                )
            });
        if let Some(i) = best {
            return Ok(Target {
                instance: i.id.clone(),
                node: i.node.clone(),
            });
        }
        if let Some(run) = self.cron.active.as_ref() {
            if let Some(Ok(t)) = self.active_run(&run_instance(&run.id)) {
                return Ok(t);
            }
        }
        Err(DomainError::Conflict(
            "the service has no running instance to run a command in".into(),
        ))
    }
}

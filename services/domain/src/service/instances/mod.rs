//! The service's instances as the scheduler needs them: which deploy each
//! belongs to, its node, the digest it runs and its phase, folded from the
//! instance facts nodes report ([`crate::node::report`]) and the placement
//! facts the scheduler decides ([`placement`]). Stopped and
//! rescheduled-away instances are dropped, so the map holds only what
//! occupies a node now.

pub(in crate::service) mod placement;

use std::collections::BTreeMap;

use berth_schemas::events::{InstanceExited, InstancePortDetected};
use berth_schemas::ids::{DeployId, InstanceId, NodeId};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstancePhase {
    /// Placed on a node, not yet running.
    Scheduled,
    /// Process running, health not yet known (or restarted in place).
    Running,
    /// Passes its health check: it may serve traffic.
    Healthy,
    /// Fails its health check.
    Unhealthy,
    /// Process exited; the node agent restarts it in place.
    Exited,
    /// Its node was declared lost.
    Lost,
}

/// One instance of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: InstanceId,
    pub deploy: DeployId,
    pub node: NodeId,
    /// The digest it runs: as scheduled, then as the node reports it started.
    pub digest: String,
    pub phase: InstancePhase,
    /// When it was placed (the envelope's time), so a restart can tell the
    /// instances that predate it.
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Since when it is out of routing, waiting to be stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<DateTime<Utc>>,
    /// Where it is reached (`host:port`), once its node started it with a
    /// published port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// What last went wrong with it since it last passed its health check
    /// (the failed check, or how its process ended), at most
    /// [`PROBLEM_MAX`] bytes: what a deploy that never went live says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// How often its process has ended by itself since it was placed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exits: u32,
    /// Whether it has passed its health check at least once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passed: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The longest [`Instance::problem`] kept, in bytes.
pub const PROBLEM_MAX: usize = 300;

/// What an instance or run that went over its memory limit (`limit_mib`,
/// when known) is said to have done.
pub fn out_of_memory(limit_mib: Option<u32>) -> String {
    match limit_mib {
        Some(mib) => {
            format!("ran out of memory: killed for going over its memory limit of {mib} MiB")
        }
        None => "ran out of memory: killed for going over its memory limit".to_owned(),
    }
}

/// What an instance or run killed for what it wrote to its filesystem,
/// `mib` MiB, is said to have done: more than the node's limit of
/// `limit` MiB per instance, else the most of the node's instances when
/// the node's disk ran low.
pub fn evicted_for_disk(mib: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!(
            "killed for writing more than an instance may here: it had written {mib} MiB to its filesystem, over the node's limit of {limit} MiB; what it wrote is gone"
        ),
        None => format!(
            "killed for filling the node's disk: it had written {mib} MiB to its filesystem, the most of the node's instances, when the node's disk ran low; what it wrote is gone"
        ),
    }
}

/// What a service's instance whose program ended with status 0 is told:
/// an instance ends with its program, whatever its status.
pub const FINISHED: &str = "a service's program must keep running: one that finishes, or puts itself in the background as a daemon, ends its instance (run it in the foreground)";

/// How a service instance's process ended, in words.
pub fn exit_message(e: &InstanceExited) -> String {
    let said = run_exit_message(e);
    let finished =
        e.exit_code == Some(0) && !e.restarted && !e.oom_killed && e.disk_written_mib.is_none();
    if finished {
        format!("{said}: {FINISHED}")
    } else {
        said
    }
}

/// How a process ended, in words, as a one-off run (a job, a cron run, a
/// pre-deploy command) is told: [`exit_message`] without what only a
/// service's instance is told.
pub fn run_exit_message(e: &InstanceExited) -> String {
    if let Some(mib) = e.disk_written_mib {
        return format!(
            "{}, and it starts again from the image's files",
            evicted_for_disk(mib, e.disk_limit_mib)
        );
    }
    if e.oom_killed {
        return out_of_memory(e.memory_limit_mib);
    }
    let how = match (e.exit_code, e.signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "exited; how is not known (it ended while its node was down)".to_owned(),
    };
    if e.restarted {
        format!("restarted for failing its health checks ({how})")
    } else if let Some(why) = &e.cannot_run {
        format!("{how}: {why}")
    } else {
        how
    }
}

/// What berth did on finding an instance serving elsewhere than expected,
/// in words (its logs and its timeline say the same).
pub fn port_detected_message(e: &InstancePortDetected) -> String {
    format!(
        "detected service running on port {port}: served there, as the service sets no PORT (berth expected {expected}; set PORT={port} to say so)",
        port = e.port,
        expected = e.expected,
    )
}

/// `text` cut to at most [`PROBLEM_MAX`] bytes, on a character boundary.
fn bounded(text: &str) -> String {
    berth_schemas::cut(text, PROBLEM_MAX).to_owned()
}

impl Instance {
    /// True when it passes its health check.
    pub fn is_healthy(&self) -> bool {
        self.phase == InstancePhase::Healthy
    }

    /// The port of its address: where it serves, reached at its own.
    pub fn port(&self) -> Option<u16> {
        self.addr.as_deref()?.rsplit_once(':')?.1.parse().ok()
    }
}

/// The instances of one service, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Instances(BTreeMap<InstanceId, Instance>);

impl Instances {
    /// One instance by id.
    pub fn get(&self, id: &InstanceId) -> Option<&Instance> {
        self.0.get(id)
    }

    /// Every instance, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.0.values()
    }

    /// How many instances exist.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instances of one deploy.
    pub fn of_deploy<'a>(&'a self, deploy: &'a DeployId) -> impl Iterator<Item = &'a Instance> {
        self.0.values().filter(move |i| &i.deploy == deploy)
    }

    /// How many instances of `deploy` are healthy.
    pub fn healthy_count(&self, deploy: &DeployId) -> usize {
        self.of_deploy(deploy).filter(|i| i.is_healthy()).count()
    }

    /// The instances placed on `node`.
    pub fn on_node<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = &'a Instance> {
        self.0.values().filter(move |i| &i.node == node)
    }

    /// Records that instance `id`, reached at its own address, serves on
    /// `port` (found there): its address keeps its host.
    pub(crate) fn moved_to_port(&mut self, id: &InstanceId, port: u16) {
        if let Some(i) = self.0.get_mut(id) {
            i.addr = i
                .addr
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .map(|(host, _)| format!("{host}:{port}"));
        }
    }

    fn set_phase(&mut self, id: &InstanceId, phase: InstancePhase) {
        if let Some(i) = self.0.get_mut(id) {
            i.phase = phase;
        }
    }

    fn set_problem(&mut self, id: &InstanceId, problem: Option<String>) {
        if let Some(i) = self.0.get_mut(id) {
            i.problem = problem;
        }
    }

    /// Folds one event recorded at `time`; any other event leaves the
    /// instances unchanged.
    pub fn apply(&mut self, event: &Event, time: Option<DateTime<Utc>>) {
        match event {
            Event::InstanceScheduled(e) => {
                self.0
                    .entry(e.instance.clone())
                    .or_insert_with(|| Instance {
                        id: e.instance.clone(),
                        deploy: e.deploy.clone(),
                        node: e.node.clone(),
                        digest: e.digest.clone(),
                        phase: InstancePhase::Scheduled,
                        scheduled_at: time,
                        draining_since: None,
                        addr: None,
                        problem: None,
                        exits: 0,
                        passed: false,
                    });
            }
            Event::InstanceDraining(e) => {
                if let Some(i) = self.0.get_mut(&e.instance) {
                    // Without a recorded time (a bare apply) it counts from
                    // the epoch: already drained.
                    i.draining_since
                        .get_or_insert(time.unwrap_or(DateTime::<Utc>::UNIX_EPOCH));
                }
            }
            Event::InstanceStarted(e) => {
                if let Some(i) = self.0.get_mut(&e.instance) {
                    // What the node says runs is what counts for digest checks.
                    i.node = e.node.clone();
                    i.digest = e.digest.clone();
                    // A first start recorded late (a node killed before it
                    // recorded it; its next process records it when the
                    // start is delivered again, after it already probed the
                    // adopted instance) says nothing newer than the health
                    // or exit facts of the same run before it.
                    if !matches!(
                        i.phase,
                        InstancePhase::Healthy | InstancePhase::Unhealthy | InstancePhase::Exited
                    ) {
                        i.phase = InstancePhase::Running;
                    }
                    i.addr = e.addr.clone();
                }
            }
            Event::InstanceHealthy(e) => {
                self.set_phase(&e.instance, InstancePhase::Healthy);
                self.set_problem(&e.instance, None);
                if let Some(i) = self.0.get_mut(&e.instance) {
                    i.passed = true;
                }
            }
            Event::InstanceUnhealthy(e) => {
                self.set_phase(&e.instance, InstancePhase::Unhealthy);
                self.set_problem(&e.instance, Some(bounded(&e.reason)));
            }
            Event::InstanceExited(e) => {
                self.set_phase(&e.instance, InstancePhase::Exited);
                self.set_problem(&e.instance, Some(exit_message(e)));
                if let Some(i) = self.0.get_mut(&e.instance) {
                    i.exits = i.exits.saturating_add(1);
                }
            }
            Event::ServerRestarted(e) => self.set_phase(&e.instance, InstancePhase::Running),
            Event::InstanceStopped(e) => {
                self.0.remove(&e.instance);
            }
            Event::ServerFailed(e) => {
                for id in &e.instances {
                    if self.0.get(id).is_some_and(|i| i.node == e.node) {
                        self.set_phase(id, InstancePhase::Lost);
                    }
                }
            }
            Event::InstanceRescheduled(e) => {
                // The replacement inherits deploy and digest; a later
                // `instance_scheduled` for it is then a no-op.
                if let Some(old) = self.0.remove(&e.instance) {
                    self.0
                        .entry(e.replacement.clone())
                        .or_insert_with(|| Instance {
                            id: e.replacement.clone(),
                            deploy: old.deploy,
                            node: e.to_node.clone(),
                            digest: old.digest,
                            phase: InstancePhase::Scheduled,
                            scheduled_at: time,
                            draining_since: None,
                            addr: None,
                            problem: None,
                            exits: 0,
                            passed: false,
                        });
                }
            }
            _ => {}
        }
    }
}

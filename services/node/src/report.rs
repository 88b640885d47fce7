//! What the node saw, onto the service's subject: every fact is appended
//! with `Store::execute` (load → `berth_domain::node::report` → append with
//! the expected sequence), correlated with the deploy, under an
//! idempotency key derived from the instance and the fact, so a redelivered
//! work item or a restarted node never records the same fact twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_agent::logs::LogSink;
use berth_agent::{AgentEvent, ExitStatus, StopOutcome};
use berth_domain::{service, DomainError};
use berth_eventlog::{EventStore, ExecuteError, Stamp};
use berth_schemas::events::{InstanceExited, InstanceStarted, InstanceStopped, ServerRestarted};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::{Actor, AggregateId, Event};
use tokio::sync::mpsc;

use crate::health::Check;
use tokio_util::sync::CancellationToken;

/// Tries per agent event before its fact is given up (logged).
const FORWARD_ATTEMPTS: u32 = 8;

/// Appends facts; remembers which deploy each instance belongs to (on
/// disk, so facts about adopted instances stay correlated after a restart).
#[derive(Debug, Clone)]
pub struct Reporter {
    pub(crate) store: EventStore,
    pub(crate) node: NodeId,
    dir: PathBuf,
    deploys: Arc<Mutex<HashMap<InstanceId, Placement>>>,
}

/// An instance's service, deploy and digest, kept in `<dir>/<instance>.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub service: ServiceId,
    pub deploy: DeployId,
    pub digest: String,
    /// `ip:port` the instance listens on (web and private services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// `<node address>:<host port>` where other nodes reach it (a private
    /// service's instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// The host port allocated to it on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// How it is health-checked (`None`: not at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Its port is berth's choice (the service sets no `PORT`): while it
    /// starts, the one other port it listens on is taken as its port (a
    /// private instance's lowest, when it listens on several). Cleared
    /// once taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detect: bool,
    /// A private service's instance: reached by its owner's instances,
    /// on any port it listens on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// How long a stopped instance's `.done` marker is kept by default
/// ([`crate::NodeOptions::done_kept`]): a work item to start an instance
/// enqueued longer ago than this is refused ([`older_than`]), so no
/// item can still need the marker after it.
pub const DONE_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Whether something made at `at` is older than `kept` at `now` (a clock
/// behind `at`: not old). A start enqueued that long ago is not run (the
/// marker that would have refused it may be gone), and a marker that old
/// is removed.
pub fn older_than(
    at: std::time::SystemTime,
    now: std::time::SystemTime,
    kept: std::time::Duration,
) -> bool {
    now.duration_since(at).is_ok_and(|age| age > kept)
}

/// [`Reporter::prune_done`] on the markers in `dir`.
fn prune_done_in(
    dir: &std::path::Path,
    kept: std::time::Duration,
    running: &std::collections::HashSet<InstanceId>,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let marker = name
            .strip_suffix(".done")
            .or_else(|| name.strip_suffix(".started"));
        let Some(instance) = marker.and_then(|i| i.parse().ok()) else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| older_than(at, now, kept));
        if old && !running.contains(&instance) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl Reporter {
    /// A reporter keeping placements under `dir`; those an earlier process
    /// left are read once, here (the node's ports and images in use are
    /// answered from memory after).
    pub fn new(store: EventStore, node: NodeId, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let reporter = Self {
            store,
            node,
            dir,
            deploys: Arc::default(),
        };
        let Ok(entries) = std::fs::read_dir(&reporter.dir) else {
            return Ok(reporter);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(instance) = name.strip_suffix(".json").and_then(|i| i.parse().ok()) {
                // Read into memory; an unreadable one counts for nothing.
                let _ = reporter.placement(&instance);
            }
        }
        Ok(reporter)
    }

    /// Records where `instance` belongs before it starts.
    pub fn place(&self, instance: &InstanceId, p: Placement) -> std::io::Result<()> {
        let path = self.dir.join(format!("{instance}.json"));
        let tmp = self.dir.join(format!("{instance}.json.tmp"));
        let bytes = serde_json::to_vec(&p).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        self.lock().insert(instance.clone(), p);
        Ok(())
    }

    /// Where `instance` belongs, if this node placed it.
    pub fn placement(&self, instance: &InstanceId) -> Option<Placement> {
        if let Some(p) = self.lock().get(instance) {
            return Some(p.clone());
        }
        let bytes = std::fs::read(self.dir.join(format!("{instance}.json"))).ok()?;
        let p: Placement = serde_json::from_slice(&bytes).ok()?;
        self.lock().insert(instance.clone(), p.clone());
        Some(p)
    }

    /// Ports allocated to instances placed on this node and not stopped
    /// (adopted ones included), from memory: a web instance's start asks,
    /// and listing the directory each time cost a read per instance ever
    /// stopped here.
    pub fn ports_in_use(&self) -> std::collections::HashSet<u16> {
        self.lock().values().filter_map(|p| p.port).collect()
    }

    /// Digests of the instances placed here and not stopped.
    pub fn placed_digests(&self) -> Vec<String> {
        self.lock().values().map(|p| p.digest.clone()).collect()
    }

    /// Instances with a placement (started here, not stopped), from
    /// memory: those on disk are read once, at [`Reporter::new`].
    pub fn placed(&self) -> Vec<InstanceId> {
        self.lock().keys().cloned().collect()
    }

    /// Marks `instance` as ended for good (stopped, or a one-off that ran),
    /// so a late redelivery of its work item does not run it again.
    pub fn mark_done(&self, instance: &InstanceId) -> std::io::Result<()> {
        std::fs::write(self.dir.join(format!("{instance}.done")), b"")
    }

    /// Whether `instance` ended for good on this node.
    pub fn is_done(&self, instance: &InstanceId) -> bool {
        self.dir.join(format!("{instance}.done")).exists()
    }

    /// Marks that the one-off `instance` is being started here: a later
    /// delivery of its work that finds it marked and not running knows the
    /// node's restart ended it. Removed with the `.done` markers.
    pub fn mark_started(&self, instance: &InstanceId) -> std::io::Result<()> {
        std::fs::write(self.dir.join(format!("{instance}.started")), b"")
    }

    /// Whether the one-off `instance` was started here ([`Reporter::mark_started`]).
    pub fn was_started(&self, instance: &InstanceId) -> bool {
        self.dir.join(format!("{instance}.started")).exists()
    }

    /// Removes the `.done` (and one-offs' `.started`) markers older than `kept` (one per instance
    /// ever stopped here: without this they grow with the node's history),
    /// except those of instances in `running` (a stop begun before a
    /// restart is resumed by its marker). How many went.
    pub fn prune_done(
        &self,
        kept: std::time::Duration,
        running: &std::collections::HashSet<InstanceId>,
    ) -> usize {
        prune_done_in(&self.dir, kept, running)
    }

    fn forget(&self, instance: &InstanceId) {
        if let Err(e) = self.mark_done(instance) {
            tracing::warn!(instance.id = %instance, error = %e, "cannot record the stop");
        }
        self.lock().remove(instance);
        let _ = std::fs::remove_file(self.dir.join(format!("{instance}.json")));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Placement>> {
        self.deploys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `e` as appended by this node, correlated with the deploy it names,
    /// else with `deploy` if any.
    /// Appends `fact` on `service`'s subject, once per `key`.
    pub async fn fact(
        &self,
        service: &ServiceId,
        deploy: Option<&DeployId>,
        fact: Event,
        key: &str,
    ) -> Result<(), ExecuteError<DomainError>> {
        let command = service::Command::RecordInstanceFact(Box::new(fact));
        self.decide(service, deploy, command, key).await
    }

    /// Runs a service command (a fact with rules attached: pulled, pull
    /// failed, pre-deploy or cron run ended) through the service's decide,
    /// once per `key`.
    pub async fn decide(
        &self,
        service: &ServiceId,
        deploy: Option<&DeployId>,
        command: service::Command,
        key: &str,
    ) -> Result<(), ExecuteError<DomainError>> {
        // Events that name no deploy belong to the work's.
        let stamp = Stamp::of_deploy(Actor::system("node"), deploy.cloned())
            .caused_by(format!("node:{}", self.node));
        self.store
            .execute::<service::Service>(
                &AggregateId::Service(service.clone()),
                key,
                &stamp,
                command,
            )
            .await
            .map(|_| ())
    }

    /// berth's own line about an instance among its output in the
    /// service's logs (`==> Exited with status 1`). Published on the
    /// connection the agent publishes the instance's output on, so it
    /// follows every line read before it.
    pub async fn say(&self, service: &ServiceId, instance: &InstanceId, what: &str) {
        let sink = LogSink {
            client: self.store.client().clone(),
            subject: self.store.subjects().logs(service),
            service: service.clone(),
            instance: instance.clone(),
        };
        sink.say(what).await;
    }

    /// How an instance's process ended — by itself, or stopped on request
    /// — said in its logs: the agent reports either once the output before
    /// it is published.
    pub async fn say_exit(&self, e: &AgentEvent) {
        match e {
            AgentEvent::Exited { service, .. } => {
                if let Some(fact) = exited_fact(e) {
                    // Only a service's instances have a placement.
                    let what = match self.placement(&fact.instance) {
                        Some(_) => service::instances::exit_message(&fact),
                        None => service::instances::run_exit_message(&fact),
                    };
                    self.say(service, &fact.instance, &what).await;
                }
            }
            AgentEvent::Stopped {
                service,
                instance,
                outcome,
            } => {
                self.say(service, instance, &stop_message(instance, outcome))
                    .await
            }
            _ => {}
        }
    }

    /// Turns the agent's events into service events until `shutdown`;
    /// `done` is told of each once it is recorded (or given up on).
    pub async fn forward(
        self,
        mut events: mpsc::UnboundedReceiver<AgentEvent>,
        shutdown: CancellationToken,
        done: impl Fn(&AgentEvent) + Send + 'static,
    ) {
        loop {
            let e = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => match e { Some(e) => e, None => return },
            };
            // Retried with the same idempotency key, so a retry after an
            // append of unknown outcome cannot record the fact twice.
            let mut delay = std::time::Duration::from_millis(200);
            for attempt in 1..=FORWARD_ATTEMPTS {
                match self.forward_one(&e).await {
                    Ok(()) => break,
                    Err(err) if err.is_retryable() && attempt < FORWARD_ATTEMPTS => {
                        tracing::warn!(error = %err, attempt, "recording an agent event failed, retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(err) => {
                        tracing::error!(error = %err, event = ?e, "recording an agent event failed; the fact is lost");
                        break;
                    }
                }
            }
            done(&e);
        }
    }

    async fn forward_one(&self, e: &AgentEvent) -> Result<(), ExecuteError<DomainError>> {
        let (service, instance, fact, key) = match e {
            AgentEvent::Started {
                service,
                instance,
                restarts,
                ..
            } if *restarts > 0 => (
                service,
                instance,
                Event::ServerRestarted(ServerRestarted {
                    instance: instance.clone(),
                    attempt: *restarts,
                }),
                format!("{instance}:restarted:{restarts}"),
            ),
            AgentEvent::Exited {
                service,
                instance,
                at,
                ..
            } => {
                let Some(fact) = exited_fact(e) else {
                    return Ok(());
                };
                let key = format!("{instance}:exited:{}", at.timestamp_micros());
                (service, instance, Event::InstanceExited(fact), key)
            }
            AgentEvent::Stopped {
                service, instance, ..
            } => {
                let Some(p) = self.placement(instance) else {
                    return Ok(());
                };
                let fact = Event::InstanceStopped(InstanceStopped {
                    instance: instance.clone(),
                });
                let key = format!("{instance}:stopped");
                self.fact(service, Some(&p.deploy), fact, &key).await?;
                self.forget(instance);
                return Ok(());
            }
            _ => return Ok(()),
        };
        // Only service instances this node placed have a placement; one-off
        // runs report their outcome through their own work item.
        let Some(p) = self.placement(instance) else {
            return Ok(());
        };
        self.fact(service, Some(&p.deploy), fact, &key).await
    }

    /// `InstanceStarted` for a first start (restarts are `ServerRestarted`),
    /// with the address it listens on.
    pub async fn started(
        &self,
        instance: &InstanceId,
        p: &Placement,
    ) -> Result<(), ExecuteError<DomainError>> {
        let fact = Event::InstanceStarted(InstanceStarted {
            instance: instance.clone(),
            node: self.node.clone(),
            digest: p.digest.clone(),
            addr: p.addr.clone(),
            published: p.published.clone(),
        });
        self.fact(
            &p.service,
            Some(&p.deploy),
            fact,
            &format!("{instance}:started"),
        )
        .await
    }
}

/// How a stop on request went, in words: in time (and how the process
/// ended), or killed once its shutdown delay was over — what a program
/// that ignores its stop signal makes every deploy wait for.
pub(crate) fn stop_message(instance: &InstanceId, o: &StopOutcome) -> String {
    let secs = o.elapsed.as_secs_f64();
    match (o.escalated_to_kill, o.status) {
        (true, _) => format!(
            "killed {secs:.0} s after it was asked to stop: it did not exit on its stop signal within its shutdown delay (a program that ignores the signal is stopped this way)"
        ),
        (false, Some(ExitStatus::Unknown)) => format!("stopped on request after {secs:.1} s"),
        (false, Some(status)) => {
            // Asked to stop, it ended: whatever it exited with is not a
            // program that finished by itself.
            let how = service::instances::run_exit_message(&exited(instance, status));
            format!("stopped on request: {how} after {secs:.1} s")
        }
        (false, None) => "stopped on request (it was not running)".to_owned(),
    }
}

/// An `instance_exited` fact of `instance` ending with `status` by itself.
pub(crate) fn exited(instance: &InstanceId, status: ExitStatus) -> InstanceExited {
    let (exit_code, signal) = match status {
        ExitStatus::Code(c) => (Some(c), None),
        ExitStatus::Signal(s) => (None, Some(s)),
        ExitStatus::Unknown => (None, None),
    };
    InstanceExited {
        exit_code,
        signal,
        ..InstanceExited::of(instance.clone())
    }
}

/// The `instance_exited` fact of an agent's exit event.
pub(crate) fn exited_fact(e: &AgentEvent) -> Option<InstanceExited> {
    let AgentEvent::Exited {
        instance,
        status,
        oom_killed,
        memory_limit_mib,
        restarted,
        disk_written,
        disk_limit,
        cannot_run,
        ..
    } = e
    else {
        return None;
    };
    Some(InstanceExited {
        oom_killed: *oom_killed,
        memory_limit_mib: *memory_limit_mib,
        restarted: *restarted,
        disk_written_mib: disk_written.map(|b| b.div_ceil(1 << 20)),
        disk_limit_mib: disk_limit.map(|b| b >> 20),
        cannot_run: cannot_run.clone(),
        ..exited(instance, *status)
    })
}

/// The instance of an agent event whose fact (`instance_exited`,
/// `server_restarted`) a later health transition must follow in the log;
/// `None` for every other event. Mirrors what [`Reporter::forward`] records.
pub(crate) fn restart_fact(e: &AgentEvent) -> Option<&InstanceId> {
    match e {
        AgentEvent::Started {
            instance, restarts, ..
        } if *restarts > 0 => Some(instance),
        AgentEvent::Exited { instance, .. } => Some(instance),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn placements_of_an_earlier_node_detect_no_port() {
        let service = ServiceId::generate();
        let deploy = DeployId::generate();
        let earlier = format!(
            r#"{{"service":"{service}","deploy":"{deploy}","digest":"sha256:00","port":20001}}"#
        );
        let p: Placement = serde_json::from_str(&earlier).unwrap();
        assert!(!p.detect);
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("detect").is_none(), "{json}");
        let detecting = Placement { detect: true, ..p };
        let json = serde_json::to_value(&detecting).unwrap();
        assert_eq!(json["detect"], true);
    }

    #[test]
    fn a_kill_for_the_disk_is_recorded_with_what_was_written_in_mib() {
        let exit = |disk_written| AgentEvent::Exited {
            service: ServiceId::generate(),
            instance: InstanceId::generate(),
            status: ExitStatus::Signal(9),
            oom_killed: false,
            memory_limit_mib: None,
            restarted: false,
            disk_written,
            disk_limit: None,
            cannot_run: None,
            ran: Duration::from_secs(3),
            at: chrono::Utc::now(),
        };
        let fact = exited_fact(&exit(Some((812 << 20) + 1))).unwrap();
        assert_eq!(fact.disk_written_mib, Some(813), "rounded up");
        assert_eq!((fact.signal, fact.restarted), (Some(9), false));
        assert_eq!(exited_fact(&exit(None)).unwrap().disk_written_mib, None);
        // Killed for going over the node's per-instance limit: it says so.
        let mut over = exit(Some(30 << 20));
        if let AgentEvent::Exited { disk_limit, .. } = &mut over {
            *disk_limit = Some(20 << 20);
        }
        let fact = exited_fact(&over).unwrap();
        assert_eq!(
            (fact.disk_written_mib, fact.disk_limit_mib),
            (Some(30), Some(20))
        );
        assert!(service::instances::exit_message(&fact)
            .starts_with("killed for writing more than an instance may here: it had written 30 MiB to its filesystem, over the node's limit of 20 MiB"));
    }

    #[test]
    fn a_stop_on_request_says_how_it_ended_without_blaming_the_program() {
        let id = InstanceId::generate();
        let stop = |status, escalated_to_kill| StopOutcome {
            escalated_to_kill,
            status,
            elapsed: Duration::from_millis(200),
        };
        assert_eq!(
            stop_message(&id, &stop(Some(ExitStatus::Code(0)), false)),
            "stopped on request: exited with status 0 after 0.2 s"
        );
        assert_eq!(
            stop_message(&id, &stop(Some(ExitStatus::Signal(15)), false)),
            "stopped on request: killed by signal 15 after 0.2 s"
        );
        assert!(stop_message(&id, &stop(Some(ExitStatus::Signal(9)), true))
            .starts_with("killed 0 s after it was asked to stop"));
        assert_eq!(
            stop_message(&id, &stop(None, false)),
            "stopped on request (it was not running)"
        );
    }

    #[test]
    fn markers_of_instances_stopped_long_ago_go_unless_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let week = Duration::from_secs(7 * 24 * 3600);
        let marker_of = |kind: &str, age: Duration| {
            let id = InstanceId::generate();
            let path = dir.path().join(format!("{id}.{kind}"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(SystemTime::now() - age).unwrap();
            (id, path)
        };
        let marker = |age| marker_of("done", age);
        let (_, old) = marker(week + Duration::from_secs(60));
        // A one-off's start marker goes the same way.
        let (_, old_start) = marker_of("started", week + Duration::from_secs(60));
        let (_, recent_start) = marker_of("started", week - Duration::from_secs(60));
        let (_, recent) = marker(week - Duration::from_secs(60));
        let (running, old_running) = marker(week * 2);
        // Not a marker: a placement of the same age stays.
        let placement = dir.path().join(format!("{}.json", InstanceId::generate()));
        std::fs::File::create(&placement)
            .unwrap()
            .set_modified(SystemTime::now() - week * 2)
            .unwrap();
        let keep: std::collections::HashSet<InstanceId> = [running].into();
        assert_eq!(prune_done_in(dir.path(), week, &keep), 2);
        assert!(!old.exists() && !old_start.exists());
        assert!(recent.exists() && old_running.exists() && placement.exists());
        assert!(recent_start.exists());
    }

    #[test]
    fn a_start_older_than_the_markers_kept_is_too_old() {
        let now = SystemTime::now();
        assert!(!older_than(
            now - DONE_KEPT + Duration::from_secs(60),
            now,
            DONE_KEPT
        ));
        assert!(older_than(
            now - DONE_KEPT - Duration::from_secs(60),
            now,
            DONE_KEPT
        ));
        // A clock behind the server's: not old.
        assert!(!older_than(now + Duration::from_secs(5), now, DONE_KEPT));
    }
}

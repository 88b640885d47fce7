//! Health checks of the instances running on this node, like a kubelet's
//! probes (SPEC §6): web services answer an HTTP GET of their health check
//! path with 2xx/3xx within the timeout (one without a path, as on Render,
//! accepts a TCP connection on its port), private services accept a TCP
//! connection, workers count as healthy once they have stayed up for a
//! grace period; one-off runs and cron jobs are not checked.
//!
//! Only transitions become events on the service's subject:
//! `instance_healthy` on the first pass (and on every recovery), and
//! `instance_unhealthy{reason}` once a healthy instance has failed its
//! checks for `unhealthy_after` (it then leaves routing). A live instance
//! failing for `restart_after` is restarted in place by the agent (the
//! restart is the agent's `server_restarted`), and is then probed as a
//! starting instance again. A starting instance whose HTTP or TCP check
//! has not passed for `unhealthy_after` is reported unhealthy once (not
//! restarted: the scheduler owns the readiness window), with what it
//! listens on instead when that is not where it is checked (another port,
//! or loopback only), read from its namespace's socket tables. Before its
//! first pass an instance is probed: at once, then after a
//! backoff growing to the starting interval, a worker as soon as its grace
//! period is over — a deploy goes live on the first pass, so this wait is
//! part of every deploy.
//!
//! Each transition's idempotency key counts transitions
//! (`<instance>:healthy:<n>`), and the count and last state are kept on
//! disk next to the placement: a redelivered work item or a restarted node
//! (which resumes probing its adopted instances) never records a fact
//! twice, and a recovery after a restart is still recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_agent::{Agent, AgentEvent};
use berth_domain::service::instances::port_detected_message;
use berth_eventlog::ExecuteError;
use berth_schemas::events::{InstanceHealthy, InstancePortDetected, InstanceUnhealthy};
use berth_schemas::ids::InstanceId;
use berth_schemas::Event;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::report::{Placement, Reporter};

/// Probe timing (`BERTH_NODE_HEALTH_*`; short values in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthOptions {
    /// Between probes of a live instance failing its checks; the longest
    /// wait between probes of a starting one (probed at once, then after
    /// 5 ms doubling up to this).
    pub starting_interval: Duration,
    /// Between probes of a healthy instance.
    pub healthy_interval: Duration,
    /// An HTTP check must be answered (or a TCP connect accepted) within this.
    pub timeout: Duration,
    /// Failing this long, a healthy instance is reported unhealthy.
    pub unhealthy_after: Duration,
    /// Failing this long, a live instance is restarted in place.
    pub restart_after: Duration,
    /// A worker is healthy once it has been up this long.
    pub worker_grace: Duration,
    /// A starting instance whose port is berth's choice and that has
    /// failed its check this long while listening on exactly one other
    /// port (on an address the node reaches) is served on that port.
    pub detect_after: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            starting_interval: Duration::from_secs(1),
            healthy_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            unhealthy_after: Duration::from_secs(15),
            restart_after: Duration::from_secs(60),
            worker_grace: Duration::from_secs(5),
            detect_after: Duration::from_secs(5),
        }
    }
}

/// What passing means for one instance (kept in its placement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    /// GET `http://<addr><path>` answered 2xx/3xx, asked with `Host:
    /// <host>` (the name the service is served under, which a framework
    /// that checks the host it is asked for — Django's `ALLOWED_HOSTS`,
    /// Rails' `config.hosts` — admits as it admits real requests), else
    /// with the address (placements of an earlier node).
    Http {
        addr: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// A TCP connection to `addr` accepted.
    Tcp { addr: String },
    /// The process has been up for the worker grace period.
    Uptime,
}

impl Check {
    /// The `ip:port` a check reaches (`None` for an uptime check).
    fn addr(&self) -> Option<&str> {
        match self {
            Check::Http { addr, .. } | Check::Tcp { addr } => Some(addr),
            Check::Uptime => None,
        }
    }

    /// The instance's port a check reaches (`None` for an uptime check).
    fn port(&self) -> Option<u16> {
        self.addr()?.rsplit_once(':')?.1.parse().ok()
    }

    /// What passing it means, in words (`GET /health answers 2xx or 3xx
    /// on port 10000`).
    fn passing(&self) -> String {
        let port = self
            .port()
            .map_or(String::new(), |p| format!(" on port {p}"));
        match self {
            Check::Http { path, .. } => format!("GET {path} answers 2xx or 3xx{port}"),
            Check::Tcp { .. } => format!("it accepts connections{port}"),
            Check::Uptime => "it has kept running through its grace period".to_owned(),
        }
    }

    /// The same check of `port` at the same address.
    fn at_port(&self, port: u16) -> Check {
        let moved = |addr: &str| match addr.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{port}"),
            None => addr.to_owned(),
        };
        match self {
            Check::Http { addr, path, host } => Check::Http {
                addr: moved(addr),
                path: path.clone(),
                host: host.clone(),
            },
            Check::Tcp { addr } => Check::Tcp { addr: moved(addr) },
            Check::Uptime => Check::Uptime,
        }
    }
}

/// The last reported transition and how many there were (`<instance>.health`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Reported {
    transitions: u32,
    /// `None`: never reported; `Some(true)`: healthy; `Some(false)`: unhealthy.
    healthy: Option<bool>,
    /// Reported unhealthy before it ever passed (a start that does not
    /// come up), so not a live instance to restart.
    #[serde(default)]
    starting: bool,
}

struct Monitor {
    stop: CancellationToken,
    /// How often its process has ended (crashes, restarts in place): a
    /// process started again must be reported healthy again, as the log
    /// marks it merely running after `instance_exited`.
    exits: u64,
    /// Its agent events the reporter has still to record (an exit, a
    /// restart): a recovery is recorded only after them, so the log
    /// reads exited, restarted, healthy — never healthy before the
    /// restart it follows.
    unrecorded: u64,
}

#[derive(Default)]
struct Table {
    monitors: HashMap<InstanceId, Monitor>,
    /// Since when each instance's process has been running (`None`: it is
    /// not, e.g. between a crash and its restart), from the agent's events.
    up: HashMap<InstanceId, Option<Instant>>,
    /// The host pid of each running instance's process (the container's
    /// PID 1, in the instance's network namespace).
    pids: HashMap<InstanceId, u32>,
}

impl Table {
    /// Counts `e` in (`observed`) or out (recorded) of its monitor's
    /// unrecorded facts, when it is an exit or a restart.
    fn unrecorded(&mut self, e: &AgentEvent, observed: bool) {
        let Some(m) = crate::report::restart_fact(e).and_then(|i| self.monitors.get_mut(i)) else {
            return;
        };
        m.unrecorded = if observed {
            m.unrecorded + 1
        } else {
            m.unrecorded.saturating_sub(1)
        };
    }

    fn settled(&self, instance: &InstanceId) -> bool {
        let restarting = matches!(self.up.get(instance), Some(None));
        let behind = self
            .monitors
            .get(instance)
            .is_some_and(|m| m.unrecorded > 0);
        !restarting && !behind
    }
}

/// The node's health checker. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    opts: HealthOptions,
    reporter: Reporter,
    dir: PathBuf,
    table: Arc<Mutex<Table>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// A checker reporting through `reporter`, keeping its counts in `dir`.
    pub fn new(opts: HealthOptions, reporter: Reporter, dir: PathBuf) -> Self {
        Self {
            opts,
            reporter,
            dir,
            table: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the agent's view of whether a process runs (called for
    /// every agent event, in order, before it is recorded).
    pub fn observe(&self, e: &AgentEvent) {
        let mut t = self.lock();
        t.unrecorded(e, true);
        match e {
            AgentEvent::Started { instance, pid, .. } => {
                t.up.insert(instance.clone(), Some(Instant::now()));
                t.pids.insert(instance.clone(), *pid);
            }
            AgentEvent::Adopted { instance, pid, .. } => {
                t.pids.insert(instance.clone(), *pid);
                // It ran before this process (at least as long as it took
                // to notice): a worker does not serve its grace again.
                let since = Instant::now()
                    .checked_sub(self.opts.worker_grace)
                    .unwrap_or_else(Instant::now);
                t.up.insert(instance.clone(), Some(since));
            }
            AgentEvent::Exited { instance, .. }
            | AgentEvent::StartFailed { instance, .. }
            | AgentEvent::RestartScheduled { instance, .. } => {
                t.pids.remove(instance);
                // Unprobed ones (one-off runs) are forgotten, so the table
                // does not grow with every cron run.
                if let Some(m) = t.monitors.get_mut(instance) {
                    if matches!(e, AgentEvent::Exited { .. }) {
                        m.exits += 1;
                    }
                    t.up.insert(instance.clone(), None);
                } else {
                    t.up.remove(instance);
                    if matches!(e, AgentEvent::Exited { .. }) {
                        // Under the table's lock: a probe started now
                        // reads the state after this.
                        self.exited_unprobed(instance);
                    }
                }
            }
            AgentEvent::Stopped { instance, .. } => {
                t.up.remove(instance);
                t.pids.remove(instance);
                if let Some(m) = t.monitors.remove(instance) {
                    m.stop.cancel();
                }
                let _ = std::fs::remove_file(self.state_path(instance));
            }
            AgentEvent::CleanedUp { .. } => {}
        }
    }

    /// Starts probing `instance` (no-op when it is probed already or its
    /// placement has no check).
    pub fn watch(&self, agent: &Agent, instance: &InstanceId, placement: &Placement) {
        let Some(check) = placement.check.clone() else {
            return;
        };
        if self.shutdown.is_cancelled() {
            return;
        }
        let stop = self.shutdown.child_token();
        {
            let mut t = self.lock();
            if t.monitors.contains_key(instance) {
                return;
            }
            t.monitors.insert(
                instance.clone(),
                Monitor {
                    stop: stop.clone(),
                    exits: 0,
                    unrecorded: 0,
                },
            );
        }
        tracing::info!(instance.id = %instance, check = ?check, "health checks start");
        let run = Probe {
            health: self.clone(),
            agent: agent.clone(),
            instance: instance.clone(),
            placement: placement.clone(),
            check,
        };
        tokio::spawn(run.run(stop));
    }

    /// The reporter is done with `e` (recorded, or given up on).
    pub fn recorded(&self, e: &AgentEvent) {
        self.lock().unrecorded(e, false);
    }

    /// Whether a pass of `instance` may be recorded now: its process is
    /// not between an exit and its start again, and the facts of its
    /// exit and restart are in the log already.
    fn settled(&self, instance: &InstanceId) -> bool {
        self.lock().settled(instance)
    }

    /// `instance`'s process ended before its probe began (it died while
    /// the node was down, and the agent starts it again): the healthy the
    /// log last recorded no longer holds, so the probe about to begin
    /// reports it healthy anew, as after any exit.
    fn exited_unprobed(&self, instance: &InstanceId) {
        let r = self.load(instance);
        if r.healthy == Some(true) {
            let r = Reported { healthy: None, ..r };
            if let Err(e) = self.save(instance, r) {
                tracing::warn!(instance.id = %instance, error = %e, "health state not saved");
            }
        }
    }

    /// How often `instance`'s process has ended while probed.
    fn exits(&self, instance: &InstanceId) -> u64 {
        self.lock().monitors.get(instance).map_or(0, |m| m.exits)
    }

    /// Stops probing `instance` and forgets its counts (it was stopped).
    pub fn unwatch(&self, instance: &InstanceId) {
        if let Some(m) = self.lock().monitors.remove(instance) {
            m.stop.cancel();
        }
        let _ = std::fs::remove_file(self.state_path(instance));
    }

    /// Stops every probe (the node detaches; the next process resumes).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.lock().monitors.clear();
    }

    fn up_since(&self, instance: &InstanceId) -> Option<Instant> {
        self.lock().up.get(instance).copied().flatten()
    }

    fn pid_of(&self, instance: &InstanceId) -> Option<u32> {
        self.lock().pids.get(instance).copied()
    }

    fn state_path(&self, instance: &InstanceId) -> PathBuf {
        self.dir.join(format!("{instance}.health"))
    }

    fn load(&self, instance: &InstanceId) -> Reported {
        std::fs::read(self.state_path(instance))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, instance: &InstanceId, r: Reported) -> std::io::Result<()> {
        let path = self.state_path(instance);
        let tmp = path.with_extension("health.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&r).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)
    }
}

/// One instance's probe loop.
struct Probe {
    health: Health,
    agent: Agent,
    instance: InstanceId,
    placement: Placement,
    check: Check,
}

impl Probe {
    async fn run(mut self, stop: CancellationToken) {
        let opts = self.health.opts;
        let mut reported = self.health.load(&self.instance);
        // An instance reported before a node restart resumes where it was:
        // healthy stays healthy (no second fact), unhealthy keeps counting
        // towards its restart.
        let mut live = reported.healthy.is_some() && !reported.starting;
        let mut failing_since: Option<Instant> = None;
        // Counted from the monitor's creation: an exit between `watch` and
        // this task's first step is still one.
        let mut exits = 0;
        let mut starting = Backoff::new(opts.starting_interval);
        loop {
            // Its process ended and was started again: the log has it
            // exited, then running; it is probed as a starting instance
            // and reported healthy anew (under the next transition's key).
            let now = self.health.exits(&self.instance);
            if now != exits {
                exits = now;
                if reported.healthy == Some(true) {
                    reported.healthy = None;
                }
                live = false;
                failing_since = None;
                starting = Backoff::new(opts.starting_interval);
            }
            let interval = match (live, failing_since) {
                (true, None) => opts.healthy_interval,
                (true, Some(_)) => opts.starting_interval,
                (false, _) => self.starting_wait(&mut starting),
            };
            if !interval.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
            match self.probe().await {
                Ok(()) => {
                    failing_since = None;
                    if reported.healthy == Some(true) {
                        live = true;
                    } else if !self.health.settled(&self.instance) {
                        // Passed again before its exit and restart are
                        // recorded: asked again on the next probe.
                        tracing::trace!(instance.id = %self.instance, "passing; waiting for its restart to be recorded");
                    } else {
                        let fact = Event::InstanceHealthy(InstanceHealthy {
                            instance: self.instance.clone(),
                        });
                        match self.transition(&mut reported, true, fact).await {
                            Some(recorded) => live = recorded,
                            None => return,
                        }
                    }
                }
                Err(reason) if live => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let failing = since.elapsed();
                    tracing::debug!(instance.id = %self.instance, reason = %reason, failing_ms = failing.as_millis() as u64, "health check failed");
                    if failing >= opts.unhealthy_after && reported.healthy != Some(false) {
                        let fact = Event::InstanceUnhealthy(InstanceUnhealthy {
                            instance: self.instance.clone(),
                            reason: reason.clone(),
                        });
                        if self.transition(&mut reported, false, fact).await.is_none() {
                            return;
                        }
                    }
                    if failing >= opts.restart_after {
                        tracing::warn!(instance.id = %self.instance, reason = %reason, failing_ms = failing.as_millis() as u64, "failing health checks; restarting in place");
                        match self.agent.restart_instance(&self.instance) {
                            Ok(()) => {
                                // Probed as a starting instance again.
                                live = false;
                                failing_since = None;
                                starting = Backoff::new(opts.starting_interval);
                            }
                            Err(e) => {
                                tracing::warn!(instance.id = %self.instance, error = %e, "restart not possible");
                                return;
                            }
                        }
                    }
                }
                Err(reason) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= opts.detect_after && self.detect_port().await {
                        // Probed again at once on the port it serves.
                        starting = Backoff::new(opts.starting_interval);
                        continue;
                    }
                    // A start that does not come up says why, once it has
                    // failed as long as a live instance would have to, so
                    // the deploy that gives up on it can tell: the failed
                    // check and what the instance listens on instead.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if self.check.port().is_some()
                        && since.elapsed() >= opts.unhealthy_after
                        && reported.healthy.is_none()
                    {
                        let reason = format!("{reason}{}", self.listening_hint());
                        let fact = Event::InstanceUnhealthy(InstanceUnhealthy {
                            instance: self.instance.clone(),
                            reason,
                        });
                        reported.starting = true;
                        if self.transition(&mut reported, false, fact).await.is_none() {
                            return;
                        }
                    } else {
                        tracing::trace!(instance.id = %self.instance, reason = %reason, "not healthy yet");
                    }
                }
            }
        }
    }

    /// How long to wait before the next probe of an instance that has not
    /// passed yet: a worker's probe waits until its grace period is over,
    /// other checks follow the starting backoff (the first one at once).
    fn starting_wait(&self, starting: &mut Backoff) -> Duration {
        let opts = self.health.opts;
        match (&self.check, self.health.up_since(&self.instance)) {
            (Check::Uptime, Some(t)) if t.elapsed() < opts.worker_grace => {
                (opts.worker_grace - t.elapsed()).min(opts.starting_interval)
            }
            _ => starting.next(),
        }
    }

    /// Records a transition: `Some(true)` recorded, `Some(false)` not now
    /// (retried on the next probe under the same key), `None` refused for
    /// good (the service is gone: probing ends).
    async fn transition(
        &self,
        reported: &mut Reported,
        healthy: bool,
        fact: Event,
    ) -> Option<bool> {
        let word = if healthy { "healthy" } else { "unhealthy" };
        let key = format!("{}:{word}:{}", self.instance, reported.transitions);
        let p = &self.placement;
        let said = match &fact {
            Event::InstanceUnhealthy(u) => format!("not healthy: {}", u.reason),
            _ => format!("healthy: {}", self.check.passing()),
        };
        match self
            .health
            .reporter
            .fact(&p.service, Some(&p.deploy), fact, &key)
            .await
        {
            Ok(()) => {
                tracing::info!(instance.id = %self.instance, service.id = %p.service, healthy, "health transition recorded");
                self.health
                    .reporter
                    .say(&p.service, &self.instance, &said)
                    .await;
                reported.transitions += 1;
                reported.healthy = Some(healthy);
                reported.starting &= !healthy;
                if let Err(e) = self.health.save(&self.instance, *reported) {
                    tracing::warn!(instance.id = %self.instance, error = %e, "cannot keep the health state");
                }
                Some(true)
            }
            Err(ExecuteError::Rejected(e)) => {
                tracing::warn!(instance.id = %self.instance, error = %e, "health transition refused; probing ends");
                None
            }
            Err(e) => {
                tracing::warn!(instance.id = %self.instance, error = %e, "recording a health transition failed");
                Some(false)
            }
        }
    }

    /// Takes the one port a starting instance listens on (on an address
    /// the node reaches) as its port, when that port was berth's choice
    /// and it does not listen there — as Render detects a service's port:
    /// its published host port (a web instance's) and its check move
    /// there, its placement keeps it (a node restart goes on with it),
    /// and its logs say so. A private instance may listen on several (a
    /// server and its monitoring port, as NATS or Elasticsearch do): its
    /// owner's instances reach it on each, and its check takes the
    /// lowest. `true` when it moved.
    async fn detect_port(&mut self) -> bool {
        if !self.placement.detect {
            return false;
        }
        let Some(want) = self.check.port() else {
            return false;
        };
        let Some(listeners) = self.sockets() else {
            return false;
        };
        let ports = reachable_ports(&listeners);
        let Some(port) = detected_port(&ports, want, self.placement.private) else {
            return false;
        };
        if self.placement.port.is_some() {
            if let Err(e) = self.agent.republish(&self.instance, port).await {
                // Not tried again for this instance (one attached by an
                // earlier berth through `portmap` never can be): it stays
                // unhealthy, saying where it listens.
                tracing::warn!(instance.id = %self.instance, port, error = %e, "the detected port could not be published");
                self.placement.detect = false;
                return false;
            }
        }
        let mut placement = self.placement.clone();
        let check = self.check.at_port(port);
        if placement.port.is_none() && placement.addr.is_some() {
            // A private instance's address is where its check goes.
            placement.addr = check.addr().map(str::to_owned);
        }
        placement.check = Some(check.clone());
        placement.detect = false;
        if let Err(e) = self
            .health
            .reporter
            .place(&self.instance, placement.clone())
        {
            tracing::warn!(instance.id = %self.instance, port, error = %e, "the detected port could not be kept");
            return false;
        }
        tracing::info!(instance.id = %self.instance, port, expected = want, "detected the port the instance serves on");
        let p = &placement;
        let detected = InstancePortDetected {
            instance: self.instance.clone(),
            port,
            expected: want,
        };
        let said = match ports.as_slice() {
            [_] => port_detected_message(&detected),
            many => several_ports_message(many, port),
        };
        self.health
            .reporter
            .say(&p.service, &self.instance, &said)
            .await;
        // Recorded for the service's later instances (and its timeline);
        // this one is served there whether or not the record lands.
        let key = format!("{}:port_detected:{port}", self.instance);
        if let Err(e) = self
            .health
            .reporter
            .fact(&p.service, Some(&p.deploy), detected.into(), &key)
            .await
        {
            tracing::warn!(instance.id = %self.instance, port, error = %e, "the detected port could not be recorded");
        }
        self.placement = placement;
        self.check = check;
        true
    }

    /// What the instance listens on when that is not what its check
    /// reaches (`; the instance listens on 3000, not 10000: …`), from its
    /// network namespace's socket tables; empty when it does listen there
    /// or that cannot be read.
    fn listening_hint(&self) -> String {
        let Some(port) = self.check.port() else {
            return String::new();
        };
        let Some(listeners) = self.sockets() else {
            return String::new();
        };
        listening_hint(&listeners, port).unwrap_or_default()
    }

    /// The TCP sockets listening in the instance's network namespace now
    /// (`None`: its process is not running, or they cannot be read).
    fn sockets(&self) -> Option<Vec<(IpAddr, u16)>> {
        self.health.pid_of(&self.instance).and_then(listeners)
    }

    async fn probe(&self) -> Result<(), String> {
        let opts = self.health.opts;
        match &self.check {
            Check::Uptime => match self.health.up_since(&self.instance) {
                Some(t) if t.elapsed() >= opts.worker_grace => Ok(()),
                Some(t) => Err(format!("up for {} ms only", t.elapsed().as_millis())),
                None => Err("not running".to_owned()),
            },
            Check::Tcp { addr } => {
                match tokio::time::timeout(opts.timeout, TcpStream::connect(addr.as_str())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("tcp connect {addr}: {e}")),
                    Err(_) => Err(format!("tcp connect {addr}: timed out")),
                }
            }
            Check::Http { addr, path, host } => {
                let host = host.as_deref().unwrap_or(addr);
                match tokio::time::timeout(opts.timeout, http_status(addr, host, path)).await {
                    Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(format!("GET {path}: HTTP {code}")),
                    Ok(Err(e)) => Err(format!("GET {path}: {e}")),
                    Err(_) => Err(format!(
                        "GET {path}: no answer within {} ms",
                        opts.timeout.as_millis()
                    )),
                }
            }
        }
    }
}

/// The TCP sockets listening in process `pid`'s network namespace
/// (`/proc/<pid>/net/tcp` and `tcp6`): address and port each; `None` when
/// neither table can be read (the process is gone).
fn listeners(pid: u32) -> Option<Vec<(IpAddr, u16)>> {
    let mut found = Vec::new();
    let mut read_any = false;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        read_any = true;
        found.extend(text.lines().skip(1).filter_map(listening));
    }
    read_any.then_some(found)
}

/// One line of a `/proc/net/tcp{,6}` table, when its socket listens
/// (state `0A`): its local address and port. Addresses are the kernel's
/// 32-bit words in hex, each in this machine's byte order.
fn listening(line: &str) -> Option<(IpAddr, u16)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    if fields.nth(1)? != "0A" {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((ip, port))
}

fn loopback(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The ports of `listeners` on an address the node reaches (not loopback
/// only), ascending, each once.
fn reachable_ports(listeners: &[(IpAddr, u16)]) -> Vec<u16> {
    let mut ports: Vec<u16> = listeners
        .iter()
        .filter(|(ip, _)| !loopback(ip))
        .map(|(_, p)| *p)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The port to serve an instance on instead of `want`, of the `ports` it
/// listens on where the node reaches it ([`reachable_ports`]): the only
/// one, when that is not `want`. With two or more, which one a web
/// instance serves on cannot be told (an admin port may open first), so
/// none is; a `private` one is reached on each, and is checked on the
/// lowest.
fn detected_port(ports: &[u16], want: u16, private: bool) -> Option<u16> {
    match ports {
        [one] if *one != want => Some(*one),
        many if private && !many.is_empty() && !many.contains(&want) => many.first().copied(),
        _ => None,
    }
}

/// What a private instance found listening on several ports is told
/// (`checked` among `ports`).
fn several_ports_message(ports: &[u16], checked: u16) -> String {
    let list: Vec<String> = ports.iter().take(5).map(u16::to_string).collect();
    let more = if ports.len() > 5 { ", …" } else { "" };
    format!(
        "detected service running on ports {}{more}: reached on each by the service's name, checked on {checked}, as the service sets no PORT (set PORT to the port to check)",
        list.join(", ")
    )
}

/// Why a check of port `want` finds nothing, given what listens: on other
/// ports only (`PORT` not read, or another port served), on `want` but on
/// loopback only (unreachable from the node), or nothing at all.
fn listening_hint(listeners: &[(IpAddr, u16)], want: u16) -> Option<String> {
    if listeners.iter().any(|(ip, p)| *p == want && !loopback(ip)) {
        return None;
    }
    if let Some((ip, _)) = listeners.iter().find(|(_, p)| *p == want) {
        return Some(format!(
            "; the instance listens on {ip} port {want} only, which the node cannot reach: listen on 0.0.0.0 (every address)"
        ));
    }
    let others = reachable_ports(listeners);
    Some(match others.as_slice() {
        [] => "; nothing in the instance listens on a port the node can reach".to_owned(),
        [one] => format!(
            "; the instance listens on {one}, not {want}: set PORT={one} in the service's environment, or have it listen on $PORT"
        ),
        many => {
            let list: Vec<String> = many.iter().take(5).map(u16::to_string).collect();
            format!(
                "; the instance listens on {}, not {want}: set PORT to the one it serves on, or have it listen on $PORT",
                list.join(", ")
            )
        }
    })
}

/// The waits between probes of a starting instance: none before the first
/// (the process runs when probing begins, and many programs listen within
/// milliseconds), then [`FIRST_RETRY`] doubling up to the starting
/// interval. A deploy goes live on the first passing probe, so an interval
/// alone would add half of it to every deploy on average; the doubling
/// keeps a slow starter's probes as rare as before within a few rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    next: Duration,
    cap: Duration,
}

/// The wait after the first failed probe of a starting instance.
const FIRST_RETRY: Duration = Duration::from_millis(5);

impl Backoff {
    fn new(cap: Duration) -> Self {
        Self {
            next: Duration::ZERO,
            cap,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next.min(self.cap);
        self.next = (self.next * 2).clamp(FIRST_RETRY, self.cap.max(FIRST_RETRY));
        wait
    }
}

/// The status code of `GET http://host/path` asked of `addr` (HTTP/1.1,
/// connection closed after it; only the status line is read).
async fn http_status(addr: &str, host: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let mut parts = line.split_whitespace();
    match parts.next() {
        Some(v) if v.starts_with("HTTP/") => {}
        _ => return Err(bad()),
    }
    parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use berth_schemas::ids::ServiceId;

    /// Answers one request with `answer` where only a request for
    /// `/healthz` asked as `host` is expected; anything else is answered
    /// 421 (Misdirected Request).
    async fn serve_once(answer: &'static [u8], host: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let want = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n");
            if buf[..n].starts_with(want.as_bytes()) {
                s.write_all(answer).await.unwrap();
            } else {
                s.write_all(b"HTTP/1.1 421 Misdirected Request\r\n\r\n")
                    .await
                    .unwrap();
            }
        });
        addr
    }

    #[test]
    fn a_pass_after_a_crash_waits_for_the_restart_to_be_recorded() {
        let (service, instance) = (ServiceId::generate(), InstanceId::generate());
        let mut t = Table::default();
        t.monitors.insert(
            instance.clone(),
            Monitor {
                stop: CancellationToken::new(),
                exits: 0,
                unrecorded: 0,
            },
        );
        t.up.insert(instance.clone(), Some(Instant::now()));
        assert!(t.settled(&instance));
        let exited = AgentEvent::Exited {
            service: service.clone(),
            instance: instance.clone(),
            status: berth_agent::ExitStatus::Signal(9),
            oom_killed: false,
            memory_limit_mib: None,
            restarted: false,
            disk_written: None,
            disk_limit: None,
            cannot_run: None,
            ran: Duration::from_secs(1),
            at: chrono::Utc::now(),
        };
        let started = |restarts| AgentEvent::Started {
            service: service.clone(),
            instance: instance.clone(),
            pid: 1,
            restarts,
            startup: Duration::ZERO,
            at: chrono::Utc::now(),
        };
        // A first start is recorded elsewhere: nothing to wait for.
        t.unrecorded(&started(0), true);
        assert!(t.settled(&instance));
        // Crashed: its exit recorded, its start again not seen yet.
        t.unrecorded(&exited, true);
        t.up.insert(instance.clone(), None);
        assert!(!t.settled(&instance));
        t.unrecorded(&exited, false);
        assert!(!t.settled(&instance), "between its exit and its restart");
        // Running again, the restart not recorded yet.
        t.unrecorded(&started(1), true);
        t.up.insert(instance.clone(), Some(Instant::now()));
        assert!(!t.settled(&instance), "its restart is not in the log yet");
        t.unrecorded(&started(1), false);
        assert!(t.settled(&instance));
        // Another instance's facts do not hold this one back.
        let other = AgentEvent::Exited {
            service,
            instance: InstanceId::generate(),
            status: berth_agent::ExitStatus::Code(1),
            oom_killed: false,
            memory_limit_mib: None,
            restarted: false,
            disk_written: None,
            disk_limit: None,
            cannot_run: None,
            ran: Duration::from_secs(1),
            at: chrono::Utc::now(),
        };
        t.unrecorded(&other, true);
        assert!(t.settled(&instance));
    }

    #[tokio::test]
    async fn http_status_reads_the_status_line() {
        let host = "web.example.com";
        let a = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", host).await;
        assert_eq!(http_status(&a, host, "/healthz").await.unwrap(), 204);
        let a = serve_once(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\n", host).await;
        assert_eq!(http_status(&a, host, "/healthz").await.unwrap(), 503);
        let a = serve_once(b"SSH-2.0-OpenSSH\r\n", host).await;
        assert!(http_status(&a, host, "/healthz").await.is_err());
        let a = serve_once(b"HTTP/1.1 200 OK\r\n\r\n", host).await;
        assert_eq!(
            http_status(&a, "10.0.0.1:80", "/healthz").await.unwrap(),
            421
        );
    }

    #[test]
    fn starting_probes_come_at_once_then_back_off_to_the_interval() {
        let mut b = Backoff::new(Duration::from_millis(100));
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [0, 5, 10, 20, 40, 80, 100, 100]);
        // An interval shorter than the first retry is kept.
        let mut b = Backoff::new(Duration::from_millis(2));
        let waits: Vec<u64> = (0..3).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [0, 2, 2]);
    }

    #[test]
    fn checks_round_trip_in_placements() {
        let c = Check::Http {
            addr: "127.0.0.1:4000".into(),
            path: "/".into(),
            host: None,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"kind":"http","addr":"127.0.0.1:4000","path":"/"}"#);
        assert_eq!(serde_json::from_str::<Check>(&j).unwrap(), c);
        let named = Check::Http {
            addr: "127.0.0.1:4000".into(),
            path: "/".into(),
            host: Some("web.example.com".into()),
        };
        let j = serde_json::to_string(&named).unwrap();
        assert_eq!(serde_json::from_str::<Check>(&j).unwrap(), named);
    }

    #[test]
    fn listening_sockets_are_read_from_the_kernels_tables() {
        // As /proc/net/tcp and tcp6 print them on this (little-endian)
        // machine: 0.0.0.0:3000 and 127.0.0.1:10000 listening, one
        // connection, [::]:8080 and [::1]:9000 listening.
        let v4 = [
            "   0: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0",
            "   1: 0100007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0",
            "   2: 0100007F:2710 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1",
        ];
        let v6 = [
            "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0",
            "   1: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0",
        ];
        let got: Vec<(IpAddr, u16)> = v4
            .iter()
            .chain(v6.iter())
            .filter_map(|l| listening(l))
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            got,
            [
                (ip("0.0.0.0"), 3000),
                (ip("127.0.0.1"), 10000),
                (ip("::"), 8080),
                (ip("::1"), 9000)
            ]
        );
        assert_eq!(listening("garbage"), None);
        assert_eq!(listening("   0: 0000:0BB8 00000000:0000 0A"), None);
    }

    #[test]
    fn a_listener_of_this_process_is_found_in_its_namespace() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listeners(std::process::id()).unwrap();
        assert!(found.iter().any(|(_, p)| *p == port), "{port} in {found:?}");
        assert!(listeners(u32::MAX).is_none(), "no such process");
    }

    #[test]
    fn hints_say_what_the_instance_listens_on_instead() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Listening where checked: nothing to add.
        assert_eq!(listening_hint(&[(ip("0.0.0.0"), 10000)], 10000), None);
        assert_eq!(listening_hint(&[(ip("::"), 10000)], 10000), None);
        assert_eq!(
            listening_hint(&[(ip("0.0.0.0"), 3000), (ip("127.0.0.1"), 5432)], 10000).unwrap(),
            "; the instance listens on 3000, not 10000: set PORT=3000 in the service's environment, or have it listen on $PORT"
        );
        assert_eq!(
            listening_hint(&[(ip("127.0.0.1"), 10000)], 10000).unwrap(),
            "; the instance listens on 127.0.0.1 port 10000 only, which the node cannot reach: listen on 0.0.0.0 (every address)"
        );
        assert!(listening_hint(&[(ip("::1"), 10000)], 10000)
            .unwrap()
            .contains("only"));
        assert_eq!(
            listening_hint(&[], 10000).unwrap(),
            "; nothing in the instance listens on a port the node can reach"
        );
        let many = listening_hint(
            &[(ip("0.0.0.0"), 81), (ip("::"), 80), (ip("0.0.0.0"), 80)],
            10000,
        );
        assert_eq!(
            many.unwrap(),
            "; the instance listens on 80, 81, not 10000: set PORT to the one it serves on, or have it listen on $PORT"
        );
    }

    #[test]
    fn only_a_lone_reachable_port_is_taken_for_a_web_instance_the_lowest_for_a_private_one() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // What a probe finds listening, as the probe reads it.
        let detected_port = |listeners: &[(IpAddr, u16)], want, private| {
            detected_port(&reachable_ports(listeners), want, private)
        };
        // One port (on IPv4 and IPv6 both), loopback listeners aside.
        let lone = [
            (ip("0.0.0.0"), 3000),
            (ip("::"), 3000),
            (ip("127.0.0.1"), 9229),
            (ip("::ffff:127.0.0.1"), 9230),
        ];
        for private in [false, true] {
            assert_eq!(detected_port(&lone, 10000, private), Some(3000));
            // Where it is expected already, loopback only, nothing.
            let there = [(ip("0.0.0.0"), 10000), (ip("0.0.0.0"), 3000)];
            assert_eq!(detected_port(&there, 10000, private), None);
            assert_eq!(
                detected_port(&[(ip("127.0.0.1"), 3000)], 10000, private),
                None
            );
            assert_eq!(detected_port(&[], 10000, private), None);
        }
        // Two ports: a web instance's is not guessed at; a private one is
        // checked on the lowest (reached on both).
        let two = [
            (ip("0.0.0.0"), 8222),
            (ip("::"), 4222),
            (ip("127.0.0.1"), 80),
        ];
        assert_eq!(detected_port(&two, 10000, false), None);
        assert_eq!(detected_port(&two, 10000, true), Some(4222));
        assert_eq!(
            several_ports_message(&[4222, 8222], 4222),
            "detected service running on ports 4222, 8222: reached on each by the service's name, checked on 4222, as the service sets no PORT (set PORT to the port to check)"
        );
        let many: Vec<u16> = (1..=7).collect();
        assert!(several_ports_message(&many, 1)
            .starts_with("detected service running on ports 1, 2, 3, 4, 5, …: "));
    }

    #[test]
    fn a_check_moves_to_another_port_at_its_address() {
        let http = Check::Http {
            addr: "10.1.0.5:10000".into(),
            path: "/up".into(),
            host: Some("web.example.com".into()),
        };
        assert_eq!(
            http.at_port(3000),
            Check::Http {
                addr: "10.1.0.5:3000".into(),
                path: "/up".into(),
                host: Some("web.example.com".into()),
            }
        );
        let tcp = Check::Tcp {
            addr: "10.1.0.5:10000".into(),
        };
        assert_eq!(tcp.at_port(6379).port(), Some(6379));
        assert_eq!(Check::Uptime.at_port(1), Check::Uptime);
        // What passing means, as the logs say it.
        assert_eq!(http.passing(), "GET /up answers 2xx or 3xx on port 10000");
        assert_eq!(tcp.passing(), "it accepts connections on port 10000");
        assert_eq!(
            Check::Uptime.passing(),
            "it has kept running through its grace period"
        );
    }
}

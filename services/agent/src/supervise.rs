//! One instance's life on this node: launch (bundle → FIFOs → `run
//! --detach` → log pumps → record), wait for its exit, stop on request
//! (SIGTERM, SIGKILL after the delay), restart crashes with backoff (each
//! run from the image's files: what the last wrote is discarded), and
//! adopt a container a previous agent process left running.

use std::future::Future;
use std::path::Path;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentEvent, Inner, Kind, Record, StopOutcome};
use crate::bundle::{self, InstanceSpec};
use crate::error::{agent_io, AgentError, RuntimeError};
use crate::image::SIGTERM;
use crate::logs::{self, LogSink, Stream};
use crate::net::Attachment;
use crate::process::{self, ExitStatus};
use crate::runtime::{ContainerIo, ContainerStatus, Signal};
use crate::wrapper;

/// How a supervisor ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The process exited by itself (one-offs only; services restart).
    Exited {
        status: ExitStatus,
        /// The kernel killed a process of it for going over its memory
        /// limit.
        oom_killed: bool,
        /// Killed for filling the node's disk, having written this many
        /// bytes.
        disk_written: Option<u64>,
        /// With `disk_written`: the limit it went over, in bytes.
        disk_limit: Option<u64>,
        /// Why its program could not be run (it exited failing).
        cannot_run: Option<String>,
    },
    /// Stopped on request.
    Stopped(StopOutcome),
    /// The agent detached; the container was left running.
    Detached,
}

/// What the node asks of a supervised instance, besides its stop.
#[derive(Debug, Default)]
pub(crate) struct Asks {
    /// Kill the process and start it again at once (a live instance
    /// failing its health checks).
    pub restart: Notify,
    /// Kill it for what it wrote to its filesystem (the node's disk ran
    /// low) and remove that; a service instance starts again after the
    /// crash backoff, a one-off run ends.
    pub evict: Notify,
    /// The bytes it had written when `evict` was asked; 0 when no eviction
    /// is pending (a stale `evict` permit is then ignored).
    pub written: AtomicU64,
    /// The limit it went over when `evict` was asked for that; 0 when it
    /// was asked for the node's disk.
    pub limit: AtomicU64,
}

/// Why a run of an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    /// By itself.
    Exited,
    /// Stopped to be started again at once.
    Restarted,
    /// Killed for what it had written (bytes), over the node's disk or
    /// over a limit (bytes).
    Evicted { written: u64, limit: Option<u64> },
}

/// A process the supervisor watches.
#[derive(Debug)]
pub(crate) struct Running {
    pub pid: u32,
    pid_start: Option<u64>,
    pumps: Vec<JoinHandle<u64>>,
    started: Instant,
    /// Why its program cannot be run, as found in the image before the
    /// start ([`crate::runnable`]).
    cannot_run: Option<String>,
}

impl Running {
    /// Let the log pumps read to EOF (the process is gone, so it comes
    /// unless a stray process kept the FIFO open), bounded.
    async fn flush(self) {
        for p in self.pumps {
            let abort = p.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), p)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn abandon(self) {
        for p in self.pumps {
            p.abort();
        }
    }
}

fn sink(inner: &Inner, spec: &InstanceSpec) -> LogSink {
    LogSink {
        client: inner.client.clone(),
        subject: inner.subjects.logs(&spec.service),
        service: spec.service.clone(),
        instance: spec.instance.clone(),
    }
}

/// berth's own line about `spec`'s instance in its logs.
async fn say(inner: &Inner, spec: &InstanceSpec, what: &str) {
    sink(inner, spec).say(what).await;
}

/// A start of `spec`'s instance failed with `e`: said in its logs and
/// reported.
pub(crate) async fn start_failed(inner: &Inner, spec: &InstanceSpec, e: &AgentError) {
    say(inner, spec, &format!("could not start: {e}")).await;
    inner.report(AgentEvent::StartFailed {
        service: spec.service.clone(),
        instance: spec.instance.clone(),
        error: e.to_string(),
    });
}

fn pumps(inner: &Inner, spec: &InstanceSpec) -> Result<Vec<JoinHandle<u64>>, AgentError> {
    let dir = inner.dir(&spec.instance);
    let mut readers = Vec::new();
    for s in [Stream::Stdout, Stream::Stderr] {
        readers.push((s, logs::open_reader(&dir.fifo(s.name()))?));
    }
    Ok(spawn_pumps(inner, spec, readers))
}

/// One pump per stream of a run, sharing the run's line budget.
fn spawn_pumps(
    inner: &Inner,
    spec: &InstanceSpec,
    readers: Vec<(Stream, tokio::net::unix::pipe::Receiver)>,
) -> Vec<JoinHandle<u64>> {
    let budget = Arc::new(logs::LineBudget::new(inner.cfg.log_rate));
    readers
        .into_iter()
        .map(|(s, r)| tokio::spawn(logs::pump(r, s, sink(inner, spec), budget.clone())))
        .collect()
}

pub(crate) fn read_record(path: &Path) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(path: &Path, rec: &Record) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(rec).map_err(|e| AgentError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(agent_io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(agent_io(path))
}

/// The instance's network: the one it has (a restart after a crash keeps
/// its address), or a new one. The namespace outlives the container
/// process; it goes when the instance does.
pub(crate) async fn network(
    inner: &Inner,
    spec: &InstanceSpec,
) -> Result<Option<Attachment>, AgentError> {
    let Some(want) = &spec.network else {
        return Ok(None);
    };
    let net = inner
        .net
        .as_ref()
        .ok_or_else(|| AgentError::NoNetwork(spec.instance.to_string()))?;
    Ok(Some(match net.attachment(&spec.instance) {
        Some(a) => a,
        None => net.attach(&spec.instance, want).await?,
    }))
}

/// Build the bundle and run the container; returns once its process runs.
/// On error the caller deletes the container and files.
pub(crate) async fn launch(
    inner: &Inner,
    spec: &InstanceSpec,
    kind: Kind,
    restarts: u32,
) -> Result<Running, AgentError> {
    let net = network(inner, spec).await?;
    // Each refusal below turns one setting off for good, so this ends.
    loop {
        let inside = inner.rootfs_inside.load(Ordering::Relaxed);
        let own_sysfs = inner.own_sysfs.load(Ordering::Relaxed);
        let refused = match launch_with(
            inner,
            spec,
            kind,
            restarts,
            net.as_ref(),
            inside,
            own_sysfs,
        )
        .await
        {
            Err(AgentError::Runtime(RuntimeError::Failed { message, .. }))
                if inside && root_mount_refused(&message) =>
            {
                if inner.rootfs_inside.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%message, "runc did not mount an instance's root inside its container; instance roots are mounted on the host from now on");
                }
                "root"
            }
            Err(AgentError::Runtime(RuntimeError::Failed { message, .. }))
                if own_sysfs && sysfs_refused(&message) =>
            {
                if inner.own_sysfs.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%message, "this machine refuses instances in a user namespace a sysfs of their own; they get the host's /sys, read-only, from now on");
                }
                "sysfs"
            }
            r => return r,
        };
        if let Err(e) = inner.runtime.delete(spec.instance.as_str()).await {
            tracing::debug!(instance = %spec.instance, error = %e, refused, "runc delete after a refused mount");
        }
    }
}

/// Whether runc failed to mount a sysfs in an instance: a machine that
/// does not let a user namespace mount one (the node itself in a
/// container whose `/sys` is not fully visible, a kernel that refuses).
fn sysfs_refused(message: &str) -> bool {
    let m = message.replace('\\', "");
    m.contains("\"sysfs\"")
        && m.contains("\"/sys\"")
        && (m.contains("operation not permitted") || m.contains("permission denied"))
}

/// Whether runc failed to mount an instance's root inside its container
/// for a reason a mount on the host avoids: a runc that refuses a mount at
/// `/`, or an overlay it cannot make there. A missing directory (the image
/// removed meanwhile) is not one.
fn root_mount_refused(message: &str) -> bool {
    let m = message.replace('\\', "");
    (m.contains("to rootfs at \"/\"") || m.contains("on the top of rootfs"))
        && !m.contains("no such file or directory")
}

async fn launch_with(
    inner: &Inner,
    spec: &InstanceSpec,
    kind: Kind,
    restarts: u32,
    net: Option<&Attachment>,
    inside: bool,
    own_sysfs: bool,
) -> Result<Running, AgentError> {
    let dir = inner.dir(&spec.instance);
    let id = spec.instance.to_string();
    let (d, s, sandbox, net) = (
        dir.clone(),
        spec.clone(),
        inner.sandbox.clone(),
        net.cloned(),
    );
    let disks = crate::persistent::dir(&inner.cfg.state_dir);
    let reserve = inner.cfg.disk_reserve;
    let (rootfs, cannot_run, disk_said) = tokio::task::spawn_blocking(move || {
        let ns = bundle::user_namespace_for(sandbox.user_namespace, &s.image.rootfs);
        let sandbox = bundle::Sandbox {
            user_namespace: ns,
            own_sysfs,
            ..sandbox
        };
        bundle::private_dir(&d.root, ns.map(|u| u.host)).map_err(agent_io(&d.root))?;
        let b = d.bundle();
        std::fs::create_dir_all(&b).map_err(agent_io(&b))?;
        if restarts > 0 {
            bundle::discard_writes(&d)?;
        }
        let k = bundle::prepare_rootfs(&d, &s.image.rootfs, inside, ns)?;
        crate::volumes::make_missing(&d, &s.image, k, ns);
        let attached = match &s.disk {
            Some(disk) => Some(crate::persistent::attach(
                &disks,
                s.service.as_str(),
                disk,
                s.disk_restore.as_ref(),
                ns,
                reserve,
            )?),
            None => None,
        };
        if !s.secret_files.is_empty() {
            bundle::write_secret_files(&d, &s.secret_files)?;
        }
        let disk = attached.as_ref().map(|a| a.mount.as_path());
        bundle::write_bundle(&d, &s, net.as_ref(), &sandbox, k, disk)?;
        let said = attached.and_then(|a| a.said);
        Ok::<_, AgentError>((k, bundle::cannot_run(&s), said))
    })
    .await
    .map_err(|e| AgentError::Io {
        path: dir.root.clone(),
        source: std::io::Error::other(e),
    })??;
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for s in [Stream::Stdout, Stream::Stderr] {
        let fifo = dir.fifo(s.name());
        logs::ensure_fifo(&fifo)?;
        // Reader first: it keeps the pipe (and an early exit's output) alive.
        readers.push((s, logs::open_reader(&fifo)?));
        writers.push(logs::open_writer(&fifo)?);
    }
    let (Some(stderr), Some(stdout)) = (writers.pop(), writers.pop()) else {
        return Err(AgentError::ShuttingDown);
    };
    let io = ContainerIo { stdout, stderr };
    let pid = inner.runtime.run(&id, &dir.bundle(), io).await?;
    let pid_start = process::start_time(pid);
    exec_done(pid).await;
    let started = Instant::now();
    // Before the pumps start, so it comes before the program's first line.
    if let Some(line) = &disk_said {
        say(inner, spec, line).await;
    }
    if let Ok(args) = spec.image.config.args(spec.command.as_deref()) {
        let line = format!("running: {}", logs::command_line(&args));
        say(inner, spec, &line).await;
    }
    if kind == Kind::Service && restarts == 0 {
        let disk = spec.disk.as_ref().map(|d| d.mount_path.as_str());
        if let Some(notice) = crate::volumes::notice(&spec.image.config, disk) {
            say(inner, spec, &notice).await;
        }
    }
    let pumps = spawn_pumps(inner, spec, readers);
    write_record(
        &dir.state_file(),
        &Record {
            spec: spec.clone(),
            kind,
            rootfs,
            pid: Some(pid),
            pid_start,
            restarts,
        },
    )?;
    Ok(Running {
        pid,
        pid_start,
        pumps,
        started,
        cannot_run,
    })
}

/// `runc run --detach` returns once runc init is released, a moment before it
/// execs the user's program: wait for the exec so "started" means the
/// program runs (bounded; a process that already exited ends the wait).
async fn exec_done(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) if !c.is_empty() && !c.starts_with(b"runc\0init") => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if process::start_time(pid).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A recorded container still running as recorded → watched again.
pub(crate) async fn adopt(inner: &Inner, rec: &Record) -> Option<Running> {
    let id = rec.spec.instance.to_string();
    let state = inner.runtime.state(&id).await.ok().flatten()?;
    if state.status != ContainerStatus::Running || !process::alive(state.pid, rec.pid_start) {
        return None;
    }
    // Commands and terminals the earlier agent ran in it died with it;
    // what they started did not.
    crate::exec::sweep_leftovers(&inner.dir(&rec.spec.instance).bundle(), state.pid);
    let pumps = pumps(inner, &rec.spec).ok()?;
    Some(Running {
        pid: state.pid,
        pid_start: rec.pid_start,
        pumps,
        started: Instant::now(),
        cannot_run: None,
    })
}

/// The image's stop signal (SIGTERM unless it names another; when it
/// names no signal, SIGTERM and a warning), when the container can take
/// signals, then SIGKILL once the shutdown delay passes without an exit.
///
/// When the container's process `pid` (or, under the init, its child) is
/// a shell that would not pass the signal on, the processes it runs get
/// it instead ([`wrapper`]); once they have ended and the shell has had a
/// moment to end after them, the container is signalled as usual.
async fn stop_container(
    inner: &Inner,
    id: &str,
    spec: &InstanceSpec,
    pid: u32,
    mut exit: Pin<&mut impl Future<Output = ExitStatus>>,
) -> StopOutcome {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.shutdown_delay;
    let signal = spec.image.config.stop_signal().unwrap_or_else(|raw| {
        tracing::warn!(
            container = id,
            stop_signal = raw,
            "the image's StopSignal names no signal; SIGTERM"
        );
        SIGTERM
    });
    let can_kill = matches!(inner.runtime.state(id).await, Ok(Some(s)) if s.status.can_kill());
    if can_kill {
        let past = past_shells(inner, pid, signal).await;
        if let Some((past, wrapper)) = past {
            if signal_past_shells(inner, spec, &past, wrapper, signal).await {
                let ended = async {
                    while past.iter().any(|t| t.alive()) {
                        tokio::time::sleep(WRAPPED_POLL).await;
                    }
                    tokio::time::sleep(SHELL_GRACE).await;
                };
                tokio::select! {
                    s = exit.as_mut() => {
                        return StopOutcome { escalated_to_kill: false, status: Some(s), elapsed: t0.elapsed() };
                    }
                    _ = ended => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        if let Err(e) = inner.runtime.kill(id, Signal::Stop(signal)).await {
            tracing::debug!(container = id, signal, error = %e, "stop signal not delivered");
        }
    }
    if let Ok(s) = tokio::time::timeout_at(deadline, exit.as_mut()).await {
        return StopOutcome {
            escalated_to_kill: false,
            status: Some(s),
            elapsed: t0.elapsed(),
        };
    }
    tracing::info!(
        container = id,
        delay_ms = spec.shutdown_delay.as_millis() as u64,
        signal,
        "no exit after the stop signal; SIGKILL"
    );
    if let Err(e) = inner.runtime.kill(id, Signal::Kill).await {
        tracing::warn!(container = id, error = %e, "SIGKILL not delivered");
    }
    let status = tokio::time::timeout(inner.cfg.kill_wait, exit).await.ok();
    StopOutcome {
        escalated_to_kill: true,
        status,
        elapsed: t0.elapsed(),
    }
}

/// How often processes signalled past their shell are looked at.
const WRAPPED_POLL: Duration = Duration::from_millis(50);

/// How long a shell whose processes ended is given to end by itself (to
/// run what follows them, and exit with their status) before it is
/// signalled too.
const SHELL_GRACE: Duration = Duration::from_millis(500);

/// The processes the stop signal should go to instead of the container's
/// (see [`wrapper`]) and what was looked past to reach them ("the
/// shell", "npm"…); `None` when the container's own process is the one.
/// Read off the runtime's threads: a container may run thousands of
/// processes.
async fn past_shells(
    inner: &Inner,
    pid: u32,
    signal: u8,
) -> Option<(Vec<wrapper::Target>, &'static str)> {
    if pid == 0 || nix::sys::signal::Signal::try_from(i32::from(signal)).is_err() {
        return None;
    }
    let under_init = inner.sandbox.init.is_some();
    let walk = move || {
        let roots = match under_init {
            true => wrapper::children(pid),
            false => vec![pid],
        };
        let targets = wrapper::targets(&roots, &|p| wrapper::look(p, signal));
        let past = targets.past?;
        let pids: Vec<_> = targets
            .pids
            .into_iter()
            .filter_map(|t| wrapper::Target::of(t, pid))
            .collect();
        (!pids.is_empty()).then_some((pids, past))
    };
    tokio::task::spawn_blocking(walk).await.ok().flatten()
}

/// Sends `signal` to `targets`, saying so in the instance's logs; `false`
/// when none could be signalled (the container is then signalled as
/// usual).
async fn signal_past_shells(
    inner: &Inner,
    spec: &InstanceSpec,
    targets: &[wrapper::Target],
    wrapper: &str,
    signal: u8,
) -> bool {
    let mut sent = Vec::new();
    for t in targets {
        // Read before the signal: a program that handles it at once is
        // gone, its command line with it, by the time it is said.
        let command = t.command();
        match t.signal(signal) {
            Ok(()) => sent.push(command),
            Err(e) => {
                tracing::debug!(instance = %spec.instance, pid = t.pid, error = %e, "stop signal not delivered past the shell");
            }
        }
    }
    if sent.is_empty() {
        return false;
    }
    let name = nix::sys::signal::Signal::try_from(i32::from(signal))
        .map_or("the stop signal", |s| s.as_str());
    say(
        inner,
        spec,
        &format!(
            "stopping: {name} sent to {}, as {wrapper} running it would not pass it on",
            sent.join(", ")
        ),
    )
    .await;
    true
}

/// Kill a container at once (no stop signal, no delay); how it ended.
async fn kill_container(
    inner: &Inner,
    id: &str,
    exit: Pin<&mut impl Future<Output = ExitStatus>>,
) -> ExitStatus {
    if let Err(e) = inner.runtime.kill(id, Signal::Kill).await {
        tracing::warn!(container = id, error = %e, "SIGKILL not delivered");
    }
    tokio::time::timeout(inner.cfg.kill_wait, exit)
        .await
        .unwrap_or(ExitStatus::Unknown)
}

/// Remove what an ended run wrote to its filesystem (its next start would
/// too; a start after the agent itself restarted still does).
async fn discard_now(inner: &Inner, spec: &InstanceSpec) {
    let dir = inner.dir(&spec.instance);
    let gone = tokio::task::spawn_blocking(move || bundle::discard_writes(&dir)).await;
    if let Ok(Err(e)) = gone {
        tracing::warn!(instance = %spec.instance, error = %e, "what the instance wrote was not removed");
    }
}

/// Remove the container and the instance's files.
async fn cleanup(inner: &Inner, spec: &InstanceSpec) {
    if let Err(e) = inner.runtime.delete(&spec.instance.to_string()).await {
        tracing::warn!(instance = %spec.instance, error = %e, "runc delete failed");
    }
    let dir = inner.dir(&spec.instance);
    let _ = tokio::task::spawn_blocking(move || bundle::remove_instance(&dir)).await;
    inner.release_network(&spec.instance).await;
}

/// Announce the restart after `d`, then sleep `d` unless stopped or
/// detached first; a restart request cuts the wait short (and is used up
/// here, so it does not kill the process this restart starts).
async fn backoff(
    inner: &Inner,
    spec: &InstanceSpec,
    stop: &CancellationToken,
    restart: &Notify,
    d: Duration,
) -> Option<Ended> {
    inner.report(AgentEvent::RestartScheduled {
        service: spec.service.clone(),
        instance: spec.instance.clone(),
        after: d,
    });
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        _ = restart.notified() => None,
        _ = inner.detach.cancelled() => Some(Ended::Detached),
        _ = stop.cancelled() => {
            cleanup(inner, spec).await;
            let outcome = StopOutcome { escalated_to_kill: false, status: None, elapsed: Duration::ZERO };
            inner.report(AgentEvent::Stopped {
                service: spec.service.clone(),
                instance: spec.instance.clone(),
                outcome,
            });
            Some(Ended::Stopped(outcome))
        }
    }
}

/// Watch, restart and finally stop one instance.
pub(crate) async fn supervise(
    inner: &Inner,
    spec: InstanceSpec,
    kind: Kind,
    mut running: Option<Running>,
    mut restarts: u32,
    stop: CancellationToken,
    asks: Arc<Asks>,
) -> Ended {
    let id = spec.instance.to_string();
    let policy = inner.cfg.restart;
    let mut delay: Option<Duration> = None;
    loop {
        let run = match running.take() {
            Some(r) => r,
            None => {
                let t0 = Instant::now();
                match launch(inner, &spec, kind, restarts).await {
                    Ok(r) => {
                        inner.report(AgentEvent::Started {
                            service: spec.service.clone(),
                            instance: spec.instance.clone(),
                            pid: r.pid,
                            restarts,
                            startup: t0.elapsed(),
                            at: Utc::now(),
                        });
                        r
                    }
                    Err(e) => {
                        let _ = inner.runtime.delete(&id).await;
                        start_failed(inner, &spec, &e).await;
                        let d = policy.next(delay, Duration::ZERO);
                        delay = Some(d);
                        if let Some(end) = backoff(inner, &spec, &stop, &asks.restart, d).await {
                            return end;
                        }
                        restarts += 1;
                        continue;
                    }
                }
            }
        };
        let mut exit = pin!(process::wait_exit(
            run.pid,
            run.pid_start,
            inner.cfg.exit_poll
        ));
        // A restart in place or an eviction ends like an exit (flush,
        // delete, `Exited`).
        let (status, why) = loop {
            tokio::select! {
                biased;
                _ = inner.detach.cancelled() => {
                    run.abandon();
                    return Ended::Detached;
                }
                _ = stop.cancelled() => {
                    let outcome = stop_container(inner, &id, &spec, run.pid, exit.as_mut()).await;
                    run.flush().await;
                    cleanup(inner, &spec).await;
                    inner.report(AgentEvent::Stopped {
                        service: spec.service.clone(),
                        instance: spec.instance.clone(),
                        outcome,
                    });
                    return Ended::Stopped(outcome);
                }
                _ = asks.evict.notified() => {
                    let written = asks.written.load(Ordering::Relaxed);
                    if written == 0 {
                        continue;
                    }
                    let limit = Some(asks.limit.swap(0, Ordering::Relaxed)).filter(|l| *l > 0);
                    let status = kill_container(inner, &id, exit.as_mut()).await;
                    break (status, RunEnd::Evicted { written, limit });
                }
                _ = asks.restart.notified(), if kind == Kind::Service => {
                    let outcome = stop_container(inner, &id, &spec, run.pid, exit.as_mut()).await;
                    break (outcome.status.unwrap_or(ExitStatus::Unknown), RunEnd::Restarted);
                }
                s = exit.as_mut() => break (s, RunEnd::Exited),
            }
        };
        let in_place = why == RunEnd::Restarted;
        let ran = run.started.elapsed();
        let cannot_run = run
            .cannot_run
            .clone()
            .filter(|_| why == RunEnd::Exited && !matches!(status, ExitStatus::Code(0)));
        run.flush().await;
        // Killed by the node, whatever the counter says.
        let (oom_killed, memory_limit_mib) = match why {
            RunEnd::Exited => inner.out_of_memory(&spec),
            RunEnd::Restarted | RunEnd::Evicted { .. } => (false, None),
        };
        if let Err(e) = inner.runtime.delete(&id).await {
            tracing::warn!(instance = %id, error = %e, "runc delete after exit failed");
        }
        if in_place {
            tracing::info!(instance = %id, ran_ms = ran.as_millis() as u64, "restarting in place");
        }
        // What the run wrote goes now, not at the next start: its disk is
        // free during the backoff, and a kill for the disk asked meanwhile
        // (its permit then ignored) has nothing left to free.
        if kind == Kind::Service {
            discard_now(inner, &spec).await;
        }
        asks.written.store(0, Ordering::Relaxed);
        asks.limit.store(0, Ordering::Relaxed);
        let (disk_written, disk_limit) = match why {
            RunEnd::Evicted { written, limit } => (Some(written), limit),
            RunEnd::Exited | RunEnd::Restarted => (None, None),
        };
        if oom_killed {
            tracing::warn!(instance = %id, "out of memory: killed for going over its memory limit");
        }
        inner.report(AgentEvent::Exited {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            status,
            oom_killed,
            memory_limit_mib,
            restarted: in_place,
            disk_written,
            disk_limit,
            cannot_run: cannot_run.clone(),
            ran,
            at: Utc::now(),
        });
        if in_place {
            // Launched again at once: no crash backoff, the process did
            // not crash.
            delay = None;
            restarts += 1;
            continue;
        }
        if kind == Kind::OneOff {
            cleanup(inner, &spec).await;
            return Ended::Exited {
                status,
                oom_killed,
                disk_written,
                disk_limit,
                cannot_run,
            };
        }
        let d = policy.next(delay, ran);
        delay = Some(d);
        if let Some(end) = backoff(inner, &spec, &stop, &asks.restart, d).await {
            return end;
        }
        restarts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{root_mount_refused, sysfs_refused};

    #[test]
    fn a_refused_sysfs_is_told_from_other_failures() {
        let refused = r#"unable to start container process: error during container init: error mounting \"sysfs\" to rootfs at \"/sys\": mount sysfs:/sys (via /proc/self/fd/6), flags: 0xf: operation not permitted"#;
        assert!(sysfs_refused(refused));
        assert!(!sysfs_refused(
            r#"error mounting \"sysfs\" to rootfs at \"/sys\": no such device"#
        ));
        assert!(!sysfs_refused(
            r#"error mounting \"proc\" to rootfs at \"/proc\": operation not permitted"#
        ));
    }

    #[test]
    fn a_refused_root_mount_is_told_from_a_missing_image() {
        // runc 1.2 and later, as logged (quotes escaped).
        assert!(root_mount_refused(
            r#"runc run failed: unable to start container process: error during container init: error mounting \"overlay\" to rootfs at \"/\": create mountpoint for / mount: mountpoint \"/x/rootfs\" is on the top of rootfs \"/x/rootfs\""#
        ));
        // No overlayfs there.
        assert!(root_mount_refused(
            r#"error mounting "overlay" to rootfs at "/": mount overlay:/ (via /proc/self/fd/6), data: lowerdir=/a: no such device"#
        ));
        // The image went away: a host mount would fail the same.
        assert!(!root_mount_refused(
            r#"error mounting "overlay" to rootfs at "/": mount overlay:/ (via /proc/self/fd/6), data: lowerdir=/a: no such file or directory"#
        ));
        assert!(!root_mount_refused(
            r#"error mounting "proc" to rootfs at "/proc": permission denied"#
        ));
    }
}

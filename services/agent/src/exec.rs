//! Running a command in a running instance (`berth exec`, Render's Shell,
//! `kubectl exec` without a terminal): `runc exec`, so the command runs as
//! the instance's own process does — its user, environment, working
//! directory, capabilities, seccomp filter, no-new-privileges, cgroup
//! (its memory and pids limits count it) and namespaces.
//!
//! Bounded: the command and its process group are killed at its timeout
//! (from the host, by the pid runc reports); each output stream keeps its
//! first [`ExecRequest::output_limit`] bytes (the rest is read and
//! dropped, so the command never blocks on a full pipe); and background
//! children it leaves holding its output (runc, as `docker exec`, answers
//! only once the output is closed) get [`DRAIN_GRACE`] after it exits,
//! then are killed, as closing a terminal ends a session's jobs. A child
//! that made a session of its own (`setsid`, a daemon) and closed its
//! output keeps running in the instance.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::error::RuntimeError;

/// How long the command's group may keep its output open after the
/// command itself exited, and how long output is read after runc exits.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A command to run in an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments (the image's `PATH` finds it).
    pub args: Vec<String>,
    /// Given on its standard input, which is then closed.
    pub stdin: Vec<u8>,
    /// Killed when still running after this long.
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub output_limit: usize,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    /// It exited with this code (a command killed by a signal: 128 + the
    /// signal, as a shell says it).
    Exited(i32),
    /// It ran past its timeout and was killed.
    TimedOut,
}

/// What the command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub end: ExecEnd,
    /// Its standard output (the first `output_limit` bytes).
    pub stdout: Vec<u8>,
    /// Its standard error (likewise).
    pub stderr: Vec<u8>,
    /// Whether either stream said more than was kept.
    pub truncated: bool,
}

/// `runc exec` of `req` in container `id`, runc's own messages going to
/// `log` (so the command's stderr is its own), its pid written to `pid`.
pub(crate) async fn runc_exec(
    mut command: tokio::process::Command,
    id: &str,
    req: &ExecRequest,
    log: &Path,
    pid: &Path,
) -> Result<ExecOutput, RuntimeError> {
    // runc takes everything after the container's id as the command
    // (its flags come before), but a program named like a flag is none.
    match req.args.first() {
        Some(program) if !program.is_empty() && !program.starts_with('-') => {}
        _ => {
            return Err(RuntimeError::Failed {
                op: "exec",
                id: id.to_owned(),
                message: "the command must start with a program name".into(),
            })
        }
    }
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(pid);
    command
        .arg("--log")
        .arg(log)
        .arg("exec")
        .arg("--pid-file")
        .arg(pid)
        .arg(id)
        .args(&req.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| RuntimeError::Spawn {
        binary: "runc".into(),
        source,
    })?;
    let limit = req.output_limit;
    let stdout = child.stdout.take().map(|s| Reading::start(s, limit));
    let stderr = child.stderr.take().map(|s| Reading::start(s, limit));
    if let Some(mut input) = child.stdin.take() {
        let bytes = req.stdin.clone();
        // A command that never reads its input must not hold this up.
        tokio::spawn(async move {
            let _ = input.write_all(&bytes).await;
        });
    }
    let deadline = tokio::time::Instant::now() + req.timeout;
    let mut tick = tokio::time::interval(EXITED_POLL);
    // When the command was seen gone; whether its leftovers were killed.
    let mut exited_at: Option<tokio::time::Instant> = None;
    let mut leftovers_killed = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => {
                break Some(status.map_err(|source| RuntimeError::Spawn {
                    binary: "runc".into(),
                    source,
                })?);
            }
            _ = tokio::time::sleep_until(deadline) => {
                // runc passes on signals but cannot pass on SIGKILL: the
                // command and its group are killed, and runc then exits.
                kill_group(pid);
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                break None;
            }
            _ = tick.tick() => {
                // runc answers once the command's output is closed: a
                // background child of the command may hold it open for
                // good. Once the command itself is gone, what is left of
                // its group gets DRAIN_GRACE, then is killed (as closing
                // a terminal ends a session's jobs).
                match exited_at {
                    None if command_gone(pid) => exited_at = Some(tokio::time::Instant::now()),
                    Some(t) if !leftovers_killed && t.elapsed() >= DRAIN_GRACE => {
                        kill_group(pid);
                        leftovers_killed = true;
                    }
                    _ => {}
                }
            }
        }
    };
    let (stdout, out_cut) = finish(stdout).await;
    let (stderr, err_cut) = finish(stderr).await;
    let end = match status {
        None => ExecEnd::TimedOut,
        Some(status) => {
            // runc's own failure (no such container, a namespace it could
            // not join) is in its log, at error level; the command's exit
            // code otherwise.
            let runc_said = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(message) = runc_error(&runc_said) {
                return Err(RuntimeError::Failed {
                    op: "exec",
                    id: id.to_owned(),
                    message,
                });
            }
            use std::os::unix::process::ExitStatusExt;
            ExecEnd::Exited(
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1),
            )
        }
    };
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(pid);
    Ok(ExecOutput {
        end,
        stdout,
        stderr,
        truncated: out_cut || err_cut,
    })
}

/// How often whether the command is still there is looked at.
const EXITED_POLL: Duration = Duration::from_millis(100);

/// The command's host pid, from runc's pid file (`None` before runc wrote
/// it).
pub(crate) fn command_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
}

/// Whether the command runc started has ended (its pid known and gone).
fn command_gone(pid_file: &Path) -> bool {
    command_pid(pid_file).is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// SIGKILL to the command and its process group (runc makes it a session
/// and group leader, so its children without job control are in it).
pub(crate) fn kill_group(pid_file: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Some(p) = command_pid(pid_file) {
        let _ = kill(Pid::from_raw(-p), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Kills what commands and terminals an earlier agent started in the
/// container whose first process is `container_pid` left running (it
/// died before they ended: nothing would end them now), and removes their
/// files from `bundle`. A pid file names its command only when the
/// process is in the container's PID namespace and started before the
/// file was written (runc writes it once the command runs; a pid reused
/// since by another process of the instance started later, and is left
/// alone). Returns how many were killed.
pub(crate) fn sweep_leftovers(bundle: &Path, container_pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(bundle) else {
        return 0;
    };
    let pid_ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let theirs = i32::try_from(container_pid).ok().and_then(pid_ns);
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("exec-") || n.starts_with("tty-"))
        .collect();
    let mut killed = 0;
    for name in names.iter().filter(|n| n.ends_with(".pid")) {
        let path = bundle.join(name);
        let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Some(pid) = command_pid(&path) {
            let started = u32::try_from(pid).ok().and_then(crate::process::started_at);
            // Clock ticks and file times differ by well under a second.
            let before_written = match (started, written) {
                (Some(s), Some(w)) => s <= w + std::time::Duration::from_secs(1),
                _ => false,
            };
            if before_written && theirs.is_some() && pid_ns(pid) == theirs {
                tracing::info!(pid, file = %name, "a command an earlier agent left running is killed");
                kill_group(&path);
                killed += 1;
            }
        }
    }
    for name in &names {
        let _ = std::fs::remove_file(bundle.join(name));
    }
    killed
}

/// A name part no other exec of this process uses.
pub(crate) fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last error-level message of a runc log (`level=error msg="…"`).
pub(crate) fn runc_error(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains("level=error"))?;
    let msg = match line.find("msg=") {
        Some(i) => line[i + 4..].trim().trim_matches('"'),
        None => line.trim(),
    };
    Some(msg.replace("\\\"", "\""))
}

/// What has been read of one output stream.
#[derive(Debug, Default)]
struct Kept {
    bytes: Vec<u8>,
    cut: bool,
}

type Sink = std::sync::Arc<std::sync::Mutex<Kept>>;

/// Reads `r` to its end into `sink`, keeping the first `limit` bytes and
/// noting whether more came.
async fn keep(mut r: impl AsyncRead + Unpin, limit: usize, sink: Sink) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut k = sink.lock().unwrap_or_else(|p| p.into_inner());
                let room = limit.saturating_sub(k.bytes.len());
                k.bytes.extend_from_slice(&buf[..n.min(room)]);
                k.cut |= n > room;
            }
        }
    }
}

/// A stream being read by a [`keep`] task.
struct Reading {
    task: tokio::task::JoinHandle<()>,
    sink: Sink,
}

impl Reading {
    fn start(r: impl AsyncRead + Unpin + Send + 'static, limit: usize) -> Reading {
        let sink = Sink::default();
        let task = tokio::spawn(keep(r, limit, sink.clone()));
        Reading { task, sink }
    }

    /// What was read, given [`DRAIN_GRACE`] to reach the end once the
    /// command ended; a stream still open then (held by a child left
    /// running) is cut there.
    async fn finish(mut self) -> (Vec<u8>, bool) {
        let ended = tokio::time::timeout(DRAIN_GRACE, &mut self.task)
            .await
            .is_ok();
        if !ended {
            self.task.abort();
        }
        let mut k = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut k.bytes), k.cut || !ended)
    }
}

/// [`Reading::finish`] of a stream that may not have been piped.
async fn finish(r: Option<Reading>) -> (Vec<u8>, bool) {
    match r {
        Some(r) => r.finish().await,
        None => (Vec::new(), false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn runc_errors_are_read_from_its_log() {
        let log = "time=\"2026\" level=info msg=\"x\"\ntime=\"2026\" level=error msg=\"exec failed: unable to start container process: exec: \\\"nope\\\": executable file not found in $PATH\"\n";
        assert_eq!(
            runc_error(log).as_deref(),
            Some("exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(runc_error("time=\"2026\" level=warning msg=\"x\"\n"), None);
        assert_eq!(runc_error(""), None);
    }

    #[test]
    fn a_leftover_is_killed_only_when_it_started_before_its_pid_file() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let dir = tempfile::tempdir().expect("dir");
        let me = std::process::id();
        let sleeper = || {
            std::process::Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .expect("sleep")
        };
        // A pid file older than its process: the pid was reused since.
        let mut later = sleeper();
        let file = dir.path().join("exec-1-0.pid");
        std::fs::write(&file, later.id().to_string()).expect("written");
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(hour_ago))
            .expect("dated");
        std::fs::write(dir.path().join("exec-1-0.log"), "x").expect("written");
        assert_eq!(sweep_leftovers(dir.path(), me), 0);
        assert!(
            later.try_wait().expect("waited").is_none(),
            "killed a reused pid"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read").count(),
            0,
            "files left"
        );
        let _ = later.kill();
        let _ = later.wait();
        // Its own command, left running: killed.
        let mut left = sleeper();
        std::fs::write(dir.path().join("tty-1-1.pid"), left.id().to_string()).expect("written");
        assert_eq!(sweep_leftovers(dir.path(), me), 1);
        assert_eq!(left.wait().expect("waited").signal(), Some(9));
        // A pid no process has: nothing to kill.
        std::fs::write(dir.path().join("exec-1-2.pid"), "999999999").expect("written");
        assert_eq!(sweep_leftovers(dir.path(), me), 0);
    }

    #[tokio::test]
    async fn output_past_the_limit_is_read_and_dropped() {
        let data = vec![7u8; 100_000];
        let (kept, cut) = Reading::start(std::io::Cursor::new(data.clone()), 1000)
            .finish()
            .await;
        assert_eq!(kept.len(), 1000);
        assert!(cut);
        let (kept, cut) = Reading::start(std::io::Cursor::new(data[..10].to_vec()), 1000)
            .finish()
            .await;
        assert_eq!(kept, vec![7u8; 10]);
        assert!(!cut);
    }

    #[tokio::test]
    async fn what_came_before_a_stream_stayed_open_is_kept() {
        let (mut w, r) = tokio::io::duplex(64);
        w.write_all(b"hi\n").await.expect("written");
        let reading = Reading::start(r, 1000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (kept, cut) = reading.finish().await;
        assert_eq!(kept, b"hi\n");
        assert!(cut, "still open at the end: said as cut");
        drop(w);
    }
}

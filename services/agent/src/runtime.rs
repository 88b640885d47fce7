//! The narrow runtime seam: seven calls the agent makes on an OCI runtime,
//! and [`Runc`], which makes them with the `runc` binary.
//!
//! Every berth container lives under its own `--root` (the agent's state
//! dir), so `runc list` there shows berth's containers and nothing else's.
//! Containers are created detached with stdio *passed through*: the agent
//! hands runc the write ends of two FIFOs and runc gives them to the
//! container's process (no terminal, no shim), which is what lets a new
//! agent re-open the same FIFOs after a restart.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::error::RuntimeError;
use crate::exec::{ExecOutput, ExecRequest};
use crate::terminal::{Terminal, TerminalRequest};

/// A container's lifecycle status, as the OCI runtime spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// `runc create` has not finished.
    Creating,
    /// Created: the process exists, waiting for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Being frozen.
    Pausing,
    /// Frozen.
    Paused,
    /// The process has exited; only `delete` remains.
    Stopped,
}

impl ContainerStatus {
    /// Parse runc's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "created" => Self::Created,
            "running" => Self::Running,
            "pausing" => Self::Pausing,
            "paused" => Self::Paused,
            "stopped" => Self::Stopped,
            _ => return None,
        })
    }

    /// `start` is allowed only on a created container.
    pub fn can_start(self) -> bool {
        self == Self::Created
    }

    /// Signals reach a container whose process exists.
    pub fn can_kill(self) -> bool {
        matches!(
            self,
            Self::Created | Self::Running | Self::Pausing | Self::Paused
        )
    }

    /// `delete` without force: only when nothing runs.
    pub fn can_delete(self) -> bool {
        matches!(self, Self::Created | Self::Stopped)
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Creating => "creating",
            Self::Created => "created",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

/// What the runtime knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Host pid of the container's process (0 once stopped).
    pub pid: u32,
    /// Status.
    pub status: ContainerStatus,
    /// Bundle directory.
    pub bundle: PathBuf,
}

/// The write ends the container's stdout and stderr go to.
#[derive(Debug)]
pub struct ContainerIo {
    /// Becomes the process's fd 1.
    pub stdout: File,
    /// Becomes the process's fd 2.
    pub stderr: File,
}

/// Signals the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ask to stop: the image's stop signal, by number (SIGTERM unless
    /// the image names another).
    Stop(u8),
    /// Stop now.
    Kill,
}

impl Signal {
    /// As `runc kill` takes it.
    fn arg(self) -> String {
        match self {
            Signal::Stop(n) => n.to_string(),
            Signal::Kill => "KILL".into(),
        }
    }
}

/// An OCI runtime as the agent uses it.
pub trait Runtime: Send + Sync + fmt::Debug {
    /// Create container `id` from `bundle`, its stdio going to `io`; returns
    /// the host pid of the (not yet started) process.
    fn create<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ContainerIo,
    ) -> BoxFuture<'a, Result<u32, RuntimeError>>;
    /// Start a created container's process.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Create container `id` and start its process at once; returns its
    /// host pid. The same as [`Runtime::create`] then [`Runtime::start`]
    /// (what this default does), in one step where the runtime has one.
    fn run<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ContainerIo,
    ) -> BoxFuture<'a, Result<u32, RuntimeError>> {
        Box::pin(async move {
            let pid = self.create(id, bundle, io).await?;
            self.start(id).await?;
            Ok(pid)
        })
    }
    /// Signal the container's process.
    fn kill<'a>(&'a self, id: &'a str, signal: Signal) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// Delete the container, killing it first if it still runs. Deleting
    /// a container that does not exist succeeds.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    /// The container's state, `None` when it does not exist.
    fn state<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerState>, RuntimeError>>;
    /// Every container under this runtime's root.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerState>, RuntimeError>>;
    /// Run a command in the running container `id` as its process runs;
    /// the runtime's own files for it go in `dir`.
    fn exec<'a>(
        &'a self,
        id: &'a str,
        req: &'a ExecRequest,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<ExecOutput, RuntimeError>>;
    /// Open a terminal in the running container `id` with a program on
    /// it, as [`Runtime::exec`] runs commands.
    fn terminal<'a>(
        &'a self,
        id: &'a str,
        req: &'a TerminalRequest,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<Terminal, RuntimeError>>;
}

/// `runc` with its own state root.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

#[derive(Deserialize)]
struct RawState {
    id: String,
    #[serde(default)]
    pid: u32,
    status: String,
    #[serde(default)]
    bundle: PathBuf,
}

impl RawState {
    fn into_state(self, op: &'static str) -> Result<ContainerState, RuntimeError> {
        let status = ContainerStatus::parse(&self.status).ok_or_else(|| RuntimeError::Output {
            op,
            message: format!("unknown status {:?}", self.status),
        })?;
        Ok(ContainerState {
            id: self.id,
            pid: self.pid,
            status,
            bundle: self.bundle,
        })
    }
}

impl Runc {
    /// `binary` (usually `runc` on PATH) keeping its state under `root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null()).kill_on_drop(false);
        c
    }

    /// runc for a terminal: in a session of its own whose controlling
    /// terminal is the one it is given as its standard input (`setsid
    /// --ctty`, util-linux; it execs runc, so the pid is runc's). When the
    /// node dies, its end of that terminal closes and the kernel hangs up
    /// on runc (`SIGHUP`), which passes it on to the program, as closing
    /// a terminal window does: nothing waits for the node to come back.
    fn terminal_command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("setsid");
        c.arg("--ctty")
            .arg(&self.binary)
            .arg("--root")
            .arg(&self.root);
        c.stdin(Stdio::null()).kill_on_drop(false);
        c
    }

    /// Run `args`, returning stdout; a non-zero exit is `Failed` with
    /// runc's stderr as the message.
    async fn output(
        &self,
        op: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, RuntimeError> {
        let out =
            self.command()
                .args(args)
                .output()
                .await
                .map_err(|source| RuntimeError::Spawn {
                    binary: self.binary.clone(),
                    source,
                })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Failed {
                op,
                id: id.to_string(),
                message: runc_message(&out.stderr),
            })
        }
    }

    /// `runc create` (`op` "create": the process waits for `start`) or
    /// `runc run --detach` (`op` "run": it runs), with the container's
    /// stdio on `io`; the host pid of its process.
    async fn create_or_run(
        &self,
        id: &str,
        bundle: &Path,
        io: ContainerIo,
        op: &'static str,
    ) -> Result<u32, RuntimeError> {
        // runc's own errors go to --log: its stderr is the container's.
        let log = bundle.join("runc.log");
        let pid_file = bundle.join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&log);
        let status = self
            .command()
            .arg("--log")
            .arg(&log)
            .arg(op)
            .args(if op == "run" {
                &["--detach"][..]
            } else {
                &[][..]
            })
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr))
            .status()
            .await
            .map_err(|source| RuntimeError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if !status.success() {
            let message = std::fs::read(&log)
                .map(|b| runc_message(&b))
                .unwrap_or_else(|e| format!("exit {status}, no log: {e}"));
            return Err(RuntimeError::Failed {
                op,
                id: id.to_string(),
                message,
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| RuntimeError::Output {
                op,
                message: format!("no pid in {}", pid_file.display()),
            })?;
        Ok(pid)
    }
}

/// runc logs `time=… level=error msg="…"`; keep the message.
fn runc_message(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match line.find("msg=") {
        Some(i) => line[i + 4..].trim().trim_matches('"').to_string(),
        None => line.trim().to_string(),
    }
}

fn not_exist(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Failed { message, .. } if message.contains("does not exist"))
}

impl Runtime for Runc {
    fn create<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ContainerIo,
    ) -> BoxFuture<'a, Result<u32, RuntimeError>> {
        Box::pin(self.create_or_run(id, bundle, io, "create"))
    }

    /// `runc run --detach`: one runc process instead of two (a start
    /// costs runc's Go runtime and state loading once, not twice).
    fn run<'a>(
        &'a self,
        id: &'a str,
        bundle: &'a Path,
        io: ContainerIo,
    ) -> BoxFuture<'a, Result<u32, RuntimeError>> {
        Box::pin(self.create_or_run(id, bundle, io, "run"))
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.output("start", id, &["start", id]).await.map(drop) })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: Signal) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.output("kill", id, &["kill", id, &signal.arg()])
                .await
                .map(drop)
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            match self.output("delete", id, &["delete", "--force", id]).await {
                Err(e) if not_exist(&e) => Ok(()),
                r => r.map(drop),
            }
        })
    }

    fn state<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerState>, RuntimeError>> {
        Box::pin(async move {
            match self.output("state", id, &["state", id]).await {
                Ok(out) => {
                    let raw: RawState =
                        serde_json::from_slice(&out).map_err(|e| RuntimeError::Output {
                            op: "state",
                            message: e.to_string(),
                        })?;
                    raw.into_state("state").map(Some)
                }
                Err(e) if not_exist(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        req: &'a ExecRequest,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<ExecOutput, RuntimeError>> {
        Box::pin(async move {
            // One exec's files apart from another's running alongside.
            let tag = crate::exec::unique_tag();
            let log = dir.join(format!("exec-{tag}.log"));
            let pid = dir.join(format!("exec-{tag}.pid"));
            crate::exec::runc_exec(self.command(), id, req, &log, &pid).await
        })
    }

    fn terminal<'a>(
        &'a self,
        id: &'a str,
        req: &'a TerminalRequest,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<Terminal, RuntimeError>> {
        Box::pin(async move {
            crate::terminal::runc_terminal(self.terminal_command(), id, req, dir).await
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerState>, RuntimeError>> {
        Box::pin(async move {
            let out = self
                .output("list", "", &["list", "--format", "json"])
                .await?;
            // An empty root prints `null`.
            let raw: Option<Vec<RawState>> =
                serde_json::from_slice(&out).map_err(|e| RuntimeError::Output {
                    op: "list",
                    message: e.to_string(),
                })?;
            raw.unwrap_or_default()
                .into_iter()
                .map(|r| r.into_state("list"))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards() {
        assert!(ContainerStatus::Created.can_start());
        assert!(!ContainerStatus::Running.can_start());
        assert!(!ContainerStatus::Stopped.can_start());
        assert!(ContainerStatus::Running.can_kill());
        assert!(!ContainerStatus::Stopped.can_kill());
        assert!(ContainerStatus::Stopped.can_delete());
        assert!(!ContainerStatus::Running.can_delete());
        assert_eq!(
            ContainerStatus::parse("paused"),
            Some(ContainerStatus::Paused)
        );
        assert_eq!(ContainerStatus::parse("gone"), None);
    }

    #[test]
    fn runc_messages() {
        let s = b"time=\"2026\" level=error msg=\"container does not exist\"\n";
        assert_eq!(runc_message(s), "container does not exist");
        assert_eq!(runc_message(b"plain\n\n"), "plain");
    }
}

//! A terminal in a running instance (`berth shell`, the dashboard's
//! terminal; `docker exec -it`, `kubectl exec -it`): `runc exec
//! --process` with the instance's own process (its OCI config's: user,
//! environment and `TERM=xterm`, working directory, capabilities), so the
//! program runs as [`crate::exec`]'s commands do — with its seccomp
//! filter, cgroup and namespaces too — on a pseudo-terminal of the
//! instance's own, sized before it starts.
//!
//! runc, not detached, copies between the instance's terminal and its own
//! standard streams, which are the far end of a second pseudo-terminal
//! made here: the near end is what [`Pty`] reads and writes. Its size is
//! set on the near end and runc is told (`SIGWINCH`), as a terminal
//! emulator tells a shell. Hanging up is `SIGHUP` to runc, which passes
//! it on to the program, as closing a terminal window does; the program's
//! process group is killed when it does not go.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, Winsize};
use tokio::io::unix::AsyncFd;

use crate::error::RuntimeError;
use crate::exec::{command_pid, kill_group, runc_error};

/// How long a program hung up on has to go before its group is killed.
pub const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// A terminal to open in an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalRequest {
    /// The program and its arguments (the image's `PATH` finds it).
    pub args: Vec<String>,
    /// The terminal's size.
    pub cols: u16,
    pub rows: u16,
}

/// The near end of the terminal a program runs on: what it shows is read
/// here, what is typed is written here.
#[derive(Debug)]
pub struct Pty {
    near: AsyncFd<OwnedFd>,
}

impl Pty {
    /// Watches `near` for readiness. The descriptor is owned and moved
    /// in, so it lives exactly as long as its registration (what the
    /// deprecation of `AsyncFd::new` asks callers to ensure; its
    /// replacement is an `unsafe fn`, which this workspace forbids).
    #[allow(deprecated)]
    fn new(near: OwnedFd) -> io::Result<Pty> {
        Ok(Pty {
            near: AsyncFd::new(near)?,
        })
    }

    /// Reads what the terminal shows; `Ok(0)` once the program and runc
    /// are gone (the far end closed).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.near.readable().await?;
            match ready
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                // Linux says EIO on the near end once no one holds the far end.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0)
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what the terminal shows now without waiting: `Ok(0)` when
    /// nothing is there (or at its end, which [`Pty::read`] then says). To
    /// fill a buffer after a read, so output goes on in fewer pieces.
    pub fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        match rustix::io::read(self.near.get_ref(), buf) {
            Ok(n) => Ok(n),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::IO => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Types `data` (waits while the program does not read).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.near.writable().await?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn set_size(&self, cols: u16, rows: u16) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            self.near.get_ref(),
            Winsize {
                ws_row: rows.max(1),
                ws_col: cols.max(1),
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .map_err(io::Error::from)
    }
}

/// A program running on a terminal in an instance.
#[derive(Debug)]
pub struct Terminal {
    pty: Arc<Pty>,
    runc: tokio::process::Child,
    id: String,
    log: PathBuf,
    pid_file: PathBuf,
}

/// A pseudo-terminal pair: the near end (non-blocking, for [`Pty`]) and
/// the far end, in raw mode (runc sets it so too; set here first, so
/// nothing typed before runc is ready is cooked).
fn pty_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let near = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&near)?;
    rustix::pty::unlockpt(&near)?;
    let name = rustix::pty::ptsname(&near, Vec::new())?;
    let far = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut modes = rustix::termios::tcgetattr(&far)?;
    modes.make_raw();
    rustix::termios::tcsetattr(&far, OptionalActions::Now, &modes)?;
    let flags = rustix::fs::fcntl_getfl(&near)?;
    rustix::fs::fcntl_setfl(&near, flags | OFlags::NONBLOCK)?;
    Ok((near, far))
}

/// How long runc is given to start the program (its pid file written).
const STARTED_WITHIN: Duration = Duration::from_secs(10);

/// `runc exec` of `req` on a terminal in container `id` whose bundle is `bundle`
/// (`command` is runc with its global flags, run in a session of its own
/// whose controlling terminal is its standard input). The process runc starts is
/// the instance's own (`config.json`'s: user, environment, working
/// directory, capabilities, rlimits) with the program, `TERM=xterm` and
/// the terminal's size: runc sizes the instance's terminal before the
/// program starts, so a program that asks for its size at once (`stty
/// size`, a pager) gets it. Returns once runc has started the program
/// (its pid file written) or given up.
pub(crate) async fn runc_terminal(
    mut command: tokio::process::Command,
    id: &str,
    req: &TerminalRequest,
    bundle: &Path,
) -> Result<Terminal, RuntimeError> {
    let failed = |message: String| RuntimeError::Failed {
        op: "exec",
        id: id.to_owned(),
        message,
    };
    match req.args.first() {
        Some(program) if !program.is_empty() && !program.starts_with('-') => {}
        _ => return Err(failed("the command must start with a program name".into())),
    }
    let tag = crate::exec::unique_tag();
    let log = bundle.join(format!("tty-{tag}.log"));
    let pid_file = bundle.join(format!("tty-{tag}.pid"));
    let process_file = bundle.join(format!("tty-{tag}.json"));
    let spec = std::fs::read(bundle.join("config.json"))
        .map_err(|e| failed(format!("the instance's config: {e}")))?;
    let process =
        terminal_process(&spec, req).map_err(|e| failed(format!("the instance's config: {e}")))?;
    let (near, far) = pty_pair().map_err(|e| failed(format!("no terminal: {e}")))?;
    let pty = Pty::new(near).map_err(|e| failed(format!("no terminal: {e}")))?;
    pty.set_size(req.cols, req.rows)
        .map_err(|e| failed(format!("terminal size: {e}")))?;
    let far_end = |fd: &OwnedFd| -> Result<Stdio, RuntimeError> {
        fd.as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .map_err(|e| failed(format!("no terminal: {e}")))
    };
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&pid_file);
    // It holds the instance's environment: readable by root only, and
    // gone once runc has read it (or failed to start).
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&process_file)
            .and_then(|mut f| f.write_all(&process))
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&process_file);
        return Err(failed(format!("the terminal's process: {e}")));
    }
    command
        .arg("--log")
        .arg(&log)
        .arg("exec")
        .arg("--process")
        .arg(&process_file)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(far_end(&far)?)
        .stdout(far_end(&far)?)
        .stderr(far_end(&far)?)
        .kill_on_drop(true);
    let spawned = command.spawn();
    let mut runc = match spawned {
        Ok(runc) => runc,
        Err(source) => {
            let _ = std::fs::remove_file(&process_file);
            return Err(RuntimeError::Spawn {
                binary: command.as_std().get_program().into(),
                source,
            });
        }
    };
    // Only runc may hold the far end: the near end reads its end (EIO)
    // once runc is gone.
    drop(command);
    drop(far);
    let t0 = tokio::time::Instant::now();
    while command_pid(&pid_file).is_none()
        && matches!(runc.try_wait(), Ok(None))
        && t0.elapsed() < STARTED_WITHIN
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // runc has read it by now (or never will).
    let _ = std::fs::remove_file(&process_file);
    Ok(Terminal {
        pty: Arc::new(pty),
        runc,
        id: id.to_owned(),
        log,
        pid_file,
    })
}

/// The process a terminal runs: the instance's own (`config.json`'s
/// `process`) with `req`'s program, a terminal of its size, and
/// `TERM=xterm` in place of any `TERM` it had.
fn terminal_process(config: &[u8], req: &TerminalRequest) -> Result<Vec<u8>, String> {
    use serde_json::{json, Value};
    let config: Value = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    let mut process = config
        .get("process")
        .cloned()
        .filter(Value::is_object)
        .ok_or("no process")?;
    let mut env: Vec<Value> = process
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    env.retain(|v| !v.as_str().is_some_and(|e| e.starts_with("TERM=")));
    env.push(json!("TERM=xterm"));
    process["env"] = Value::Array(env);
    process["args"] = json!(req.args);
    process["terminal"] = json!(true);
    process["consoleSize"] = json!({ "height": req.rows.max(1), "width": req.cols.max(1) });
    serde_json::to_vec(&process).map_err(|e| e.to_string())
}

impl Terminal {
    /// The terminal, to read and type into (from other tasks too).
    pub fn pty(&self) -> Arc<Pty> {
        self.pty.clone()
    }

    /// Sets the terminal's size and tells runc, which passes it on.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        self.pty.set_size(cols, rows)?;
        self.signal_runc(nix::sys::signal::Signal::SIGWINCH);
        Ok(())
    }

    /// Hangs up on the program (`SIGHUP`, through runc), as closing a
    /// terminal window does; [`Terminal::end`] kills what does not go.
    pub fn hang_up(&self) {
        self.signal_runc(nix::sys::signal::Signal::SIGHUP);
    }

    fn signal_runc(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.runc.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Waits for the program to end: its exit code (128 + the signal for
    /// one killed by a signal), or runc's own failure (no such program,
    /// the instance stopped).
    pub async fn wait(&mut self) -> Result<i32, RuntimeError> {
        let status = self
            .runc
            .wait()
            .await
            .map_err(|source| RuntimeError::Spawn {
                binary: "runc".into(),
                source,
            })?;
        self.outcome(status)
    }

    /// Hangs up, gives the program [`HANGUP_GRACE`], then kills its
    /// process group; its exit code as [`Terminal::wait`].
    pub async fn end(&mut self) -> Result<i32, RuntimeError> {
        self.hang_up();
        let status = match tokio::time::timeout(HANGUP_GRACE, self.runc.wait()).await {
            Ok(status) => status,
            Err(_) => {
                kill_group(&self.pid_file);
                match tokio::time::timeout(Duration::from_secs(5), self.runc.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        let _ = self.runc.kill().await;
                        self.runc.wait().await
                    }
                }
            }
        }
        .map_err(|source| RuntimeError::Spawn {
            binary: "runc".into(),
            source,
        })?;
        self.outcome(status)
    }

    fn outcome(&self, status: std::process::ExitStatus) -> Result<i32, RuntimeError> {
        let runc_said = std::fs::read_to_string(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(message) = runc_error(&runc_said) {
            return Err(RuntimeError::Failed {
                op: "exec",
                id: self.id.clone(),
                message,
            });
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // A terminal dropped unended: its program goes with it (runc is
        // killed on drop; what it ran is killed here).
        if self.runc.id().is_some() {
            kill_group(&self.pid_file);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn the_process_is_the_instances_own_with_the_program_and_a_sized_terminal() {
        let config = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},
            "args":["/init","--","web"],"env":["PATH=/bin","TERM=dumb","A=1"],"cwd":"/app",
            "capabilities":{"bounding":["CAP_CHOWN"]},"noNewPrivileges":true},"root":{"path":"rootfs"}}"#;
        let req = TerminalRequest {
            args: vec!["sh".into(), "-l".into()],
            cols: 132,
            rows: 40,
        };
        let p: serde_json::Value =
            serde_json::from_slice(&terminal_process(config, &req).expect("made")).expect("json");
        assert_eq!(p["args"], serde_json::json!(["sh", "-l"]));
        assert_eq!(
            p["env"],
            serde_json::json!(["PATH=/bin", "A=1", "TERM=xterm"])
        );
        assert_eq!(p["terminal"], true);
        assert_eq!(
            p["consoleSize"],
            serde_json::json!({"height": 40, "width": 132})
        );
        assert_eq!(p["cwd"], "/app");
        assert_eq!(
            p["capabilities"]["bounding"],
            serde_json::json!(["CAP_CHOWN"])
        );
        assert_eq!(p["noNewPrivileges"], true);
        assert!(terminal_process(b"{}", &req).is_err());
        assert!(terminal_process(b"not json", &req).is_err());
    }

    #[tokio::test]
    async fn the_near_end_reads_what_the_far_end_writes_and_its_end() {
        let (near, far) = pty_pair().expect("a pty");
        let pty = Pty::new(near).expect("registered");
        pty.set_size(100, 40).expect("sized");
        let size = rustix::termios::tcgetwinsize(&far).expect("size");
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        rustix::io::write(&far, b"out\n").expect("written");
        let mut buf = [0u8; 64];
        let n = pty.read(&mut buf).await.expect("read");
        // Raw mode: "\n" is not turned into "\r\n".
        assert_eq!(&buf[..n], b"out\n");
        pty.write_all(b"typed").await.expect("typed");
        let n = rustix::io::read(&far, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"typed", "raw mode: no line buffering, no echo");
        drop(far);
        let n = pty.read(&mut buf).await.expect("the end is not an error");
        assert_eq!(n, 0);
    }
}

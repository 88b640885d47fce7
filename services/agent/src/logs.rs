//! Container output → the service's logs subject, line by line.
//!
//! Each instance has two FIFOs (stdout, stderr). The container's fd 1/2
//! are the FIFO opened *read-write*: a write never fails with EPIPE while
//! the agent is away (it blocks once the 64 KiB pipe buffer is full), and
//! a restarted agent re-opens the same FIFOs and carries on. The agent
//! opens its read end before the container is created, so output of a
//! process that exits at once stays buffered until it is read; EOF comes
//! when the container's last process exits.
//!
//! An instance's output is published within a line budget ([`LogRate`]):
//! a program printing as fast as it can would otherwise load the bus the
//! control plane shares, and push every other service's lines out of the
//! logs stream. Lines over the budget are dropped (the program never
//! waits on its output, as it would if the pipe were left unread), and
//! the logs say how many, before the next line that goes out (at most
//! once a second while the flood lasts) and after the last.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::logs::system_text;
pub use berth_schemas::logs::{LogLine, Stream};
use chrono::Utc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::{agent_io, AgentError};

/// Longest run of output without a newline held before it is published
/// (as several messages, each within the logs stream's
/// [`MAX_LOG_MESSAGE`](berth_schemas::logs::MAX_LOG_MESSAGE)): a process writing no newline cannot make the
/// agent buffer without end.
pub const MAX_LINE: usize = 16 * 1024;

/// How many lines of output one run of an instance may publish: `burst`
/// at once, then `lines_per_sec` (both streams together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRate {
    pub lines_per_sec: u32,
    pub burst: u32,
}

impl Default for LogRate {
    /// 2,000 lines a second (a busy web instance logging each request
    /// stays well within it), and a burst of ten seconds' worth (a
    /// start-up dump, a long stack trace).
    fn default() -> Self {
        LogRate {
            lines_per_sec: 2_000,
            burst: 20_000,
        }
    }
}

/// One run's budget of lines, shared by its stdout and stderr pumps.
#[derive(Debug)]
pub struct LineBudget {
    rate: LogRate,
    state: Mutex<Budget>,
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: Instant,
    dropped: u64,
    /// When dropped lines were last said.
    said: Option<Instant>,
}

/// How often dropped lines are said while output keeps coming faster
/// than the budget: once a second, not before every line that goes out
/// (the budget refills a line at a time).
const SAY_DROPPED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl LineBudget {
    /// A full budget at `rate`.
    pub fn new(rate: LogRate) -> Self {
        LineBudget {
            rate,
            state: Mutex::new(Budget {
                tokens: f64::from(rate.burst),
                at: Instant::now(),
                dropped: 0,
                said: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a line may go out at `now`: `Some(n)` when it may, `n`
    /// being the lines dropped and not yet said, to be said first (0 when
    /// none were, or they were said less than [`SAY_DROPPED_EVERY`] ago:
    /// they are said later); `None` when it is dropped.
    fn take(&self, now: Instant) -> Option<u64> {
        let mut b = self.lock();
        let refill =
            now.saturating_duration_since(b.at).as_secs_f64() * f64::from(self.rate.lines_per_sec);
        b.tokens = (b.tokens + refill).min(f64::from(self.rate.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let due = b
                .said
                .is_none_or(|t| now.saturating_duration_since(t) >= SAY_DROPPED_EVERY);
            if b.dropped == 0 || !due {
                return Some(0);
            }
            b.said = Some(now);
            Some(std::mem::take(&mut b.dropped))
        } else {
            b.dropped += 1;
            None
        }
    }

    /// The lines dropped and not yet said, now said to be.
    fn untold(&self) -> u64 {
        std::mem::take(&mut self.lock().dropped)
    }

    /// What the logs say about `n` dropped lines.
    fn dropped_message(&self, n: u64) -> String {
        format!(
            "{n} lines of output dropped: the instance printed more than {} lines a second (after a burst of {})",
            self.rate.lines_per_sec, self.rate.burst
        )
    }
}

/// Make the FIFO at `path` if it is not there, writable by any user.
///
/// A program that opens `/dev/stdout` or `/dev/stderr` (nginx's and
/// httpd's images link their log files there) opens the FIFO again
/// through `/proc/self/fd`, and that open is checked against the FIFO's
/// own mode: made by the node's root with 0600, it was refused to every
/// user of the instance but the host's root — a `USER` other than root,
/// and every user of an instance in a user namespace, root included
/// (nginx: `open() "/var/log/nginx/error.log" failed (13: Permission
/// denied)`). Others may write (0622): the FIFO sits in the instance's
/// private directory, which no other user of the host can pass, and
/// inside the instance only its own file descriptors lead to it.
pub fn ensure_fifo(path: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::symlink_metadata(path).is_err() {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| agent_io(path)(std::io::Error::from(e)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FIFO_MODE))
        .map_err(agent_io(path))
}

/// The mode of an instance's output FIFOs (see [`ensure_fifo`]).
const FIFO_MODE: u32 = 0o622;

/// The container's end: the FIFO opened read-write (see module docs).
pub fn open_writer(path: &Path) -> Result<File, AgentError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(agent_io(path))
}

/// The agent's end (non-blocking; must be opened before the writer goes
/// away so buffered output survives).
pub fn open_reader(path: &Path) -> Result<pipe::Receiver, AgentError> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(agent_io(path))
}

/// Where lines go.
#[derive(Debug, Clone)]
pub struct LogSink {
    /// NATS client.
    pub client: async_nats::Client,
    /// `subjects.logs(service)`.
    pub subject: String,
    /// Service.
    pub service: ServiceId,
    /// Instance.
    pub instance: InstanceId,
}

impl LogSink {
    /// Publishes berth's own line about the instance among its output
    /// ([`Stream::System`]: `==> What happened`).
    pub async fn say(&self, what: &str) {
        self.publish(Stream::System, system_text(what).as_bytes())
            .await;
    }

    /// Publishes one line, cut into as many messages as it takes to keep
    /// each within [`MAX_LOG_MESSAGE`](berth_schemas::logs::MAX_LOG_MESSAGE) once encoded: the logs stream
    /// refuses larger ones.
    async fn publish(&self, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let line = LogLine {
            service: self.service.clone(),
            instance: Some(self.instance.clone()),
            stream,
            line: String::new(),
            time: Utc::now(),
        };
        for payload in line.payloads(&text) {
            // Core NATS: logs are best effort; a slow or absent reader must
            // never stall the container.
            if let Err(e) = self
                .client
                .publish(self.subject.clone(), payload.into())
                .await
            {
                tracing::debug!(instance = %self.instance, error = %e, "log line not published");
            }
        }
    }
}

/// A command as a shell would read it back: each word bare when it holds
/// only characters no shell treats specially, else in single quotes.
pub fn command_line(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    let word = |a: &String| {
        if !a.is_empty() && a.chars().all(plain) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter().map(word).collect::<Vec<_>>().join(" ")
}

/// Publishes `bytes` if `budget` lets it, saying first how many lines it
/// dropped before; 1 when it went out.
async fn emit(sink: &LogSink, budget: &LineBudget, stream: Stream, bytes: &[u8]) -> u64 {
    match budget.take(Instant::now()) {
        Some(dropped) => {
            if dropped > 0 {
                sink.say(&budget.dropped_message(dropped)).await;
            }
            sink.publish(stream, bytes).await;
            1
        }
        None => 0,
    }
}

/// Read `reader` to EOF, publishing each line (a final unterminated
/// fragment too) within `budget`. Returns the number of lines published.
pub async fn pump(
    mut reader: pipe::Receiver,
    stream: Stream,
    sink: LogSink,
    budget: std::sync::Arc<LineBudget>,
) -> u64 {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 8192];
    let mut lines = 0u64;
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(instance = %sink.instance, stream = stream.name(), error = %e, "log read failed");
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|b| *b == b'\n') {
            lines += emit(&sink, &budget, stream, &buf[start..start + i]).await;
            start += i + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            lines += emit(&sink, &budget, stream, &buf[..MAX_LINE]).await;
            buf.drain(..MAX_LINE);
        }
    }
    if !buf.is_empty() {
        lines += emit(&sink, &budget, stream, &buf).await;
    }
    let untold = budget.untold();
    if untold > 0 {
        sink.say(&budget.dropped_message(untold)).await;
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{command_line, LineBudget, LogRate};

    #[test]
    fn a_burst_passes_then_the_rate_and_drops_are_counted() {
        let b = LineBudget::new(LogRate {
            lines_per_sec: 10,
            burst: 3,
        });
        let t0 = std::time::Instant::now();
        let taken: Vec<Option<u64>> = (0..5).map(|_| b.take(t0)).collect();
        assert_eq!(taken, [Some(0), Some(0), Some(0), None, None]);
        // A tenth of a second later one more goes, after the two dropped.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(t1), Some(2));
        assert_eq!(b.take(t1), None);
        // Still flooding: the next lines that go out within the second
        // say nothing; the count is said a second after the last time.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(b.take(t2), Some(0));
        assert_eq!(b.take(t2), None);
        let t3 = t1 + Duration::from_secs(1);
        assert_eq!(b.take(t3), Some(2));
        assert_eq!(b.take(t3), Some(0), "refilled, nothing dropped since");
        assert_eq!(b.take(t3), Some(0));
        assert_eq!(b.take(t3), None);
        assert_eq!(b.untold(), 1);
        assert_eq!(b.untold(), 0);
        // Never more than the burst, however long it was quiet.
        let t4 = t3 + Duration::from_secs(3600);
        let taken = (0..5).filter(|_| b.take(t4).is_some()).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn commands_read_back_as_a_shell_would() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&args(&["/bin/app", "--port=8080", "a.b/c"])),
            "/bin/app --port=8080 a.b/c"
        );
        assert_eq!(
            command_line(&args(&["sh", "-c", "echo hi && it's $HOME", ""])),
            r#"sh -c 'echo hi && it'\''s $HOME' ''"#
        );
    }
}

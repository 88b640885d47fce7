//! Container output → the service's logs subject, line by line.
//!
//! Each instance has two FIFOs (stdout, stderr). The container's fd 1/2
//! are the FIFO opened *read-write*: a write never fails with EPIPE while
//! the agent is away (it blocks once the 64 KiB pipe buffer is full), and
//! a restarted agent re-opens the same FIFOs and carries on. The agent
//! opens its read end before the container is created, so output of a
//! process that exits at once stays buffered until it is read; EOF comes
//! when the container's last process exits.

use std::fs::{File, OpenOptions};
use std::path::Path;

use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::logs::{pieces, system_text, MAX_LOG_MESSAGE};
pub use berth_schemas::logs::{LogLine, Stream};
use chrono::Utc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::{agent_io, AgentError};

/// Longest run of output without a newline held before it is published
/// (as several messages, each within the logs stream's
/// [`MAX_LOG_MESSAGE`]): a process writing no newline cannot make the
/// agent buffer without end.
pub const MAX_LINE: usize = 16 * 1024;

/// Make the FIFO at `path` if it is not there.
pub fn ensure_fifo(path: &Path) -> Result<(), AgentError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| agent_io(path)(std::io::Error::from(e)))
}

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
    /// each within [`MAX_LOG_MESSAGE`] once encoded: the logs stream
    /// refuses larger ones.
    async fn publish(&self, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut line = LogLine {
            service: self.service.clone(),
            instance: self.instance.clone(),
            stream,
            line: String::new(),
            time: Utc::now(),
        };
        let Ok(envelope) = serde_json::to_vec(&line) else {
            return;
        };
        let budget = MAX_LOG_MESSAGE.saturating_sub(envelope.len());
        for piece in pieces(&text, budget) {
            piece.clone_into(&mut line.line);
            let Ok(payload) = serde_json::to_vec(&line) else {
                return;
            };
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

/// Read `reader` to EOF, publishing each line (a final unterminated
/// fragment too). Returns the number of lines published.
pub async fn pump(mut reader: pipe::Receiver, stream: Stream, sink: LogSink) -> u64 {
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
            sink.publish(stream, &buf[start..start + i]).await;
            lines += 1;
            start += i + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            sink.publish(stream, &buf[..MAX_LINE]).await;
            lines += 1;
            buf.drain(..MAX_LINE);
        }
    }
    if !buf.is_empty() {
        sink.publish(stream, &buf).await;
        lines += 1;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::command_line;

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

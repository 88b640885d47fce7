//! Watching a container's process from the host: its exit status when the
//! agent is its (sub)reaper, liveness by pid and start time when it is not
//! (a container adopted from a previous agent process), and the restart
//! backoff.

use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// Ended while the agent was not its parent (adopted after an agent
    /// restart): the code was reaped by someone else.
    Unknown,
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks), or `None`
/// when the process is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // rest starts at field 3 (state); start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// When process `pid` started, as wall-clock time (the boot time from
/// `/proc/stat` plus its start in clock ticks, at Linux's fixed 100 per
/// second for user space); `None` when it is gone.
pub fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    let ticks = start_time(pid)?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = std::time::Duration::from_millis(ticks.saturating_mul(10));
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
}

/// Whether `pid` is still the process that started at `started`.
pub fn alive(pid: u32, started: Option<u64>) -> bool {
    match (start_time(pid), started) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Wait for container process `pid` to end. When the agent is its parent
/// (it is a subreaper, and runc's create exits) the status is reaped;
/// otherwise liveness is polled and the status is [`ExitStatus::Unknown`].
pub async fn wait_exit(pid: u32, started: Option<u64>, poll: Duration) -> ExitStatus {
    let Ok(raw) = i32::try_from(pid) else {
        return ExitStatus::Unknown;
    };
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ExitStatus::Signal(sig as i32),
            Ok(_) => {}
            // Not our child: watch it instead.
            Err(_) => {
                if !alive(pid, started) {
                    return ExitStatus::Unknown;
                }
            }
        }
        match sigchld.as_mut() {
            Some(s) => {
                let _ = tokio::time::timeout(poll, s.recv()).await;
            }
            None => tokio::time::sleep(poll).await,
        }
    }
}

/// Restart backoff: `initial` doubling to `max`; a run that lasted
/// `healthy_after` resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    /// SPEC: 10 s doubling to 5 min; ten healthy minutes reset it.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            healthy_after: Duration::from_secs(600),
        }
    }
}

impl RestartPolicy {
    /// The delay after a run of `ran`, given the previous delay.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(p) if ran < self.healthy_after => p.saturating_mul(2).min(self.max),
            _ => self.initial.min(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let p = RestartPolicy::default();
        let s = Duration::from_secs;
        let mut d = None;
        let mut seen = vec![];
        for _ in 0..7 {
            let n = p.next(d, s(1));
            seen.push(n.as_secs());
            d = Some(n);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(p.next(d, s(601)), s(10));
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id();
        let t = start_time(me);
        assert!(t.is_some());
        assert!(alive(me, t));
        assert!(!alive(me, t.map(|t| t + 1)));
        assert!(!alive(u32::MAX - 1, None));
    }
}

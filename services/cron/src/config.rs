//! The cron component's settings (flags or `BERTH_CRON_*` variables) and
//! its clock.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Cron options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CronArgs {
    /// Longest a run may take before it is stopped and recorded
    /// `timed_out`, in seconds (SPEC §10: 12 h).
    #[arg(long, env = "BERTH_CRON_RUN_TIMEOUT_SECS", default_value_t = 12 * 3600)]
    pub cron_run_timeout_secs: u32,

    /// How often due times are checked, in milliseconds.
    #[arg(long, env = "BERTH_CRON_TICK_MS", default_value_t = 1000)]
    pub cron_tick_ms: u64,

    /// Runs dispatched at once.
    #[arg(long, env = "BERTH_CRON_CONCURRENCY", default_value_t = 8)]
    pub cron_concurrency: usize,

    /// A job still pending, or a cron run started and given to no node,
    /// this many seconds after it was recorded is dispatched again (its
    /// dispatch came to nothing: dead-lettered after its retries, lost);
    /// 0 turns the sweep off.
    #[arg(long, env = "BERTH_CRON_STUCK_AFTER_SECS", default_value_t = 30)]
    pub cron_stuck_after_secs: u64,
}

/// What time it is for the schedule.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Wall-clock UTC.
    System,
    /// Time running `factor` times faster than the wall clock from when the
    /// clock was made (tests: factor 60 makes `* * * * *` fire every second).
    Accelerated {
        origin: DateTime<Utc>,
        started: Instant,
        factor: u32,
    },
}

impl Clock {
    /// A clock `factor` times faster than the wall clock, from now.
    pub fn accelerated(factor: u32) -> Self {
        Clock::Accelerated {
            origin: Utc::now(),
            started: Instant::now(),
            factor: factor.max(1),
        }
    }

    /// The current time on this clock (never behind the wall clock).
    pub fn now(&self) -> DateTime<Utc> {
        match *self {
            Clock::System => Utc::now(),
            Clock::Accelerated {
                origin,
                started,
                factor,
            } => {
                let elapsed = started.elapsed().saturating_mul(factor);
                origin + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
            }
        }
    }
}

/// Validated cron options.
#[derive(Debug, Clone)]
pub struct CronOptions {
    /// A run's timeout, handed to the node with each run.
    pub run_timeout: Duration,
    /// A run still active this long after its timeout (its node never
    /// reported) is recorded `timed_out` by the cron component itself.
    pub cap_grace: Duration,
    /// How often due times are checked.
    pub tick: Duration,
    /// Runs dispatched at once.
    pub concurrency: usize,
    /// Durable consumer name on the event stream.
    pub consumer: String,
    /// Seconds a dispatch may stay unacknowledged before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before a dispatch is dead-lettered.
    pub max_deliver: i64,
    /// Snapshot key of the cron view.
    pub snapshot_key: String,
    /// A job pending, or a run given to no node, this long is dispatched
    /// again; `None`: never.
    pub stuck_after: Option<Duration>,
    /// What time it is.
    pub clock: Clock,
}

impl Default for CronOptions {
    fn default() -> Self {
        Self {
            run_timeout: Duration::from_secs(12 * 3600),
            cap_grace: Duration::from_secs(300),
            tick: Duration::from_secs(1),
            concurrency: 8,
            consumer: "cron".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            snapshot_key: "cron-view".to_owned(),
            stuck_after: Some(Duration::from_secs(30)),
            clock: Clock::System,
        }
    }
}

impl CronArgs {
    /// Checks every option; returns all problems at once.
    pub fn validate(&self) -> Result<CronOptions, Vec<String>> {
        let mut problems = Vec::new();
        if self.cron_run_timeout_secs == 0 {
            problems.push("BERTH_CRON_RUN_TIMEOUT_SECS must be > 0".to_owned());
        }
        if !(10..=60_000).contains(&self.cron_tick_ms) {
            problems.push("BERTH_CRON_TICK_MS must be 10-60000".to_owned());
        }
        if self.cron_concurrency == 0 || self.cron_concurrency > 1024 {
            problems.push("BERTH_CRON_CONCURRENCY must be 1-1024".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CronOptions {
            run_timeout: Duration::from_secs(u64::from(self.cron_run_timeout_secs)),
            tick: Duration::from_millis(self.cron_tick_ms),
            concurrency: self.cron_concurrency,
            stuck_after: (self.cron_stuck_after_secs > 0)
                .then(|| Duration::from_secs(self.cron_stuck_after_secs)),
            ..CronOptions::default()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CronArgs,
    }

    #[test]
    fn defaults_and_problems() {
        let o = Cli::parse_from(["x"]).args.validate().unwrap();
        assert_eq!(o.run_timeout, Duration::from_secs(12 * 3600));
        assert_eq!(o.stuck_after, Some(Duration::from_secs(30)));
        let off = Cli::parse_from(["x", "--cron-stuck-after-secs", "0"]);
        assert_eq!(off.args.validate().unwrap().stuck_after, None);
        let bad = Cli::parse_from([
            "x",
            "--cron-run-timeout-secs",
            "0",
            "--cron-tick-ms",
            "1",
            "--cron-concurrency",
            "0",
        ]);
        assert_eq!(bad.args.validate().unwrap_err().len(), 3);
    }

    #[test]
    fn an_accelerated_clock_runs_ahead() {
        let c = Clock::accelerated(60);
        std::thread::sleep(Duration::from_millis(100));
        let ahead = c.now() - Utc::now();
        assert!(ahead >= chrono::Duration::seconds(5), "{ahead}");
    }
}

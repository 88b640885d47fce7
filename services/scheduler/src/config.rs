//! The scheduler's settings (flags or `BERTH_SCHEDULER_*` variables),
//! validated together before anything starts.

use std::time::Duration;

use berth_domain::scheduler::DEFAULT_READINESS_WINDOW;

/// Scheduler options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// A node silent for longer than this (milliseconds) is declared lost
    /// and its instances are rescheduled.
    #[arg(
        long,
        env = "BERTH_SCHEDULER_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub scheduler_heartbeat_timeout_ms: u64,

    /// Every service is reconciled this often (milliseconds), besides on
    /// each of its events, so timers and lost nodes are caught after a restart.
    #[arg(long, env = "BERTH_SCHEDULER_SWEEP_MS", default_value_t = 30_000)]
    pub scheduler_sweep_ms: u64,

    /// Seconds a deploy's new instances have to become healthy (SPEC §6).
    #[arg(
        long,
        env = "BERTH_SCHEDULER_READINESS_WINDOW_SECS",
        default_value_t = DEFAULT_READINESS_WINDOW.as_secs()
    )]
    pub scheduler_readiness_window_secs: u64,

    /// Seconds a pre-deploy command may run before it is killed.
    #[arg(
        long,
        env = "BERTH_SCHEDULER_PRE_DEPLOY_TIMEOUT_SECS",
        default_value_t = 1800
    )]
    pub scheduler_pre_deploy_timeout_secs: u32,

    /// Services reconciled at once.
    #[arg(long, env = "BERTH_SCHEDULER_CONCURRENCY", default_value_t = 8)]
    pub scheduler_concurrency: usize,

    /// Milliseconds a healthy web instance is out of routing before it is
    /// sent its stop (0: stop at once).
    #[arg(long, env = "BERTH_SCHEDULER_DRAIN_MS", default_value_t = 1000)]
    pub scheduler_drain_ms: u64,

    /// How often (milliseconds) the autoscaler reads autoscaled services'
    /// use and decides; no less often than the nodes sample it
    /// (`BERTH_NODE_USAGE_MS`). An instance not sampled for three of these
    /// no longer counts.
    #[arg(long, env = "BERTH_SCHEDULER_AUTOSCALE_MS", default_value_t = 15_000)]
    pub scheduler_autoscale_ms: u64,

    /// Seconds after an autoscaled service's instance count changed before
    /// its use counts again (new instances start cold).
    #[arg(
        long,
        env = "BERTH_SCHEDULER_AUTOSCALE_SETTLE_SECS",
        default_value_t = 30
    )]
    pub scheduler_autoscale_settle_secs: u64,

    /// Seconds an autoscaled service's use must have wanted fewer
    /// instances, at every look, before instances are removed.
    #[arg(
        long,
        env = "BERTH_SCHEDULER_AUTOSCALE_DOWN_SECS",
        default_value_t = 300
    )]
    pub scheduler_autoscale_down_secs: u64,
}

/// Validated scheduler options.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub heartbeat_timeout: Duration,
    pub sweep_interval: Duration,
    pub readiness_window: Duration,
    pub pre_deploy_timeout_secs: u32,
    /// How long past its timeout a pre-deploy run may take to be reported
    /// before its node is assumed to have died with it.
    pub pre_deploy_grace: Duration,
    /// After a node failed to pull the live deploy's image, no more of its
    /// instances are placed for this long.
    pub pull_backoff: Duration,
    pub concurrency: usize,
    /// Ack wait of the event consumer.
    pub ack_wait: Duration,
    /// Deliveries of one event before it is dead-lettered.
    pub max_deliver: i64,
    /// Delay before a failed delivery is redelivered (times the delivery count).
    pub retry_delay: Duration,
    /// Durable consumer name on the event stream (shared by every copy).
    pub consumer: String,
    /// The `PORT` web and private services listen on (SPEC §10).
    pub default_port: u16,
    /// How long a healthy web instance is out of routing before its stop.
    pub drain_delay: Duration,
    /// How often the autoscaler looks.
    pub autoscale_every: Duration,
    /// When the autoscaler counts a look, and when it removes instances.
    pub autoscale: berth_domain::service::autoscaling::Timings,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(15),
            sweep_interval: Duration::from_secs(30),
            readiness_window: DEFAULT_READINESS_WINDOW,
            pre_deploy_timeout_secs: 1800,
            pre_deploy_grace: Duration::from_secs(60),
            pull_backoff: Duration::from_secs(60),
            concurrency: 8,
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            retry_delay: Duration::from_millis(500),
            consumer: "scheduler".to_owned(),
            default_port: 10000,
            drain_delay: Duration::from_secs(1),
            autoscale_every: Duration::from_secs(15),
            autoscale: berth_domain::service::autoscaling::Timings::default(),
        }
    }
}

impl SchedulerArgs {
    /// Checks every option; returns all problems at once.
    pub fn validate(&self) -> Result<SchedulerOptions, Vec<String>> {
        let mut problems = Vec::new();
        if self.scheduler_heartbeat_timeout_ms < 100 {
            problems.push("BERTH_SCHEDULER_HEARTBEAT_TIMEOUT_MS must be >= 100".to_owned());
        }
        if self.scheduler_sweep_ms < 100 {
            problems.push("BERTH_SCHEDULER_SWEEP_MS must be >= 100".to_owned());
        }
        if self.scheduler_readiness_window_secs == 0 {
            problems.push("BERTH_SCHEDULER_READINESS_WINDOW_SECS must be > 0".to_owned());
        }
        if self.scheduler_pre_deploy_timeout_secs == 0 {
            problems.push("BERTH_SCHEDULER_PRE_DEPLOY_TIMEOUT_SECS must be > 0".to_owned());
        }
        if self.scheduler_concurrency == 0 || self.scheduler_concurrency > 1024 {
            problems.push("BERTH_SCHEDULER_CONCURRENCY must be 1-1024".to_owned());
        }
        if self.scheduler_drain_ms > 60_000 {
            problems.push("BERTH_SCHEDULER_DRAIN_MS must be 0-60000".to_owned());
        }
        if !(100..=600_000).contains(&self.scheduler_autoscale_ms) {
            problems.push("BERTH_SCHEDULER_AUTOSCALE_MS must be 100-600000".to_owned());
        }
        if self.scheduler_autoscale_settle_secs > 3600 {
            problems.push("BERTH_SCHEDULER_AUTOSCALE_SETTLE_SECS must be 0-3600".to_owned());
        }
        if !(1..=86_400).contains(&self.scheduler_autoscale_down_secs) {
            problems.push("BERTH_SCHEDULER_AUTOSCALE_DOWN_SECS must be 1-86400".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(SchedulerOptions {
            autoscale_every: Duration::from_millis(self.scheduler_autoscale_ms),
            autoscale: berth_domain::service::autoscaling::Timings {
                settle: Duration::from_secs(self.scheduler_autoscale_settle_secs),
                scale_down_after: Duration::from_secs(self.scheduler_autoscale_down_secs),
            },
            drain_delay: Duration::from_millis(self.scheduler_drain_ms),
            heartbeat_timeout: Duration::from_millis(self.scheduler_heartbeat_timeout_ms),
            sweep_interval: Duration::from_millis(self.scheduler_sweep_ms),
            readiness_window: Duration::from_secs(self.scheduler_readiness_window_secs),
            pre_deploy_timeout_secs: self.scheduler_pre_deploy_timeout_secs,
            concurrency: self.scheduler_concurrency,
            ..SchedulerOptions::default()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        s: SchedulerArgs,
    }

    #[test]
    fn defaults_validate_and_bad_values_are_all_reported() {
        let ok = Cli::parse_from(["x"]).s.validate().unwrap();
        assert_eq!(ok.heartbeat_timeout, Duration::from_secs(15));
        let bad = Cli::parse_from([
            "x",
            "--scheduler-heartbeat-timeout-ms",
            "1",
            "--scheduler-concurrency",
            "0",
        ])
        .s
        .validate()
        .unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}

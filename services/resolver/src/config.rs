//! The resolver's own settings (flags or `BERTH_RESOLVER_*` variables),
//! validated together before anything starts.

use std::time::Duration;

use berth_oci::{ClientConfig, RetryPolicy};

/// Resolver options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolverArgs {
    /// Largest accepted image: config plus layers, compressed, in bytes (SPEC §5).
    #[arg(
        long,
        env = "BERTH_RESOLVER_MAX_IMAGE_BYTES",
        default_value_t = 10_000_000_000
    )]
    pub resolver_max_image_bytes: u64,

    /// First wait before retrying a transient registry failure, in milliseconds.
    #[arg(long, env = "BERTH_RESOLVER_RETRY_BASE_MS", default_value_t = 10_000)]
    pub resolver_retry_base_ms: u64,

    /// Cap of the doubling retry wait, in milliseconds.
    #[arg(long, env = "BERTH_RESOLVER_RETRY_CAP_MS", default_value_t = 300_000)]
    pub resolver_retry_cap_ms: u64,

    /// Total time a deploy's resolve may spend retrying, in milliseconds.
    #[arg(long, env = "BERTH_RESOLVER_RETRY_TOTAL_MS", default_value_t = 900_000)]
    pub resolver_retry_total_ms: u64,

    /// Total time a service-creation check may spend retrying, in
    /// milliseconds; the caller is waiting, so it is much shorter.
    #[arg(
        long,
        env = "BERTH_RESOLVER_CHECK_RETRY_TOTAL_MS",
        default_value_t = 20_000
    )]
    pub resolver_check_retry_total_ms: u64,

    /// Registry hosts (`host[:port]`, comma separated) spoken to over plain
    /// http; loopback hosts always are.
    #[arg(
        long,
        env = "BERTH_RESOLVER_INSECURE_REGISTRIES",
        default_value = "",
        value_delimiter = ','
    )]
    pub resolver_insecure_registries: Vec<String>,

    /// Deploy resolutions handled at once.
    #[arg(long, env = "BERTH_RESOLVER_CONCURRENCY", default_value_t = 8)]
    pub resolver_concurrency: usize,

    /// Seconds a delivered event may go unacknowledged before redelivery
    /// (progress acks extend it while a resolve runs).
    #[arg(long, env = "BERTH_RESOLVER_ACK_WAIT_SECS", default_value_t = 30)]
    pub resolver_ack_wait_secs: u64,

    /// Deliveries of one event before it is dead-lettered.
    #[arg(long, env = "BERTH_RESOLVER_MAX_DELIVER", default_value_t = 5)]
    pub resolver_max_deliver: i64,

    /// Seconds between rollback-eligibility probes (HEAD of every service's
    /// live digest and last rollback targets); 0 turns them off.
    #[arg(
        long,
        env = "BERTH_RESOLVER_PROBE_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub resolver_probe_interval_secs: u64,

    /// Earlier deploys per service probed besides the live one.
    #[arg(long, env = "BERTH_RESOLVER_PROBE_TARGETS", default_value_t = 5)]
    pub resolver_probe_targets: usize,

    /// Seconds a deploy may wait for its digest before the resolver takes
    /// it up again by itself, whatever became of its `deploy_started`
    /// delivery (dead-lettered after its retries, lost in a partition);
    /// 0 turns this off.
    #[arg(long, env = "BERTH_RESOLVER_STUCK_AFTER_SECS", default_value_t = 30)]
    pub resolver_stuck_after_secs: u64,
}

/// Validated resolver options.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// Client settings for deploy resolution.
    pub deploy_client: ClientConfig,
    /// Client settings for service-creation checks (shorter retry budget).
    pub check_client: ClientConfig,
    /// Deploy resolutions at once.
    pub concurrency: usize,
    /// Ack wait of the deploy consumer.
    pub ack_wait: Duration,
    /// Deliveries before dead-lettering.
    pub max_deliver: i64,
    /// Delay before a failed delivery is redelivered (times the delivery count).
    pub retry_delay: Duration,
    /// Durable consumer name on the event stream.
    pub consumer: String,
    /// Time between rollback-eligibility probe passes; `None`: no probes.
    pub probe_interval: Option<Duration>,
    /// Earlier (deactivated) deploys probed per service besides the live one.
    pub probe_targets: usize,
    /// How long a deploy waits for its digest before the resolver takes
    /// it up again by itself; `None`: never.
    pub stuck_after: Option<Duration>,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        let deploy_client = ClientConfig::default();
        let check_client = ClientConfig {
            retry: RetryPolicy {
                max_total: Duration::from_secs(20),
                ..RetryPolicy::default()
            },
            ..ClientConfig::default()
        };
        Self {
            deploy_client,
            check_client,
            concurrency: 8,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_delay: Duration::from_secs(1),
            consumer: "resolver".to_owned(),
            probe_interval: Some(Duration::from_secs(600)),
            probe_targets: 5,
            stuck_after: Some(Duration::from_secs(30)),
        }
    }
}

impl ResolverArgs {
    /// Checks every option; returns all problems at once.
    pub fn validate(&self) -> Result<ResolverOptions, Vec<String>> {
        let mut problems = Vec::new();
        if self.resolver_max_image_bytes == 0 {
            problems.push("BERTH_RESOLVER_MAX_IMAGE_BYTES must be > 0".to_owned());
        }
        if self.resolver_retry_base_ms == 0
            || self.resolver_retry_base_ms > self.resolver_retry_cap_ms
        {
            problems.push(
                "BERTH_RESOLVER_RETRY_BASE_MS must be > 0 and <= BERTH_RESOLVER_RETRY_CAP_MS"
                    .to_owned(),
            );
        }
        if self.resolver_concurrency == 0 || self.resolver_concurrency > 1024 {
            problems.push("BERTH_RESOLVER_CONCURRENCY must be 1-1024".to_owned());
        }
        if self.resolver_ack_wait_secs == 0 {
            problems.push("BERTH_RESOLVER_ACK_WAIT_SECS must be > 0".to_owned());
        }
        if self.resolver_max_deliver < 1 {
            problems.push("BERTH_RESOLVER_MAX_DELIVER must be >= 1".to_owned());
        }
        let insecure = berth_oci::parse_insecure_hosts(
            &self.resolver_insecure_registries,
            "BERTH_RESOLVER_INSECURE_REGISTRIES",
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        let ms = Duration::from_millis;
        let retry = RetryPolicy {
            initial_backoff: ms(self.resolver_retry_base_ms),
            max_backoff: ms(self.resolver_retry_cap_ms),
            max_total: ms(self.resolver_retry_total_ms),
        };
        let deploy_client = ClientConfig {
            insecure_hosts: insecure,
            retry: retry.clone(),
            max_image_size: self.resolver_max_image_bytes,
            ..ClientConfig::default()
        };
        let check_client = ClientConfig {
            retry: RetryPolicy {
                max_total: ms(self.resolver_check_retry_total_ms),
                ..retry
            },
            ..deploy_client.clone()
        };
        Ok(ResolverOptions {
            deploy_client,
            check_client,
            concurrency: self.resolver_concurrency,
            ack_wait: Duration::from_secs(self.resolver_ack_wait_secs),
            max_deliver: self.resolver_max_deliver,
            probe_interval: (self.resolver_probe_interval_secs > 0)
                .then(|| Duration::from_secs(self.resolver_probe_interval_secs)),
            probe_targets: self.resolver_probe_targets,
            stuck_after: (self.resolver_stuck_after_secs > 0)
                .then(|| Duration::from_secs(self.resolver_stuck_after_secs)),
            ..ResolverOptions::default()
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
        args: ResolverArgs,
    }

    #[test]
    fn defaults_are_the_spec_values() {
        let o = Cli::parse_from(["x"]).args.validate().unwrap();
        assert_eq!(o.deploy_client.max_image_size, 10_000_000_000);
        assert_eq!(
            o.deploy_client.retry.initial_backoff,
            Duration::from_secs(10)
        );
        assert_eq!(o.deploy_client.retry.max_backoff, Duration::from_secs(300));
        assert!(o.check_client.retry.max_total < o.deploy_client.retry.max_total);
        assert!(o.deploy_client.is_insecure("127.0.0.1:5000"));
        assert!(!o.deploy_client.is_insecure("registry.lan:5000"));
        assert_eq!(o.probe_interval, Some(Duration::from_secs(600)));
        assert_eq!(o.probe_targets, 5);
        let off = Cli::parse_from(["x", "--resolver-probe-interval-secs", "0"]);
        assert_eq!(off.args.validate().unwrap().probe_interval, None);
    }

    #[test]
    fn every_problem_is_reported_together() {
        let cli = Cli::parse_from([
            "x",
            "--resolver-retry-base-ms",
            "9000",
            "--resolver-retry-cap-ms",
            "10",
            "--resolver-concurrency",
            "0",
            "--resolver-insecure-registries",
            "registry.lan:5000,bad host",
        ]);
        let problems = cli.args.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        let ok = Cli::parse_from(["x", "--resolver-insecure-registries", "registry.lan:5000"])
            .args
            .validate()
            .unwrap();
        assert!(ok.deploy_client.is_insecure("registry.lan:5000"));
    }
}

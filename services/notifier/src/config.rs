//! The notifier's settings (flags or `BERTH_NOTIFIER_*` variables). The SMTP
//! password is operator configuration, held as a [`Secret`] (redacted in
//! Debug) and never written to the log.

use std::time::Duration;

use berth_runtime::Secret;

use crate::channels::SmtpConfig;

/// Notifier options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct NotifierArgs {
    /// SMTP relay host for email notifications (empty: no email channel).
    #[arg(long, env = "BERTH_NOTIFIER_SMTP_HOST", default_value = "")]
    pub notifier_smtp_host: String,
    /// SMTP relay port (plain SMTP; TLS belongs to the relay).
    #[arg(long, env = "BERTH_NOTIFIER_SMTP_PORT", default_value_t = 25)]
    pub notifier_smtp_port: u16,
    /// Sender address of notification emails.
    #[arg(
        long,
        env = "BERTH_NOTIFIER_SMTP_FROM",
        default_value = "berth@localhost"
    )]
    pub notifier_smtp_from: String,
    /// SMTP login.
    #[arg(long, env = "BERTH_NOTIFIER_SMTP_USERNAME")]
    pub notifier_smtp_username: Option<String>,
    /// SMTP password (prefer the environment variable).
    #[arg(long, env = "BERTH_NOTIFIER_SMTP_PASSWORD", hide_env_values = true)]
    pub notifier_smtp_password: Option<String>,
    /// Seconds a delivery may stay unacknowledged before it is redelivered.
    #[arg(long, env = "BERTH_NOTIFIER_ACK_WAIT_SECS", default_value_t = 30)]
    pub notifier_ack_wait_secs: u64,
    /// Attempts per delivery before it is abandoned.
    #[arg(long, env = "BERTH_NOTIFIER_MAX_ATTEMPTS", default_value_t = 8)]
    pub notifier_max_attempts: i64,
    /// Retry delay in milliseconds, times the attempt number (15 s: the
    /// eight default attempts span about seven minutes).
    #[arg(long, env = "BERTH_NOTIFIER_RETRY_MS", default_value_t = 15_000)]
    pub notifier_retry_ms: u64,
    /// Seconds one send may take.
    #[arg(long, env = "BERTH_NOTIFIER_SEND_TIMEOUT_SECS", default_value_t = 10)]
    pub notifier_send_timeout_secs: u64,
    /// Deliveries in flight at once.
    #[arg(long, env = "BERTH_NOTIFIER_CONCURRENCY", default_value_t = 32)]
    pub notifier_concurrency: usize,
    /// Events older than this many seconds are not notified about (a first
    /// start on an existing log, a long outage).
    #[arg(
        long,
        env = "BERTH_NOTIFIER_MAX_EVENT_AGE_SECS",
        default_value_t = 3600
    )]
    pub notifier_max_event_age_secs: u64,
}

/// Validated notifier options.
#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Prefix of the durable consumers' names (`-stream`, `-decide`, `-deliver`).
    pub consumer: String,
    /// Email relay, if any.
    pub smtp: Option<SmtpConfig>,
    /// Redelivery after this long unacknowledged.
    pub ack_wait: Duration,
    /// Attempts before abandoning.
    pub max_attempts: i64,
    /// Retry delay (times the attempt number).
    pub retry_delay: Duration,
    /// Per-send timeout.
    pub send_timeout: Duration,
    /// Deliveries at once.
    pub concurrency: usize,
    /// Older events are not notified about.
    pub max_event_age: Duration,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        Self {
            consumer: "notifier".to_owned(),
            smtp: None,
            ack_wait: Duration::from_secs(30),
            max_attempts: 8,
            retry_delay: Duration::from_secs(15),
            send_timeout: crate::DEFAULT_SEND_TIMEOUT,
            concurrency: 32,
            max_event_age: Duration::from_secs(3600),
        }
    }
}

impl NotifierArgs {
    /// The options these arguments describe.
    pub fn options(&self) -> NotifierOptions {
        let smtp = (!self.notifier_smtp_host.is_empty()).then(|| SmtpConfig {
            host: self.notifier_smtp_host.clone(),
            port: self.notifier_smtp_port,
            from: self.notifier_smtp_from.clone(),
            username: self.notifier_smtp_username.clone(),
            password: self.notifier_smtp_password.clone().map(Secret::new),
        });
        NotifierOptions {
            consumer: "notifier".to_owned(),
            smtp,
            ack_wait: Duration::from_secs(self.notifier_ack_wait_secs.max(1)),
            max_attempts: self.notifier_max_attempts.max(1),
            retry_delay: Duration::from_millis(self.notifier_retry_ms),
            send_timeout: Duration::from_secs(self.notifier_send_timeout_secs.max(1)),
            concurrency: self.notifier_concurrency.max(1),
            max_event_age: Duration::from_secs(self.notifier_max_event_age_secs),
        }
    }
}

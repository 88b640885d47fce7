//! The notifier's settings (flags or `BERTH_NOTIFIER_*` variables). The SMTP
//! password is operator configuration, held as a [`Secret`] (redacted in
//! Debug) and never written to the log.

use std::time::Duration;

use berth_runtime::{AddressPolicy, Secret};

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
    /// Internal addresses Slack and webhook URLs may be. Loopback unless
    /// the binary applies `BERTH_ALLOW_TARGETS` (a setting shared by every
    /// component, so not one of the notifier's own).
    pub targets: AddressPolicy,
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
            targets: AddressPolicy::LOOPBACK,
        }
    }
}

impl NotifierArgs {
    /// Checks every option; returns all problems at once (`berth up` exits
    /// 64 on them rather than quietly running with something else).
    pub fn validate(&self) -> Result<NotifierOptions, Vec<String>> {
        let mut problems = Vec::new();
        if self.notifier_ack_wait_secs == 0 || self.notifier_ack_wait_secs > 3600 {
            problems.push("BERTH_NOTIFIER_ACK_WAIT_SECS must be 1-3600".to_owned());
        }
        if !(1..=100).contains(&self.notifier_max_attempts) {
            problems.push("BERTH_NOTIFIER_MAX_ATTEMPTS must be 1-100".to_owned());
        }
        if self.notifier_retry_ms > 3_600_000 {
            problems.push("BERTH_NOTIFIER_RETRY_MS must be at most 3600000 (1 h)".to_owned());
        }
        if self.notifier_send_timeout_secs == 0 || self.notifier_send_timeout_secs > 300 {
            problems.push("BERTH_NOTIFIER_SEND_TIMEOUT_SECS must be 1-300".to_owned());
        }
        if self.notifier_concurrency == 0 || self.notifier_concurrency > 1024 {
            problems.push("BERTH_NOTIFIER_CONCURRENCY must be 1-1024".to_owned());
        }
        if self.notifier_max_event_age_secs == 0 {
            problems.push("BERTH_NOTIFIER_MAX_EVENT_AGE_SECS must be > 0".to_owned());
        }
        let host = self.notifier_smtp_host.trim();
        if host != self.notifier_smtp_host || host.contains(char::is_whitespace) {
            problems.push("BERTH_NOTIFIER_SMTP_HOST must be a host name without spaces".to_owned());
        }
        if !host.is_empty() {
            if self.notifier_smtp_port == 0 {
                problems.push("BERTH_NOTIFIER_SMTP_PORT must be 1-65535".to_owned());
            }
            if self.notifier_smtp_from.parse::<lettre::Address>().is_err() {
                problems.push(format!(
                    "BERTH_NOTIFIER_SMTP_FROM {:?} is not an email address",
                    self.notifier_smtp_from
                ));
            }
            if self.notifier_smtp_password.is_some() && self.notifier_smtp_username.is_none() {
                problems.push(
                    "BERTH_NOTIFIER_SMTP_PASSWORD needs BERTH_NOTIFIER_SMTP_USERNAME".to_owned(),
                );
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let smtp = (!host.is_empty()).then(|| SmtpConfig {
            host: host.to_owned(),
            port: self.notifier_smtp_port,
            from: self.notifier_smtp_from.clone(),
            username: self.notifier_smtp_username.clone(),
            password: self.notifier_smtp_password.clone().map(Secret::new),
        });
        Ok(NotifierOptions {
            consumer: "notifier".to_owned(),
            smtp,
            ack_wait: Duration::from_secs(self.notifier_ack_wait_secs),
            max_attempts: self.notifier_max_attempts,
            retry_delay: Duration::from_millis(self.notifier_retry_ms),
            send_timeout: Duration::from_secs(self.notifier_send_timeout_secs),
            concurrency: self.notifier_concurrency,
            max_event_age: Duration::from_secs(self.notifier_max_event_age_secs),
            targets: NotifierOptions::default().targets,
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
        args: NotifierArgs,
    }

    fn parse(flags: &[&str]) -> NotifierArgs {
        let mut argv = vec!["notifier"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let o = parse(&[]).validate().unwrap();
        assert!(o.smtp.is_none());
        assert_eq!(o.max_attempts, 8);
        assert_eq!(o.ack_wait, Duration::from_secs(30));
        assert_eq!(o.concurrency, 32);
    }

    #[test]
    fn bad_values_are_reported_together_not_clamped() {
        let problems = parse(&[
            "--notifier-max-attempts",
            "0",
            "--notifier-concurrency",
            "0",
            "--notifier-ack-wait-secs",
            "0",
            "--notifier-smtp-host",
            "mail.example",
            "--notifier-smtp-from",
            "not an address",
            "--notifier-smtp-password",
            "hunter2",
        ])
        .validate()
        .unwrap_err();
        let text = problems.join("\n");
        for var in [
            "MAX_ATTEMPTS",
            "CONCURRENCY",
            "ACK_WAIT_SECS",
            "SMTP_FROM",
            "SMTP_USERNAME",
        ] {
            assert!(text.contains(var), "{var} not reported in:\n{text}");
        }
        assert!(!text.contains("hunter2"), "the password is echoed: {text}");
    }

    #[test]
    fn an_smtp_relay_is_configured_from_the_flags() {
        let o = parse(&[
            "--notifier-smtp-host",
            "mail.example",
            "--notifier-smtp-port",
            "2525",
            "--notifier-smtp-from",
            "berth@example.org",
        ])
        .validate()
        .unwrap();
        let smtp = o.smtp.unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example", 2525));
    }
}

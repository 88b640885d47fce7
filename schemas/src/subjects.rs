//! Subject and stream names. Every name derives from one prefix (`berth` in
//! production) so that tests, and several installations sharing one NATS
//! account, never see each other's traffic.

use std::fmt;

use crate::envelope::AggregateId;
use crate::ids::{InstanceId, ServiceId};

/// The kind of command an internal service may publish on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `…cmd.scale`
    Scale,
    /// `…cmd.restart`
    Restart,
    /// `…cmd.deploy`
    Deploy,
}

impl CommandKind {
    /// Every command subject, for permissions and subscriptions.
    pub const ALL: [CommandKind; 3] = [
        CommandKind::Scale,
        CommandKind::Restart,
        CommandKind::Deploy,
    ];

    fn token(self) -> &'static str {
        match self {
            CommandKind::Scale => "scale",
            CommandKind::Restart => "restart",
            CommandKind::Deploy => "deploy",
        }
    }
}

/// Why a prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject prefix {0:?} must be 1-32 characters of [a-z0-9_-], starting with a letter")]
pub struct BadPrefix(pub String);

/// All subject and stream names of one berth installation.
#[derive(Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subjects({})", self.prefix)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: "berth".to_owned(),
        }
    }
}

impl Subjects {
    /// Names under `prefix` (validated: it also becomes part of stream names).
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix(prefix.chars().take(40).collect()))
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn upper(&self) -> String {
        self.prefix.to_ascii_uppercase().replace('-', "_")
    }

    /// The stream holding the event log.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Every subject of the event log.
    pub fn events_all(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// The subject of one aggregate's events: `berth.evt.service.srv-…`.
    pub fn aggregate(&self, id: &AggregateId) -> String {
        format!("{}.evt.{}.{}", self.prefix, id.kind(), id.id())
    }

    /// Every aggregate of one kind: `berth.evt.service.*`.
    pub fn aggregate_kind(&self, kind: &str) -> String {
        format!("{}.evt.{}.*", self.prefix, kind)
    }

    /// The stream holding work items handed to workers (resolve, pull, run…).
    pub fn work_stream(&self) -> String {
        format!("{}_WORK", self.upper())
    }

    /// A work queue subject: `berth.work.resolve`.
    pub fn work(&self, queue: &str) -> String {
        format!("{}.work.{}", self.prefix, queue)
    }

    /// Every work subject.
    pub fn work_all(&self) -> String {
        format!("{}.work.>", self.prefix)
    }

    /// Where a work item goes after its last failed delivery.
    pub fn dead_letter(&self, consumer: &str) -> String {
        format!("{}.dlq.{}", self.prefix, consumer)
    }

    /// The stream keeping dead letters for inspection.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DLQ", self.upper())
    }

    /// Every dead-letter subject.
    pub fn dead_letter_all(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// KV bucket of projection snapshots.
    pub fn snapshot_bucket(&self) -> String {
        format!("{}_snapshots", self.prefix.replace('-', "_"))
    }

    /// Commands from internal services: `berth.cmd.scale`.
    pub fn command(&self, kind: CommandKind) -> String {
        format!("{}.cmd.{}", self.prefix, kind.token())
    }

    /// Service events for notification bridges (JSON): `berth.events.srv-…`.
    pub fn service_events(&self, service: &ServiceId) -> String {
        format!("{}.events.{}", self.prefix, service)
    }

    /// Log lines of one instance: `berth.logs.srv-….ins-…`.
    pub fn logs(&self, service: &ServiceId, instance: &InstanceId) -> String {
        format!("{}.logs.{}.{}", self.prefix, service, instance)
    }

    /// Image access checks answered by the resolver (core NATS request/reply).
    pub fn resolver_check(&self) -> String {
        format!("{}.resolver.check", self.prefix)
    }

    /// Node heartbeats (core NATS, not the log: they are not facts worth keeping).
    pub fn heartbeat(&self) -> String {
        format!("{}.heartbeat", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let s = Subjects::new("t-42").unwrap_or_default();
        assert_eq!(s.events_stream(), "T_42_EVENTS");
        assert_eq!(s.events_all(), "t-42.evt.>");
        let srv = ServiceId::generate();
        assert_eq!(
            s.aggregate(&AggregateId::Service(srv.clone())),
            format!("t-42.evt.service.{srv}")
        );
        assert_eq!(s.command(CommandKind::Scale), "t-42.cmd.scale");
    }

    #[test]
    fn prefixes_that_break_subjects_are_refused() {
        for bad in ["", "a.b", "a*", "A", "1abc", "a>b", "a b", &"x".repeat(33)] {
            assert!(Subjects::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}

//! Subject and stream names. Every name derives from one prefix (`berth` in
//! production) so that tests, and several installations sharing one NATS
//! account, never see each other's traffic.

use std::fmt;

use crate::envelope::AggregateId;
use crate::ids::{NodeId, OwnerId, ServiceId, WebhookId};

/// The kind of command an internal service may publish on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `…cmd.<owner>.scale`
    Scale,
    /// `…cmd.<owner>.restart`
    Restart,
    /// `…cmd.<owner>.deploy`
    Deploy,
}

impl CommandKind {
    /// Every command subject, for permissions and subscriptions.
    pub const ALL: [CommandKind; 3] = [
        CommandKind::Scale,
        CommandKind::Restart,
        CommandKind::Deploy,
    ];

    /// The subject's last token.
    pub fn token(self) -> &'static str {
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

    /// The work queue of one node: `node.nod-…` (`subjects.work` of it is
    /// the subject).
    pub fn node_queue(node: &NodeId) -> String {
        format!("node.{node}")
    }

    /// The durable consumer of one node's work queue (no dots allowed).
    pub fn node_consumer(node: &NodeId) -> String {
        format!("node-{node}")
    }

    /// The stream capturing the work stream's max-deliveries advisories.
    pub fn work_advisory_stream(&self) -> String {
        format!("{}_MAXDELIVER", self.work_stream())
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

    /// The stream behind the snapshot bucket.
    pub fn snapshot_stream(&self) -> String {
        format!("KV_{}", self.snapshot_bucket())
    }

    /// KV bucket of the router's certificate store: per domain its chain
    /// and sealed key, the ACME account, pending HTTP-01 answers and the
    /// issuance lock, shared by every router replica.
    pub fn certificate_bucket(&self) -> String {
        format!("{}_certificates", self.prefix.replace('-', "_"))
    }

    /// The stream behind the certificate bucket.
    pub fn certificate_stream(&self) -> String {
        format!("KV_{}", self.certificate_bucket())
    }

    /// A command from an integration of `owner`: `berth.cmd.usr-….scale`.
    /// The owner in the subject is what NATS permissions bind an
    /// integration to; the command acts on that owner's services only.
    pub fn command(&self, owner: &OwnerId, kind: CommandKind) -> String {
        format!("{}.cmd.{}.{}", self.prefix, owner, kind.token())
    }

    /// One kind of command for every owner (what the API subscribes to).
    pub fn command_any_owner(&self, kind: CommandKind) -> String {
        format!("{}.cmd.*.{}", self.prefix, kind.token())
    }

    /// The owner token of a command subject (`None` if it is not one).
    pub fn command_owner<'s>(&self, subject: &'s str) -> Option<&'s str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".cmd.")?;
        let (owner, _kind) = rest.split_once('.')?;
        Some(owner)
    }

    /// Service events for integrations and notification bridges (JSON):
    /// `berth.events.usr-….srv-…`.
    pub fn service_events(&self, owner: &OwnerId, service: &ServiceId) -> String {
        format!("{}.events.{}.{}", self.prefix, owner, service)
    }

    /// Every service event of one owner.
    pub fn owner_events(&self, owner: &OwnerId) -> String {
        format!("{}.events.{}.>", self.prefix, owner)
    }

    /// The stream keeping instance log lines.
    pub fn logs_stream(&self) -> String {
        format!("{}_LOGS", self.upper())
    }

    /// Every service's log subject: what the logs stream captures.
    pub fn logs_all(&self) -> String {
        format!("{}.logs.*", self.prefix)
    }

    /// Log lines of one service, every instance's: `berth.logs.srv-…`
    /// (the instance is in each line). One subject per service, so the
    /// logs stream's per-subject limit bounds each service, however many
    /// instances it went through.
    pub fn logs(&self, service: &ServiceId) -> String {
        format!("{}.logs.{}", self.prefix, service)
    }

    /// Image access checks answered by the resolver (core NATS request/reply).
    pub fn resolver_check(&self) -> String {
        format!("{}.resolver.check", self.prefix)
    }

    /// A node's resource samples of one service's instances:
    /// `berth.metrics.usage.srv-….nod-…`.
    pub fn usage(&self, service: &ServiceId, node: &NodeId) -> String {
        format!("{}.metrics.usage.{}.{}", self.prefix, service, node)
    }

    /// Every node's resource samples of one service.
    pub fn service_usage(&self, service: &ServiceId) -> String {
        format!("{}.metrics.usage.{}.*", self.prefix, service)
    }

    /// Every node's resource samples of every service (what the
    /// autoscaler listens to).
    pub fn usage_all(&self) -> String {
        format!("{}.metrics.usage.>", self.prefix)
    }

    /// A router's request samples of one service:
    /// `berth.metrics.http.srv-….<router>`.
    pub fn http_metrics(&self, service: &ServiceId, router: &str) -> String {
        format!("{}.metrics.http.{}.{}", self.prefix, service, router)
    }

    /// Every router's request samples of one service.
    pub fn service_http_metrics(&self, service: &ServiceId) -> String {
        format!("{}.metrics.http.{}.*", self.prefix, service)
    }

    /// Every sample subject (what the metrics stream keeps).
    pub fn metrics_all(&self) -> String {
        format!("{}.metrics.>", self.prefix)
    }

    /// The stream keeping a day of samples.
    pub fn metrics_stream(&self) -> String {
        format!("{}_METRICS", self.upper())
    }

    /// The stream keeping what sending to each webhook gave.
    pub fn webhook_sends_stream(&self) -> String {
        format!("{}_WEBHOOK_SENDS", self.upper())
    }

    /// Every webhook's sends: what the webhook sends stream captures.
    pub fn webhook_sends_all(&self) -> String {
        format!("{}.webhooks.sends.>", self.prefix)
    }

    /// The sends to one webhook of `owner` (the notifier records each
    /// attempt; the API lists them).
    pub fn webhook_sends(&self, owner: &OwnerId, webhook: &WebhookId) -> String {
        format!("{}.webhooks.sends.{owner}.{webhook}", self.prefix)
    }

    /// Commands to run in instances on `node` (core NATS request/reply,
    /// sent by the control plane only).
    pub fn exec(&self, node: &NodeId) -> String {
        format!("{}.exec.{}", self.prefix, node)
    }

    /// Every node's exec subject (what the control plane may send to).
    pub fn exec_all(&self) -> String {
        format!("{}.exec.*", self.prefix)
    }

    /// Terminal sessions opened in instances on `node` (core NATS
    /// request/reply, sent by the control plane only).
    pub fn shell(&self, node: &NodeId) -> String {
        format!("{}.shell.{}", self.prefix, node)
    }

    /// Every node's [`Subjects::shell`] subject.
    pub fn shell_all(&self) -> String {
        format!("{}.shell.*", self.prefix)
    }

    /// One session's input (to the node).
    pub fn shell_input(&self, node: &NodeId, session: &str) -> String {
        format!("{}.shell.{}.{}.in", self.prefix, node, session)
    }

    /// Every session's input on `node` (what the node subscribes to).
    pub fn shell_inputs(&self, node: &NodeId) -> String {
        format!("{}.shell.{}.*.in", self.prefix, node)
    }

    /// Every session's input on every node (what the control plane may
    /// send).
    pub fn shell_inputs_all(&self) -> String {
        format!("{}.shell.*.*.in", self.prefix)
    }

    /// One session's output (from the node).
    pub fn shell_output(&self, node: &NodeId, session: &str) -> String {
        format!("{}.shell.{}.{}.out", self.prefix, node, session)
    }

    /// Every session's output on `node` (what the node may send).
    pub fn shell_outputs(&self, node: &NodeId) -> String {
        format!("{}.shell.{}.*.out", self.prefix, node)
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
        assert_eq!(s.logs_stream(), "T_42_LOGS");
        assert_eq!(s.logs_all(), "t-42.logs.*");
        assert_eq!(s.certificate_stream(), "KV_t_42_certificates");
        let srv = ServiceId::generate();
        assert_eq!(
            s.aggregate(&AggregateId::Service(srv.clone())),
            format!("t-42.evt.service.{srv}")
        );
        let owner: OwnerId = "usr-aaaaaaaaaaaaaaaaaaaa"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let cmd = s.command(&owner, CommandKind::Scale);
        assert_eq!(cmd, "t-42.cmd.usr-aaaaaaaaaaaaaaaaaaaa.scale");
        assert_eq!(s.command_owner(&cmd), Some("usr-aaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(s.command_owner("t-42.evt.x"), None);
        assert_eq!(
            s.command_any_owner(CommandKind::Deploy),
            "t-42.cmd.*.deploy"
        );
    }

    #[test]
    fn prefixes_that_break_subjects_are_refused() {
        for bad in ["", "a.b", "a*", "A", "1abc", "a>b", "a b", &"x".repeat(33)] {
            assert!(Subjects::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}

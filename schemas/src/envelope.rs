//! The envelope every event travels in, and the commit that carries all the
//! events of one decision in one NATS message (so a decision is atomic on
//! every server version).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::events::Event;
use crate::ids::{
    ApiKeyId, CredentialId, DeliveryId, DeployId, DomainId, EventId, IdError, NodeId, OwnerId,
    ServiceId,
};

/// The aggregate an event belongs to; each has its own subject in the log.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggregateId {
    /// An owner: its API keys, service names and notification defaults.
    Owner(OwnerId),
    /// A service with its deploys, instances and cron runs.
    Service(ServiceId),
    /// A registry credential and the services using it.
    Credential(CredentialId),
    /// A node.
    Node(NodeId),
    /// One notification delivery.
    Delivery(DeliveryId),
    /// The claim on one custom domain name (unique across owners).
    Domain(DomainId),
}

impl AggregateId {
    /// The subject token for this kind of aggregate.
    pub fn kind(&self) -> &'static str {
        match self {
            AggregateId::Owner(_) => "owner",
            AggregateId::Service(_) => "service",
            AggregateId::Credential(_) => "credential",
            AggregateId::Node(_) => "node",
            AggregateId::Delivery(_) => "delivery",
            AggregateId::Domain(_) => "domain",
        }
    }

    /// The id as text.
    pub fn id(&self) -> &str {
        match self {
            AggregateId::Owner(i) => i.as_str(),
            AggregateId::Service(i) => i.as_str(),
            AggregateId::Credential(i) => i.as_str(),
            AggregateId::Node(i) => i.as_str(),
            AggregateId::Delivery(i) => i.as_str(),
            AggregateId::Domain(i) => i.as_str(),
        }
    }
}

impl FromStr for AggregateId {
    type Err = IdError;
    /// Parses a bare id; its prefix names the kind.
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s.get(..4) {
            Some("srv-") => Ok(AggregateId::Service(s.parse()?)),
            Some("rgc-") => Ok(AggregateId::Credential(s.parse()?)),
            Some("nod-") => Ok(AggregateId::Node(s.parse()?)),
            Some("ntf-") => Ok(AggregateId::Delivery(s.parse()?)),
            Some("dom-") => Ok(AggregateId::Domain(s.parse()?)),
            _ => Ok(AggregateId::Owner(s.parse()?)),
        }
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl fmt::Debug for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for AggregateId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for AggregateId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for AggregateId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AggregateId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(usr|tea|srv|rgc|nod|ntf|dom)-[a-z2-7]{20}$"
        })
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// An operator through the API or CLI, identified by the API key used.
    ApiKey { key: ApiKeyId },
    /// A CI pipeline calling a service's deploy hook.
    DeployHook,
    /// An internal service publishing on a command subject.
    Bus,
    /// One of berth's own components (`scheduler`, `resolver`, …).
    System { component: String },
}

impl Actor {
    /// A berth component.
    pub fn system(component: &str) -> Self {
        Actor::System {
            component: component.to_owned(),
        }
    }
}

/// One event in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique id of this event.
    pub id: EventId,
    /// Schema version of `event` (its type is the `type` tag inside it).
    pub version: u16,
    /// The aggregate whose subject holds this event.
    pub aggregate: AggregateId,
    /// 1-based position of this event among its aggregate's events.
    pub sequence: u64,
    /// When the decision was made.
    pub time: DateTime<Utc>,
    /// Who caused it.
    pub actor: Actor,
    /// The deploy this event belongs to, when it belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<DeployId>,
    /// The event or command id that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The fact itself.
    pub event: Event,
}

/// All events of one decision: the unit of an append, one NATS message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Commit {
    /// At least one event, all of the same aggregate, with consecutive sequences.
    pub events: Vec<Envelope>,
}

/// Why bytes from the bus are not a commit berth can use.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not MessagePack of the commit shape, or an event type this build does not know.
    #[error("undecodable commit: {0}")]
    Malformed(String),
    /// An event written by a newer berth than this one.
    #[error("event {event_type} has version {found}; this build knows up to {known}")]
    UnknownVersion {
        event_type: &'static str,
        found: u16,
        known: u16,
    },
    /// A commit with no events, or events that disagree about their aggregate.
    #[error("inconsistent commit: {0}")]
    Inconsistent(&'static str),
}

/// Why a commit could not be encoded (never expected for well-formed values).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode commit: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

impl Commit {
    /// MessagePack with named fields, the bus format.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Self::encode_events(&self.events)
    }

    /// The bytes of a commit of `events`, from borrowed envelopes (a
    /// writer that keeps its envelopes need not move them into a
    /// `Commit`), into a buffer sized up front: growing an empty one
    /// showed up in append profiles.
    pub fn encode_events(events: &[Envelope]) -> Result<Vec<u8>, EncodeError> {
        /// [`Commit`]'s fields, borrowed: the same bytes.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            events: &'a [Envelope],
        }
        let mut buf = Vec::with_capacity(256 * events.len());
        rmp_serde::encode::write_named(&mut buf, &Borrowed { events })?;
        Ok(buf)
    }

    /// Decodes and checks a commit read from the log.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let commit: Commit =
            rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let first = commit
            .events
            .first()
            .ok_or(DecodeError::Inconsistent("no events"))?;
        for (i, env) in commit.events.iter().enumerate() {
            if env.aggregate != first.aggregate {
                return Err(DecodeError::Inconsistent("events of different aggregates"));
            }
            if env.sequence != first.sequence + i as u64 {
                return Err(DecodeError::Inconsistent("sequences are not consecutive"));
            }
            let known = env.event.version();
            if env.version > known {
                return Err(DecodeError::UnknownVersion {
                    event_type: env.event.type_name(),
                    found: env.version,
                    known,
                });
            }
        }
        Ok(commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{DeployQueued, ServiceSuspended};

    fn envelope(sequence: u64, event: Event) -> Envelope {
        Envelope {
            id: EventId::generate(),
            version: event.version(),
            aggregate: AggregateId::Service(ServiceId::generate()),
            sequence,
            time: Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn commit_of(events: Vec<Event>) -> Commit {
        let aggregate = AggregateId::Service(ServiceId::generate());
        Commit {
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, e)| Envelope {
                    aggregate: aggregate.clone(),
                    ..envelope(7 + i as u64, e)
                })
                .collect(),
        }
    }

    #[test]
    fn commits_round_trip_through_messagepack() {
        let commit = commit_of(vec![
            DeployQueued {
                deploy: DeployId::generate(),
            }
            .into(),
            ServiceSuspended {}.into(),
        ]);
        let bytes = commit.encode().unwrap_or_default();
        let back = Commit::decode(&bytes);
        assert_eq!(back.ok(), Some(commit));
    }

    #[test]
    fn newer_versions_are_reported_not_misread() {
        let mut commit = commit_of(vec![ServiceSuspended {}.into()]);
        commit.events[0].version = 99;
        let bytes = commit.encode().unwrap_or_default();
        assert!(matches!(
            Commit::decode(&bytes),
            Err(DecodeError::UnknownVersion { found: 99, .. })
        ));
    }

    #[test]
    fn garbage_and_inconsistent_commits_are_refused() {
        assert!(matches!(
            Commit::decode(b"\xc1garbage"),
            Err(DecodeError::Malformed(_))
        ));
        let empty = Commit { events: vec![] }.encode().unwrap_or_default();
        assert!(matches!(
            Commit::decode(&empty),
            Err(DecodeError::Inconsistent(_))
        ));
        let mut gap = commit_of(vec![ServiceSuspended {}.into(), ServiceSuspended {}.into()]);
        gap.events[1].sequence += 1;
        let bytes = gap.encode().unwrap_or_default();
        assert!(matches!(
            Commit::decode(&bytes),
            Err(DecodeError::Inconsistent(_))
        ));
    }
}

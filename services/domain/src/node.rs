//! The node aggregate (SPEC §11, §13) and the rules for the facts a node
//! reports about the instances it runs.
//!
//! A node registers once with its capacity and public key and registers
//! again only when its name, capacity or key changed, so a node restarting
//! with the same identity appends nothing. The public key is what the
//! secrets in the node's work items are sealed to; a node registered
//! without one (before nodes held key pairs) gets no work that needs a
//! secret until it registers again with one. Instance facts (pull progress, started,
//! exited, restarted, stopped) are what a node *saw*; they feed the
//! service's instance list the scheduler reconciles from, and they go onto
//! the service's subject as they are — refusing a fact would only lose
//! it — but only facts of those kinds, and onto a deleted service only its
//! instances' stops. Facts with rules
//! (pulled, pull failed, pre-deploy or cron run ended) go through the
//! service's own decide.

use berth_schemas::events::{NodeLost, NodeRecovered, NodeRegistered};
use berth_schemas::{Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;
use crate::service::{ServiceState, ServiceStatus};

/// A node as registered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// Name and capacity, once registered.
    pub registered: Option<Capacity>,
    /// The X25519 public key (base64) of its latest registration.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Declared lost and not recovered since.
    pub lost: bool,
    /// Where other nodes reach what it publishes, as its latest
    /// registration said.
    #[serde(default)]
    pub reach: Option<Reach>,
}

/// Where other nodes reach a node's published instances: its advertised
/// address and the host ports it publishes on. A node lets other nodes'
/// instances reach its private services' instances only from the
/// addresses nodes registered, and a node's instances reach another
/// node's ports only through their private-service names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reach {
    pub addr: std::net::IpAddr,
    pub ports: std::ops::RangeInclusive<u16>,
}

impl Reach {
    /// The reach a registration's `addr` and `ports` say, if both are
    /// there and well-formed.
    pub fn of(addr: Option<&str>, ports: Option<&str>) -> Option<Reach> {
        Some(Reach {
            addr: addr?.parse().ok()?,
            ports: parse_ports(ports?)?,
        })
    }

    /// Its ports as a registration says them, `low-high`.
    pub fn ports_text(&self) -> String {
        format!("{}-{}", self.ports.start(), self.ports.end())
    }
}

/// A host-port range written `low-high` (1-65535, low ≤ high), as
/// `BERTH_NODE_PORTS` and registrations say it.
pub fn parse_ports(s: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (low, high) = s.split_once('-')?;
    let (low, high) = (
        low.trim().parse::<u16>().ok()?,
        high.trim().parse::<u16>().ok()?,
    );
    (low > 0 && low <= high).then_some(low..=high)
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub name: String,
    pub cpu_millis: u32,
    pub memory_mib: u32,
}

/// What a node asks of its own aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register (on every start) with what the node offers and the public
    /// key its work's secrets are to be sealed to (base64 of 32 bytes).
    Register {
        capacity: Capacity,
        public_key: String,
        /// Where other nodes reach it (`None`: it publishes nothing to
        /// other nodes).
        reach: Option<Reach>,
    },
    /// The scheduler heard no heartbeat since `last_heartbeat` for too long.
    DeclareLost { last_heartbeat: DateTime<Utc> },
    /// A lost node heart-beats again.
    Recover,
}

/// Applies one event; events of other aggregates leave the state unchanged.
pub fn apply(mut state: NodeState, event: &Event) -> NodeState {
    match event {
        Event::NodeRegistered(e) => {
            state.registered = Some(Capacity {
                name: e.name.clone(),
                cpu_millis: e.cpu_millis,
                memory_mib: e.memory_mib,
            });
            state.public_key = e.public_key.clone();
            state.reach = Reach::of(e.addr.as_deref(), e.ports.as_deref());
        }
        Event::NodeLost(_) => state.lost = true,
        Event::NodeRecovered(_) => state.lost = false,
        _ => {}
    }
    state
}

/// Folds an envelope.
pub fn fold(state: NodeState, envelope: &Envelope) -> NodeState {
    apply(state, &envelope.event)
}

/// The rules: a registration is recorded when it says something new.
pub fn decide(state: &NodeState, command: Command) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Register {
            capacity: c,
            public_key,
            reach,
        } => {
            if c.name.trim().is_empty() || c.name.len() > 100 {
                return Err(DomainError::invalid(
                    "name",
                    "a node name is 1-100 characters",
                ));
            }
            if c.cpu_millis == 0 || c.memory_mib == 0 {
                return Err(DomainError::invalid(
                    "capacity",
                    "a node offers some CPU and memory",
                ));
            }
            let decoded = data_encoding::BASE64.decode(public_key.as_bytes());
            if decoded.map_or(true, |k| k.len() != 32) {
                return Err(DomainError::invalid(
                    "public_key",
                    "a node's public key is base64 of 32 bytes",
                ));
            }
            if reach
                .as_ref()
                .is_some_and(|r| r.ports.is_empty() || *r.ports.start() == 0)
            {
                return Err(DomainError::invalid(
                    "ports",
                    "a node's host ports are a range within 1-65535",
                ));
            }
            if state.registered.as_ref() == Some(&c)
                && state.public_key.as_deref() == Some(public_key.as_str())
                && state.reach == reach
            {
                return Ok(vec![]);
            }
            Ok(vec![Event::NodeRegistered(NodeRegistered {
                name: c.name,
                cpu_millis: c.cpu_millis,
                memory_mib: c.memory_mib,
                public_key: Some(public_key),
                addr: reach.as_ref().map(|r| r.addr.to_string()),
                ports: reach.map(|r| r.ports_text()),
            })])
        }
        // Repeats (several scheduler copies noticing the same silence)
        // append nothing.
        Command::DeclareLost { last_heartbeat } => {
            if state.registered.is_none() {
                return Err(DomainError::not_found("node", ""));
            }
            if state.lost {
                return Ok(vec![]);
            }
            Ok(vec![NodeLost { last_heartbeat }.into()])
        }
        Command::Recover => {
            if !state.lost {
                return Ok(vec![]);
            }
            Ok(vec![NodeRecovered {}.into()])
        }
    }
}

/// The node aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Node;

impl Aggregate for Node {
    type State = NodeState;
    type Command = Command;

    fn apply(state: NodeState, event: &Event) -> NodeState {
        apply(state, event)
    }

    fn decide(state: &NodeState, command: Command, _: &Ctx) -> Result<Vec<Event>, DomainError> {
        decide(state, command)
    }
}

/// Whether `event` is a fact a node may report about a service's instances.
pub fn is_instance_fact(event: &Event) -> bool {
    matches!(
        event,
        Event::ImagePullProgressed(_)
            | Event::InstanceStarted(_)
            | Event::InstanceHealthy(_)
            | Event::InstanceUnhealthy(_)
            | Event::InstancePortDetected(_)
            | Event::InstanceExited(_)
            | Event::ServerRestarted(_)
            | Event::InstanceStopped(_)
    )
}

/// A node reports `fact` about a service in `state`.
pub fn report(state: &ServiceState, fact: Event) -> Result<Vec<Event>, DomainError> {
    if !is_instance_fact(&fact) {
        return Err(DomainError::invalid(
            "event",
            format!("{} is not an instance fact", fact.type_name()),
        ));
    }
    if let Event::InstancePortDetected(e) = &fact {
        if e.port == 0 || e.expected == 0 {
            return Err(DomainError::invalid("port", "a detected port is 1-65535"));
        }
    }
    // A deleted service's instances are stopped by the scheduler; those
    // stops are still recorded, so its instance list empties and nothing
    // keeps asking nodes to stop them.
    if state.status == ServiceStatus::Deleted && !matches!(fact, Event::InstanceStopped(_)) {
        return Err(DomainError::not_found("service", ""));
    }
    Ok(vec![fact])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use berth_schemas::events::InstanceStarted;
    use berth_schemas::ids::{InstanceId, NodeId};

    use super::*;
    use crate::error::ErrorKind;

    fn cap(name: &str, cpu: u32) -> Capacity {
        Capacity {
            name: name.into(),
            cpu_millis: cpu,
            memory_mib: 1024,
        }
    }

    /// Two well-formed public keys (base64 of 32 bytes).
    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn register(c: Capacity) -> Command {
        register_with(c, KEY_A)
    }

    fn register_with(capacity: Capacity, key: &str) -> Command {
        Command::Register {
            capacity,
            public_key: key.into(),
            reach: None,
        }
    }

    fn given(events: &[Event]) -> NodeState {
        events.iter().fold(NodeState::default(), apply)
    }

    #[test]
    fn first_registration_is_recorded() {
        let out = decide(&given(&[]), register(cap("n1", 2000))).unwrap();
        assert_eq!(
            out,
            vec![Event::NodeRegistered(NodeRegistered {
                name: "n1".into(),
                cpu_millis: 2000,
                memory_mib: 1024,
                public_key: Some(KEY_A.into()),
                addr: None,
                ports: None,
            })]
        );
        assert_eq!(given(&out).public_key.as_deref(), Some(KEY_A));
    }

    #[test]
    fn same_registration_again_appends_nothing_changed_capacity_does() {
        let first = decide(&given(&[]), register(cap("n1", 2000))).unwrap();
        let s = given(&first);
        assert!(decide(&s, register(cap("n1", 2000))).unwrap().is_empty());
        assert_eq!(decide(&s, register(cap("n1", 4000))).unwrap().len(), 1);
    }

    #[test]
    fn where_other_nodes_reach_it_is_recorded_and_a_change_registers_again() {
        let reach = |addr: &str, low: u16, high: u16| {
            Some(Reach {
                addr: addr.parse().unwrap(),
                ports: low..=high,
            })
        };
        let with = |r: Option<Reach>| Command::Register {
            capacity: cap("n1", 2000),
            public_key: KEY_A.into(),
            reach: r,
        };
        let first = decide(&given(&[]), with(reach("10.0.0.5", 31000, 31999))).unwrap();
        let said = match &first[..] {
            [Event::NodeRegistered(e)] => (e.addr.as_deref(), e.ports.as_deref()),
            other => (None, Some(other.len()).map(|_| "not one registration")),
        };
        assert_eq!(said, (Some("10.0.0.5"), Some("31000-31999")));
        let s = given(&first);
        assert_eq!(s.reach, reach("10.0.0.5", 31000, 31999));
        assert!(decide(&s, with(reach("10.0.0.5", 31000, 31999)))
            .unwrap()
            .is_empty());
        assert_eq!(
            decide(&s, with(reach("10.0.0.6", 31000, 31999)))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(decide(&s, with(None)).unwrap().len(), 1);
        let err = decide(&s, with(reach("10.0.0.5", 0, 10))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        // A registration's words that do not parse say nothing.
        assert_eq!(Reach::of(Some("nope"), Some("1-2")), None);
        assert_eq!(Reach::of(Some("10.0.0.5"), Some("9-2")), None);
    }

    #[test]
    fn a_new_public_key_registers_again_and_a_malformed_one_is_refused() {
        let first = decide(&given(&[]), register(cap("n1", 2000))).unwrap();
        let s = given(&first);
        let rekeyed = decide(&s, register_with(cap("n1", 2000), KEY_B)).unwrap();
        assert_eq!(rekeyed.len(), 1);
        assert_eq!(given(&rekeyed).public_key.as_deref(), Some(KEY_B));
        for bad in ["", "not base64!", "AQEBAQ=="] {
            let e = decide(&s, register_with(cap("n1", 2000), bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn registrations_without_a_key_still_decode() {
        // Written before nodes held key pairs.
        let old = serde_json::json!({
            "type": "node_registered",
            "data": {"name": "n0", "cpuMillis": 1000, "memoryMib": 512}
        });
        let e: Event = serde_json::from_value(old).unwrap();
        let s = given(&[e]);
        assert!(s.registered.is_some());
        assert_eq!(s.public_key, None);
        // Starting again with a key registers the key.
        let out = decide(&s, register(cap("n0", 1000))).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn empty_name_or_capacity_is_invalid() {
        let refused = |c| decide(&given(&[]), register(c)).unwrap_err();
        assert_eq!(
            refused(cap(" ", 1)),
            DomainError::invalid("name", "a node name is 1-100 characters")
        );
        assert_eq!(refused(cap("n", 0)).kind(), ErrorKind::Invalid);
        let mut no_memory = cap("n", 1);
        no_memory.memory_mib = 0;
        assert_eq!(refused(no_memory).kind(), ErrorKind::Invalid);
    }

    #[test]
    fn lost_and_recovered() {
        let s = given(&[Event::NodeLost(NodeLost {
            last_heartbeat: chrono::Utc::now(),
        })]);
        assert!(s.lost);
        assert!(!apply(s, &Event::NodeRecovered(NodeRecovered {})).lost);
    }

    #[test]
    fn lost_once_then_recovered_once() {
        let reg = decide(&given(&[]), register(cap("n1", 2000))).unwrap();
        let s = given(&reg);
        let t = chrono::Utc::now();
        let lost = decide(&s, Command::DeclareLost { last_heartbeat: t }).unwrap();
        assert_eq!(lost, vec![Event::NodeLost(NodeLost { last_heartbeat: t })]);
        let s = lost.iter().fold(s, apply);
        assert!(decide(&s, Command::DeclareLost { last_heartbeat: t })
            .unwrap()
            .is_empty());
        let back = decide(&s, Command::Recover).unwrap();
        assert_eq!(back, vec![Event::NodeRecovered(NodeRecovered {})]);
        let s = back.iter().fold(s, apply);
        assert!(decide(&s, Command::Recover).unwrap().is_empty());
        assert_eq!(
            decide(&given(&[]), Command::DeclareLost { last_heartbeat: t })
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn only_instance_facts_are_reported_and_not_on_deleted_services() {
        let fact = Event::InstanceStarted(InstanceStarted {
            instance: InstanceId::generate(),
            node: NodeId::generate(),
            digest: "sha256:00".into(),
            addr: None,
            published: None,
        });
        let live = ServiceState::default();
        assert_eq!(report(&live, fact.clone()).unwrap(), vec![fact.clone()]);
        let mut deleted = ServiceState::default();
        deleted.status = ServiceStatus::Deleted;
        assert_eq!(
            report(&deleted, fact).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let stopped = Event::InstanceStopped(berth_schemas::events::InstanceStopped {
            instance: InstanceId::generate(),
        });
        assert_eq!(report(&deleted, stopped.clone()).unwrap(), vec![stopped]);
        let not_a_fact = Event::NodeRecovered(NodeRecovered {});
        assert_eq!(
            report(&live, not_a_fact).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        let detected = |port, expected| {
            Event::InstancePortDetected(berth_schemas::events::InstancePortDetected {
                instance: InstanceId::generate(),
                port,
                expected,
            })
        };
        assert_eq!(report(&live, detected(3000, 10000)).unwrap().len(), 1);
        for (port, expected) in [(0, 10000), (3000, 0)] {
            assert_eq!(
                report(&live, detected(port, expected)).unwrap_err().kind(),
                ErrorKind::Invalid
            );
        }
    }
}

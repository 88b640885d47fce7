//! The node's liveness signal: JSON on `subjects.heartbeat()` (core NATS,
//! not the log: a heartbeat is not a fact worth keeping). The node's agent
//! publishes one every interval; the scheduler follows them to notice lost
//! and recovered nodes and containers it no longer knows.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceId, NodeId};

/// One heartbeat of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// The node.
    pub node: NodeId,
    /// When.
    pub time: DateTime<Utc>,
    /// Instances supervised there.
    pub instances: Vec<InstanceId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_plain_json_fields() {
        let hb = Heartbeat {
            node: NodeId::generate(),
            time: Utc::now(),
            instances: vec![InstanceId::generate()],
        };
        let json = serde_json::to_value(&hb).unwrap_or_default();
        for field in ["node", "time", "instances"] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        let back: Heartbeat = serde_json::from_value(json).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, hb);
    }
}

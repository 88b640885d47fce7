//! `/v1/nodes`: the machines of the installation, as the log registers
//! them and as their heartbeats are heard. Render has no counterpart.
//!
//! Every owner sees every node (the machines are the installation's), but
//! only its own instances on them: a node's count is the caller's, never
//! anyone else's, so a listing reveals nothing of other owners' services.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::{AppState, Authed};
use crate::error::ApiError;

/// A node as an owner sees it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// `nod-…`
    pub id: String,
    /// The name it registered with (`BERTH_NODE_NAME`, default the host name).
    pub name: String,
    /// `alive`, or `lost` once the scheduler declared it lost (no heartbeat
    /// for its timeout) and until it heart-beats again.
    pub state: NodeStateName,
    /// When it last registered, was declared lost or came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_changed_at: Option<DateTime<Utc>>,
    /// When this API last heard its heartbeat (absent until the first one
    /// since the API started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// What it offers.
    pub cpu_millis: u32,
    pub memory_mib: u32,
    /// Your instances placed there (other owners' are not counted).
    pub instances: usize,
}

/// Whether a node is taking work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStateName {
    Alive,
    Lost,
}

/// GET /v1/nodes: every registered node, by id (a plain array).
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    st.caught_up().await?;
    let nodes = st.read(|i| {
        let mine = i.instances_per_node(&caller.owner);
        i.nodes()
            .filter_map(|(id, n)| {
                let capacity = n.state.registered.as_ref()?;
                Some(NodeView {
                    id: id.to_string(),
                    name: capacity.name.clone(),
                    state: if n.state.lost {
                        NodeStateName::Lost
                    } else {
                        NodeStateName::Alive
                    },
                    state_changed_at: n.changed_at,
                    last_heartbeat_at: st.heard.last(id),
                    cpu_millis: capacity.cpu_millis,
                    memory_mib: capacity.memory_mib,
                    instances: mine.get(id).copied().unwrap_or(0),
                })
            })
            .collect()
    })?;
    Ok(Json(nodes))
}

//! The cluster as this scheduler copy sees it: registered nodes (from their
//! aggregates), when each was last heard (heartbeats on core NATS), and how
//! much of each node the services' instances reserve (from the service
//! states this copy last loaded). [`Cluster::view`] turns that into the
//! domain's [`ClusterView`] for one decision.
//!
//! A node counts as lost once its aggregate says so; a node silent for
//! longer than the heartbeat timeout gets `node_lost` appended by the lost
//! check (several copies noticing the same silence append it once).
//! Silence is measured from this copy's start for nodes it has not heard
//! yet, so a restarted scheduler does not declare every node lost at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use berth_domain::node::{self as node_rules, NodeState};
use berth_domain::scheduler::{lost_nodes, ClusterView, NodeCapacity};
use berth_domain::service::ServiceState;
use berth_eventlog::{EventStore, Stamp};
use berth_runtime::node_key::NodePublicKey;
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::{Actor, AggregateId};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::SchedulerError;

/// One service's instances: where each runs, and the CPU and memory each
/// reserves (the service's plan).
#[derive(Debug, Default)]
struct Usage {
    cpu: u32,
    mem: u32,
    at: Vec<(InstanceId, NodeId)>,
}

#[derive(Debug)]
pub(crate) struct Cluster {
    store: EventStore,
    timeout: Duration,
    readiness_window: Duration,
    started: DateTime<Utc>,
    inner: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    nodes: BTreeMap<NodeId, NodeState>,
    heard: BTreeMap<NodeId, DateTime<Utc>>,
    usage: HashMap<ServiceId, Usage>,
    /// Instances that left the log while their node was recorded lost
    /// (moved or released): if that node comes back still running them,
    /// they are stopped there.
    retired: HashMap<InstanceId, (ServiceId, NodeId)>,
}

impl Cluster {
    pub(crate) fn new(store: EventStore, timeout: Duration, readiness_window: Duration) -> Self {
        Self {
            store,
            timeout,
            readiness_window,
            started: Utc::now(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters: every entry is replaced whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of every aggregate of `kind` in the log.
    pub(crate) async fn list(&self, kind: &str) -> Result<Vec<AggregateId>, SchedulerError> {
        let subjects = self.store.subjects();
        let stream = self
            .store
            .jetstream()
            .get_stream(subjects.events_stream())
            .await
            .map_err(SchedulerError::nats)?;
        let mut listing = stream
            .info_with_subjects(subjects.aggregate_kind(kind))
            .await
            .map_err(SchedulerError::nats)?;
        let mut out = Vec::new();
        while let Some(item) = listing.next().await {
            let (subject, _) = item.map_err(SchedulerError::nats)?;
            if let Some(id) = subject.rsplit('.').next().and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Reloads one node's aggregate.
    pub(crate) async fn refresh_node(&self, node: &NodeId) -> Result<(), SchedulerError> {
        let (state, _) = self
            .store
            .state(&AggregateId::Node(node.clone()), node_rules::fold)
            .await
            .map_err(SchedulerError::store)?;
        self.lock()
            .nodes
            .insert(node.clone(), NodeState::clone(&state));
        Ok(())
    }

    /// Reloads every node's aggregate.
    pub(crate) async fn refresh_nodes(&self) -> Result<(), SchedulerError> {
        for id in self.list("node").await? {
            if let AggregateId::Node(n) = id {
                self.refresh_node(&n).await?;
            }
        }
        Ok(())
    }

    /// A heartbeat from `node` arrived; true when the node is not known yet
    /// or is recorded lost (the caller then reloads or recovers it).
    pub(crate) fn heard(&self, node: &NodeId) -> bool {
        let mut k = self.lock();
        // Timed by the local clock: the node's own may be off.
        k.heard.insert(node.clone(), Utc::now());
        k.nodes.get(node).is_none_or(|s| s.lost)
    }

    /// The public key `node` registered, reloading the node once when this
    /// copy knows none (it may have registered one since it was loaded).
    pub(crate) async fn node_key(
        &self,
        node: &NodeId,
    ) -> Result<Option<NodePublicKey>, SchedulerError> {
        if let Some(k) = self.known_key(node) {
            return Ok(Some(k));
        }
        self.refresh_node(node).await?;
        Ok(self.known_key(node))
    }

    fn known_key(&self, node: &NodeId) -> Option<NodePublicKey> {
        let k = self.lock();
        let text = k.nodes.get(node)?.public_key.as_deref()?;
        match NodePublicKey::from_base64(text) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(node.id = %node, error = %e, "node registered an unusable public key");
                None
            }
        }
    }

    /// True when the node's aggregate has been loaded and is registered.
    pub(crate) fn knows(&self, node: &NodeId) -> bool {
        self.lock()
            .nodes
            .get(node)
            .is_some_and(|s| s.registered.is_some())
    }

    /// True when the node's aggregate records it lost.
    pub(crate) fn is_recorded_lost(&self, node: &NodeId) -> bool {
        self.lock().nodes.get(node).is_some_and(|s| s.lost)
    }

    /// Remembers what `service`'s instances reserve, and which of its
    /// instances left the log from a node recorded lost.
    pub(crate) fn record_service(&self, service: &ServiceId, state: &ServiceState) {
        let usage = match &state.config {
            Some(cfg) => Usage {
                cpu: cfg.plan.cpu_millis,
                mem: cfg.plan.memory_mib,
                at: state
                    .instances
                    .iter()
                    .map(|i| (i.id.clone(), i.node.clone()))
                    .collect(),
            },
            None => Usage::default(),
        };
        let mut k = self.lock();
        let gone: Vec<(InstanceId, NodeId)> = k
            .usage
            .get(service)
            .into_iter()
            .flat_map(|u| &u.at)
            .filter(|(id, _)| state.instances.get(id).is_none())
            .filter(|(_, node)| k.nodes.get(node).is_some_and(|s| s.lost))
            .cloned()
            .collect();
        for (id, node) in gone {
            k.retired.insert(id, (service.clone(), node));
        }
        k.usage.insert(service.clone(), usage);
    }

    /// Instances `node` says it runs that left the log while it was lost;
    /// forgets the retired ones it no longer runs.
    pub(crate) fn orphans(
        &self,
        node: &NodeId,
        running: &[InstanceId],
    ) -> Vec<(ServiceId, InstanceId)> {
        let mut k = self.lock();
        k.retired
            .retain(|id, (_, n)| n != node || running.contains(id));
        k.retired
            .iter()
            .filter(|(_, (_, n))| n == node)
            .map(|(id, (svc, _))| (svc.clone(), id.clone()))
            .collect()
    }

    /// The cluster for one decision about `service` (its own instances are
    /// not counted as reserved: the decision sees them itself).
    pub(crate) fn view(&self, service: &ServiceId) -> ClusterView {
        let k = self.lock();
        let mut used: BTreeMap<&NodeId, (u32, u32)> = BTreeMap::new();
        for (svc, usage) in &k.usage {
            if svc == service {
                continue;
            }
            for (_, n) in &usage.at {
                let e = used.entry(n).or_default();
                e.0 = e.0.saturating_add(usage.cpu);
                e.1 = e.1.saturating_add(usage.mem);
            }
        }
        let nodes = k
            .nodes
            .iter()
            .filter_map(|(id, s)| {
                let cap = s.registered.as_ref()?;
                let (used_cpu, used_mem) = used.get(id).copied().unwrap_or_default();
                Some(NodeCapacity {
                    id: id.clone(),
                    cpu_millis: cap.cpu_millis,
                    memory_mib: cap.memory_mib,
                    used_cpu,
                    used_mem,
                    // Only once recorded: instances on a node that is
                    // merely silent move after `node_lost` and
                    // `server_failed` are in the log, never before.
                    lost: s.lost,
                })
            })
            .collect();
        ClusterView {
            nodes,
            readiness_window: self.readiness_window,
        }
    }

    /// Nodes silent for too long that are not recorded lost yet, with when
    /// they were last heard.
    pub(crate) fn newly_silent(&self) -> Vec<(NodeId, DateTime<Utc>)> {
        let last: BTreeMap<NodeId, DateTime<Utc>> = {
            let k = self.lock();
            k.nodes
                .iter()
                .filter(|(_, s)| !s.lost && s.registered.is_some())
                .map(|(id, _)| (id.clone(), k.heard.get(id).copied().unwrap_or(self.started)))
                .collect()
        };
        lost_nodes(&last, Utc::now(), self.timeout)
            .into_iter()
            .filter_map(|id| last.get(&id).map(|t| (id, *t)))
            .collect()
    }

    /// Every service whose last loaded state has an instance on `node`.
    pub(crate) fn services_on(&self, node: &NodeId) -> Vec<ServiceId> {
        self.lock()
            .usage
            .iter()
            .filter(|(_, u)| u.at.iter().any(|(_, n)| n == node))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Appends `command` on the node's aggregate and reloads it.
    pub(crate) async fn decide_node(
        &self,
        node: &NodeId,
        command: node_rules::Command,
        key: &str,
    ) -> Result<(), SchedulerError> {
        self.store
            .execute::<node_rules::Node>(
                &AggregateId::Node(node.clone()),
                key,
                &Stamp::new(Actor::system("scheduler")),
                command,
            )
            .await
            .map_err(|e| SchedulerError::Store(e.to_string()))?;
        self.refresh_node(node).await
    }
}

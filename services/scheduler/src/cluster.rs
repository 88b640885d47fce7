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
    /// Services with instances, as last loaded.
    usage: HashMap<ServiceId, Usage>,
    /// Per node, the CPU and memory all of `usage` reserves there: kept as
    /// services change, so a decision does not sum every service.
    reserved: HashMap<NodeId, (u64, u64)>,
    /// Instances that left the log while their node was recorded lost
    /// (moved or released): if that node comes back still running them,
    /// they are stopped there.
    retired: HashMap<InstanceId, (ServiceId, NodeId)>,
    /// When each node that had been lost was seen recovered: a pass
    /// decided while it was lost may land after it came back, and the
    /// instances it moved away must still be stopped there.
    recovered: HashMap<NodeId, DateTime<Utc>>,
}

/// How long after a node's recovery the instances that leave the log
/// from it still count as moved away from a lost node.
const RECENTLY_RECOVERED: chrono::Duration = chrono::Duration::minutes(10);

impl Known {
    /// Takes a node's state as loaded, noting a recovery.
    fn set_node(&mut self, node: &NodeId, state: NodeState, now: DateTime<Utc>) {
        let was_lost = self.nodes.get(node).is_some_and(|s| s.lost);
        if was_lost && !state.lost {
            self.recovered.insert(node.clone(), now);
        }
        self.recovered
            .retain(|_, at| now - *at < RECENTLY_RECOVERED);
        self.nodes.insert(node.clone(), state);
    }

    /// Lost now, or recovered a short while ago.
    fn lost_lately(&self, node: &NodeId, now: DateTime<Utc>) -> bool {
        self.nodes.get(node).is_some_and(|s| s.lost)
            || self
                .recovered
                .get(node)
                .is_some_and(|at| now - *at < RECENTLY_RECOVERED)
    }

    /// Remembers what `service`'s instances reserve, and which of its
    /// instances left the log from a node lost now or lately.
    fn record_service(
        &mut self,
        service: &ServiceId,
        usage: Usage,
        still: impl Fn(&InstanceId) -> bool,
        now: DateTime<Utc>,
    ) {
        let gone: Vec<(InstanceId, NodeId)> = self
            .usage
            .get(service)
            .into_iter()
            .flat_map(|u| &u.at)
            .filter(|(id, _)| !still(id))
            .filter(|(_, node)| self.lost_lately(node, now))
            .cloned()
            .collect();
        for (id, node) in gone {
            self.retired.insert(id, (service.clone(), node));
        }
        if let Some(old) = self.usage.remove(service) {
            self.reserve(&old, false);
        }
        if !usage.at.is_empty() {
            self.reserve(&usage, true);
            self.usage.insert(service.clone(), usage);
        }
    }

    /// Adds (or takes back) what `usage` reserves on its nodes.
    fn reserve(&mut self, usage: &Usage, add: bool) {
        let (cpu, mem) = (u64::from(usage.cpu), u64::from(usage.mem));
        for (_, n) in &usage.at {
            let e = self.reserved.entry(n.clone()).or_default();
            *e = if add {
                (e.0 + cpu, e.1 + mem)
            } else {
                (e.0.saturating_sub(cpu), e.1.saturating_sub(mem))
            };
        }
    }

    /// What the instances of every service but `service` reserve on
    /// `node`: CPU millis, memory MiB.
    fn reserved_by_others(&self, node: &NodeId, service: &ServiceId) -> (u32, u32) {
        let (mut cpu, mut mem) = self.reserved.get(node).copied().unwrap_or_default();
        if let Some(own) = self.usage.get(service) {
            for _ in own.at.iter().filter(|(_, n)| n == node) {
                cpu = cpu.saturating_sub(u64::from(own.cpu));
                mem = mem.saturating_sub(u64::from(own.mem));
            }
        }
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        (clamp(cpu), clamp(mem))
    }

    /// See [`Cluster::orphans`].
    fn orphans(&mut self, node: &NodeId, running: &[InstanceId]) -> Vec<(ServiceId, InstanceId)> {
        self.retired
            .retain(|id, (_, n)| n != node || running.contains(id));
        self.retired
            .iter()
            .filter(|(_, (_, n))| n == node)
            .map(|(id, (svc, _))| (svc.clone(), id.clone()))
            .collect()
    }
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
            .set_node(node, NodeState::clone(&state), Utc::now());
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
    /// instances left the log from a node lost now or lately.
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
        self.lock().record_service(
            service,
            usage,
            |id| state.instances.get(id).is_some(),
            Utc::now(),
        );
    }

    /// Instances `node` says it runs that left the log while it was lost;
    /// forgets the retired ones it no longer runs.
    pub(crate) fn orphans(
        &self,
        node: &NodeId,
        running: &[InstanceId],
    ) -> Vec<(ServiceId, InstanceId)> {
        self.lock().orphans(node, running)
    }

    /// The cluster for one decision about `service` (its own instances are
    /// not counted as reserved: the decision sees them itself).
    pub(crate) fn view(&self, service: &ServiceId) -> ClusterView {
        let k = self.lock();
        let nodes = k
            .nodes
            .iter()
            .filter_map(|(id, s)| {
                let cap = s.registered.as_ref()?;
                let (used_cpu, used_mem) = k.reserved_by_others(id, service);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn node(lost: bool) -> NodeState {
        NodeState {
            lost,
            ..NodeState::default()
        }
    }

    fn at(instance: &InstanceId, node: &NodeId) -> Usage {
        Usage {
            at: vec![(instance.clone(), node.clone())],
            ..Usage::default()
        }
    }

    #[test]
    fn an_instance_moved_off_a_node_that_came_back_before_the_move_landed_is_stopped_there() {
        let (n, svc, i) = (
            NodeId::generate(),
            ServiceId::generate(),
            InstanceId::generate(),
        );
        let t0 = Utc::now();
        let mut k = Known::default();
        k.set_node(&n, node(false), t0);
        k.record_service(&svc, at(&i, &n), |_| true, t0);
        // Lost, then back before the pass that moved its instance landed.
        k.set_node(&n, node(true), t0);
        k.set_node(&n, node(false), t0 + chrono::Duration::seconds(2));
        k.record_service(
            &svc,
            Usage::default(),
            |_| false,
            t0 + chrono::Duration::seconds(3),
        );
        assert_eq!(
            k.orphans(&n, std::slice::from_ref(&i)),
            vec![(svc.clone(), i.clone())]
        );
        // Once the node no longer runs it, it is forgotten.
        assert!(k.orphans(&n, &[]).is_empty());
    }

    #[test]
    fn instances_leaving_a_node_never_lost_are_not_orphans() {
        let (n, svc, i) = (
            NodeId::generate(),
            ServiceId::generate(),
            InstanceId::generate(),
        );
        let t0 = Utc::now();
        let mut k = Known::default();
        k.set_node(&n, node(false), t0);
        k.record_service(&svc, at(&i, &n), |_| true, t0);
        k.record_service(&svc, Usage::default(), |_| false, t0);
        assert!(k.orphans(&n, &[i]).is_empty());
    }

    #[test]
    fn reservations_kept_as_services_change_equal_a_sum_over_every_service() {
        let nodes: Vec<NodeId> = (0..3).map(|_| NodeId::generate()).collect();
        let services: Vec<ServiceId> = (0..5).map(|_| ServiceId::generate()).collect();
        let t0 = Utc::now();
        let mut k = Known::default();
        // The last usage recorded per service: (cpu, mem, nodes).
        let mut model: HashMap<ServiceId, (u32, u32, Vec<NodeId>)> = HashMap::new();
        // Services gain, move and lose instances, change plans, go away.
        for step in 0u32..60 {
            let svc = &services[(step * 7 % 5) as usize];
            let count = (step * 3 % 4) as usize;
            let usage = Usage {
                cpu: 100 * (step % 3 + 1),
                mem: 64 * (step % 5 + 1),
                at: (0..count)
                    .map(|i| {
                        let n = &nodes[(step as usize + i) % nodes.len()];
                        (InstanceId::generate(), n.clone())
                    })
                    .collect(),
            };
            let on = usage.at.iter().map(|(_, n)| n.clone()).collect();
            model.insert(svc.clone(), (usage.cpu, usage.mem, on));
            k.record_service(svc, usage, |_| true, t0);
            for n in &nodes {
                for s in &services {
                    let mut want = (0u32, 0u32);
                    for (other, (cpu, mem, on)) in &model {
                        if other == s {
                            continue;
                        }
                        for _ in on.iter().filter(|at| *at == n) {
                            want = (want.0 + cpu, want.1 + mem);
                        }
                    }
                    assert_eq!(k.reserved_by_others(n, s), want, "step {step}");
                }
            }
        }
        // Services without instances are not kept.
        assert!(k.usage.values().all(|u| !u.at.is_empty()));
    }

    #[test]
    fn a_recovery_long_ago_no_longer_counts() {
        let (n, svc, i) = (
            NodeId::generate(),
            ServiceId::generate(),
            InstanceId::generate(),
        );
        let t0 = Utc::now();
        let mut k = Known::default();
        k.set_node(&n, node(true), t0);
        k.set_node(&n, node(false), t0);
        k.record_service(&svc, at(&i, &n), |_| true, t0);
        let later = t0 + RECENTLY_RECOVERED + chrono::Duration::seconds(1);
        k.record_service(&svc, Usage::default(), |_| false, later);
        assert!(k.orphans(&n, &[i]).is_empty());
    }
}

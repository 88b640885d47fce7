//! The routing table: which instance addresses serve each web service's
//! host names — `<name>.<base-domain>` and its custom domains — folded
//! from the service subjects of the event log.
//!
//! Each web service's events go through the service aggregate's own fold
//! (`berth_domain::service::fold`), so "which deploy is live" and "which
//! instances are healthy" mean exactly what they mean to the scheduler; the
//! router adds only what that fold leaves out, the address each instance
//! reported in `instance_started`.
//!
//! Who gets traffic: the healthy instances of the **live** deploy that run
//! its recorded digest. During a rollout the new deploy's instances become
//! healthy while the old live deploy still serves; the scheduler marks the
//! new deploy live only once all of them are healthy, and `deploy_live` (with
//! the `deploy_deactivated` of the old one, in the same commit) moves the
//! whole route at once. The old instances are stopped only after that, so
//! there is no moment without targets and no moment serving both versions.
//!
//! The table is immutable and replaced whole after each applied commit
//! ([`RouteProjection::publish`]), never while a commit is half applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use berth_domain::service::{self, ServiceState, ServiceStatus};
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Envelope, Event};

/// One instance that may receive traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance: InstanceId,
    /// `ip:port`, as the node reported it.
    pub addr: String,
}

/// What a host name leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteState {
    /// Active: these targets (possibly none yet → 502).
    Serving(Vec<Target>),
    /// Suspended by its owner (→ 503).
    Suspended,
    /// In maintenance mode (→ 503 with a maintenance page; `uri`, when
    /// not empty, is where that page sends browsers).
    Maintenance { uri: String },
}

/// The route of one web service.
#[derive(Debug)]
pub struct Route {
    pub service: ServiceId,
    pub name: String,
    pub state: RouteState,
    /// Plain HTTP is redirected to HTTPS (when the router holds a
    /// certificate for the host) and HTTPS answers carry HSTS (when the
    /// router sends it): the service's setting, on unless turned off.
    pub https_redirect: bool,
    /// The client addresses let through (the service's IP allow list);
    /// `None`: every one.
    pub allow: Option<Arc<[berth_schemas::cidr::Cidr]>>,
    /// Round-robin position; starts over when the route is rebuilt.
    next: AtomicUsize,
}

impl Route {
    pub(crate) fn new(service: ServiceId, name: String, state: RouteState) -> Self {
        Route {
            service,
            name,
            state,
            https_redirect: true,
            allow: None,
            next: AtomicUsize::new(0),
        }
    }

    /// The route with the service's HTTPS redirect setting.
    pub(crate) fn redirecting(mut self, on: bool) -> Self {
        self.https_redirect = on;
        self
    }

    /// The route letting through only clients in `allow` (`None`: all).
    pub(crate) fn allowing(mut self, allow: Option<Arc<[berth_schemas::cidr::Cidr]>>) -> Self {
        self.allow = allow;
        self
    }

    /// Whether a client at `ip` may be served.
    pub fn lets_in(&self, ip: std::net::IpAddr) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|blocks| blocks.iter().any(|b| b.contains(ip)))
    }

    /// The targets, if serving.
    pub fn targets(&self) -> &[Target] {
        match &self.state {
            RouteState::Serving(t) => t,
            RouteState::Suspended | RouteState::Maintenance { .. } => &[],
        }
    }

    /// Where the next request starts in [`Route::targets`] (round robin).
    pub fn next_start(&self) -> usize {
        let n = self.targets().len().max(1);
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }
}

/// Host name (the service name) → route, and custom domain → route.
/// Immutable once published.
#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: HashMap<String, Arc<Route>, foldhash::quality::RandomState>,
    /// Custom domain (normalised: lower case, no port, no trailing dot) →
    /// the route of the web service it was added to.
    domains: HashMap<String, Arc<Route>, foldhash::quality::RandomState>,
    /// Stream sequence the table reflects.
    pub applied_seq: u64,
}

impl RoutingTable {
    /// A table of these routes alone (for tests).
    #[cfg(test)]
    pub(crate) fn of(routes: impl IntoIterator<Item = Route>) -> Self {
        RoutingTable {
            routes: routes
                .into_iter()
                .map(|r| (r.name.clone(), Arc::new(r)))
                .collect(),
            ..RoutingTable::default()
        }
    }

    /// The route for a service name.
    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.get(name)
    }

    /// The route for a request's host (`Host` header or absolute URI):
    /// `<name>.<base_domain>` or a custom domain, in any case, with or
    /// without a port or a trailing dot.
    pub fn route_for_host(&self, host: &str, base_domain: &str) -> Option<&Arc<Route>> {
        let host = crate::proxy::normal_host(host);
        match crate::proxy::service_label(&host, base_domain) {
            Some(name) => self.get(name),
            None => self.domains.get(host.as_ref()),
        }
    }

    /// Every custom domain routed now → its service: the names of every
    /// active or suspended (not deleted) web service's custom domains,
    /// e.g. the names a certificate issuer should hold certificates for.
    /// One pass over the domains routed.
    pub fn custom_domains(&self) -> BTreeMap<String, ServiceId> {
        self.domains
            .iter()
            .map(|(name, route)| (name.clone(), route.service.clone()))
            .collect()
    }

    /// How many services are routed.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when nothing is routed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The current table, swapped whole: readers clone the `Arc` and never
/// see a table change under them. A watch channel, so a request can also
/// wait for the next table.
#[derive(Debug, Clone)]
pub struct Routes(watch::Sender<Arc<RoutingTable>>);

impl Default for Routes {
    fn default() -> Self {
        Routes(watch::Sender::new(Arc::new(RoutingTable::default())))
    }
}

impl Routes {
    /// The table now.
    pub fn load(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.0.borrow())
    }

    /// Replaces the table.
    pub fn store(&self, table: RoutingTable) {
        self.0.send_replace(Arc::new(table));
    }

    /// Notified on every swap.
    pub fn swaps(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.0.subscribe()
    }
}

/// A web service as the router follows it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tracked {
    state: ServiceState,
    /// Listen address of each instance, from its latest `instance_started`.
    addrs: HashMap<InstanceId, String>,
    /// Stream sequence of `service_created`: the older service keeps a name
    /// two owners both use.
    created_seq: u64,
}

/// The read model behind the table. Only web services are kept: private
/// services, workers and cron jobs are never routed publicly, so their
/// events are skipped.
#[derive(Debug, Default)]
pub struct RouteProjection {
    services: HashMap<ServiceId, Tracked>,
    /// Services whose route may have changed since the last publish.
    dirty: HashSet<ServiceId>,
    /// The last built route of each routed service.
    built: HashMap<ServiceId, Arc<Route>>,
    applied_seq: u64,
}

impl RouteProjection {
    /// Records that the log was read up to `seq` (after a restore from a
    /// snapshot, which tells no position of its own).
    pub fn caught_up_to(&mut self, seq: u64) {
        self.applied_seq = self.applied_seq.max(seq);
    }

    /// Applies one event of the log.
    pub fn apply_envelope(&mut self, stream_seq: u64, env: &Envelope) {
        self.applied_seq = self.applied_seq.max(stream_seq);
        let AggregateId::Service(id) = &env.aggregate else {
            return;
        };
        if let Event::ServiceCreated(e) = &env.event {
            if e.service_type == ServiceType::WebService && !self.services.contains_key(id) {
                self.services.insert(
                    id.clone(),
                    Tracked {
                        created_seq: stream_seq,
                        ..Tracked::default()
                    },
                );
            }
        }
        let Some(t) = self.services.get_mut(id) else {
            return;
        };
        t.state = service::fold(std::mem::take(&mut t.state), env);
        match &env.event {
            Event::InstanceStarted(e) => {
                if let Some(addr) = &e.addr {
                    t.addrs.insert(e.instance.clone(), addr.clone());
                }
            }
            Event::InstanceStopped(e) => {
                t.addrs.remove(&e.instance);
            }
            Event::InstanceRescheduled(e) => {
                t.addrs.remove(&e.instance);
            }
            _ => {}
        }
        if t.state.status == ServiceStatus::Deleted {
            // Nothing about it matters any more; free it.
            self.services.remove(id);
        }
        self.dirty.insert(id.clone());
    }

    /// True when something changed since the last [`publish`](Self::publish).
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Builds the table as of everything applied so far.
    pub fn publish(&mut self) -> RoutingTable {
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            let id = id.clone();
            match self.services.get(&id).and_then(|t| build_route(&id, t)) {
                Some(route) => {
                    self.built.insert(id, Arc::new(route));
                }
                None => {
                    self.built.remove(&id);
                }
            }
        }
        // Names are unique per owner, not globally: the oldest service keeps
        // a name in use twice, and the clash is logged.
        let mut by_name: BTreeMap<&str, (u64, &Arc<Route>)> = BTreeMap::new();
        for (id, route) in &self.built {
            let seq = self.services.get(id).map_or(u64::MAX, |t| t.created_seq);
            let (loser, holder) = match by_name.get(route.name.as_str()) {
                None => {
                    by_name.insert(route.name.as_str(), (seq, route));
                    continue;
                }
                Some(&(held, holder)) if held <= seq => (route, holder),
                Some(&(_, newer)) => {
                    by_name.insert(route.name.as_str(), (seq, route));
                    (newer, route)
                }
            };
            // Said once per change of either service, not on every commit.
            if dirty.contains(&loser.service) || dirty.contains(&holder.service) {
                tracing::warn!(service.id = %loser.service, service.name = %loser.name, held_by = %holder.service, "service name already routed to an older service; not routed");
            }
        }
        // Claims keep a custom domain on one service; should two services
        // still list one (an interrupted operation not yet repaired), the
        // older keeps it, as with names.
        let mut by_domain: HashMap<&str, (u64, &Arc<Route>)> = HashMap::new();
        for (id, route) in &self.built {
            let Some(t) = self.services.get(id) else {
                continue;
            };
            for domain in t.state.custom_domains.keys() {
                let held = by_domain.get(domain.as_str()).map(|(seq, _)| *seq);
                if held.is_none_or(|held| held > t.created_seq) {
                    by_domain.insert(domain.as_str(), (t.created_seq, route));
                }
            }
        }
        RoutingTable {
            routes: by_name
                .into_iter()
                .map(|(name, (_, r))| (name.to_owned(), Arc::clone(r)))
                .collect(),
            domains: by_domain
                .into_iter()
                .map(|(name, (_, r))| (name.to_owned(), Arc::clone(r)))
                .collect(),
            applied_seq: self.applied_seq,
        }
    }
}

/// Where the router's snapshot is kept; a new key when what it folds, or
/// how, changes.
pub const SNAPSHOT_KEY: &str = "router-routes-v3";

impl berth_eventlog::projection::Projection for RouteProjection {
    /// The web services followed (a runner restores it only before it
    /// follows the log, so a published table never goes back).
    type Snapshot = HashMap<ServiceId, Tracked>;

    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        self.apply_envelope(stream_seq, env);
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.services
            .iter()
            .map(|(id, t)| {
                let copy = Tracked {
                    state: t.state.clone(),
                    addrs: t.addrs.clone(),
                    created_seq: t.created_seq,
                };
                (id.clone(), copy)
            })
            .collect()
    }

    fn snapshot_ref(&self) -> Option<&Self::Snapshot> {
        Some(&self.services)
    }

    fn restore(&mut self, snapshot: Self::Snapshot) {
        // Every route is built afresh from the restored services.
        self.dirty = snapshot.keys().cloned().collect();
        self.built.clear();
        self.services = snapshot;
    }
}

/// The route of one service now, or `None` when it is not routable (not
/// created, deleted).
fn build_route(id: &ServiceId, t: &Tracked) -> Option<Route> {
    let cfg = t.state.config.as_ref()?;
    let maintenance = cfg.maintenance_mode.as_ref().filter(|m| m.enabled);
    let state = match t.state.status {
        ServiceStatus::Active => match maintenance {
            Some(m) => RouteState::Maintenance { uri: m.uri.clone() },
            None => RouteState::Serving(targets(t)),
        },
        ServiceStatus::Suspended => RouteState::Suspended,
        ServiceStatus::NotCreated | ServiceStatus::Deleted => return None,
    };
    // Entries were checked when set; one that does not read lets no one
    // in rather than everyone.
    let allow = cfg.ip_allow_list.as_ref().map(|list| {
        list.iter()
            .filter_map(|b| b.cidr_block.parse().ok())
            .collect::<Arc<[_]>>()
    });
    Some(
        Route::new(id.clone(), cfg.name.to_ascii_lowercase(), state)
            .redirecting(cfg.https_redirect)
            .allowing(allow),
    )
}

/// Healthy instances of the live deploy running its digest, in id order;
/// not one that is draining (the scheduler stops it next).
fn targets(t: &Tracked) -> Vec<Target> {
    let Some(live) = t.state.live_deploy() else {
        return Vec::new();
    };
    let Some(digest) = live.digest() else {
        return Vec::new();
    };
    t.state
        .instances
        .of_deploy(&live.id)
        .filter(|i| i.is_healthy() && i.draining_since.is_none() && i.digest == digest)
        .filter_map(|i| {
            t.addrs.get(&i.id).map(|addr| Target {
                instance: i.id.clone(),
                addr: addr.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

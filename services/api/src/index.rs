//! The API's read model, folded from the whole log: API keys by SHA-256
//! (to authenticate a request without loading an owner), every service's
//! state (for listings), every service's events timeline, registry
//! credentials (for their listings), the nodes as registered (for the
//! node listing) and the name claims and credential attachments the
//! repairer keeps in line with the services. Writes never consult it: they
//! decide on the aggregate itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_domain::node::{self as node_rules, NodeState};
use berth_domain::service::{self, ServiceState};
use berth_domain::timeline::{Answer, Entry, Query, Timeline, UnknownCursor};
use berth_eventlog::projection::Projection;
use berth_eventlog::{FoldedStates, Version};
use berth_ingress::{CredentialIndex, CredentialView, Links, Repair};
use berth_schemas::ids::{ApiKeyId, CredentialId, NodeId, OwnerId, ServiceId};
use berth_schemas::model::Sealed;
use berth_schemas::{AggregateId, Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dashboard::feed::LiveFeed;

/// A service in the index: when it was created (stream position, for
/// newest-first listings), its state and how far it is folded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Indexed {
    pub created_seq: u64,
    /// Shared with the store's folded state of the service when the index
    /// follows the log in the store's process (see [`ApiIndex::sharing`]).
    pub state: Arc<ServiceState>,
    /// The stream sequence of the service's last commit folded in, and
    /// the sequence of its last event.
    pub at: (u64, u64),
}

impl Indexed {
    /// Whether the service exists and belongs to `owner`.
    fn live_of(&self, owner: &OwnerId) -> bool {
        self.state.exists()
            && self
                .state
                .config
                .as_ref()
                .is_some_and(|c| &c.owner == owner)
    }
}

/// Commits to the log since a service's last after which its state is
/// shared with the store's: a state both hold is copied by whichever side
/// changes it next, which a service written to all the time would pay on
/// every command (a copy grows with its queued deploys). Most services
/// are quiet, and hold one copy; a busy one holds two while it is busy.
pub const QUIET_AFTER: u64 = 4096;

/// Deploys a shared state holds at most: the copy a command then makes
/// of a shared state grows with them, and a service holds ~100 unless
/// deploys queue up by the thousand behind a running one (a rare state,
/// kept in two copies).
pub const SHARED_DEPLOYS_AT_MOST: usize = 256;

impl Indexed {
    /// How far the state is folded, as the store counts it.
    fn version(&self) -> Version {
        let (stream_seq, events) = self.at;
        Version { stream_seq, events }
    }

    /// Whether the state may be shared with the store's at `stream_seq`:
    /// the service had no commit in the [`QUIET_AFTER`] before, and its
    /// state is small enough to copy.
    fn quiet_at(&self, stream_seq: u64) -> bool {
        stream_seq.saturating_sub(self.at.0) > QUIET_AFTER && self.small()
    }

    /// Whether the state is small enough to share ([`SHARED_DEPLOYS_AT_MOST`]).
    fn small(&self) -> bool {
        self.state.deploys.len() <= SHARED_DEPLOYS_AT_MOST
    }

    /// Settles the state with `shared`'s fold of the service at the same
    /// version: one copy of it in the process.
    fn share(&mut self, id: &ServiceId, shared: &FoldedStates) {
        let version = self.version();
        shared.settle(&AggregateId::Service(id.clone()), version, &mut self.state);
    }
}

/// Where the index's snapshot is kept; a new key when what it folds, or
/// how, changes (a snapshot of the old shape is then never read).
pub const SNAPSHOT_KEY: &str = "api-index-v8";

/// A node as the log says it: registered (name, capacity), lost or back,
/// and when that last changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexedNode {
    pub state: NodeState,
    pub changed_at: Option<DateTime<Utc>>,
}

/// Keys and services.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiIndex {
    /// SHA-256 hex → (owner, key), unrevoked keys only.
    keys: HashMap<String, (OwnerId, ApiKeyId)>,
    /// Key id → its SHA-256, to forget it on revocation.
    key_hashes: HashMap<ApiKeyId, String>,
    services: BTreeMap<ServiceId, Indexed>,
    /// Every service's events timeline (SPEC §14), the mapping the notifier
    /// publishes too.
    timeline: Timeline,
    /// Registry credentials, for the application layer's listings (one
    /// runner per process instead of two).
    credentials: CredentialIndex,
    /// Name claims and credential attachments, for the repairer.
    links: Links,
    /// Every node that registered.
    nodes: BTreeMap<NodeId, IndexedNode>,
    /// Each owner's live services, newest first (by creation position):
    /// a listing page is a range of it, whatever the owner's count.
    #[serde(skip)]
    by_owner: HashMap<OwnerId, BTreeMap<std::cmp::Reverse<u64>, ServiceId>>,
    /// The dashboard's live tail of the service events applied here.
    #[serde(skip)]
    live: LiveFeed,
    /// The store's folded states, shared with the quiet services' states
    /// here (see [`QUIET_AFTER`]).
    #[serde(skip)]
    shared: Option<FoldedStates>,
    /// The service whose state was last looked at to be shared.
    #[serde(skip)]
    settled_last: Option<ServiceId>,
}

/// Shared handle on the index.
pub type SharedIndex = Arc<RwLock<ApiIndex>>;

impl ApiIndex {
    /// An empty index that hands the service events it applies to `live`.
    pub fn with_feed(live: LiveFeed) -> Self {
        ApiIndex {
            live,
            ..ApiIndex::default()
        }
    }

    /// This index, sharing each service's state with `states` (the store
    /// of the process it runs in, which decides commands on the same
    /// fold): one copy of a service's state in the process, not two.
    pub fn sharing(mut self, states: FoldedStates) -> Self {
        self.shared = Some(states);
        self
    }

    /// The owner and key a bearer token's SHA-256 belongs to.
    pub fn key(&self, sha256: &str) -> Option<(OwnerId, ApiKeyId)> {
        self.keys.get(sha256).cloned()
    }

    /// The owner's live credentials.
    pub fn credentials(&self, owner: &OwnerId) -> Vec<CredentialView> {
        self.credentials.list(owner)
    }

    /// The name of credential `id`, while it exists.
    pub fn credential_name(&self, id: &CredentialId) -> Option<String> {
        self.credentials.name(id)
    }

    /// The repairs due at `now` (see `berth_ingress::repair`).
    pub fn repairs(&self, now: DateTime<Utc>, grace: Duration) -> Vec<Repair> {
        self.links.repairs(now, grace)
    }

    /// One page of a service's timeline, newest first, or word that the
    /// page reaches past the entries held.
    pub fn timeline(&self, service: &ServiceId, q: &Query) -> Result<Answer, UnknownCursor> {
        self.timeline.answer(service, q)
    }

    /// Event `id` of one of `owner`'s live services, among the entries
    /// each timeline holds (the newest of each service): a walk over the
    /// owner's services, not over every service.
    pub fn event(&self, owner: &OwnerId, id: &str) -> Option<Entry> {
        self.by_owner
            .get(owner)?
            .values()
            .find_map(|service| self.timeline.find(service, id))
    }

    /// A live service's sealed deploy-hook key (`None`: no such service,
    /// as far as this read model knows).
    pub fn hook_key(&self, service: &ServiceId) -> Option<&Sealed> {
        let i = self.services.get(service)?;
        i.state
            .config
            .as_ref()
            .filter(|_| i.state.exists())
            .map(|c| &c.hook_key)
    }

    /// Whether `service` is one of the owner's live services.
    pub fn owns(&self, owner: &OwnerId, service: &ServiceId) -> bool {
        self.services.get(service).is_some_and(|i| i.live_of(owner))
    }

    /// One page of the owner's live services that `keep` accepts, newest
    /// first: `limit` after the service `cursor` names (from the newest
    /// without one). References into the index, nothing copied; the cost
    /// is the page's, not the owner's count (with a filter, the services
    /// passed over to fill the page count too).
    pub fn services_page(
        &self,
        owner: &OwnerId,
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&ServiceId, &ServiceState) -> bool,
    ) -> Result<Vec<(&ServiceId, &ServiceState)>, UnknownCursor> {
        use std::ops::Bound::{Excluded, Unbounded};
        let Some(list) = self.by_owner.get(owner) else {
            return match cursor {
                Some(_) => Err(UnknownCursor),
                None => Ok(Vec::new()),
            };
        };
        let from = match cursor {
            None => Unbounded,
            Some(c) => {
                let i = c
                    .parse::<ServiceId>()
                    .ok()
                    .and_then(|id| self.services.get(&id))
                    .filter(|i| i.live_of(owner))
                    .ok_or(UnknownCursor)?;
                Excluded(std::cmp::Reverse(i.created_seq))
            }
        };
        Ok(list
            .range((from, Unbounded))
            .filter_map(|(_, id)| self.services.get_key_value(id))
            .map(|(id, i)| (id, &*i.state))
            .filter(|(id, s)| keep(id, s))
            .take(limit)
            .collect())
    }

    /// A live service of `owner`'s (`None`: no such service, for this
    /// owner).
    pub fn service(&self, owner: &OwnerId, id: &ServiceId) -> Option<&ServiceState> {
        self.services
            .get(id)
            .filter(|i| i.live_of(owner))
            .map(|i| &*i.state)
    }

    /// The timeline entries of `service` held of type `kind`, committed
    /// after stream sequence `after`, oldest first.
    pub fn timeline_after(&self, service: &ServiceId, after: u64, kind: &str) -> Vec<Entry> {
        self.timeline.after(service, after, kind)
    }

    /// Every registered node.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &IndexedNode)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state.registered.is_some())
    }

    /// How many of `owner`'s instances each node runs (no one else's are
    /// counted: a listing shows an owner only its own).
    pub fn instances_per_node(&self, owner: &OwnerId) -> HashMap<&NodeId, usize> {
        let mut count = HashMap::new();
        for id in self
            .by_owner
            .get(owner)
            .into_iter()
            .flat_map(|l| l.values())
        {
            if let Some(i) = self.services.get(id) {
                for instance in i.state.instances.iter() {
                    *count.entry(&instance.node).or_default() += 1;
                }
            }
        }
        count
    }

    /// Rebuilds the per-owner listing order from the services held.
    fn index_owners(&mut self) {
        self.by_owner.clear();
        for (id, i) in &self.services {
            if let Some(c) = i.state.config.as_ref().filter(|_| i.state.exists()) {
                self.by_owner
                    .entry(c.owner.clone())
                    .or_default()
                    .insert(std::cmp::Reverse(i.created_seq), id.clone());
            }
        }
    }

    /// Services the index holds (deleted ones leave it), and timelines.
    pub fn service_count(&self) -> (usize, usize) {
        (self.services.len(), self.timeline.len())
    }
}

impl ApiIndex {
    /// Applies `commit[index]` (within the commit, as the runner gives it);
    /// a service's state is left as it is unless `fold` (the caller puts
    /// in the state after the whole commit).
    fn apply_at(&mut self, stream_seq: u64, commit: &Arc<[Envelope]>, index: usize, fold: bool) {
        let Some(env) = commit.get(index) else {
            return;
        };
        self.links.apply(stream_seq, env);
        if let AggregateId::Credential(_) = &env.aggregate {
            self.credentials.apply(stream_seq, env);
        }
        match (&env.aggregate, &env.event) {
            (
                AggregateId::Node(node),
                event @ (Event::NodeRegistered(_) | Event::NodeLost(_) | Event::NodeRecovered(_)),
            ) => {
                let n = self.nodes.entry(node.clone()).or_default();
                n.state = node_rules::apply(std::mem::take(&mut n.state), event);
                n.changed_at = Some(env.time);
            }
            (AggregateId::Owner(owner), Event::ApiKeyCreated(e)) => {
                self.key_hashes.insert(e.key.clone(), e.sha256.clone());
                self.keys
                    .entry(e.sha256.clone())
                    .or_insert_with(|| (owner.clone(), e.key.clone()));
            }
            (AggregateId::Owner(_), Event::ApiKeyRevoked(e)) => {
                if let Some(sha) = self.key_hashes.get(&e.key) {
                    if self.keys.get(sha).is_some_and(|(_, k)| *k == e.key) {
                        self.keys.remove(sha);
                    }
                }
            }
            (AggregateId::Service(id), event) => {
                // A service enters with its creation and leaves memory once
                // deleted; later facts about it (its instances stopping)
                // change nothing here.
                let entry = match self.services.get_mut(id) {
                    Some(entry) => entry,
                    None if matches!(event, Event::ServiceCreated(_)) => {
                        self.services.entry(id.clone()).or_insert_with(|| Indexed {
                            created_seq: stream_seq,
                            state: Arc::default(),
                            at: (0, 0),
                        })
                    }
                    None => return,
                };
                if fold {
                    let state = Arc::make_mut(&mut entry.state);
                    *state = service::fold(std::mem::take(state), env);
                }
                entry.at = (stream_seq, env.sequence);
                let (seq, owner) = (
                    entry.created_seq,
                    entry.state.config.as_ref().map(|c| c.owner.clone()),
                );
                self.live
                    .push(stream_seq, id, owner.as_ref(), commit, index);
                if entry.state.exists() {
                    self.timeline.push(stream_seq, env);
                    if let (Event::ServiceCreated(_), Some(owner)) = (event, owner) {
                        self.by_owner
                            .entry(owner)
                            .or_default()
                            .insert(std::cmp::Reverse(seq), id.clone());
                    }
                } else {
                    self.services.remove(id);
                    self.timeline.forget(id);
                    if let Some(list) = owner.and_then(|o| self.by_owner.get_mut(&o)) {
                        list.remove(&std::cmp::Reverse(seq));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The service a commit is about (all its events are that service's) and
/// the service's version once the commit is folded in.
fn service_commit(
    stream_seq: u64,
    commit: &[Envelope],
) -> Option<(&AggregateId, &ServiceId, Version)> {
    let (first, last) = (commit.first()?, commit.last()?);
    let AggregateId::Service(id) = &first.aggregate else {
        return None;
    };
    if commit.iter().any(|e| e.aggregate != first.aggregate) {
        return None;
    }
    let version = Version {
        stream_seq,
        events: last.sequence,
    };
    Some((&first.aggregate, id, version))
}

impl ApiIndex {
    /// The store's fold of service `id` as of its commit at `version`,
    /// when the store already made it (its command appended the commit)
    /// and taking it changes nothing else the commit's events do here:
    /// the service existed before and still does, under one owner.
    fn folded_by_store(
        &self,
        aggregate: &AggregateId,
        id: &ServiceId,
        version: Version,
    ) -> Option<Arc<ServiceState>> {
        let held = &self.services.get(id)?.state;
        let theirs: Arc<ServiceState> = self.shared.as_ref()?.at(aggregate, version)?;
        let owner = |s: &ServiceState| s.config.as_ref().map(|c| c.owner.clone());
        (held.exists() && theirs.exists() && owner(held) == owner(&theirs)).then_some(theirs)
    }

    /// Shares the next service's state (in id order, around) with the
    /// store's if it has become quiet: one service a commit, so every
    /// quiet service comes to be shared without a pass over all of them.
    fn settle_next(&mut self, stream_seq: u64) {
        use std::ops::Bound::{Excluded, Unbounded};
        let Some(shared) = &self.shared else {
            return;
        };
        let after = self.settled_last.as_ref().and_then(|last| {
            self.services
                .range::<ServiceId, _>((Excluded(last), Unbounded))
                .next()
        });
        let Some((id, _)) = after.or_else(|| self.services.iter().next()) else {
            return;
        };
        let id = id.clone();
        if let Some(i) = self
            .services
            .get_mut(&id)
            .filter(|i| i.quiet_at(stream_seq))
        {
            i.share(&id, shared);
        }
        self.settled_last = Some(id);
    }
}

impl Projection for ApiIndex {
    type Snapshot = ApiIndex;

    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        self.apply_at(stream_seq, &Arc::from(vec![env.clone()]), 0, true);
    }

    fn apply_commit(&mut self, stream_seq: u64, events: &Arc<[Envelope]>) {
        // A quiet service's commit: its state is shared after it.
        let quiet = self
            .shared
            .as_ref()
            .and_then(|_| service_commit(stream_seq, events))
            .filter(|(_, id, _)| {
                self.services
                    .get(*id)
                    .is_some_and(|i| i.quiet_at(stream_seq))
            });
        let adopted =
            quiet.and_then(|(aggregate, id, version)| self.folded_by_store(aggregate, id, version));
        for index in 0..events.len() {
            self.apply_at(stream_seq, events, index, adopted.is_none());
        }
        if let Some((_, id, _)) = quiet {
            let Self {
                services, shared, ..
            } = self;
            if let (Some(entry), Some(shared)) = (services.get_mut(id), shared.as_ref()) {
                match adopted {
                    Some(state) => entry.state = state,
                    None => entry.share(id, shared),
                }
            }
        }
        self.settle_next(stream_seq);
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.clone()
    }

    fn snapshot_ref(&self) -> Option<&Self::Snapshot> {
        Some(self)
    }

    fn restore(&mut self, snapshot: Self::Snapshot) {
        let live = std::mem::take(&mut self.live);
        let shared = self.shared.take();
        *self = snapshot;
        self.live = live;
        self.shared = shared;
        self.index_owners();
        if let Some(shared) = &self.shared {
            for (id, i) in &mut self.services {
                if i.small() {
                    i.share(id, shared);
                }
            }
        }
    }
}

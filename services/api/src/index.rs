//! The API's read model, folded from the whole log: API keys by SHA-256
//! (to authenticate a request without loading an owner), every service's
//! state (for listings), every service's events timeline, registry
//! credentials (for their listings) and the name claims and credential
//! attachments the repairer keeps in line with the services. Writes never
//! consult it: they decide on the aggregate itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_domain::service::{self, ServiceState};
use berth_domain::timeline::{Page, Query, Timeline, UnknownCursor};
use berth_eventlog::projection::Projection;
use berth_ingress::{CredentialIndex, CredentialView, Links, Repair};
use berth_schemas::ids::{ApiKeyId, OwnerId, ServiceId};
use berth_schemas::model::Sealed;
use berth_schemas::{AggregateId, Envelope, Event};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A service in the index: when it was created (stream position, for
/// newest-first listings) and its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Indexed {
    pub created_seq: u64,
    pub state: ServiceState,
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
}

/// Shared handle on the index.
pub type SharedIndex = Arc<RwLock<ApiIndex>>;

impl ApiIndex {
    /// The owner and key a bearer token's SHA-256 belongs to.
    pub fn key(&self, sha256: &str) -> Option<(OwnerId, ApiKeyId)> {
        self.keys.get(sha256).cloned()
    }

    /// The owner's live credentials.
    pub fn credentials(&self, owner: &OwnerId) -> Vec<CredentialView> {
        self.credentials.list(owner)
    }

    /// The repairs due at `now` (see `berth_ingress::repair`).
    pub fn repairs(&self, now: DateTime<Utc>, grace: Duration) -> Vec<Repair> {
        self.links.repairs(now, grace)
    }

    /// One page of a service's timeline, newest first.
    pub fn timeline(&self, service: &ServiceId, q: &Query) -> Result<Page, UnknownCursor> {
        self.timeline.query(service, q)
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

    /// The owner's live services, newest first, each with its cursor (its
    /// id): references into the index, nothing copied.
    pub fn services_of(&self, owner: &OwnerId) -> Vec<(String, (&ServiceId, &ServiceState))> {
        let mut out: Vec<(&ServiceId, &Indexed)> = self
            .services
            .iter()
            .filter(|(_, i)| i.live_of(owner))
            .collect();
        out.sort_by_key(|(_, i)| std::cmp::Reverse(i.created_seq));
        out.into_iter()
            .map(|(id, i)| (id.to_string(), (id, &i.state)))
            .collect()
    }

    /// Services the index holds (deleted ones leave it), and timelines.
    pub fn service_count(&self) -> (usize, usize) {
        (self.services.len(), self.timeline.len())
    }
}

impl Projection for ApiIndex {
    type Snapshot = ApiIndex;

    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        self.links.apply(stream_seq, env);
        if let AggregateId::Credential(_) = &env.aggregate {
            self.credentials.apply(stream_seq, env);
        }
        match (&env.aggregate, &env.event) {
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
                            state: ServiceState::default(),
                        })
                    }
                    None => return,
                };
                let state = std::mem::take(&mut entry.state);
                entry.state = service::fold(state, env);
                if entry.state.exists() {
                    self.timeline.push(env);
                } else {
                    self.services.remove(id);
                    self.timeline.forget(id);
                }
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.clone()
    }

    fn restore(&mut self, snapshot: Self::Snapshot) {
        *self = snapshot;
    }
}

//! The read model behind credential listings: every live credential folded
//! from the log with the domain's own `fold`, indexed by owner. Tokens stay
//! sealed here and are never part of a [`CredentialView`].

use std::collections::BTreeMap;

use berth_domain::credential::{self, CredentialState};
use berth_eventlog::projection::Projection;
use berth_schemas::ids::{CredentialId, OwnerId};
use berth_schemas::{AggregateId, Envelope};

use crate::credentials::CredentialView;

/// Every credential ever created, by id (removed ones as `Removed`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CredentialIndex {
    credentials: BTreeMap<CredentialId, CredentialState>,
}

impl CredentialIndex {
    /// The owner's live credentials, by name then id.
    pub fn list(&self, owner: &OwnerId) -> Vec<CredentialView> {
        let mut out: Vec<CredentialView> = self
            .credentials
            .iter()
            .filter_map(|(id, s)| {
                s.active()
                    .filter(|c| &c.owner == owner)
                    .map(|c| CredentialView::of(id, c))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The name of credential `id`, while it exists.
    pub fn name(&self, id: &CredentialId) -> Option<String> {
        self.credentials
            .get(id)
            .and_then(CredentialState::active)
            .map(|c| c.name.clone())
    }
}

impl Projection for CredentialIndex {
    type Snapshot = BTreeMap<CredentialId, CredentialState>;

    fn apply(&mut self, _stream_seq: u64, env: &Envelope) {
        if let AggregateId::Credential(id) = &env.aggregate {
            let state = self.credentials.remove(id).unwrap_or_default();
            self.credentials
                .insert(id.clone(), credential::fold(state, env));
        }
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.credentials.clone()
    }

    fn restore(&mut self, snapshot: Self::Snapshot) {
        self.credentials = snapshot;
    }
}

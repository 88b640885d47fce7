//! Registry credentials (SPEC §3): add, list, show, rotate, remove.
//!
//! The token is sealed with the operator's key before it is decided on, bound
//! to the credential's id (`seal_context::credential_token`), so it is
//! ciphertext in the log and opens only as that credential's token. Nothing
//! here ever returns it: a [`CredentialView`] has id, name, registry (and
//! host), username and updatedAt.
//!
//! Owner scoping is checked inside each decision, against the state the
//! append is conditional on: another owner's credential is "not found".
//! Removal decides on the credential's subject like attachment does, so a
//! concurrent "create service with X" and "remove X" have exactly one winner.

use berth_domain::credential::{self, Command, Credential, CredentialState};
use berth_domain::DomainError;
use berth_runtime::Secret;
use berth_schemas::ids::{CredentialId, OwnerId};
use berth_schemas::model::{seal_context, RegistryKind};
use berth_schemas::AggregateId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{exec, Caller, Ingress, IngressError};

/// A credential as the API shows it: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub id: CredentialId,
    pub name: String,
    pub registry: RegistryKind,
    /// The registry host, for `GENERIC` credentials (or a regional host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub username: String,
    pub updated_at: Option<DateTime<Utc>>,
}

impl CredentialView {
    pub(crate) fn of(id: &CredentialId, c: &Credential) -> Self {
        Self {
            id: id.clone(),
            name: c.name.clone(),
            registry: c.registry,
            host: c.host.clone(),
            username: c.username.clone(),
            updated_at: c.updated_at,
        }
    }
}

/// A credential to add.
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// For people only; not used to authenticate.
    pub name: String,
    pub registry: RegistryKind,
    /// Required for `GENERIC`.
    pub host: Option<String>,
    pub username: String,
    /// Token or password, in clear only in memory.
    pub token: Secret,
}

/// A token rotation (optionally renaming or changing the username).
#[derive(Debug, Clone)]
pub struct Rotation {
    pub token: Secret,
    pub username: Option<String>,
    pub name: Option<String>,
}

fn aggregate(id: &CredentialId) -> AggregateId {
    AggregateId::Credential(id.clone())
}

/// The caller's live credential, or "not found" (also for other owners').
fn owned<'a>(state: &'a CredentialState, owner: &OwnerId) -> Result<&'a Credential, DomainError> {
    state
        .active()
        .filter(|c| &c.owner == owner)
        .ok_or_else(|| DomainError::NotFound {
            what: "registry credential",
            id: String::new(),
        })
}

fn view(id: &CredentialId, state: &CredentialState) -> Result<CredentialView, IngressError> {
    state
        .active()
        .map(|c| CredentialView::of(id, c))
        .ok_or_else(|| IngressError::not_found("registry credential", id))
}

impl Ingress {
    /// Adds a credential for the caller's owner.
    pub async fn add_credential(
        &self,
        caller: &Caller,
        new: NewCredential,
    ) -> Result<CredentialView, IngressError> {
        let id = CredentialId::generate();
        let token = self
            .key
            .seal(&new.token, &seal_context::credential_token(&id))?;
        let command = Command::Create {
            owner: caller.owner.clone(),
            name: new.name,
            registry: new.registry,
            host: new.host,
            username: new.username,
            token,
        };
        let done = exec::run::<credential::CredentialAggregate>(
            &self.store,
            &aggregate(&id),
            &format!("credential-create-{id}"),
            &caller.actor,
            command,
        )
        .await?;
        tracing::info!(credential.id = %id, owner = %caller.owner, "registry credential added");
        view(&id, &done.state)
    }

    /// The caller's credentials (read-your-writes: waits for the read model
    /// to include everything appended before the call).
    pub async fn list_credentials(
        &self,
        caller: &Caller,
    ) -> Result<Vec<CredentialView>, IngressError> {
        self.caught_up().await?;
        (self.read_model.list)(&caller.owner)
            .ok_or_else(|| IngressError::Store("read model lock poisoned".to_owned()))
    }

    /// One of the caller's credentials.
    pub async fn show_credential(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<CredentialView, IngressError> {
        let state: CredentialState = self.load_fold(&aggregate(id), credential::fold).await?;
        owned(&state, &caller.owner)?;
        view(id, &state)
    }

    /// Replaces the token (and optionally username or name); later resolves
    /// use the new token.
    pub async fn rotate_credential(
        &self,
        caller: &Caller,
        id: &CredentialId,
        rotation: Rotation,
    ) -> Result<CredentialView, IngressError> {
        let token = self
            .key
            .seal(&rotation.token, &seal_context::credential_token(id))?;
        // The ciphertext is fresh each time (random nonce): a key from it is
        // unique per rotation and stable across this call's retries.
        let key = format!(
            "credential-rotate-{id}-{}",
            &token
                .ciphertext
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect::<String>()
        );
        let command = Command::Rotate {
            token,
            username: rotation.username,
            name: rotation.name,
        };
        let done = exec::run_when::<credential::CredentialAggregate>(
            &self.store,
            &aggregate(id),
            &key,
            &caller.actor,
            |s: &CredentialState| {
                owned(s, &caller.owner)?;
                Ok(Some(command.clone()))
            },
        )
        .await?;
        tracing::info!(credential.id = %id, "registry credential rotated");
        view(id, &done.state)
    }

    /// Removes a credential; refused (409, naming the services) while any
    /// service uses it.
    pub async fn remove_credential(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<(), IngressError> {
        exec::run_when::<credential::CredentialAggregate>(
            &self.store,
            &aggregate(id),
            &format!("credential-remove-{id}"),
            &caller.actor,
            |s: &CredentialState| {
                owned(s, &caller.owner)?;
                Ok(Some(Command::Remove))
            },
        )
        .await?;
        tracing::info!(credential.id = %id, "registry credential removed");
        Ok(())
    }
}

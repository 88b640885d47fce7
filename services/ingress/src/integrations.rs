//! Integrations: NATS credentials bound to one owner, for programs that send
//! bus commands (`scale`, `restart`, `deploy`) and read the owner's service
//! events. The credentials are shown once, when created; the owner's
//! aggregate keeps the NATS user and a bcrypt hash of the password, which is
//! what the NATS server's users are written from.

use berth_domain::owner::{self, OwnerState};
use berth_runtime::nats_auth::{hash_password, Creds, Role};
use berth_schemas::ids::{IntegrationId, OwnerId};
use berth_schemas::Actor;
use serde::{Deserialize, Serialize};

use crate::{Ingress, IngressError};

/// An integration as listed: never its password or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationView {
    pub id: IntegrationId,
    pub name: String,
    /// The NATS user.
    pub user: String,
    pub revoked: bool,
}

impl Ingress {
    /// Creates an integration of `owner`; returns it and its credentials
    /// (shown once).
    pub async fn create_integration(
        &self,
        owner: &OwnerId,
        name: &str,
        actor: &Actor,
    ) -> Result<(IntegrationView, Creds), IngressError> {
        let id = IntegrationId::generate();
        let role = Role::Integration {
            id: id.clone(),
            owner: owner.clone(),
        };
        let creds = Creds::generate(&role, self.store.subjects());
        let password_bcrypt = hash_password(&creds.password).map_err(IngressError::Store)?;
        let command = owner::Command::CreateIntegration {
            integration: id.clone(),
            name: name.to_owned(),
            user: creds.user.clone(),
            password_bcrypt,
        };
        self.owner_decide(owner, &format!("integration-create-{id}"), actor, command)
            .await?;
        tracing::info!(owner = %owner, integration.id = %id, "integration created");
        let view = IntegrationView {
            id,
            name: name.to_owned(),
            user: creds.user.clone(),
            revoked: false,
        };
        Ok((view, creds))
    }

    /// The owner's integrations (revoked ones included, marked).
    pub async fn list_integrations(
        &self,
        owner: &OwnerId,
    ) -> Result<Vec<IntegrationView>, IngressError> {
        let state: OwnerState = self.load_owner(owner).await?;
        Ok(state
            .integrations
            .iter()
            .map(|(id, i)| IntegrationView {
                id: id.clone(),
                name: i.name.clone(),
                user: i.user.clone(),
                revoked: i.revoked,
            })
            .collect())
    }

    /// Revokes one of the owner's integrations: its NATS user is removed
    /// from the servers berth manages.
    pub async fn revoke_integration(
        &self,
        owner: &OwnerId,
        id: &IntegrationId,
        actor: &Actor,
    ) -> Result<(), IngressError> {
        self.owner_decide(
            owner,
            &format!("integration-revoke-{id}"),
            actor,
            owner::Command::RevokeIntegration {
                integration: id.clone(),
            },
        )
        .await?;
        tracing::info!(owner = %owner, integration.id = %id, "integration revoked");
        Ok(())
    }
}

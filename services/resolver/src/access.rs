//! One image access: parse the reference, open the credential's sealed
//! token (checking it is live and the owner's), resolve with the registry
//! client. Shared by the creation check and deploy resolution, so both
//! classify failures the same way (SPEC §9).

use berth_domain::credential::{self, CredentialState};
use berth_domain::reference::Reference;
use berth_eventlog::EventStore;
use berth_oci::{Credential, ImageRef, RegistryClient};
use berth_runtime::SecretKey;
use berth_schemas::ids::{CredentialId, OwnerId};
use berth_schemas::model::{seal_context, PullFailureReason, ResolvedImage};
use berth_schemas::AggregateId;

/// Why an access did not yield a digest.
#[derive(Debug, Clone)]
pub(crate) enum AccessError {
    /// A SPEC §9 failure to report; the message names no secret.
    Failed {
        reason: PullFailureReason,
        message: String,
    },
    /// The event store could not be read: try again later.
    Store(String),
}

fn failed(reason: PullFailureReason, message: String) -> AccessError {
    AccessError::Failed { reason, message }
}

/// The registry login of credential `id`, if it is `owner`'s, live, and
/// made for the registry `domain`.
pub(crate) async fn credential(
    store: &EventStore,
    key: &SecretKey,
    owner: &OwnerId,
    id: &CredentialId,
    domain: &str,
) -> Result<Credential, AccessError> {
    let (state, _) = store
        .state::<CredentialState, _>(&AggregateId::Credential(id.clone()), credential::fold)
        .await
        .map_err(|e| AccessError::Store(e.to_string()))?;
    let c = state
        .usable(id, owner, domain)
        .map_err(|message| failed(PullFailureReason::Unauthorized, message))?;
    let token = key
        .open(&c.token, &seal_context::credential_token(id))
        .map_err(|e| {
            failed(
                PullFailureReason::Unauthorized,
                format!("registry credential {id} cannot be opened: {e}"),
            )
        })?;
    Ok(Credential::new(c.username.clone(), token.expose()))
}

/// Resolves `image` (a normalised reference) with the optional credential.
pub(crate) async fn resolve(
    store: &EventStore,
    key: &SecretKey,
    client: &RegistryClient,
    owner: &OwnerId,
    image: &str,
    credential_id: Option<&CredentialId>,
) -> Result<ResolvedImage, AccessError> {
    let reference = Reference::parse(image).map_err(|e| {
        failed(
            PullFailureReason::ImageNotFound,
            format!("invalid image reference: {e}"),
        )
    })?;
    let target = ImageRef::try_from(&reference).map_err(|e| failed(e.reason(), e.to_string()))?;
    let login = match credential_id {
        Some(id) => Some(credential(store, key, owner, id, reference.domain()).await?),
        None => None,
    };
    client
        .resolve(&target, login.as_ref())
        .await
        .map_err(|e| failed(e.reason(), e.to_string()))
}

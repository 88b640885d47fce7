//! One image access: parse the reference, open the credential's sealed
//! token (checking it is live and the owner's), resolve with the registry
//! client. Shared by the creation check and deploy resolution, so both
//! classify failures the same way (SPEC §9).

use berth_domain::credential::{self, CredentialState};
use berth_domain::reference::{Reference, DOCKER_HUB};
use berth_eventlog::EventStore;
use berth_oci::{Credential, ImageRef, RegistryClient};
use berth_runtime::SecretKey;
use berth_schemas::ids::{CredentialId, OwnerId};
use berth_schemas::model::{seal_context, PullFailureReason, RegistryKind, ResolvedImage};
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

/// Whether a credential for `registry` (and `host`, if set) may be sent to
/// the registry `domain` of an image reference. A token is never sent to a
/// registry it was not made for.
pub(crate) fn serves(registry: RegistryKind, host: Option<&str>, domain: &str) -> bool {
    if let Some(h) = host {
        return h == domain;
    }
    match registry {
        RegistryKind::Docker => domain == DOCKER_HUB,
        RegistryKind::Github => domain == "ghcr.io",
        RegistryKind::Gitlab => domain == "registry.gitlab.com",
        RegistryKind::GoogleArtifact => {
            domain.ends_with("-docker.pkg.dev") || domain == "gcr.io" || domain.ends_with(".gcr.io")
        }
        RegistryKind::Generic => false,
    }
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
    let loaded = store
        .load(&AggregateId::Credential(id.clone()))
        .await
        .map_err(|e| AccessError::Store(e.to_string()))?;
    let state = loaded
        .events
        .iter()
        .fold(CredentialState::default(), credential::fold);
    let Some(c) = state.active().filter(|c| &c.owner == owner) else {
        return Err(failed(
            PullFailureReason::Unauthorized,
            format!("registry credential {id} does not exist (removed, or not this owner's)"),
        ));
    };
    if !serves(c.registry, c.host.as_deref(), domain) {
        return Err(failed(
            PullFailureReason::Unauthorized,
            format!(
                "registry credential {id} is for {}, not for {domain}",
                c.host
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", c.registry).to_uppercase())
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_only_to_the_registry_they_are_for() {
        assert!(serves(RegistryKind::Docker, None, "docker.io"));
        assert!(!serves(RegistryKind::Docker, None, "ghcr.io"));
        assert!(serves(RegistryKind::Github, None, "ghcr.io"));
        assert!(!serves(RegistryKind::Github, None, "evil.example.com"));
        assert!(serves(RegistryKind::Gitlab, None, "registry.gitlab.com"));
        assert!(serves(
            RegistryKind::GoogleArtifact,
            None,
            "europe-west1-docker.pkg.dev"
        ));
        assert!(serves(RegistryKind::GoogleArtifact, None, "eu.gcr.io"));
        assert!(!serves(
            RegistryKind::GoogleArtifact,
            None,
            "pkg.dev.evil.io"
        ));
        assert!(serves(
            RegistryKind::Generic,
            Some("127.0.0.1:5000"),
            "127.0.0.1:5000"
        ));
        assert!(!serves(
            RegistryKind::Generic,
            Some("127.0.0.1:5000"),
            "127.0.0.1:5001"
        ));
        assert!(!serves(RegistryKind::Generic, None, "127.0.0.1:5000"));
        // An explicit host wins over the kind's default.
        assert!(serves(
            RegistryKind::Github,
            Some("ghcr.example.com"),
            "ghcr.example.com"
        ));
        assert!(!serves(
            RegistryKind::Github,
            Some("ghcr.example.com"),
            "ghcr.io"
        ));
    }
}

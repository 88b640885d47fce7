//! The deploy hook's `imgURL` override (SPEC §6): same repository as the
//! service's image, only the tag or the digest may change.

use super::{Reference, ReferenceError};

/// Why a deploy hook's `imgURL` was refused. All are the caller's fault; the
/// HTTP layer answers 404 for every one of them (SPEC §6), so the messages
/// are for logs and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookOverrideError {
    /// `imgURL` is not a valid image reference.
    #[error("imgURL is not a valid image reference: {0}")]
    Invalid(#[from] ReferenceError),
    /// `imgURL` names another registry or repository than the service's image.
    #[error("imgURL must name the service's repository {expected}, not {got}")]
    DifferentRepository {
        /// The service's repository, `domain/path`.
        expected: String,
        /// Bounded, quoted prefix of the repository `imgURL` normalised to.
        got: String,
    },
    /// `imgURL` has both a tag and a digest; only one may follow the
    /// repository.
    #[error("imgURL may carry a :tag or an @digest after the repository, not both")]
    TagAndDigest,
}

impl HookOverrideError {
    /// A stable snake_case code for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_reference",
            Self::DifferentRepository { .. } => "different_repository",
            Self::TagAndDigest => "tag_and_digest",
        }
    }
}

pub(super) fn hook_override(
    service_image: &Reference,
    img_url: &str,
) -> Result<Reference, HookOverrideError> {
    let wanted = Reference::parse(img_url)?;
    if !wanted.same_repository(service_image) {
        return Err(HookOverrideError::DifferentRepository {
            expected: service_image.name(),
            got: super::echo(&wanted.name()),
        });
    }
    if wanted.tag.is_some() && wanted.digest.is_some() {
        return Err(HookOverrideError::TagAndDigest);
    }
    Ok(wanted)
}

//! The one error type of the application layer. Each variant says whose
//! fault it is, so the HTTP API maps it to a status without string matching.

use berth_domain::{DomainError, ErrorKind};
use berth_runtime::SecretError;
use berth_schemas::model::PullFailureReason;

/// Why a command or query did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The rules refused it (400 invalid, 404 not found, 409 conflict —
    /// including a credential in use, naming the services).
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// The image cannot be pulled with the given credential (SPEC §4, §9):
    /// nothing was created (422).
    #[error("image {image} is not accessible ({reason}): {message}")]
    ImageInaccessible {
        /// The normalised image reference.
        image: String,
        /// SPEC §9's reason.
        reason: PullFailureReason,
        /// What the resolver found; never contains a secret.
        message: String,
    },
    /// The image could not be verified because no resolver answered in
    /// time: nothing was created; retry later (503).
    #[error("image check unavailable: {0}")]
    CheckUnavailable(String),
    /// The event store failed or is too contended; retry later (503).
    #[error("event store unavailable: {0}")]
    Store(String),
    /// The node of the instance a command was for did not answer: nothing
    /// ran, or what ran is not known; retry later (503).
    #[error("{0}")]
    NodeUnavailable(String),
    /// A secret could not be sealed (the operator's key is broken) (500).
    #[error("cannot seal secret: {0}")]
    Secret(#[from] SecretError),
}

impl IngressError {
    /// The HTTP status the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            IngressError::Rejected(e) => match e.kind() {
                ErrorKind::Invalid => 400,
                ErrorKind::NotFound => 404,
                ErrorKind::Conflict => 409,
            },
            IngressError::ImageInaccessible { .. } => 422,
            IngressError::CheckUnavailable(_)
            | IngressError::Store(_)
            | IngressError::NodeUnavailable(_) => 503,
            IngressError::Secret(_) => 500,
        }
    }

    /// True when the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IngressError::CheckUnavailable(_) | IngressError::Store(_)
        )
    }

    /// The SPEC §9 reason, for an inaccessible image.
    pub fn pull_failure(&self) -> Option<PullFailureReason> {
        match self {
            IngressError::ImageInaccessible { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        IngressError::Rejected(DomainError::NotFound {
            what,
            id: id.to_string(),
        })
    }
}

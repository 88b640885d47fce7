//! Why a registry operation failed, and which SPEC §9 reason that is.
//!
//! Messages name the registry, repository and what went wrong; they never
//! carry a password or token (nothing secret is ever formatted into them —
//! credentials only travel in request headers, which are not part of any
//! error), so they can go straight into events and logs.

use berth_runtime::egress::TargetRefused;
use berth_schemas::model::PullFailureReason;

/// A failed resolve, probe or blob fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Unknown repository, tag or digest, or a deleted manifest.
    #[error("image not found: {0}")]
    NotFound(String),
    /// Credential missing, wrong or revoked, or the token service refused it.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Unreachable, timing out or answering 5xx/429 for longer than the
    /// retry budget.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry answered with something that is not a usable manifest
    /// (malformed, over the size cap, wrong structure). Not retried.
    #[error("invalid registry response: {0}")]
    InvalidResponse(String),
    /// No linux/amd64 variant.
    #[error("unsupported platform: {0}")]
    UnsupportedPlatform(String),
    /// A manifest media type berth does not run (e.g. Docker schema 1).
    #[error("unsupported manifest type: {0}")]
    UnsupportedMediaType(String),
    /// Config plus layers exceed the configured limit.
    #[error("image too large: {size} bytes compressed, limit {limit} bytes")]
    TooLarge {
        /// Compressed size (config + layers) as listed in the manifest.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Bytes from the registry do not hash or measure to what was promised.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// The registry host, its token service or a redirect is an internal
    /// address the operator has not allowed. Not retried; nothing was sent.
    #[error("{0}")]
    TargetRefused(TargetRefused),
}

impl ResolveError {
    /// The SPEC §9 reason recorded in the Image Pull Failed event.
    ///
    /// A garbled registry answer counts as the registry being unavailable
    /// (it is not serving a usable image); an unsupported manifest type is
    /// an image requirement failure like a missing platform (SPEC §5). A
    /// registry on a refused address is unavailable to berth.
    pub fn reason(&self) -> PullFailureReason {
        match self {
            ResolveError::NotFound(_) => PullFailureReason::ImageNotFound,
            ResolveError::Unauthorized(_) => PullFailureReason::Unauthorized,
            ResolveError::Unavailable(_)
            | ResolveError::InvalidResponse(_)
            | ResolveError::TargetRefused(_) => PullFailureReason::RegistryUnavailable,
            ResolveError::UnsupportedPlatform(_) | ResolveError::UnsupportedMediaType(_) => {
                PullFailureReason::UnsupportedPlatform
            }
            ResolveError::TooLarge { .. } => PullFailureReason::ImageTooLarge,
            ResolveError::DigestMismatch(_) => PullFailureReason::DigestMismatch,
        }
    }
}

/// One attempt's failure: either worth retrying (after at least
/// `retry_after`, when the registry said so) or final.
#[derive(Debug)]
pub(crate) enum AttemptError {
    Transient {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    Fatal(ResolveError),
}

impl From<ResolveError> for AttemptError {
    fn from(e: ResolveError) -> Self {
        AttemptError::Fatal(e)
    }
}

impl AttemptError {
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        AttemptError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }
}

//! Typed errors of the store. Each variant says whether retrying can help and
//! whose fault it is, so callers (HTTP handlers, workers) can map them to a
//! retry, a 409 or a 5xx without string matching.

use berth_schemas::{AggregateId, DecodeError};

use crate::Version;

/// Why the store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Replicated streams were asked of a server whose per-subject optimistic
    /// concurrency is unsafe on replicated streams (before 2.11): running
    /// would silently let two writers win the same version.
    #[error(
        "nats-server {server_version} cannot run replicated (R{replicas}) event streams safely: \
         per-subject optimistic concurrency is broken on replicated streams before 2.11; \
         upgrade the cluster to nats-server >= 2.11 or use replicas = 1"
    )]
    ReplicasNeedNewerServer {
        /// Version the server reported.
        server_version: String,
        /// Replicas asked for.
        replicas: usize,
    },
    /// The server reports no JetStream, or a version string berth cannot read.
    #[error("nats-server is not usable: {0}")]
    Unsupported(String),
    /// Bad configuration given by the caller.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A stream, bucket or consumer could not be created or read.
    #[error("cannot provision {what}: {reason}")]
    Provision {
        /// Which stream or bucket.
        what: String,
        /// The server's or client's words.
        reason: String,
    },
    /// A request to the server failed or timed out (transient).
    #[error("request to nats-server failed: {0}")]
    Request(String),
    /// A message in the log is not a commit this build can use.
    #[error("event at stream sequence {stream_seq} cannot be used: {source}")]
    Decode {
        /// Where in the stream the bad message is.
        stream_seq: u64,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A snapshot could not be written or read.
    #[error("snapshot {key}: {reason}")]
    Snapshot {
        /// The snapshot key.
        key: String,
        /// What went wrong.
        reason: String,
    },
}

impl StoreError {
    /// True when the same call may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Request(_) | StoreError::Snapshot { .. })
    }

    /// Creating or changing `what` failed: a [`StoreError::Request`] when
    /// the server could not answer for now (timed out, JetStream
    /// unavailable, 5xx: a restarting node, a cluster without quorum),
    /// else a [`StoreError::Provision`].
    pub(crate) fn provision(what: &str, transient: bool, reason: &dyn std::fmt::Display) -> Self {
        if transient {
            StoreError::Request(format!("provisioning {what}: {reason}"))
        } else {
            StoreError::Provision {
                what: what.to_owned(),
                reason: reason.to_string(),
            }
        }
    }
}

/// Whether a JetStream API error is the server's "not now" (5xx: no
/// quorum, no leader, temporarily unavailable) rather than a refusal.
pub(crate) fn server_busy(e: &async_nats::jetstream::Error) -> bool {
    e.code() >= 500
}

/// Whether creating or updating a stream may succeed unchanged later.
pub(crate) fn stream_request_transient(
    e: &async_nats::jetstream::context::CreateStreamError,
) -> bool {
    use async_nats::jetstream::context::CreateStreamErrorKind as K;
    match e.kind() {
        K::JetStreamUnavailable | K::TimedOut => true,
        K::JetStream(e) => server_busy(&e),
        _ => false,
    }
}

/// Whether creating a consumer may succeed unchanged later.
pub(crate) fn consumer_request_transient(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::stream::ConsumerErrorKind as K;
    match e.kind() {
        K::TimedOut | K::Request => true,
        K::JetStream(e) => server_busy(&e),
        _ => false,
    }
}

/// Why an append did not happen (or might not have).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone else appended to the aggregate since `expected` was read: a
    /// normal outcome; reload, decide again, append again.
    #[error("aggregate {aggregate} moved past the expected version (stream seq {})", expected.stream_seq)]
    Conflict {
        /// The aggregate written to.
        aggregate: AggregateId,
        /// The version the caller expected.
        expected: Version,
    },
    /// The publish or its acknowledgement was lost (timeout, disconnect): the
    /// events may or may not be in the log. Retrying with the same idempotency
    /// key is safe: if they landed, the retry reports the original position.
    #[error(
        "outcome unknown for append to {aggregate}: {reason}; retry with the same idempotency key"
    )]
    OutcomeUnknown {
        /// The aggregate written to.
        aggregate: AggregateId,
        /// What failed.
        reason: String,
    },
    /// The server refused the message for a reason retrying will not fix
    /// (no such stream, too large, …).
    #[error("append to {aggregate} refused: {reason}")]
    Refused {
        /// The aggregate written to.
        aggregate: AggregateId,
        /// The server's words.
        reason: String,
    },
    /// Nothing to append (caller's fault).
    #[error("an append needs at least one event")]
    Empty,
    /// The idempotency key is empty or too long (caller's fault).
    #[error("idempotency key must be 1-256 printable ASCII characters without spaces")]
    BadIdempotencyKey,
    /// The commit could not be encoded (never expected for well-formed events).
    #[error(transparent)]
    Encode(#[from] berth_schemas::envelope::EncodeError),
}

impl AppendError {
    /// True for [`AppendError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, AppendError::Conflict { .. })
    }

    /// True when the outcome is unknown and a retry with the same key is safe.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, AppendError::OutcomeUnknown { .. })
    }

    /// True when retrying can help: after a reload for a conflict, as-is (same
    /// key) for an unknown outcome.
    pub fn is_retryable(&self) -> bool {
        self.is_conflict() || self.is_outcome_unknown()
    }
}

/// Why [`crate::EventStore::execute`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The decision function refused the command (the caller's rule said no).
    #[error("rejected: {0}")]
    Rejected(E),
    /// Loading the aggregate failed.
    #[error(transparent)]
    Load(#[from] StoreError),
    /// The append failed in a way retries did not fix.
    #[error(transparent)]
    Append(AppendError),
    /// Every attempt lost to a concurrent writer.
    #[error("gave up after {attempts} conflicting attempts on {aggregate}")]
    TooContended {
        /// The aggregate.
        aggregate: AggregateId,
        /// Attempts made.
        attempts: u32,
    },
}

impl<E> ExecuteError<E> {
    /// True when the same command may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ExecuteError::Rejected(_) => false,
            ExecuteError::Load(e) => e.is_retryable(),
            ExecuteError::Append(e) => e.is_retryable(),
            ExecuteError::TooContended { .. } => true,
        }
    }
}

//! Why a command was refused. Every refusal is the caller's fault (nothing
//! here is retryable: the rules are pure, so the same command against the same
//! state fails the same way); [`DomainError::kind`] tells the API which status
//! to answer (400 / 404 / 409).

use berth_schemas::ids::ServiceId;

/// The three ways a command can be the caller's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The command itself is malformed or breaks a rule on its own (HTTP 400).
    Invalid,
    /// It names something that does not exist (any more) (HTTP 404).
    NotFound,
    /// It is well-formed but the current state does not allow it (HTTP 409).
    Conflict,
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A field is invalid on its own or for this kind of service.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, in the API's camelCase.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The aggregate or an entity inside it does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `service`, `deploy`, `registry credential`, …
        what: &'static str,
        /// The id asked for (empty when the aggregate itself is missing).
        id: String,
    },
    /// The state does not allow the command now.
    #[error("{0}")]
    Conflict(String),
    /// A credential cannot be removed while services use it (SPEC §3).
    #[error(
        "registry credential is in use by {}; replace it on those services first",
        services.iter().map(ServiceId::as_str).collect::<Vec<_>>().join(", ")
    )]
    CredentialInUse {
        /// Every service still using the credential, sorted.
        services: Vec<ServiceId>,
    },
    /// A custom domain belongs to one service across the installation;
    /// who holds it is not said (it may be another owner's).
    #[error("custom domain {name} is already in use by another service")]
    DomainTaken {
        /// The name asked for.
        name: String,
    },
    /// A service name is unique per owner.
    #[error("service name {name:?} is already used by {by}")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The service holding it.
        by: ServiceId,
    },
}

impl DomainError {
    /// Which kind of caller fault this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DomainError::Invalid { .. } => ErrorKind::Invalid,
            DomainError::NotFound { .. } => ErrorKind::NotFound,
            DomainError::Conflict(_)
            | DomainError::CredentialInUse { .. }
            | DomainError::NameTaken { .. }
            | DomainError::DomainTaken { .. } => ErrorKind::Conflict,
        }
    }

    /// The HTTP status the API should answer with.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        DomainError::NotFound {
            what,
            id: id.to_string(),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        DomainError::Conflict(message.into())
    }
}

//! The agent's error kinds. Each says whose fault it is: the image or the
//! service's settings (won't get better by retrying), or the node (runc,
//! the filesystem — may be retried or moved to another node).

use std::path::PathBuf;

/// A runtime (runc) call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime binary could not be started at all.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime ran and refused.
    #[error("runc {op} {id}: {message}")]
    Failed {
        /// `create`, `start`, `kill`, …
        op: &'static str,
        /// Container id.
        id: String,
        /// runc's own message (its log or stderr).
        message: String,
    },
    /// The runtime's output was not what its documentation says.
    #[error("runc {op}: unexpected output: {message}")]
    Output {
        /// Operation.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The container is in a state that does not allow the operation.
    #[error("container {id} is {status}; cannot {op}")]
    InvalidState {
        /// Container id.
        id: String,
        /// Its status.
        status: String,
        /// What was attempted.
        op: &'static str,
    },
}

/// Building a bundle from an image config and a service's settings failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The image config JSON is not an image config.
    #[error("image config: {0}")]
    ImageConfig(String),
    /// Neither Entrypoint, Cmd nor a custom command gives a process.
    #[error("the image has no Entrypoint or Cmd and the service sets no command")]
    NoCommand,
    /// The custom command has unbalanced quotes or a trailing backslash.
    #[error("command {0:?}: unbalanced quote or trailing backslash")]
    CommandSyntax(String),
    /// `User` names a user or group the image does not define.
    #[error("user {0:?} is not numeric and not in the image's /etc/passwd or /etc/group")]
    UnknownUser(String),
    /// The image's user or group is outside the ids the instance's user
    /// namespace maps.
    #[error("the image runs as id {id}, and instances here run in a user namespace of ids 0 to {}", size.saturating_sub(1))]
    UnmappedUser {
        /// The user or group id.
        id: u32,
        /// How many ids the namespace maps.
        size: u32,
    },
    /// An environment variable name is empty or contains `=`.
    #[error("environment variable name {0:?} is invalid")]
    EnvName(String),
    /// Filesystem work on the node failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl BundleError {
    /// Whether the image or the service's settings are at fault (retrying
    /// on any node gives the same answer).
    pub fn is_config_fault(&self) -> bool {
        !matches!(self, BundleError::Io { .. })
    }
}

/// What the agent's API returns.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bundle building failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// runc failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// An instance with this id is already supervised.
    #[error("instance {0} already runs on this node")]
    Duplicate(String),
    /// No such instance here.
    #[error("instance {0} is not on this node")]
    UnknownInstance(String),
    /// The instance is on this node but its process is not running now.
    #[error("instance {0} is not running now")]
    NotRunning(String),
    /// The agent is shutting down or detached.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The instance's network could not be set up or removed.
    #[error("network: {0}")]
    Network(#[from] crate::net::NetError),
    /// The instance asks for a network and the agent has none.
    #[error("instance {0} needs a network and this agent has none configured")]
    NoNetwork(String),
    /// Node filesystem or process-level failure.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A service's disk could not be made, mounted or removed.
    #[error("disk {id}: {message}")]
    Disk {
        /// `dsk-…`.
        id: String,
        /// Why (the system tool's own words).
        message: String,
    },
    /// The instance's state file could not be read or written.
    #[error("state file {path}: {message}")]
    State {
        /// Where.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.into();
    move |source| BundleError::Io { path, source }
}

pub(crate) fn agent_io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |source| AgentError::Io { path, source }
}

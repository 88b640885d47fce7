//! First start of an installation: if `$BERTH_DATA_DIR/credentials.json`
//! does not exist, create an owner and an API key and write
//! `{ownerId, apiKeyId?, apiKey, apiUrl}` there, readable by the operator
//! only (0600). `berth up` prints where.
//!
//! A start can die at any point, and the log can take an append whose
//! answer is lost, so the owner and key are chosen before anything is
//! appended and kept in `credentials.pending.json` (0600, written whole);
//! a later start finishes with the same ones (both appends are
//! idempotent), so no second owner is ever made. The credentials file is
//! written whole, last: it exists complete or not at all. Two starts at
//! once take turns on a lock file; the second finds the first's file.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_ingress::{Ingress, IngressError};
use berth_runtime::Secret;
use berth_schemas::ids::{ApiKeyId, OwnerId, UserId};
use berth_schemas::Actor;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// The owner and key a first start chose, until its credentials file is
/// written.
pub const PENDING_FILE: &str = "credentials.pending.json";
/// Held by the start that is bootstrapping.
const LOCK_FILE: &str = "credentials.lock";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsFile {
    pub owner_id: String,
    /// The key's id (files written by older versions lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    pub api_key: String,
    pub api_url: String,
}

/// What a first start chose before appending anything.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    owner_id: OwnerId,
    api_key_id: ApiKeyId,
    api_key: String,
}

/// The outcome of [`bootstrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    /// Where the credentials are.
    pub path: PathBuf,
    /// True when this call created them (first start).
    pub created: bool,
}

/// Why bootstrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ingress(#[from] IngressError),
}

/// The log not answering yet is worth waiting for; nothing else is.
impl berth_eventlog::start::Retryable for BootstrapError {
    fn is_retryable(&self) -> bool {
        matches!(self, BootstrapError::Ingress(IngressError::Store(_)))
    }
}

/// The credentials file when it exists, its `apiUrl` brought up to
/// `api_url` first (the API may have moved since it was written; the CLI
/// reads the address there).
fn existing(data_dir: &Path, api_url: &str) -> Option<Bootstrapped> {
    let path = data_dir.join(CREDENTIALS_FILE);
    if !path.exists() {
        return None;
    }
    // A start that died after writing it left its choice behind.
    let _ = std::fs::remove_file(data_dir.join(PENDING_FILE));
    if let Err(e) = refresh_api_url(&path, api_url) {
        tracing::warn!(path = %path.display(), error = %e, "could not update apiUrl in the credentials file");
    }
    Some(Bootstrapped {
        path,
        created: false,
    })
}

/// Rewrites `apiUrl` in the credentials file at `path` when it differs
/// (a new file beside it, mode 0600, renamed over it: never half written).
fn refresh_api_url(path: &Path, api_url: &str) -> std::io::Result<()> {
    let text = std::fs::read(path)?;
    let Ok(mut file) = serde_json::from_slice::<CredentialsFile>(&text) else {
        // Not ours to repair: the CLI says what is wrong with it.
        return Ok(());
    };
    if file.api_url == api_url {
        return Ok(());
    }
    file.api_url = api_url.to_owned();
    write_private(path, &file)
}

/// `value` as JSON at `path`, the operator's only (0600), written whole
/// (a new file beside it renamed over it).
fn write_private(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    berth_runtime::write_whole(path, &json, 0o600, 0o700)
}

/// [`bootstrap`] for callers that hold only the store and the key (the
/// `berth up` wiring, before the components start): a short-lived
/// application layer is started for it and stopped after.
pub async fn bootstrap_store(
    store: &berth_eventlog::EventStore,
    key: &berth_runtime::SecretKey,
    data_dir: &Path,
    api_url: &str,
) -> Result<Bootstrapped, BootstrapError> {
    // Checked here too, so a later start does not start an application
    // layer for nothing.
    if let Some(done) = existing(data_dir, api_url) {
        return Ok(done);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let ingress = Ingress::start(
        store.clone(),
        key.clone(),
        berth_ingress::IngressOptions::default(),
        stop.clone(),
        &tracker,
    )
    .await?;
    let done = bootstrap(&ingress, data_dir, api_url).await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    done
}

/// Creates the first owner, its API key and the credentials file, unless
/// the file exists; finishes what an earlier start began.
pub async fn bootstrap(
    ingress: &Ingress,
    data_dir: &Path,
    api_url: &str,
) -> Result<Bootstrapped, BootstrapError> {
    if let Some(done) = existing(data_dir, api_url) {
        return Ok(done);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootstrapError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    // One start at a time; a second one waits, then finds the file.
    let lock_path = data_dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(io(&lock_path))?;
    if let Some(done) = existing(data_dir, api_url) {
        return Ok(done);
    }
    let pending_path = data_dir.join(PENDING_FILE);
    let pending = match read_pending(&pending_path) {
        Some(p) => {
            tracing::info!(owner = %p.owner_id, "finishing the first owner an earlier start began");
            p
        }
        None => {
            let p = Pending {
                owner_id: OwnerId::User(UserId::generate()),
                api_key_id: ApiKeyId::generate(),
                api_key: berth_ingress::owners::new_api_key().expose().to_owned(),
            };
            write_private(&pending_path, &p).map_err(io(&pending_path))?;
            p
        }
    };
    let owner = &pending.owner_id;
    ingress.ensure_owner(owner, "admin").await?;
    let actor = Actor::system("bootstrap");
    let secret = Secret::new(pending.api_key.clone());
    ingress
        .register_api_key(owner, &pending.api_key_id, &secret, "bootstrap", &actor)
        .await?;
    let path = data_dir.join(CREDENTIALS_FILE);
    let body = CredentialsFile {
        owner_id: owner.to_string(),
        api_key_id: Some(pending.api_key_id.to_string()),
        api_key: pending.api_key,
        api_url: api_url.to_owned(),
    };
    write_private(&path, &body).map_err(io(&path))?;
    if let Err(e) = std::fs::remove_file(&pending_path) {
        tracing::warn!(path = %pending_path.display(), error = %e, "could not remove the pending credentials");
    }
    drop(lock);
    tracing::info!(owner = %owner, path = %path.display(), "created the first owner and API key");
    Ok(Bootstrapped {
        path,
        created: true,
    })
}

/// The choice an earlier start kept; `None` when there is none, or when
/// it is unreadable (it is written whole, so only a hand edit makes it
/// so; a new choice is made then).
fn read_pending(path: &Path) -> Option<Pending> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            // Where, not what: the file holds a key.
            tracing::warn!(path = %path.display(), line = e.line(), column = e.column(), "ignoring unreadable pending credentials");
            None
        }
    }
}

//! First start of an installation: if `$BERTH_DATA_DIR/credentials.json`
//! does not exist, create an owner and an API key and write
//! `{ownerId, apiKey, apiUrl}` there, readable by the operator only (0600).
//! `berth up` prints where. The file is created exclusively, so two
//! starts at once cannot both write one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_ingress::{Ingress, IngressError};
use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::Actor;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsFile {
    pub owner_id: String,
    pub api_key: String,
    pub api_url: String,
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

/// The credentials file, when an earlier start wrote it.
/// The credentials file when it exists, its `apiUrl` brought up to
/// `api_url` first (the API may have moved since it was written; the CLI
/// reads the address there).
fn existing(data_dir: &Path, api_url: &str) -> Option<Bootstrapped> {
    let path = data_dir.join(CREDENTIALS_FILE);
    if !path.exists() {
        return None;
    }
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
    let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
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
/// the file exists.
pub async fn bootstrap(
    ingress: &Ingress,
    data_dir: &Path,
    api_url: &str,
) -> Result<Bootstrapped, BootstrapError> {
    if let Some(done) = existing(data_dir, api_url) {
        return Ok(done);
    }
    let path = data_dir.join(CREDENTIALS_FILE);
    let io = |source| BootstrapError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    // Claim the file first, so a second start at the same time backs off.
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Ok(Bootstrapped {
                path,
                created: false,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let written: Result<(), BootstrapError> = async {
        let owner = OwnerId::User(UserId::generate());
        ingress.ensure_owner(&owner, "admin").await?;
        let actor = Actor::system("bootstrap");
        let (_, key) = ingress.create_api_key(&owner, "bootstrap", &actor).await?;
        let body = CredentialsFile {
            owner_id: owner.to_string(),
            api_key: key.expose().to_owned(),
            api_url: api_url.to_owned(),
        };
        let json = serde_json::to_vec_pretty(&body).map_err(|e| io(e.into()))?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        tracing::info!(owner = %owner, path = %path.display(), "created the first owner and API key");
        Ok(())
    }
    .await;
    if let Err(e) = written {
        // Leave no half-written file behind: the next start tries again.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Bootstrapped {
        path,
        created: true,
    })
}

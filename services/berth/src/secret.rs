//! Where `berth up` gets the installation's secret key (which seals registry
//! tokens and hook keys at rest): `BERTH_SECRET_KEY` wins; otherwise
//! `$BERTH_DATA_DIR/secret.key` is read, or created with mode 0600 on first
//! start. Loading and sealing live in `berth_runtime::secrets`; this module
//! only decides the source and says which it was. The key is never logged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_runtime::secrets::SecretKey;

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `BERTH_SECRET_KEY`.
    Env,
    /// An existing file.
    File(PathBuf),
    /// A file created just now.
    Created(PathBuf),
}

/// Checks a `BERTH_SECRET_KEY` value; the message never echoes it.
pub fn check(value: &str) -> Result<(), String> {
    SecretKey::from_base64(value)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The key's file in `data_dir`, used when `BERTH_SECRET_KEY` is unset.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("secret.key")
}

/// Loads the key from `env_value`, else from or into [`key_file`].
pub fn load_or_create(
    env_value: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<(SecretKey, KeySource)> {
    if let Some(v) = env_value {
        let key = SecretKey::from_base64(v).context("BERTH_SECRET_KEY")?;
        return Ok((key, KeySource::Env));
    }
    let path = key_file(data_dir);
    let existed = path.exists();
    let key = SecretKey::load_or_create(&path)?;
    let source = if existed {
        KeySource::File(path)
    } else {
        KeySource::Created(path)
    };
    Ok((key, source))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let (a, src) = load_or_create(None, dir.path()).unwrap();
        assert_eq!(src, KeySource::Created(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, src) = load_or_create(None, dir.path()).unwrap();
        assert_eq!(src, KeySource::File(path.clone()));
        assert_eq!(a.kid(), b.kid());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(None, dir.path()).is_err());
    }

    #[test]
    fn env_key_wins_and_must_be_32_bytes_of_base64() {
        let dir = tempfile::tempdir().unwrap();
        let good = SecretKey::generate_base64();
        let (_, src) = load_or_create(Some(&good), dir.path()).unwrap();
        assert_eq!(src, KeySource::Env);
        assert!(!dir.path().join("secret.key").exists());
        assert!(check(&good).is_ok());
        assert!(check("c2hvcnQ=").is_err());
        assert!(check("not base64!").is_err());
    }
}

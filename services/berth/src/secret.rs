//! The installation's secret key (32 random bytes, base64), which seals
//! registry tokens and hook keys at rest. `BERTH_SECRET_KEY` wins; otherwise
//! `$BERTH_DATA_DIR/secret.key` is read, or created with mode 0600 on first
//! start. The key itself is never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use data_encoding::BASE64;
use rand::RngCore;

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

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

/// A loaded key (bytes kept out of `Debug`).
pub struct SecretKey {
    #[allow(dead_code)] // read by the credential sealing code (later issue)
    bytes: [u8; KEY_LEN],
    pub source: KeySource,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Decodes a base64 key; the message never echoes the value.
pub fn decode(value: &str) -> Result<[u8; KEY_LEN], String> {
    let bytes = BASE64
        .decode(value.trim().as_bytes())
        .map_err(|_| "is not valid base64".to_owned())?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must decode to {KEY_LEN} bytes, got {}", bytes.len()))
}

/// Loads the key from `env_value`, else from or into `data_dir/secret.key`.
pub fn load_or_create(env_value: Option<&str>, data_dir: &Path) -> anyhow::Result<SecretKey> {
    if let Some(v) = env_value {
        let bytes = decode(v).map_err(|m| anyhow::anyhow!("BERTH_SECRET_KEY {m}"))?;
        return Ok(SecretKey {
            bytes,
            source: KeySource::Env,
        });
    }
    let path = data_dir.join("secret.key");
    if path.exists() {
        check_private(&path)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let bytes = decode(&text).map_err(|m| anyhow::anyhow!("{} {m}", path.display()))?;
        return Ok(SecretKey {
            bytes,
            source: KeySource::File(path),
        });
    }
    let mut bytes = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut bytes);
    // create_new + mode: the file never exists with wider permissions, and two
    // starts racing cannot both write a key.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", BASE64.encode(&bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(SecretKey {
        bytes,
        source: KeySource::Created(path),
    })
}

fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(None, dir.path()).unwrap();
        let path = dir.path().join("secret.key");
        assert_eq!(a.source, KeySource::Created(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(None, dir.path()).unwrap();
        assert_eq!(b.source, KeySource::File(path.clone()));
        assert_eq!(a.bytes, b.bytes);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(None, dir.path()).is_err());
    }

    #[test]
    fn env_key_must_be_32_bytes_of_base64() {
        assert!(decode(&BASE64.encode(&[7u8; 32])).is_ok());
        assert!(decode(&BASE64.encode(&[7u8; 16])).is_err());
        assert!(decode("not base64!").is_err());
    }
}

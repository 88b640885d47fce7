//! Sealing secrets (registry tokens, hook keys, env values, webhook secrets)
//! with the operator's key before they reach the event log.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per seal (no nonce
//! bookkeeping across processes), and associated data binding each ciphertext
//! to where it belongs (e.g. the credential id), so a sealed value copied
//! into another aggregate does not open. The key comes from
//! `BERTH_SECRET_KEY` (base64 of 32 bytes) or a key file that `berth up`
//! creates with mode 0600 on first start.

use std::fmt;
use std::io::Write;
use std::path::Path;

use berth_schemas::model::Sealed;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use rand::RngCore;
use sha2::{Digest, Sha256};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Why a key could not be loaded or a secret not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key is not base64 of exactly 32 bytes (the caller's configuration).
    #[error("secret key must be base64 of 32 bytes")]
    BadKey,
    /// A node key (private, or a registration's public key) is not base64
    /// of exactly 32 bytes.
    #[error("node key must be base64 of 32 bytes")]
    BadNodeKey,
    /// The key file could not be read or created.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by others than its owner.
    #[error("secret key file {0} must not be readable by group or others (chmod 600)")]
    KeyFileMode(String),
    /// The value was sealed with another key.
    #[error("sealed with key {found}, this process has key {have}")]
    WrongKey { found: String, have: String },
    /// Ciphertext tampered with, truncated, or bound to another context.
    #[error("sealed value does not open (tampered, or belongs elsewhere)")]
    Corrupt,
}

/// A secret in clear, only in memory. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a clear value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one place that needs it (an HTTP header, …).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The operator's sealing key.
#[derive(Clone)]
pub struct SecretKey {
    kid: String,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(kid={})", self.kid)
    }
}

impl SecretKey {
    /// A key from base64 of 32 bytes (`BERTH_SECRET_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = BASE64
            .decode(text.trim().as_bytes())
            .map_err(|_| SecretError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(bytes).map_err(|_| SecretError::BadKey)?;
        // The key id reveals nothing usable: 8 hex chars of a hash of the key.
        let digest = Sha256::digest(bytes);
        let kid = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { kid, cipher })
    }

    /// A fresh random key, base64.
    pub fn generate_base64() -> String {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        BASE64.encode(&bytes)
    }

    /// Reads the key file at `path`, creating it (mode 0600) when absent.
    /// An existing file readable by group or others is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        Self::from_base64(&read_or_create_key_file(path, Self::generate_base64)?)
    }

    /// The key id recorded beside every ciphertext.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Seals `secret`, bound to `context` (e.g. `"credential:rgc-…:token"`).
    pub fn seal(&self, secret: &Secret, context: &str) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(Sealed {
            kid: self.kid.clone(),
            ciphertext: BASE64.encode(&out),
        })
    }

    /// Opens a value sealed by [`SecretKey::seal`] with the same `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret, SecretError> {
        if sealed.kid != self.kid {
            return Err(SecretError::WrongKey {
                found: sealed.kid.clone(),
                have: self.kid.clone(),
            });
        }
        let bytes = BASE64
            .decode(sealed.ciphertext.as_bytes())
            .map_err(|_| SecretError::Corrupt)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let clear = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(clear)
            .map(Secret)
            .map_err(|_| SecretError::Corrupt)
    }
}

/// The text of the key file at `path`, written first (mode 0600, synced)
/// with `generate()` when the file does not exist. An existing file
/// readable by group or others is refused: a key others could read is no
/// longer only this machine's.
pub(crate) fn read_or_create_key_file(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> Result<String, SecretError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io_err = |source| SecretError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(generate().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::KeyFileMode(path.display().to_string()));
    }
    std::fs::read_to_string(path).map_err(io_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_base64(&SecretKey::generate_base64()).unwrap()
    }

    #[test]
    fn sealed_values_open_with_the_same_key_and_context_only() {
        let k = key();
        let token = Secret::new("ghp_superSecretToken123");
        let sealed = k.seal(&token, "credential:rgc-a:token").unwrap();
        assert!(!sealed.ciphertext.contains("superSecret"));
        assert_eq!(k.open(&sealed, "credential:rgc-a:token").unwrap(), token);
        assert!(matches!(
            k.open(&sealed, "credential:rgc-b:token"),
            Err(SecretError::Corrupt)
        ));
        assert!(matches!(
            key().open(&sealed, "credential:rgc-a:token"),
            Err(SecretError::WrongKey { .. })
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let mut sealed = k.seal(&Secret::new("x"), "c").unwrap();
        let mut bytes = BASE64.decode(sealed.ciphertext.as_bytes()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        sealed.ciphertext = BASE64.encode(&bytes);
        assert!(matches!(k.open(&sealed, "c"), Err(SecretError::Corrupt)));
        sealed.ciphertext = "AAAA".into();
        assert!(matches!(k.open(&sealed, "c"), Err(SecretError::Corrupt)));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let sealed = key().seal(&s, "c").unwrap();
        assert!(!format!("{sealed:?}").contains(&sealed.ciphertext));
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::load_or_create(&path),
            Err(SecretError::KeyFileMode(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert!(SecretKey::from_base64(&BASE64.encode(&[0u8; 16])).is_err());
    }
}

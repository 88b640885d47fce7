//! Sealing a work item's secrets to the one node it is for.
//!
//! A node holds no installation key ([`SecretKey`]). It makes an X25519 key
//! pair once, keeps the private part in its data dir (mode 0600) and
//! publishes the public part in its registration. Whoever composes a node's
//! work item (the scheduler, the cron component) opens the service's env
//! values and registry login with the installation key and seals each to
//! that node, sealed-box style: a fresh ephemeral X25519 key per value,
//! HKDF-SHA256 over the shared secret (salted with both public keys),
//! XChaCha20-Poly1305 with associated data naming the node, service,
//! instance and what the value is (`seal_context::node_*`). Only that node
//! opens it, and only where it was put: a value copied into another node's,
//! instance's or field's item does not open. A copied work item, or a
//! node's whole disk, gives away what that node's work needed, nothing of
//! other owners' tokens, hook keys or notification secrets.
//!
//! Wire form: a [`Sealed`] whose `kid` names the node key and whose
//! ciphertext is base64 of ephemeral public key (32) ‖ nonce (24) ‖
//! ciphertext and tag.

use std::fmt;
use std::path::Path;

use berth_schemas::ids::{CredentialId, InstanceId, NodeId, ServiceId};
use berth_schemas::model::{seal_context, EnvVars, Sealed, SecretFiles};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

use crate::secrets::{read_or_create_key_file, Secret, SecretError, SecretKey};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Domain separation: a key derived here is never one derived elsewhere.
const HKDF_INFO: &[u8] = b"berth node seal v1";

/// A node's public key, as its registration publishes it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodePublicKey {
    key: PublicKey,
    kid: String,
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({})", self.kid)
    }
}

impl NodePublicKey {
    /// A key from base64 of 32 bytes (a registration's `public_key`).
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes: [u8; KEY_LEN] = BASE64
            .decode(text.trim().as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SecretError::BadNodeKey)?;
        Ok(Self::from_key(PublicKey::from(bytes)))
    }

    fn from_key(key: PublicKey) -> Self {
        // Like the installation key's id: 8 hex chars of a hash, with a
        // prefix so an error says which kind of key a value was sealed to.
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            key,
            kid: format!("node-{hex}"),
        }
    }

    /// Base64 of the 32 bytes, as registrations carry it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.key.as_bytes())
    }

    /// The key id recorded beside every value sealed to this key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Seals `secret` to this key, bound to `context`.
    pub fn seal(&self, secret: &Secret, context: &str) -> Result<Sealed, SecretError> {
        let mut ephemeral = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut ephemeral);
        let ephemeral = StaticSecret::from(ephemeral);
        let ephemeral_public = PublicKey::from(&ephemeral);
        let cipher = cipher(
            ephemeral.diffie_hellman(&self.key),
            &ephemeral_public,
            &self.key,
        )?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = Vec::with_capacity(KEY_LEN + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(ephemeral_public.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(Sealed {
            kid: self.kid.clone(),
            ciphertext: BASE64.encode(&out),
        })
    }

    /// Seals a registry login (username and token as one value, so neither
    /// can be swapped for another's), bound to `context`.
    pub fn seal_login(
        &self,
        username: &str,
        token: &Secret,
        context: &str,
    ) -> Result<Sealed, SecretError> {
        let clear = serde_json::json!({ "username": username, "token": token.expose() });
        self.seal(&Secret::new(clear.to_string()), context)
    }
}

/// The AEAD key of one sealed value: HKDF-SHA256 over the X25519 shared
/// secret, salted with the ephemeral and the recipient's public keys (so
/// the key is bound to both, as in libsodium's sealed boxes).
fn cipher(
    shared: SharedSecret,
    ephemeral_public: &PublicKey,
    recipient: &PublicKey,
) -> Result<XChaCha20Poly1305, SecretError> {
    // A low-order point gives an all-zero secret anyone can compute.
    if !shared.was_contributory() {
        return Err(SecretError::Corrupt);
    }
    let mut salt = [0u8; 2 * KEY_LEN];
    salt[..KEY_LEN].copy_from_slice(ephemeral_public.as_bytes());
    salt[KEY_LEN..].copy_from_slice(recipient.as_bytes());
    let mut key = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(HKDF_INFO, &mut key)
        .map_err(|_| SecretError::Corrupt)?;
    let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| SecretError::Corrupt);
    key.fill(0);
    cipher
}

/// A node's key pair. The private part never leaves the node; `Debug`
/// shows only the key id.
#[derive(Clone)]
pub struct NodeKeyPair {
    secret: StaticSecret,
    public: NodePublicKey,
}

impl fmt::Debug for NodeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKeyPair({})", self.public.kid)
    }
}

impl NodeKeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = NodePublicKey::from_key(PublicKey::from(&secret));
        Self { secret, public }
    }

    /// Reads the private key at `path` (base64 of 32 bytes), creating it
    /// with mode 0600 when absent. A file readable by group or others is
    /// refused.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let text = read_or_create_key_file(path, || {
            let mut bytes = [0u8; KEY_LEN];
            rand::rng().fill_bytes(&mut bytes);
            BASE64.encode(&bytes)
        })?;
        let bytes: [u8; KEY_LEN] = BASE64
            .decode(text.trim().as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SecretError::BadNodeKey)?;
        Ok(Self::from_secret(StaticSecret::from(bytes)))
    }

    /// The public part, for the node's registration.
    pub fn public(&self) -> &NodePublicKey {
        &self.public
    }

    /// Opens a value sealed to this node's public key with the same
    /// `context`.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret, SecretError> {
        if sealed.kid != self.public.kid {
            return Err(SecretError::WrongKey {
                found: sealed.kid.clone(),
                have: self.public.kid.clone(),
            });
        }
        let bytes = BASE64
            .decode(sealed.ciphertext.as_bytes())
            .map_err(|_| SecretError::Corrupt)?;
        if bytes.len() < KEY_LEN + NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (ephemeral, rest) = bytes.split_at(KEY_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let ephemeral: [u8; KEY_LEN] = ephemeral.try_into().map_err(|_| SecretError::Corrupt)?;
        let ephemeral = PublicKey::from(ephemeral);
        let cipher = cipher(
            self.secret.diffie_hellman(&ephemeral),
            &ephemeral,
            &self.public.key,
        )?;
        let clear = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(clear)
            .map(Secret::new)
            .map_err(|_| SecretError::Corrupt)
    }

    /// Opens a login sealed by [`NodePublicKey::seal_login`]: username and
    /// token.
    pub fn open_login(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<(String, Secret), SecretError> {
        let clear = self.open(sealed, context)?;
        let v: serde_json::Value =
            serde_json::from_str(clear.expose()).map_err(|_| SecretError::Corrupt)?;
        match (v["username"].as_str(), v["token"].as_str()) {
            (Some(u), Some(t)) => Ok((u.to_owned(), Secret::new(t))),
            _ => Err(SecretError::Corrupt),
        }
    }
}

/// What composes a node's work item: the installation key, to open the
/// service's secrets, and the node's id and public key, to seal them to.
#[derive(Debug, Clone, Copy)]
pub struct ForNode<'a> {
    pub key: &'a SecretKey,
    pub node: &'a NodeId,
    pub to: &'a NodePublicKey,
}

impl ForNode<'_> {
    /// The service's env values (as the service keeps them: sealed with the
    /// installation key) sealed to the node for `instance`.
    pub fn seal_env(
        &self,
        service: &ServiceId,
        instance: &InstanceId,
        env: &EnvVars,
    ) -> Result<EnvVars, SecretError> {
        self.reseal(env, |name| {
            (
                seal_context::env_var(service, name),
                seal_context::node_env_var(self.node, service, instance, name),
            )
        })
    }

    /// The service's secret files (sealed with the installation key)
    /// sealed to the node for `instance`.
    pub fn seal_files(
        &self,
        service: &ServiceId,
        instance: &InstanceId,
        files: &SecretFiles,
    ) -> Result<SecretFiles, SecretError> {
        self.reseal(files, |name| {
            (
                seal_context::secret_file(service, name),
                seal_context::node_secret_file(self.node, service, instance, name),
            )
        })
    }

    /// Each value of `sealed` opened with the installation key and sealed
    /// to the node; `contexts` gives a name's (from, to) contexts.
    fn reseal(
        &self,
        sealed: &std::collections::BTreeMap<String, Sealed>,
        contexts: impl Fn(&str) -> (String, String),
    ) -> Result<std::collections::BTreeMap<String, Sealed>, SecretError> {
        sealed
            .iter()
            .map(|(name, value)| {
                let (from, to) = contexts(name);
                let clear = self.key.open(value, &from)?;
                Ok((name.clone(), self.to.seal(&clear, &to)?))
            })
            .collect()
    }

    /// A credential's login (its username and the token as the credential
    /// keeps it, sealed with the installation key) sealed to the node for
    /// `instance`.
    pub fn seal_login(
        &self,
        service: &ServiceId,
        instance: &InstanceId,
        credential: &CredentialId,
        username: &str,
        token: &Sealed,
    ) -> Result<Sealed, SecretError> {
        let token = self
            .key
            .open(token, &seal_context::credential_token(credential))?;
        let context = seal_context::node_login(self.node, service, instance, credential);
        self.to.seal_login(username, &token, &context)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn installation_key() -> SecretKey {
        SecretKey::from_base64(&SecretKey::generate_base64()).unwrap()
    }

    #[test]
    fn sealed_to_a_node_opens_there_with_the_same_context_only() {
        let node = NodeKeyPair::generate();
        let secret = Secret::new("ghp_superSecretToken123");
        let sealed = node.public().seal(&secret, "ctx-a").unwrap();
        assert_eq!(sealed.kid, node.public().kid());
        assert!(!sealed.ciphertext.contains("superSecret"));
        assert_eq!(node.open(&sealed, "ctx-a").unwrap(), secret);
        // Bound to its place: another context does not open.
        assert!(matches!(
            node.open(&sealed, "ctx-b"),
            Err(SecretError::Corrupt)
        ));
        // Each seal is fresh: the same value twice gives two ciphertexts.
        let again = node.public().seal(&secret, "ctx-a").unwrap();
        assert_ne!(sealed.ciphertext, again.ciphertext);
    }

    #[test]
    fn another_node_cannot_open_it() {
        let a = NodeKeyPair::generate();
        let b = NodeKeyPair::generate();
        let sealed = a.public().seal(&Secret::new("for a"), "c").unwrap();
        assert!(matches!(
            b.open(&sealed, "c"),
            Err(SecretError::WrongKey { .. })
        ));
        // Relabelled with b's key id, it still does not open on b.
        let relabelled = Sealed {
            kid: b.public().kid().to_owned(),
            ..sealed
        };
        assert!(matches!(
            b.open(&relabelled, "c"),
            Err(SecretError::Corrupt)
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let node = NodeKeyPair::generate();
        let sealed = node.public().seal(&Secret::new("x"), "c").unwrap();
        let bytes = BASE64.decode(sealed.ciphertext.as_bytes()).unwrap();
        // A flipped bit in the ephemeral key, the nonce or the ciphertext.
        for at in [0, KEY_LEN, bytes.len() - 1] {
            let mut t = bytes.clone();
            t[at] ^= 1;
            let tampered = Sealed {
                kid: sealed.kid.clone(),
                ciphertext: BASE64.encode(&t),
            };
            assert!(
                matches!(node.open(&tampered, "c"), Err(SecretError::Corrupt)),
                "byte {at}"
            );
        }
        let short = Sealed {
            kid: sealed.kid.clone(),
            ciphertext: BASE64.encode(&bytes[..KEY_LEN + NONCE_LEN - 1]),
        };
        assert!(matches!(node.open(&short, "c"), Err(SecretError::Corrupt)));
        // A low-order ephemeral key (all zero) gives a secret anyone knows.
        let mut zero = bytes.clone();
        zero[..KEY_LEN].fill(0);
        let zero = Sealed {
            kid: sealed.kid,
            ciphertext: BASE64.encode(&zero),
        };
        assert!(matches!(node.open(&zero, "c"), Err(SecretError::Corrupt)));
    }

    #[test]
    fn work_item_secrets_are_bound_to_node_service_instance_and_field() {
        let key = installation_key();
        let (svc, other_svc) = (ServiceId::generate(), ServiceId::generate());
        let (ins, other_ins) = (InstanceId::generate(), InstanceId::generate());
        let (node_a, node_b) = (NodeId::generate(), NodeId::generate());
        let keys_a = NodeKeyPair::generate();
        let mut env = EnvVars::new();
        env.insert(
            "GREETING".into(),
            key.seal(
                &Secret::new("hello"),
                &seal_context::env_var(&svc, "GREETING"),
            )
            .unwrap(),
        );
        let for_a = ForNode {
            key: &key,
            node: &node_a,
            to: keys_a.public(),
        };
        let sealed = for_a.seal_env(&svc, &ins, &env).unwrap();
        let v = &sealed["GREETING"];
        let ctx = |node, svc, ins, name| seal_context::node_env_var(node, svc, ins, name);
        assert_eq!(
            keys_a
                .open(v, &ctx(&node_a, &svc, &ins, "GREETING"))
                .unwrap()
                .expose(),
            "hello"
        );
        // The same key material under another node id (a copied key file),
        // another instance, service or variable name: nothing opens.
        for wrong in [
            ctx(&node_b, &svc, &ins, "GREETING"),
            ctx(&node_a, &svc, &other_ins, "GREETING"),
            ctx(&node_a, &other_svc, &ins, "GREETING"),
            ctx(&node_a, &svc, &ins, "OTHER"),
        ] {
            assert!(
                matches!(keys_a.open(v, &wrong), Err(SecretError::Corrupt)),
                "{wrong}"
            );
        }
        // An env value sealed for another service does not reseal.
        let stray = for_a.seal_env(&other_svc, &ins, &env);
        assert!(matches!(stray, Err(SecretError::Corrupt)));

        // The login: username and token as one value, bound like the env.
        let cred = CredentialId::generate();
        let token = key
            .seal(
                &Secret::new("s3cret"),
                &seal_context::credential_token(&cred),
            )
            .unwrap();
        let login = for_a
            .seal_login(&svc, &ins, &cred, "puller", &token)
            .unwrap();
        let context = seal_context::node_login(&node_a, &svc, &ins, &cred);
        let (user, tok) = keys_a.open_login(&login, &context).unwrap();
        assert_eq!((user.as_str(), tok.expose()), ("puller", "s3cret"));
        let elsewhere = seal_context::node_login(&node_b, &svc, &ins, &cred);
        assert!(keys_a.open_login(&login, &elsewhere).is_err());
        // An env value is not a login, nor the other way round.
        assert!(keys_a
            .open(&login, &ctx(&node_a, &svc, &ins, "GREETING"))
            .is_err());
        assert!(keys_a.open_login(v, &context).is_err());
    }

    #[test]
    fn key_file_is_created_0600_reused_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = NodeKeyPair::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = NodeKeyPair::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        let sealed = a.public().seal(&Secret::new("x"), "c").unwrap();
        assert_eq!(b.open(&sealed, "c").unwrap().expose(), "x");
        // The file holds the private key, never shown in Debug.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{a:?}").contains(text.trim()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            NodeKeyPair::load_or_create(&path),
            Err(SecretError::KeyFileMode(_))
        ));
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_refused() {
        let k = NodeKeyPair::generate();
        let text = k.public().to_base64();
        assert_eq!(&NodePublicKey::from_base64(&text).unwrap(), k.public());
        assert!(NodePublicKey::from_base64("not base64!").is_err());
        assert!(NodePublicKey::from_base64(&BASE64.encode(&[1u8; 16])).is_err());
    }
}

//! The certificate store every router replica shares: a JetStream KV
//! bucket under the installation's prefix (`<prefix>_certificates`).
//!
//! | key | value |
//! |---|---|
//! | `cert.<domain>` | chain PEM, the private key **sealed** with the installation key (context of its own per domain), the owning service |
//! | `challenge.<token>` | the HTTP-01 key authorization any replica answers with |
//! | `account` | the ACME account credentials, sealed, and the directory they belong to |
//! | `failure.<domain>` | attempts so far and when the next is due |
//! | `lock.issuer` | who issues now and until when (one issuance at a time) |
//!
//! Replicas follow the `cert.` keys ([`CertStore::follow`]) and swap what
//! they serve without a restart, and the `challenge.` keys
//! ([`CertStore::follow_challenges`]) to answer HTTP-01 from memory.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use berth_eventlog::EventStore;
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::ids::ServiceId;
use berth_schemas::model::Sealed;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::challenges::Challenges;
use crate::tls::{certified_from_pem, CertMap, Certificates, Held};

/// Why the store could not be used (all retryable but `Sealing`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS did not answer, or refused.
    #[error("certificate store: {0}")]
    Nats(String),
    /// A sealed value did not open (another installation key).
    #[error("certificate store: sealed value does not open")]
    Sealing,
    /// A stored value is not what this version writes.
    #[error("certificate store: unreadable entry {0}")]
    Corrupt(String),
    /// Its stream could not be made or brought to its settings.
    #[error("certificate store: {0}")]
    Provision(berth_eventlog::StoreError),
}

/// NATS not answering may pass, and the stream's provisioning when the
/// server said "not now"; the others will not.
impl berth_eventlog::start::Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        match self {
            StoreError::Nats(_) => true,
            StoreError::Provision(e) => e.is_retryable(),
            StoreError::Sealing | StoreError::Corrupt(_) => false,
        }
    }
}

fn nats(e: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(e.to_string())
}

/// A certificate as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCert {
    /// Leaf first, PEM.
    pub chain_pem: String,
    /// The PKCS#8 key PEM, sealed to `router-certificate:<domain>:key`.
    pub key: Sealed,
    pub service: Option<ServiceId>,
    pub not_after: DateTime<Utc>,
}

/// The failures of one domain so far.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failures {
    pub attempt: u32,
    pub next_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: Sealed,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockEntry {
    holder: String,
    until: DateTime<Utc>,
}

const LOCK_KEY: &str = "lock.issuer";
const ACCOUNT_KEY: &str = "account";

fn key_context(domain: &str) -> String {
    format!("router-certificate:{domain}:key")
}

fn account_context(directory: &str) -> String {
    format!("router-acme-account:{directory}")
}

/// Whether `name` is a DNS name the store can key on (lower-case labels of
/// letters, digits and inner hyphens).
pub fn valid_domain(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The certificate store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CertStore {
    kv: kv::Store,
    key: Arc<SecretKey>,
}

impl CertStore {
    /// Opens the bucket, creating it when absent (by hand, as the snapshot
    /// bucket is: async-nats' `create_key_value` fails on NATS 2.9).
    pub async fn open(store: &EventStore, key: Arc<SecretKey>) -> Result<Self, StoreError> {
        let subjects = store.subjects();
        let bucket = subjects.certificate_bucket();
        let config = stream::Config {
            name: subjects.certificate_stream(),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            storage: stream::StorageType::File,
            num_replicas: store.config().replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            description: Some("berth router certificates".to_owned()),
            ..Default::default()
        };
        store
            .provision_stream(config)
            .await
            .map_err(StoreError::Provision)?;
        // The stream was just found or made: not finding the bucket now is
        // the server's "not now".
        let kv = store
            .jetstream()
            .get_key_value(&bucket)
            .await
            .map_err(nats)?;
        Ok(CertStore { kv, key })
    }

    /// Stores a certificate for `domain` (its key sealed) and returns what
    /// was stored.
    pub async fn put_cert(
        &self,
        domain: &str,
        chain_pem: &str,
        key_pem: &Secret,
        service: Option<ServiceId>,
        not_after: DateTime<Utc>,
    ) -> Result<StoredCert, StoreError> {
        let key = self
            .key
            .seal(key_pem, &key_context(domain))
            .map_err(|_| StoreError::Sealing)?;
        let stored = StoredCert {
            chain_pem: chain_pem.to_owned(),
            key,
            service,
            not_after,
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv
            .put(format!("cert.{domain}"), Bytes::from(bytes))
            .await
            .map_err(nats)?;
        Ok(stored)
    }

    /// Removes `domain`'s certificate.
    pub async fn remove_cert(&self, domain: &str) -> Result<(), StoreError> {
        self.kv.purge(format!("cert.{domain}")).await.map_err(nats)
    }

    /// The stored certificate of `domain`, still sealed.
    pub async fn cert(&self, domain: &str) -> Result<Option<StoredCert>, StoreError> {
        let Some(bytes) = self.raw_cert(domain).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("cert.{domain}")))
    }

    /// Every domain a certificate is stored for.
    pub async fn cert_domains(&self) -> Result<Vec<String>, StoreError> {
        let keys = match self.kv.keys().await {
            Ok(k) => k,
            Err(e) => return Err(nats(e)),
        };
        let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix("cert.").map(str::to_owned))
            .collect())
    }

    /// The raw stored entry of `domain` (tests look at what is at rest).
    pub async fn raw_cert(&self, domain: &str) -> Result<Option<Bytes>, StoreError> {
        self.kv.get(format!("cert.{domain}")).await.map_err(nats)
    }

    /// Opens a stored certificate into one the listener can serve.
    pub fn open_cert(&self, domain: &str, stored: &StoredCert) -> Result<Held, StoreError> {
        let key = self
            .key
            .open(&stored.key, &key_context(domain))
            .map_err(|_| StoreError::Sealing)?;
        let (certified, facts) =
            certified_from_pem(stored.chain_pem.as_bytes(), key.expose().as_bytes(), domain)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Held {
            certified,
            facts,
            service: stored.service.clone(),
        })
    }

    /// Records the key authorization for an HTTP-01 `token`.
    pub async fn put_challenge(&self, token: &str, answer: &str) -> Result<(), StoreError> {
        if !valid_token(token) {
            return Err(StoreError::Corrupt("challenge token".to_owned()));
        }
        self.kv
            .put(format!("challenge.{token}"), Bytes::from(answer.to_owned()))
            .await
            .map(drop)
            .map_err(nats)
    }

    /// The answer for an HTTP-01 `token`, if one is pending.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>, StoreError> {
        if !valid_token(token) {
            return Ok(None);
        }
        let value = self
            .kv
            .get(format!("challenge.{token}"))
            .await
            .map_err(nats)?;
        Ok(value.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Forgets an HTTP-01 token.
    pub async fn remove_challenge(&self, token: &str) -> Result<(), StoreError> {
        if !valid_token(token) {
            return Ok(());
        }
        self.kv
            .purge(format!("challenge.{token}"))
            .await
            .map_err(nats)
    }

    /// The sealed ACME account credentials (JSON) for `directory`.
    pub async fn account(&self, directory: &str) -> Result<Option<Secret>, StoreError> {
        let Some(bytes) = self.kv.get(ACCOUNT_KEY).await.map_err(nats)? else {
            return Ok(None);
        };
        let stored: StoredAccount =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt("account".into()))?;
        if stored.directory != directory {
            // Another CA's account: a new one is made for this CA.
            return Ok(None);
        }
        self.key
            .open(&stored.credentials, &account_context(directory))
            .map(Some)
            .map_err(|_| StoreError::Sealing)
    }

    /// Stores the ACME account credentials (JSON) for `directory`, sealed.
    pub async fn put_account(&self, directory: &str, creds: &Secret) -> Result<(), StoreError> {
        let credentials = self
            .key
            .seal(creds, &account_context(directory))
            .map_err(|_| StoreError::Sealing)?;
        let stored = StoredAccount {
            directory: directory.to_owned(),
            credentials,
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv
            .put(ACCOUNT_KEY, Bytes::from(bytes))
            .await
            .map(drop)
            .map_err(nats)
    }

    /// The failures recorded for `domain`.
    pub async fn failures(&self, domain: &str) -> Result<Option<Failures>, StoreError> {
        let Some(bytes) = self
            .kv
            .get(format!("failure.{domain}"))
            .await
            .map_err(nats)?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("failure.{domain}")))
    }

    /// Records `domain`'s failures (`None`: it succeeded or left).
    pub async fn set_failures(
        &self,
        domain: &str,
        failures: Option<Failures>,
    ) -> Result<(), StoreError> {
        let key = format!("failure.{domain}");
        match failures {
            Some(f) => {
                let bytes =
                    serde_json::to_vec(&f).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                self.kv
                    .put(key, Bytes::from(bytes))
                    .await
                    .map(drop)
                    .map_err(nats)
            }
            None => self.kv.purge(key).await.map_err(nats),
        }
    }

    /// Takes (or extends) the issuance lock for `holder` until `lease` from
    /// now. `false`: another live holder has it. Create-only when free, a
    /// compare-and-set on the revision read when taking over an expired
    /// lock or extending one's own, so two replicas never both succeed.
    pub async fn lock(&self, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let now = Utc::now();
        let entry = LockEntry {
            holder: holder.to_owned(),
            until: now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX),
        };
        let bytes = Bytes::from(
            serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        match self.kv.entry(LOCK_KEY).await.map_err(nats)? {
            Some(current) if current.operation == kv::Operation::Put => {
                let held: Option<LockEntry> = serde_json::from_slice(&current.value).ok();
                let free = held
                    .as_ref()
                    .is_none_or(|h| h.holder == holder || h.until <= now);
                if !free {
                    return Ok(false);
                }
                Ok(self
                    .kv
                    .update(LOCK_KEY, bytes, current.revision)
                    .await
                    .is_ok())
            }
            _ => Ok(self.kv.create(LOCK_KEY, bytes).await.is_ok()),
        }
    }

    /// Releases the lock if `holder` still has it.
    pub async fn unlock(&self, holder: &str) -> Result<(), StoreError> {
        if let Some(current) = self.kv.entry(LOCK_KEY).await.map_err(nats)? {
            let held: Option<LockEntry> = serde_json::from_slice(&current.value).ok();
            if held.is_some_and(|h| h.holder == holder) {
                // Only that revision: a lock taken over meanwhile stays.
                let _ = self
                    .kv
                    .delete_expect_revision(LOCK_KEY, Some(current.revision))
                    .await;
            }
        }
        Ok(())
    }

    /// Follows the `cert.` keys into `certs` until `stop`, reconnecting
    /// after errors. Entries that do not open are skipped (and logged).
    pub async fn follow(self, certs: Certificates, stop: CancellationToken) {
        let mut map = CertMap::new();
        self.watch_keys("cert.", &stop, |event| {
            let (domain, entry) = match event {
                // What the map holds stays served through a reconnect: the
                // history sent again replaces it entry by entry.
                Watched::Restart => return,
                Watched::Entry(key, entry) => (key.to_owned(), entry),
            };
            match entry.operation {
                kv::Operation::Put => {
                    let opened = serde_json::from_slice::<StoredCert>(&entry.value)
                        .map_err(|_| StoreError::Corrupt(domain.clone()))
                        .and_then(|s| self.open_cert(&domain, &s));
                    match opened {
                        Ok(held) => {
                            tracing::info!(domain = %domain, serial = %held.facts.serial, not_after = %held.facts.not_after, "certificate loaded");
                            map.insert(domain, Arc::new(held));
                        }
                        Err(e) => {
                            tracing::error!(domain = %domain, error = %e, "stored certificate not usable; not served");
                            map.remove(&domain);
                        }
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    tracing::info!(domain = %domain, "certificate removed");
                    map.remove(&domain);
                }
            }
            certs.replace(map.clone());
        })
        .await;
    }

    /// Follows the `challenge.` keys into `challenges` until `stop`.
    pub async fn follow_challenges(self, challenges: Challenges, stop: CancellationToken) {
        self.watch_keys("challenge.", &stop, |event| match event {
            Watched::Restart => challenges.clear(),
            Watched::Entry(token, entry) => match entry.operation {
                kv::Operation::Put => {
                    challenges.insert(token, &String::from_utf8_lossy(&entry.value));
                }
                kv::Operation::Delete | kv::Operation::Purge => challenges.remove(token),
            },
        })
        .await;
    }

    /// Calls `each` with every key under `prefix` (history first, then as
    /// they change) until `stop`; after an error, watches again from the
    /// history, telling `each` first.
    async fn watch_keys(
        &self,
        prefix: &str,
        stop: &CancellationToken,
        mut each: impl FnMut(Watched<'_>),
    ) {
        let keys = format!("{prefix}>");
        loop {
            let watch = tokio::select! {
                _ = stop.cancelled() => return,
                w = self.kv.watch_with_history(keys.as_str()) => w,
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, keys = %keys, "watching the certificate store failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            each(Watched::Restart);
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = watch.next() => n,
                };
                let entry = match next {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, keys = %keys, "certificate store watch error");
                        break;
                    }
                    None => break,
                };
                if let Some(key) = entry.key.strip_prefix(prefix) {
                    let key = key.to_owned();
                    each(Watched::Entry(&key, entry));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// What a watch of the store reports.
enum Watched<'a> {
    /// A (new) watch starts: the history follows.
    Restart,
    /// A key (without its prefix) and its entry.
    Entry(&'a str, kv::Entry),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_tokens_are_checked_before_they_become_keys() {
        for ok in ["shop.example.com", "a-b.c0.io", "xn--bcher-kva.example"] {
            assert!(valid_domain(ok), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "Shop.example.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a b.c",
            "*.a.b",
            "a.b.",
            "a>.b",
        ] {
            assert!(!valid_domain(bad), "{bad}");
        }
        assert!(valid_token("abc-DEF_123"));
        assert!(!valid_token("a.b") && !valid_token("") && !valid_token("a>"));
    }
}

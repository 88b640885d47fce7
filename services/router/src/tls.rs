//! Certificates as the TLS listener serves them: the operator's own
//! certificate for `<name>.<base-domain>` (read once, at start-up) and the
//! managed ones from the certificate store, chosen by SNI.
//!
//! The handshake never waits on a lock held by a writer: the managed
//! certificates are an immutable map behind a watch channel, replaced whole
//! whenever the store changes ([`Certificates::replace`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use berth_schemas::ids::ServiceId;
use chrono::{DateTime, Utc};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// Why a certificate or key could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// No PEM certificate in the chain text.
    #[error("no certificate (PEM \"BEGIN CERTIFICATE\") in {0}")]
    NoCertificate(String),
    /// No usable PEM private key.
    #[error("no usable private key (PEM PKCS#8, PKCS#1 or SEC1) in {0}")]
    NoKey(String),
    /// The key is not one rustls can sign with.
    #[error("unsupported private key type in {0}")]
    UnsupportedKey(String),
    /// The key does not belong to the certificate.
    #[error("the private key does not match the certificate in {0}")]
    Mismatch(String),
    /// The leaf certificate is not valid X.509.
    #[error("unreadable certificate in {0}")]
    Unreadable(String),
}

/// What the router needs to know about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// DNS names it covers (lower case; wildcards as `*.example.com`).
    pub names: Vec<String>,
}

/// Reads the facts of a DER certificate.
pub fn leaf_facts(der: &[u8]) -> Option<LeafFacts> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let time = |t: ASN1Time| DateTime::<Utc>::from_timestamp(t.timestamp(), 0);
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Some(LeafFacts {
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        names,
    })
}

/// A chain and key in PEM as a signing-ready certificate, with its leaf's
/// facts. `what` names the source in errors.
pub fn certified_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<(Arc<CertifiedKey>, LeafFacts), CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::NoCertificate(what.to_owned()))?;
    let facts = leaf_facts(leaf).ok_or_else(|| CertError::Unreadable(what.to_owned()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey(what.to_owned()))?;
    let signer =
        any_supported_type(&key).map_err(|_| CertError::UnsupportedKey(what.to_owned()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|_| CertError::Mismatch(what.to_owned()))?;
    Ok((Arc::new(certified), facts))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Checks that `path` holds at least one PEM certificate (the ACME CA root).
pub fn read_root(path: &Path) -> Result<(), CertError> {
    let bytes = read(path)?;
    if CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .next()
        .is_none()
    {
        return Err(CertError::NoCertificate(path.display().to_string()));
    }
    Ok(())
}

/// The operator's certificate for the default host names.
#[derive(Debug, Clone)]
pub struct OperatorCert {
    pub certified: Arc<CertifiedKey>,
    pub facts: LeafFacts,
}

impl OperatorCert {
    /// Reads and checks the PEM chain at `cert` and the key at `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let chain = read(cert)?;
        let key_pem = read(key)?;
        let (certified, facts) = certified_from_pem(&chain, &key_pem, &cert.display().to_string())?;
        Ok(OperatorCert { certified, facts })
    }

    /// Whether it is valid for `host` (exactly, or by a one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        self.facts.names.iter().any(|n| name_matches(n, host))
    }
}

/// `pattern` (a SAN: `a.example.com` or `*.example.com`) matches `host`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == host,
    }
}

/// A managed certificate the router serves.
#[derive(Debug)]
pub struct Held {
    pub certified: Arc<CertifiedKey>,
    pub facts: LeafFacts,
    /// The service the domain belongs to (for its events).
    pub service: Option<ServiceId>,
}

/// Domain → managed certificate. Immutable once published.
pub type CertMap = HashMap<String, Arc<Held>>;

/// The managed certificates now, replaced whole on every change.
#[derive(Debug, Clone)]
pub struct Certificates(watch::Sender<Arc<CertMap>>);

impl Default for Certificates {
    fn default() -> Self {
        Certificates(watch::Sender::new(Arc::new(CertMap::new())))
    }
}

impl Certificates {
    /// The map now.
    pub fn load(&self) -> Arc<CertMap> {
        Arc::clone(&self.0.borrow())
    }

    /// Replaces the map.
    pub fn replace(&self, map: CertMap) {
        self.0.send_replace(Arc::new(map));
    }

    /// Notified on every replacement.
    pub fn changes(&self) -> watch::Receiver<Arc<CertMap>> {
        self.0.subscribe()
    }
}

/// Picks the certificate for a handshake by its SNI name: a managed one for
/// that exact name, else the operator's (also for clients that send no
/// name); no certificate at all fails the handshake.
#[derive(Debug)]
pub struct Resolver {
    pub managed: Certificates,
    pub operator: Option<OperatorCert>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(held) = self.managed.0.borrow().get(&name) {
                return Some(Arc::clone(&held.certified));
            }
        }
        self.operator.as_ref().map(|o| Arc::clone(&o.certified))
    }
}

/// The TLS settings of the listener: certificates by SNI, ALPN `h2` then
/// `http/1.1`, ring as the crypto provider.
pub fn server_config(resolver: Resolver) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.apps.example.com", "web.apps.example.com"));
        assert!(!name_matches(
            "*.apps.example.com",
            "a.web.apps.example.com"
        ));
        assert!(!name_matches("*.apps.example.com", "apps.example.com"));
        assert!(name_matches("shop.example.com", "shop.example.com"));
        assert!(!name_matches("shop.example.com", "x.shop.example.com"));
    }

    #[test]
    fn pem_pairs_load_and_mismatches_are_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["*.apps.test".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
        let (_, facts) = certified_from_pem(
            a.cert.pem().as_bytes(),
            a.signing_key.serialize_pem().as_bytes(),
            "a",
        )
        .unwrap();
        assert_eq!(facts.names, ["*.apps.test"]);
        assert!(facts.not_after > facts.not_before);
        let wrong = certified_from_pem(
            a.cert.pem().as_bytes(),
            b.signing_key.serialize_pem().as_bytes(),
            "a",
        );
        assert!(matches!(wrong, Err(CertError::Mismatch(_))), "{wrong:?}");
        let none = certified_from_pem(b"", b"", "x");
        assert!(matches!(none, Err(CertError::NoCertificate(_))));
    }
}

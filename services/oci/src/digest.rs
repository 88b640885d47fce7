//! Content digests from registries: which ones the client accepts and how
//! content is checked against them. The type is the domain's
//! [`Digest`](berth_domain::reference::Digest), shared with image references
//! and the node's content store; hashing lives here, next to the streams it
//! verifies.

use berth_domain::reference::Digest;

/// A digest from untrusted input (a manifest, a response header, a
/// reference) that this client can verify: `sha256:<64 hex>` or
/// `sha512:<128 hex>`, lowercase. Anything else is refused (it would end up
/// in a URL path).
pub fn parse(s: &str) -> Option<Digest> {
    Digest::parse(s)
        .ok()
        .filter(|d| matches!(d.algorithm(), "sha256" | "sha512"))
}

/// The SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut hash = [0u8; 32];
    // SHA-256 output is always 32 bytes.
    hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Digest::from_sha256(hash)
}

/// The hash function of `d` (SHA-512 for `sha512:`, else SHA-256: [`parse`]
/// admits no other).
pub fn algorithm(d: &Digest) -> &'static ring::digest::Algorithm {
    if d.algorithm() == "sha512" {
        &ring::digest::SHA512
    } else {
        &ring::digest::SHA256
    }
}

/// Whether `bytes` hash to `d`.
pub fn matches(d: &Digest, bytes: &[u8]) -> bool {
    let hash = ring::digest::digest(algorithm(d), bytes);
    d.encoded() == hex(hash.as_ref())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_only_digests_it_can_verify() {
        assert!(parse(D1).is_some());
        assert!(parse("sha256:../../etc").is_none());
        assert!(parse("md5:abcd").is_none());
        assert!(parse(&D1.to_uppercase()).is_none());
        // A valid reference digest, but not one this client hashes.
        assert!(parse(&format!("sha384:{}", "a".repeat(96))).is_none());
        assert!(parse(&format!("sha512:{}", "a".repeat(128))).is_some());
    }

    #[test]
    fn hashes_and_checks_content() {
        let d = sha256(b"hello");
        assert_eq!(d.as_str(), D1);
        assert!(matches(&d, b"hello"));
        assert!(!matches(&d, b"hellO"));
    }
}

//! Manifest bytes by digest, for the puller (issue 4).
//!
//! The resolver only needs a summary of a manifest; the puller needs its
//! exact bytes (to read layer media types, to keep it in the node's content
//! store) and must GET it on every pull so a deleted image or revoked
//! credential fails at once (SPEC §8). The bytes are verified against the
//! requested digest before they are returned.

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;

use crate::auth::Credential;
use crate::client::{read_capped, status_error, ImageRef, RegistryClient};
use crate::error::ResolveError;

/// A manifest (or index) body whose digest has been checked.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes served, hashing to the requested digest.
    pub bytes: Vec<u8>,
    /// The response's Content-Type, parameters stripped.
    pub content_type: Option<String>,
}

impl RegistryClient {
    /// GET manifest `digest` from `repository` on `host` (retrying
    /// transient failures within the budget) and verify its bytes hash to
    /// `digest`. Bodies over `max_manifest_bytes` are refused.
    pub async fn fetch_manifest(
        &self,
        host: &str,
        repository: &str,
        digest: &str,
        cred: Option<&Credential>,
    ) -> Result<FetchedManifest, ResolveError> {
        let (image, digest) = ImageRef::by_digest(host, repository, digest)?;
        let what = format!("manifest {image}");
        self.retrying(&what, || async {
            let resp = self
                .send_manifest(Method::GET, &image, &image.reference, cred)
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(resp, &what).await);
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_ascii_lowercase());
            let bytes = read_capped(resp, self.cfg.max_manifest_bytes).await?;
            if !crate::digest::matches(&digest, &bytes) {
                return Err(ResolveError::DigestMismatch(format!(
                    "{what}: body does not hash to {digest}"
                ))
                .into());
            }
            Ok(FetchedManifest {
                bytes,
                content_type,
            })
        })
        .await
    }
}

//! Streaming blob download that verifies size and digest as bytes arrive.
//!
//! For the puller: the caller gives a writer (a temp file) and renames it
//! into its store only when this returns `Ok`. Reading stops as soon as the
//! blob grows past its listed size; a stream that yields nothing for
//! `stall_timeout` fails (SPEC §8: no progress for 60 s is a failure).

use reqwest::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::auth::Credential;
use crate::client::{status_error, ImageRef, RegistryClient};
use crate::digest::hex;
use crate::error::ResolveError;

impl RegistryClient {
    /// Download blob `digest` of listed `size` from `repository` on `host`
    /// into `out`, verifying both while streaming. Connecting is retried
    /// within the retry budget; a failure after bytes were written is
    /// returned as `Unavailable` (the caller restarts from an empty file).
    /// Returns the number of bytes written (= `size`).
    pub async fn fetch_blob<W: AsyncWrite + Unpin>(
        &self,
        host: &str,
        repository: &str,
        digest: &str,
        size: u64,
        cred: Option<&Credential>,
        out: &mut W,
    ) -> Result<u64, ResolveError> {
        let (_, digest) = ImageRef::by_digest(host, repository, digest)?;
        let what = format!("blob {host}/{repository}@{digest}");
        let url = self.url(host, &format!("/v2/{repository}/blobs/{digest}"));
        let mut resp = self
            .retrying(&what, || async {
                // No whole-request timeout: big blobs take long; the stall
                // timeout below bounds a stuck transfer instead.
                let resp = self
                    .send(Method::GET, (host, repository), &url, None, cred, None)
                    .await?;
                if resp.status().is_success() {
                    Ok(resp)
                } else {
                    Err(status_error(resp, &what).await)
                }
            })
            .await?;
        if let Some(len) = resp.content_length().filter(|l| *l != size) {
            return Err(ResolveError::DigestMismatch(format!(
                "{what}: registry announces {len} bytes, manifest lists {size}"
            )));
        }
        let mut ctx = ring::digest::Context::new(crate::digest::algorithm(&digest));
        let mut written: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(self.cfg.stall_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(ResolveError::Unavailable(format!(
                        "{what}: no data for {}s after {written} bytes",
                        self.cfg.stall_timeout.as_secs()
                    )))
                }
                Ok(Err(e)) => {
                    return Err(ResolveError::Unavailable(format!(
                        "{what}: transfer broke after {written} bytes: {e}"
                    )))
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            written += chunk.len() as u64;
            if written > size {
                return Err(ResolveError::DigestMismatch(format!(
                    "{what}: more than the listed {size} bytes"
                )));
            }
            ctx.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| {
                ResolveError::Unavailable(format!("{what}: writing to local storage failed: {e}"))
            })?;
        }
        if written != size {
            return Err(ResolveError::DigestMismatch(format!(
                "{what}: got {written} bytes, manifest lists {size}"
            )));
        }
        let got = hex(ctx.finish().as_ref());
        if got != digest.encoded() {
            return Err(ResolveError::DigestMismatch(format!(
                "{what}: content hashes to {}:{got}",
                digest.algorithm()
            )));
        }
        out.flush().await.map_err(|e| {
            ResolveError::Unavailable(format!("{what}: writing to local storage failed: {e}"))
        })?;
        Ok(written)
    }
}

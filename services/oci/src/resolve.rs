//! Tag → digest resolution with the SPEC §5 checks (linux/amd64, size).
//!
//! One resolve is: HEAD the manifest (cheap, and not counted as a pull by
//! Docker Hub); if the digest it names has been seen before, its summary
//! (platform choice, sizes — immutable for a digest) is reused, so the
//! steady state is a single HEAD (plus a HEAD of the platform manifest for
//! an index, so its deletion is noticed too). Otherwise the manifest is
//! fetched by digest and verified, an index is narrowed to linux/amd64, and a
//! single manifest's config blob is read for its os/architecture.

use std::collections::HashMap;

use berth_domain::reference::Digest;
use berth_schemas::model::ResolvedImage;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use crate::auth::Credential;
use crate::client::{read_capped, status_error, ImageRef, RegistryClient};
use crate::error::{AttemptError, ResolveError};
use crate::manifest::{self, Manifest, ACCEPT};

/// What a manifest digest resolves to; immutable, so cacheable forever.
#[derive(Debug, Clone)]
pub(crate) enum Summary {
    /// An index: the chosen linux/amd64 manifest and its listed size.
    Index { platform: Digest, size: u64 },
    /// An image manifest: compressed size and config platform (when read).
    Image {
        size: u64,
        platform: Option<(String, String)>,
    },
}

/// Bounded map digest → summary.
#[derive(Debug, Default)]
pub(crate) struct SummaryCache(HashMap<Digest, Summary>);

const MAX_SUMMARIES: usize = 4096;

impl SummaryCache {
    fn get(&self, d: &Digest) -> Option<Summary> {
        self.0.get(d).cloned()
    }
    fn put(&mut self, d: Digest, s: Summary) {
        if self.0.len() >= MAX_SUMMARIES {
            self.0.clear();
        }
        self.0.insert(d, s);
    }
}

/// A manifest fetched and verified.
struct Fetched {
    digest: Digest,
    manifest: Manifest,
}

impl RegistryClient {
    /// Resolve `image` to the linux/amd64 manifest digest (and index digest
    /// for multi-platform images) with its compressed size, retrying
    /// transient failures within the configured budget.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        cred: Option<&Credential>,
    ) -> Result<ResolvedImage, ResolveError> {
        let started = std::time::Instant::now();
        let out = self
            .retrying(&format!("resolving {image}"), || {
                self.resolve_once(image, cred)
            })
            .await;
        match &out {
            Ok(r) => {
                tracing::debug!(image = %image, digest = %r.digest, elapsed_us = started.elapsed().as_micros() as u64, "resolved")
            }
            Err(e) => {
                tracing::info!(image = %image, reason = %e.reason(), error = %e, "resolve failed")
            }
        }
        out
    }

    /// Whether the manifest `digest` exists in `repository` on `host`
    /// (HEAD by digest), e.g. to check a rollback target is still there.
    pub async fn head_digest_exists(
        &self,
        host: &str,
        repository: &str,
        digest: &str,
        cred: Option<&Credential>,
    ) -> Result<bool, ResolveError> {
        let (image, _) = ImageRef::by_digest(host, repository, digest)?;
        self.retrying(&format!("checking {image}"), || async {
            let resp = self
                .send_manifest(Method::HEAD, &image, &image.reference, cred)
                .await?;
            match resp.status() {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(status_error(resp, &format!("checking {image}")).await),
            }
        })
        .await
    }

    /// One manifest request for `reference` of `image`, accepting every
    /// manifest type, within the per-request timeout.
    pub(crate) async fn send_manifest(
        &self,
        method: Method,
        image: &ImageRef,
        reference: &str,
        cred: Option<&Credential>,
    ) -> Result<reqwest::Response, AttemptError> {
        let url = self.url(
            &image.host,
            &format!("/v2/{}/manifests/{}", image.repository, reference),
        );
        self.send(
            method,
            (&image.host, &image.repository),
            &url,
            Some(ACCEPT),
            cred,
            Some(self.cfg.request_timeout),
        )
        .await
    }

    fn summary(&self, d: &Digest) -> Option<Summary> {
        self.summaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
    }

    fn remember(&self, d: Digest, s: Summary) {
        self.summaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(d, s);
    }

    async fn resolve_once(
        &self,
        image: &ImageRef,
        cred: Option<&Credential>,
    ) -> Result<ResolvedImage, AttemptError> {
        let top = self.head_manifest(image, &image.reference, cred).await?;
        let top_digest = match (image.digest(), top) {
            (Some(asked), Some(got)) if asked != got => {
                return Err(ResolveError::DigestMismatch(format!(
                    "{image}: registry answered with digest {got}"
                ))
                .into())
            }
            (Some(asked), _) => Some(asked),
            (None, got) => got,
        };
        let cached = top_digest.as_ref().and_then(|d| self.summary(d));
        let (top_digest, summary) = match (top_digest, cached) {
            (Some(d), Some(s)) => (d, s),
            (known, _) => {
                let fetched = self.get_manifest(image, known.as_ref(), None, cred).await?;
                let s = self.summarize(image, &fetched.manifest, true, cred).await?;
                self.remember(fetched.digest.clone(), s.clone());
                (fetched.digest, s)
            }
        };
        match summary {
            Summary::Image { size, platform } => {
                check_platform(image, platform.as_ref())?;
                self.check_size(image, size)?;
                Ok(ResolvedImage {
                    digest: top_digest.to_string(),
                    index_digest: None,
                    compressed_size: size,
                })
            }
            Summary::Index {
                platform,
                size: listed,
            } => {
                let size = match self.summary(&platform) {
                    Some(Summary::Image { size, .. }) => {
                        // Known content; only make sure it is still there
                        // (a 200 without Docker-Content-Digest will do).
                        let got = self.head_manifest(image, platform.as_str(), cred).await?;
                        if got.is_some_and(|g| g != platform) {
                            return Err(ResolveError::DigestMismatch(format!(
                                "{image}: registry answered {platform} with another digest"
                            ))
                            .into());
                        }
                        size
                    }
                    _ => {
                        let fetched = self
                            .get_manifest(image, Some(&platform), Some(listed), cred)
                            .await?;
                        let s = self
                            .summarize(image, &fetched.manifest, false, cred)
                            .await?;
                        self.remember(platform.clone(), s.clone());
                        match s {
                            Summary::Image { size, .. } => size,
                            Summary::Index { .. } => {
                                return Err(ResolveError::UnsupportedMediaType(format!(
                                    "{image}: the linux/amd64 entry is itself an index"
                                ))
                                .into())
                            }
                        }
                    }
                };
                self.check_size(image, size)?;
                Ok(ResolvedImage {
                    digest: platform.to_string(),
                    index_digest: Some(top_digest.to_string()),
                    compressed_size: size,
                })
            }
        }
    }

    fn check_size(&self, image: &ImageRef, size: u64) -> Result<(), AttemptError> {
        if size > self.cfg.max_image_size {
            tracing::debug!(image = %image, size, "image over the size limit");
            return Err(ResolveError::TooLarge {
                size,
                limit: self.cfg.max_image_size,
            }
            .into());
        }
        Ok(())
    }

    /// HEAD a manifest; `Some(digest)` from `Docker-Content-Digest` when the
    /// registry sends a valid one. 404 and auth failures are final.
    async fn head_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        cred: Option<&Credential>,
    ) -> Result<Option<Digest>, AttemptError> {
        let resp = self
            .send_manifest(Method::HEAD, image, reference, cred)
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::digest::parse));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            // Some registries refuse HEAD; the GET that follows decides.
            return Ok(None);
        }
        Err(status_error(
            resp,
            &format!("manifest {}/{}:{reference}", image.host, image.repository),
        )
        .await)
    }

    /// GET a manifest by digest (or by the image's tag when the digest is
    /// unknown) and verify its bytes: against `digest`, else against the
    /// response's `Docker-Content-Digest`; `size` too when a descriptor
    /// listed one.
    async fn get_manifest(
        &self,
        image: &ImageRef,
        digest: Option<&Digest>,
        size: Option<u64>,
        cred: Option<&Credential>,
    ) -> Result<Fetched, AttemptError> {
        let reference = digest.map(Digest::as_str).unwrap_or(&image.reference);
        let resp = self
            .send_manifest(Method::GET, image, reference, cred)
            .await?;
        let what = format!("manifest {}/{}@{reference}", image.host, image.repository);
        if !resp.status().is_success() {
            return Err(status_error(resp, &what).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::digest::parse);
        let body = read_capped(resp, self.cfg.max_manifest_bytes).await?;
        let expected = digest.cloned().or(header_digest);
        let digest = match expected {
            Some(d) if crate::digest::matches(&d, &body) => d,
            Some(d) => {
                return Err(ResolveError::DigestMismatch(format!(
                    "{what}: body does not hash to {d}"
                ))
                .into())
            }
            None => crate::digest::sha256(&body),
        };
        if let Some(s) = size.filter(|s| *s != body.len() as u64) {
            return Err(ResolveError::DigestMismatch(format!(
                "{what}: {} bytes, index lists {s}",
                body.len()
            ))
            .into());
        }
        let manifest = manifest::parse(content_type.as_deref(), &body)?;
        Ok(Fetched { digest, manifest })
    }

    /// Summarize a parsed manifest; for a top-level image manifest read the
    /// config's platform (an index already says it for its entries).
    async fn summarize(
        &self,
        image: &ImageRef,
        m: &Manifest,
        read_platform: bool,
        cred: Option<&Credential>,
    ) -> Result<Summary, AttemptError> {
        match m {
            Manifest::Index(entries) => {
                let e = manifest::choose_amd64(entries).map_err(|e| prefix(image, e))?;
                Ok(Summary::Index {
                    platform: e.descriptor.digest.clone(),
                    size: e.descriptor.size,
                })
            }
            Manifest::Image { config, layers } => {
                let size = manifest::compressed_size(config, layers);
                let platform = if read_platform && size <= self.cfg.max_image_size {
                    let body = self
                        .get_small_blob(image, &config.digest, config.size, cred)
                        .await?;
                    let p = manifest::parse_config_platform(&body)?;
                    Some((p.os, p.architecture))
                } else {
                    None
                };
                Ok(Summary::Image { size, platform })
            }
        }
    }

    /// GET a small blob (an image config) fully, verifying digest and size.
    async fn get_small_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        cred: Option<&Credential>,
    ) -> Result<Vec<u8>, AttemptError> {
        let what = format!("blob {}/{}@{digest}", image.host, image.repository);
        if size > self.cfg.max_manifest_bytes as u64 {
            return Err(ResolveError::InvalidResponse(format!(
                "{what}: config of {size} bytes is too large"
            ))
            .into());
        }
        let url = self.url(
            &image.host,
            &format!("/v2/{}/blobs/{digest}", image.repository),
        );
        let resp = self
            .send(
                Method::GET,
                (&image.host, &image.repository),
                &url,
                None,
                cred,
                Some(self.cfg.request_timeout),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &what).await);
        }
        let body = read_capped(resp, self.cfg.max_manifest_bytes).await?;
        if body.len() as u64 != size || !crate::digest::matches(digest, &body) {
            return Err(
                ResolveError::DigestMismatch(format!("{what}: content does not match")).into(),
            );
        }
        Ok(body)
    }
}

fn prefix(image: &ImageRef, e: ResolveError) -> ResolveError {
    match e {
        ResolveError::UnsupportedPlatform(m) => {
            ResolveError::UnsupportedPlatform(format!("{image}: {m}"))
        }
        other => other,
    }
}

fn check_platform(
    image: &ImageRef,
    platform: Option<&(String, String)>,
) -> Result<(), AttemptError> {
    match platform {
        Some((os, arch)) if os != "linux" || arch != "amd64" => {
            Err(ResolveError::UnsupportedPlatform(format!(
                "{image} is built for {os}/{arch}, not linux/amd64"
            ))
            .into())
        }
        _ => Ok(()),
    }
}

//! One pull: manifest (always from the registry), then config and layers
//! into the content store.
//!
//! The manifest is fetched by digest on every pull and verified, so a
//! deleted image or a revoked credential fails at once even when every
//! layer is cached (SPEC §8). Blobs already committed and passing the
//! store's check are reused unless the policy is
//! [`PullPolicy::AlwaysDownload`]; the rest download concurrently (bounded),
//! each verified twice while streaming (by the registry client against the
//! descriptor, and by the store's ingest before commit). A transfer that
//! breaks mid-stream restarts from an empty ingest a bounded number of
//! times; a stalled one fails after the client's stall timeout (60 s).

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_domain::reference::Digest;
use berth_oci::manifest::{self, Descriptor, Manifest};
use berth_oci::{Credential, RegistryClient, ResolveError};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::error::PullError;
use crate::store::ContentStore;

/// Whether verified cached blobs may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Reuse blobs already in the store (the manifest is still fetched).
    #[default]
    ReuseVerified,
    /// Download every blob again (`always-download`).
    AlwaysDownload,
}

/// Puller settings.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// Cache policy.
    pub policy: PullPolicy,
    /// Progress callbacks at most this often (plus a final one).
    pub progress_interval: Duration,
    /// Restarts of a blob whose transfer broke after bytes arrived.
    pub mid_stream_retries: u32,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            policy: PullPolicy::ReuseVerified,
            progress_interval: Duration::from_secs(1),
            mid_stream_retries: 2,
        }
    }
}

/// What to pull.
#[derive(Debug, Clone, Copy)]
pub struct PullRequest<'a> {
    /// Registry API host, e.g. `127.0.0.1:5000`.
    pub host: &'a str,
    /// Repository path.
    pub repository: &'a str,
    /// The resolved manifest digest (linux/amd64 manifest; an index is
    /// narrowed to linux/amd64).
    pub digest: &'a str,
    /// Credential, if the registry needs one.
    pub credential: Option<&'a Credential>,
}

/// Bytes downloaded so far out of the bytes this pull must download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Done.
    pub done: u64,
    /// Total to download (cached blobs excluded).
    pub total: u64,
}

/// A layer as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Media type (decides the compression).
    pub media_type: String,
}

/// A parsed image manifest with layer media types.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// Config blob.
    pub config: Descriptor,
    /// Layers in order.
    pub layers: Vec<LayerInfo>,
}

/// A completed pull.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The image manifest digest (the linux/amd64 one for an index).
    pub digest: Digest,
    /// Config blob digest.
    pub config: Digest,
    /// Layers in order.
    pub layers: Vec<LayerInfo>,
    /// Blobs downloaded by this pull.
    pub downloaded_blobs: usize,
    /// Bytes downloaded by this pull (config and layers).
    pub downloaded_bytes: u64,
    /// Blobs reused from the store.
    pub reused_blobs: usize,
}

#[derive(Deserialize)]
struct RawLayers {
    #[serde(default)]
    layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
struct RawLayer {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
}

/// Parse an image manifest, keeping each layer's media type (berth-oci's
/// parser checks structure and digests; media types are read here).
pub fn parse_image_manifest(bytes: &[u8]) -> Result<ImageManifest, PullError> {
    let (config, layers) = match manifest::parse(None, bytes)? {
        Manifest::Image { config, layers } => (config, layers),
        Manifest::Index(_) => {
            return Err(PullError::InvalidManifest(
                "expected an image manifest, got an index".into(),
            ))
        }
    };
    let raw: RawLayers = serde_json::from_slice(bytes)
        .map_err(|e| PullError::InvalidManifest(format!("layers: {e}")))?;
    if raw.layers.len() != layers.len() {
        return Err(PullError::InvalidManifest(
            "layer list is inconsistent".into(),
        ));
    }
    let layers = layers
        .into_iter()
        .zip(raw.layers)
        .map(|(d, r)| LayerInfo {
            digest: d.digest,
            size: d.size,
            // Docker schema 2 always names types; an OCI manifest missing
            // one is most likely a gzip layer (what every builder emits).
            media_type: r
                .media_type
                .unwrap_or_else(|| "application/vnd.oci.image.layer.v1.tar+gzip".into()),
        })
        .collect();
    Ok(ImageManifest { config, layers })
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The `rootfs.diff_ids` of an image config.
pub fn parse_config_diff_ids(bytes: &[u8]) -> Result<Vec<String>, PullError> {
    let c: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| PullError::InvalidManifest(format!("image config: {e}")))?;
    Ok(c.rootfs.diff_ids)
}

/// Pulls images into a [`ContentStore`].
#[derive(Debug, Clone)]
pub struct Puller {
    client: RegistryClient,
    store: ContentStore,
    cfg: PullConfig,
}

impl Puller {
    /// A puller over `client` and `store`.
    pub fn new(client: RegistryClient, store: ContentStore, cfg: PullConfig) -> Self {
        Self { client, store, cfg }
    }

    /// The store pulled into.
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    /// Fetch and verify a manifest (always from the registry) and commit it.
    async fn manifest(&self, req: &PullRequest<'_>, digest: &str) -> Result<Vec<u8>, PullError> {
        let m = self
            .client
            .fetch_manifest(req.host, req.repository, digest, req.credential)
            .await?;
        let d = berth_oci::digest::parse(digest)
            .ok_or_else(|| ResolveError::NotFound(format!("{digest:?} is not a digest")))?;
        self.store.put(&d, &m.bytes)?;
        Ok(m.bytes)
    }

    /// Pull `req` into the store; `progress` is called at most every
    /// `progress_interval` while blobs download, and once at the end.
    pub async fn pull(
        &self,
        req: &PullRequest<'_>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<PulledImage, PullError> {
        let started = Instant::now();
        let mut digest = req.digest.to_string();
        let mut bytes = self.manifest(req, &digest).await?;
        if let Manifest::Index(entries) = manifest::parse(None, &bytes)? {
            let chosen = manifest::choose_amd64(&entries)?;
            digest = chosen.descriptor.digest.to_string();
            bytes = self.manifest(req, &digest).await?;
        }
        let image = parse_image_manifest(&bytes)?;
        let size = manifest::compressed_size(
            &image.config,
            &image
                .layers
                .iter()
                .map(|l| Descriptor {
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect::<Vec<_>>(),
        );
        let limit = self.client.config().max_image_size;
        if size > limit {
            return Err(ResolveError::TooLarge { size, limit }.into());
        }
        let mut wanted: Vec<Descriptor> = vec![image.config.clone()];
        for l in &image.layers {
            if !wanted.iter().any(|w| w.digest == l.digest) {
                wanted.push(Descriptor {
                    digest: l.digest.clone(),
                    size: l.size,
                });
            }
        }
        let (reuse, fetch): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|d| {
            self.cfg.policy == PullPolicy::ReuseVerified && self.store.has(&d.digest, d.size)
        });
        let total: u64 = fetch.iter().map(|d| d.size).sum();
        let done = Arc::new(AtomicU64::new(0));
        let fetched = fetch.len();
        let work = futures::stream::iter(fetch.into_iter().map(|d| {
            let done = done.clone();
            async move { self.download(req, &d, done).await }
        }))
        .buffer_unordered(self.cfg.concurrency.max(1))
        .try_collect::<Vec<()>>();
        let mut work = pin!(work);
        let mut tick = tokio::time::interval(self.cfg.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let outcome = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => progress(Progress { done: done.load(Ordering::Relaxed), total }),
            }
        };
        if let Err(e) = outcome {
            tracing::info!(image = %digest, reason = ?e.reason(), error = %e, "pull failed");
            return Err(e);
        }
        progress(Progress { done: total, total });
        let digest = berth_oci::digest::parse(&digest)
            .ok_or_else(|| ResolveError::NotFound(format!("{digest:?} is not a digest")))?;
        tracing::info!(
            image = %digest,
            downloaded_blobs = fetched,
            downloaded_bytes = total,
            reused_blobs = reuse.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled"
        );
        Ok(PulledImage {
            digest,
            config: image.config.digest,
            layers: image.layers,
            downloaded_blobs: fetched,
            downloaded_bytes: total,
            reused_blobs: reuse.len(),
        })
    }

    /// Download one blob into the store, restarting a broken transfer.
    async fn download(
        &self,
        req: &PullRequest<'_>,
        d: &Descriptor,
        done: Arc<AtomicU64>,
    ) -> Result<(), PullError> {
        let mut attempt = 0;
        loop {
            let mut ingest = self
                .store
                .ingest(&d.digest, d.size)
                .await?
                .with_counter(done.clone());
            let r = self
                .client
                .fetch_blob(
                    req.host,
                    req.repository,
                    d.digest.as_str(),
                    d.size,
                    req.credential,
                    &mut ingest,
                )
                .await;
            match r {
                Ok(_) => {
                    ingest.commit().await?;
                    return Ok(());
                }
                Err(ResolveError::Unavailable(m))
                    if ingest.written() > 0 && attempt < self.cfg.mid_stream_retries =>
                {
                    done.fetch_sub(ingest.written(), Ordering::Relaxed);
                    attempt += 1;
                    tracing::warn!(blob = %d.digest, attempt, error = %m, "blob transfer broke; restarting");
                    drop(ingest);
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    done.fetch_sub(ingest.written(), Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
    }
}

//! Test images built in Rust (tar + gzip layers, an OCI or Docker config
//! with os/architecture, manifests, multi-platform indexes) and pushed to a
//! harness [`Registry`] over the registry HTTP API (monolithic blob upload
//! POST + PUT, manifest PUT). No docker needed.

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::registry::Registry;

/// OCI media types (Docker ones with `docker: true`).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A gzip-compressed tar layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The compressed blob as pushed.
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
}

impl Layer {
    /// A layer holding `files` (path, content), mode 0644, mtime 0.
    pub fn from_files(files: &[(&str, &[u8])]) -> Result<Self> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, path, *content)?;
        }
        let raw = tar.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw)?;
        let blob = gz.finish()?;
        Ok(Layer {
            digest: sha256(&blob),
            diff_id: sha256(&raw),
            blob,
        })
    }

    /// A layer with one file of `size` random (incompressible) bytes, so
    /// the blob is about `size` bytes.
    pub fn random(size: usize) -> Result<Self> {
        let mut data = vec![0u8; size];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data)
            .map_err(|_| anyhow::anyhow!("rng"))?;
        Self::from_files(&[("data.bin", &data)])
    }
}

/// How to build an image.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// Docker schema 2 media types instead of OCI.
    pub docker: bool,
    /// Leave the top-level `mediaType` field out (as skopeo/umoci do).
    pub omit_media_type: bool,
}

impl ImageOptions {
    /// linux/`arch`, OCI types, with `mediaType`.
    pub fn linux(arch: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: arch.into(),
            docker: false,
            omit_media_type: false,
        }
    }
}

/// A built image: config, layers and manifest bytes with their digests.
#[derive(Debug, Clone)]
pub struct Image {
    /// Config JSON.
    pub config: Vec<u8>,
    /// Digest of `config`.
    pub config_digest: String,
    /// Layers in order.
    pub layers: Vec<Layer>,
    /// Manifest bytes as pushed.
    pub manifest: Vec<u8>,
    /// Digest of `manifest`.
    pub digest: String,
    /// Content-Type to push the manifest with.
    pub media_type: &'static str,
    /// Config + layer blob sizes.
    pub compressed_size: u64,
}

/// Build an image from `layers`.
pub fn build_image(opts: &ImageOptions, layers: Vec<Layer>) -> Result<Image> {
    let (mt, config_mt, layer_mt) = if opts.docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };
    let config = serde_json::to_vec(&json!({
        "architecture": opts.architecture,
        "os": opts.os,
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
    }))?;
    let config_digest = sha256(&config);
    let mut manifest = json!({
        "schemaVersion": 2,
        "config": { "mediaType": config_mt, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": layer_mt, "digest": l.digest, "size": l.blob.len(),
        })).collect::<Vec<_>>(),
    });
    if !opts.omit_media_type {
        manifest["mediaType"] = json!(mt);
    }
    let manifest = serde_json::to_vec_pretty(&manifest)?;
    let compressed_size =
        config.len() as u64 + layers.iter().map(|l| l.blob.len() as u64).sum::<u64>();
    Ok(Image {
        digest: sha256(&manifest),
        config_digest,
        config,
        layers,
        manifest,
        media_type: mt,
        compressed_size,
    })
}

/// linux/`arch` image with one small layer naming `arch` (so different
/// architectures get different digests).
pub fn small_image(arch: &str) -> Result<Image> {
    let layer = Layer::from_files(&[("hello.txt", format!("hello from {arch}\n").as_bytes())])?;
    build_image(&ImageOptions::linux(arch), vec![layer])
}

/// A platform of an index entry.
#[derive(Debug, Clone)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `arm64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/`arch`.
    pub fn linux(arch: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }
}

/// An index pushed: its digest and bytes.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    /// Digest of the index.
    pub digest: String,
    /// Index bytes.
    pub bytes: Vec<u8>,
}

fn absolute(reg: &Registry, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{}{location}", reg.url())
    }
}

impl Registry {
    async fn authed(
        &self,
        req: reqwest::RequestBuilder,
        repo: &str,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(match self.admin_authorization(repo).await? {
            Some(a) => req.header("authorization", a),
            None => req,
        })
    }

    /// Upload one blob (monolithic POST + PUT); returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        let start = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url()));
        let resp = self.authed(start, repo).await?.send().await?;
        if resp.status().as_u16() != 202 {
            bail!(
                "blob upload start answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("upload without Location")?;
        let mut url = absolute(self, location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let put = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec());
        let resp = self.authed(put, repo).await?.send().await?;
        if resp.status().as_u16() != 201 {
            bail!(
                "blob upload answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(digest)
    }

    /// PUT manifest bytes under `reference` (tag or digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String> {
        let put = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url()))
            .header("content-type", media_type)
            .body(bytes.to_vec());
        let resp = self.authed(put, repo).await?.send().await?;
        if resp.status().as_u16() != 201 {
            bail!(
                "manifest PUT answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(sha256(bytes))
    }

    /// Push config, layers and manifest; tag it `tag`. Returns the
    /// manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        self.push_blob(repo, &image.config).await?;
        for l in &image.layers {
            self.push_blob(repo, &l.blob).await?;
        }
        self.push_manifest(repo, tag, image.media_type, &image.manifest)
            .await
    }

    /// Push each image by digest, then an index over them tagged `tag`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(Platform, &Image)],
        docker: bool,
    ) -> Result<PushedIndex> {
        let mut manifests = Vec::new();
        for (p, img) in entries {
            self.push_image(repo, &img.digest, img).await?;
            let mut platform = json!({ "os": p.os, "architecture": p.architecture });
            if let Some(v) = &p.variant {
                platform["variant"] = json!(v);
            }
            manifests.push(json!({
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": img.manifest.len(),
                "platform": platform,
            }));
        }
        let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
        let bytes = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": manifests,
        }))?;
        let digest = self.push_manifest(repo, tag, mt, &bytes).await?;
        Ok(PushedIndex { digest, bytes })
    }

    /// DELETE a manifest by digest (the registry answers 202).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let del = self
            .http
            .delete(format!("{}/v2/{repo}/manifests/{digest}", self.url()));
        let resp = self.authed(del, repo).await?.send().await?;
        if resp.status().as_u16() != 202 {
            bail!(
                "manifest DELETE answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Flip bytes in a stored blob (same length), so it no longer matches
    /// its digest.
    pub fn corrupt_blob(&self, digest: &str) -> Result<()> {
        let path = self.blob_path(digest)?;
        let mut data =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mid = data.len() / 2;
        match data.get_mut(mid) {
            Some(b) => *b ^= 0xff,
            None => bail!("blob {digest} is empty"),
        }
        std::fs::write(&path, data)?;
        Ok(())
    }
}

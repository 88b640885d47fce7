//! Unpacking an image's layers into one rootfs per image digest.
//!
//! Layers are applied in order into a private directory under the store's
//! `tmp/`, each checked against the config's `diff_id` (the uncompressed
//! tar's digest), and the finished tree is renamed into place: a reader
//! never sees a half-built rootfs, and a refused layer leaves nothing
//! (the partial tree is removed; nothing outside it was ever written — see
//! [`layer`] for the rules).
//!
//! Left for later (noted in the issue): per-layer trees shared between
//! images with an overlayfs mount per instance.
//!
//! This is blocking file-system work: call it from `spawn_blocking`.

mod layer;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use berth_oci::manifest::Digest;

use crate::error::UnpackError;
use crate::pull::{parse_config_diff_ids, parse_image_manifest};
use crate::store::ContentStore;

/// Bounds on what one image may expand to (hostile-input safety).
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Entries across all layers.
    pub max_entries: u64,
    /// Uncompressed tar bytes across all layers.
    pub max_expanded_bytes: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path_len: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 2_000_000,
            max_expanded_bytes: 64 << 30,
            max_path_len: 4096,
        }
    }
}

/// How to unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Limits.
    pub limits: UnpackLimits,
    /// Apply the layer's uid/gid (needs root); off, files belong to the
    /// unpacking user.
    pub ownership: bool,
    /// Refuse layers whose uncompressed digest is not the config's
    /// `diff_id`.
    pub verify_diff_ids: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            limits: UnpackLimits::default(),
            ownership: true,
            verify_diff_ids: true,
        }
    }
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` (the Option) for
    /// a type that is not a tar layer.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let mt = media_type.trim().to_ascii_lowercase();
        let known_layer = mt.starts_with("application/vnd.oci.image.layer.")
            || mt.starts_with("application/vnd.docker.image.rootfs.");
        if !known_layer {
            return None;
        }
        if mt.ends_with("tar+gzip") || mt.ends_with("tar.gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("tar+zstd") || mt.ends_with("tar.zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// Running totals over an image's layers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) entries: u64,
    pub(crate) file_bytes: u64,
    pub(crate) expanded: u64,
}

/// What one layer contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries applied (including whiteouts).
    pub entries: u64,
    /// Uncompressed tar bytes.
    pub expanded_bytes: u64,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
}

/// Apply one layer (compressed tar stream) onto `root`, counting against
/// the limits in `opts` from zero. `layer` numbers the layer in errors.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    root: &Path,
    layer: usize,
    opts: &UnpackOptions,
) -> Result<LayerStats, UnpackError> {
    let mut totals = Totals::default();
    apply(reader, compression, root, layer, opts, &mut totals)
}

fn apply<R: Read>(
    reader: R,
    compression: Compression,
    root: &Path,
    layer: usize,
    opts: &UnpackOptions,
    totals: &mut Totals,
) -> Result<LayerStats, UnpackError> {
    let read_failed = Rc::new(Cell::new(None));
    // A failed read of the layer's bytes is this node's problem (a disk
    // error), not a malformed layer, however the readers above report it.
    let read_failure = || {
        read_failed
            .take()
            .map(|source| UnpackError::Read { layer, source })
    };
    let reader = BufReader::with_capacity(1 << 20, layer::Source::new(reader, read_failed.clone()));
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(reader).map_err(
            |e| {
                read_failure().unwrap_or_else(|| UnpackError::Malformed {
                    layer,
                    detail: format!("zstd: {e}"),
                })
            },
        )?),
    };
    let exceeded = Rc::new(Cell::new(false));
    let budget = opts
        .limits
        .max_expanded_bytes
        .saturating_sub(totals.expanded);
    let metered = layer::Metered::new(decoded, budget, exceeded.clone());
    let limit_err = || UnpackError::Limit {
        layer,
        what: "expanded size",
        limit: opts.limits.max_expanded_bytes,
    };
    let malformed = |e: std::io::Error| {
        if let Some(failed) = read_failure() {
            failed
        } else if exceeded.get() {
            limit_err()
        } else {
            UnpackError::Malformed {
                layer,
                detail: e.to_string(),
            }
        }
    };
    let mut archive = tar::Archive::new(metered);
    let before = totals.entries;
    let mut applier = layer::Applier::new(root, layer, opts);
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        match applier.entry(&mut entry, totals) {
            Err(UnpackError::Malformed { .. }) if exceeded.get() => return Err(limit_err()),
            Err(e @ UnpackError::Malformed { .. }) => return Err(read_failure().unwrap_or(e)),
            r => r?,
        }
    }
    applier.finish()?;
    let mut metered = archive.into_inner();
    // The tar reader stops at the end-of-archive marker; the diff_id
    // covers the whole stream, padding included.
    std::io::copy(&mut metered, &mut std::io::sink()).map_err(malformed)?;
    let (expanded, diff_id) = metered.finish();
    totals.expanded += expanded;
    Ok(LayerStats {
        entries: totals.entries - before,
        expanded_bytes: expanded,
        diff_id,
    })
}

/// Unpack image `image` (a manifest digest whose manifest, config and
/// layers are committed in `store`) into its rootfs and return the path.
/// Already unpacked → returned at once.
pub fn unpack_image(
    store: &ContentStore,
    image: &Digest,
    opts: &UnpackOptions,
) -> Result<PathBuf, UnpackError> {
    if store.has_tree(image) {
        return Ok(store.tree_path(image));
    }
    let manifest = store.read(image, 16 << 20)?;
    let parsed = parse_image_manifest(&manifest).map_err(|e| UnpackError::Image(e.to_string()))?;
    let config = store.read(&parsed.config.digest, 16 << 20)?;
    let diff_ids = parse_config_diff_ids(&config).map_err(|e| UnpackError::Image(e.to_string()))?;
    if opts.verify_diff_ids && diff_ids.len() != parsed.layers.len() {
        return Err(UnpackError::Image(format!(
            "{image}: config lists {} diff_ids for {} layers",
            diff_ids.len(),
            parsed.layers.len()
        )));
    }
    let tmp = store.temp_dir()?;
    let build = || -> Result<(), UnpackError> {
        let rootfs = tmp.join("rootfs");
        crate::walk::mkdir(&rootfs, 0o755).map_err(|source| UnpackError::Io {
            path: rootfs.clone(),
            source,
        })?;
        let mut totals = Totals::default();
        for (i, l) in parsed.layers.iter().enumerate() {
            let compression = Compression::from_media_type(&l.media_type).ok_or_else(|| {
                UnpackError::MediaType {
                    layer: i,
                    media_type: l.media_type.clone(),
                }
            })?;
            let path = store.blob_path(&l.digest);
            let file = std::fs::File::open(&path).map_err(|source| UnpackError::Io {
                path: path.clone(),
                source,
            })?;
            let stats = apply(file, compression, &rootfs, i, opts, &mut totals)?;
            if opts.verify_diff_ids {
                let expected = diff_ids.get(i).cloned().unwrap_or_default();
                if stats.diff_id != expected {
                    return Err(UnpackError::DiffIdMismatch {
                        layer: i,
                        expected,
                        got: stats.diff_id,
                    });
                }
            }
        }
        Ok(())
    };
    let started = std::time::Instant::now();
    if let Err(e) = build() {
        let _ = std::fs::remove_dir_all(&tmp);
        tracing::warn!(image = %image, error = %e, "unpack refused");
        return Err(e);
    }
    let path = store.commit_tree(&tmp, image)?;
    tracing::info!(image = %image, layers = parsed.layers.len(), elapsed_ms = started.elapsed().as_millis() as u64, "unpacked");
    Ok(path)
}

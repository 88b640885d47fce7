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

mod archive;
mod layer;
mod meter;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use berth_domain::reference::Digest;

use self::archive::ArchiveError;
use self::meter::Stop;
use crate::error::UnpackError;
use crate::pull::{parse_config_diff_ids, parse_image_manifest};
use crate::store::{ContentStore, IdShift};

/// Bounds on what one image may expand to (hostile-input safety). The
/// expanded-byte bounds are checked as bytes come out of the decompressor:
/// the bytes that would cross one are never written.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Entries across all layers.
    pub max_entries: u64,
    /// Uncompressed tar bytes across all layers.
    pub max_expanded_bytes: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path_len: usize,
    /// Largest GNU long name or link header and PAX header, in bytes.
    /// These are held in memory whole, so the size their header declares
    /// is refused before any of it is read. A name is at most
    /// `max_path_len`; a file's PAX records (path, link, a few xattrs of
    /// at most 64 KiB each) stay far below the default 1 MiB.
    pub max_header_bytes: u64,
    /// Uncompressed bytes allowed per compressed byte, over the whole
    /// image: an expansion bomb (4 GiB of zeros is 4 MB of gzip, less in
    /// zstd) is refused once it passes `max(expansion_floor, ratio ×
    /// compressed size)`. Real layers compress 2–5×, text-heavy ones
    /// about 10×; the default 100 leaves ten times that.
    pub max_expansion_ratio: u64,
    /// Uncompressed bytes an image may reach whatever its ratio, so a
    /// small image with a large zero-filled file still unpacks. The
    /// default 1 GiB is also the most a bomb can make a node write, once
    /// per image, and matches the default disk reserve.
    pub expansion_floor: u64,
    /// Bytes to keep free on the target's filesystem (read with
    /// `statvfs` as the layer streams): an image that would go below
    /// stops there, rather than filling the node's disk. 0 does not look.
    pub min_free_disk: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 2_000_000,
            max_expanded_bytes: 64 << 30,
            max_path_len: 4096,
            max_header_bytes: 1 << 20,
            max_expansion_ratio: 100,
            expansion_floor: 1 << 30,
            min_free_disk: 1 << 30,
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
    /// With `ownership`: the layer's ids shifted for a user namespace
    /// (an id outside its range refuses the image). [`unpack_image`] takes
    /// the store's.
    pub shift: Option<IdShift>,
    /// Refuse layers whose uncompressed digest is not the config's
    /// `diff_id`.
    pub verify_diff_ids: bool,
}

impl UnpackOptions {
    /// Who owns what the unpacker makes that no entry describes (the
    /// root, missing parents): the image's root, shifted; `None`: the
    /// unpacking user.
    pub(crate) fn implied_owner(&self) -> Option<u32> {
        self.shift.filter(|_| self.ownership).and_then(|s| s.map(0))
    }
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            limits: UnpackLimits::default(),
            ownership: true,
            shift: None,
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
/// The stream's length is not known up front, so the compression ratio is
/// measured against the compressed bytes read so far.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    root: &Path,
    layer: usize,
    opts: &UnpackOptions,
) -> Result<LayerStats, UnpackError> {
    let mut totals = Totals::default();
    apply(reader, compression, root, layer, opts, &mut totals, None)
}

/// Apply one layer of an image whose compressed size is `compressed`
/// (all layers), when known.
fn apply<R: Read>(
    reader: R,
    compression: Compression,
    root: &Path,
    layer: usize,
    opts: &UnpackOptions,
    totals: &mut Totals,
    compressed: Option<u64>,
) -> Result<LayerStats, UnpackError> {
    let limits = &opts.limits;
    let read_failed = Rc::new(Cell::new(None));
    let compressed_read = Rc::new(Cell::new(0));
    let stop = Rc::new(Cell::new(None));
    // The readers above the raw layer and the metered stream pass their
    // errors on as any I/O error; these say what really happened. A failed
    // read of the layer's bytes is this node's problem (a disk error), not
    // a malformed layer; a stopped stream names the limit it hit.
    let explain = || {
        read_failed
            .take()
            .map(|source| UnpackError::Read { layer, source })
            .or_else(|| stop.take().map(|s| stopped(s, layer, root, opts)))
    };
    let reader = BufReader::with_capacity(
        1 << 20,
        meter::Source::new(reader, read_failed.clone(), compressed_read.clone()),
    );
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(reader).map_err(
            |e| {
                explain().unwrap_or_else(|| UnpackError::Malformed {
                    layer,
                    detail: format!("zstd: {e}"),
                })
            },
        )?),
    };
    let budget = meter::Budget {
        total_left: limits.max_expanded_bytes.saturating_sub(totals.expanded),
        before: totals.expanded,
        ratio: limits.max_expansion_ratio,
        floor: limits.expansion_floor,
        compressed_known: compressed.unwrap_or(0),
        compressed_read,
        disk: (limits.min_free_disk > 0).then(|| meter::DiskWatch::new(root, limits.min_free_disk)),
    };
    let ratio_limit = compressed.map(|_| budget.ratio_limit());
    let metered = meter::Metered::new(decoded, budget, stop.clone());
    let malformed = |detail: String| explain().unwrap_or(UnpackError::Malformed { layer, detail });
    let mut archive = archive::Archive::new(metered, limits.max_header_bytes);
    let before = totals.entries;
    let mut applier = layer::Applier::new(root, layer, opts, ratio_limit);
    while let Some(mut entry) = archive.next().map_err(|e| match e {
        ArchiveError::Io(e) => malformed(e.to_string()),
        ArchiveError::Malformed(detail) => malformed(detail),
        ArchiveError::HeaderTooLarge { what } => UnpackError::Limit {
            layer,
            what,
            limit: limits.max_header_bytes,
        },
    })? {
        match applier.entry(&mut entry, totals) {
            Err(e @ UnpackError::Malformed { .. }) => return Err(explain().unwrap_or(e)),
            r => r?,
        }
    }
    applier.finish()?;
    let mut metered = archive.into_inner();
    // The tar reader stops at the end-of-archive marker; the diff_id
    // covers the whole stream, padding included.
    std::io::copy(&mut metered, &mut std::io::sink()).map_err(|e| malformed(e.to_string()))?;
    let (expanded, diff_id) = metered.finish();
    totals.expanded += expanded;
    Ok(LayerStats {
        entries: totals.entries - before,
        expanded_bytes: expanded,
        diff_id,
    })
}

/// The error for a metered stream stopped at a limit.
fn stopped(stop: Stop, layer: usize, root: &Path, opts: &UnpackOptions) -> UnpackError {
    match stop {
        Stop::Total => UnpackError::Limit {
            layer,
            what: "expanded size",
            limit: opts.limits.max_expanded_bytes,
        },
        Stop::Ratio { limit, compressed } => UnpackError::ExpansionRatio {
            layer,
            limit,
            ratio: opts.limits.max_expansion_ratio,
            compressed,
        },
        Stop::Disk { free } => UnpackError::DiskReserve {
            layer,
            path: root.to_path_buf(),
            free,
            reserve: opts.limits.min_free_disk,
        },
        Stop::Statvfs(source) => UnpackError::Io {
            path: root.to_path_buf(),
            source,
        },
    }
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
    let opts = &UnpackOptions {
        shift: store.id_shift(),
        ..opts.clone()
    };
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
        crate::walk::own(&rootfs, opts.implied_owner()).map_err(|source| UnpackError::Io {
            path: rootfs.clone(),
            source,
        })?;
        // The ratio bound is over the image's compressed bytes, known
        // before the first layer: a header declaring more than it allows
        // is refused before its data is written.
        let mut compressed = 0u64;
        for l in &parsed.layers {
            let path = store.blob_path(&l.digest);
            let meta = std::fs::metadata(&path).map_err(|source| UnpackError::Io {
                path: path.clone(),
                source,
            })?;
            compressed = compressed.saturating_add(meta.len());
        }
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
            let stats = apply(
                file,
                compression,
                &rootfs,
                i,
                opts,
                &mut totals,
                Some(compressed),
            )?;
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

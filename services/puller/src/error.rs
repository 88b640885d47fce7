//! Why a pull, a store operation or an unpack failed.
//!
//! Messages name the blob, path or rule involved and never carry a
//! credential (none is ever formatted here), so they can go into events.

use std::path::PathBuf;

use berth_oci::ResolveError;
use berth_schemas::model::PullFailureReason;

/// A content-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Local disk I/O failed (full disk, permissions): the node's fault,
    /// not the image's.
    #[error("content store I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bytes offered to the store do not hash or measure to the promise;
    /// nothing was committed.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// A blob the caller expected is not committed.
    #[error("blob {0} is not in the content store")]
    Missing(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A failed pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry refused, lost or garbled the image (see
    /// [`ResolveError::reason`]).
    #[error(transparent)]
    Registry(#[from] ResolveError),
    /// The manifest is not one berth can pull (structure, media type).
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The local store failed or refused the bytes.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PullError {
    /// The SPEC §9 reason for the Image Pull Failed event, or `None` when
    /// the node itself failed (local disk): that is not the image's fault,
    /// and the caller should retry or reschedule rather than report the
    /// image as broken.
    pub fn reason(&self) -> Option<PullFailureReason> {
        match self {
            PullError::Registry(e) => Some(e.reason()),
            PullError::InvalidManifest(_) => Some(PullFailureReason::UnsupportedPlatform),
            PullError::Store(StoreError::DigestMismatch(_)) => {
                Some(PullFailureReason::DigestMismatch)
            }
            PullError::Store(_) => None,
        }
    }
}

/// A refused or failed unpack. Every refusal names the entry and the rule
/// it broke; the partial tree is removed and nothing outside it was
/// written.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry's path is unsafe (`..`, absolute, too long, NUL, empty).
    #[error("layer {layer}: entry {path:?} refused: {why}")]
    UnsafePath {
        /// Layer index (0 = bottom).
        layer: usize,
        /// The path as it appears in the tar.
        path: String,
        /// The rule it broke.
        why: &'static str,
    },
    /// Writing the entry would go through a symlink (or non-directory)
    /// already in the tree.
    #[error("layer {layer}: entry {path:?} refused: parent component {component:?} is a symlink or not a directory (writing through it could escape the rootfs)")]
    SymlinkParent {
        /// Layer index.
        layer: usize,
        /// The entry path.
        path: String,
        /// The offending component (relative to the root).
        component: String,
    },
    /// A hard link to something outside the tree or not yet extracted.
    #[error("layer {layer}: hard link {path:?} -> {target:?} refused: {why}")]
    HardLink {
        /// Layer index.
        layer: usize,
        /// The link path.
        path: String,
        /// The link's target as written in the tar.
        target: String,
        /// Why.
        why: &'static str,
    },
    /// Device nodes, fifos and other special entries are refused.
    #[error("layer {layer}: entry {path:?} refused: {kind} entries are not allowed in layers")]
    Special {
        /// Layer index.
        layer: usize,
        /// The entry path.
        path: String,
        /// e.g. `character device`.
        kind: &'static str,
    },
    /// A configured limit was exceeded (expansion bomb, too many entries).
    #[error("layer {layer}: refused: {what} exceeds the limit of {limit}")]
    Limit {
        /// Layer index.
        layer: usize,
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The image expands to more than its compressed size allows (an
    /// expansion bomb): past `max(expansion_floor, ratio × compressed)`.
    #[error("layer {layer}: refused: the image expands past {limit} bytes, more than {ratio} times its {compressed} compressed bytes allow (an expansion bomb)")]
    ExpansionRatio {
        /// Layer index.
        layer: usize,
        /// The bound, in uncompressed bytes.
        limit: u64,
        /// The configured ratio.
        ratio: u64,
        /// The compressed bytes it was computed from (the image's size,
        /// or what had been read of the layer when that is not known).
        compressed: u64,
    },
    /// Going on would leave less than the reserve free on the node's disk.
    /// The node is short of space, not the image at fault: another node,
    /// or this one after a collection, may have room.
    #[error("layer {layer}: stopped: going on would leave less than the {reserve}-byte reserve free on the filesystem of {path} ({free} bytes free)")]
    DiskReserve {
        /// Layer index.
        layer: usize,
        /// The directory being unpacked into.
        path: PathBuf,
        /// Bytes free at the last look.
        free: u64,
        /// The configured reserve.
        reserve: u64,
    },
    /// An entry is owned by an id the node's user namespace does not map.
    #[error("layer {layer}: entry {path:?} refused: it is owned by id {id}, and instances here run in a user namespace of ids 0 to {}", size.saturating_sub(1))]
    Owner {
        /// Layer index.
        layer: usize,
        /// The entry path.
        path: String,
        /// The owner (user or group) id.
        id: u32,
        /// How many ids the namespace maps.
        size: u32,
    },
    /// The layer is not a readable tar stream in the declared compression.
    #[error("layer {layer}: malformed archive: {detail}")]
    Malformed {
        /// Layer index.
        layer: usize,
        /// What the reader said.
        detail: String,
    },
    /// The uncompressed layer does not hash to the config's `diff_id`.
    #[error("layer {layer}: uncompressed content hashes to {got}, config lists {expected}")]
    DiffIdMismatch {
        /// Layer index.
        layer: usize,
        /// From the image config.
        expected: String,
        /// What the bytes hash to.
        got: String,
    },
    /// Layer media type berth does not unpack.
    #[error("layer {layer}: unsupported media type {media_type:?}")]
    MediaType {
        /// Layer index.
        layer: usize,
        /// As listed in the manifest.
        media_type: String,
    },
    /// The image config or manifest in the store is unusable.
    #[error("image {0}")]
    Image(String),
    /// Local I/O failed while writing the tree.
    #[error("unpack I/O on {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the layer's bytes failed (the blob file, or the caller's
    /// reader), as opposed to the bytes being wrong.
    #[error("layer {layer}: reading the layer failed: {source}")]
    Read {
        /// Layer index.
        layer: usize,
        /// The reader's error.
        source: std::io::Error,
    },
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UnpackError {
    /// The SPEC §9 reason for the Image Pull Failed event, or `None` when
    /// the node failed (disk full, permission denied, a blob gone from the
    /// store): that says nothing about the image, so the caller retries
    /// rather than report the image as broken. A refused or malformed layer
    /// is `invalid_image`: it fails the same way on every node.
    pub fn reason(&self) -> Option<PullFailureReason> {
        match self {
            UnpackError::UnsafePath { .. }
            | UnpackError::SymlinkParent { .. }
            | UnpackError::HardLink { .. }
            | UnpackError::Special { .. }
            | UnpackError::Owner { .. }
            | UnpackError::Limit { .. }
            | UnpackError::ExpansionRatio { .. }
            | UnpackError::Malformed { .. }
            | UnpackError::MediaType { .. }
            | UnpackError::Image(_) => Some(PullFailureReason::InvalidImage),
            UnpackError::DiffIdMismatch { .. }
            | UnpackError::Store(StoreError::DigestMismatch(_)) => {
                Some(PullFailureReason::DigestMismatch)
            }
            UnpackError::Io { .. }
            | UnpackError::Read { .. }
            | UnpackError::DiskReserve { .. }
            | UnpackError::Store(_) => None,
        }
    }

    /// Whether the image (rather than the node) is at fault: a refused or
    /// malformed layer will fail the same way everywhere.
    pub fn is_image_fault(&self) -> bool {
        self.reason().is_some()
    }
}

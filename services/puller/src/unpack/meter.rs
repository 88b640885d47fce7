//! The layer's byte streams, metered: the compressed side counted (for
//! the ratio) and its read failures kept (a failing disk is not a
//! malformed layer), the uncompressed side hashed into the `diff_id` and
//! stopped at the first byte past the image's budget — its total, the
//! compression ratio, the free-disk reserve — so nothing past a limit is
//! ever handed on to be written.

use std::cell::Cell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Counts and hashes the uncompressed stream (the `diff_id`) and stops it
/// at the first byte past its [`Budget`]: the bytes that cross a limit are
/// never handed on, so nothing past it is written.
pub(super) struct Metered<R> {
    inner: R,
    ctx: ring::digest::Context,
    read: u64,
    budget: Budget,
    stop: Rc<Cell<Option<Stop>>>,
}

impl<R: Read> Metered<R> {
    pub(super) fn new(inner: R, budget: Budget, stop: Rc<Cell<Option<Stop>>>) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            read: 0,
            budget,
            stop,
        }
    }

    pub(super) fn finish(self) -> (u64, String) {
        let d = self.ctx.finish();
        (
            self.read,
            format!("sha256:{}", crate::store::hex(d.as_ref())),
        )
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self.read + n as u64;
        if let Err(stop) = self.budget.admit(self.read, read) {
            let e = std::io::Error::other(stop.to_string());
            self.stop.set(Some(stop));
            return Err(e);
        }
        self.read = read;
        self.ctx.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }
}

/// Why the uncompressed stream was stopped.
#[derive(Debug)]
pub(super) enum Stop {
    /// The image's `max_expanded_bytes`.
    Total,
    /// More than the compression ratio allows for the compressed bytes.
    Ratio {
        /// The bound in expanded bytes.
        limit: u64,
        /// The compressed bytes it was computed from.
        compressed: u64,
    },
    /// Going on would leave less than the reserve free on the target's
    /// filesystem.
    Disk {
        /// Bytes free at the last look.
        free: u64,
    },
    /// The target's free space could not be read.
    Statvfs(std::io::Error),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Total => f.write_str("expanded size limit exceeded"),
            Stop::Ratio { .. } => f.write_str("compression ratio limit exceeded"),
            Stop::Disk { .. } => f.write_str("free disk reserve reached"),
            Stop::Statvfs(e) => write!(f, "reading free disk space: {e}"),
        }
    }
}

/// How far one layer's uncompressed stream may go. The ratio is over the
/// whole image (expanded bytes of all layers against their compressed
/// size), so the floor is granted once per image, not once per layer.
pub(super) struct Budget {
    /// Expanded bytes left under the image's `max_expanded_bytes`.
    pub(super) total_left: u64,
    /// Expanded bytes of the image's earlier layers.
    pub(super) before: u64,
    /// Expanded bytes allowed per compressed byte.
    pub(super) ratio: u64,
    /// Expanded bytes allowed whatever the ratio.
    pub(super) floor: u64,
    /// The image's compressed size, when the caller knows it.
    pub(super) compressed_known: u64,
    /// Compressed bytes of this layer read so far: the measure when the
    /// size is not known up front.
    pub(super) compressed_read: Rc<Cell<u64>>,
    /// Free space to keep on the target's filesystem; `None` to not look.
    pub(super) disk: Option<DiskWatch>,
}

impl Budget {
    /// The ratio bound, in expanded bytes for the whole image.
    pub(super) fn ratio_limit(&self) -> (u64, u64) {
        let compressed = self.compressed_known.max(self.compressed_read.get());
        (
            self.floor.max(self.ratio.saturating_mul(compressed)),
            compressed,
        )
    }

    /// May the stream go from `handed` bytes (already passed on) to
    /// `read`?
    fn admit(&mut self, handed: u64, read: u64) -> Result<(), Stop> {
        if read > self.total_left {
            return Err(Stop::Total);
        }
        let (limit, compressed) = self.ratio_limit();
        if self.before.saturating_add(read) > limit {
            return Err(Stop::Ratio { limit, compressed });
        }
        match &mut self.disk {
            Some(disk) => disk.admit(handed, read),
            None => Ok(()),
        }
    }
}

/// How often the free space is read again, in expanded bytes. Between
/// looks a layer adds at most this much tar: at most 16,384 entries, so
/// some 70 MiB of blocks and inodes on ext4 at worst, well inside any
/// sensible reserve. A `statvfs` per 8 MiB costs nothing measurable.
const DISK_LOOK_EVERY: u64 = 8 << 20;

/// Keeps `reserve` bytes free on the filesystem of `path`.
pub(super) struct DiskWatch {
    path: PathBuf,
    reserve: u64,
    /// Expanded bytes at which to look again.
    next_look: u64,
    /// Expanded bytes the layer may reach by the last look.
    allowed: u64,
    /// Free bytes at the last look.
    free: u64,
}

impl DiskWatch {
    pub(super) fn new(path: &Path, reserve: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            reserve,
            next_look: 0,
            allowed: 0,
            free: 0,
        }
    }

    fn admit(&mut self, handed: u64, read: u64) -> Result<(), Stop> {
        if read >= self.next_look || read > self.allowed {
            // What was handed on is written or about to be, and counts as
            // used; only what is beyond it must fit in the free space.
            let st = nix::sys::statvfs::statvfs(&self.path)
                .map_err(|e| Stop::Statvfs(std::io::Error::from(e)))?;
            // Both are 32-bit on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            let free =
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
            self.free = free;
            self.allowed = handed.saturating_add(free.saturating_sub(self.reserve));
            self.next_look = read.saturating_add(DISK_LOOK_EVERY);
            if free < self.reserve {
                return Err(Stop::Disk { free });
            }
        }
        if read > self.allowed {
            return Err(Stop::Disk { free: self.free });
        }
        Ok(())
    }
}

/// Keeps a failure of the raw layer reader (the blob file): the
/// decompressor and the tar reader pass it on like any garbled byte, and
/// only this tells a failing disk from a malformed layer. It also counts
/// the compressed bytes read, for the ratio limit.
pub(super) struct Source<R> {
    inner: R,
    failed: Rc<Cell<Option<std::io::Error>>>,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Source<R> {
    pub(super) fn new(
        inner: R,
        failed: Rc<Cell<Option<std::io::Error>>>,
        read: Rc<Cell<u64>>,
    ) -> Self {
        Self {
            inner,
            failed,
            read,
        }
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted {
                // The error itself travels up through the readers; this
                // copy only records where it came from.
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.failed.set(Some(copy));
            }
        })?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

//! Applying one layer's tar stream onto a root directory.
//!
//! [`super::archive`] frames the entries (GNU long names, PAX records,
//! each extension header's size bounded before it is read); every write
//! is done here, never with the `tar` crate's `unpack_in`, so the rules
//! are ours: names normalised by [`crate::walk::normalize`], parents
//! walked with no-follow checks, existing entries removed (never written
//! through) before a new one is created with `O_EXCL`, symlinks created
//! as-is and never followed, hard links only to entries already inside the
//! root, device nodes and fifos refused, the entry count bounded, and a
//! file whose declared size would cross an expanded-bytes limit refused
//! before it is created ([`super::meter`] holds the stream itself to the
//! limits as it comes out of the decompressor).
//!
//! Whiteouts follow the OCI image spec: `.wh.<name>` removes `<name>` from
//! lower layers, `.wh..wh..opq` removes every lower-layer entry of its
//! directory; neither touches what this same layer wrote.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

use super::archive::Entry;
use super::{Totals, UnpackOptions};
use crate::error::UnpackError;
use crate::walk::{self, ParentError};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Metadata applied to directories once the layer is done (writing
/// children would change their mtimes; a read-only mode would block them).
struct DirMeta {
    rel: PathBuf,
    mode: u32,
    mtime: SystemTime,
}

/// State of one layer application.
pub(super) struct Applier<'a> {
    pub(super) root: &'a Path,
    pub(super) layer: usize,
    pub(super) opts: &'a UnpackOptions,
    /// The compression-ratio bound when the image's compressed size is
    /// known up front, and that size: a header declaring more is refused
    /// before its data is written.
    ratio_limit: Option<(u64, u64)>,
    /// Paths (relative) written by this layer, with all their ancestors:
    /// whiteouts in this layer must not remove them.
    written: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
    buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    pub(super) fn new(
        root: &'a Path,
        layer: usize,
        opts: &'a UnpackOptions,
        ratio_limit: Option<(u64, u64)>,
    ) -> Self {
        Self {
            root,
            layer,
            opts,
            ratio_limit,
            written: HashSet::new(),
            dirs: Vec::new(),
            buf: vec![0u8; 256 * 1024],
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { path, source }
    }

    fn unsafe_path(&self, raw: &[u8], why: &'static str) -> UnpackError {
        UnpackError::UnsafePath {
            layer: self.layer,
            path: shown(raw),
            why,
        }
    }

    /// Resolve the parents of `rel` (creating them when `create`).
    fn parent(&self, raw: &[u8], rel: &Path, create: bool) -> Result<Option<PathBuf>, UnpackError> {
        match walk::parent_chain(self.root, rel, create, self.opts.implied_owner()) {
            Ok(p) => Ok(p),
            Err(ParentError::NotDir(c)) => Err(UnpackError::SymlinkParent {
                layer: self.layer,
                path: shown(raw),
                component: c.display().to_string(),
            }),
            Err(ParentError::Io(p, source)) => Err(UnpackError::Io { path: p, source }),
        }
    }

    fn mark_written(&mut self, rel: &Path) {
        let mut p = rel.to_path_buf();
        while !p.as_os_str().is_empty() && self.written.insert(p.clone()) {
            if !p.pop() {
                break;
            }
        }
    }

    /// Apply one tar entry.
    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        totals: &mut Totals,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        totals.entries += 1;
        if totals.entries > self.opts.limits.max_entries {
            return Err(UnpackError::Limit {
                layer: self.layer,
                what: "entry count",
                limit: self.opts.limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let rel = walk::normalize(&raw, self.opts.limits.max_path_len)
            .map_err(|why| self.unsafe_path(&raw, why))?;
        let size = entry.size();
        let declared = totals.file_bytes.saturating_add(size);
        if declared > self.opts.limits.max_expanded_bytes {
            return Err(UnpackError::Limit {
                layer: self.layer,
                what: "expanded size",
                limit: self.opts.limits.max_expanded_bytes,
            });
        }
        if let Some((limit, compressed)) = self.ratio_limit {
            if declared > limit {
                return Err(UnpackError::ExpansionRatio {
                    layer: self.layer,
                    limit,
                    ratio: self.opts.limits.max_expansion_ratio,
                    compressed,
                });
            }
        }
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
        if name.starts_with(WHITEOUT) {
            return self.whiteout(&raw, &rel);
        }
        match kind {
            EntryType::Char => return Err(self.special(&raw, "character device")),
            EntryType::Block => return Err(self.special(&raw, "block device")),
            EntryType::Fifo => return Err(self.special(&raw, "fifo")),
            EntryType::GNUSparse => return Err(self.special(&raw, "GNU sparse file")),
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {}
            _ => return Err(self.special(&raw, "unknown-type")),
        }
        if rel.as_os_str().is_empty() {
            // `./`: the root's own metadata.
            if kind != EntryType::Directory {
                return Err(self.unsafe_path(&raw, "the root itself as a non-directory"));
            }
            let meta = Meta::of(entry, self.opts, self.layer, &raw)?;
            meta.chown(self.root, true).map_err(self.io(self.root))?;
            self.dirs.push(DirMeta {
                rel: PathBuf::new(),
                mode: meta.mode,
                mtime: meta.mtime,
            });
            return Ok(());
        }
        let Some(abs) = self.parent(&raw, &rel, true)? else {
            return Err(self.unsafe_path(&raw, "parent could not be created"));
        };
        let meta = Meta::of(entry, self.opts, self.layer, &raw)?;
        let existing = std::fs::symlink_metadata(&abs).ok();
        match kind {
            EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    walk::remove_any(&abs).map_err(self.io(&abs))?;
                    walk::mkdir(&abs, 0o700).map_err(self.io(&abs))?;
                }
                meta.chown(&abs, true).map_err(self.io(&abs))?;
                meta.xattrs(&abs);
                self.dirs.push(DirMeta {
                    rel: rel.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty()
                    || target.contains(&0)
                    || target.len() > self.opts.limits.max_path_len
                {
                    return Err(self.unsafe_path(&raw, "empty or over-long symlink target"));
                }
                walk::remove_any(&abs).map_err(self.io(&abs))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .map_err(self.io(&abs))?;
                meta.chown(&abs, false).map_err(self.io(&abs))?;
                let t = filetime::FileTime::from_system_time(meta.mtime);
                let _ = filetime::set_symlink_file_times(&abs, t, t);
            }
            EntryType::Link => self.hard_link(entry, &raw, &abs)?,
            _ => {
                walk::remove_any(&abs).map_err(self.io(&abs))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&abs)
                    .map_err(self.io(&abs))?;
                let n = copy(entry, &mut f, &mut self.buf).map_err(|e| match e {
                    CopyError::Read(e) => UnpackError::Malformed {
                        layer: self.layer,
                        detail: format!("reading {}: {e}", shown(&raw)),
                    },
                    CopyError::Write(source) => UnpackError::Io {
                        path: abs.clone(),
                        source,
                    },
                })?;
                totals.file_bytes += n;
                // chown before chmod: chown clears setuid/setgid bits.
                meta.fchown(&f).map_err(self.io(&abs))?;
                f.set_permissions(std::fs::Permissions::from_mode(meta.mode))
                    .map_err(self.io(&abs))?;
                f.set_times(
                    std::fs::FileTimes::new()
                        .set_modified(meta.mtime)
                        .set_accessed(meta.mtime),
                )
                .map_err(self.io(&abs))?;
                meta.xattrs(&abs);
            }
        }
        self.mark_written(&rel);
        Ok(())
    }

    fn special(&self, raw: &[u8], kind: &'static str) -> UnpackError {
        UnpackError::Special {
            layer: self.layer,
            path: shown(raw),
            kind,
        }
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        raw: &[u8],
        abs: &Path,
    ) -> Result<(), UnpackError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let refuse = |why| UnpackError::HardLink {
            layer: self.layer,
            path: shown(raw),
            target: shown(&target_raw),
            why,
        };
        let target_rel = walk::normalize(&target_raw, self.opts.limits.max_path_len)
            .map_err(|_| refuse("target is outside the rootfs (absolute or `..`)"))?;
        if target_rel.as_os_str().is_empty() {
            return Err(refuse("target is the rootfs itself"));
        }
        let target_abs = match walk::parent_chain(self.root, &target_rel, false, None) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(refuse("target has not been extracted")),
            Err(ParentError::NotDir(_)) => {
                return Err(refuse("target path goes through a symlink"))
            }
            Err(ParentError::Io(p, source)) => return Err(UnpackError::Io { path: p, source }),
        };
        match std::fs::symlink_metadata(&target_abs) {
            Ok(m) if m.is_dir() => return Err(refuse("target is a directory")),
            Ok(_) => {}
            Err(_) => return Err(refuse("target has not been extracted")),
        }
        if target_abs == abs {
            return Ok(());
        }
        walk::remove_any(abs).map_err(self.io(abs))?;
        // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the
        // symlink itself, never what it points to.
        std::fs::hard_link(&target_abs, abs).map_err(self.io(abs))
    }

    fn whiteout(&mut self, raw: &[u8], rel: &Path) -> Result<(), UnpackError> {
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
        let dir_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        // A missing parent means there is nothing below to hide.
        let Some(_) = self.parent(raw, rel, false)? else {
            return Ok(());
        };
        if name == OPAQUE {
            let dir = self.root.join(&dir_rel);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                _ => return Ok(()),
            }
            return self.prune(&dir, &dir_rel);
        }
        let hidden = name.get(WHITEOUT.len()..).unwrap_or(b"");
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.unsafe_path(raw, "malformed whiteout name"));
        }
        let target_rel = dir_rel.join(OsStr::from_bytes(hidden));
        if self.written.contains(&target_rel) {
            return Ok(());
        }
        let target = self.root.join(&target_rel);
        walk::remove_any(&target).map_err(self.io(&target))
    }

    /// Opaque directory: remove every entry below `dir` not written by
    /// this layer (descending into kept real directories).
    fn prune(&self, dir: &Path, dir_rel: &Path) -> Result<(), UnpackError> {
        for e in std::fs::read_dir(dir).map_err(self.io(dir))? {
            let e = e.map_err(self.io(dir))?;
            let rel = dir_rel.join(e.file_name());
            let path = e.path();
            if !self.written.contains(&rel) {
                walk::remove_any(&path).map_err(self.io(&path))?;
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.prune(&path, &rel)?;
            }
        }
        Ok(())
    }

    /// Directory modes and mtimes, deepest first. Each path is walked
    /// again without following links: a later entry of this layer may have
    /// replaced the directory (or a parent) with a symlink.
    pub(super) fn finish(mut self) -> Result<(), UnpackError> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for d in &self.dirs {
            let path = if d.rel.as_os_str().is_empty() {
                self.root.to_path_buf()
            } else {
                match walk::parent_chain(self.root, &d.rel, false, None) {
                    Ok(Some(p)) => p,
                    _ => continue,
                }
            };
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode))
                .map_err(self.io(&path))?;
            let t = filetime::FileTime::from_system_time(d.mtime);
            filetime::set_symlink_file_times(&path, t, t).map_err(self.io(&path))?;
        }
        Ok(())
    }
}

/// An entry's metadata as the layer states it.
struct Meta {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: SystemTime,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(
        entry: &Entry<'_, R>,
        opts: &UnpackOptions,
        layer: usize,
        raw: &[u8],
    ) -> Result<Self, UnpackError> {
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mut uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
        let mut gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(h.mtime().unwrap_or(0));
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Ok(key) = ext.key() else { continue };
                match key {
                    "uid" => uid = ext.value().ok().and_then(|v| v.parse().ok()),
                    "gid" => gid = ext.value().ok().and_then(|v| v.parse().ok()),
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        if !opts.ownership {
            uid = None;
            gid = None;
        } else if let Some(shift) = opts.shift {
            // Shifted into the user namespace's range; an id past it
            // would belong to no one inside and to a real user outside.
            let map = |id: Option<u32>| {
                let id = id.unwrap_or(0);
                shift.map(id).ok_or_else(|| UnpackError::Owner {
                    layer,
                    path: shown(raw),
                    id,
                    size: shift.size,
                })
            };
            uid = Some(map(uid)?);
            gid = Some(map(gid)?);
        }
        Ok(Self {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn chown(&self, path: &Path, _is_dir: bool) -> std::io::Result<()> {
        if self.uid.is_none() && self.gid.is_none() {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, self.uid, self.gid)
    }

    fn fchown(&self, f: &std::fs::File) -> std::io::Result<()> {
        if self.uid.is_none() && self.gid.is_none() {
            return Ok(());
        }
        std::os::unix::fs::fchown(f, self.uid, self.gid)
    }

    /// Best effort: a filesystem without xattr support (or an unprivileged
    /// namespace like `trusted.`) must not fail the unpack.
    fn xattrs(&self, path: &Path) {
        for (name, value) in &self.xattrs {
            if let Err(e) = xattr::set(path, name, value) {
                tracing::debug!(path = %path.display(), xattr = %name, error = %e, "xattr not applied");
            }
        }
    }
}

/// Which side of a copy failed: reading the layer says something about the
/// layer, writing the file (a full disk) only about this node.
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy an entry's data with a large buffer (the default 8 KiB costs
/// measurably on big layers).
fn copy<R: Read>(r: &mut R, w: &mut std::fs::File, buf: &mut [u8]) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(buf.get(..n).unwrap_or(buf))
            .map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// A tar name for error messages (lossy, bounded).
fn shown(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.chars().take(300).collect()
}

//! Tar layers with everything the unpacker must handle — directories with
//! modes and owners, symlinks, hard links, OCI whiteouts and opaque
//! markers, device nodes, and hostile names (`..`, absolute paths) written
//! with raw headers (the `tar` crate's path setters refuse those) — plus
//! gzip/zstd/plain compression and images with per-layer media types,
//! pushable with [`crate::registry::Registry::push_image`].

use std::io::Write as _;

use anyhow::Result;
use serde_json::json;
use tar::{EntryType, Header};

use crate::image::{sha256, Image, Layer};

/// One tar entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Entry type.
    pub kind: EntryType,
    /// Name bytes exactly as written (may be hostile).
    pub name: Vec<u8>,
    /// Link target for symlinks and hard links.
    pub link: Vec<u8>,
    /// File content.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Extra PAX records (e.g. `SCHILY.xattr.user.x`).
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(kind: EntryType, name: &str) -> Self {
        Self {
            kind,
            name: name.as_bytes().to_vec(),
            link: Vec::new(),
            data: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            pax: Vec::new(),
        }
    }

    /// A directory, mode 0755.
    pub fn dir(name: &str) -> Self {
        Self::new(EntryType::Directory, name).mode(0o755)
    }

    /// A regular file, mode 0644.
    pub fn file(name: &str, data: &[u8]) -> Self {
        let mut e = Self::new(EntryType::Regular, name);
        e.data = data.to_vec();
        e
    }

    /// A symlink `name -> target` (stored as-is).
    pub fn symlink(name: &str, target: &str) -> Self {
        let mut e = Self::new(EntryType::Symlink, name).mode(0o777);
        e.link = target.as_bytes().to_vec();
        e
    }

    /// A hard link `name` to `target`.
    pub fn hardlink(name: &str, target: &str) -> Self {
        let mut e = Self::new(EntryType::Link, name);
        e.link = target.as_bytes().to_vec();
        e
    }

    /// `dir/.wh.name`: deletes `dir/name` of lower layers.
    pub fn whiteout(path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Self::file(&format!("{dir}.wh.{name}"), b"")
    }

    /// `dir/.wh..wh..opq`: `dir` is opaque.
    pub fn opaque(dir: &str) -> Self {
        Self::file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), b"")
    }

    /// A character device node.
    pub fn char_device(name: &str) -> Self {
        Self::new(EntryType::Char, name)
    }

    /// A fifo.
    pub fn fifo(name: &str) -> Self {
        Self::new(EntryType::Fifo, name)
    }

    /// Any entry type with raw name/link bytes.
    pub fn raw(kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        Self {
            kind,
            name: name.to_vec(),
            link: link.to_vec(),
            data: data.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            pax: Vec::new(),
        }
    }

    /// With permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// With owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// With an extended attribute (PAX `SCHILY.xattr.<name>`).
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.pax
            .push((format!("SCHILY.xattr.{name}"), value.to_vec()));
        self
    }
}

fn long_entry(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, value: &[u8]) -> Result<()> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    let mut data = value.to_vec();
    data.push(0);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data.as_slice())?;
    Ok(())
}

/// The uncompressed tar of `entries`, headers written raw (names are not
/// validated or cleaned).
pub fn tar_bytes(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            b.append_pax_extensions(e.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if e.name.len() > 100 {
            long_entry(&mut b, EntryType::GNULongName, &e.name)?;
        }
        if e.link.len() > 100 {
            long_entry(&mut b, EntryType::GNULongLink, &e.link)?;
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(e.kind);
        let n = e.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&e.name[..n]);
        let l = e.link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&e.link[..l]);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(1_600_000_000);
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1)?;
            h.set_device_minor(3)?;
        }
        h.set_cksum();
        b.append(&h, e.data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Comp {
    /// The OCI media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compress `raw`.
    pub fn compress(self, raw: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Comp::None => raw.to_vec(),
            Comp::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(raw)?;
                gz.finish()?
            }
            Comp::Zstd => {
                ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest)
            }
        })
    }
}

/// A layer of `entries` compressed with `comp`.
pub fn layer(entries: &[Entry], comp: Comp) -> Result<(Layer, Comp)> {
    let raw = tar_bytes(entries)?;
    let blob = comp.compress(&raw)?;
    Ok((
        Layer {
            digest: sha256(&blob),
            diff_id: sha256(&raw),
            blob,
        },
        comp,
    ))
}

/// A linux/amd64 OCI image whose layers carry their own media types.
pub fn image(layers: Vec<(Layer, Comp)>) -> Result<Image> {
    image_with_config(layers, json!({ "Cmd": ["/bin/sh"] }))
}

/// [`image`] with `config` as the image config's `config` object
/// (Cmd, Env, User, WorkingDir, …).
pub fn image_with_config(layers: Vec<(Layer, Comp)>, config: serde_json::Value) -> Result<Image> {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(l, _)| l.diff_id.clone()).collect::<Vec<_>>() },
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|(l, c)| json!({
            "mediaType": c.media_type(), "digest": l.digest, "size": l.blob.len(),
        })).collect::<Vec<_>>(),
    }))?;
    let compressed_size =
        config.len() as u64 + layers.iter().map(|(l, _)| l.blob.len() as u64).sum::<u64>();
    Ok(Image {
        digest: sha256(&manifest),
        config_digest,
        config,
        layers: layers.into_iter().map(|(l, _)| l).collect(),
        manifest,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        compressed_size,
    })
}

/// Entries for the parent directories of `path` (relative), outermost
/// first, that `seen` does not have yet.
fn parents(path: &str, seen: &mut std::collections::BTreeSet<String>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut at = std::path::Path::new(path).parent();
    let mut chain = Vec::new();
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        chain.push(d.to_string_lossy().into_owned());
        at = d.parent();
    }
    for d in chain.into_iter().rev() {
        if seen.insert(d.clone()) {
            out.push(Entry::dir(&d));
        }
    }
    out
}

/// The host's program at `program` and the shared libraries `ldd` says it
/// loads, as files at the same places in an image (symlinks followed),
/// with their parent directories: a layer to put over a base, as an image
/// built on a distribution has them.
pub fn host_program(program: &str) -> Result<Vec<Entry>> {
    let mut files = host_libraries(&[program])?;
    files.push(program.to_owned());
    host_files(files)
}

/// The host's shared libraries that `ldd` says the `objects` (programs or
/// libraries) load, found on the host, each once: what a runtime that
/// ships its own tree needs from the distribution under it.
pub fn host_libraries(objects: &[&str]) -> Result<Vec<String>> {
    let ldd = std::process::Command::new("ldd").args(objects).output()?;
    // With several objects, ldd heads each one's list with its path
    // (unindented); the libraries are the indented lines.
    let mut files: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The host's `files` at the same places in an image (symlinks followed,
/// executable), with their parent directories.
pub fn host_files(files: Vec<String>) -> Result<Vec<Entry>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for f in files {
        let rel = f.trim_start_matches('/');
        out.extend(parents(rel, &mut seen));
        out.push(Entry::file(rel, &std::fs::read(&f)?).mode(0o755));
    }
    Ok(out)
}

/// The host's directory `dir`, whole (files with their modes, symlinks as
/// they are), at the same place in an image, with its parent directories.
pub fn host_tree(dir: &str) -> Result<Vec<Entry>> {
    host_tree_without(dir, &[])
}

/// [`host_tree`] without the entries named in `skip`, wherever they are
/// below `dir` (a directory's whole subtree with it): a runtime's tree
/// without its tests and caches, as a slim image ships it.
pub fn host_tree_without(dir: &str, skip: &[&str]) -> Result<Vec<Entry>> {
    host_tree_at(dir, dir, skip)
}

/// [`host_tree_without`], at `at` in the image instead of where it is on
/// the host (a runtime built in a temporary directory, shipped under
/// `/opt`).
pub fn host_tree_at(dir: &str, at: &str, skip: &[&str]) -> Result<Vec<Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut seen = std::collections::BTreeSet::new();
    let root = at.trim_start_matches('/').trim_end_matches('/');
    let mut out = parents(root, &mut seen);
    let mut todo = vec![(std::path::PathBuf::from(dir), root.to_owned())];
    while let Some((path, rel)) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            out.push(Entry::symlink(&rel, &target.to_string_lossy()));
        } else if meta.is_dir() {
            out.push(Entry::dir(&rel).mode(mode));
            for e in std::fs::read_dir(&path)? {
                let e = e?;
                let name = e.file_name();
                if !skip.iter().any(|s| name == **s) {
                    todo.push((e.path(), format!("{rel}/{}", name.to_string_lossy())));
                }
            }
        } else if meta.is_file() {
            out.push(Entry::file(&rel, &std::fs::read(&path)?).mode(mode));
        }
    }
    Ok(out)
}

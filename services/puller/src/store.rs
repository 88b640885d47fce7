//! The node's content store (containerd's model, STYLE.md anchor): blobs
//! are ingested into `ingest/<random>`, verified against the expected
//! digest and size as they stream in, fsynced, and only then committed by
//! an atomic rename to `blobs/<algo>/<hex>`. A reader therefore never sees
//! a partial or unverified blob; a crash mid-download leaves only an
//! ingest file, removed when the store is next opened (a restart downloads
//! the blob again — simpler than resuming and as safe).
//!
//! Unpacked rootfs trees live at `trees/<algo>/<hex>/rootfs`, keyed by the
//! image manifest digest; they are built under `tmp/` and renamed into
//! place when complete. Trees made for instances in a user namespace
//! ([`IdShift`]) have their files owned by the shifted ids and live apart,
//! in `trees-<host>-<size>/`, so a node that turns the namespace on or off
//! never starts an instance on a tree owned for the other way; the
//! collector treats every set alike (an image's trees in all sets are
//! kept while it is referenced). [`ContentStore::gc`] deletes what the caller does
//! not reference, least recently used first, until usage fits a budget.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use berth_domain::reference::Digest;
use berth_oci::digest::algorithm;
use tokio::io::AsyncWrite;

use crate::error::StoreError;

/// How [`ContentStore::has`] decides a committed blob is still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPolicy {
    /// Size check only (blobs were verified at commit; cheap).
    #[default]
    Size,
    /// Re-hash the whole blob on every reuse (catches bit rot; costs
    /// ~0.5 s per GB per core).
    Rehash,
}

/// How the files of unpacked trees are owned for instances that run in a
/// user namespace: the image's id `i` (below `size`) is the host's id
/// `host + i`, so the image's root is an unprivileged user of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// The host id of the image's id 0.
    pub host: u32,
    /// How many ids are mapped (an image's ids must be below it).
    pub size: u32,
}

impl IdShift {
    /// The host id of the image's `id`; `None` outside the range.
    pub fn map(self, id: u32) -> Option<u32> {
        if id < self.size {
            self.host.checked_add(id)
        } else {
            None
        }
    }
}

/// A content-addressed store under one root directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
    policy: VerifyPolicy,
    /// Where trees go: `trees`, or `trees-<host>-<size>` when shifted.
    trees: PathBuf,
    shift: Option<IdShift>,
}

/// What [`ContentStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Bytes in use before.
    pub before_bytes: u64,
    /// Bytes in use after.
    pub after_bytes: u64,
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Trees deleted.
    pub trees_removed: usize,
}

fn algo_hex(d: &Digest) -> (&str, &str) {
    (d.algorithm(), d.encoded())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(path, e)
}

impl ContentStore {
    /// Open (creating) a store at `root`; removes ingest files and
    /// half-built trees left by a crash.
    pub fn open(root: impl Into<PathBuf>, policy: VerifyPolicy) -> Result<Self, StoreError> {
        let root = root.into();
        for d in [
            "blobs/sha256",
            "blobs/sha512",
            "trees/sha256",
            "trees/sha512",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        // Owner only: unpacked trees keep the images' setuid files, which
        // a host user must not reach and run.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&root))?;
        }
        for d in ["ingest", "tmp"] {
            let p = root.join(d);
            if p.exists() {
                let n = std::fs::read_dir(&p).map_err(io(&p))?.count();
                if n > 0 {
                    tracing::info!(dir = %p.display(), entries = n, "removing leftovers of an interrupted pull or unpack");
                }
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let trees = root.join("trees");
        Ok(Self {
            root,
            policy,
            trees,
            shift: None,
        })
    }

    /// The store with its trees unpacked for a user namespace: files owned
    /// by `shift`'s host ids, in a tree set of their own. The store's root
    /// becomes searchable (not readable) by the shifted root's group, mode
    /// 0710, as the container's root must reach the trees it mounts; the
    /// setuid files inside belong to shifted, unprivileged ids.
    pub fn with_id_shift(mut self, shift: IdShift) -> Result<Self, StoreError> {
        self.trees = self
            .root
            .join(format!("trees-{}-{}", shift.host, shift.size));
        for algo in ["sha256", "sha512"] {
            let p = self.trees.join(algo);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        searchable_by(&self.root, shift.host).map_err(io(&self.root))?;
        self.shift = Some(shift);
        Ok(self)
    }

    /// Every tree set in the store (`trees`, `trees-<host>-<size>`), this
    /// store's and the other way's.
    fn tree_sets(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut sets = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let e = e.map_err(io(&self.root))?;
            if e.file_name().to_string_lossy().starts_with("trees") {
                sets.push(e.path());
            }
        }
        Ok(sets)
    }

    /// How this store's trees are owned: `None` as the layers say.
    pub fn id_shift(&self) -> Option<IdShift> {
        self.shift
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a committed blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let (algo, hex) = algo_hex(d);
        self.root.join("blobs").join(algo).join(hex)
    }

    /// Whether blob `d` of `size` bytes is committed and still good by the
    /// store's [`VerifyPolicy`]. A blob that fails the check is deleted
    /// (so it is downloaded again). A hit marks the blob recently used.
    pub fn has(&self, d: &Digest, size: u64) -> bool {
        let path = self.blob_path(d);
        let ok = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => match self.policy {
                VerifyPolicy::Size => true,
                VerifyPolicy::Rehash => hash_file(&path, d).unwrap_or(false),
            },
            Ok(_) => false,
            Err(_) => return false,
        };
        if ok {
            let _ = filetime::set_file_mtime(&path, filetime::FileTime::now());
        } else {
            tracing::warn!(digest = %d, "stored blob failed verification; removing it");
            let _ = std::fs::remove_file(&path);
        }
        ok
    }

    /// Read a committed blob of at most `max` bytes (manifests, configs).
    pub fn read(&self, d: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(d.to_string()))
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        if meta.len() > max {
            return Err(StoreError::DigestMismatch(format!(
                "{d}: {} bytes, more than the {max} expected",
                meta.len()
            )));
        }
        std::fs::read(&path).map_err(io(&path))
    }

    /// Verify and commit small in-memory bytes (a manifest, a config).
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has(d, bytes.len() as u64) {
            return Ok(());
        }
        let got = hex(ring::digest::digest(algorithm(d), bytes).as_ref());
        if got != algo_hex(d).1 {
            return Err(StoreError::DigestMismatch(format!(
                "{d}: bytes hash to {got}"
            )));
        }
        let temp = self.ingest_path();
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create_new(&temp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&temp);
            return Err(StoreError::io(&temp, e));
        }
        self.commit_file(&temp, d)
    }

    fn ingest_path(&self) -> PathBuf {
        self.root
            .join("ingest")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Rename a verified ingest file into place and make the rename
    /// durable.
    fn commit_file(&self, temp: &Path, d: &Digest) -> Result<(), StoreError> {
        let target = self.blob_path(d);
        if let Err(e) = std::fs::rename(temp, &target) {
            let _ = std::fs::remove_file(temp);
            return Err(StoreError::io(&target, e));
        }
        if let Some(dir) = target.parent() {
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// Start ingesting blob `d` of `size` bytes. Write the bytes into the
    /// returned [`Ingest`], then [`Ingest::commit`]. Dropping it without
    /// committing removes the temp file.
    pub async fn ingest(&self, d: &Digest, size: u64) -> Result<Ingest, StoreError> {
        let temp = self.ingest_path();
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(io(&temp))?;
        Ok(Ingest {
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            temp,
            store: self.clone(),
            digest: d.clone(),
            size,
            ctx: ring::digest::Context::new(algorithm(d)),
            written: 0,
            counter: None,
        })
    }

    /// The rootfs directory for image manifest `d` (present only once
    /// fully unpacked).
    pub fn tree_path(&self, d: &Digest) -> PathBuf {
        self.tree_dir(d).join("rootfs")
    }

    fn tree_dir(&self, d: &Digest) -> PathBuf {
        let (algo, hex) = algo_hex(d);
        self.trees.join(algo).join(hex)
    }

    /// Whether image `d` is unpacked; a hit marks it recently used.
    pub fn has_tree(&self, d: &Digest) -> bool {
        let dir = self.tree_dir(d);
        let ok = std::fs::symlink_metadata(dir.join("rootfs")).is_ok_and(|m| m.is_dir());
        if ok {
            let _ = filetime::set_file_mtime(&dir, filetime::FileTime::now());
        }
        ok
    }

    /// A fresh private directory under `tmp/` to build a tree in.
    pub(crate) fn temp_dir(&self) -> Result<PathBuf, StoreError> {
        let p = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir(&p).map_err(io(&p))?;
        Ok(p)
    }

    /// Move a finished tree (`built` holds `rootfs/`) into place for `d`.
    /// If another unpack won the race, `built` is discarded.
    pub(crate) fn commit_tree(&self, built: &Path, d: &Digest) -> Result<PathBuf, StoreError> {
        let dir = self.tree_dir(d);
        match std::fs::rename(built, &dir) {
            Ok(()) => {}
            Err(_) if self.has_tree(d) => {
                let _ = std::fs::remove_dir_all(built);
            }
            Err(e) => return Err(StoreError::io(&dir, e)),
        }
        Ok(dir.join("rootfs"))
    }

    /// Blobs reachable from manifests `images` that are in the store: the
    /// manifests themselves, index children, configs and layers; and their
    /// trees in each of the tree `sets`.
    fn referenced(&self, images: &[Digest], sets: &[PathBuf]) -> HashSet<PathBuf> {
        let mut keep = HashSet::new();
        let mut todo: Vec<Digest> = images.to_vec();
        while let Some(d) = todo.pop() {
            if !keep.insert(self.blob_path(&d)) {
                continue;
            }
            // Its tree in every set: an instance adopted after the node
            // turned its user namespace on or off still runs on the
            // other set's.
            let (algo, hex) = algo_hex(&d);
            keep.extend(sets.iter().map(|set| set.join(algo).join(hex)));
            let Ok(bytes) = self.read(&d, 16 << 20) else {
                continue;
            };
            match berth_oci::manifest::parse(None, &bytes) {
                Ok(berth_oci::manifest::Manifest::Image { config, layers }) => {
                    keep.insert(self.blob_path(&config.digest));
                    keep.extend(layers.iter().map(|l| self.blob_path(&l.digest)));
                }
                Ok(berth_oci::manifest::Manifest::Index(entries)) => {
                    todo.extend(entries.into_iter().map(|e| e.descriptor.digest));
                }
                Err(_) => {}
            }
        }
        keep
    }

    /// Delete blobs and trees not reachable from the manifests `images`,
    /// least recently used first, until the store's usage is at most
    /// `budget_bytes` (0 deletes everything unreferenced). Referenced
    /// content is never deleted, even over budget.
    pub fn gc(&self, images: &[Digest], budget_bytes: u64) -> Result<GcReport, StoreError> {
        let sets = self.tree_sets()?;
        let keep = self.referenced(images, &sets);
        let mut items: Vec<(SystemTime, u64, PathBuf, bool)> = Vec::new();
        let mut total = 0u64;
        let mut kinds = vec![(self.root.join("blobs"), false)];
        kinds.extend(sets.into_iter().map(|t| (t, true)));
        for (kind, is_tree) in kinds {
            for algo in ["sha256", "sha512"] {
                let dir = kind.join(algo);
                if !dir.is_dir() {
                    continue;
                }
                for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
                    let e = e.map_err(io(&dir))?;
                    let path = e.path();
                    let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
                    let size = if is_tree {
                        tree_size(&path)
                    } else {
                        meta.len()
                    };
                    total += size;
                    if !keep.contains(&path) {
                        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        items.push((used, size, path, is_tree));
                    }
                }
            }
        }
        let mut report = GcReport {
            before_bytes: total,
            ..GcReport::default()
        };
        items.sort_by_key(|(used, ..)| *used);
        for (_, size, path, is_tree) in items {
            if total <= budget_bytes && budget_bytes > 0 {
                break;
            }
            let r = if is_tree {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(io(&path))?;
            total = total.saturating_sub(size);
            if is_tree {
                report.trees_removed += 1;
            } else {
                report.blobs_removed += 1;
            }
        }
        report.after_bytes = total;
        tracing::info!(
            before = report.before_bytes,
            after = report.after_bytes,
            blobs = report.blobs_removed,
            trees = report.trees_removed,
            "content store gc"
        );
        Ok(report)
    }
}

/// Make `dir` (owned by root) searchable by group `gid` and no one else:
/// mode 0710, as Docker makes its data dir for remapped roots.
pub fn searchable_by(dir: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
}

/// Bytes used by a tree (regular file sizes; links and dirs count 0).
fn tree_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn hash_file(path: &Path, d: &Digest) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(algorithm(d));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()) == algo_hex(d).1)
}

/// A blob being written into the store: an `AsyncWrite` that hashes and
/// counts what it accepts. Only [`Ingest::commit`] makes it visible.
pub struct Ingest {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    store: ContentStore,
    digest: Digest,
    size: u64,
    ctx: ring::digest::Context,
    written: u64,
    counter: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("temp", &self.temp)
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("written", &self.written)
            .finish()
    }
}

impl Ingest {
    /// Also add every accepted byte to `counter` (pull progress).
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Check size and digest of what was written, fsync, and rename into
    /// place. On a mismatch nothing is committed and the temp file goes.
    pub async fn commit(mut self) -> Result<PathBuf, StoreError> {
        use tokio::io::AsyncWriteExt;
        let Some(mut file) = self.file.take() else {
            return Err(StoreError::io(
                &self.temp,
                std::io::Error::other("ingest already finished"),
            ));
        };
        file.flush().await.map_err(io(&self.temp))?;
        let file = file.into_inner();
        file.sync_all().await.map_err(io(&self.temp))?;
        drop(file);
        let ctx = std::mem::replace(
            &mut self.ctx,
            ring::digest::Context::new(algorithm(&self.digest)),
        );
        let got = hex(ctx.finish().as_ref());
        if self.written != self.size {
            return Err(StoreError::DigestMismatch(format!(
                "{}: {} bytes written, {} expected",
                self.digest, self.written, self.size
            )));
        }
        if got != algo_hex(&self.digest).1 {
            return Err(StoreError::DigestMismatch(format!(
                "{}: content hashes to {got}",
                self.digest
            )));
        }
        let store = self.store.clone();
        let temp = self.temp.clone();
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || store.commit_file(&temp, &digest))
            .await
            .map_err(|e| StoreError::io(&self.temp, std::io::Error::other(e.to_string())))??;
        // Committed: the temp path no longer exists, nothing to clean.
        self.temp = PathBuf::new();
        Ok(self.store.blob_path(&self.digest))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl AsyncWrite for Ingest {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.size {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "{}: more than the expected {} bytes",
                this.digest, this.size
            ))));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other("ingest already finished")));
        };
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                let accepted = buf.get(..n).unwrap_or(buf);
                this.ctx.update(accepted);
                this.written += n as u64;
                if let Some(c) = &this.counter {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(f) => Pin::new(f).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().file.as_mut() {
            Some(f) => Pin::new(f).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

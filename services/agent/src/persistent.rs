//! A service's persistent disk on this node: an ext4 filesystem of the
//! disk's size in a file of its own (`<state>/disks/<disk id>.img`,
//! allocated in full when made, so the node's disk cannot run out under
//! it later), loop-mounted at `<state>/disks/<disk id>` and bind-mounted
//! into the service's instance at the disk's path. What the instance
//! writes there outlives the instance: crashes, restarts and deploys find
//! it again; only removing the disk (its service deleted) ends it.
//!
//! The disk is empty when new (without ext4's `lost+found`), as a Docker
//! volume is. The filesystem stays mounted once mounted, also after its instance
//! ends, and is mounted again (after a reboot) only when it is not: one
//! filesystem image is never mounted twice, which would corrupt it. Its
//! root belongs to the instance's root user (the host's root, or the
//! first id of the instance's user namespace), set again when that
//! changes. A disk is made in a temporary file renamed into place, so a
//! node dying midway leaves no half-made disk behind a real name.
//!
//! A disk grown since it was made (never shrunk) grows when its instance
//! next starts: the file to its new size, then the filesystem, unmounted
//! (an online grow needs `CAP_SYS_RESOURCE`, which a node in a container
//! may lack) and only once nothing holds it; a marker file makes a node
//! that died between the two finish the filesystem's part.
//!
//! A snapshot is a copy of the disk's file in `<state>/disks/snapshots/
//! <disk id>/<key>.img`, taken while its filesystem is frozen (`fsfreeze`:
//! writes wait, what was written is on the file), so it is what a clean
//! stop would have left; it is sparse, taking what the filesystem holds.
//! A node that dies while a filesystem is frozen thaws it when it starts
//! again ([`thaw_all`]). A restore copies a snapshot over the disk,
//! unmounted, before the instance that follows mounts it, once per
//! restore (a marker file holds the last restore's number); a disk grown
//! since the snapshot grows again after it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use berth_schemas::ids::DiskSnapshotKey;
use berth_schemas::model::{Disk, DiskRestore};

use crate::bundle::{self, UserNamespace};
use crate::error::{agent_io, AgentError};

/// A disk's size in bytes (its `sizeGB` are GiB).
fn bytes(disk: &Disk) -> u64 {
    u64::from(disk.size_gb) << 30
}

/// One disk operation at a time on this node: a snapshot is not taken
/// while a disk is mounted, restored, grown or removed.
static BUSY: Mutex<()> = Mutex::new(());

fn busy() -> MutexGuard<'static, ()> {
    BUSY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a node keeps its disks, below the agent's state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("disks")
}

/// Whether `id` can name files (a `dsk-` id: letters and digits only).
fn valid(id: &str) -> bool {
    id.strip_prefix("dsk-")
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn failed(id: &str, message: impl Into<String>) -> AgentError {
    AgentError::Disk {
        id: id.to_owned(),
        message: message.into(),
    }
}

/// Where system tool `name` is: on `PATH`, else in the system's `sbin`
/// directories (which a `PATH` of a user's shell may lack).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a system tool to its end; what it printed and how it ended.
fn output(id: &str, program: &str, args: &[&str]) -> Result<std::process::Output, AgentError> {
    Command::new(tool(program))
        .args(args)
        .output()
        .map_err(|e| failed(id, format!("cannot run {program}: {e}")))
}

/// Runs a system tool; its error output is the failure's message.
fn run(id: &str, program: &str, args: &[&str]) -> Result<(), AgentError> {
    let out = output(id, program, args)?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(failed(
        id,
        format!("{program} failed ({}): {}", out.status, said.trim()),
    ))
}

/// A disk made ready for an instance.
#[derive(Debug)]
pub struct Attached {
    /// The host directory to bind-mount into the instance.
    pub mount: PathBuf,
    /// What to tell the service's logs: the disk was set back to a
    /// snapshot, or could not be.
    pub said: Option<String>,
}

/// Makes the disk if this node has not got it, sets it back to the
/// snapshot `restore` names unless that restore was done, mounts it if it
/// is not mounted, and gives its root to the instance's root user.
///
/// A restore whose snapshot this node has not got (its files removed
/// by hand, the node's state lost) is given up, said, and the disk starts
/// as it is: refusing the start would leave the service unable to start
/// at all, since every later deploy carries the same restore.
pub fn attach(
    disks: &Path,
    service: &str,
    disk: &Disk,
    restore: Option<&DiskRestore>,
    ns: Option<UserNamespace>,
    reserve: u64,
) -> Result<Attached, AgentError> {
    let id = disk.id.as_str();
    if !valid(id) {
        return Err(failed(id, "not a disk id"));
    }
    let _busy = busy();
    let bytes = bytes(disk);
    let owner = ns.map_or(0, |n| n.host);
    // The instance's root passes through it to the mount (0710, its group).
    bundle::private_dir(disks, ns.map(|n| n.host)).map_err(agent_io(disks))?;
    let image = disks.join(format!("{id}.img"));
    if !image.exists() {
        room(disks, id, bytes, reserve)?;
        // Whose it is, first: a disk is never on the node without it.
        let owned_by = disks.join(format!("{id}.service"));
        let new = disks.join(format!("{id}.service.new"));
        std::fs::write(&new, service)
            .and_then(|()| std::fs::rename(&new, &owned_by))
            .map_err(agent_io(&owned_by))?;
        make(disks, disk, owner)?;
    }
    let mut said = None;
    if let Some(r) = restore.filter(|r| r.disk == disk.id) {
        if last_restore(disks, id) != Some(r.number) {
            let snapshot = snapshot_dir(disks, id).join(format!("{}.img", r.key));
            if snapshot.is_file() {
                restore_from(disks, id, &snapshot, reserve)?;
                tracing::info!(disk.id = %id, snapshot = %r.key, restore = r.number, "disk set back to its snapshot");
                said = Some(format!("disk {id} set back to its snapshot {}", r.key));
            } else {
                tracing::error!(disk.id = %id, snapshot = %r.key, path = %snapshot.display(), "a disk's snapshot to restore is not on this node; the disk starts as it is");
                said = Some(format!(
                    "disk {id} NOT set back to its snapshot {}: the snapshot is not on this node any more; the disk is as it was",
                    r.key
                ));
            }
            write_atomic(&disks.join(format!("{id}.restored")), &r.number.to_string())?;
        }
    }
    // Grown since it was made (or set back to a snapshot of a smaller
    // size): the file first (a marker says a filesystem is still to
    // follow, so a node dying between the two finishes it).
    let growing = disks.join(format!("{id}.grow"));
    let had = std::fs::metadata(&image).map_err(agent_io(&image))?.len();
    if had < bytes {
        room(disks, id, bytes - had, reserve)?;
        std::fs::write(&growing, b"").map_err(agent_io(&growing))?;
        run(
            id,
            "fallocate",
            &["-l", &bytes.to_string(), path_str(&image)?],
        )
        .map_err(|e| {
            let why = match e {
                AgentError::Disk { message, .. } => message,
                other => other.to_string(),
            };
            failed(
                id,
                format!("cannot grow to {} GB on this node: {why}", disk.size_gb),
            )
        })?;
    }
    let mount = disks.join(id);
    std::fs::create_dir_all(&mount).map_err(agent_io(&mount))?;
    if growing.exists() {
        grow(id, &image, &mount)?;
        std::fs::remove_file(&growing).map_err(agent_io(&growing))?;
    }
    if !bundle::is_mountpoint(&mount) {
        let (img, at) = (path_str(&image)?, path_str(&mount)?);
        run(
            id,
            "mount",
            &["-t", "ext4", "-o", "loop,nosuid,nodev,noatime", img, at],
        )?;
    }
    // mkfs's empty `lost+found` goes: a disk looks like a new volume,
    // empty, as programs that initialize a data directory (initdb,
    // mysqld) require. One holding what a filesystem check recovered
    // stays.
    let _ = std::fs::remove_dir(mount.join("lost+found"));
    let root = std::fs::metadata(&mount).map_err(agent_io(&mount))?;
    if std::os::unix::fs::MetadataExt::uid(&root) != owner {
        std::os::unix::fs::chown(&mount, Some(owner), Some(owner)).map_err(agent_io(&mount))?;
    }
    Ok(Attached { mount, said })
}

fn path_str(p: &Path) -> Result<&str, AgentError> {
    p.to_str().ok_or_else(|| AgentError::Io {
        path: p.to_owned(),
        source: std::io::Error::other("not UTF-8"),
    })
}

/// Grows the filesystem in `image` to the file's size, unmounted, only
/// when nothing else holds it (its service's instance is stopped before a
/// new one starts, so nothing should).
fn grow(id: &str, image: &Path, mount: &Path) -> Result<(), AgentError> {
    release(id, image, mount)?;
    // A filesystem is checked before it is resized (0: clean, 1: fixed).
    let checked = output(id, "e2fsck", &["-f", "-p", path_str(image)?])?;
    if !matches!(checked.status.code(), Some(0 | 1)) {
        return Err(failed(
            id,
            format!(
                "e2fsck found errors it did not fix ({}): {}",
                checked.status,
                String::from_utf8_lossy(&checked.stdout).trim()
            ),
        ));
    }
    run(id, "resize2fs", &[path_str(image)?])
}

/// Unmounts the disk and waits until no loop device holds its file.
fn release(id: &str, image: &Path, mount: &Path) -> Result<(), AgentError> {
    if bundle::is_mountpoint(mount) {
        run(id, "umount", &[path_str(mount)?])?;
    }
    // The kernel lets the loop device go a moment after the unmount.
    let mut waited = 0;
    while attached(id, image)? {
        if waited >= 40 {
            return Err(failed(
                id,
                "its filesystem is still held (an instance not yet gone); the start is tried again",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    Ok(())
}

/// Where a node keeps the snapshots of disk `id`.
fn snapshot_dir(disks: &Path, id: &str) -> PathBuf {
    disks.join("snapshots").join(id)
}

/// What `path` takes on its filesystem (a sparse file: less than its
/// length).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
}

/// Copies `from` to `to` sparsely (holes and zeros stay holes; a
/// filesystem that shares blocks shares them), and syncs the copy.
fn copy(id: &str, from: &Path, to: &Path) -> Result<(), AgentError> {
    let _ = std::fs::remove_file(to);
    let copied = run(
        id,
        "cp",
        &[
            "--sparse=always",
            "--reflink=auto",
            path_str(from)?,
            path_str(to)?,
        ],
    )
    .and_then(|()| {
        std::fs::File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(agent_io(to))
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// Writes `text` to `path` through a temporary file renamed over it.
fn write_atomic(path: &Path, text: &str) -> Result<(), AgentError> {
    let mut new = path.as_os_str().to_owned();
    new.push(".new");
    let new = PathBuf::from(new);
    std::fs::write(&new, text)
        .and_then(|()| std::fs::File::open(&new)?.sync_all())
        .and_then(|()| std::fs::rename(&new, path))
        .map_err(agent_io(path))
}

/// The number of the last restore done on disk `id` here.
fn last_restore(disks: &Path, id: &str) -> Option<u32> {
    std::fs::read_to_string(disks.join(format!("{id}.restored")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Copies `snapshot` over disk `id`, unmounted: into a new file
/// allocated in full, renamed over the disk's (a node dying midway leaves
/// the disk as it was, and restores again).
fn restore_from(disks: &Path, id: &str, snapshot: &Path, reserve: u64) -> Result<(), AgentError> {
    let image = disks.join(format!("{id}.img"));
    release(id, &image, &disks.join(id))?;
    let len = std::fs::metadata(snapshot)
        .map_err(agent_io(snapshot))?
        .len();
    // The disk's own file goes once the copy is in place.
    room(disks, id, len.saturating_sub(allocated(&image)), reserve)?;
    let new = disks.join(format!("{id}.img.restore"));
    copy(id, snapshot, &new)?;
    let full = run(id, "fallocate", &["-l", &len.to_string(), path_str(&new)?]);
    if let Err(e) = full {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    std::fs::rename(&new, &image).map_err(agent_io(&image))?;
    std::fs::File::open(disks)
        .and_then(|d| d.sync_all())
        .map_err(agent_io(disks))
}

/// Takes snapshot `key` of disk `id`: its file copied while its
/// filesystem is frozen (when mounted). What the copy takes on the node.
pub fn snapshot(
    disks: &Path,
    id: &str,
    key: &DiskSnapshotKey,
    reserve: u64,
) -> Result<u64, AgentError> {
    if !valid(id) {
        return Err(failed(id, "not a disk id"));
    }
    let _busy = busy();
    let image = disks.join(format!("{id}.img"));
    if !image.is_file() {
        return Err(failed(id, "the disk is not on this node"));
    }
    let mount = disks.join(id);
    let mounted = bundle::is_mountpoint(&mount);
    // At most what the filesystem holds (less where blocks are shared).
    let holds = match (mounted, nix::sys::statvfs::statvfs(&mount)) {
        (true, Ok(st)) => (st.blocks() - st.blocks_free()) * st.fragment_size(),
        _ => allocated(&image),
    };
    room(disks, id, holds, reserve)?;
    let dir = snapshot_dir(disks, id);
    std::fs::create_dir_all(&dir).map_err(agent_io(&dir))?;
    let new = dir.join(format!("{key}.img.new"));
    if mounted {
        run(id, "fsfreeze", &["-f", path_str(&mount)?])?;
    }
    let copied = copy(id, &image, &new);
    if mounted {
        if let Err(e) = run(id, "fsfreeze", &["-u", path_str(&mount)?]) {
            tracing::error!(disk.id = %id, error = %e, "a frozen disk could not be thawed; its instance's writes wait");
        }
    }
    copied?;
    let kept = dir.join(format!("{key}.img"));
    std::fs::rename(&new, &kept).map_err(agent_io(&kept))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(agent_io(&dir))?;
    Ok(allocated(&kept))
}

/// Deletes the snapshots of disk `id` on this node that are not in
/// `keep`, but for ones made in the last minute (taken, not recorded
/// yet), and copies a node died while making.
pub fn prune_snapshots(disks: &Path, id: &str, keep: &[DiskSnapshotKey]) {
    if !valid(id) {
        return;
    }
    let _busy = busy();
    let dir = snapshot_dir(disks, id);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let recent = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let kept = name
            .strip_suffix(".img")
            .is_some_and(|k| keep.iter().any(|key| key.as_str() == k));
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > recent);
        if !kept && !young {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(disk.id = %id, file = %name, "removed a snapshot the disk keeps no more")
                }
                Err(err) => {
                    tracing::warn!(disk.id = %id, file = %name, error = %err, "a snapshot could not be removed")
                }
            }
        }
    }
}

/// Thaws every mounted disk of this node: a node that died while a
/// snapshot was copied left its filesystem frozen.
pub fn thaw_all(disks: &Path) {
    let _busy = busy();
    for (id, _) in list(disks) {
        let mount = disks.join(&id);
        if bundle::is_mountpoint(&mount) {
            if let Ok(at) = path_str(&mount) {
                // Not frozen: fsfreeze says so and nothing changes.
                let _ = output(&id, "fsfreeze", &["-u", at]);
            }
        }
    }
}

/// Refuses to take `more` bytes of the node's filesystem when that would
/// leave less than the node keeps free (`reserve`).
fn room(disks: &Path, id: &str, more: u64, reserve: u64) -> Result<(), AgentError> {
    let free = crate::disk::free(disks).map_err(agent_io(disks))?;
    if free.saturating_sub(more) < reserve {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        return Err(failed(
            id,
            format!(
                "this node has {:.1} GB free and keeps {:.1} GB free: {:.1} GB more do not fit",
                gib(free),
                gib(reserve),
                gib(more)
            ),
        ));
    }
    Ok(())
}

/// Whether a loop device still holds `image`.
fn attached(id: &str, image: &Path) -> Result<bool, AgentError> {
    let out = output(id, "losetup", &["-n", "-O", "NAME", "-j", path_str(image)?])?;
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

/// A new filesystem of the disk's size, its root `owner`'s, in a file
/// allocated in full (a node without the room says so now, not when the
/// instance writes).
fn make(disks: &Path, disk: &Disk, owner: u32) -> Result<(), AgentError> {
    let id = disk.id.as_str();
    let new = disks.join(format!("{id}.img.new"));
    let _ = std::fs::remove_file(&new);
    let bytes = bytes(disk).to_string();
    let path = path_str(&new)?;
    let made = run(id, "fallocate", &["-l", &bytes, path]).and_then(|()| {
        let options = format!("root_owner={owner}:{owner},nodiscard,lazy_itable_init=1");
        run(
            id,
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", "-E", &options, path],
        )
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    }
    let image = disks.join(format!("{id}.img"));
    std::fs::rename(&new, &image).map_err(agent_io(&image))?;
    std::fs::File::open(disks)
        .and_then(|d| d.sync_all())
        .map_err(agent_io(disks))
}

/// The disks this node has (made, or begun), by id, each with the
/// service it is for.
pub fn list(disks: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(disks) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let id = name.strip_suffix(".service")?.to_owned();
            let service = std::fs::read_to_string(disks.join(&name)).ok()?;
            valid(&id).then_some((id, service.trim().to_owned()))
        })
        .collect()
}

/// What each mounted disk of this node holds: service → (bytes in use,
/// the filesystem's size).
pub fn usage(disks: &Path) -> std::collections::HashMap<String, (u64, u64)> {
    list(disks)
        .into_iter()
        .filter_map(|(id, service)| Some((service, usage_of(disks, &id)?)))
        .collect()
}

/// What disk `id` holds, when it is mounted: (bytes in use, the
/// filesystem's size).
pub fn usage_of(disks: &Path, id: &str) -> Option<(u64, u64)> {
    let mount = disks.join(id);
    if !valid(id) || !bundle::is_mountpoint(&mount) {
        return None;
    }
    let st = nix::sys::statvfs::statvfs(&mount).ok()?;
    let block = st.fragment_size();
    let size = st.blocks() * block;
    let free = st.blocks_free() * block;
    Some((size.saturating_sub(free), size))
}

/// Removes a disk and what was written on it, for good: unmounted (at
/// once from the host's view; the kernel frees it once nothing uses it),
/// then its file. Removing one this node has not got does nothing.
pub fn remove(disks: &Path, id: &str) -> Result<(), AgentError> {
    if !valid(id) {
        return Err(failed(id, "not a disk id"));
    }
    let _busy = busy();
    let mount = disks.join(id);
    if bundle::is_mountpoint(&mount) {
        run(id, "umount", &["-l", path_str(&mount)?])?;
    }
    let gone = |path: PathBuf, r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(agent_io(path)(e)),
        _ => Ok(()),
    };
    for file in [
        format!("{id}.img"),
        format!("{id}.img.new"),
        format!("{id}.img.restore"),
        format!("{id}.grow"),
        format!("{id}.restored"),
    ] {
        let path = disks.join(file);
        gone(path.clone(), std::fs::remove_file(&path))?;
    }
    let snapshots = snapshot_dir(disks, id);
    gone(snapshots.clone(), std::fs::remove_dir_all(&snapshots))?;
    gone(mount.clone(), std::fs::remove_dir(&mount))?;
    // Whose it was goes last: a node dying midway finds it again.
    let owned_by = disks.join(format!("{id}.service"));
    gone(owned_by.clone(), std::fs::remove_file(&owned_by))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_disk_ids_name_files_and_only_owned_disks_are_listed() {
        assert!(valid("dsk-aaaaaaaaaaaaaaaaaaaa"));
        for bad in ["dsk-", "dsk-../x", "dsk-a/b", "srv-aaaa", "dsk-a.img", ""] {
            assert!(!valid(bad), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("dsk-one.service"), "srv-one\n").unwrap();
        std::fs::write(d.path().join("dsk-one.img"), "").unwrap();
        // An image without its owner file, a marker and a bad id are
        // not listed.
        std::fs::write(d.path().join("dsk-two.img"), "").unwrap();
        std::fs::write(d.path().join("dsk-one.grow"), "").unwrap();
        std::fs::write(d.path().join("dsk-..x.service"), "srv-x").unwrap();
        assert_eq!(
            list(d.path()),
            vec![("dsk-one".to_owned(), "srv-one".to_owned())]
        );
        // Removing one the node has not got does nothing; a bad id is
        // refused before any path is made of it.
        remove(d.path(), "dsk-none").unwrap();
        assert!(remove(d.path(), "dsk-../../etc").is_err());
        remove(d.path(), "dsk-one").unwrap();
        assert!(list(d.path()).is_empty());
        assert!(!d.path().join("dsk-one.img").exists());
        assert!(!d.path().join("dsk-one.grow").exists());
    }

    #[test]
    fn snapshots_the_disk_lists_no_more_go_unless_just_made_and_go_with_the_disk() {
        let d = tempfile::tempdir().unwrap();
        let id = "dsk-one";
        std::fs::write(d.path().join(format!("{id}.service")), "srv-one").unwrap();
        let dir = snapshot_dir(d.path(), id);
        std::fs::create_dir_all(&dir).unwrap();
        let keys: Vec<DiskSnapshotKey> = (0..3).map(|_| DiskSnapshotKey::generate()).collect();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        let file = |name: String, aged: bool| {
            let path = dir.join(name);
            let f = std::fs::File::create(&path).unwrap();
            if aged {
                f.set_modified(old).unwrap();
            }
            path
        };
        let kept = file(format!("{}.img", keys[0]), true);
        let dropped = file(format!("{}.img", keys[1]), true);
        let half_made = file(format!("{}.img.new", keys[2]), true);
        let just_taken = file(format!("{}.img", keys[2]), false);
        prune_snapshots(d.path(), id, &keys[..1]);
        assert!(kept.exists() && just_taken.exists());
        assert!(!dropped.exists() && !half_made.exists());
        // A bad id is no path: an old file where `snapshots/dsk-../..`
        // would lead stays.
        std::fs::create_dir_all(d.path().join("snapshots/dsk-..")).unwrap();
        let outside = d.path().join("snapshots/old.img");
        std::fs::File::create(&outside)
            .unwrap()
            .set_modified(old)
            .unwrap();
        prune_snapshots(d.path(), "dsk-../..", &[]);
        assert!(outside.exists());

        // The restore marker is written whole and read back.
        assert_eq!(last_restore(d.path(), id), None);
        write_atomic(&d.path().join(format!("{id}.restored")), "3").unwrap();
        assert_eq!(last_restore(d.path(), id), Some(3));
        remove(d.path(), id).unwrap();
        assert!(!dir.exists() && last_restore(d.path(), id).is_none());
    }
}

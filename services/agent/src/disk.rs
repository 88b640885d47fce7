//! Keeps what instances write from filling the node's disk. An instance's
//! writes land in its overlay's upper dir (or its copy of the image) on
//! the node's filesystem, with no bound of their own; when the free space
//! there falls below the node's reserve, the instance (or one-off run:
//! pre-deploy command, cron run) that has written the most is killed at
//! once (as a Kubernetes kubelet's hard eviction does) and what it wrote is
//! removed; an instance starts again from the image's files after the
//! crash backoff, a run fails. One at a time: the next is
//! chosen only once the last one's files are gone and the disk is still
//! low. An instance that wrote less than a quarter of the reserve is never
//! chosen (the disk is then low for other reasons, and killing it would
//! free little): the node says so in its log instead, and walks the
//! instances' files again only after a minute or once the free space
//! fell by what would be worth a kill.
//!
//! A node may also limit what each instance writes, whatever its free
//! space (as a Kubernetes `ephemeral-storage` limit does): every few
//! seconds each instance's writes are measured, and one over the limit is
//! killed the same way. Between two measures an instance may write past
//! the limit; the node's reserve still bounds what that can take.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_schemas::ids::InstanceId;

use std::sync::atomic::Ordering;

use crate::agent::Inner;
use crate::bundle::InstanceDir;
use crate::supervise::Asks;

/// Bytes free for unprivileged writers on the filesystem of `path`
/// (what an instance's writes can still use).
pub fn free(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    // Both are 32-bit on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The least an instance must have written to be killed for the disk.
pub fn worth_evicting(reserve: u64) -> u64 {
    (reserve / 4).max(1 << 20)
}

/// Where an instance's writes are: its overlay's upper dir, or the whole
/// copy when the node copies images (`None`: nothing written yet).
fn writes(dir: &InstanceDir) -> Option<PathBuf> {
    let upper = dir.root.join("upper");
    if dir.root.join("copied").exists() {
        return Some(dir.rootfs());
    }
    upper.is_dir().then_some(upper)
}

/// Bytes of disk an instance's writes take (blocks allocated, each file
/// counted once however many links it has, and as at least
/// [`MIN_ENTRY`]; symbolic links are not followed, other filesystems
/// mounted inside are not entered). Blocking: a walk over every file the
/// instance made.
pub fn written(dir: &InstanceDir) -> u64 {
    writes(dir).map_or(0, |p| usage(&p))
}

/// What each file, directory or link counts as at least: an empty one
/// takes no block but an inode and a directory entry, and a walk's time.
/// So counted, an instance cannot make more files than its limit / 4 KiB
/// (millions of empty ones would otherwise count as nothing).
pub const MIN_ENTRY: u64 = 4096;

/// Blocks allocated under `root`, walked without recursion (a hostile tree
/// may be deep), on `root`'s filesystem only; each entry counts as at
/// least [`MIN_ENTRY`].
pub fn usage(root: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total = total.saturating_add(m.blocks().saturating_mul(512).max(MIN_ENTRY));
            if m.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    total
}

/// How long a walk that found nobody worth killing holds off the next
/// while the disk stays low for other reasons.
pub const IDLE_WALK: Duration = Duration::from_secs(60);

/// A walk that found nobody worth killing, at `at` with `free` bytes free.
#[derive(Debug, Clone, Copy)]
pub struct Fruitless {
    pub at: Instant,
    pub free: u64,
}

/// Whether to walk the instances' writes again now, with `free` bytes
/// free, after the fruitless walk `last` (if any): after [`IDLE_WALK`], or
/// sooner once the free space fell by what would be worth a kill (someone
/// is writing). A walk reads every file instances made; a disk low for
/// other reasons must not cost one a second.
pub fn walk_again(last: Option<Fruitless>, free: u64, reserve: u64, now: Instant) -> bool {
    last.is_none_or(|l| {
        now.duration_since(l.at) >= IDLE_WALK
            || l.free.saturating_sub(free) >= worth_evicting(reserve)
    })
}

/// The instance to kill for the disk among `(what, bytes written)`: the
/// one that wrote the most, if that is worth it for `reserve`.
pub fn choose<T>(written: impl IntoIterator<Item = (T, u64)>, reserve: u64) -> Option<(T, u64)> {
    written
        .into_iter()
        .max_by_key(|(_, w)| *w)
        .filter(|(_, w)| *w >= worth_evicting(reserve))
}

/// Every supervised instance or run with what it has written (a walk
/// over their files, off the async threads).
async fn measure(inner: &Inner) -> Vec<((InstanceId, Arc<Asks>), u64)> {
    let candidates = inner.asks();
    let dirs: Vec<InstanceDir> = candidates.iter().map(|(i, _)| inner.dir(i)).collect();
    let sizes = tokio::task::spawn_blocking(move || dirs.iter().map(written).collect::<Vec<u64>>())
        .await
        .unwrap_or_default();
    candidates.into_iter().zip(sizes).collect()
}

/// Those among `(what, bytes written)` that wrote more than `limit`.
pub fn over_limit<T>(written: impl IntoIterator<Item = (T, u64)>, limit: u64) -> Vec<(T, u64)> {
    written.into_iter().filter(|(_, w)| *w > limit).collect()
}

/// Kills every instance or one-off run that wrote more than the node's
/// per-instance limit, measured every `disk_limit_check` (the loop the
/// agent runs while it lives, when a limit is set).
pub(crate) async fn keep_within(inner: &Inner) {
    let limit = inner.cfg.instance_disk_limit;
    let mut tick = tokio::time::interval(inner.cfg.disk_limit_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.detach.cancelled() => return,
            _ = tick.tick() => {}
        }
        for ((instance, asks), written) in over_limit(measure(inner).await, limit) {
            // Asked already (for this or for the node's disk).
            if asks.written.load(Ordering::Relaxed) != 0 {
                continue;
            }
            tracing::warn!(
                %instance,
                written_mib = written >> 20,
                limit_mib = limit >> 20,
                "killing an instance that wrote more than an instance may to its filesystem"
            );
            asks.limit.store(limit, Ordering::Relaxed);
            asks.written.store(written, Ordering::Relaxed);
            asks.evict.notify_one();
        }
    }
}

/// Keeps the configured reserve free on the instances' filesystem by
/// killing, one at a time, the instance or one-off run that wrote the most
/// (the loop the agent runs while it lives).
pub(crate) async fn keep_free(inner: &Inner) {
    let reserve = inner.cfg.disk_reserve;
    let dir = inner.cfg.state_dir.join("instances");
    let mut tick = tokio::time::interval(inner.cfg.disk_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fruitless: Option<Fruitless> = None;
    loop {
        tokio::select! {
            _ = inner.detach.cancelled() => return,
            _ = tick.tick() => {}
        }
        let free = match self::free(&dir) {
            Ok(f) if f >= reserve => continue,
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "free disk space unknown");
                continue;
            }
        };
        if !walk_again(fruitless, free, reserve, Instant::now()) {
            continue;
        }
        // The last one asked is not done: its files are not gone yet.
        if inner.disk_kill_pending() {
            continue;
        }
        match choose(measure(inner).await, reserve) {
            Some(((instance, asks), written)) => {
                tracing::warn!(
                    %instance,
                    written_mib = written >> 20,
                    free_mib = free >> 20,
                    reserve_mib = reserve >> 20,
                    "the node's disk is low: killing the instance that wrote the most to its filesystem"
                );
                asks.written.store(written, Ordering::Relaxed);
                asks.evict.notify_one();
                fruitless = None;
            }
            None => {
                fruitless = Some(Fruitless {
                    at: Instant::now(),
                    free,
                });
                tracing::warn!(
                    free_mib = free >> 20,
                    reserve_mib = reserve >> 20,
                    "the node's disk is low, and no instance wrote enough to its filesystem to be killed for it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_writer_over_the_limit_is_found() {
        let limit = 10 << 20;
        assert_eq!(
            over_limit([("a", limit), ("b", limit + 1), ("c", 3 * limit)], limit),
            vec![("b", limit + 1), ("c", 3 * limit)]
        );
        assert!(over_limit(Vec::<(&str, u64)>::new(), limit).is_empty());
    }

    #[test]
    fn the_largest_writer_is_chosen_when_it_wrote_enough() {
        let reserve = 1 << 30;
        let quarter = reserve / 4;
        assert_eq!(
            choose([("a", 5), ("b", quarter + 1), ("c", quarter)], reserve),
            Some(("b", quarter + 1))
        );
        assert_eq!(choose([("a", quarter - 1)], reserve), None);
        assert_eq!(choose(Vec::<(&str, u64)>::new(), reserve), None);
        // A tiny reserve still needs a MiB written.
        assert_eq!(choose([("a", 1000)], 64), None);
        assert_eq!(choose([("a", 1 << 20)], 64), Some(("a", 1 << 20)));
    }

    #[test]
    fn a_fruitless_walk_holds_off_the_next_unless_the_disk_keeps_filling() {
        let reserve = 1 << 30;
        let t0 = Instant::now();
        let last = Some(Fruitless {
            at: t0,
            free: 900 << 20,
        });
        assert!(walk_again(None, 900 << 20, reserve, t0));
        assert!(!walk_again(
            last,
            900 << 20,
            reserve,
            t0 + Duration::from_secs(5)
        ));
        // Someone wrote a quarter of the reserve since: look now.
        assert!(walk_again(
            last,
            (900 << 20) - (256 << 20),
            reserve,
            t0 + Duration::from_secs(5)
        ));
        assert!(!walk_again(
            last,
            (900 << 20) - (255 << 20),
            reserve,
            t0 + Duration::from_secs(5)
        ));
        assert!(walk_again(last, 900 << 20, reserve, t0 + IDLE_WALK));
    }

    #[test]
    fn usage_counts_blocks_once_per_file_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("upper");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        let empty = usage(&root);
        std::fs::write(root.join("a/b/c/big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(root.join("a/b/c/big"), root.join("a/again")).unwrap();
        // A link to a large tree outside is not walked.
        std::os::unix::fs::symlink("/usr", root.join("a/usr")).unwrap();
        let used = usage(&root) - empty;
        assert!(
            ((1 << 20)..(1 << 20) + 64 * 1024).contains(&used),
            "one MiB counted once: {used}"
        );
        assert_eq!(usage(&dir.path().join("missing")), 0);
    }

    #[test]
    fn empty_files_count_as_a_block_each() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("upper");
        std::fs::create_dir_all(&root).unwrap();
        for i in 0..1000 {
            std::fs::write(root.join(format!("f{i}")), b"").unwrap();
        }
        assert!(usage(&root) >= 1000 * MIN_ENTRY, "{}", usage(&root));
    }

    #[test]
    fn an_instance_without_writes_has_written_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let idir = InstanceDir {
            root: dir.path().join("i"),
        };
        assert_eq!(written(&idir), 0);
        std::fs::create_dir_all(idir.root.join("upper")).unwrap();
        std::fs::write(idir.root.join("upper/f"), vec![1u8; 64 * 1024]).unwrap();
        assert!(written(&idir) >= 64 * 1024);
    }
}

//! A small disk for tests of what happens when it fills: a tmpfs of a
//! given size mounted at a path (as root), unmounted on drop.

use std::path::{Path, PathBuf};

/// A tmpfs mounted at `path`; unmounted (lazily) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB (mode 0700) at `path`, made if missing.
    pub fn mount(path: &Path, mib: u64) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={mib}m,mode=0700").as_str()),
        )
        .map_err(std::io::Error::from)?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A shell command (busybox) that writes 1 MiB files until the disk is
/// full, saying `writing` first and `full` once a write failed, then
/// waits.
pub const WRITER: &str = "sh -c 'echo writing; i=0; while dd if=/dev/zero of=/fill-$i bs=1M count=1 2>/dev/null; do i=$((i+1)); done; echo full; sleep 600'";

//! Instance addresses from the node's subnet, one file per address held,
//! named by the address and holding the instance's id: the layout the CNI
//! `host-local` plugin uses, so addresses it handed out (to instances an
//! earlier berth attached through it) and addresses berth hands out itself
//! never collide. A file is created exclusively, so two takers can never
//! both get one address, and survives restarts: an instance adopted after a
//! restart keeps its address until it is detached.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The leases of one subnet.
#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
    /// First and last address handed out (the gateway and broadcast
    /// excluded).
    first: u32,
    last: u32,
    /// The address handed out last: the next search starts after it, so a
    /// released address is not reused at once (a peer's ARP cache or a
    /// connection may still name it).
    cursor: Mutex<u32>,
}

impl Leases {
    /// The leases under `dir` for `network/prefix`, whose first address is
    /// the gateway's.
    pub fn open(dir: PathBuf, network: Ipv4Addr, prefix: u8) -> io::Result<Leases> {
        std::fs::create_dir_all(&dir)?;
        let base = u32::from(network);
        let size = 1u32.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let (first, last) = (base + 2, base + size.saturating_sub(2));
        // Resume after the highest address held, as if handed out last.
        let held = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|a| (first..=last).contains(a))
            .max()
            .unwrap_or(last);
        Ok(Leases {
            dir,
            first,
            last,
            cursor: Mutex::new(held),
        })
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// A free address for `id`, now held by it; `None` when the subnet is
    /// full.
    pub fn take(&self, id: &str) -> io::Result<Option<Ipv4Addr>> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let span = self.last.saturating_sub(self.first) + 1;
        let mut at = *cursor;
        for _ in 0..span {
            at = if at >= self.last { self.first } else { at + 1 };
            let ip = Ipv4Addr::from(at);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.path(ip))
            {
                Ok(mut f) => {
                    // host-local's layout: the id, a line break, the
                    // interface. A file that does not name its holder
                    // (a full disk) would hold the address for ever.
                    if let Err(e) = f.write_all(format!("{id}\r\neth0").as_bytes()) {
                        drop(f);
                        remove(&self.path(ip))?;
                        return Err(e);
                    }
                    *cursor = at;
                    return Ok(Some(ip));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether `ip` is held by `id`.
    pub fn holds(&self, id: &str, ip: Ipv4Addr) -> bool {
        holder(&self.path(ip)).is_some_and(|h| h == id)
    }

    /// Gives `ip` back if `id` holds it.
    pub fn release(&self, id: &str, ip: Ipv4Addr) -> io::Result<()> {
        let path = self.path(ip);
        if holder(&path).is_some_and(|h| h == id) {
            remove(&path)?;
        }
        Ok(())
    }

    /// Gives back every address held by an id not in `holders` (a crash
    /// between taking an address and recording it; one pass over the
    /// leases, at start).
    pub fn keep_only(&self, holders: &HashSet<String>) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let path = entry.path();
            let is_lease = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok());
            if is_lease && !holder(&path).is_some_and(|h| holders.contains(&h)) {
                remove(&path)?;
            }
        }
        Ok(())
    }
}

/// The id a lease file names (its first line).
fn holder(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_are_handed_out_once_not_reused_at_once_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let net = Ipv4Addr::new(10, 9, 0, 0);
        // /29: .0 network, .1 gateway, .2–.6 instances, .7 broadcast.
        let leases = Leases::open(dir.path().to_path_buf(), net, 29).unwrap();
        let a = leases.take("a").unwrap().unwrap();
        let b = leases.take("b").unwrap().unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 3))
        );
        assert!(leases.holds("a", a) && !leases.holds("b", a));
        // host-local's layout.
        let text = std::fs::read_to_string(dir.path().join("10.9.0.2")).unwrap();
        assert_eq!(text, "a\r\neth0");
        // Given back, it is not the next one handed out.
        leases.release("a", a).unwrap();
        assert!(!leases.holds("a", a));
        assert_eq!(leases.take("c").unwrap(), Some(Ipv4Addr::new(10, 9, 0, 4)));
        // Someone else's lease is not released by another id.
        leases.release("x", b).unwrap();
        assert!(leases.holds("b", b));
        // Full: .5, .6, then .2 again (free), then none.
        let rest: Vec<_> = (0..3).map(|_| leases.take("d").unwrap()).collect();
        assert_eq!(rest, [5, 6, 2].map(|h| Some(Ipv4Addr::new(10, 9, 0, h))));
        assert_eq!(leases.take("e").unwrap(), None, "the subnet is full");
        // Every address of an id not kept at once; a restart resumes
        // after the highest held.
        let kept: HashSet<String> = ["b", "c"].map(str::to_owned).into();
        leases.keep_only(&kept).unwrap();
        assert!(leases.holds("b", b), "a kept holder keeps its address");
        assert!(!leases.holds("d", Ipv4Addr::new(10, 9, 0, 5)));
        let again = Leases::open(dir.path().to_path_buf(), net, 29).unwrap();
        let next: Vec<_> = (0..3).map(|_| again.take("f").unwrap()).collect();
        assert_eq!(next, [5, 6, 2].map(|h| Some(Ipv4Addr::new(10, 9, 0, h))));
    }

    /// A tmpfs of one page at a temp dir, unmounted on drop.
    struct Tiny(tempfile::TempDir);

    impl Drop for Tiny {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn an_address_whose_lease_cannot_be_written_is_not_held() {
        // As root, as the node runs: a full disk under the leases.
        let tiny = Tiny(tempfile::tempdir().unwrap());
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
            .arg(tiny.0.path())
            .status()
            .unwrap();
        assert!(ok.success());
        let dir = tiny.0.path().join("ipam");
        let leases = Leases::open(dir.clone(), Ipv4Addr::new(10, 9, 0, 0), 29).unwrap();
        let mut fill = std::fs::File::create(tiny.0.path().join("fill")).unwrap();
        while fill.write_all(&[0; 512]).is_ok() {}
        drop(fill);
        assert!(leases.take("a").is_err(), "the disk is full");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "a lease naming no one was left: {left:?}");
        // With room again, the address is handed out.
        std::fs::remove_file(tiny.0.path().join("fill")).unwrap();
        assert_eq!(leases.take("a").unwrap(), Some(Ipv4Addr::new(10, 9, 0, 2)));
    }
}

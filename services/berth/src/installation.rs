//! Finding the installation from anywhere: `berth up` records where it
//! keeps its data and where its API listens in a small file at a
//! well-known place (the *record*), so a client command run from another
//! directory finds `credentials.json` without `BERTH_DATA_DIR`.
//!
//! The record holds no secret (a path, a URL, a pid), so it is readable
//! by everyone who can reach its directory: `$XDG_RUNTIME_DIR/berth/` is
//! the user's own (mode 0700 by the login session), `/run/berth/` (where
//! root's `berth up` writes when no `XDG_RUNTIME_DIR` is set, as under
//! `sudo`) is open to every user of the machine, who then finds the
//! credentials file and is told plainly that it is not theirs to read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name in its directory.
const RECORD_FILE: &str = "api.json";

/// What `berth up` records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The data dir (absolute), holding `credentials.json`.
    pub data_dir: PathBuf,
    /// Where the API listens, as clients reach it.
    pub api_url: String,
    /// The `berth up` process that wrote it.
    pub pid: u32,
}

/// `$XDG_RUNTIME_DIR/berth`, when the variable is set.
fn user_runtime_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("berth"))
}

/// The machine-wide place root's `berth up` records itself.
const SYSTEM_DIR: &str = "/run/berth";

/// Where this process's `berth up` records itself: under
/// `$XDG_RUNTIME_DIR`, else in `/run/berth` when running as root, else
/// nowhere (a user without a runtime dir has no private place for it).
pub fn record_path() -> Option<PathBuf> {
    user_runtime_dir()
        .or_else(|| {
            nix::unistd::geteuid()
                .is_root()
                .then(|| PathBuf::from(SYSTEM_DIR))
        })
        .map(|d| d.join(RECORD_FILE))
}

/// Where a client looks for a record, in order: the user's runtime dir,
/// then the machine-wide one.
pub fn record_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = user_runtime_dir().into_iter().collect();
    paths.push(PathBuf::from(SYSTEM_DIR));
    paths.into_iter().map(|d| d.join(RECORD_FILE)).collect()
}

/// A record found, or why one that exists could not be used.
#[derive(Debug)]
pub enum Lookup {
    Found(PathBuf, Record),
    /// Records found but none usable: each with why.
    Unusable(Vec<(PathBuf, String)>),
    None,
}

/// Whether process `pid` exists (another user's too).
fn running(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The first record among [`record_paths`] whose `berth up` still runs
/// (a killed one leaves its record behind: that one is passed over).
pub fn find_record() -> Lookup {
    let mut unusable = Vec::new();
    for path in record_paths() {
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if running(r.pid) => return Lookup::Found(path, r),
                Ok(r) => {
                    let why = format!("left by `berth up` pid {}, which is not running", r.pid);
                    unusable.push((path, why));
                }
                Err(e) => unusable.push((path, format!("not a berth record ({e})"))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => unusable.push((path, e.to_string())),
        }
    }
    if unusable.is_empty() {
        Lookup::None
    } else {
        Lookup::Unusable(unusable)
    }
}

/// The record `berth up` keeps while it runs; removed when dropped (if it
/// is still this process's: a later `berth up` may have replaced it).
#[derive(Debug)]
pub struct Recorded {
    path: PathBuf,
}

impl Recorded {
    /// Writes the record (mode 0644, replaced whole, never half written;
    /// its directory, when made, 0755).
    pub fn write(path: PathBuf, data_dir: &Path, api_url: &str) -> std::io::Result<Self> {
        let record = Record {
            data_dir: data_dir.to_path_buf(),
            api_url: api_url.to_owned(),
            pid: std::process::id(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        berth_runtime::write_whole(&path, &bytes, 0o644, 0o755)?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Who owns `path` and with what mode, for a message about a file this
/// user cannot read (`None` when even that cannot be seen).
pub fn owner_and_mode(path: &Path) -> Option<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let uid = meta.uid();
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"));
    Some((name, meta.mode() & 0o7777))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_record_is_written_readable_by_all_and_removed_by_its_writer_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth").join(RECORD_FILE);
        let recorded =
            Recorded::write(path.clone(), Path::new("/srv/berth"), "http://h:1").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let back: Record = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.data_dir, Path::new("/srv/berth"));
        assert_eq!(back.api_url, "http://h:1");
        drop(recorded);
        assert!(!path.exists(), "removed on the way out");

        // A record another process wrote since is left alone.
        let recorded = Recorded::write(path.clone(), Path::new("/a"), "http://h:1").unwrap();
        let other = Record {
            data_dir: "/b".into(),
            api_url: "http://h:2".into(),
            pid: std::process::id() + 1,
        };
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        drop(recorded);
        assert!(path.exists(), "another berth up's record is kept");
    }

    #[test]
    fn only_a_running_berth_up_counts() {
        assert!(running(std::process::id()));
        // Past the kernel's largest pid.
        assert!(!running(1 << 23));
        assert!(running(1), "another user's process runs too");
    }
}

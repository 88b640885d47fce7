//! Path rules for writing hostile layer entries inside a root directory.
//!
//! Every entry name is normalised to components relative to the root
//! (`..`, absolute names, NUL and over-long names are refused), and every
//! parent component is checked with `lstat` (no-follow) while walking from
//! the root: a symlink or non-directory anywhere in the parent chain is
//! refused, so no write ever goes through a link. This is sound because the
//! tree being built is private to this process (a fresh directory under the
//! store's `tmp/`), so nothing else can swap a component between the check
//! and the write.
//!
//! Absolute names are refused rather than stripped of their leading `/`
//! (Docker strips): standard layer tools never write them, and a refusal is
//! the clearer answer to input that does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Longest accepted path component (Linux `NAME_MAX`).
pub(crate) const MAX_COMPONENT: usize = 255;

/// Turn a tar name into a path relative to the root. An empty result
/// means the root itself (`./`).
pub(crate) fn normalize(raw: &[u8], max_len: usize) -> Result<PathBuf, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    if raw.len() > max_len {
        return Err("path longer than the limit");
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` component (path traversal)"),
            c if c.len() > MAX_COMPONENT => return Err("path component longer than 255 bytes"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Why a parent chain cannot be used.
#[derive(Debug)]
pub(crate) enum ParentError {
    /// This component (relative to the root) is a symlink or not a dir.
    NotDir(PathBuf),
    /// I/O on this absolute path failed.
    Io(PathBuf, std::io::Error),
}

/// Walk the parent components of `rel` under `root` without following
/// anything. Missing directories are created (0755, owned by `owner` when
/// given) when `create`; else `Ok(None)` says the parent does not exist.
/// Returns `root/rel`.
pub(crate) fn parent_chain(
    root: &Path,
    rel: &Path,
    create: bool,
    owner: Option<u32>,
) -> Result<Option<PathBuf>, ParentError> {
    let mut cur = root.to_path_buf();
    let mut cur_rel = PathBuf::new();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        let Component::Normal(name) = c else {
            // normalize() only produces Normal components.
            return Err(ParentError::NotDir(cur_rel));
        };
        cur.push(name);
        cur_rel.push(name);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ParentError::NotDir(cur_rel)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                if let Err(e) = mkdir(&cur, 0o755).and_then(|()| own(&cur, owner)) {
                    return Err(ParentError::Io(cur, e));
                }
            }
            Err(e) => return Err(ParentError::Io(cur, e)),
        }
    }
    Ok(Some(root.join(rel)))
}

/// Give `path` (not followed) to `owner` as user and group; `None`
/// leaves it as made.
pub(crate) fn own(path: &Path, owner: Option<u32>) -> std::io::Result<()> {
    match owner {
        Some(id) => std::os::unix::fs::lchown(path, Some(id), Some(id)),
        None => Ok(()),
    }
}

/// `mkdir` with an explicit mode (umask applies; fixed up by the caller
/// where the layer says otherwise).
pub(crate) fn mkdir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(mode).create(path)
}

/// Remove whatever is at `path` without following it: a directory with
/// its contents (`remove_dir_all` does not follow symlinks inside), else
/// the file or link itself. Missing is fine.
pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(
            normalize(b"./a//b/./c", 4096).unwrap(),
            PathBuf::from("a/b/c")
        );
        assert_eq!(normalize(b"./", 4096).unwrap(), PathBuf::new());
        assert!(normalize(b"a/../../b", 4096).is_err());
        assert!(normalize(b"..", 4096).is_err());
        assert!(normalize(b"/etc/passwd", 4096).is_err());
        assert!(normalize(b"", 4096).is_err());
        assert!(normalize(&[b'a'; 300], 4096).is_err());
        assert!(normalize(b"aaaa/bbbb", 5).is_err());
    }

    #[test]
    fn refuses_symlinked_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
        match parent_chain(&root, Path::new("link/x"), true, None) {
            Err(ParentError::NotDir(p)) => assert_eq!(p, PathBuf::from("link")),
            other => panic!("{other:?}"),
        }
        let p = parent_chain(&root, Path::new("a/b/c"), true, None)
            .unwrap()
            .unwrap();
        assert_eq!(p, root.join("a/b/c"));
        assert!(root.join("a/b").is_dir());
        assert!(parent_chain(&root, Path::new("x/y"), false, None)
            .unwrap()
            .is_none());
    }
}

//! What unpacking a layer should do, as a tree of paths: the unpacker's
//! rules (berth_puller's `unpack::layer` and `walk` docs) restated without
//! a file system. An entry is refused for a name that is empty, absolute or
//! has a `..` component; for a parent that is not a directory (a symlink
//! is never walked through); for an empty symlink target; for a hard link
//! whose target is not an entry already inside the root other than a
//! directory; for a malformed whiteout. Missing parents are created first.
//! An entry replaces whatever is at its path. `.wh.<name>` removes a lower
//! layer's `<name>`, `.wh..wh..opq` every lower-layer entry of its
//! directory; neither touches what the same layer wrote. The first refused
//! entry ends the layer, leaving what came before it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One entry of a layer, as the fuzz strategy writes it.
#[derive(Debug, Clone)]
pub enum Op {
    File(String, u8),
    Dir(String, u32),
    Symlink(String, String),
    HardLink(String, String),
}

impl Op {
    fn name(&self) -> &str {
        match self {
            Op::File(n, _) | Op::Dir(n, _) | Op::Symlink(n, _) | Op::HardLink(n, _) => n,
        }
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    /// Anything else found on disk (a device, a fifo): never expected.
    Other(String),
}

/// Paths relative to the root (the root itself is not listed).
pub type Tree = BTreeMap<PathBuf, Node>;

/// The unpacker's name rules: `None` for a refused name, the empty path for
/// the root itself.
fn normalize(raw: &str) -> Option<PathBuf> {
    if raw.is_empty() || raw.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// How the parents of a path stand.
enum Parents {
    /// All there, all directories.
    Dirs,
    /// One is missing (and none before it is a non-directory).
    Missing,
    /// One is a symlink or a file.
    NotDir,
}

fn parents(tree: &Tree, rel: &Path) -> Parents {
    let mut cur = PathBuf::new();
    for c in rel.parent().unwrap_or(Path::new("")).components() {
        cur.push(c);
        match tree.get(&cur) {
            Some(Node::Dir) => {}
            Some(_) => return Parents::NotDir,
            None => return Parents::Missing,
        }
    }
    Parents::Dirs
}

fn remove(tree: &mut Tree, rel: &Path) {
    tree.retain(|p, _| !p.starts_with(rel));
}

/// Applies one layer to `tree`; `false` when the unpacker must refuse it
/// (`tree` then holds what the entries before the refused one did).
pub fn apply_layer(tree: &mut Tree, ops: &[Op], canary: &str) -> bool {
    let mut written = BTreeSet::new();
    ops.iter()
        .all(|op| apply_entry(tree, &mut written, op, canary))
}

fn apply_entry(tree: &mut Tree, written: &mut BTreeSet<PathBuf>, op: &Op, canary: &str) -> bool {
    let Some(rel) = normalize(op.name()) else {
        return false;
    };
    let name = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
    if name.starts_with(b".wh.") {
        return whiteout(tree, written, &rel);
    }
    if rel.as_os_str().is_empty() {
        // `./`: the root's own metadata; only a directory can be the root.
        return matches!(op, Op::Dir(..));
    }
    // Missing parents are created before anything else is checked.
    let mut cur = PathBuf::new();
    for c in rel.parent().unwrap_or(Path::new("")).components() {
        cur.push(c);
        match tree.get(&cur) {
            Some(Node::Dir) => {}
            Some(_) => return false,
            None => {
                tree.insert(cur.clone(), Node::Dir);
            }
        }
    }
    match op {
        Op::Dir(..) => {
            if tree.get(&rel) != Some(&Node::Dir) {
                remove(tree, &rel);
                tree.insert(rel.clone(), Node::Dir);
            }
        }
        Op::File(_, b) => {
            remove(tree, &rel);
            tree.insert(rel.clone(), Node::File(vec![*b; 3]));
        }
        Op::Symlink(_, t) => {
            let t = t.replace(super::CANARY, canary);
            if t.is_empty() {
                return false;
            }
            remove(tree, &rel);
            tree.insert(rel.clone(), Node::Symlink(t.into_bytes()));
        }
        Op::HardLink(_, t) => {
            let t = t.replace(super::CANARY, canary);
            let Some(target) = normalize(&t) else {
                return false;
            };
            if target.as_os_str().is_empty() || !matches!(parents(tree, &target), Parents::Dirs) {
                return false;
            }
            let node = match tree.get(&target) {
                None | Some(Node::Dir) => return false,
                Some(n) => n.clone(),
            };
            if target != rel {
                remove(tree, &rel);
                // The target was inside what the link replaced: gone.
                if !tree.contains_key(&target) {
                    return false;
                }
                tree.insert(rel.clone(), node);
            }
        }
    }
    let mut p = rel.as_path();
    loop {
        written.insert(p.to_path_buf());
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    true
}

fn whiteout(tree: &mut Tree, written: &BTreeSet<PathBuf>, rel: &Path) -> bool {
    match parents(tree, rel) {
        Parents::Dirs => {}
        // Nothing below to hide.
        Parents::Missing => return true,
        Parents::NotDir => return false,
    }
    let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    let name = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
    if name == b".wh..wh..opq" {
        prune(tree, written, &dir);
        return true;
    }
    let hidden = &name[4..];
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return false;
    }
    let target = dir.join(OsStr::from_bytes(hidden));
    if !written.contains(&target) {
        remove(tree, &target);
    }
    true
}

/// Removes every entry below `dir` this layer did not write, descending
/// into the directories it did.
fn prune(tree: &mut Tree, written: &BTreeSet<PathBuf>, dir: &Path) {
    let children: Vec<PathBuf> = tree
        .keys()
        .filter(|p| p.parent() == Some(dir))
        .cloned()
        .collect();
    for c in children {
        if !written.contains(&c) {
            remove(tree, &c);
        } else if tree.get(&c) == Some(&Node::Dir) {
            prune(tree, written, &c);
        }
    }
}

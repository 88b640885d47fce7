//! Hostile layers (SPEC §15): each refused with an error naming the
//! problem, and a canary directory beside the target is never touched.
//! Tars are crafted with raw headers (berth_tests::layers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_puller::{unpack_layer, Compression, UnpackError, UnpackLimits, UnpackOptions};
use berth_tests::layers::{tar_bytes, Comp, Entry};
use tar::EntryType;

struct Scene {
    _dir: tempfile::TempDir,
    base: PathBuf,
    target: PathBuf,
    canary: PathBuf,
}

fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let target = base.join("target");
    let canary = base.join("canary");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), b"original").unwrap();
    Scene {
        _dir: dir,
        base,
        target,
        canary,
    }
}

/// Every path under `dir` with its type and content/target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            let v = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("file {:?}", std::fs::read(&p).unwrap())
            };
            out.insert(rel, v);
        }
    }
    out
}

fn opts(limits: UnpackLimits) -> UnpackOptions {
    UnpackOptions {
        limits,
        ownership: true,
        shift: None,
        verify_diff_ids: false,
    }
}

/// Unpack `entries` (gzip) into the scene's target and check nothing
/// outside it changed.
fn apply(s: &Scene, entries: &[Entry], limits: UnpackLimits) -> Result<(), UnpackError> {
    let before = snapshot(&s.canary);
    let blob = Comp::Gzip.compress(&tar_bytes(entries).unwrap()).unwrap();
    let r = unpack_layer(&blob[..], Compression::Gzip, &s.target, 0, &opts(limits)).map(|_| ());
    assert_eq!(snapshot(&s.canary), before, "canary changed");
    let names: Vec<_> = std::fs::read_dir(&s.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "something appeared beside the target: {names:?}"
    );
    r
}

fn refused(s: &Scene, entries: &[Entry], needle: &str) -> UnpackError {
    let e = apply(s, entries, UnpackLimits::default()).expect_err("layer must be refused");
    let msg = e.to_string();
    assert!(msg.contains(needle), "error {msg:?} should name {needle:?}");
    e
}

#[test]
fn traversal_is_refused() {
    let s = scene();
    let e = refused(&s, &[Entry::file("../canary/keep", b"pwned")], "traversal");
    assert!(matches!(e, UnpackError::UnsafePath { .. }));
    refused(
        &s,
        &[Entry::file("a/../../canary/x", b"pwned")],
        "traversal",
    );
    refused(&s, &[Entry::dir("..")], "traversal");
}

#[test]
fn absolute_paths_are_refused() {
    let s = scene();
    let abs = format!("{}/keep", s.canary.display());
    let e = refused(&s, &[Entry::file(&abs, b"pwned")], "absolute path");
    assert!(matches!(e, UnpackError::UnsafePath { .. }));
}

#[test]
fn symlink_escape_is_refused() {
    let s = scene();
    let abs = s.canary.display().to_string();
    let e = refused(
        &s,
        &[
            Entry::symlink("link", &abs),
            Entry::file("link/file", b"pwned"),
        ],
        "symlink",
    );
    assert!(matches!(e, UnpackError::SymlinkParent { .. }), "{e:?}");
    // Relative, and one level deeper.
    let s = scene();
    refused(
        &s,
        &[
            Entry::dir("d"),
            Entry::symlink("d/up", "../../canary"),
            Entry::file("d/up/keep", b"pwned"),
        ],
        "symlink",
    );
    // A directory entry through the link, and a whiteout through it.
    let s = scene();
    refused(
        &s,
        &[Entry::symlink("l", &abs), Entry::dir("l/sub")],
        "symlink",
    );
    let s = scene();
    refused(
        &s,
        &[Entry::symlink("l", &abs), Entry::whiteout("l/keep")],
        "symlink",
    );
}

#[test]
fn hard_link_escape_is_refused() {
    let s = scene();
    let e = refused(&s, &[Entry::hardlink("pw", "/etc/passwd")], "hard link");
    assert!(matches!(e, UnpackError::HardLink { .. }), "{e:?}");
    let s = scene();
    refused(
        &s,
        &[Entry::hardlink("k", "../canary/keep")],
        "outside the rootfs",
    );
    let s = scene();
    refused(
        &s,
        &[
            Entry::symlink("s", &s.canary.display().to_string()),
            Entry::hardlink("k", "s/keep"),
        ],
        "symlink",
    );
    let s = scene();
    refused(&s, &[Entry::hardlink("k", "later")], "not been extracted");
}

#[test]
fn expansion_bomb_is_refused() {
    let s = scene();
    let zeros = vec![0u8; 8 << 20];
    let limits = UnpackLimits {
        max_expanded_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let e = apply(&s, &[Entry::file("bomb", &zeros)], limits).unwrap_err();
    assert!(
        matches!(
            e,
            UnpackError::Limit {
                what: "expanded size",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    // The header alone already says too much: refused before any write.
    assert!(!s.target.join("bomb").exists());
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let s = scene();
    let e = refused(&s, &[Entry::char_device("dev/null")], "character device");
    assert!(matches!(e, UnpackError::Special { .. }));
    let s = scene();
    refused(&s, &[Entry::fifo("pipe")], "fifo");
    let s = scene();
    refused(
        &s,
        &[Entry::raw(EntryType::Block, b"sda", b"", b"")],
        "block device",
    );
}

#[test]
fn too_many_entries_are_refused() {
    let s = scene();
    let entries: Vec<_> = (0..200)
        .map(|i| Entry::file(&format!("f{i}"), b"x"))
        .collect();
    let limits = UnpackLimits {
        max_entries: 100,
        ..UnpackLimits::default()
    };
    let e = apply(&s, &entries, limits).unwrap_err();
    assert!(
        matches!(
            e,
            UnpackError::Limit {
                what: "entry count",
                limit: 100,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn over_long_paths_are_refused() {
    let s = scene();
    let long = vec!["d"; 2100].join("/");
    refused(&s, &[Entry::file(&long, b"x")], "longer than the limit");
    let s = scene();
    refused(
        &s,
        &[Entry::file(&"n".repeat(300), b"x")],
        "longer than 255",
    );
}

#[test]
fn existing_links_are_replaced_not_written_through() {
    let s = scene();
    let keep = s.canary.join("keep").display().to_string();
    apply(
        &s,
        &[
            Entry::symlink("x", &keep),
            Entry::file("x", b"new"),
            Entry::file("a", b"old"),
            Entry::hardlink("b", "a"),
            Entry::file("b", b"new"),
        ],
        UnpackLimits::default(),
    )
    .unwrap();
    let x = std::fs::symlink_metadata(s.target.join("x")).unwrap();
    assert!(x.is_file());
    assert_eq!(std::fs::read(s.target.join("x")).unwrap(), b"new");
    assert_eq!(std::fs::read(s.target.join("a")).unwrap(), b"old");
    assert_eq!(std::fs::read(s.target.join("b")).unwrap(), b"new");
}

#[test]
fn symlinks_are_stored_as_is() {
    let s = scene();
    apply(
        &s,
        &[
            Entry::symlink("abs", &s.canary.join("keep").display().to_string()),
            Entry::symlink("rel", "../../canary/keep"),
            Entry::symlink("dangling", "/nowhere/at/all"),
        ],
        UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_link(s.target.join("rel")).unwrap(),
        PathBuf::from("../../canary/keep")
    );
    assert_eq!(
        std::fs::read_link(s.target.join("dangling")).unwrap(),
        PathBuf::from("/nowhere/at/all")
    );
}

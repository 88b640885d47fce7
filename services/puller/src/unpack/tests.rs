//! Which unpack failures are the image's fault (recorded as a pull failure
//! with a SPEC §9 reason) and which are this node's (retried): an image
//! must never be blamed for a read-only or full disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use berth_schemas::model::PullFailureReason;
use berth_tests::layers::{tar_bytes, Comp, Entry};
use nix::unistd::{geteuid, setfsuid, Uid};

use super::{unpack_layer, Compression, UnpackOptions};
use crate::error::{StoreError, UnpackError};

const NOBODY: u32 = 65534;

fn opts() -> UnpackOptions {
    UnpackOptions {
        verify_diff_ids: false,
        ..UnpackOptions::default()
    }
}

fn unpack(entries: &[Entry], root: &Path) -> Result<(), UnpackError> {
    let blob = Comp::Gzip.compress(&tar_bytes(entries).unwrap()).unwrap();
    unpack_layer(&blob[..], Compression::Gzip, root, 0, &opts()).map(|_| ())
}

/// Runs `f` on a thread whose file-system checks are those of an
/// unprivileged user, as a node started by a normal user would be. As root
/// that is `setfsuid(nobody)`, which also drops CAP_CHOWN and
/// CAP_DAC_OVERRIDE, for this thread only (other tests keep root).
fn unprivileged<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        if geteuid().is_root() {
            setfsuid(Uid::from_raw(NOBODY));
        }
        f()
    })
    .join()
    .unwrap()
}

/// A temp dir an unprivileged thread can walk into.
fn walkable() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_read_only_target_is_a_node_failure() {
    let dir = walkable();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).unwrap();
    let target = root.clone();
    let e = unprivileged(move || unpack(&[Entry::file("a", b"x")], &target)).unwrap_err();
    assert!(matches!(e, UnpackError::Io { .. }), "{e:?}");
    assert_eq!(e.reason(), None, "{e}");
    assert!(!e.is_image_fault());
}

/// The failure a non-root `berth up` met: applying the layer's owners
/// needs CAP_CHOWN.
#[test]
fn owners_without_the_privilege_to_set_them_are_a_node_failure() {
    let dir = walkable();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    if geteuid().is_root() {
        std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let target = root.clone();
    let layer = [
        Entry::dir("bin").owner(0, 0),
        Entry::file("bin/sh", b"#!").owner(0, 0),
    ];
    let e = unprivileged(move || unpack(&layer, &target)).unwrap_err();
    let UnpackError::Io { source, .. } = &e else {
        panic!("expected an I/O error, got {e:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.reason(), None, "{e}");
}

/// A reader that fails after `ok` bytes, as a failing disk under a blob.
struct FailingReader {
    data: Vec<u8>,
    at: usize,
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.ok {
            return Err(std::io::Error::other("input/output error"));
        }
        let end = self.ok.min(self.data.len()).min(self.at + buf.len());
        let n = end - self.at;
        buf[..n].copy_from_slice(&self.data[self.at..end]);
        self.at = end;
        Ok(n)
    }
}

#[test]
fn a_failing_read_of_the_layer_is_a_node_failure() {
    let raw = tar_bytes(&[Entry::file("big", &vec![7u8; 64 << 10])]).unwrap();
    for (compression, blob) in [
        (Compression::None, raw.clone()),
        (Compression::Gzip, Comp::Gzip.compress(&raw).unwrap()),
        (Compression::Zstd, Comp::Zstd.compress(&raw).unwrap()),
    ] {
        // Fails in the first header and in the middle of the file's data.
        for ok in [0, blob.len() / 2] {
            let dir = tempfile::tempdir().unwrap();
            let reader = FailingReader {
                data: blob.clone(),
                at: 0,
                ok,
            };
            let e = unpack_layer(reader, compression, dir.path(), 0, &opts()).unwrap_err();
            assert!(
                matches!(e, UnpackError::Read { .. }),
                "{compression:?} failing at {ok}: {e:?}"
            );
            assert_eq!(e.reason(), None);
        }
    }
}

#[test]
fn refused_layers_are_invalid_images() {
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("path escape", vec![Entry::file("../escape", b"x")]),
        ("absolute path", vec![Entry::file("/etc/passwd", b"x")]),
        ("device node", vec![Entry::char_device("dev/null")]),
        (
            "write through a symlink",
            vec![Entry::symlink("etc", "/etc"), Entry::file("etc/x", b"x")],
        ),
    ];
    for (what, entries) in cases {
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(&entries, dir.path()).unwrap_err();
        assert_eq!(
            e.reason(),
            Some(PullFailureReason::InvalidImage),
            "{what}: {e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let garbage = b"not a gzip stream at all, just bytes".to_vec();
    let e = unpack_layer(&garbage[..], Compression::Gzip, dir.path(), 0, &opts()).unwrap_err();
    assert!(matches!(e, UnpackError::Malformed { .. }), "{e:?}");
    assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage));
}

#[test]
fn only_wrong_bytes_are_digest_mismatches() {
    let diff_id = UnpackError::DiffIdMismatch {
        layer: 1,
        expected: "sha256:aa".into(),
        got: "sha256:bb".into(),
    };
    assert_eq!(diff_id.reason(), Some(PullFailureReason::DigestMismatch));
    let blob = UnpackError::Store(StoreError::DigestMismatch("sha256:aa".into()));
    assert_eq!(blob.reason(), Some(PullFailureReason::DigestMismatch));
    let disk = UnpackError::Store(StoreError::Io {
        path: "/store/blobs".into(),
        source: std::io::Error::from(std::io::ErrorKind::StorageFull),
    });
    assert_eq!(disk.reason(), None);
    let gone = UnpackError::Store(StoreError::Missing("sha256:aa".into()));
    assert_eq!(gone.reason(), None, "a collected blob is pulled again");
}

/// For instances in a user namespace every file is owned by the shifted
/// ids, what the unpacker makes itself (the root, missing parents) by the
/// shifted root; setuid bits survive; an id past the range refuses the
/// image, as a refused layer does.
#[test]
fn a_shifted_unpack_owns_every_file_for_the_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    if !geteuid().is_root() {
        return;
    }
    const HOST: u32 = 1_000_000_000;
    let shifted = UnpackOptions {
        shift: Some(crate::IdShift {
            host: HOST,
            size: 65_536,
        }),
        ..opts()
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    crate::walk::own(&root, shifted.implied_owner()).unwrap();
    let layer = [
        Entry::dir("etc").owner(0, 0),
        Entry::file("etc/passwd", b"root:x:0:0::/:/bin/sh\n").owner(0, 0),
        Entry::file("bin/su", b"#!").owner(0, 0).mode(0o4755),
        Entry::file("home/app/notes", b"x").owner(1000, 1001),
        Entry::symlink("home/app/link", "notes").owner(1000, 1000),
        Entry::file("nobody", b"x").owner(65_534, 65_534),
    ];
    let blob = Comp::Gzip.compress(&tar_bytes(&layer).unwrap()).unwrap();
    unpack_layer(&blob[..], Compression::Gzip, &root, 0, &shifted).unwrap();
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(""), (HOST, HOST), "the root");
    assert_eq!(owner("etc/passwd"), (HOST, HOST));
    assert_eq!(owner("bin"), (HOST, HOST), "a parent no entry names");
    assert_eq!(owner("home"), (HOST, HOST));
    assert_eq!(owner("home/app/notes"), (HOST + 1000, HOST + 1001));
    assert_eq!(owner("home/app/link"), (HOST + 1000, HOST + 1000));
    assert_eq!(owner("nobody"), (HOST + 65_534, HOST + 65_534));
    let su = std::fs::metadata(root.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");

    // Unshifted, the same layer keeps the layer's own ids.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    unpack_layer(&blob[..], Compression::Gzip, &plain, 0, &opts()).unwrap();
    let m = std::fs::symlink_metadata(plain.join("home/app/notes")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001));

    for entry in [
        Entry::file("far", b"x").owner(65_536, 0),
        Entry::file("far", b"x").owner(0, 70_000),
    ] {
        let blob = Comp::Gzip.compress(&tar_bytes(&[entry]).unwrap()).unwrap();
        let target = dir.path().join("refused");
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir(&target).unwrap();
        let e = unpack_layer(&blob[..], Compression::Gzip, &target, 0, &shifted).unwrap_err();
        assert!(matches!(e, UnpackError::Owner { .. }), "{e:?}");
        assert_eq!(e.reason(), Some(PullFailureReason::InvalidImage), "{e}");
        assert!(e.to_string().contains("ids 0 to 65535"), "{e}");
        assert!(!target.join("far").exists(), "nothing written for it");
    }
}

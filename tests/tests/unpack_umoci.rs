//! berth's rootfs equals `umoci unpack`'s for an image with whiteouts, an
//! opaque directory, hard links, symlinks, varied modes and owners
//! (SPEC §15). The same image is pushed to a real registry, pulled and
//! unpacked by berth, and copied by skopeo into an OCI layout that umoci
//! unpacks (as root); the two trees are compared entry by entry: path,
//! type, mode, uid/gid, link target, content hash, hard-link count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_oci::{ClientConfig, RegistryClient, RetryPolicy};
use berth_puller::{
    unpack_image, ContentStore, PullConfig, PullRequest, Puller, UnpackOptions, VerifyPolicy,
};
use berth_tests::image::sha256;
use berth_tests::layers::{self, Comp, Entry};
use berth_tests::registry::{Registry, RegistryAuth};

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    detail: String,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (kind, detail) = if m.is_dir() {
                stack.push(p.clone());
                ("dir", String::new())
            } else if m.file_type().is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p).unwrap().display().to_string(),
                )
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                ("file", format!("{} {}", bytes.len(), sha256(&bytes)))
            } else {
                ("other", String::new())
            };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                Node {
                    kind,
                    // Symlink modes are meaningless on Linux.
                    mode: if kind == "symlink" {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    nlink: if kind == "dir" { 0 } else { m.nlink() },
                    detail,
                },
            );
        }
    }
    out
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn the_image() -> berth_tests::image::Image {
    let base = vec![
        Entry::dir("./").mode(0o755),
        Entry::dir("bin").mode(0o755),
        Entry::file("bin/tool", b"#!/bin/sh\necho hi\n").mode(0o755),
        Entry::file("bin/suid", b"suid").mode(0o4755),
        Entry::hardlink("bin/tool-link", "bin/tool"),
        Entry::dir("etc").mode(0o755),
        Entry::file("etc/secret", b"s3cret")
            .mode(0o600)
            .owner(1000, 1000),
        Entry::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        Entry::symlink("etc/mtab", "/proc/self/mounts"),
        Entry::symlink("etc/rel", "../bin/tool"),
        Entry::symlink("etc/dangling", "no/such/file"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("home/app").mode(0o750).owner(1000, 1000),
        Entry::file("home/app/data", &vec![7u8; 100_000]).owner(1000, 1000),
        Entry::dir("opq").mode(0o755),
        Entry::file("opq/lower1", b"l1"),
        Entry::dir("opq/sub"),
        Entry::file("opq/sub/lower2", b"l2"),
        Entry::dir("wh").mode(0o755),
        Entry::file("wh/gone", b"bye"),
        Entry::dir("wh/gonedir"),
        Entry::file("wh/gonedir/inner", b"bye too"),
        Entry::file("wh/stays", b"stay"),
        Entry::file("replace-me", b"file first"),
    ];
    let top = vec![
        Entry::whiteout("wh/gone"),
        Entry::whiteout("wh/gonedir"),
        Entry::opaque("opq"),
        Entry::file("opq/upper", b"u"),
        Entry::dir("opq/sub"),
        Entry::file("opq/sub/upper2", b"u2"),
        Entry::hardlink("etc/passwd-link", "etc/passwd"),
        Entry::file("bin/tool", b"#!/bin/sh\necho v2\n").mode(0o755),
        Entry::symlink("replace-me", "etc/passwd"),
        Entry::file("etc/group", b"root:x:0:\n")
            .mode(0o640)
            .owner(0, 42),
        Entry::dir("var/lib/x").mode(0o711).owner(5, 6),
    ];
    layers::image(vec![
        layers::layer(&base, Comp::Gzip).unwrap(),
        layers::layer(&top, Comp::Gzip).unwrap(),
    ])
    .unwrap()
}

#[tokio::test]
async fn rootfs_equals_umoci_unpack() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = the_image();
    reg.push_image("app/tree", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // berth
    let store = ContentStore::open(dir.path().join("store"), VerifyPolicy::Size).unwrap();
    let client = RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        ..ClientConfig::default()
    })
    .unwrap();
    let puller = Puller::new(client, store.clone(), PullConfig::default());
    let pulled = puller
        .pull(
            &PullRequest {
                host: &reg.host,
                repository: "app/tree",
                digest: &img.digest,
                credential: None,
            },
            &|_| {},
        )
        .await
        .unwrap();
    let ours = unpack_image(&store, &pulled.digest, &UnpackOptions::default()).unwrap();

    // skopeo → OCI layout → umoci unpack (as root)
    let layout = dir.path().join("layout");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/app/tree:v1", reg.host),
        &format!("oci:{}:v1", layout.display()),
    ]));
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:v1", layout.display()),
        &bundle.display().to_string(),
    ]));
    let theirs = bundle.join("rootfs");

    let a = tree(&ours);
    let b = tree(&theirs);
    let only_ours: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_theirs: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only berth: {only_ours:?}; only umoci: {only_theirs:?}"
    );
    for (path, node) in &a {
        assert_eq!(Some(node), b.get(path), "{} differs", path.display());
    }
    let root_a = std::fs::metadata(&ours).unwrap();
    let root_b = std::fs::metadata(&theirs).unwrap();
    assert_eq!(root_a.mode() & 0o7777, root_b.mode() & 0o7777, "root mode");
    // The scenario really exercised what it claims.
    assert!(!ours.join("wh/gone").exists() && !ours.join("wh/gonedir").exists());
    assert!(!ours.join("opq/lower1").exists() && !ours.join("opq/sub/lower2").exists());
    assert_eq!(a[Path::new("etc/passwd")].nlink, 2);
    assert_eq!(a[Path::new("bin/suid")].mode, 0o4755);
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 20, "{}", a.len());
}

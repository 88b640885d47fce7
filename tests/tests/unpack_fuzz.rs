//! Property test of the unpacker: random layers — plain, gzip and zstd —
//! made of names from a small hostile alphabet (`..`, `.`, empty
//! components, leading `/`, `.wh.` prefixes, opaque markers) and symlinks
//! and hard links to random targets (inside, outside, absolute, `/`,
//! `/etc`, the canary); half the layers keep to well-formed names, so
//! many must unpack. Each layer must be accepted exactly when [`model`]
//! says so, leave the tree the model predicts, and change nothing outside
//! the target directory; a panic fails too.
//!
//! "Outside" is the whole file system the unpacker can see: it runs on a
//! thread chrooted into a small jail (`/etc/passwd`, canaries beside and
//! above the target), so `/`, `/etc` and any `../..` resolve inside the
//! jail, and everything in it but the target is compared before and after
//! — contents, links, modes, owners, link counts, times.

mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use berth_puller::{unpack_layer, Compression, UnpackError, UnpackLimits, UnpackOptions};
use berth_tests::layers::{tar_bytes, Comp, Entry};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use model::{Node, Op, Tree};

/// Stands for the canary's absolute path in generated link targets.
const CANARY: &str = "@CANARY@";
/// Where the layers are unpacked, inside the jail.
const TARGET: &str = "/work/target";
/// A file beside the target (`../canary/keep` from inside it).
const CANARY_BESIDE: &str = "/work/canary/keep";

/// A name component: mostly plain names, some hostile ones (`..`, empty,
/// a whiteout of nothing) unless the layer is `tame`. Tame layers can
/// still be refused (a parent that is a file or a symlink, a hard link to
/// nothing), but most are not: refusing everything must fail the test.
fn component(tame: bool) -> impl Strategy<Value = &'static str> {
    let odd = if tame {
        vec![".", ".wh.a", ".wh.link", ".wh..wh..opq"]
    } else {
        vec!["..", ".", "", ".wh.a", ".wh.link", ".wh..wh..opq", ".wh."]
    };
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "link"]),
        1 => prop::sample::select(odd),
    ]
}

fn name(tame: bool) -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(if tame { 0.0 } else { 0.1 }),
        prop::collection::vec(component(tame), 1..4),
    )
        .prop_map(|(abs, parts)| {
            let p = parts.join("/");
            if abs {
                format!("/{p}")
            } else {
                p
            }
        })
}

/// A link target. Symlinks are written as they are whatever they point
/// at, so even tame layers aim them everywhere.
fn target(tame: bool) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "..",
            "../..",
            "/",
            "a",
            "a/b",
            "link",
            "/etc",
            "/etc/passwd",
            "../canary",
            "../../canary/keep",
            CANARY,
        ])
        .prop_map(str::to_string),
        name(tame),
    ]
}

fn op(tame: bool) -> impl Strategy<Value = Op> {
    let link_target = if tame {
        name(true).boxed()
    } else {
        target(false).boxed()
    };
    // A hard link to a random name mostly finds nothing: fewer of them in
    // tame layers.
    let links = if tame { 1 } else { 3 };
    prop_oneof![
        3 => (name(tame), any::<u8>()).prop_map(|(n, b)| Op::File(n, b)),
        3 => (
            name(tame),
            prop::sample::select(vec![0o755u32, 0o700, 0o555, 0o000])
        )
            .prop_map(|(n, m)| Op::Dir(n, m)),
        3 => (name(tame), target(tame)).prop_map(|(n, t)| Op::Symlink(n, t)),
        links => (name(tame), link_target).prop_map(|(n, t)| Op::HardLink(n, t)),
    ]
}

fn comp() -> impl Strategy<Value = Comp> {
    prop::sample::select(vec![Comp::None, Comp::Gzip, Comp::Zstd])
}

fn layers() -> impl Strategy<Value = Vec<(Vec<Op>, Comp)>> {
    let layer = prop::bool::ANY.prop_flat_map(|tame| prop::collection::vec(op(tame), 1..10));
    prop::collection::vec((layer, comp()), 1..4)
}

fn entries(ops: &[Op]) -> Vec<Entry> {
    let fix = |t: &str| t.replace(CANARY, CANARY_BESIDE);
    ops.iter()
        .map(|o| match o {
            Op::File(n, b) => Entry::file(n, &[*b; 3]),
            Op::Dir(n, m) => Entry::dir(n).mode(*m),
            Op::Symlink(n, t) => Entry::symlink(n, &fix(t)),
            Op::HardLink(n, t) => Entry::hardlink(n, &fix(t)),
        })
        .collect()
}

fn compression(c: Comp) -> Compression {
    match c {
        Comp::None => Compression::None,
        Comp::Gzip => Compression::Gzip,
        Comp::Zstd => Compression::Zstd,
    }
}

/// The tree under `root`, as the model states it.
fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let node = if t.is_dir() {
                stack.push(p.clone());
                Node::Dir
            } else if t.is_symlink() {
                Node::Symlink(
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if t.is_file() {
                Node::File(std::fs::read(&p).unwrap())
            } else {
                Node::Other(format!("{t:?}"))
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), node);
        }
    }
    out
}

/// Everything about a path outside the target that a write through it
/// would change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Vec<u8>,
}

/// Every path of the jail but the target.
fn outside() -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from("/")];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let child = e.unwrap().path();
                if child != Path::new(TARGET) {
                    stack.push(child);
                }
            }
            Vec::new()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.insert(
            p,
            Seen {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                content,
            },
        );
    }
    out
}

/// What one case did, seen from inside the jail.
struct Unpacked {
    /// Each layer's result and the target's tree after it.
    layers: Vec<(Result<(), String>, Tree)>,
    before: BTreeMap<PathBuf, Seen>,
    after: BTreeMap<PathBuf, Seen>,
}

/// Layers to unpack, and where to send what happened (`Err`: a panic).
type Job = (
    Vec<(Vec<u8>, Compression)>,
    mpsc::Sender<Result<Unpacked, String>>,
);

/// A thread whose root directory is a jail: its own file system root, so
/// nothing it does can reach the host's.
struct Jail {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Jail {
    fn start() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for d in ["etc", "work/canary", "canary", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("work/canary/keep"), b"original").unwrap();
        std::fs::write(root.join("canary/keep"), b"original").unwrap();
        // A name only the jail has: seen by the jailed thread at `/`, by no
        // other thread there.
        let marker = PathBuf::from("/").join(dir.path().file_name().unwrap());
        std::fs::write(root.join(marker.strip_prefix("/").unwrap()), b"").unwrap();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            // Root and working directory are per thread once the thread
            // stops sharing them with the process.
            let jailed = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(|e| format!("unshare(CLONE_FS): {e}"))
                .and_then(|()| {
                    std::os::unix::fs::chroot(&root)
                        .map_err(|e| format!("chroot (needs root): {e}"))
                })
                .and_then(|()| std::env::set_current_dir("/").map_err(|e| e.to_string()));
            let ok = jailed.is_ok();
            ready_tx.send(jailed).unwrap();
            if !ok {
                return;
            }
            for (layers, reply) in rx {
                // A panic fails the case; the jail stays up for the
                // shrinking that follows.
                let done = std::panic::catch_unwind(AssertUnwindSafe(|| unpack_in_jail(&layers)))
                    .map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    });
                let _ = reply.send(done);
            }
        });
        ready.recv().unwrap().unwrap();
        let jail = Jail {
            jobs: Some(jobs),
            thread: Some(thread),
            _dir: dir,
        };
        // The jail is where the thread's `/` is, and only the thread's.
        let probe = jail.run(Vec::new()).unwrap();
        assert!(
            probe.before.contains_key(&marker),
            "{:?}",
            probe.before.keys()
        );
        assert!(!marker.exists(), "the test thread is in the jail too");
        jail
    }

    fn run(&self, layers: Vec<(Vec<u8>, Compression)>) -> Result<Unpacked, String> {
        let (tx, rx) = mpsc::channel();
        self.jobs.as_ref().unwrap().send((layers, tx)).unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs inside the jail: a fresh target, then each layer.
fn unpack_in_jail(layers: &[(Vec<u8>, Compression)]) -> Unpacked {
    let target = Path::new(TARGET);
    if target.exists() {
        // Root ignores the 0o000 modes layers leave.
        std::fs::remove_dir_all(target).unwrap();
    }
    std::fs::create_dir(target).unwrap();
    let before = outside();
    let opts = UnpackOptions {
        limits: UnpackLimits::default(),
        ownership: true,
        shift: None,
        verify_diff_ids: false,
    };
    let mut out = Vec::new();
    for (i, (blob, c)) in layers.iter().enumerate() {
        let r = unpack_layer(&blob[..], *c, target, i, &opts)
            .map(|_| ())
            .map_err(|e: UnpackError| e.to_string());
        out.push((r, tree(target)));
    }
    Unpacked {
        layers: out,
        before,
        after: outside(),
    }
}

fn case(jail: &Jail, layers: &[(Vec<Op>, Comp)]) -> Result<(), TestCaseError> {
    let blobs = layers
        .iter()
        .map(|(ops, c)| {
            let tar = tar_bytes(&entries(ops)).unwrap();
            (c.compress(&tar).unwrap(), compression(*c))
        })
        .collect();
    let got = match jail.run(blobs) {
        Ok(got) => got,
        Err(panic) => return Err(TestCaseError::fail(format!("panicked: {panic}"))),
    };
    // An escape is the worst outcome: reported before any disagreement
    // with the model.
    prop_assert!(
        got.before == got.after,
        "something outside the target changed: {:?}",
        got.before
            .keys()
            .chain(got.after.keys())
            .filter(|p| got.before.get(*p) != got.after.get(*p))
            .collect::<BTreeSet<_>>()
    );
    let mut expected = Tree::new();
    for (i, ((ops, c), (result, on_disk))) in layers.iter().zip(&got.layers).enumerate() {
        let accept = model::apply_layer(&mut expected, ops, CANARY_BESIDE);
        prop_assert_eq!(
            result.is_ok(),
            accept,
            "layer {} ({:?}) {:?}: unpacker said {:?}",
            i,
            c,
            ops,
            result
        );
        prop_assert_eq!(on_disk, &expected, "layer {} ({:?}): tree", i, c);
    }
    Ok(())
}

#[test]
fn layers_unpack_as_modelled_and_nothing_outside_the_target_changes() {
    let jail = Jail::start();
    let mut runner = TestRunner::new(Config {
        cases: 500,
        // Failing cases are persisted as `proptest!` persists them.
        source_file: Some(file!()),
        ..Config::default()
    });
    if let Err(e) = runner.run(&layers(), |layers| case(&jail, &layers)) {
        panic!("{e}");
    }
}

//! Property test of the unpacker: random layers made of names from a small
//! hostile alphabet (`..`, `.`, empty components, leading `/`, `.wh.`
//! prefixes, opaque markers) and symlinks/hard links to random targets
//! (inside, outside, absolute, to the canary) never write outside the
//! target and never panic — whether each layer is accepted or refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_puller::{unpack_layer, Compression, UnpackLimits, UnpackOptions};
use berth_tests::layers::{tar_bytes, Entry};
use proptest::prelude::*;

const CANARY: &str = "@CANARY@";

fn component() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "b", "link"]),
        1 => prop::sample::select(vec![
            "..", ".", "", ".wh.a", ".wh.link", ".wh..wh..opq", ".wh.",
        ]),
    ]
}

fn name() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec(component(), 1..4),
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

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "..",
            "../..",
            "/",
            "a",
            "a/b",
            "link",
            "/etc",
            "../canary",
            "../../canary/keep",
            CANARY,
        ])
        .prop_map(str::to_string),
        name(),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    File(String, u8),
    Dir(String, u32),
    Symlink(String, String),
    HardLink(String, String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (name(), any::<u8>()).prop_map(|(n, b)| Op::File(n, b)),
        (
            name(),
            prop::sample::select(vec![0o755u32, 0o700, 0o555, 0o000])
        )
            .prop_map(|(n, m)| Op::Dir(n, m)),
        (name(), target()).prop_map(|(n, t)| Op::Symlink(n, t)),
        (name(), target()).prop_map(|(n, t)| Op::HardLink(n, t)),
    ]
}

fn entries(ops: &[Op], canary: &Path) -> Vec<Entry> {
    let fix = |t: &str| t.replace(CANARY, &canary.join("keep").display().to_string());
    ops.iter()
        .map(|o| match o {
            Op::File(n, b) => Entry::file(n, &[*b; 3]),
            Op::Dir(n, m) => Entry::dir(n).mode(*m),
            Op::Symlink(n, t) => Entry::symlink(n, &fix(t)),
            Op::HardLink(n, t) => Entry::hardlink(n, &fix(t)),
        })
        .collect()
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.is_dir() {
                stack.push(p.clone());
                b"<dir>".to_vec()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p, v);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn nothing_escapes(layers in prop::collection::vec(prop::collection::vec(op(), 1..10), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let canary = dir.path().join("canary");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("keep"), b"original").unwrap();
        let before = snapshot(&canary);
        let opts = UnpackOptions {
            limits: UnpackLimits::default(),
            ownership: true,
            verify_diff_ids: false,
        };
        for (i, ops) in layers.iter().enumerate() {
            let tar = tar_bytes(&entries(ops, &canary)).unwrap();
            // Ok or a clean refusal; a panic fails the property.
            let _ = unpack_layer(&tar[..], Compression::None, &target, i, &opts);
        }
        prop_assert_eq!(snapshot(&canary), before);
        let mut beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        beside.sort();
        prop_assert_eq!(beside, vec!["canary".to_string(), "target".to_string()]);
        // /etc/passwd is never linked in (link count unchanged is the
        // cheap global check: nothing hard-linked anything outside).
        let keep = std::fs::metadata(canary.join("keep")).unwrap();
        prop_assert_eq!(std::os::unix::fs::MetadataExt::nlink(&keep), 1);
        // Clean up even with 0o000 directories (root ignores modes).
        std::fs::remove_dir_all(&target).unwrap();
    }
}

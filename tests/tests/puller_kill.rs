//! A pull interrupted mid-download — the future dropped, or the process
//! killed with SIGKILL — never leaves a visible partial blob, and the next
//! pull completes (SPEC §8, containerd-style ingest/commit). A watcher
//! thread lists `blobs/` continuously during the whole test and checks
//! every file it ever sees against its digest and size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_oci::{ClientConfig, RegistryClient, RetryPolicy};
use berth_puller::{ContentStore, PullConfig, PullRequest, Puller, VerifyPolicy};
use berth_tests::image::{sha256, Image};
use berth_tests::layers::{self, Comp, Entry};
use berth_tests::registry::{Registry, RegistryAuth};

/// Four 12 MB layers of random bytes, uncompressed (gzip in a debug
/// build would dominate the test's time).
fn image() -> Image {
    let layers = (0..4)
        .map(|_| {
            let mut data = vec![0u8; 12 << 20];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data).unwrap();
            layers::layer(&[Entry::file("data.bin", &data)], Comp::None).unwrap()
        })
        .collect();
    layers::image(layers).unwrap()
}

fn puller(root: &Path) -> Puller {
    let client = RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        ..ClientConfig::default()
    })
    .unwrap();
    Puller::new(
        client,
        ContentStore::open(root, VerifyPolicy::Size).unwrap(),
        PullConfig {
            concurrency: 1,
            progress_interval: Duration::from_millis(1),
            ..PullConfig::default()
        },
    )
}

/// Watches `root/blobs/sha256` until stopped; every file seen must have
/// its expected size and hash. Returns the violations.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl Watcher {
    fn start(root: &Path, img: &Image) -> Self {
        let mut sizes: HashMap<String, u64> = img
            .layers
            .iter()
            .map(|l| (l.digest[7..].to_string(), l.blob.len() as u64))
            .collect();
        sizes.insert(img.config_digest[7..].to_string(), img.config.len() as u64);
        sizes.insert(img.digest[7..].to_string(), img.manifest.len() as u64);
        let dir = root.join("blobs/sha256");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut verified = HashSet::new();
            let mut polls = 0;
            while !s.load(Ordering::Relaxed) {
                polls += 1;
                std::thread::sleep(Duration::from_micros(100));
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    match sizes.get(&name) {
                        Some(want) if *want == len => {}
                        other => bad.push(format!("{name}: {len} bytes, expected {other:?}")),
                    }
                    if !verified.contains(&name) {
                        let bytes = std::fs::read(e.path()).unwrap_or_default();
                        if sha256(&bytes)[7..] != name {
                            bad.push(format!("{name}: content does not match"));
                        }
                        verified.insert(name);
                    }
                }
            }
            (bad, polls)
        });
        Self { stop, handle }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let (bad, polls) = self.handle.join().unwrap();
        assert!(polls > 10, "watcher barely ran ({polls} polls)");
        bad
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test]
async fn dropped_pull_leaves_nothing_visible_and_next_pull_completes() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = image();
    reg.push_image("app/big", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let watcher = Watcher::start(dir.path(), &img);
    let p = puller(dir.path());
    let req = PullRequest {
        host: &reg.host,
        repository: "app/big",
        digest: &img.digest,
        credential: None,
    };
    let started = Arc::new(tokio::sync::Notify::new());
    let s2 = started.clone();
    let third = img.compressed_size / 3;
    let on_progress = move |pr: berth_puller::Progress| {
        if pr.done > third {
            s2.notify_one();
        }
    };
    let pull = p.pull(&req, &on_progress);
    tokio::select! {
        r = pull => panic!("pull finished before it could be interrupted: {r:?}"),
        _ = started.notified() => {}
    }
    // The future is dropped: its ingest files are removed, nothing was
    // committed half-way.
    assert_eq!(count(&dir.path().join("ingest")), 0);
    let committed_before = count(&dir.path().join("blobs/sha256"));
    assert!(committed_before < 6, "some blobs still missing");
    let pulled = p.pull(&req, &|_| {}).await.unwrap();
    assert!(
        pulled.reused_blobs >= 1,
        "the blobs committed before are reused"
    );
    assert_eq!(count(&dir.path().join("blobs/sha256")), 6);
    let bad = watcher.finish();
    assert!(bad.is_empty(), "{bad:?}");
}

/// Child side of the SIGKILL test (does nothing unless the parent set the
/// environment).
#[tokio::test]
#[ignore = "run by kill9_mid_download as a child process"]
async fn kill9_child() {
    let (Ok(root), Ok(host), Ok(digest)) = (
        std::env::var("BERTH_KILL_STORE"),
        std::env::var("BERTH_KILL_HOST"),
        std::env::var("BERTH_KILL_DIGEST"),
    ) else {
        return;
    };
    let p = puller(Path::new(&root));
    let req = PullRequest {
        host: &host,
        repository: "app/big",
        digest: &digest,
        credential: None,
    };
    p.pull(&req, &|_| {}).await.unwrap();
}

fn biggest_ingest(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn kill9_mid_download_then_restart_completes() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = image();
    reg.push_image("app/big", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    let watcher = Watcher::start(&root, &img);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "puller_kill::kill9_child",
            "--ignored",
            "--nocapture",
        ])
        .env("BERTH_KILL_STORE", &root)
        .env("BERTH_KILL_HOST", &reg.host)
        .env("BERTH_KILL_DIGEST", &img.digest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ingest = root.join("ingest");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait until a layer is part-way in, then SIGKILL (std's kill).
    while biggest_ingest(&ingest) < (1 << 20) {
        assert!(Instant::now() < deadline, "child never started downloading");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    // The crash left a partial ingest file — and only there.
    assert!(
        biggest_ingest(&ingest) > 0,
        "no partial ingest left by the kill"
    );
    assert!(count(&root.join("blobs/sha256")) < 6);

    // Restart: opening the store removes the leftovers; the pull completes.
    let p = puller(&root);
    assert_eq!(
        count(&ingest),
        0,
        "leftover ingest files cleaned at start-up"
    );
    let req = PullRequest {
        host: &reg.host,
        repository: "app/big",
        digest: &img.digest,
        credential: None,
    };
    p.pull(&req, &|_| {}).await.unwrap();
    assert_eq!(count(&root.join("blobs/sha256")), 6);
    let bad = watcher.finish();
    assert!(bad.is_empty(), "{bad:?}");
}

//! Pulls against a real `docker-registry` (SPEC §8, §9): cold then warm
//! (the manifest is fetched again, no blob is), deleted image fails with
//! `image_not_found` although every layer is cached, corrupted blob →
//! `digest_mismatch` with nothing committed, always-download, bad
//! credentials, progress, and pull + unpack of mixed-compression layers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::reference::Digest;
use berth_oci::{ClientConfig, Credential, RegistryClient, RetryPolicy};
use berth_puller::{
    unpack_image, ContentStore, Progress, PullConfig, PullFailureReason, PullPolicy, PullRequest,
    Puller, UnpackError, UnpackOptions, VerifyPolicy,
};
use berth_tests::image::{build_image, ImageOptions, Layer};
use berth_tests::layers::{self, Comp, Entry};
use berth_tests::registry::flaky::FlakyProxy;
use berth_tests::registry::{Registry, RegistryAuth};

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        ..ClientConfig::default()
    })
    .unwrap()
}

fn puller(store: &Path, policy: PullPolicy) -> Puller {
    let store = ContentStore::open(store, VerifyPolicy::Size).unwrap();
    Puller::new(
        client(),
        store,
        PullConfig {
            policy,
            progress_interval: Duration::from_millis(5),
            ..PullConfig::default()
        },
    )
}

fn three_layer_image() -> berth_tests::image::Image {
    let layers = vec![
        Layer::from_files(&[("a.txt", b"layer a")]).unwrap(),
        Layer::random(300_000).unwrap(),
        Layer::from_files(&[("c.txt", b"layer c")]).unwrap(),
    ];
    build_image(&ImageOptions::linux("amd64"), layers).unwrap()
}

fn noop(_: Progress) {}

/// Every file in `blobs/` hashes to its name.
fn assert_store_consistent(root: &Path) {
    for algo in ["sha256"] {
        for e in std::fs::read_dir(root.join("blobs").join(algo)).unwrap() {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            let want = format!("sha256:{}", e.file_name().to_string_lossy());
            assert_eq!(
                berth_tests::image::sha256(&bytes),
                want,
                "bad blob in store"
            );
        }
    }
}

#[tokio::test]
async fn cold_warm_then_deleted() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = three_layer_image();
    reg.push_image("app/web", "v1", &img).await.unwrap();
    // Count registry requests through a pass-through proxy.
    let proxy = FlakyProxy::start(&reg.host, 0, 503, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let req = PullRequest {
        host: &proxy.host,
        repository: "app/web",
        digest: &img.digest,
        credential: None,
    };

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let cold = p
        .pull(&req, &move |pr| s2.lock().unwrap().push(pr))
        .await
        .unwrap();
    assert_eq!(cold.downloaded_blobs, 4, "config + 3 layers");
    assert_eq!(cold.reused_blobs, 0);
    assert_eq!(cold.downloaded_bytes, img.compressed_size);
    assert_eq!(cold.layers.len(), 3);
    let after_cold = proxy.requests().len();
    assert_eq!(after_cold, 5, "manifest + config + 3 layers");
    let progress = seen.lock().unwrap().clone();
    assert_eq!(
        progress.last(),
        Some(&Progress {
            done: img.compressed_size,
            total: img.compressed_size
        })
    );
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done));
    assert_store_consistent(dir.path());

    let warm = p.pull(&req, &noop).await.unwrap();
    assert_eq!(warm.downloaded_blobs, 0);
    assert_eq!(warm.downloaded_bytes, 0);
    assert_eq!(warm.reused_blobs, 4);
    assert_eq!(
        proxy.requests().len() - after_cold,
        1,
        "a warm pull fetches the manifest and nothing else"
    );

    reg.delete_manifest("app/web", &img.digest).await.unwrap();
    let err = p.pull(&req, &noop).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(PullFailureReason::ImageNotFound),
        "{err}"
    );
    // The layers are still cached: the failure came from the registry.
    for l in &img.layers {
        let d = Digest::parse(&l.digest).unwrap();
        assert!(p.store().has(&d, l.blob.len() as u64));
    }
}

#[tokio::test]
async fn corrupted_blob_is_digest_mismatch_and_nothing_committed() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = three_layer_image();
    reg.push_image("app/web", "v1", &img).await.unwrap();
    let bad = &img.layers[1].digest;
    reg.corrupt_blob(bad).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let req = PullRequest {
        host: &reg.host,
        repository: "app/web",
        digest: &img.digest,
        credential: None,
    };
    let err = p.pull(&req, &noop).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(PullFailureReason::DigestMismatch),
        "{err}"
    );
    assert!(!dir.path().join("blobs/sha256").join(&bad[7..]).exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count(),
        0
    );
    assert_store_consistent(dir.path());
    // Nothing to unpack either.
    let e = unpack_image(
        p.store(),
        &Digest::parse(&img.digest).unwrap(),
        &UnpackOptions::default(),
    );
    assert!(e.is_err());
}

#[tokio::test]
async fn always_download_fetches_every_blob_again() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = three_layer_image();
    reg.push_image("app/web", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let req = PullRequest {
        host: &reg.host,
        repository: "app/web",
        digest: &img.digest,
        credential: None,
    };
    puller(dir.path(), PullPolicy::ReuseVerified)
        .pull(&req, &noop)
        .await
        .unwrap();
    let again = puller(dir.path(), PullPolicy::AlwaysDownload)
        .pull(&req, &noop)
        .await
        .unwrap();
    assert_eq!(again.downloaded_blobs, 4);
    assert_eq!(again.reused_blobs, 0);
}

#[tokio::test]
async fn revoked_credential_fails_at_once_with_layers_cached() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "u".into(),
        pass: "right".into(),
    })
    .await
    .unwrap();
    let img = three_layer_image();
    reg.push_image("app/web", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let good = Credential::new("u", "right");
    let bad = Credential::new("u", "wrong");
    let mut req = PullRequest {
        host: &reg.host,
        repository: "app/web",
        digest: &img.digest,
        credential: Some(&good),
    };
    p.pull(&req, &noop).await.unwrap();
    req.credential = Some(&bad);
    let err = p.pull(&req, &noop).await.unwrap_err();
    assert_eq!(err.reason(), Some(PullFailureReason::Unauthorized), "{err}");
    req.credential = None;
    let err = p.pull(&req, &noop).await.unwrap_err();
    assert_eq!(err.reason(), Some(PullFailureReason::Unauthorized), "{err}");
}

#[tokio::test]
async fn pull_and_unpack_gzip_zstd_and_plain_layers() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = layers::image(vec![
        layers::layer(
            &[
                Entry::dir("etc"),
                Entry::file("etc/os-release", b"berth"),
                Entry::file("etc/old", b"old"),
                Entry::dir("var/cache").mode(0o700),
                Entry::file("var/cache/x", b"x"),
            ],
            Comp::Gzip,
        )
        .unwrap(),
        layers::layer(
            &[
                Entry::whiteout("etc/old"),
                Entry::file("bin/tool", b"#!").mode(0o755),
            ],
            Comp::Zstd,
        )
        .unwrap(),
        layers::layer(
            &[Entry::opaque("var/cache"), Entry::file("var/cache/y", b"y")],
            Comp::None,
        )
        .unwrap(),
    ])
    .unwrap();
    reg.push_image("app/mixed", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let req = PullRequest {
        host: &reg.host,
        repository: "app/mixed",
        digest: &img.digest,
        credential: None,
    };
    let pulled = p.pull(&req, &noop).await.unwrap();
    assert!(pulled.layers[1].media_type.ends_with("tar+zstd"));
    let store = p.store().clone();
    let digest = pulled.digest.clone();
    let rootfs = tokio::task::spawn_blocking(move || {
        unpack_image(&store, &digest, &UnpackOptions::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rootfs, p.store().tree_path(&pulled.digest));
    assert_eq!(
        std::fs::read(rootfs.join("etc/os-release")).unwrap(),
        b"berth"
    );
    assert!(!rootfs.join("etc/old").exists());
    assert_eq!(std::fs::read(rootfs.join("bin/tool")).unwrap(), b"#!");
    assert!(!rootfs.join("var/cache/x").exists());
    assert_eq!(std::fs::read(rootfs.join("var/cache/y")).unwrap(), b"y");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rootfs.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no build leftovers"
    );
}

#[tokio::test]
async fn wrong_diff_id_is_refused_and_leaves_no_tree() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let (mut l, c) = layers::layer(&[Entry::file("f", b"1")], Comp::Gzip).unwrap();
    l.diff_id = berth_tests::image::sha256(b"something else");
    let img = layers::image(vec![(l, c)]).unwrap();
    reg.push_image("app/lie", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let req = PullRequest {
        host: &reg.host,
        repository: "app/lie",
        digest: &img.digest,
        credential: None,
    };
    let pulled = p.pull(&req, &noop).await.unwrap();
    let e = unpack_image(p.store(), &pulled.digest, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
    assert!(!p.store().has_tree(&pulled.digest));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn gc_keeps_referenced_and_drops_the_rest() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let a = three_layer_image();
    let b = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::from_files(&[("b.txt", b"only b")]).unwrap()],
    )
    .unwrap();
    reg.push_image("app/a", "v1", &a).await.unwrap();
    reg.push_image("app/b", "v1", &b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    for (repo, img) in [("app/a", &a), ("app/b", &b)] {
        let req = PullRequest {
            host: &reg.host,
            repository: repo,
            digest: &img.digest,
            credential: None,
        };
        let pulled = p.pull(&req, &noop).await.unwrap();
        unpack_image(p.store(), &pulled.digest, &UnpackOptions::default()).unwrap();
    }
    let da = Digest::parse(&a.digest).unwrap();
    let db = Digest::parse(&b.digest).unwrap();
    // A generous budget deletes nothing.
    let r = p.store().gc(std::slice::from_ref(&da), u64::MAX).unwrap();
    assert_eq!((r.blobs_removed, r.trees_removed), (0, 0));
    // Budget 0: everything not reachable from image a goes.
    let r = p.store().gc(std::slice::from_ref(&da), 0).unwrap();
    assert_eq!(r.trees_removed, 1);
    assert_eq!(r.blobs_removed, 3, "b's manifest, config and layer");
    assert!(p.store().has_tree(&da));
    assert!(!p.store().has_tree(&db));
    for l in &a.layers {
        assert!(p
            .store()
            .has(&Digest::parse(&l.digest).unwrap(), l.blob.len() as u64));
    }
    assert!(!p.store().has(
        &Digest::parse(&b.layers[0].digest).unwrap(),
        b.layers[0].blob.len() as u64
    ));
}

/// A node that runs its instances in a user namespace unpacks into a tree
/// set of its own, owned by the shifted ids, and its store's root lets
/// the shifted root through and nothing else; the collector keeps an
/// image's trees in both sets while it is referenced, and removes both
/// after.
#[tokio::test]
async fn a_store_for_a_user_namespace_keeps_its_trees_apart() {
    use std::os::unix::fs::MetadataExt;
    const HOST: u32 = 1_000_000_000;
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = three_layer_image();
    reg.push_image("app/ns", "v1", &img).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = puller(dir.path(), PullPolicy::ReuseVerified);
    let req = PullRequest {
        host: &reg.host,
        repository: "app/ns",
        digest: &img.digest,
        credential: None,
    };
    let pulled = p.pull(&req, &noop).await.unwrap();
    let plain = unpack_image(p.store(), &pulled.digest, &UnpackOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&plain).unwrap().uid(), 0);

    let shift = berth_puller::IdShift {
        host: HOST,
        size: 65_536,
    };
    let store = ContentStore::open(dir.path(), VerifyPolicy::Size)
        .unwrap()
        .with_id_shift(shift)
        .unwrap();
    assert!(
        !store.has_tree(&pulled.digest),
        "the unshifted tree is not this one"
    );
    let shifted = unpack_image(&store, &pulled.digest, &UnpackOptions::default()).unwrap();
    assert_eq!(shifted, store.tree_path(&pulled.digest));
    assert!(shifted.starts_with(dir.path().join(format!("trees-{HOST}-65536"))));
    for p in [shifted.clone(), shifted.join("a.txt")] {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (HOST, HOST), "{}", p.display());
    }
    let root = std::fs::metadata(dir.path()).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o710);
    assert_eq!((root.uid(), root.gid()), (0, HOST));

    // While the image is referenced, its trees in both sets stay (an
    // instance adopted across the switch runs on the unshifted one).
    let r = store.gc(std::slice::from_ref(&pulled.digest), 0).unwrap();
    assert_eq!(r.trees_removed, 0);
    assert!(plain.exists() && store.has_tree(&pulled.digest));
    let r = store.gc(&[], 0).unwrap();
    assert_eq!(r.trees_removed, 2, "both sets' trees");
    assert!(!plain.exists() && !shifted.exists());
}

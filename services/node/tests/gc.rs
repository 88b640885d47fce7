//! Content store collection on a node: the image of a running instance
//! (blobs and unpacked tree) survives any number of collections with a
//! zero budget; once its last instance stops, the next collection
//! deletes it, while the running one's content and container stay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_node::GcOptions;
use berth_schemas::model::ServiceType;
use serde_json::json;

use crate::support::{count_of, fast_checks, run, service_at, spec, start_node_with, stop};
use berth_tests::agent::{busybox_image, runc_list};
use berth_tests::node::{World, REPO};

fn hex(digest: &str) -> &str {
    digest.split_once(':').unwrap().1
}

fn tree(store: &Path, digest: &str) -> PathBuf {
    let trees = match berth_tests::node::test_user_namespace() {
        Some(u) => format!("trees-{}-{}", u.host, u.size),
        None => "trees".to_owned(),
    };
    store.join(trees).join("sha256").join(hex(digest))
}

fn manifest_blob(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(hex(digest))
}

#[tokio::test]
async fn collection_keeps_running_images_and_removes_stopped_ones() {
    let w = World::start().await;
    // A second image: same layers, another config, so another manifest.
    let other = busybox_image(json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "V=2"] }));
    w.registry.push_image(REPO, "v2", &other).await.unwrap();
    let (a_digest, b_digest) = (w.digest.clone(), other.digest.clone());
    assert_ne!(a_digest, b_digest);

    let gc = GcOptions {
        interval: Some(Duration::from_millis(300)),
        budget_bytes: 0,
    };
    let node = start_node_with(&w, fast_checks(), gc).await;
    let store = w.node_dir().join("store");

    let (sa, da) = service_at(&w, ServiceType::BackgroundWorker, None, &a_digest).await;
    let (sb, db) = service_at(&w, ServiceType::BackgroundWorker, None, &b_digest).await;
    let a = spec(&w, &sa, &da, "/bin/sleep 1000", None);
    let mut b = spec(&w, &sb, &db, "/bin/sleep 1000", None);
    b.digest = b_digest.clone();
    run(&w, &node.id, &a).await;
    run(&w, &node.id, &b).await;
    for (s, i) in [(&sa, &a.instance), (&sb, &b.instance)] {
        w.wait_events(s, Duration::from_secs(60), |ev| {
            count_of(ev, i, "instance_started") == 1
        })
        .await;
    }

    // Several collections with a zero budget: both images are in use.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for d in [&a_digest, &b_digest] {
        assert!(tree(&store, d).exists(), "tree of running {d} kept");
        assert!(
            manifest_blob(&store, d).exists(),
            "manifest of running {d} kept"
        );
    }

    stop(&w, &node.id, &sb, &b.instance).await;
    w.wait_events(&sb, Duration::from_secs(30), |ev| {
        count_of(ev, &b.instance, "instance_stopped") == 1
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while tree(&store, &b_digest).exists() || manifest_blob(&store, &b_digest).exists() {
        assert!(
            Instant::now() < deadline,
            "stopped image collected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tree(&store, &a_digest).exists(), "running tree kept");
    assert!(
        manifest_blob(&store, &a_digest).exists(),
        "running manifest kept"
    );
    let containers = runc_list(&w.runc_root());
    assert_eq!(containers, vec![a.instance.to_string()], "a still runs");
    let events = w.events_after(&sa, Duration::from_millis(200)).await;
    assert_eq!(count_of(&events, &a.instance, "instance_exited"), 0);

    node.stop().await;
}

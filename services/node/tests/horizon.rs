//! A node remembers the instances it stopped for a while (a late
//! redelivery of a start must not bring one back), not for ever: markers
//! older than that go, and a start that waited in the queue longer than
//! that is refused rather than run.

use std::time::{Duration, SystemTime};

use berth_node::NodeOptions;
use berth_schemas::ids::InstanceId;
use berth_schemas::model::ServiceType;

use crate::support::{count_of, fast_checks, options, run, service, spec, start_node_opts, stop};
use berth_tests::node::World;

#[tokio::test]
async fn a_start_older_than_what_the_node_remembers_is_not_run_and_old_markers_go() {
    let w = World::start().await;
    let dir = w.node_dir();
    let id = berth_node::load_or_create_id(&dir).unwrap();
    let (svc, dep) = service(&w, ServiceType::BackgroundWorker, None).await;
    // Enqueued while the node is down, and left waiting.
    let stale = spec(&w, &svc, &dep, "sleep 600", None);
    run(&w, &id, &stale).await;
    // The marker of an instance stopped long ago (and, below, one of a
    // moment ago).
    let placements = dir.join("placements");
    std::fs::create_dir_all(&placements).unwrap();
    let marker = |age: Duration| {
        let path = placements.join(format!("{}.done", InstanceId::generate()));
        std::fs::File::create(&path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        path
    };
    let old = marker(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recent = marker(Duration::ZERO);

    let opts = NodeOptions {
        done_kept: Duration::from_secs(2),
        ..options()
    };
    let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
    assert_eq!(node.id, id);
    // A start enqueued now runs; the stale one (same service: handled
    // first) never does.
    let fresh = spec(&w, &svc, &dep, "sleep 600", None);
    run(&w, &node.id, &fresh).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &fresh.instance, "instance_started") == 1
    })
    .await;
    let ev = w.events_after(&svc, Duration::from_secs(1)).await;
    assert_eq!(count_of(&ev, &stale.instance, "instance_started"), 0);
    assert!(!old.exists(), "a marker older than what is remembered goes");
    assert!(recent.exists());

    stop(&w, &node.id, &svc, &fresh.instance).await;
    w.wait_events(&svc, Duration::from_secs(30), |ev| {
        count_of(ev, &fresh.instance, "instance_stopped") == 1
    })
    .await;
    node.stop().await;
}

//! Restart, suspend and resume carried out on the nodes: a restart replaces
//! every instance (new ones healthy before old ones stop), suspend stops
//! everything, resume deploys again; a rollback runs the digest its target
//! recorded even after the tag has moved.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_domain::service::Command;
use berth_schemas::ids::DeployId;
use berth_schemas::model::ServiceType;
use berth_schemas::Event;
use serde_json::json;

use berth_tests::agent::busybox_image;
use berth_tests::scheduler::{containers, settled, types, World, REPO};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_replaces_every_instance_suspend_stops_all_resume_deploys_again() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let nodes = [&n1, &n2];
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| c.num_instances = Some(2))
        .await;
    w.wait_live(&svc, &d1).await;
    let before: BTreeSet<String> = settled(&w, &svc, &nodes, 2).await.into_iter().collect();

    w.command(&svc, Command::Restart).await;
    let t0 = Instant::now();
    let after = loop {
        let ids: BTreeSet<String> = settled(&w, &svc, &nodes, 2).await.into_iter().collect();
        if ids.is_disjoint(&before) {
            break ids;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ev = w.events(&svc).await;
    let t = types(&ev);
    // Old ones stopped only once both new ones were healthy.
    let first_old_stop = ev
        .iter()
        .position(|e| matches!(&e.event, Event::InstanceStopped(s) if before.contains(s.instance.as_str())))
        .unwrap();
    let new_healthy = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(&e.event, Event::InstanceHealthy(h) if after.contains(h.instance.as_str())))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert_eq!(new_healthy.len(), 2, "{t:?}");
    assert!(new_healthy.iter().all(|&h| h < first_old_stop), "{t:?}");

    w.command(&svc, Command::Suspend).await;
    settled(&w, &svc, &nodes, 0).await;

    let d3 = DeployId::generate();
    w.command(&svc, Command::Resume { deploy: d3.clone() })
        .await;
    w.wait_live(&svc, &d3).await;
    let resumed = settled(&w, &svc, &nodes, 2).await;
    let s = w.state(&svc).await;
    assert!(s.instances.iter().all(|i| i.deploy == d3));
    assert!(resumed
        .iter()
        .all(|i| !after.contains(i) && !before.contains(i)));

    // Deleted: every container goes, and its stop is recorded.
    w.command(&svc, Command::Delete).await;
    let t0 = Instant::now();
    while !containers(&nodes).is_empty() || !w.state(&svc).await.instances.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "deleted service still runs {:?}",
            containers(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_runs_the_recorded_digest_again() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, d1) = w.create(ServiceType::WebService, |_| {}).await;
    w.wait_live(&svc, &d1).await;
    let d2 = w.deploy(&svc, "v2").await;
    w.wait_live(&svc, &d2).await;
    // `:v1` now names another image: a rollback runs the digest d1
    // recorded, never what its tag means today.
    let moved = busybox_image(json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "V=moved"] }));
    assert_ne!(moved.digest, w.v1);
    w.registry.push_image(REPO, "v1", &moved).await.unwrap();
    let d3 = DeployId::generate();
    w.command(
        &svc,
        Command::RequestDeploy(berth_domain::service::DeployRequest::rollback(
            d3.clone(),
            d1.clone(),
        )),
    )
    .await;
    let ev = w.wait_live(&svc, &d3).await;
    let ids = settled(&w, &svc, &[&n1, &n2], 1).await;
    let s = w.state(&svc).await;
    let i = s.instances.iter().next().unwrap();
    assert_eq!(ids, vec![i.id.to_string()]);
    assert_eq!((&i.deploy, &i.digest), (&d3, &w.v1));
    assert_eq!(
        s.deploy(&d3).unwrap().digest(),
        Some(w.v1.as_str()),
        "{:?}",
        types(&ev)
    );
    // Nothing ever pulled, scheduled or went live with what the tag names now.
    let ev = w.events(&svc).await;
    assert!(
        !ev.iter().any(|e| match &e.event {
            Event::ImagePulled(p) => p.digest == moved.digest,
            Event::InstanceScheduled(i) => i.digest == moved.digest,
            Event::DeployLive(l) => l.digest == moved.digest,
            _ => false,
        }),
        "the rollback ran the moved tag: {:?}",
        types(&ev)
    );
}

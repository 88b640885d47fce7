//! The deploy pipeline end to end: a web service goes live on two nodes,
//! and a second deploy replaces it with zero downtime.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_schemas::model::ServiceType;
use berth_schemas::Event;

use berth_tests::scheduler::{assert_in_order, containers, count, types, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_service_goes_live_then_a_second_deploy_replaces_it_after_it_is_healthy() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;

    let (svc, d1) = w
        .create(ServiceType::WebService, |c| c.num_instances = Some(2))
        .await;
    let ev = w.wait_live(&svc, &d1).await;
    let t = types(&ev);
    assert_in_order(
        &ev,
        &[
            "deploy_created",
            "deploy_started",
            "image_resolved",
            "update_started",
            "instance_scheduled",
            "instance_started",
            "instance_healthy",
            "deploy_live",
        ],
    );
    assert_eq!(count(&ev, "instance_scheduled"), 2, "{t:?}");
    assert_eq!(count(&ev, "deploy_live"), 1, "{t:?}");
    assert!(count(&ev, "image_pulled") >= 1, "{t:?}");
    let s = w.state(&svc).await;
    let first: BTreeSet<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
    // Spread: one instance per node.
    let nodes: BTreeSet<_> = s.instances.iter().map(|i| i.node.clone()).collect();
    assert_eq!(nodes.len(), 2, "instances not spread over both nodes");
    assert_eq!(
        containers(&[&n1, &n2]),
        first.iter().cloned().collect::<Vec<_>>()
    );

    // Second deploy: new instances first, old ones stopped only after.
    let d2 = w.deploy(&svc, "v2").await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(90), "old instances stopped", |ev| {
            ev.iter()
                .filter(|e| matches!(&e.event, Event::InstanceStopped(s) if first.contains(s.instance.as_str())))
                .count()
                == 2
        })
        .await;
    let t = types(&ev);
    let live2 = ev
        .iter()
        .position(|e| matches!(&e.event, Event::DeployLive(l) if l.deploy == d2))
        .unwrap_or_else(|| panic!("d2 not live: {t:?}"));
    let first_stop = ev
        .iter()
        .position(|e| matches!(&e.event, Event::InstanceStopped(s) if first.contains(s.instance.as_str())))
        .unwrap();
    assert!(
        live2 < first_stop,
        "an old instance stopped before the new deploy was live: {t:?}"
    );
    assert!(
        ev.iter().any(
            |e| matches!(&e.event, Event::DeployDeactivated(d) if d.deploy == d1 && d.by == d2)
        ),
        "{t:?}"
    );
    // Both of d2's instances were healthy before d2 went live (d1's
    // instances' health says nothing about d2).
    let second: BTreeSet<String> = ev[..live2]
        .iter()
        .filter_map(|e| match &e.event {
            Event::InstanceScheduled(i) if i.deploy == d2 => Some(i.instance.to_string()),
            _ => None,
        })
        .collect();
    assert!(second.is_disjoint(&first), "{t:?}");
    let healthy_before: BTreeSet<String> = ev[..live2]
        .iter()
        .filter_map(|e| match &e.event {
            Event::InstanceHealthy(h) if second.contains(h.instance.as_str()) => {
                Some(h.instance.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        healthy_before.len(),
        2,
        "d2 went live before two of its instances were healthy: {t:?}"
    );
    let s = w.state(&svc).await;
    assert_eq!(s.instances.len(), 2);
    assert!(s
        .instances
        .iter()
        .all(|i| i.deploy == d2 && i.digest == w.v2));
    let now: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
    // Containers follow (the stop is asynchronous on the node).
    let t0 = std::time::Instant::now();
    while containers(&[&n1, &n2]) != now {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "containers {:?} != instances {now:?}",
            containers(&[&n1, &n2])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same pipeline on Debian's nats-server 2.9 (stream listing by
/// subject filter, durable consumers, dedupe all work there too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn goes_live_and_scales_on_nats_server_2_9() {
    let w = World::start_on(berth_tests::NatsVersion::Legacy).await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    // A service created before the scheduler runs is found by its sweep.
    let (svc, d1) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
    let _scheduler = w.start_scheduler().await;
    w.wait_live(&svc, &d1).await;
    w.command(
        &svc,
        berth_domain::service::Command::Scale { num_instances: 2 },
    )
    .await;
    let t0 = std::time::Instant::now();
    loop {
        let s = w.state(&svc).await;
        let ids: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
        if ids.len() == 2
            && s.instances.iter().all(|i| i.is_healthy())
            && containers(&[&n1, &n2]) == ids
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", s.instances);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

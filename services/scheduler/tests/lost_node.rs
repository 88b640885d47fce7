//! A node that stops heart-beating (its component and containers gone) is
//! declared lost; its instances are rescheduled on the other node, which
//! pulls the image afresh.

use std::time::Duration;

use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Event};

use berth_tests::scheduler::{types, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_nodes_instance_moves_to_the_other_node() {
    let w = World::start().await;
    let mut n1 = w.start_node("n1").await;
    let mut n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, d1) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
    w.wait_live(&svc, &d1).await;
    let s = w.state(&svc).await;
    let old = s.instances.iter().next().unwrap().clone();
    let (dead, alive) = if old.node == n1.id {
        (&mut n1, &mut n2)
    } else {
        (&mut n2, &mut n1)
    };
    assert_eq!(dead.containers(), vec![old.id.to_string()]);
    assert!(alive.containers().is_empty());

    // The machine dies: no more heartbeats, no more containers.
    dead.stop().await;
    dead.kill_containers();
    let dead_id = dead.id.clone();
    let alive_id = alive.id.clone();

    let ev = w
        .wait_events(&svc, Duration::from_secs(60), "replacement started", |ev| {
            let Some(moved) = ev.iter().find_map(|e| match &e.event {
                Event::InstanceRescheduled(r) => Some(r.replacement.clone()),
                _ => None,
            }) else {
                return false;
            };
            ev.iter()
                .any(|e| matches!(&e.event, Event::InstanceStarted(s) if s.instance == moved))
        })
        .await;
    let t = types(&ev);
    let failed = ev
        .iter()
        .position(|e| matches!(&e.event, Event::ServerFailed(f) if f.node == dead_id && f.instances == vec![old.id.clone()]))
        .unwrap_or_else(|| panic!("no server_failed: {t:?}"));
    let (moved_at, replacement) = ev
        .iter()
        .enumerate()
        .find_map(|(i, e)| match &e.event {
            Event::InstanceRescheduled(r)
                if r.instance == old.id && r.from_node == dead_id && r.to_node == alive_id =>
            {
                Some((i, r.replacement.clone()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no instance_rescheduled to the other node: {t:?}"));
    let pulled = ev
        .iter()
        .position(|e| matches!(&e.event, Event::ImagePulled(p) if p.node == alive_id))
        .unwrap_or_else(|| panic!("no image_pulled on the other node: {t:?}"));
    assert!(failed < moved_at && moved_at < pulled, "{t:?}");

    let node_events = w
        .store
        .load(&AggregateId::Node(dead_id.clone()))
        .await
        .unwrap()
        .events;
    assert!(node_events
        .iter()
        .any(|e| matches!(e.event, Event::NodeLost(_))));

    let t0 = std::time::Instant::now();
    loop {
        let s = w.state(&svc).await;
        if s.instances.len() == 1
            && s.instances
                .get(&replacement)
                .is_some_and(|i| i.is_healthy())
            && alive.containers() == vec![replacement.to_string()]
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", s.instances);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dead.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_that_comes_back_recovers_and_stops_what_moved_away() {
    let w = World::start().await;
    let mut n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    // Two instances: one on each node.
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| c.num_instances = Some(2))
        .await;
    w.wait_live(&svc, &d1).await;
    let s = w.state(&svc).await;
    let old = s
        .instances
        .iter()
        .find(|i| i.node == n1.id)
        .unwrap()
        .clone();

    // n1's process hangs up (a partition): its container keeps running.
    n1.stop().await;
    assert_eq!(n1.containers(), vec![old.id.to_string()]);
    let ev = w
        .wait_events(&svc, Duration::from_secs(60), "replacement started", |ev| {
            let Some(moved) = ev.iter().find_map(|e| match &e.event {
                Event::InstanceRescheduled(r) if r.instance == old.id => {
                    Some(r.replacement.clone())
                }
                _ => None,
            }) else {
                return false;
            };
            ev.iter()
                .any(|e| matches!(&e.event, Event::InstanceHealthy(h) if h.instance == moved))
        })
        .await;
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, Event::ServerFailed(f) if f.node == n1.id)),
        "{:?}",
        types(&ev)
    );

    // n1 comes back (same data dir, same id) and adopts its container.
    let back = w.start_node("n1").await;
    assert_eq!(back.id, n1.id);
    let t0 = std::time::Instant::now();
    loop {
        let node_events = w
            .store
            .load(&AggregateId::Node(n1.id.clone()))
            .await
            .unwrap()
            .events;
        let recovered = node_events
            .iter()
            .any(|e| matches!(e.event, Event::NodeRecovered(_)));
        if recovered && back.containers().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "recovered: {recovered}, n1 still runs {:?}",
            back.containers()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = w.state(&svc).await;
    assert_eq!(s.instances.len(), 2);
    assert!(s.instances.get(&old.id).is_none());
    let mut ids: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
    ids.sort();
    assert_eq!(berth_tests::scheduler::containers(&[&back, &n2]), ids);
}

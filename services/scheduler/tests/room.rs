//! Room on nodes: instances hold their node's CPU and memory until the
//! node reports them stopped; a deleted service's instances are stopped
//! (and so make room) like any others; instances that find no room say so
//! on the service's timeline and in the deploy's failure.

use std::time::{Duration, Instant};

use berth_domain::service::Command;
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{Envelope, Event};

use berth_tests::scheduler::{
    containers, node_options, scheduler_options, types, RunningNode, World,
};

/// A node with room for two starter instances (0.5 CPU, 512 MiB each).
async fn small_node(w: &World) -> RunningNode {
    let mut opts = node_options("n1", &w.dir.path().join("n1"));
    opts.cpu_millis = 1000;
    opts.memory_mib = 1024;
    w.start_node_with(opts).await
}

/// A private service listening on `$PORT` (its check is a TCP connect).
async fn private(w: &World) -> (ServiceId, DeployId) {
    w.create(ServiceType::PrivateService, |c| {
        c.docker_command = Some("sh -c 'exec busybox httpd -f -p $PORT -h /app'".into());
    })
    .await
}

fn ended(ev: &[Envelope], d: &DeployId) -> bool {
    ev.iter().any(|e| match &e.event {
        Event::DeployLive(l) => &l.deploy == d,
        Event::DeployFailed(f) => &f.deploy == d,
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_web_services_instances_stop_and_a_new_service_gets_their_room() {
    let w = World::start().await;
    let n1 = small_node(&w).await;
    let _scheduler = w.start_scheduler().await;
    let (web, d1) = w
        .create(ServiceType::WebService, |c| c.num_instances = Some(2))
        .await;
    w.wait_live(&web, &d1).await;

    // Healthy web instances leave routing before their stop; a deleted
    // service's must too, or they run on and keep the node full.
    w.command(&web, Command::Delete).await;
    let (svc, d2) = private(&w).await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(60), "deploy ended", |ev| {
            ended(ev, &d2)
        })
        .await;
    let t = types(&ev);
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, Event::DeployLive(l) if l.deploy == d2)),
        "{t:?} {:?}",
        w.events(&web)
            .await
            .iter()
            .map(|e| e.event.type_name())
            .collect::<Vec<_>>()
    );
    assert!(w.state(&web).await.instances.is_empty());
    let ids: Vec<String> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    let t0 = Instant::now();
    while containers(&[&n1]) != ids {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "containers {:?} != {ids:?}",
            containers(&[&n1])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_without_room_says_so_on_the_timeline_and_in_its_failure() {
    let w = World::start().await;
    let n1 = small_node(&w).await;
    let mut opts = scheduler_options();
    opts.readiness_window = Duration::from_secs(6);
    let _scheduler = w.start_scheduler_with(opts).await;
    let (web, d1) = w
        .create(ServiceType::WebService, |c| c.num_instances = Some(2))
        .await;
    w.wait_live(&web, &d1).await;

    let (svc, d2) = private(&w).await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(30), "deploy ended", |ev| {
            ended(ev, &d2)
        })
        .await;
    let t = types(&ev);
    let reason = format!(
        "no node has room: needs 0.5 CPU / 512 MiB, largest free 0 CPU / 0 MiB on {}",
        n1.id
    );
    let blocked: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.event {
            Event::PlacementBlocked(b) => Some((e, b)),
            _ => None,
        })
        .collect();
    // Retried until the window closed, recorded once, on the deploy.
    match blocked.as_slice() {
        [(e, b)] => {
            assert_eq!((&b.deploy, b.unplaced, &b.reason), (&d2, 1, &reason));
            assert_eq!(e.correlation_id.as_ref(), Some(&d2), "{e:?}");
        }
        other => panic!("{other:?} {t:?}"),
    }
    let failed = ev
        .iter()
        .find_map(|e| match &e.event {
            Event::DeployFailed(f) if f.deploy == d2 => Some(f.reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not failed: {t:?}"));
    assert_eq!(
        failed,
        format!("0 of 1 new instances healthy within the readiness window; 1 not placed: {reason}")
    );
    assert!(!t.contains(&"instance_scheduled"), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pre_deploy_run_without_room_says_so() {
    let w = World::start().await;
    let n1 = small_node(&w).await;
    let _scheduler = w.start_scheduler().await;
    let (web, d1) = w
        .create(ServiceType::WebService, |c| c.num_instances = Some(2))
        .await;
    w.wait_live(&web, &d1).await;

    let (svc, d2) = w
        .create(ServiceType::BackgroundWorker, |c| {
            c.pre_deploy_command = Some("true".into())
        })
        .await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(30), "placement blocked", |ev| {
            ev.iter()
                .any(|e| matches!(&e.event, Event::PlacementBlocked(b) if b.deploy == d2))
        })
        .await;
    let t = types(&ev);
    assert!(t.contains(&"pre_deploy_started"), "{t:?}");
    let b = ev
        .iter()
        .find_map(|e| match &e.event {
            Event::PlacementBlocked(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_else(|| unreachable!());
    assert_eq!(b.node.as_ref(), Some(&n1.id));
    assert!(
        b.reason
            .starts_with("no node has room: needs 0.5 CPU / 512 MiB"),
        "{b:?}"
    );
    // Room comes back: the run goes ahead and the deploy goes live.
    w.command(&web, Command::Delete).await;
    w.wait_live(&svc, &d2).await;
}

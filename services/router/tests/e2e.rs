//! Zero downtime end to end (issue #5): the real scheduler, two real nodes
//! running busybox httpd under runc with their own health checks, the real
//! resolver and registry, and the router in front — continuous load
//! through a second deploy sees no failed request and switches from v1 to
//! v2 once.

use std::time::{Duration, Instant};

use berth_schemas::model::ServiceType;
use berth_schemas::Event;
use http::StatusCode;

use crate::sched::{types, World};
use crate::support::{assert_switched_once, spawn_router, HttpClient, Load};

/// Serves `/version` (`v1` or `v2`, from the image's `V`) and the health
/// check path on `$PORT`.
const HTTPD: &str = "sh -c 'mkdir -p /www && cp /app/hello.txt /www/ && echo v$V > /www/version \
                     && exec busybox httpd -f -p $PORT -h /www'";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_a_real_deploy() {
    let w = World::start().await;
    let _n1 = w.start_node("n1").await;
    let _n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (routes, router, stop_router, _task) = spawn_router(&w.store).await.unwrap();
    let _stop = stop_router.drop_guard();

    let (svc, d1) = w
        .create(ServiceType::WebService, |c| {
            c.num_instances = Some(2);
            c.docker_command = Some(HTTPD.into());
        })
        .await;
    let name = w.state(&svc).await.config.unwrap().name;
    let host = format!("{name}.localhost");
    w.wait_live(&svc, &d1).await;

    // The router follows the log: wait until it answers from v1.
    let http = HttpClient::new(router);
    let t0 = Instant::now();
    loop {
        if let Ok((StatusCode::OK, body)) = http.get(&host, "/version").await {
            assert_eq!(body.trim(), "v1");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "router never served v1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old: Vec<String> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();

    let load = Load::start(router, &host, 8, "/version", None, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d2 = w.deploy(&svc, "v2").await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(90), "old instances stopped", |ev| {
            ev.iter()
                .filter(|e| matches!(&e.event, Event::InstanceStopped(s) if old.contains(&s.instance.to_string())))
                .count()
                == old.len()
        })
        .await;
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, Event::DeployLive(l) if l.deploy == d2)),
        "{:?}",
        types(&ev)
    );
    // Load goes on after the old containers are gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = load.finish().await.unwrap();
    let total = assert_switched_once(&seen, "v1", "v2");
    println!(
        "e2e switch: {total} requests by 8 clients, 0 failed; table at stream seq {}",
        routes.load().applied_seq
    );
    assert!(total > 100, "too little load: {total}");
}

/// A restart replaces every instance (new ones first, old ones once the new
/// serve): under load nothing fails and every answer is still v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_a_restart() {
    let w = World::start().await;
    let _n1 = w.start_node("n1").await;
    let _n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (_routes, router, stop_router, _task) = spawn_router(&w.store).await.unwrap();
    let _stop = stop_router.drop_guard();

    let (svc, d1) = w
        .create(ServiceType::WebService, |c| {
            c.num_instances = Some(2);
            c.docker_command = Some(HTTPD.into());
        })
        .await;
    let host = format!("{}.localhost", w.state(&svc).await.config.unwrap().name);
    w.wait_live(&svc, &d1).await;
    let http = HttpClient::new(router);
    let t0 = Instant::now();
    while !matches!(http.get(&host, "/version").await, Ok((StatusCode::OK, _))) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "router never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old: Vec<String> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();

    let load = Load::start(router, &host, 8, "/version", None, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.command(&svc, berth_domain::service::Command::Restart)
        .await;
    w.wait_events(&svc, Duration::from_secs(90), "old instances stopped", |ev| {
        ev.iter()
            .filter(|e| matches!(&e.event, Event::InstanceStopped(s) if old.contains(&s.instance.to_string())))
            .count()
            == old.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = load.finish().await.unwrap();
    let mut total = 0;
    for (c, s) in seen.iter().enumerate() {
        total += s.versions.len();
        assert!(
            s.failures.is_empty(),
            "client {c}: {:?}",
            &s.failures[..s.failures.len().min(3)]
        );
        assert!(s.versions.iter().all(|v| v == "v1"), "client {c}");
    }
    let now: Vec<String> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert!(
        now.iter().all(|i| !old.contains(i)),
        "an old instance survived the restart"
    );
    println!("e2e restart: {total} requests by 8 clients, 0 failed");
}

//! Zero downtime end to end: the real scheduler, real nodes running
//! busybox httpd under runc in network namespaces of their own, with their
//! own health checks, the real resolver and registry, and the router in
//! front. The server listens on 10000 whatever `PORT` says, as most images
//! do. Continuous load through a second deploy sees no failed request and
//! switches from v1 to v2 once, with both instances on one node as well as
//! on two; a deploy whose instances never become healthy never goes live
//! and the load never notices; through a restart (every instance replaced)
//! no failed request either.

use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::ids::ServiceId;
use berth_schemas::Event;
use tokio_util::sync::DropGuard;

use crate::load::{assert_switched_once, Load};
use crate::support::{live_web_service, spawn_router};
use berth_tests::scheduler::{types, RunningNode, World};

/// Serves `/version` (`v1` or `v2`, from the image's `V`) and the health
/// check path on port 10000, fixed (it reads no `PORT`); image `v3` exits
/// at once (a broken release).
const HTTPD: &str = "sh -c 'test \"$V\" != 3 && mkdir -p /www && cp /app/hello.txt /www/ \
                     && echo v$V > /www/version && exec busybox httpd -f -p 10000 -h /www'";

/// Everything running, with a web service of two instances live on v1 and
/// the router answering for it.
///
/// Fields drop in order: the nodes (killing their containers, which their
/// runc state in the world's dir names) before the world removes that dir.
struct Live {
    _nodes: Vec<RunningNode>,
    _scheduler: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ),
    _router: DropGuard,
    w: World,
    svc: ServiceId,
    host: String,
    router: std::net::SocketAddr,
    /// Ids of the instances serving now.
    old: Vec<String>,
}

impl Live {
    /// Two instances live on v1, on `nodes` nodes.
    async fn start(nodes: usize) -> Live {
        let w = World::start().await;
        let mut started = Vec::new();
        for n in 0..nodes {
            started.push(w.start_node(&format!("n{}", n + 1)).await);
        }
        let scheduler = w.start_scheduler().await;
        let (_routes, router, stop_router, _task) = spawn_router(&w.store).await.unwrap();
        let (svc, host, first) = live_web_service(&w, router, 2, HTTPD).await;
        assert_eq!(first.trim(), "v1");
        let old = instance_ids(&w, &svc).await;
        Live {
            w,
            svc,
            host,
            router,
            old,
            _nodes: started,
            _scheduler: scheduler,
            _router: stop_router.drop_guard(),
        }
    }

    /// Waits until every instance serving at the start is stopped.
    async fn old_stopped(&self) -> Vec<berth_schemas::Envelope> {
        let old = &self.old;
        self.w
            .wait_events(&self.svc, Duration::from_secs(90), "old instances stopped", |ev| {
                ev.iter()
                    .filter(|e| matches!(&e.event, Event::InstanceStopped(s) if old.contains(&s.instance.to_string())))
                    .count()
                    == old.len()
            })
            .await
    }

    fn load(&self) -> Load {
        Load::start(
            self.router,
            &self.host,
            8,
            "/version",
            None,
            Duration::from_millis(5),
        )
    }
}

async fn instance_ids(w: &World, svc: &ServiceId) -> Vec<String> {
    w.state(svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_a_real_deploy() {
    let live = Live::start(2).await;
    let load = live.load();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d2 = live.w.deploy(&live.svc, "v2").await;
    let ev = live.old_stopped().await;
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
    println!("e2e switch: {total} requests by 8 clients, 0 failed");
    assert!(total > 100, "too little load: {total}");
}

/// Both instances on one node, both on port 10000 (each in its own
/// namespace): v1 → v2 under load fails no request; a broken v3 whose
/// instances never pass their check fails and v2 goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_port_image_on_one_node_deploys_without_a_failed_request() {
    let live = Live::start(1).await;
    let load = live.load();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d2 = live.w.deploy(&live.svc, "v2").await;
    live.old_stopped().await;
    live.w.wait_live(&live.svc, &d2).await;
    let serving = instance_ids(&live.w, &live.svc).await;

    let v3 = berth_tests::agent::busybox_image(
        serde_json::json!({ "Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "V=3"] }),
    );
    live.w
        .registry
        .push_image(berth_tests::scheduler::REPO, "v3", &v3)
        .await
        .unwrap();
    let d3 = live.w.deploy(&live.svc, "v3").await;
    let ev = live
        .w
        .wait_events(&live.svc, Duration::from_secs(120), "v3 failed", |ev| {
            ev.iter()
                .any(|e| matches!(&e.event, Event::DeployFailed(f) if f.deploy == d3))
        })
        .await;
    assert!(
        !ev.iter()
            .any(|e| matches!(&e.event, Event::DeployLive(l) if l.deploy == d3)),
        "a deploy that never became healthy went live: {:?}",
        types(&ev)
    );
    // v3's instances are stopped; v2's serve on.
    let t0 = std::time::Instant::now();
    while instance_ids(&live.w, &live.svc).await != serving {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "instances of the failed deploy still placed: {:?} (serving: {serving:?})",
            instance_ids(&live.w, &live.svc).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = load.finish().await.unwrap();
    let total = assert_switched_once(&seen, "v1", "v2");
    println!("e2e one node, fixed port: {total} requests by 8 clients, 0 failed");
    assert!(total > 100, "too little load: {total}");
}

/// A restart replaces every instance (new ones first, old ones once the new
/// serve): under load nothing fails and every answer is still v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_failed_requests_through_a_restart() {
    let live = Live::start(2).await;
    let load = live.load();
    tokio::time::sleep(Duration::from_secs(1)).await;
    live.w.command(&live.svc, Command::Restart).await;
    let ev = live.old_stopped().await;
    // Each old instance left routing (instance_draining) before its stop.
    for old in &live.old {
        let at = |want: fn(&Event) -> Option<String>| {
            ev.iter()
                .position(|e| want(&e.event).as_deref() == Some(old.as_str()))
        };
        let drained = at(|e| match e {
            Event::InstanceDraining(d) => Some(d.instance.to_string()),
            _ => None,
        });
        let stopped = at(|e| match e {
            Event::InstanceStopped(d) => Some(d.instance.to_string()),
            _ => None,
        });
        assert!(
            matches!((drained, stopped), (Some(d), Some(s)) if d < s),
            "{old}: draining at {drained:?}, stopped at {stopped:?}: {:?}",
            types(&ev)
        );
    }
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
    let now = instance_ids(&live.w, &live.svc).await;
    assert_eq!(now.len(), 2);
    assert!(
        now.iter().all(|i| !live.old.contains(i)),
        "an old instance survived the restart"
    );
    println!("e2e restart: {total} requests by 8 clients, 0 failed");
    assert!(total > 100, "too little load: {total}");
}

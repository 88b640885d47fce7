//! Availability through the router while the service underneath changes:
//! a web service of two instances on three runc nodes (real scheduler,
//! resolver, registry, nodes with their own health checks, the router in
//! front), under continuous load, through `deploys` deploys one after
//! another and then the loss of a node that serves it (its component
//! aborted and its containers killed, as a machine dying would). Every
//! request's outcome is kept with its time, and the failed ones are counted
//! per phase. Run as root:
//!
//! ```text
//! cargo run --release -p berth-router --example bench_availability -- [deploys] [clients]
//! ```
//!
//! Goal: no failed request through the deploys; through the node loss the
//! failures are bounded and reported with the window they fell in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_schemas::ids::ServiceId;
use http::StatusCode;

use berth_tests::scheduler::{RunningNode, World};
use support::{live_web_service, spawn_router, HttpClient};

/// Serves `/version` (`v1` or `v2`, from the image's `V`) on port 10000,
/// fixed, as most images do.
const HTTPD: &str = "sh -c 'mkdir -p /www && cp /app/hello.txt /www/ \
                     && echo v$V > /www/version && exec busybox httpd -f -p 10000 -h /www'";

/// One request's outcome: when it ended, and whether it failed.
type Outcome = (Instant, Result<String, String>);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let deploys: usize = args.next().map_or(20, |s| s.parse().unwrap());
    let clients: usize = args.next().map_or(8, |s| s.parse().unwrap());

    let w = World::start().await;
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(w.start_node(&format!("n{n}")).await);
    }
    let _scheduler = w.start_scheduler().await;
    let (_routes, router, stop_router, _task) = spawn_router(&w.store).await.unwrap();
    let _stop_router = stop_router.drop_guard();
    let (svc, host, _) = live_web_service(&w, router, 2, HTTPD).await;

    // Load: `clients` clients, one request at a time each, 5 ms apart.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let load: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, outcomes, host) = (stop.clone(), outcomes.clone(), host.clone());
            let http = HttpClient::new(router);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = match http.get(&host, "/version").await {
                        Ok((StatusCode::OK, body)) => Ok(body.trim().to_owned()),
                        Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    outcomes.lock().unwrap().push((Instant::now(), r));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    // Phase 1: deploys one after another, each until the old instances
    // are gone.
    let deploys_from = Instant::now();
    let mut latencies = Vec::new();
    for i in 0..deploys {
        let tag = if i % 2 == 0 { "v2" } else { "v1" };
        let t = Instant::now();
        let d = w.deploy(&svc, tag).await;
        w.wait_live(&svc, &d).await;
        latencies.push(t.elapsed());
        settle(&w, &svc, 2, &[]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deploys_until = Instant::now();

    // Phase 2: a node that serves the service dies. (Requests before its
    // containers die count here too: its component stops first.)
    let serving: Vec<_> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.node.clone())
        .collect();
    let victim = nodes
        .iter()
        .position(|n| serving.contains(&n.id))
        .expect("a node serves the service");
    let lost = nodes.remove(victim);
    let lost_id = lost.id.clone();
    let lost_at = kill_machine(lost).await;
    settle(&w, &svc, 2, std::slice::from_ref(&lost_id)).await;
    let recovered = lost_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    for c in load {
        c.await.unwrap();
    }
    let all = outcomes.lock().unwrap();
    let in_phase = |from: Instant, until: Option<Instant>| {
        let of: Vec<&Outcome> = all
            .iter()
            .filter(|(t, _)| *t >= from && until.is_none_or(|u| *t < u))
            .collect();
        let failed: Vec<&Outcome> = of.iter().copied().filter(|(_, r)| r.is_err()).collect();
        (of.len(), failed)
    };
    let (n_deploys, failed_deploys) = in_phase(deploys_from, Some(deploys_until));
    let (n_loss, failed_loss) = in_phase(deploys_until, None);
    latencies.sort();
    println!("| phase | requests | failed | notes |");
    println!("|---|---|---|---|");
    println!(
        "| {deploys} deploys (2 instances, 3 nodes) | {n_deploys} | {} | deploy request → live p50 {:?}, max {:?} |",
        failed_deploys.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    let window = match (failed_loss.first(), failed_loss.last()) {
        (Some((a, _)), Some((b, _))) => format!(
            "failures from {:?} to {:?} after the loss",
            a.saturating_duration_since(lost_at),
            b.saturating_duration_since(lost_at)
        ),
        _ => "no failure".to_owned(),
    };
    println!(
        "| node loss | {n_loss} | {} | 2 healthy instances again after {recovered:?}; {window} |",
        failed_loss.len()
    );
    for (_, r) in failed_deploys.iter().chain(failed_loss.iter()).take(5) {
        println!("  e.g. {}", r.as_ref().err().unwrap());
    }
}

/// Waits until the service has `n` instances, all healthy, none on `not_on`.
async fn settle(w: &World, svc: &ServiceId, n: usize, not_on: &[berth_schemas::ids::NodeId]) {
    let t0 = Instant::now();
    loop {
        let s = w.state(svc).await;
        if s.instances.len() == n
            && s.instances
                .iter()
                .all(|i| i.is_healthy() && !not_on.contains(&i.node))
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never settled (not on {not_on:?}): {:?}\n{:?}",
            s.instances,
            berth_tests::scheduler::types(&w.events(svc).await)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The machine dies: its node component ends (so its heartbeats do; the
/// component's own stop is the only way to end all of its tasks in this
/// process) and its containers are killed. Returns when they died.
async fn kill_machine(mut node: RunningNode) -> Instant {
    node.stop().await;
    let at = Instant::now();
    node.kill_containers();
    at
}

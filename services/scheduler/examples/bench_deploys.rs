//! Deploy latency through the whole pipeline on this machine: real
//! nats-server, registry, resolver, two node components on runc, the
//! scheduler. Run as root:
//!
//! ```text
//! cargo run --release -p berth-scheduler --example bench_deploys -- [deploys] [services]
//! ```
//!
//! 1. hook → live: one web service, `deploys` (default 50) deploys one after
//!    another, alternating two tags so every deploy replaces the instance
//!    (both digests already on both nodes after the first two: warm cache);
//!    the time from the deploy request's append to `deploy_live` as seen on
//!    the service's subject.
//! 2. burst: `services` (default 200) services created at once; per-service
//!    create → live, and the time until all are live.
//!
//! Health is the node's own: the web service's busybox httpd answers its
//! health check path (probed every 100 ms while starting), workers count
//! after 300 ms up (the tests' probe timing, see `berth_tests::scheduler::health_options`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Commit, Event};
use futures::StreamExt;
use tokio::sync::mpsc;

use berth_tests::scheduler::{node_options, World};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{name}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        d.len(),
        percentile(&d, 0.5),
        percentile(&d, 0.9),
        percentile(&d, 0.99),
        d.last().copied().unwrap_or_default()
    );
}

/// `deploy_live` events as they are appended: (deploy, when seen).
async fn live_feed(w: &World) -> mpsc::UnboundedReceiver<(DeployId, Instant)> {
    let mut sub = w
        .client
        .subscribe(w.subjects().aggregate_kind("service"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Ok(c) = Commit::decode(&m.payload) else {
                continue;
            };
            for e in c.events {
                if let Event::DeployLive(l) = e.event {
                    let _ = tx.send((l.deploy, Instant::now()));
                }
            }
        }
    });
    rx
}

async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<(DeployId, Instant)>,
    seen: &mut HashMap<DeployId, Instant>,
    d: &DeployId,
) -> Instant {
    loop {
        if let Some(t) = seen.get(d) {
            return *t;
        }
        let (id, t) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("deploy live within 120 s")
            .expect("feed open");
        seen.insert(id, t);
    }
}

/// Median time between the pipeline's stages over the service's deploys,
/// from the events' own timestamps.
async fn stages(w: &World, svc: &ServiceId) {
    const NAMES: [&str; 8] = [
        "deploy_created",
        "image_resolved",
        "update_started",
        "instance_scheduled",
        "image_pulled",
        "instance_started",
        "instance_healthy",
        "deploy_live",
    ];
    let events = w
        .store
        .load(&AggregateId::Service(svc.clone()))
        .await
        .unwrap()
        .events;
    let mut deploy_of = HashMap::new();
    let mut at: HashMap<DeployId, [Option<chrono::DateTime<chrono::Utc>>; 8]> = HashMap::new();
    for e in &events {
        let (d, stage) = match &e.event {
            Event::DeployCreated(x) => (x.deploy.clone(), 0),
            Event::ImageResolved(x) => (x.deploy.clone(), 1),
            Event::UpdateStarted(x) => (x.deploy.clone(), 2),
            Event::InstanceScheduled(x) => {
                deploy_of.insert(x.instance.clone(), x.deploy.clone());
                (x.deploy.clone(), 3)
            }
            Event::ImagePulled(x) => (x.deploy.clone(), 4),
            Event::InstanceStarted(x) => match deploy_of.get(&x.instance) {
                Some(d) => (d.clone(), 5),
                None => continue,
            },
            Event::InstanceHealthy(x) => match deploy_of.get(&x.instance) {
                Some(d) => (d.clone(), 6),
                None => continue,
            },
            Event::DeployLive(x) => (x.deploy.clone(), 7),
            _ => continue,
        };
        let slot = &mut at.entry(d).or_default()[stage];
        if slot.is_none() {
            *slot = Some(e.time);
        }
    }
    let mut total: Vec<Duration> = at
        .values()
        .filter_map(|t| Some((t[7]? - t[0]?).to_std().unwrap_or_default()))
        .collect();
    total.sort();
    println!(
        "  deploy_created → deploy_live: median {:?} (n={})",
        percentile(&total, 0.5),
        total.len()
    );
    for i in 1..NAMES.len() {
        let mut gaps: Vec<Duration> = at
            .values()
            .filter_map(|t| Some((t[i]? - t[i - 1]?).to_std().unwrap_or_default()))
            .collect();
        gaps.sort();
        println!(
            "  {} → {}: median {:?} p90 {:?} (n={})",
            NAMES[i - 1],
            NAMES[i],
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.9),
            gaps.len()
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let deploys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);

    let w = World::start().await;
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let mut o = node_options(name, &w.dir.path().join(name));
        // Room for the burst: 200 starter instances are 100 CPUs.
        o.cpu_millis = 1_000_000;
        o.memory_mib = 1_000_000;
        o.concurrency = 16;
        nodes.push(w.start_node_with(o).await);
    }
    let scheduler = SchedulerThread::start(&w);
    let mut feed = live_feed(&w).await;
    let mut seen = HashMap::new();

    // 1. hook → live, sequential.
    // The shell exits on SIGTERM, so a stop is quick; with
    // BENCH_SLOW_STOP=1 it is deaf to it and every stop waits out the
    // shutdown delay (a deploy must not wait behind that).
    let trap = if std::env::var_os("BENCH_SLOW_STOP").is_some() {
        "trap \"\" TERM"
    } else {
        "trap \"exit 0\" TERM"
    };
    let (svc, d0): (ServiceId, DeployId) = w
        .create(ServiceType::WebService, |c| {
            c.docker_command = Some(format!(
                "sh -c '{trap}; busybox httpd -f -p $PORT -h /app & wait'"
            ));
        })
        .await;
    wait_for(&mut feed, &mut seen, &d0).await;
    let mut latencies = Vec::new();
    for i in 0..deploys + 2 {
        let tag = if i % 2 == 0 { "v2" } else { "v1" };
        let t0 = Instant::now();
        let d = w.deploy(&svc, tag).await;
        let live = wait_for(&mut feed, &mut seen, &d).await;
        // The first two pull their digest on a node: not warm.
        if i >= 2 {
            latencies.push(live - t0);
        }
    }
    report("hook→live (warm cache, sequential)", latencies);
    stages(&w, &svc).await;

    // 2. a burst of services at once.
    let cpu0 = scheduler.cpu();
    let t0 = Instant::now();
    let created: Vec<(ServiceId, DeployId, Instant)> = futures::stream::iter(0..services)
        .map(|_| async {
            let t = Instant::now();
            let (s, d) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
            (s, d, t)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut each = Vec::new();
    for (_, d, t) in &created {
        let live = wait_for(&mut feed, &mut seen, d).await;
        each.push(live - *t);
    }
    let all = t0.elapsed();
    let cpu = scheduler.cpu().saturating_sub(cpu0);
    report(&format!("create→live ({services} services at once)"), each);
    println!("all {services} live after {all:?}");
    println!(
        "scheduler CPU during the burst: {cpu:?} ({:.0} % of one core over {all:?})",
        100.0 * cpu.as_secs_f64() / all.as_secs_f64()
    );
    let running: usize = nodes.iter().map(|n| n.containers().len()).sum();
    println!("containers running: {running}");
    let mut total = 0;
    for (s, _, _) in &created {
        total += w
            .store
            .load(&AggregateId::Service(s.clone()))
            .await
            .unwrap()
            .events
            .len();
    }
    println!("events in the burst's services: {total}");
}

/// The scheduler on a thread of its own (a current-thread runtime with its
/// own NATS connection), so its CPU time can be read apart from the nodes,
/// the resolver and the registry that share this process.
struct SchedulerThread {
    tid: String,
    _stop: tokio_util::sync::DropGuard,
}

impl SchedulerThread {
    fn start(w: &World) -> SchedulerThread {
        let url = w.nats.url();
        let subjects = w.store.subjects().clone();
        let key = w.key.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self").unwrap();
            let tid = tid.file_name().unwrap().to_string_lossy().into_owned();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = async_nats::connect(url).await.unwrap();
                let store = berth_eventlog::EventStore::open(
                    client,
                    subjects,
                    berth_eventlog::StoreConfig::default(),
                )
                .await
                .unwrap();
                let ready = berth_runtime::ReadyFlag::default();
                let s = berth_scheduler::Scheduler::new(
                    store,
                    key,
                    berth_tests::scheduler::scheduler_options(),
                );
                let run = s.run(token, Some(ready.clone()));
                tokio::pin!(run);
                let mut sent = false;
                loop {
                    tokio::select! {
                        r = &mut run => { r.unwrap(); break; }
                        _ = tokio::time::sleep(Duration::from_millis(20)), if !sent => {
                            if ready.get() {
                                tx.send(tid.clone()).unwrap();
                                sent = true;
                            }
                        }
                    }
                }
            });
        });
        let tid = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("scheduler ready");
        SchedulerThread {
            tid,
            _stop: stop.drop_guard(),
        }
    }

    /// utime + stime of the scheduler's thread.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).unwrap();
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = 100; // USER_HZ on Linux
        Duration::from_millis(ticks * 1000 / hz)
    }
}

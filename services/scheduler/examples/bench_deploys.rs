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
//!    create → live, the time until all are live, and the CPU the burst
//!    cost per service: the whole machine's (from `/proc/stat`, so with
//!    whatever else runs), this process's (scheduler, nodes, resolver),
//!    its exited children's (runc, the CNI plugins, iptables-restore),
//!    nats-server's and the registry's, and the containers' own
//!    cgroups (runc's init before it execs, tini, the program). With
//!    `BENCH_PERF=1`, `perf record -a` samples the burst and the CPU per
//!    service is broken down by command name.
//!
//! Each node has a /21 of its own (room for 2,045 instances). Health is the
//! node's own: the web service's busybox httpd answers its health check
//! path (a starting instance is probed at once, then after 5 ms doubling up
//! to 100 ms), workers count after 300 ms up (the tests' probe timing, see
//! `berth_tests::scheduler::health_options`).

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
                match e.event {
                    Event::DeployLive(l) => {
                        let _ = tx.send((l.deploy, Instant::now()));
                    }
                    // A failure ends the bench with its reason, not a wait.
                    Event::DeployFailed(f) => panic!("deploy failed: {f:?}"),
                    _ => {}
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
        // A burst of a thousand starts queues for minutes on two cores:
        // waiting work items must not be redelivered meanwhile.
        o.ack_wait = Duration::from_secs(300);
        nodes.push(w.start_wide_node_with(o).await);
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
    let mounts0 = host_mounts();
    let cpu0 = scheduler.cpu();
    let usage0 = Usage::now();
    let perf = std::env::var_os("BENCH_PERF").map(|_| Perf::start(&w.dir.path().join("perf.data")));
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
    let usage = Usage::now().since(&usage0);
    let by_command = perf.map(Perf::stop);
    let cpu = scheduler.cpu().saturating_sub(cpu0);
    report(&format!("create→live ({services} services at once)"), each);
    println!("all {services} live after {all:?}");
    println!(
        "scheduler CPU during the burst: {cpu:?} ({:.0} % of one core over {all:?})",
        100.0 * cpu.as_secs_f64() / all.as_secs_f64()
    );
    let running: Vec<String> = nodes.iter().flat_map(|n| n.containers()).collect();
    println!("containers running: {}", running.len());
    println!(
        "host mounts: {mounts0} before the burst, {} after (each container start copies them)",
        host_mounts()
    );
    let per = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3 / services as f64);
    // Every container running is the burst's but the web service's one.
    let containers: Duration = running.iter().filter_map(|c| container_cpu(c)).sum();
    println!(
        "CPU per service of the burst (load average {}):",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "  whole machine {} ({:.2} of {} cores busy; other work on the machine included)",
        per(usage.machine),
        usage.machine.as_secs_f64() / all.as_secs_f64(),
        usage.cores
    );
    println!(
        "  this process {} (of which the scheduler {}); its exited children {}; nats-server {}; registry {}; the containers' cgroups {}",
        per(usage.own),
        per(cpu),
        per(usage.children),
        per(usage.nats),
        per(usage.registry),
        per(containers)
    );
    println!(
        "  all of the bench's own {}",
        per(usage.own + usage.children + usage.nats + usage.registry + containers)
    );
    if let Some(by_command) = by_command {
        println!("  by command (perf, all CPUs):");
        for (comm, d) in by_command.iter().take(25) {
            println!("    {:>9} {comm}", per(*d));
        }
    }
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

/// CPU time of a container's cgroup (`/berth/<id>`, as the node's bundles
/// set it), cgroup v2 or v1.
fn container_cpu(id: &str) -> Option<Duration> {
    let v2 = format!("/sys/fs/cgroup/berth/{id}/cpu.stat");
    if let Ok(s) = std::fs::read_to_string(&v2) {
        let us: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        return Some(Duration::from_micros(us));
    }
    ["cpu,cpuacct", "cpuacct,cpu", "cpuacct"]
        .iter()
        .find_map(|h| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{h}/berth/{id}/cpuacct.usage")).ok()
        })
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_nanos)
}

/// CPU time so far: the machine's, this process's, its exited children's
/// and its live children's (nats-server, registry).
struct Usage {
    machine: Duration,
    cores: usize,
    own: Duration,
    children: Duration,
    nats: Duration,
    registry: Duration,
}

impl Usage {
    fn now() -> Usage {
        let hz = 100.0; // USER_HZ on Linux
        let ticks = |t: u64| Duration::from_secs_f64(t as f64 / hz);
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        // user nice system (idle iowait) irq softirq steal
        let busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7];
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let me = proc_stat("self").unwrap();
        let (mut nats, mut registry) = (0, 0);
        let pid = std::process::id().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(s) = name.parse::<u32>().ok().and_then(|_| proc_stat(&name)) else {
                continue;
            };
            if s.ppid == pid {
                match s.comm.as_str() {
                    "nats-server" => nats += s.utime + s.stime,
                    "docker-registry" | "registry" => registry += s.utime + s.stime,
                    _ => {}
                }
            }
        }
        Usage {
            machine: ticks(busy),
            cores,
            own: ticks(me.utime + me.stime),
            children: ticks(me.cutime + me.cstime),
            nats: ticks(nats),
            registry: ticks(registry),
        }
    }

    fn since(&self, before: &Usage) -> Usage {
        Usage {
            machine: self.machine.saturating_sub(before.machine),
            cores: self.cores,
            own: self.own.saturating_sub(before.own),
            children: self.children.saturating_sub(before.children),
            nats: self.nats.saturating_sub(before.nats),
            registry: self.registry.saturating_sub(before.registry),
        }
    }
}

struct ProcStat {
    comm: String,
    ppid: String,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Fields of `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // After the command: state (3), ppid (4), … utime (14), stime (15),
    // cutime (16), cstime (17).
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse().ok());
    Some(ProcStat {
        comm,
        ppid: f.get(1)?.to_string(),
        utime: n(14)?,
        stime: n(15)?,
        cutime: n(16)?,
        cstime: n(17)?,
    })
}

/// `perf record -a` of the CPU clock at 1 kHz (a sample is a millisecond
/// of one CPU) while the burst runs.
struct Perf {
    child: std::process::Child,
    data: std::path::PathBuf,
}

impl Perf {
    fn start(data: &std::path::Path) -> Perf {
        let data = data.to_owned();
        let child = std::process::Command::new("perf")
            .args(["record", "-a", "-e", "cpu-clock", "-F", "1000", "-q", "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf on PATH");
        // perf needs a moment before it samples.
        std::thread::sleep(Duration::from_millis(500));
        Perf { child, data }
    }

    /// CPU time by command name, most first.
    fn stop(mut self) -> Vec<(String, Duration)> {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = std::process::Command::new("perf")
            .args(["report", "--sort", "comm", "-n", "--stdio", "-i"])
            .arg(&self.data)
            .output()
            .expect("perf report");
        let mut v: Vec<(String, Duration)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let _pct = w.next()?;
                let samples: u64 = w.next()?.parse().ok()?;
                let comm = w.collect::<Vec<_>>().join(" ");
                Some((comm, Duration::from_millis(samples)))
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
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
                // Deploys of a large burst wait for the node longer than
                // the tests' 60 s readiness window.
                let opts = berth_scheduler::SchedulerOptions {
                    readiness_window: Duration::from_secs(900),
                    ..berth_tests::scheduler::scheduler_options()
                };
                let s = berth_scheduler::Scheduler::new(store, key, opts);
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

/// Entries of this process's mount table (the host's: the nodes run here).
fn host_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

//! Deploy hook throughput against a baseline, in the same run, on loopback:
//!
//! ```text
//! cargo run --release -p berth-api --example bench_hooks -- [seconds] [connections] [services] [rounds]
//! ```
//!
//! - baseline: a minimal axum handler doing one JetStream publish + ack
//!   (its own stream on the same server, 200-byte payload);
//! - hooks: `GET /deploy/srv-…?key=…` spread over `services` services
//!   (default 64; CI pipelines hook their own service), each call a real
//!   decision: load the service, open the sealed hook key, compare, append
//!   `deploy_created` (+ `deploy_queued`) with the expected sequence;
//! - hooks on one service: every call contends for one subject;
//! - the store's floor: one bare `EventStore::append` per request (new
//!   aggregate, no decision), to tell the store's cost from the hook's.
//!
//! wrk (`-t2 -c<connections> --latency`) drives each for `seconds` (default
//! 10), in `rounds` (default 3) that interleave the four; the bar is the
//! median per-round ratio of hooks to baseline ≥ 50 % with p99 < 25 ms.
//! Each run also reports the CPU one request cost this process and
//! nats-server (from `/proc/<pid>/stat`), so the gap between hooks and the
//! floor shows where it is spent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;

use async_nats::jetstream;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use berth_tests::bench::cpu_secs;
use tokio::net::TcpListener;

/// The berth binary's allocator, so the figures are what `berth up` gives.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Run {
    rps: f64,
    p99_ms: f64,
    /// CPU per request, in µs: this process (the handler, berth's store and
    /// read model) and nats-server.
    cpu_us: (f64, f64),
}

fn ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap() / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap()
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap() * 1000.0
    } else {
        panic!("unknown latency {s}")
    }
}

fn wrk(
    name: &str,
    addr: SocketAddr,
    paths: &[String],
    (secs, conns): (u32, u32),
    nats_pid: &str,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("paths.lua");
    let list = paths
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        &script,
        format!(
            "paths = {{{list}}}\ni = 0\nrequest = function()\n  i = i + 1\n  \
             return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n"
        ),
    )
    .unwrap();
    let cpu_before = (cpu_secs("self"), cpu_secs(nats_pid));
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{addr}"))
        .output()
        .expect("wrk is installed");
    let cpu = (
        cpu_secs("self") - cpu_before.0,
        cpu_secs(nats_pid) - cpu_before.1,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(ms)
        .unwrap();
    if text.contains("Non-2xx") {
        panic!("{name}: non-2xx answers:\n{text}");
    }
    let requests = rps * f64::from(secs);
    let cpu_us = (cpu.0 / requests * 1e6, cpu.1 / requests * 1e6);
    println!(
        "{name}: {rps:.0} req/s, p99 {p99:.2} ms, CPU per request {:.1} µs here + {:.1} µs nats-server",
        cpu_us.0, cpu_us.1
    );
    Run {
        rps,
        p99_ms: p99,
        cpu_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The run with the median requests/s (its p99 goes with it).
fn median_run(runs: &[Run]) -> Run {
    let mut v: Vec<&Run> = runs.iter().collect();
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let m = v[v.len() / 2];
    Run {
        rps: m.rps,
        p99_ms: m.p99_ms,
        cpu_us: m.cpu_us,
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn publish(State((js, payload)): State<(jetstream::Context, bytes::Bytes)>) -> &'static str {
    js.publish("bench.hook", payload)
        .await
        .unwrap()
        .await
        .unwrap();
    "{\"ok\":true}"
}

/// The store's floor: one `EventStore::append` (expected sequence, message
/// id, MessagePack commit, followed by the API's read model) per request,
/// with no decision and no hook desk.
async fn append_only(State(store): State<berth_eventlog::EventStore>) -> &'static str {
    use berth_schemas::ids::{OwnerId, UserId};
    let owner = OwnerId::User(UserId::generate());
    let event = berth_schemas::events::OwnerCreated {
        owner: owner.clone(),
        name: "bench".into(),
    };
    let new = berth_eventlog::NewEvent::new(event, berth_schemas::Actor::DeployHook);
    let key = format!("bench-{owner}");
    store
        .append(
            &berth_schemas::AggregateId::Owner(owner),
            berth_eventlog::Version::NEW,
            vec![new],
            &key,
        )
        .await
        .unwrap();
    "{\"ok\":true}"
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let secs = args.first().copied().unwrap_or(10);
    let conns = args.get(1).copied().unwrap_or(32);
    let services = args.get(2).copied().unwrap_or(64);
    let rounds = args.get(3).copied().unwrap_or(3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (app, base, api, hooks, one, floor) = rt.block_on(async {
        let app = support::App::start(true).await;
        let owner = app.owner().await;
        let mut hooks = Vec::new();
        for i in 0..services {
            hooks.push(app.service(&owner, &format!("bench-{i}")).await.1);
        }
        // The resolver was needed to create the services; it is not part of
        // the hook path, so it does not compete for the two cores.
        app.resolver_stop.cancel();
        let js = app.store.jetstream().clone();
        js.create_stream(jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let payload = bytes::Bytes::from(vec![b'x'; 200]);
        let base = serve(
            Router::new()
                .route("/", get(publish))
                .with_state((js, payload)),
        )
        .await;
        let api = serve(berth_api::router(app.state.clone())).await;
        let floor = serve(
            Router::new()
                .route("/", get(append_only))
                .with_state(app.store.clone()),
        )
        .await;
        let one = vec![hooks[0].clone()];
        (app, base, api, hooks, one, floor)
    });
    let nats_pid = app.nats.pid().expect("nats-server runs").to_string();
    let handlers = [
        (
            "baseline publish+ack".to_owned(),
            base,
            vec!["/".to_owned()],
        ),
        (format!("hooks over {services} services"), api, hooks),
        ("hooks on one service".to_owned(), api, one),
        (
            "store.append only (no decision)".to_owned(),
            floor,
            vec!["/".to_owned()],
        ),
    ];
    // Rounds interleave the four handlers, so a burst of load from elsewhere
    // on the machine hits all of them rather than one; medians are reported,
    // and the bar is judged on the median of the per-round ratios.
    let mut runs: [Vec<Run>; 4] = Default::default();
    for round in 0..rounds {
        println!("-- round {} of {rounds}", round + 1);
        for (runs, (name, addr, paths)) in runs.iter_mut().zip(&handlers) {
            runs.push(wrk(name, *addr, paths, (secs, conns), &nats_pid));
        }
    }
    let ratio_of = |k: usize| {
        median(
            runs[k]
                .iter()
                .zip(&runs[0])
                .map(|(r, b)| r.rps / b.rps)
                .collect(),
        )
    };
    let (baseline, spread, single, store) = (
        median_run(&runs[0]),
        median_run(&runs[1]),
        median_run(&runs[2]),
        median_run(&runs[3]),
    );
    let per_round: Vec<String> = runs[1]
        .iter()
        .zip(&runs[0])
        .map(|(r, b)| format!("{:.0} %", r.rps / b.rps * 100.0))
        .collect();
    println!(
        "medians of {rounds} rounds: baseline {:.0} req/s, hooks {:.0} req/s (p99 {:.2} ms), \
         one service {:.0} req/s, floor {:.0} req/s",
        baseline.rps, spread.rps, spread.p99_ms, single.rps, store.rps
    );
    let ratio = ratio_of(1);
    println!(
        "ratio hooks/baseline: {:.0} % (median of rounds: {}; bar >= 50 %), hooks p99 {:.2} ms (bar < 25 ms): {}",
        ratio * 100.0,
        per_round.join(", "),
        spread.p99_ms,
        if ratio >= 0.5 && spread.p99_ms < 25.0 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!(
        "one service: {:.0} % of baseline, p99 {:.2} ms",
        ratio_of(2) * 100.0,
        single.p99_ms
    );
    println!(
        "store.append floor: {:.0} % of baseline; hooks: {:.0} % of that floor",
        ratio_of(3) * 100.0,
        spread.rps / store.rps * 100.0
    );
    // Where the difference to the floor goes: the CPU each request costs
    // this process (handler, decision, store, read model) and nats-server.
    let cpu_of = |k: usize| {
        (
            median(runs[k].iter().map(|r| r.cpu_us.0).collect()),
            median(runs[k].iter().map(|r| r.cpu_us.1).collect()),
        )
    };
    let (hooks_cpu, floor_cpu) = (cpu_of(1), cpu_of(3));
    println!(
        "CPU per request (medians of rounds): hooks {:.1} µs here + {:.1} µs nats-server, \
         floor {:.1} + {:.1} µs: a hook costs {:+.1} µs here and {:+.1} µs in nats-server",
        hooks_cpu.0,
        hooks_cpu.1,
        floor_cpu.0,
        floor_cpu.1,
        hooks_cpu.0 - floor_cpu.0,
        hooks_cpu.1 - floor_cpu.1
    );
    drop(app);
}

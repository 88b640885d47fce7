//! Router overhead: `wrk` against one backend directly, then through the
//! router (Host header), same backend, same settings, one after the other.
//!
//! `cargo run --release -p berth-router --example bench_router -- [secs] [conns]`
//! (needs `wrk` and a nats-server; see berth-tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
mod support;

use std::process::Command;

use anyhow::{Context, Result};
use berth_schemas::model::ServiceType;

use support::{Backend, Env, Svc};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let conns: u64 = args.next().map_or(Ok(32), |s| s.parse())?;

    let env = Env::start().await?;
    let backend = Backend::start("v1", 1).await?;
    let mut svc = Svc::create(&env.store, "bench", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let direct = wrk(&format!("http://{}/", backend.addr), None, secs, conns)?;
    let routed = wrk(
        &format!("http://{}/", env.addr),
        Some("bench.localhost"),
        secs,
        conns,
    )?;
    println!("| path | req/s | p50 | p90 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, r) in [("direct", &direct), ("via router", &routed)] {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            r.rps, r.p50, r.p90, r.p99
        );
    }
    println!(
        "router throughput = {:.0}% of direct ({conns} connections, {secs} s each)",
        100.0 * routed.rps / direct.rps
    );
    Ok(())
}

struct Wrk {
    rps: f64,
    p50: String,
    p90: String,
    p99: String,
}

fn wrk(url: &str, host: Option<&str>, secs: u64, conns: u64) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(!text.contains("Non-2xx"), "errors from {url}:\n{text}");
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let rps = field("Requests/sec:")
        .context(text.clone())?
        .parse::<f64>()?;
    Ok(Wrk {
        rps,
        p50: field("50%").unwrap_or_default(),
        p90: field("90%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
    })
}

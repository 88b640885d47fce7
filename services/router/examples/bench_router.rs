//! Router overhead: `wrk` against one backend directly, then through the
//! router (Host header), same backend, same settings, one after the other.
//! With `https`, also through the router's TLS listener (the operator's
//! wildcard certificate, made here), on kept connections and with a new
//! connection (TLS handshake) per request, against plain HTTP with a new
//! connection per request.
//!
//! `cargo run --release -p berth-router --example bench_router -- [secs] [conns] [https]`
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
    let https = args.next().as_deref() == Some("https");
    let dir = tempfile::tempdir()?;
    let mut router_args = support::test_args();
    let https_addr = format!("127.0.0.1:{}", berth_tests::free_port());
    if https {
        let ca = berth_tests::pebble::TestCa::new()?;
        let (chain, key) = ca.leaf(&["*.localhost"])?;
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, chain)?;
        std::fs::write(&key_file, key)?;
        router_args.router_https_addr = Some(https_addr.clone());
        router_args.router_tls_cert = Some(cert_file);
        router_args.router_tls_key = Some(key_file);
        // Redirects would answer plain HTTP before it reaches the backend.
        router_args.router_https_redirect = false;
    }

    let env = Env::start_with(router_args).await?;
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
    let mut rows = vec![("direct", direct), ("via router", routed)];
    if https {
        let host = Some("bench.localhost");
        let close = Some("close");
        let http = format!("http://{}/", env.addr);
        let tls = format!("https://{https_addr}/");
        rows.push((
            "via router, HTTPS",
            wrk_with(&tls, host, None, secs, conns)?,
        ));
        rows.push((
            "via router, new connection per request",
            wrk_with(&http, host, close, secs, conns)?,
        ));
        rows.push((
            "via router, HTTPS, new connection (TLS handshake) per request",
            wrk_with(&tls, host, close, secs, conns)?,
        ));
    }
    let (direct, routed) = (&rows[0].1, &rows[1].1);
    println!("| path | req/s | p50 | p90 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, r) in &rows {
        println!(
            "| {name} | {:.0} | {} | {} | {} |",
            r.rps, r.p50, r.p90, r.p99
        );
    }
    println!(
        "router throughput = {:.0}% of direct ({conns} connections, {secs} s each)",
        100.0 * routed.rps / direct.rps
    );
    drop(dir);
    Ok(())
}

struct Wrk {
    rps: f64,
    p50: String,
    p90: String,
    p99: String,
}

fn wrk(url: &str, host: Option<&str>, secs: u64, conns: u64) -> Result<Wrk> {
    wrk_with(url, host, None, secs, conns)
}

/// `connection`: a `Connection` header to send (`close`: one request per
/// connection).
fn wrk_with(
    url: &str,
    host: Option<&str>,
    connection: Option<&str>,
    secs: u64,
    conns: u64,
) -> Result<Wrk> {
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
    if let Some(c) = connection {
        cmd.args(["-H", &format!("Connection: {c}")]);
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

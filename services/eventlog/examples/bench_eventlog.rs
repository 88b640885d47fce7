//! Runs `berth_eventlog::bench::eventlog` against a nats-server:
//! `cargo run --release -p berth-eventlog --example bench_eventlog -- nats://127.0.0.1:4222 [events]`
//! (`events` scales the 1M-event rebuild; the other phases use the sizes).

use anyhow::Context;
use berth_eventlog::bench::{eventlog, BenchOptions};

/// The berth binary's allocator, so figures match `berth bench eventlog`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let mut opts = BenchOptions::default();
    if let Some(n) = args.next() {
        opts.rebuild_events = n.parse().context("events must be a number")?;
    }
    let client = async_nats::connect(&url).await.context("connect")?;
    let prefix = format!("bench{}", std::process::id());
    let subjects = berth_schemas::Subjects::new(&prefix)?;
    let report = eventlog(client, subjects, opts).await?;
    println!("{report}");
    Ok(())
}

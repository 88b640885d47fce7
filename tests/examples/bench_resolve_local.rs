//! `cargo run --release -p berth-tests --example bench_resolve_local [ROUNDS]`
//!
//! Starts a throwaway `docker-registry` on loopback, pushes a small image and
//! prints [`berth_tests::bench::resolve`]'s table: berth's tag → digest resolve
//! beside `curl -sI` of the same manifest and a raw HEAD, interleaved in the
//! same run (bar: resolve p50 ≤ 1.5× curl).

use anyhow::Context;
use berth_tests::image::small_image;
use berth_tests::registry::{Registry, RegistryAuth};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = match std::env::args().nth(1) {
        Some(n) => n.parse().context("ROUNDS must be a number")?,
        None => 500,
    };
    let registry = Registry::start(RegistryAuth::None).await?;
    registry
        .push_image("bench/resolve", "v1", &small_image("amd64")?)
        .await?;
    let report =
        berth_tests::bench::resolve::run(&registry.url(), "bench/resolve", "v1", rounds).await?;
    println!("{report}");
    Ok(())
}

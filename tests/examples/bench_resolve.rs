//! Resolve benchmark against a registry you started (it starts nothing):
//! `cargo run --release -p berth-tests --example bench_resolve -- \
//!    http://127.0.0.1:5000 library/app v1 200`
//! Prints resolve p50/p90 next to `curl -sI` and a raw reqwest HEAD of the
//! same manifest, measured interleaved in the same run.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, repo, tag, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_resolve REGISTRY_URL REPO TAG [ROUNDS]");
    };
    let n = match rest.first() {
        Some(n) => n.parse().context("ROUNDS must be a number")?,
        None => 200,
    };
    let report = berth_tests::bench::resolve::run(url, repo, tag, n).await?;
    println!("{report}");
    Ok(())
}

//! `cargo run --release -p berth-puller --example bench_pull`
//!
//! Starts a throwaway `docker-registry`, pushes a 4-layer image of random
//! data (BENCH_LAYER_MB per layer, default 61 → ~256 MB), and prints
//! [`berth_tests::bench::pull`]'s table: cold pull vs `skopeo copy`,
//! unpack vs `umoci unpack`, warm re-pull. BENCH_ROUNDS (default 3).

use anyhow::Result;
use berth_tests::image::{build_image, ImageOptions, Layer};
use berth_tests::registry::{Registry, RegistryAuth};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let layer_mb = env_usize("BENCH_LAYER_MB", 61);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let reg = Registry::start(RegistryAuth::None).await?;
    let layers = (0..4)
        .map(|_| Layer::random(layer_mb << 20))
        .collect::<Result<Vec<_>>>()?;
    let image = build_image(&ImageOptions::linux("amd64"), layers)?;
    reg.push_image("bench/pull", "v1", &image).await?;
    let work = tempfile::tempdir()?;
    let report = berth_tests::bench::pull::run(&berth_tests::bench::pull::BenchConfig {
        host: reg.host.clone(),
        repository: "bench/pull".into(),
        tag: "v1".into(),
        digest: image.digest.clone(),
        work_dir: work.path().to_path_buf(),
        rounds,
        warm_pulls: 20,
    })
    .await?;
    print!("{report}");
    Ok(())
}

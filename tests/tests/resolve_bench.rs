//! The resolve performance bar, run on demand (timing on a shared machine
//! is too noisy for every CI run):
//! `cargo test --release -p berth-tests --test integration resolve_bench -- --ignored --nocapture`
//! resolve (tag → digest) p50 against `curl -sI` of the same manifest and a
//! raw reqwest HEAD, interleaved in one run against a harness registry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_tests::image::{build_image, ImageOptions, Layer};
use berth_tests::registry::{Registry, RegistryAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn resolve_p50_within_one_and_a_half_curl_head() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::random(1_000).unwrap(), Layer::random(2_000).unwrap()],
    )
    .unwrap();
    reg.push_image("bench/app", "v1", &img).await.unwrap();
    let report = berth_tests::bench::resolve::run(&reg.url(), "bench/app", "v1", 300)
        .await
        .unwrap();
    println!("{report}");
    assert!(report.ratio_vs_curl() <= 1.5, "{report}");
}

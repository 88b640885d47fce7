//! Transient registry failures: a stopped registry ends in
//! `registry_unavailable` after the bounded retries, a registry that comes
//! back is picked up, and `Retry-After` (on 429 and 503) is honoured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use berth_oci::{ClientConfig, ImageRef, PullFailureReason, RegistryClient, RetryPolicy};
use berth_tests::image::small_image;
use berth_tests::registry::flaky::FlakyProxy;
use berth_tests::registry::{Registry, RegistryAuth};

fn client(initial_ms: u64, max_ms: u64, total_ms: u64) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            max_total: Duration::from_millis(total_ms),
        },
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn stopped_registry_is_unavailable_after_bounded_retries_and_recovers() {
    let mut reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("app", "v1", &img).await.unwrap();
    let r = ImageRef::new(&reg.host, "app", "v1").unwrap();
    let c = client(50, 200, 1_000);
    c.resolve(&r, None).await.unwrap();

    reg.stop();
    let t = Instant::now();
    let e = c.resolve(&r, None).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");
    // 50+100+200+200+200 ms of backoff fit in 1 s; the next would not.
    assert!(took >= Duration::from_millis(700), "retried for {took:?}");
    assert!(took <= Duration::from_millis(1_500), "bounded: {took:?}");
    assert!(e.to_string().contains("attempt"), "{e}");
    let e = c
        .head_digest_exists(&reg.host, "app", &img.digest, None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");

    // Comes back while a resolve is retrying: that resolve succeeds.
    let patient = client(50, 200, 10_000);
    let task = tokio::spawn({
        let r = r.clone();
        async move { patient.resolve(&r, None).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    reg.start_again().await.unwrap();
    assert_eq!(task.await.unwrap().unwrap().digest, img.digest);
}

async fn gap_after_first_failure(status: u16, retry_after: Option<&str>) -> (Duration, FlakyProxy) {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("app", "v1", &img).await.unwrap();
    let proxy = FlakyProxy::start(&reg.host, 1, status, retry_after)
        .await
        .unwrap();
    let c = client(10, 100, 10_000);
    let got = c
        .resolve(&ImageRef::new(&proxy.host, "app", "v1").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(got.digest, img.digest);
    let seen = proxy.requests();
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(seen[0].1, status);
    assert_eq!(seen[1].1, 200);
    (seen[1].0 - seen[0].0, proxy)
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let (gap, _p) = gap_after_first_failure(429, Some("1")).await;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "{gap:?}");
}

#[tokio::test]
async fn retry_after_on_503_is_honoured_and_without_it_backoff_applies() {
    let (gap, _p) = gap_after_first_failure(503, Some("1")).await;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    let (gap, _p) = gap_after_first_failure(503, None).await;
    assert!(
        gap >= Duration::from_millis(10) && gap < Duration::from_millis(900),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_budget_gives_up_at_once_and_5xx_forever_is_unavailable() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("app", "v1", &img).await.unwrap();

    let slow = FlakyProxy::start(&reg.host, 100, 429, Some("3600"))
        .await
        .unwrap();
    let c = client(10, 100, 2_000);
    let t = Instant::now();
    let e = c
        .resolve(&ImageRef::new(&slow.host, "app", "v1").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "did not wait an hour: {:?}",
        t.elapsed()
    );
    assert_eq!(slow.requests().len(), 1);

    let broken = FlakyProxy::start(&reg.host, 1_000, 502, None)
        .await
        .unwrap();
    let c = client(10, 50, 500);
    let e = c
        .resolve(&ImageRef::new(&broken.host, "app", "v1").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");
    assert!(
        broken.requests().len() >= 5,
        "retried: {}",
        broken.requests().len()
    );
}

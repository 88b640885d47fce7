//! Zero downtime through a deploy (SPEC §6, issue #5), the router's half:
//! continuous concurrent load while the log records a rollout exactly as
//! the scheduler and nodes do — new instances started and healthy (no
//! traffic yet), `deploy_live` (the switch), old instances stopped, old
//! servers shut down gracefully with their in-flight requests finishing —
//! gives no failed request, and every client's answers go from v1 to v2
//! and never back.

use std::time::{Duration, Instant};

use anyhow::Result;
use berth_schemas::model::ServiceType;

use crate::load::{assert_switched_once, Load};
use crate::support::{Backend, Env, Svc};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_through_a_switch() -> Result<()> {
    rollout_under_load(None).await
}

/// The node may stop the old instances before this router has applied the
/// `deploy_live` (it lags the log): requests that find every old instance
/// refusing wait for the next table instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_instances_gone_before_the_router_sees_the_switch() -> Result<()> {
    rollout_under_load(Some(Duration::from_millis(150))).await
}

/// `lag`: the old servers go down this long before the switch is appended.
async fn rollout_under_load(lag: Option<Duration>) -> Result<()> {
    let env = Env::start().await?;
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for i in 1..=3 {
        v1.push(Backend::start("v1", i).await?);
        v2.push(Backend::start("v2", i).await?);
    }
    let mut s = Svc::create(&env.store, "zd", ServiceType::WebService).await?;
    let old = s
        .first_deploy(1, &v1.iter().map(|b| b.addr).collect::<Vec<_>>())
        .await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    // Every 16th request is slow, so some are in flight on the old
    // instances when they are told to stop.
    let load = Load::start(
        env.addr,
        "zd.localhost",
        CLIENTS,
        "/",
        Some(("/slow", 16)),
        Duration::ZERO,
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The new deploy's instances start and pass their checks…
    let deploy = s.request_deploy().await?;
    s.resolve_and_update(2).await?;
    let new = s
        .start_instances(&deploy, 2, &v2.iter().map(|b| b.addr).collect::<Vec<_>>())
        .await?;
    let seq = s.healthy(&new).await?;
    env.synced(seq).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …and get no traffic until the deploy is live.
    let early: u64 = v2.iter().map(Backend::hits).sum();
    assert_eq!(
        early, 0,
        "healthy instances of a deploy not yet live got traffic"
    );

    // The switch, then the old instances stop (the scheduler's order) and
    // their servers shut down at once, finishing what they are answering.
    let v1_hits_at_stop = if let Some(lag) = lag {
        for b in &mut v1 {
            b.shutdown().await;
        }
        let hits: u64 = v1.iter().map(Backend::hits).sum();
        tokio::time::sleep(lag).await;
        s.live(&deploy, 2).await?;
        s.stopped(&old).await?;
        hits
    } else {
        let t = Instant::now();
        let seq = s.live(&deploy, 2).await?;
        while env.routes.load().applied_seq < seq {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        println!(
            "deploy_live appended and applied by the router in {:?}",
            t.elapsed()
        );
        s.stopped(&old).await?;
        let hits: u64 = v1.iter().map(Backend::hits).sum();
        for b in &mut v1 {
            b.shutdown().await;
        }
        hits
    };

    let remaining = Duration::from_millis(2500).saturating_sub(started.elapsed());
    tokio::time::sleep(remaining.max(Duration::from_millis(1000))).await;
    let seen = load.finish().await?;
    let total = assert_switched_once(&seen, "v1", "v2");
    let v2_hits: u64 = v2.iter().map(Backend::hits).sum();
    println!(
        "switch (lag {lag:?}): {total} requests by {CLIENTS} clients in {:?}, 0 failed; v1 answered {v1_hits_at_stop} before its stop, v2 {v2_hits}",
        started.elapsed(),
    );
    assert!(total > 200, "too little load to mean anything: {total}");
    for b in &v2 {
        assert!(b.hits() > 0, "{} got no traffic", b.label);
    }
    Ok(())
}

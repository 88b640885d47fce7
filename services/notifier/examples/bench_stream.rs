//! How fast the notifier's integration stream catches up with the log:
//!
//! ```text
//! cargo run --release -p berth-notifier --example bench_stream -- [commits] [services]
//! ```
//!
//! On a nats-server of its own (the current one), writes one owner,
//! `services` services (default 64) and `commits` one-event commits
//! (default 20,000; `instance_count_changed`, a timeline event) spread over
//! them, then starts the notifier on that log and times until every
//! timeline event has been published on `<prefix>.events.>` (counted by a
//! subscriber on the same server), and until the consumer deciding
//! notifications has caught up too. Prints commits per second: the rate
//! at which the integration stream (and the bridges behind it) and failure
//! notifications catch up after a burst of deploys or a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use berth_schemas::events::InstanceCountChanged;
use berth_schemas::model::NotifySetting;
use berth_tests::eventlog::open_store;
use berth_tests::{NatsServer, NatsVersion};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let commits: usize = args.next().map_or(20_000, |a| a.parse().unwrap());
    let services: usize = args.next().map_or(64, |a| a.parse().unwrap());
    let nats = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = nats.connect().await.unwrap();
    let store = open_store(&client, 1).await.unwrap();
    let key = berth_runtime::SecretKey::from_base64(&berth_runtime::SecretKey::generate_base64())
        .unwrap();
    let owner = support::owner(
        &store,
        &key,
        NotifySetting::None,
        &support::Channels::default(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..services {
        ids.push(support::service(&store, &key, &owner, None).await.unwrap());
    }
    // Each service's commits in order, the services side by side.
    let t0 = Instant::now();
    let per = commits / services;
    let writers: Vec<_> = ids
        .into_iter()
        .map(|(id, version)| {
            let store = store.clone();
            let events = (0..per)
                .map(|n| {
                    let from = 1 + (n % 2) as u32;
                    InstanceCountChanged { from, to: 3 - from }.into()
                })
                .collect();
            tokio::spawn(async move { support::append(&store, &id, version, events).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let written = per * services;
    println!(
        "log: {written} commits over {services} services (+ their creation), written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let mut sub = client
        .subscribe(format!("{}.events.>", store.subjects().prefix()))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let running = support::Running::spawn(&store, &key, berth_notifier::NotifierOptions::default());
    let start = Instant::now();
    // The consumer deciding notifications follows the same commits.
    let decided = tokio::spawn({
        let js = store.jetstream().clone();
        let stream = store.subjects().events_stream();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let Ok(s) = js.get_stream(&stream).await else {
                    continue;
                };
                let Ok(mut c) = s
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                        "notifier-decide",
                    )
                    .await
                else {
                    continue;
                };
                let Ok(i) = c.info().await else { continue };
                if i.num_pending == 0 && i.num_ack_pending == 0 {
                    return start.elapsed().as_secs_f64();
                }
            }
        }
    });
    let mut seen = 0usize;
    while seen < written {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(_)) => seen += 1,
            _ => panic!("published {seen} of {written} timeline events"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let decided = decided.await.unwrap();
    running.stop().await.unwrap();
    println!(
        "integration stream: {seen} events published in {secs:.2} s = {:.0} commits/s",
        seen as f64 / secs
    );
    println!(
        "notification decisions: caught up in {decided:.2} s = {:.0} commits/s",
        written as f64 / decided
    );
}

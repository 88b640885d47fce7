//! Replicated (R3) event streams: exactly one winner per version on a
//! current 3-node cluster; refused, with a clear error, on 2.9.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_eventlog::{EventStore, StoreConfig, StoreError};
use berth_tests::eventlog::{contend, open_store, race_rounds};
use berth_tests::{init_tracing, unique_subjects, NatsCluster, NatsVersion};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_on_modern_cluster_has_one_winner_per_version() {
    init_tracing();
    let cluster = NatsCluster::start(NatsVersion::Modern, 3).await.unwrap();
    let client = cluster.connect().await.unwrap();
    let store = open_store(&client, 3).await.unwrap();
    let winners = race_rounds(&store, 8, 40).await.unwrap();
    assert!(
        winners.iter().all(|w| *w == 1),
        "winners per round: {winners:?}"
    );
    let seen = contend(&store, 4, 100).await.unwrap();
    assert!(seen.conflicts > 0, "no contention happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_on_legacy_cluster_is_refused() {
    init_tracing();
    let cluster = NatsCluster::start(NatsVersion::Legacy, 3).await.unwrap();
    let client = cluster.connect().await.unwrap();
    let cfg = StoreConfig {
        replicas: 3,
        ..StoreConfig::default()
    };
    match EventStore::open(client.clone(), unique_subjects(), cfg).await {
        Err(e @ StoreError::ReplicasNeedNewerServer { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("2.9.10") && text.contains("2.11"),
                "unclear error: {text}"
            );
        }
        other => panic!("R3 on 2.9 must be refused, got {other:?}"),
    }
    // R1 on the same cluster is fine.
    open_store(&client, 1).await.unwrap();
}

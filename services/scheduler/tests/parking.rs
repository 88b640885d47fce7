//! A node does not park its own exhausted work (it may not read the work
//! stream by sequence): the scheduler drains each node's max-deliveries
//! advisories, from the node's first heartbeat on, and parks the work on
//! the node consumer's dead-letter subject.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use berth_schemas::heartbeat::Heartbeat;
use berth_schemas::ids::NodeId;
use berth_schemas::Subjects;
use berth_tests::scheduler::World;
use futures::StreamExt;

/// Deliveries before the node consumer gives a job up.
const MAX_DELIVER: i64 = 2;
/// How long a delivery stays unacknowledged before it is delivered again.
const ACK_WAIT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_exhausted_work_is_parked_by_the_scheduler() {
    let w = World::start().await;
    let (_stop, _task) = w.start_scheduler().await;
    let node = NodeId::generate();
    let consumer_name = Subjects::node_consumer(&node);
    // The node's consumer, as a node creates it; this "node" takes each
    // delivery and dies with it (no ack, no nak), as a crash would.
    let consumer = w
        .store
        .jetstream()
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some(consumer_name.clone()),
                filter_subject: w.subjects().work(&Subjects::node_queue(&node)),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                ..Default::default()
            },
            w.subjects().work_stream(),
        )
        .await
        .unwrap();

    // The node heart-beats: from now on the scheduler parks for it.
    let beat = Heartbeat {
        node: node.clone(),
        time: chrono::Utc::now(),
        instances: vec![],
    };
    w.client
        .publish(
            w.subjects().heartbeat(),
            serde_json::to_vec(&beat).unwrap().into(),
        )
        .await
        .unwrap();
    w.client.flush().await.unwrap();

    let work_seq = w
        .store
        .enqueue(
            &Subjects::node_queue(&node),
            "srv-parked",
            "run-me".into(),
            "park-me",
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    while deliveries < MAX_DELIVER {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(ACK_WAIT * 3)
            .messages()
            .await
            .unwrap();
        if let Some(m) = batch.next().await {
            assert_eq!(&m.unwrap().payload[..], b"run-me");
            deliveries += 1;
        }
    }

    // Exhausted: only the scheduler's drain of the advisory parks it.
    let dlq = w
        .store
        .jetstream()
        .get_stream(w.subjects().dead_letter_stream())
        .await
        .unwrap();
    let subject = w.subjects().dead_letter(&consumer_name);
    let mut parked = None;
    for _ in 0..100 {
        if let Ok(m) = dlq.get_last_raw_message_by_subject(&subject).await {
            parked = Some(m);
            break;
        }
        // The node keeps asking for work (the server notices an exhausted
        // job when it would deliver it again); none comes.
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .unwrap();
        assert!(
            batch.next().await.is_none(),
            "exhausted work delivered again"
        );
    }
    let parked = parked.expect("the node's exhausted work was never parked");
    assert_eq!(&parked.payload[..], b"run-me");
    assert_eq!(
        parked
            .headers
            .get("Berth-Dead-Stream-Seq")
            .unwrap()
            .as_str(),
        work_seq.to_string()
    );
    assert_eq!(
        parked
            .headers
            .get("Berth-Dead-Deliveries")
            .unwrap()
            .as_str(),
        MAX_DELIVER.to_string()
    );
    // Gone from the node's queue: never delivered again.
    let mut again = consumer
        .fetch()
        .max_messages(1)
        .expires(ACK_WAIT * 2)
        .messages()
        .await
        .unwrap();
    assert!(again.next().await.is_none(), "parked work delivered again");
}

//! A berth process notices a NATS server that stops answering (a network
//! cut, a paused process) within a few pings, and leaves it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::connection::State;
use berth_runtime::nats_auth::{connect, PING_INTERVAL};
use berth_tests::proxy::DelayProxy;
use berth_tests::{NatsServer, NatsVersion};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_left_within_a_few_pings() {
    let server = NatsServer::start(NatsVersion::Modern).unwrap();
    let proxy = DelayProxy::start(&format!("127.0.0.1:{}", server.port()))
        .await
        .unwrap();
    let url = format!("nats://{}", proxy.host).parse().unwrap();
    let client = connect(vec![url], "liveness test", None).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(client.connection_state(), State::Connected);

    // From now on nothing the client sends reaches the server: its pings
    // go unanswered, as across a cut link.
    proxy.set_delay(Duration::from_secs(3600));
    let cut = Instant::now();
    let bound = PING_INTERVAL * 5;
    while client.connection_state() == State::Connected {
        assert!(
            cut.elapsed() < bound,
            "still connected to a server that stopped answering {:?} ago",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("left the silent server after {:?}", cut.elapsed());
}

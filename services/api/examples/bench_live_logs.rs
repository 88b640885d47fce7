//! Live log lines (`GET /v1/logs/subscribe`) at many subscriptions and
//! services, against reading the same lines straight from JetStream, in
//! the same run, on loopback:
//!
//! ```text
//! cargo run --release -p berth-api --example bench_live_logs -- [subscriptions] [services] [lines]
//! ```
//!
//! - `subscriptions` (default 200) WebSocket subscriptions, each to a
//!   service of its own (16 per owner, the most an owner may have open);
//! - `lines` (default 20,000) lines of 100 bytes published as a node
//!   publishes them (JetStream-acknowledged, 256 in flight), spread
//!   evenly over `services` (default 1,000) services, the followed ones
//!   among them: most lines are of services no one follows;
//! - beside them, one ordered consumer on the logs stream read directly
//!   (what the API's one consumer reads, without routing or WebSockets):
//!   the floor.
//!
//! Reported: every subscription must get exactly its service's lines, in
//! order; the delay from publishing a line to a subscription holding it
//! (p50, p99, max) against the floor's; and the CPU this process spent
//! per line published (the API's routing and sockets, the clients'
//! reads, the publisher), from `/proc/self/stat`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::logs::{LogLine, Stream};
use berth_tests::bench::cpu_secs;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The berth binary's allocator, so the figures are what `berth up` gives.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `line n at <micros since start>` of a fixed length.
fn text(n: usize, micros: u128) -> String {
    let mut t = format!("line {n} at {micros} ");
    t.extend(std::iter::repeat_n('x', 100usize.saturating_sub(t.len())));
    t
}

/// The line's number and when it was published, from its text.
fn parse(t: &str) -> (usize, u128) {
    let mut w = t.split(' ');
    let n = w.nth(1).unwrap().parse().unwrap();
    let at = w.nth(1).unwrap().parse().unwrap();
    (n, at)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let subs = args.first().copied().unwrap_or(200);
    let services = args.get(1).copied().unwrap_or(1000).max(subs);
    let lines = args.get(2).copied().unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let app = support::App::start(true).await;
        let mut followed: Vec<(String, String)> = Vec::new();
        let mut owner = None;
        for i in 0..subs {
            if i % berth_api::logtap::PER_OWNER == 0 {
                owner = Some(app.owner().await);
            }
            let o = owner.as_ref().unwrap();
            let (svc, _) = app.service(o, &format!("talker-{i}")).await;
            followed.push((svc, o.key.clone()));
        }
        app.resolver_stop.cancel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app.router.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        // Every service: the followed ones first, then ones no one follows.
        let mut all: Vec<ServiceId> = followed.iter().map(|(s, _)| s.parse().unwrap()).collect();
        while all.len() < services {
            all.push(ServiceId::generate());
        }
        let expected: HashMap<ServiceId, usize> = {
            let mut m = HashMap::new();
            for n in 0..lines {
                *m.entry(all[n % services].clone()).or_default() += 1;
            }
            m
        };

        // The subscriptions, each counting its lines and their delays.
        let t0 = Instant::now();
        let mut readers = Vec::new();
        for (i, (svc, key)) in followed.iter().enumerate() {
            let mut req = format!("ws://{addr}/v1/logs/subscribe?resource={svc}")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let want = expected[&svc.parse::<ServiceId>().unwrap()];
            readers.push(tokio::spawn(async move {
                let (mut delays, mut last, mut in_order) = (Vec::with_capacity(want), None, true);
                while delays.len() < want {
                    let msg = tokio::time::timeout(Duration::from_secs(60), socket.next())
                        .await
                        .expect("lines within 60 s")
                        .unwrap()
                        .unwrap();
                    if let Message::Text(t) = msg {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        let (n, at) = parse(v["message"].as_str().unwrap());
                        let now = t0.elapsed().as_micros();
                        delays.push((now - at) as f64 / 1000.0);
                        // Its own service's line (the n-th goes to service n % services), in order.
                        in_order &= n % services == i && last.is_none_or(|l| l < n);
                        last = Some(n);
                    }
                }
                (delays, in_order)
            }));
        }
        // The floor: the same lines read straight from the stream.
        let stream = app
            .store
            .jetstream()
            .get_stream(app.store.subjects().logs_stream())
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: app.store.subjects().logs_all(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut raw = consumer.messages().await.unwrap();
        let floor = tokio::spawn(async move {
            let mut delays = Vec::with_capacity(lines);
            while delays.len() < lines {
                let msg = raw.next().await.unwrap().unwrap();
                let line: LogLine = serde_json::from_slice(&msg.payload).unwrap();
                let (_, at) = parse(&line.line);
                delays.push((t0.elapsed().as_micros() - at) as f64 / 1000.0);
            }
            delays
        });

        // Publish as a node does, 256 acknowledgements outstanding.
        let js = app.store.jetstream().clone();
        let subjects = app.store.subjects().clone();
        let instance = InstanceId::generate();
        let cpu0 = cpu_secs("self");
        let started = Instant::now();
        let mut acks = std::collections::VecDeque::new();
        for n in 0..lines {
            let service = all[n % services].clone();
            let line = LogLine {
                service: service.clone(),
                instance: Some(instance.clone()),
                stream: Stream::Stdout,
                line: text(n, t0.elapsed().as_micros()),
                time: chrono::Utc::now(),
            };
            let ack = js
                .publish(subjects.logs(&service), serde_json::to_vec(&line).unwrap().into())
                .await
                .unwrap();
            acks.push_back(ack);
            if acks.len() >= 256 {
                acks.pop_front().unwrap().await.unwrap();
            }
        }
        for a in acks {
            a.await.unwrap();
        }
        let published = started.elapsed();
        let mut delays = Vec::new();
        let mut whole = 0;
        for r in readers {
            let (d, in_order) = r.await.unwrap();
            whole += usize::from(in_order);
            delays.extend(d);
        }
        let mut floor = floor.await.unwrap();
        let cpu = cpu_secs("self") - cpu0;
        let delivered = delays.len();
        delays.sort_by(f64::total_cmp);
        floor.sort_by(f64::total_cmp);
        println!(
            "{lines} lines over {services} services in {:.2} s ({:.0} lines/s); {subs} subscriptions",
            published.as_secs_f64(),
            lines as f64 / published.as_secs_f64()
        );
        println!("subscriptions with every line of their service, in order: {whole} of {subs} ({delivered} lines delivered)");
        println!(
            "publish → subscription holds it: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            quantile(&delays, 0.5),
            quantile(&delays, 0.99),
            delays[delays.len() - 1]
        );
        println!(
            "publish → a direct consumer holds it (floor): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            quantile(&floor, 0.5),
            quantile(&floor, 0.99),
            floor[floor.len() - 1]
        );
        println!(
            "CPU of this process per line published: {:.1} µs",
            cpu * 1e6 / lines as f64
        );
        assert_eq!(whole, subs, "a subscription missed or reordered lines");
    });
}

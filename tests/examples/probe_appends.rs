//! Diagnostic for the pipelined-append figure: where does the gap to raw
//! publishing go? Publishes the same payload in the same shape (1,000
//! subjects, one publish in flight per subject, 100 each) with no headers,
//! with `Nats-Msg-Id` only, with `Nats-Expected-Last-Subject-Sequence`
//! only, with both, and as berth appends; rounds interleave the shapes.
//! Given the nats-server's pid (same machine), it also prints the CPU time
//! client and server spent per message, which load from other processes
//! disturbs far less than throughput.
//!
//! `cargo run --release -p berth-tests --example probe_appends -- nats://127.0.0.1:4222 [rounds] [server-pid]`

use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream::message::PublishMessage;
use berth_eventlog::{EventStore, NewEvent, StoreConfig, Version};
use berth_schemas::events::InstanceCountChanged;
use berth_schemas::ids::ServiceId;
use berth_schemas::{Actor, AggregateId};
use berth_tests::bench::cpu_secs;
use bytes::Bytes;

/// The berth binary's allocator, so client CPU matches what `berth` spends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBJECTS: u64 = 1_000;
const PER_SUBJECT: u64 = 100;

#[derive(Clone, Copy, Debug)]
enum Shape {
    Raw { msg_id: bool, expected_seq: bool },
    Berth,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let server_pid: Option<String> = args.next();
    let client = async_nats::connect(&url).await.context("connect")?;
    let subjects = berth_schemas::Subjects::new(&format!("probe{}", std::process::id()))?;
    let store = EventStore::open(client, subjects.clone(), StoreConfig::default()).await?;
    // A berth commit of one InstanceCountChanged event is about this size.
    let payload = Bytes::from(vec![7u8; 190]);
    let shapes = [(false, false), (true, false), (false, true), (true, true)].map(
        |(msg_id, expected_seq)| Shape::Raw {
            msg_id,
            expected_seq,
        },
    );
    let shapes: Vec<Shape> = shapes.into_iter().chain([Shape::Berth]).collect();
    let n = SUBJECTS * PER_SUBJECT;
    println!("{n} messages per run; cpu in microseconds per message");
    for round in 0..rounds {
        for (k, shape) in shapes.iter().enumerate() {
            let c0 = cpu_secs("self");
            let s0 = server_pid.as_deref().map(cpu_secs);
            let t = Instant::now();
            match *shape {
                Shape::Raw {
                    msg_id,
                    expected_seq,
                } => {
                    let prefix = format!("{}.evt.probe.r{round}s{k}", subjects.prefix());
                    raw(&store, &prefix, &payload, msg_id, expected_seq).await?;
                }
                Shape::Berth => berth(&store).await?,
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            let per_msg = |secs: f64| secs * 1e6 / n as f64;
            let client_cpu = per_msg(cpu_secs("self") - c0);
            let server_cpu = match (server_pid.as_deref(), s0) {
                (Some(pid), Some(s0)) => format!("{:.1}", per_msg(cpu_secs(pid) - s0)),
                _ => "-".to_owned(),
            };
            println!(
                "round {round} {shape:?}: {rate:.0}/s  client cpu {client_cpu:.1}  server cpu {server_cpu}"
            );
        }
    }
    store
        .jetstream()
        .delete_stream(subjects.events_stream())
        .await?;
    Ok(())
}

async fn raw(
    store: &EventStore,
    prefix: &str,
    payload: &Bytes,
    msg_id: bool,
    expected_seq: bool,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SUBJECTS {
        let (js, payload) = (store.jetstream().clone(), payload.clone());
        let subject = format!("{prefix}x{i}");
        tasks.spawn(async move {
            let mut last = 0;
            for k in 0..PER_SUBJECT {
                let mut msg = PublishMessage::build().payload(payload.clone());
                if msg_id {
                    msg = msg.message_id(format!("{subject}-{k}"));
                }
                if expected_seq {
                    msg = msg.expected_last_subject_sequence(last);
                }
                last = js.send_publish(subject.clone(), msg).await?.await?.sequence;
            }
            Ok::<_, async_nats::jetstream::context::PublishError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn berth(store: &EventStore) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SUBJECTS {
        let store = store.clone();
        let agg = AggregateId::Service(ServiceId::generate());
        tasks.spawn(async move {
            let mut version = Version::NEW;
            for k in 0..PER_SUBJECT {
                let event = NewEvent::new(
                    InstanceCountChanged {
                        from: k as u32,
                        to: k as u32 + 1,
                    },
                    Actor::system("bench"),
                );
                version = store
                    .append(&agg, version, vec![event], &format!("{agg}-{k}"))
                    .await?
                    .version;
            }
            Ok::<_, berth_eventlog::AppendError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

//! The append phases of the bench: pipelined throughput and sequential
//! latency, each beside raw async-nats publishes of the same payload.
//!
//! Other agents share these machines, so a single pass swings by ±30%: the
//! shapes are interleaved (raw, deep raw, raw with headers, berth, again,
//! each round starting one shape later) for `ROUNDS` rounds and the median
//! of each is reported.

use std::time::Instant;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::{aggregates, one_event, sample_payload, step, BenchError, BenchOptions};
use berth_eventlog::{EventStore, Version};

/// Interleaved rounds of the pipelined phase.
const ROUNDS: usize = 4;

/// Acks in flight in the deep raw run (the raw figure BENCHMARKS.md quotes).
const DEEP_WINDOW: usize = 4096;

/// Medians of the pipelined phase, events/s.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pipelined {
    /// Raw publishes with as many acks in flight as berth has aggregates.
    pub raw: f64,
    /// Raw publishes with `DEEP_WINDOW` acks in flight.
    pub raw_deep: f64,
    /// Raw, shaped like berth: per subject sequential, carrying the
    /// expected subject sequence and a message id.
    pub raw_headers: f64,
    /// berth appends.
    pub berth: f64,
}

/// Pipelined appends: `pipelined_events` over `aggregates` aggregates.
/// Appends to one aggregate are sequential by nature (each names the
/// sequence the previous one got), so berth has one append in flight per
/// aggregate; the main raw figure gets the same depth, the deep one shows
/// what more depth would give raw.
pub(super) async fn pipelined(
    store: &EventStore,
    opts: &BenchOptions,
) -> Result<Pipelined, BenchError> {
    let aggs = opts.aggregates.max(1) as usize;
    let per = (opts.pipelined_events / aggs as u64).max(1);
    let n = per * aggs as u64;
    let payload = Bytes::from(sample_payload(&aggregates(1)[0], 1)?);
    let mut runs: [Vec<f64>; 4] = Default::default();
    for round in 0..ROUNDS {
        let raw_subjects: Vec<String> = (0..aggs)
            .map(|i| format!("{}.evt.rawbench.p{round}.r{i}", store.subjects().prefix()))
            .collect();
        let deep: Vec<String> = raw_subjects.iter().map(|s| format!("{s}d")).collect();
        // Each round starts with another shape, so none is always the one
        // measured on the emptiest stream.
        for k in 0..runs.len() {
            let shape = (k + round) % runs.len();
            let t = Instant::now();
            match shape {
                0 => raw_window(store, &raw_subjects, &payload, n, aggs).await?,
                1 => raw_window(store, &deep, &payload, n, DEEP_WINDOW).await?,
                2 => raw_with_headers(store, &raw_subjects, &payload, per, round).await?,
                _ => berth_appends(store, aggs, per).await?,
            }
            runs[shape].push(n as f64 / t.elapsed().as_secs_f64());
        }
    }
    let [raw, raw_deep, raw_headers, berth] = runs.map(median);
    Ok(Pipelined {
        raw,
        raw_deep,
        raw_headers,
        berth,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Plain publishes round-robin over `subjects`, `window` acks in flight.
async fn raw_window(
    store: &EventStore,
    subjects: &[String],
    payload: &Bytes,
    n: u64,
    window: usize,
) -> Result<(), BenchError> {
    let js = store.jetstream().clone();
    let mut acks = futures::stream::iter(0..n)
        .map(|i| {
            let (js, subject, payload) = (
                js.clone(),
                subjects[(i as usize) % subjects.len()].clone(),
                payload.clone(),
            );
            async move { js.publish(subject, payload).await?.await }
        })
        .buffer_unordered(window.max(1));
    while let Some(ack) = acks.next().await {
        ack.map_err(|e| step("raw publish", e))?;
    }
    Ok(())
}

/// Per subject sequential with the expected subject sequence and a message
/// id, all subjects at once: the server's price for optimistic concurrency
/// and dedupe, without any of berth's work. Driven like the raw runs: one
/// task polling every subject's chain.
async fn raw_with_headers(
    store: &EventStore,
    subjects: &[String],
    payload: &Bytes,
    per: u64,
    round: usize,
) -> Result<(), BenchError> {
    let js = store.jetstream();
    let mut chains: FuturesUnordered<_> = subjects
        .iter()
        .enumerate()
        .map(|(i, subject)| async move {
            let subject = format!("{subject}-occ");
            let mut last = 0;
            for k in 0..per {
                let msg = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("occ-{round}-{i}-{k}"))
                    .expected_last_subject_sequence(last);
                last = js.send_publish(subject.clone(), msg).await?.await?.sequence;
            }
            Ok::<_, PublishError>(())
        })
        .collect();
    while let Some(done) = chains.next().await {
        done.map_err(|e| step("raw occ publish", e))?;
    }
    Ok(())
}

/// Every aggregate appends `per` single-event commits, each naming the
/// version the previous append returned; all aggregates at once, polled by
/// one task as the raw runs are.
async fn berth_appends(store: &EventStore, aggs: usize, per: u64) -> Result<(), BenchError> {
    let mut chains: FuturesUnordered<_> = aggregates(aggs as u64)
        .into_iter()
        .map(|agg| async move {
            let mut version = Version::NEW;
            for i in 0..per {
                let key = format!("{agg}-{i}");
                version = store
                    .append(&agg, version, vec![one_event(i as u32)], &key)
                    .await?
                    .version;
            }
            Ok::<_, berth_eventlog::AppendError>(())
        })
        .collect();
    while let Some(done) = chains.next().await {
        done.map_err(|e| step("berth append", e))?;
    }
    Ok(())
}

/// Sequential latencies, microseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sequential {
    pub raw_p50: f64,
    pub raw_p99: f64,
    pub raw_headers_p50: f64,
    pub p50: f64,
    pub p99: f64,
}

/// One publish or append at a time. The three kinds take turns op by op,
/// so a burst of load from elsewhere hits all of them alike.
pub(super) async fn sequential(
    store: &EventStore,
    opts: &BenchOptions,
) -> Result<Sequential, BenchError> {
    let n = opts.sequential_appends.max(1);
    let agg = aggregates(1).remove(0);
    let payload = Bytes::from(sample_payload(&agg, 1)?);
    let subject = format!("{}.evt.rawbench.seq", store.subjects().prefix());
    let occ_subject = format!("{subject}-occ");
    let hist = || Histogram::<u64>::new(3).map_err(|e| step("histogram", e));
    let (mut raw, mut raw_occ, mut berth) = (hist()?, hist()?, hist()?);
    let js = store.jetstream();
    let (mut version, mut occ_last) = (Version::NEW, 0);
    for i in 0..n {
        let t = Instant::now();
        js.publish(subject.clone(), payload.clone())
            .await
            .map_err(|e| step("raw publish", e))?
            .await
            .map_err(|e| step("raw ack", e))?;
        let _ = raw.record(t.elapsed().as_micros() as u64);

        let t = Instant::now();
        version = store
            .append(
                &agg,
                version,
                vec![one_event(i as u32)],
                &format!("seq-{agg}-{i}"),
            )
            .await
            .map_err(|e| step("berth append", e))?
            .version;
        let _ = berth.record(t.elapsed().as_micros() as u64);

        let t = Instant::now();
        let msg = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("seq-occ-{agg}-{i}"))
            .expected_last_subject_sequence(occ_last);
        occ_last = js
            .send_publish(occ_subject.clone(), msg)
            .await
            .map_err(|e| step("raw occ publish", e))?
            .await
            .map_err(|e| step("raw occ ack", e))?
            .sequence;
        let _ = raw_occ.record(t.elapsed().as_micros() as u64);
    }
    Ok(Sequential {
        raw_p50: raw.value_at_quantile(0.5) as f64,
        raw_p99: raw.value_at_quantile(0.99) as f64,
        raw_headers_p50: raw_occ.value_at_quantile(0.5) as f64,
        p50: berth.value_at_quantile(0.5) as f64,
        p99: berth.value_at_quantile(0.99) as f64,
    })
}

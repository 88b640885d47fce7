//! The metrics stream and the series read from it: nodes' resource samples
//! and routers' request samples (`berth_schemas::metrics`) are kept a day
//! in one stream, one subject per service and producer; a series of one
//! service is an ordered read of its subjects over the asked window, put
//! into buckets of the asked resolution. Nothing is held in memory between
//! requests.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use berth_eventlog::EventStore;
use berth_schemas::metrics::{HttpSample, UsageSample, LATENCY_BUCKETS_MS};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// How long samples are kept.
pub const KEPT: Duration = Duration::from_secs(24 * 3600);

/// Most samples one series read takes (a day of 15 s samples from a few
/// producers is far below; a larger window is cut, not unbounded).
pub const MAX_SAMPLES: usize = 50_000;

/// Why a series could not be read.
#[derive(Debug, thiserror::Error)]
#[error("metrics stream: {0}")]
pub struct MetricsError(String);

fn err(e: impl std::fmt::Display) -> MetricsError {
    MetricsError(e.to_string())
}

/// Creates the metrics stream, or brings an existing one to `max_bytes`
/// (same replicas as the event log; oldest samples dropped first).
pub async fn ensure_stream(
    store: &EventStore,
    max_bytes: i64,
) -> Result<(), berth_eventlog::StoreError> {
    let subjects = store.subjects();
    store
        .provision_stream(stream::Config {
            name: subjects.metrics_stream(),
            subjects: vec![subjects.metrics_all()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: KEPT,
            max_bytes,
            // As the server reports "no limit", so an unchanged stream
            // reads as such and is left alone.
            max_messages_per_subject: -1,
            max_message_size: -1,
            num_replicas: store.config().replicas,
            description: Some("berth resource and request samples, kept a day".to_owned()),
            ..Default::default()
        })
        .await
}

/// The samples on `subject` (a filter) from `start`, oldest first, up to
/// `end` (by the samples' own times) and at most [`MAX_SAMPLES`].
async fn read<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    time_of: impl Fn(&T) -> DateTime<Utc>,
) -> Result<Vec<(String, T)>, MetricsError> {
    let stream = js.get_stream(stream_name).await.map_err(err)?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(err)?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(err)?;
        let pending = msg.info().map_err(err)?.pending;
        // A malformed sample is skipped: one bad producer must not blank
        // a chart.
        if let Ok(sample) = serde_json::from_slice::<T>(&msg.payload) {
            if time_of(&sample) > end {
                break;
            }
            out.push((msg.subject.to_string(), sample));
        }
        if pending == 0 || out.len() >= MAX_SAMPLES {
            break;
        }
    }
    Ok(out)
}

/// How values in one bucket become one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Avg,
    Max,
    Min,
    Sum,
}

impl Aggregation {
    fn apply(self, values: &[f64]) -> f64 {
        match self {
            Aggregation::Avg => values.iter().sum::<f64>() / values.len().max(1) as f64,
            Aggregation::Max => values.iter().copied().fold(f64::MIN, f64::max),
            Aggregation::Min => values.iter().copied().fold(f64::MAX, f64::min),
            Aggregation::Sum => values.iter().sum(),
        }
    }
}

/// A window and its buckets.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub resolution: Duration,
}

impl Window {
    /// The start of the bucket `t` falls in.
    fn bucket(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let res = i64::try_from(self.resolution.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let since = (t - self.start).num_milliseconds().max(0);
        self.start + chrono::Duration::milliseconds(since / res * res)
    }
}

/// A series' labels, `(field, value)`.
pub type Labels = Vec<(String, String)>;

/// One series: its labels and points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// Points per label set, bucketed, aggregated.
fn series(
    window: &Window,
    how: Aggregation,
    values: impl IntoIterator<Item = (Labels, DateTime<Utc>, f64)>,
) -> Vec<Series> {
    let mut by: BTreeMap<Labels, BTreeMap<DateTime<Utc>, Vec<f64>>> = BTreeMap::new();
    for (labels, t, v) in values {
        if t < window.start || t > window.end {
            continue;
        }
        by.entry(labels)
            .or_default()
            .entry(window.bucket(t))
            .or_default()
            .push(v);
    }
    by.into_iter()
        .map(|(labels, buckets)| Series {
            labels,
            points: buckets
                .into_iter()
                .map(|(t, vs)| (t, how.apply(&vs)))
                .collect(),
        })
        .collect()
}

/// What a resource series shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU cores in use (the CPU time between two samples over their time).
    Cpu,
    /// Memory in use, bytes.
    Memory,
    /// Instances that reported, per bucket.
    Instances,
    /// The service's disk: bytes in use, per instance (the one using it).
    DiskUsage,
    /// The service's disk: the filesystem's size, bytes.
    DiskCapacity,
    /// Each instance's CPU limit, cores (as its cgroup says).
    CpuLimit,
    /// Each instance's memory limit, bytes (as its cgroup says).
    MemoryLimit,
}

/// A service's resource series over `window`: per instance for CPU and
/// memory (only `instance` when given), one series for the count.
pub async fn resources(
    store: &EventStore,
    service: &berth_schemas::ids::ServiceId,
    instance: Option<&str>,
    what: Resource,
    how: Aggregation,
    window: &Window,
) -> Result<Vec<Series>, MetricsError> {
    let subjects = store.subjects();
    // From one resolution early: the first point's CPU rate needs the
    // sample before it.
    let from = window.start - chrono::Duration::from_std(window.resolution).unwrap_or_default();
    let samples: Vec<(String, UsageSample)> = read(
        store.jetstream(),
        &subjects.metrics_stream(),
        &subjects.service_usage(service),
        from,
        window.end,
        |s: &UsageSample| s.time,
    )
    .await?;
    let resource = || ("resource".to_owned(), service.to_string());
    let mut values = Vec::new();
    let mut last: HashMap<String, (DateTime<Utc>, u64)> = HashMap::new();
    for (_, s) in &samples {
        for u in &s.instances {
            let id = u.instance.to_string();
            if instance.is_some_and(|i| i != id) {
                continue;
            }
            let labels = vec![resource(), ("instance".to_owned(), id.clone())];
            match what {
                Resource::Cpu => {
                    if let Some((t0, cpu0)) = last.get(&id) {
                        let secs = (s.time - *t0).num_milliseconds() as f64 / 1000.0;
                        if secs > 0.0 {
                            let cores = u.cpu_nanos.saturating_sub(*cpu0) as f64 / 1e9 / secs;
                            values.push((labels, s.time, cores));
                        }
                    }
                    last.insert(id, (s.time, u.cpu_nanos));
                }
                Resource::Memory => values.push((labels, s.time, u.memory_bytes as f64)),
                Resource::DiskUsage => {
                    if let Some(b) = u.disk_used_bytes {
                        values.push((labels, s.time, b as f64));
                    }
                }
                Resource::DiskCapacity => {
                    if let Some(b) = u.disk_capacity_bytes {
                        values.push((labels, s.time, b as f64));
                    }
                }
                Resource::CpuLimit => {
                    if u.cpu_limit_millis > 0 {
                        values.push((labels, s.time, u.cpu_limit_millis as f64 / 1000.0));
                    }
                }
                Resource::MemoryLimit => {
                    if u.memory_limit_bytes > 0 {
                        values.push((labels, s.time, u.memory_limit_bytes as f64));
                    }
                }
                Resource::Instances => {}
            }
        }
    }
    if what == Resource::Instances {
        // Distinct instances per bucket.
        let mut per: BTreeMap<DateTime<Utc>, std::collections::BTreeSet<String>> = BTreeMap::new();
        for (_, s) in &samples {
            if s.time < window.start || s.time > window.end {
                continue;
            }
            per.entry(window.bucket(s.time))
                .or_default()
                .extend(s.instances.iter().map(|u| u.instance.to_string()));
        }
        return Ok(vec![Series {
            labels: vec![resource()],
            points: per
                .into_iter()
                .map(|(t, ids)| (t, ids.len() as f64))
                .collect(),
        }]);
    }
    Ok(series(window, how, values))
}

/// What a request series shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Http {
    /// Requests per bucket, one series per status class.
    Requests,
    /// The latency (ms) below which `quantile` of a bucket's requests were
    /// answered.
    Latency { quantile: f64 },
}

/// The latency (ms) under which `q` of the requests counted in `buckets`
/// fell: interpolated within the bucket it lands in.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let want = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let below = seen as f64;
        seen += n;
        if seen as f64 >= want {
            let lower = if i == 0 { 0 } else { LATENCY_BUCKETS_MS[i - 1] } as f64;
            let Some(upper) = LATENCY_BUCKETS_MS.get(i) else {
                // Slower than the last bound: the bound is what is known.
                return Some(lower);
            };
            let within = ((want - below) / *n as f64).clamp(0.0, 1.0);
            return Some(lower + within * (*upper as f64 - lower));
        }
    }
    LATENCY_BUCKETS_MS.last().map(|b| *b as f64)
}

/// A service's request series over `window`.
pub async fn http(
    store: &EventStore,
    service: &berth_schemas::ids::ServiceId,
    what: Http,
    window: &Window,
) -> Result<Vec<Series>, MetricsError> {
    let subjects = store.subjects();
    let samples: Vec<(String, HttpSample)> = read(
        store.jetstream(),
        &subjects.metrics_stream(),
        &subjects.service_http_metrics(service),
        window.start,
        window.end,
        |s: &HttpSample| s.time,
    )
    .await?;
    let resource = ("resource".to_owned(), service.to_string());
    match what {
        Http::Requests => {
            let values = samples.iter().flat_map(|(_, s)| {
                s.counts.iter().map(|(class, n)| {
                    (
                        vec![resource.clone(), ("statusCode".to_owned(), class.clone())],
                        s.time,
                        *n as f64,
                    )
                })
            });
            Ok(series(window, Aggregation::Sum, values))
        }
        Http::Latency { quantile: q } => {
            let mut per: BTreeMap<DateTime<Utc>, Vec<u64>> = BTreeMap::new();
            for (_, s) in &samples {
                if s.time < window.start || s.time > window.end {
                    continue;
                }
                let b = per
                    .entry(window.bucket(s.time))
                    .or_insert_with(|| vec![0; LATENCY_BUCKETS_MS.len() + 1]);
                for (acc, n) in b.iter_mut().zip(&s.latency_buckets) {
                    *acc += n;
                }
            }
            Ok(vec![Series {
                labels: vec![resource, ("quantile".to_owned(), q.to_string())],
                points: per
                    .into_iter()
                    .filter_map(|(t, b)| quantile(&b, q).map(|v| (t, v)))
                    .collect(),
            }])
        }
    }
}

/// The values a series of the service could be filtered by over
/// `window`: the instances that reported (`application`), or the status
/// classes the router answered with (`http`), each once, sorted.
pub async fn filter_values(
    store: &EventStore,
    service: &berth_schemas::ids::ServiceId,
    http: bool,
    window: &Window,
) -> Result<Vec<String>, MetricsError> {
    let subjects = store.subjects();
    let stream = subjects.metrics_stream();
    let values: std::collections::BTreeSet<String> = if http {
        read(
            store.jetstream(),
            &stream,
            &subjects.service_http_metrics(service),
            window.start,
            window.end,
            |s: &HttpSample| s.time,
        )
        .await?
        .into_iter()
        .flat_map(|(_, s)| s.counts.into_keys())
        .collect()
    } else {
        read(
            store.jetstream(),
            &stream,
            &subjects.service_usage(service),
            window.start,
            window.end,
            |s: &UsageSample| s.time,
        )
        .await?
        .into_iter()
        .flat_map(|(_, s)| s.instances.into_iter().map(|u| u.instance.to_string()))
        .collect()
    };
    Ok(values.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let mut b = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None);
        b[0] = 50; // ≤ 5 ms
        b[2] = 50; // 10-25 ms
        assert_eq!(quantile(&b, 0.5), Some(5.0));
        assert_eq!(quantile(&b, 1.0), Some(25.0));
        let q75 = quantile(&b, 0.75).unwrap_or_default();
        assert!((q75 - 17.5).abs() < 1e-9, "{q75}");
        let mut slow = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
        slow[LATENCY_BUCKETS_MS.len()] = 3;
        assert_eq!(quantile(&slow, 0.99), Some(10_000.0));
    }

    #[test]
    fn points_fall_in_buckets_and_aggregate() {
        let start = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap_or_default();
        let w = Window {
            start,
            end: start + chrono::Duration::seconds(120),
            resolution: Duration::from_secs(60),
        };
        let l = vec![("resource".to_owned(), "srv-x".to_owned())];
        let at = |s: i64| start + chrono::Duration::seconds(s);
        let v = vec![
            (l.clone(), at(0), 1.0),
            (l.clone(), at(30), 3.0),
            (l.clone(), at(60), 10.0),
            (l.clone(), at(500), 99.0), // outside the window
        ];
        let avg = series(&w, Aggregation::Avg, v.clone());
        assert_eq!(avg.len(), 1);
        assert_eq!(avg[0].points, vec![(at(0), 2.0), (at(60), 10.0)]);
        assert_eq!(series(&w, Aggregation::Max, v.clone())[0].points[0].1, 3.0);
        assert_eq!(series(&w, Aggregation::Min, v.clone())[0].points[0].1, 1.0);
        assert_eq!(series(&w, Aggregation::Sum, v)[0].points[0].1, 4.0);
    }
}

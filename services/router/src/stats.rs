//! Requests per service as the router answers them: counts by status class
//! and by latency bucket, gathered on the request path and published as one
//! [`HttpSample`] per requested service every interval (kept a day by the
//! metrics stream), plus the same as this process's Prometheus series.
//!
//! Each router worker thread counts into a shard of its own, so the request
//! path takes a lock no other thread wants (the publisher takes each shard
//! once per interval) and no cache line moves between cores.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use berth_schemas::ids::ServiceId;
use berth_schemas::metrics::{HttpSample, LATENCY_BUCKETS_MS};
use berth_schemas::subjects::Subjects;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

/// Status classes, in the order of [`Counters::classes`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How long a shard records into a latency histogram it looked up. The
/// exporter drops a histogram nothing recorded into for ten minutes; a
/// handle is only used within this time of a record through it, so it
/// never records into a dropped one.
const HISTOGRAM_HANDLE_FOR: Duration = Duration::from_secs(60);

/// One service's counts since the last sample in one shard, and its
/// Prometheus series.
struct Counters {
    classes: [u64; 5],
    buckets: Vec<u64>,
    /// `berth_http_requests_total{service, class}`, per class.
    requests: [metrics::Counter; 5],
    /// `berth_http_request_duration_seconds{service}`, looked up at
    /// `histogram_at`.
    histogram: metrics::Histogram,
    histogram_at: Instant,
    /// The service's label value, shared by every lookup.
    name: Arc<str>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("service", &self.name)
            .finish_non_exhaustive()
    }
}

impl Counters {
    fn new(service: &ServiceId, now: Instant) -> Self {
        let name: Arc<str> = Arc::from(service.to_string());
        Counters {
            classes: [0; 5],
            buckets: vec![0; LATENCY_BUCKETS_MS.len() + 1],
            requests: CLASSES.map(|class| {
                metrics::counter!(
                    "berth_http_requests_total",
                    "service" => metrics::SharedString::from(name.clone()),
                    "class" => class
                )
            }),
            histogram: latency_histogram(&name),
            histogram_at: now,
            name,
        }
    }
}

fn latency_histogram(name: &Arc<str>) -> metrics::Histogram {
    metrics::histogram!(
        "berth_http_request_duration_seconds",
        "service" => metrics::SharedString::from(Arc::clone(name))
    )
}

type Shard = HashMap<ServiceId, Counters>;

/// Every service's counts, sharded by thread.
#[derive(Debug)]
pub struct HttpStats {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats::new(1)
    }
}

thread_local! {
    /// This thread's shard number (before the modulo), given out in order.
    static THREAD_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    THREAD_SHARD.with(|s| match s.get() {
        Some(n) => n,
        None => {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(Some(n));
            n
        }
    })
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Counts only: a panic elsewhere leaves nothing half-changed that
    // matters.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HttpStats {
    /// Counts kept in `shards` parts (one per worker thread is best).
    pub fn new(shards: usize) -> Self {
        HttpStats {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    /// Counts one request of `service` answered at `now` after `took`.
    pub fn record(&self, service: &ServiceId, status: u16, took: Duration, now: Instant) {
        let class = HttpSample::class(status);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let Some(shard) = self.shards.get(thread_shard() % self.shards.len()) else {
            return;
        };
        let mut shard = lock(shard);
        let counters = match shard.get_mut(service) {
            Some(c) => c,
            None => shard
                .entry(service.clone())
                .or_insert_with(|| Counters::new(service, now)),
        };
        if let Some(i) = CLASSES.iter().position(|c| *c == class) {
            counters.classes[i] += 1;
            counters.requests[i].increment(1);
        }
        if let Some(b) = counters.buckets.get_mut(HttpSample::bucket(ms)) {
            *b += 1;
        }
        if now.saturating_duration_since(counters.histogram_at) >= HISTOGRAM_HANDLE_FOR {
            counters.histogram = latency_histogram(&counters.name);
            counters.histogram_at = now;
        }
        counters.histogram.record(took.as_secs_f64());
    }

    /// The counts since the last call, per service that had requests (and
    /// zeroes them); services without requests since are forgotten.
    fn take(&self, router: &str, interval: Duration) -> Vec<(ServiceId, HttpSample)> {
        let time = Utc::now();
        let mut merged: HashMap<ServiceId, ([u64; 5], Vec<u64>)> = HashMap::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|service, c| {
                if c.classes.iter().all(|n| *n == 0) {
                    return false;
                }
                let (classes, buckets) = merged
                    .entry(service.clone())
                    .or_insert_with(|| ([0; 5], vec![0; c.buckets.len()]));
                for (sum, n) in classes.iter_mut().zip(&mut c.classes) {
                    *sum += std::mem::take(n);
                }
                for (sum, n) in buckets.iter_mut().zip(&mut c.buckets) {
                    *sum += std::mem::take(n);
                }
                true
            });
        }
        merged
            .into_iter()
            .map(|(service, (classes, buckets))| {
                let counts: BTreeMap<String, u64> = CLASSES
                    .iter()
                    .zip(classes)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| ((*k).to_owned(), n))
                    .collect();
                let sample = HttpSample {
                    router: router.to_owned(),
                    time,
                    interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX),
                    counts,
                    latency_buckets: buckets,
                };
                (service, sample)
            })
            .collect()
    }

    /// Every `interval` until `stop`, publishes each requested service's
    /// sample on `subjects.http_metrics(service, router)`.
    pub async fn publish(
        self: Arc<Self>,
        client: async_nats::Client,
        subjects: Subjects,
        router: String,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            for (service, sample) in self.take(&router, interval) {
                let Ok(payload) = serde_json::to_vec(&sample) else {
                    continue;
                };
                let subject = subjects.http_metrics(&service, &router);
                if let Err(e) = client.publish(subject, payload.into()).await {
                    tracing::warn!(error = %e, "request sample not published");
                }
            }
            if last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_bucket_then_start_over() {
        let stats = HttpStats::new(4);
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        let now = Instant::now();
        stats.record(&a, 200, Duration::from_millis(3), now);
        // Another worker thread, another shard: summed into one sample.
        std::thread::scope(|s| {
            s.spawn(|| {
                stats.record(&a, 204, Duration::from_millis(30), now);
                stats.record(&a, 503, Duration::from_secs(20), now);
            });
        });
        assert_eq!(
            stats.shards.iter().filter(|s| !lock(s).is_empty()).count(),
            2,
            "two threads, two shards"
        );
        stats.record(&b, 404, Duration::from_millis(7), now);
        let taken = stats.take("r1", Duration::from_secs(15));
        let sa = &taken
            .iter()
            .find(|(s, _)| *s == a)
            .unwrap_or_else(|| unreachable!())
            .1;
        assert_eq!(sa.counts.get("2xx"), Some(&2));
        assert_eq!(sa.counts.get("5xx"), Some(&1));
        assert_eq!(sa.latency_buckets.iter().sum::<u64>(), 3);
        assert_eq!(sa.latency_buckets[0], 1);
        assert_eq!(
            sa.latency_buckets[LATENCY_BUCKETS_MS.len()],
            1,
            "20 s overflows"
        );
        assert_eq!(taken.len(), 2);
        // Nothing since: no samples, and idle services are forgotten.
        assert!(stats.take("r1", Duration::from_secs(15)).is_empty());
        assert!(stats.shards.iter().all(|s| lock(s).is_empty()));
    }

    #[test]
    fn a_latency_histogram_handle_is_looked_up_again_before_the_exporter_could_drop_it() {
        let stats = HttpStats::new(1);
        let a = ServiceId::generate();
        let t0 = Instant::now();
        let at = |stats: &HttpStats| {
            lock(&stats.shards[0])
                .get(&a)
                .map(|c| c.histogram_at)
                .unwrap_or_else(|| unreachable!())
        };
        stats.record(&a, 200, Duration::from_millis(1), t0);
        stats.record(
            &a,
            200,
            Duration::from_millis(1),
            t0 + Duration::from_secs(59),
        );
        assert_eq!(at(&stats), t0, "kept within the minute");
        let later = t0 + HISTOGRAM_HANDLE_FOR;
        stats.record(&a, 200, Duration::from_millis(1), later);
        assert_eq!(at(&stats), later, "looked up again after it");
        assert!(HISTOGRAM_HANDLE_FOR < Duration::from_secs(600));
    }
}

//! Requests per service as the router answers them: counts by status class
//! and by latency bucket, gathered with atomics on the request path and
//! published as one [`HttpSample`] per requested service every interval
//! (kept a day by the metrics stream), plus the same as this process's
//! Prometheus series.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_schemas::ids::ServiceId;
use berth_schemas::metrics::{HttpSample, LATENCY_BUCKETS_MS};
use berth_schemas::subjects::Subjects;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

/// Status classes, in the order of [`Counters::classes`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One service's counts since the last sample, and its Prometheus
/// series (looked up once, not per request).
struct Counters {
    classes: [AtomicU64; 5],
    buckets: Vec<AtomicU64>,
    /// `berth_http_requests_total{service, class}`, per class.
    requests: [metrics::Counter; 5],
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
    fn new(service: &ServiceId) -> Self {
        let name: Arc<str> = Arc::from(service.to_string());
        Counters {
            classes: Default::default(),
            buckets: (0..=LATENCY_BUCKETS_MS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            requests: CLASSES.map(|class| {
                metrics::counter!(
                    "berth_http_requests_total",
                    "service" => metrics::SharedString::from(name.clone()),
                    "class" => class
                )
            }),
            name,
        }
    }
}

/// Every service's counts.
#[derive(Debug, Default)]
pub struct HttpStats {
    services: RwLock<HashMap<ServiceId, Arc<Counters>>>,
}

impl HttpStats {
    /// Counts one answered request of `service`.
    pub fn record(&self, service: &ServiceId, status: u16, took: Duration) {
        let class = HttpSample::class(status);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let counters = self
            .services
            .read()
            .ok()
            .and_then(|m| m.get(service).cloned());
        let counters = match counters {
            Some(c) => c,
            None => match self.services.write() {
                Ok(mut m) => m
                    .entry(service.clone())
                    .or_insert_with(|| Arc::new(Counters::new(service)))
                    .clone(),
                Err(_) => return,
            },
        };
        if let Some(i) = CLASSES.iter().position(|c| *c == class) {
            counters.classes[i].fetch_add(1, Ordering::Relaxed);
            counters.requests[i].increment(1);
        }
        if let Some(b) = counters.buckets.get(HttpSample::bucket(ms)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        // Looked up each time (no string built): the exporter drops a
        // histogram idle for ten minutes, and a kept handle would then
        // record into nothing.
        metrics::histogram!(
            "berth_http_request_duration_seconds",
            "service" => metrics::SharedString::from(counters.name.clone())
        )
        .record(took.as_secs_f64());
    }

    /// The counts since the last call, per service that had requests (and
    /// zeroes them); services without requests since are forgotten.
    fn take(&self, router: &str, interval: Duration) -> Vec<(ServiceId, HttpSample)> {
        let Ok(mut m) = self.services.write() else {
            return Vec::new();
        };
        let time = Utc::now();
        let mut out = Vec::new();
        m.retain(|service, c| {
            let counts: BTreeMap<String, u64> = CLASSES
                .iter()
                .zip(&c.classes)
                .map(|(k, v)| ((*k).to_owned(), v.swap(0, Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            let buckets: Vec<u64> = c
                .buckets
                .iter()
                .map(|b| b.swap(0, Ordering::Relaxed))
                .collect();
            if counts.is_empty() {
                return false;
            }
            out.push((
                service.clone(),
                HttpSample {
                    router: router.to_owned(),
                    time,
                    interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX),
                    counts,
                    latency_buckets: buckets,
                },
            ));
            true
        });
        out
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
        let stats = HttpStats::default();
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        stats.record(&a, 200, Duration::from_millis(3));
        stats.record(&a, 204, Duration::from_millis(30));
        stats.record(&a, 503, Duration::from_secs(20));
        stats.record(&b, 404, Duration::from_millis(7));
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
        assert!(stats.services.read().map(|m| m.is_empty()).unwrap_or(false));
    }
}

//! The autoscaler: sizes autoscaled services from what their instances use.
//!
//! Each node samples its instances' cgroups (CPU time, memory) and
//! publishes one sample per service on `metrics.usage.<service>.<node>`
//! (core NATS). This copy of the scheduler listens to all of them but
//! keeps only those of the services it knows to be autoscaled (its passes
//! tell it, [`Autoscaler::note`]): per instance, the last sample and its
//! use in percent of the plan's CPU and memory. Every `every` it takes
//! one [`Reading`] per service (the instances sampled within the last
//! three intervals), keeps the readings of the scale-down window, and
//! asks the domain's rule ([`autoscaling::desired`]) for a change; a
//! change is sent as [`Command::Autoscale`], which the service records
//! only if its settings and count are still those decided on. What it
//! holds is bounded by the autoscaled services and their instances; at
//! 10,000 services it drops the others' samples after one map lookup.
//!
//! Several copies may run: each decides on the same samples, and the
//! command's key names the decision (service, count, when the count last
//! changed, and the new count), so the same decision by two copies is
//! recorded once, and a different one decided on a count already changed
//! is refused as stale.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::service::autoscaling::{self, Change, Reading, Timings};
use berth_domain::service::{Command, Service, ServiceState, ServiceStatus};
use berth_eventlog::{ExecuteError, Stamp};
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::metrics::UsageSample;
use berth_schemas::model::AutoscalingConfig;
use berth_schemas::{Actor, AggregateId};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Inner;

/// One instance as last sampled.
#[derive(Debug, Clone)]
struct Seen {
    /// When this copy received it (its own clock: a node's may be off).
    received: DateTime<Utc>,
    /// The sample's time (the node's clock: only compared with the same
    /// node's earlier samples).
    at: DateTime<Utc>,
    cpu_nanos: u64,
    /// Percent of the plan's CPU between its last two samples (none
    /// after the first).
    cpu_percent: Option<f64>,
    memory_percent: f64,
}

/// An autoscaled service as this copy knows it.
#[derive(Debug, Clone)]
struct Watched {
    on: AutoscalingConfig,
    count: u32,
    since: Option<DateTime<Utc>>,
    cpu_millis: u32,
    memory_mib: u32,
    /// The change under way is done: record it.
    reached: Option<u32>,
    /// Its instances: samples of others are dropped (a sample naming
    /// thousands of made-up instances holds nothing here).
    known: HashSet<InstanceId>,
    /// Its healthy instances: only their use counts (one starting may
    /// burn CPU warming up, or sit idle before it takes work).
    healthy: HashSet<InstanceId>,
    instances: HashMap<InstanceId, Seen>,
    readings: VecDeque<Reading>,
}

/// What a look asks of one service.
#[derive(Debug, Clone, PartialEq)]
enum Ask {
    Change {
        from: u32,
        since: Option<DateTime<Utc>>,
        on: AutoscalingConfig,
        change: Change,
    },
    Ended {
        to: u32,
        since: Option<DateTime<Utc>>,
    },
}

/// The autoscaled services this copy knows and their recent use.
#[derive(Debug)]
pub(crate) struct Autoscaler {
    watched: Mutex<HashMap<ServiceId, Watched>>,
    timings: Timings,
    every: Duration,
}

impl Autoscaler {
    pub(crate) fn new(timings: Timings, every: Duration) -> Self {
        Autoscaler {
            watched: Mutex::default(),
            timings,
            every,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceId, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass loaded `state`: watch the service while it is active and
    /// autoscaled, forget it otherwise.
    pub(crate) fn note(&self, service: &ServiceId, state: &ServiceState) {
        let on = state
            .autoscaling
            .enabled()
            .filter(|_| state.status == ServiceStatus::Active);
        let (Some(on), Some(cfg)) = (on, state.config.as_ref()) else {
            self.lock().remove(service);
            return;
        };
        let mut watched = self.lock();
        let w = watched.entry(service.clone()).or_insert_with(|| Watched {
            on: on.clone(),
            count: cfg.num_instances,
            since: None,
            cpu_millis: cfg.plan.cpu_millis,
            memory_mib: cfg.plan.memory_mib,
            reached: None,
            known: HashSet::new(),
            healthy: HashSet::new(),
            instances: HashMap::new(),
            readings: VecDeque::new(),
        });
        w.known = state.instances.iter().map(|i| i.id.clone()).collect();
        w.on = on.clone();
        w.healthy = state
            .instances
            .iter()
            .filter(|i| i.is_healthy())
            .map(|i| i.id.clone())
            .collect();
        w.count = cfg.num_instances;
        w.since = state.autoscaling.count_changed_at;
        w.cpu_millis = cfg.plan.cpu_millis;
        w.memory_mib = cfg.plan.memory_mib;
        w.reached = autoscaling::reached(state).map(|(_, to)| to);
    }

    /// A node's sample of `service`'s instances there, received at `now`.
    fn sample(&self, service: &ServiceId, s: &UsageSample, now: DateTime<Utc>) {
        let mut watched = self.lock();
        let Some(w) = watched.get_mut(service) else {
            return;
        };
        let cores = f64::from(w.cpu_millis.max(1)) / 1000.0;
        let memory = f64::from(w.memory_mib.max(1)) * 1024.0 * 1024.0;
        for u in s.instances.iter().filter(|u| w.known.contains(&u.instance)) {
            let cpu_percent = w.instances.get(&u.instance).and_then(|prev| {
                let secs = (s.time - prev.at).num_milliseconds() as f64 / 1000.0;
                (secs > 0.0 && u.cpu_nanos >= prev.cpu_nanos)
                    .then(|| (u.cpu_nanos - prev.cpu_nanos) as f64 / 1e9 / secs / cores * 100.0)
            });
            if w.instances.get(&u.instance).is_some_and(|p| p.at >= s.time) {
                // An older sample arriving late changes nothing.
                continue;
            }
            w.instances.insert(
                u.instance.clone(),
                Seen {
                    received: now,
                    at: s.time,
                    cpu_nanos: u.cpu_nanos,
                    cpu_percent,
                    memory_percent: u.memory_bytes as f64 / memory * 100.0,
                },
            );
        }
    }

    /// Takes a reading of every watched service at `now` and says what to
    /// ask of each.
    fn look(&self, now: DateTime<Utc>) -> Vec<(ServiceId, Ask)> {
        let stale = chrono::Duration::from_std(self.every * 3).unwrap_or_default();
        let kept = chrono::Duration::from_std(
            self.timings.scale_down_after + self.timings.settle + self.every * 2,
        )
        .unwrap_or_default();
        let mut asks = Vec::new();
        for (service, w) in self.lock().iter_mut() {
            w.instances.retain(|_, s| s.received >= now - stale);
            let measured: Vec<&Seen> = w
                .instances
                .iter()
                .filter(|(id, s)| s.cpu_percent.is_some() && w.healthy.contains(*id))
                .map(|(_, s)| s)
                .collect();
            if !measured.is_empty() {
                w.readings.push_back(Reading {
                    at: now,
                    instances: measured.len() as u32,
                    cpu_percent: measured.iter().filter_map(|s| s.cpu_percent).sum(),
                    memory_percent: measured.iter().map(|s| s.memory_percent).sum(),
                });
            }
            while w.readings.front().is_some_and(|r| r.at < now - kept) {
                w.readings.pop_front();
            }
            if let Some(to) = w.reached {
                asks.push((service.clone(), Ask::Ended { to, since: w.since }));
            }
            let readings = w.readings.make_contiguous();
            if let Some(change) =
                autoscaling::desired(&w.on, w.count, w.since, readings, now, &self.timings)
            {
                asks.push((
                    service.clone(),
                    Ask::Change {
                        from: w.count,
                        since: w.since,
                        on: w.on.clone(),
                        change,
                    },
                ));
            }
        }
        asks
    }
}

/// Listens to the nodes' samples and looks every `every`, until `shutdown`.
pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let subject = inner.store.subjects().usage_all();
    let mut samples = match inner.store.client().subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "autoscaler: samples not subscribed; no service is autoscaled by this copy");
            return;
        }
    };
    let autoscaler = &inner.autoscaler;
    let mut looks = tokio::time::interval(autoscaler.every);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            m = samples.next() => {
                let Some(m) = m else { return };
                // `<prefix>.metrics.usage.<service>.<node>`
                let service = m.subject.as_str().rsplit('.').nth(1).and_then(|s| s.parse::<ServiceId>().ok());
                let (Some(service), Ok(sample)) = (service, serde_json::from_slice::<UsageSample>(&m.payload)) else {
                    tracing::debug!(subject = %m.subject, "autoscaler: a sample it cannot read, skipped");
                    continue;
                };
                autoscaler.sample(&service, &sample, Utc::now());
            }
            _ = looks.tick() => {
                for (service, ask) in autoscaler.look(Utc::now()) {
                    ask_of(&inner, &service, ask).await;
                }
            }
        }
    }
}

/// Sends one look's ask; a refusal or failure is logged (the next look
/// asks again if it still should).
async fn ask_of(inner: &Inner, service: &ServiceId, ask: Ask) {
    let epoch = |since: Option<DateTime<Utc>>| since.map_or(0, |t| t.timestamp_millis());
    let (key, command) = match ask {
        Ask::Change {
            from,
            since,
            on,
            change,
        } => (
            format!("autoscale:{service}:{from}:{}:{}", epoch(since), change.to),
            Command::Autoscale { from, on, change },
        ),
        Ask::Ended { to, since } => (
            format!("autoscaling-ended:{service}:{to}:{}", epoch(since)),
            Command::RecordAutoscalingEnded { to },
        ),
    };
    let done = inner
        .store
        .execute::<Service>(
            &AggregateId::Service(service.clone()),
            &key,
            &Stamp::new(Actor::system("autoscaler")),
            command,
        )
        .await;
    match done {
        Ok(d) if d.appended.as_ref().is_some_and(|a| !a.duplicate) => {
            tracing::info!(service.id = %service, key, "autoscaler: recorded");
        }
        Ok(_) => {}
        Err(ExecuteError::Rejected(e)) => {
            tracing::warn!(service.id = %service, error = %e, "autoscaler: refused by the service's rules");
        }
        Err(e) => {
            tracing::warn!(service.id = %service, error = %e, "autoscaler: not recorded; the next look asks again")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use berth_schemas::ids::NodeId;
    use berth_schemas::metrics::InstanceUsage;
    use chrono::TimeZone;

    use super::*;

    fn watched(
        a: &Autoscaler,
        service: &ServiceId,
        count: u32,
        known: &[&InstanceId],
        healthy: &[&InstanceId],
    ) {
        a.lock().insert(
            service.clone(),
            Watched {
                on: AutoscalingConfig::on(1, 4, Some(50), None),
                count,
                since: None,
                cpu_millis: 500,
                memory_mib: 512,
                reached: None,
                known: known.iter().map(|i| (*i).clone()).collect(),
                healthy: healthy.iter().map(|i| (*i).clone()).collect(),
                instances: HashMap::new(),
                readings: VecDeque::new(),
            },
        );
    }

    fn sample(secs: i64, instances: &[(&InstanceId, u64)]) -> UsageSample {
        UsageSample {
            node: NodeId::generate(),
            time: Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap(),
            instances: instances
                .iter()
                .map(|(i, cpu_nanos)| InstanceUsage {
                    instance: (*i).clone(),
                    cpu_nanos: *cpu_nanos,
                    memory_bytes: 128 << 20,
                    memory_limit_bytes: 512 << 20,
                    cpu_limit_millis: 500,
                    disk_used_bytes: None,
                    disk_capacity_bytes: None,
                })
                .collect(),
        }
    }

    /// Feeds `s` as received at its own time.
    fn feed(a: &Autoscaler, svc: &ServiceId, s: &UsageSample) {
        a.sample(svc, s, s.time);
    }

    #[test]
    fn a_busy_instance_is_read_against_its_plan_and_more_are_asked_for() {
        let a = Autoscaler::new(Timings::default(), Duration::from_secs(5));
        let (svc, other) = (ServiceId::generate(), ServiceId::generate());
        let (i, starting, made_up) = (
            InstanceId::generate(),
            InstanceId::generate(),
            InstanceId::generate(),
        );
        watched(&a, &svc, 1, &[&i, &starting], &[&i]);
        // Half a core on a plan of half a core: 100 % of its CPU. One not
        // healthy yet, burning two cores, and one the service does not
        // have: not counted.
        feed(
            &a,
            &svc,
            &sample(0, &[(&i, 0), (&starting, 0), (&made_up, 0)]),
        );
        feed(
            &a,
            &svc,
            &sample(
                10,
                &[
                    (&i, 5_000_000_000),
                    (&starting, 20_000_000_000),
                    (&made_up, 90_000_000_000),
                ],
            ),
        );
        assert!(!a.lock()[&svc].instances.contains_key(&made_up), "not kept");
        // Samples of a service not autoscaled are not kept.
        feed(&a, &other, &sample(10, &[(&i, 0)]));
        assert!(!a.lock().contains_key(&other));
        let now = Utc.timestamp_opt(1_800_000_011, 0).unwrap();
        let asks = a.look(now);
        let w = a.lock().get(&svc).cloned().unwrap();
        let r = w.readings.back().unwrap();
        assert_eq!(r.instances, 1);
        assert!((r.cpu_percent - 100.0).abs() < 0.01, "{r:?}");
        assert!((r.memory_percent - 25.0).abs() < 0.01, "{r:?}");
        assert_eq!(asks.len(), 1, "{asks:?}");
        let Ask::Change { from, change, .. } = &asks[0].1 else {
            panic!("{asks:?}")
        };
        assert_eq!((*from, change.to, change.cpu), (1, 2, Some(100)));
    }

    #[test]
    fn a_node_whose_clock_is_off_is_still_counted() {
        let a = Autoscaler::new(Timings::default(), Duration::from_secs(5));
        let svc = ServiceId::generate();
        let i = InstanceId::generate();
        watched(&a, &svc, 1, &[&i], &[&i]);
        // The node's clock is an hour behind this copy's.
        let here = Utc.timestamp_opt(1_800_003_600, 0).unwrap();
        a.sample(&svc, &sample(0, &[(&i, 0)]), here);
        a.sample(&svc, &sample(10, &[(&i, 1_000_000_000)]), here);
        a.look(here);
        let w = a.lock()[&svc].clone();
        let r = w.readings.back().unwrap();
        assert_eq!(r.instances, 1);
        assert!((r.cpu_percent - 20.0).abs() < 0.01, "{r:?}");
    }

    #[test]
    fn an_instance_no_longer_sampled_is_let_go_and_old_readings_too() {
        let a = Autoscaler::new(
            Timings {
                settle: Duration::from_secs(1),
                scale_down_after: Duration::from_secs(10),
            },
            Duration::from_secs(1),
        );
        let svc = ServiceId::generate();
        let (i, j) = (InstanceId::generate(), InstanceId::generate());
        watched(&a, &svc, 2, &[&i, &j], &[&i, &j]);
        feed(&a, &svc, &sample(0, &[(&i, 0), (&j, 0)]));
        feed(
            &a,
            &svc,
            &sample(1, &[(&i, 250_000_000), (&j, 250_000_000)]),
        );
        let at = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
        a.look(at(1));
        assert_eq!(a.lock()[&svc].readings.back().unwrap().instances, 2);
        // `j` is no longer sampled; `i` is.
        for s in 2..30 {
            feed(&a, &svc, &sample(s, &[(&i, 250_000_000 * s as u64)]));
            a.look(at(s));
        }
        let w = a.lock()[&svc].clone();
        assert!(
            !w.instances.contains_key(&j),
            "an instance gone is forgotten"
        );
        assert_eq!(w.readings.back().unwrap().instances, 1);
        assert!(
            w.readings.len() <= 14,
            "readings beyond the window are let go: {}",
            w.readings.len()
        );
        // An older sample arriving late is ignored.
        feed(&a, &svc, &sample(3, &[(&i, 0)]));
        assert_eq!(a.lock()[&svc].instances[&i].cpu_nanos, 250_000_000 * 29);
    }
}

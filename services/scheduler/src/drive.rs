//! One service, one pass: load its state and the cluster, ask the domain
//! for the pass's [`steps`] (the running deploy's pipeline, then
//! reconcile's plan), and carry them out ([`carry`](crate::carry)).
//! Level-triggered and idempotent: every pass starts from the log, so a
//! pass after a crash (or by another scheduler copy) finishes what an
//! interrupted one began. Each append names the version the steps were
//! made on: once one moves the service (ours, or a conflict because
//! someone else did), the rest are stale and the service is loaded and
//! asked again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::scheduler::{steps, RandomIds};
use berth_domain::service::{self, Command, Service, ServiceState};
use berth_eventlog::{EventStore, ExecuteError, Stamp, Version};
use berth_schemas::commands::NodeWork;
use berth_schemas::ids::{NodeId, ServiceId};
use berth_schemas::{Actor, AggregateId, Subjects};
use chrono::Utc;

use crate::carry;
use crate::{Inner, SchedulerError};

/// Passes of one drive before giving up (each after a conflict or a step).
const MAX_ROUNDS: usize = 12;

/// What a pass leaves to do.
pub(crate) enum Next {
    /// Nothing until the next event, or until `requeue`.
    Done(Option<Duration>),
    /// State moved (our append or someone else's): pass again.
    Again,
}

/// The stream sequence of the state each service's last finished drive was
/// made on (one entry per service, as the per-service locks).
#[derive(Debug, Default)]
pub(crate) struct Driven(Mutex<HashMap<ServiceId, u64>>);

impl Driven {
    /// A drive of `service` finished on its state at stream sequence `seq`.
    pub(crate) fn record(&self, service: &ServiceId, seq: u64) {
        let mut driven = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = driven.entry(service.clone()).or_default();
        *at = (*at).max(seq);
    }

    /// Forgets `service` (deleted, nothing of it left on nodes).
    pub(crate) fn forget(&self, service: &ServiceId) {
        let mut driven = self.0.lock().unwrap_or_else(|p| p.into_inner());
        driven.remove(service);
    }

    /// Services remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a drive of `service` finished on a state at or past stream
    /// sequence `seq` (so it acted on the commit stored there).
    pub(crate) fn past(&self, service: &ServiceId, seq: u64) -> bool {
        let driven = self.0.lock().unwrap_or_else(|p| p.into_inner());
        driven.get(service).is_some_and(|&at| at >= seq)
    }
}

/// How long a pass under way when the scheduler is told to stop may take
/// to finish before it is dropped (safe: every pass starts from the log,
/// so the next start finishes what it began).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);

/// Drives `service` until a pass has nothing left to do, or the scheduler
/// stops. `for_commit` is the stream sequence of the commit that asks for
/// this drive, if one does: when a drive of this copy has since finished
/// on a state at or past it, that drive acted on the commit already
/// (passes read the log, never a message), and nothing is loaded — a
/// scheduler catching up on a burst drives a service once per burst, not
/// once per commit.
pub(crate) async fn drive(
    inner: &Inner,
    service: &ServiceId,
    for_commit: Option<u64>,
) -> Result<(), SchedulerError> {
    let stopped = async {
        inner.shutdown.cancelled().await;
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
    };
    tokio::select! {
        done = rounds(inner, service, for_commit) => done,
        _ = stopped => {
            tracing::debug!(service.id = %service, "pass dropped at shutdown");
            Ok(())
        }
    }
}

async fn rounds(
    inner: &Inner,
    service: &ServiceId,
    for_commit: Option<u64>,
) -> Result<(), SchedulerError> {
    let lock = inner.service_lock(service);
    let _held = lock.lock().await;
    if for_commit.is_some_and(|seq| inner.driven.past(service, seq)) {
        return Ok(());
    }
    for _ in 0..MAX_ROUNDS {
        if inner.shutdown.is_cancelled() {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let next = pass(inner, service).await;
        metrics::histogram!("berth_scheduler_pass_seconds").record(t0.elapsed().as_secs_f64());
        match next? {
            (Next::Done(requeue), seen, gone) => {
                if let Some(after) = requeue {
                    inner.requeue(service, after);
                }
                if gone && requeue.is_none() {
                    // Deleted with nothing left on nodes: what this copy
                    // keeps per service leaves with it.
                    inner.forget(service, &lock);
                } else {
                    inner.driven.record(service, seen);
                }
                return Ok(());
            }
            (Next::Again, ..) => {}
        }
    }
    // Busy, not broken: try again soon rather than fail the event.
    inner.requeue(service, Duration::from_millis(200));
    Ok(())
}

/// One decision on one loaded state.
pub(crate) struct Pass<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) service: &'a ServiceId,
    aggregate: AggregateId,
    pub(crate) version: Version,
    pub(crate) state: Arc<ServiceState>,
}

impl Pass<'_> {
    /// Decides `command` on the loaded state and appends the outcome at the
    /// loaded version (the plan was made on it). True when something was
    /// appended (or someone else changed the service): the caller passes
    /// again.
    pub(crate) async fn decide(&self, command: Command, key: &str) -> Result<bool, SchedulerError> {
        let what = format!("{command:?}");
        let done = self
            .inner
            .store
            .execute_on::<Service>(
                &self.aggregate,
                (Arc::clone(&self.state), self.version),
                key,
                &Stamp::new(Actor::system("scheduler")),
                command,
            )
            .await;
        match done {
            Ok(done) => match done.appended {
                Some(a) => {
                    tracing::debug!(service.id = %self.service, key, duplicate = a.duplicate, "appended");
                    if !a.duplicate {
                        crate::say::outcomes(&self.inner.store, self.service, &a.events).await;
                    }
                    Ok(true)
                }
                None => Ok(false),
            },
            Err(ExecuteError::Rejected(e)) => {
                // The plan was made on this very state, so a refusal is a
                // rule this scheduler disagrees with: log it, do not loop.
                tracing::warn!(service.id = %self.service, command = %what, error = %e, "decision refused by the service rules");
                Ok(false)
            }
            Err(ExecuteError::Append(e)) if e.is_conflict() => Ok(true),
            Err(e) => Err(SchedulerError::Store(e.to_string())),
        }
    }

    pub(crate) async fn enqueue(
        &self,
        node: &NodeId,
        work: &NodeWork,
        id: &str,
    ) -> Result<(), SchedulerError> {
        enqueue(&self.inner.store, node, self.service, work, id).await
    }
}

/// Puts `work` on `node`'s queue, keyed by `service`; `id` dedupes repeats.
pub(crate) async fn enqueue(
    store: &EventStore,
    node: &NodeId,
    service: &ServiceId,
    work: &NodeWork,
    id: &str,
) -> Result<(), SchedulerError> {
    let payload = rmp_serde::to_vec_named(work)
        .map_err(|e| SchedulerError::Store(format!("encoding work: {e}")))?;
    store
        .enqueue(
            &Subjects::node_queue(node),
            service.as_str(),
            payload.into(),
            id,
        )
        .await
        .map_err(SchedulerError::store)?;
    Ok(())
}

/// One pass, the stream sequence of the state it was made on, and whether
/// the service is gone (deleted or never created, no instance left).
async fn pass(inner: &Inner, service: &ServiceId) -> Result<(Next, u64, bool), SchedulerError> {
    let aggregate = AggregateId::Service(service.clone());
    // The store's folded state: a pass folds only what was appended since
    // the last one, not the service's history.
    let (state, version) = inner
        .store
        .state::<ServiceState, _>(&aggregate, service::fold)
        .await
        .map_err(SchedulerError::store)?;
    inner.cluster.record_service(service, &state);
    inner.autoscaler.note(service, &state);
    let seen = version.stream_seq;
    let gone = !state.exists() && state.instances.is_empty();
    let Some(cfg) = state.config.clone() else {
        return Ok((Next::Done(None), seen, gone));
    };
    // A node another copy placed on that this copy has not loaded yet
    // would look gone: load it first, so nothing is placed twice.
    let unknown: BTreeSet<NodeId> = state
        .instances
        .iter()
        .filter(|i| !inner.cluster.knows(&i.node))
        .map(|i| i.node.clone())
        .collect();
    for node in unknown {
        inner.cluster.refresh_node(&node).await?;
    }
    let view = inner.cluster.view(service);
    let steps = steps(
        &state,
        version.stream_seq,
        &view,
        &inner.timings(),
        Utc::now(),
        &mut RandomIds,
    );
    let p = Pass {
        inner,
        service,
        aggregate,
        version,
        state,
    };
    Ok((carry::carry_out(&p, &cfg, steps).await?, seen, gone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_covered_once_a_drive_finished_on_a_state_at_or_past_it() {
        let driven = Driven::default();
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        assert!(!driven.past(&a, 1), "never driven");
        driven.record(&a, 10);
        assert!(driven.past(&a, 9) && driven.past(&a, 10));
        assert!(!driven.past(&a, 11), "a later commit is not covered");
        assert!(!driven.past(&b, 1), "per service");
        driven.record(&a, 7);
        assert!(
            driven.past(&a, 10),
            "an older drive finishing late does not go back"
        );
    }
}

//! The schedule loop: every tick, for each active cron job with a live
//! digest, the latest due time not yet handled gets a `StartCronRun`; runs
//! that outlived their cap (plus grace) without their node reporting are
//! ended `timed_out`.
//!
//! A due time is tried once per process: a refusal (no live deploy yet,
//! suspended) is logged and the next due time is waited for. Two cron
//! copies ticking at once append the same run id under the same key, and
//! the rules take a start of a known run as already done, so a due time
//! starts at most one run.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use berth_domain::service::{self, ServiceStatus};
use berth_eventlog::EventStore;
use berth_schemas::ids::{CronRunId, ServiceId};
use berth_schemas::Actor;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::schedule::Schedule;
use crate::view::{CronView, SCHEDULE_CAUSE};
use crate::{decide, scheduled_run_id, CronError, CronOptions};

/// What one tick does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start (or skip) the run due at `due`.
    Start {
        service: ServiceId,
        due: DateTime<Utc>,
    },
    /// End a run its node never reported on.
    Expire { service: ServiceId, run: CronRunId },
}

/// The actions due at `now` (schedule clock) / `wall` (real time, for the
/// cap), given the due times this process already tried.
pub fn due_actions(
    view: &CronView,
    tried: &HashMap<ServiceId, DateTime<Utc>>,
    opts: &CronOptions,
    now: DateTime<Utc>,
    wall: DateTime<Utc>,
) -> Vec<Action> {
    let cap = chrono::Duration::from_std(opts.run_timeout + opts.cap_grace)
        .unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for (id, job) in &view.jobs {
        let state = &job.state;
        if let Some(active) = &state.cron.active {
            if active.started_at.is_some_and(|t| t + cap < wall) {
                out.push(Action::Expire {
                    service: id.clone(),
                    run: active.id.clone(),
                });
            }
        }
        if state.status != ServiceStatus::Active || state.current_digest().is_none() {
            continue;
        }
        let Some(text) = state.config.as_ref().and_then(|c| c.schedule.as_deref()) else {
            continue;
        };
        let schedule = match Schedule::parse(text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service.id = %id, error = %e, "cron job schedule does not parse");
                continue;
            }
        };
        // From the latest handled time, else from when the job went live
        // (due times before it had nothing to run).
        let since = [
            job.last_scheduled,
            tried.get(id).copied(),
            state.live_deploy().and_then(|d| d.finished_at),
            state.created_at,
        ]
        .into_iter()
        .flatten()
        .max();
        let Some(since) = since else { continue };
        if let Some(due) = schedule.latest_due(since, now) {
            out.push(Action::Start {
                service: id.clone(),
                due,
            });
        }
    }
    out
}

/// Ticks until `shutdown`.
pub async fn run(
    store: EventStore,
    view: Arc<RwLock<CronView>>,
    opts: CronOptions,
    shutdown: CancellationToken,
) {
    let mut tried: HashMap<ServiceId, DateTime<Utc>> = HashMap::new();
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let actions = {
            let v = view.read().unwrap_or_else(|p| p.into_inner());
            due_actions(&v, &tried, &opts, opts.clock.now(), Utc::now())
        };
        for action in actions {
            if let Action::Start { service, due } = &action {
                tried.insert(service.clone(), *due);
            }
            if let Err(e) = carry_out(&store, &action).await {
                tracing::warn!(action = ?action, error = %e, "cron action not done");
            }
        }
    }
}

async fn carry_out(store: &EventStore, action: &Action) -> Result<(), CronError> {
    let actor = Actor::system("cron");
    match action {
        Action::Start { service, due } => {
            let run = scheduled_run_id(service, *due)?;
            let command = service::Command::StartCronRun {
                run: run.clone(),
                manual: false,
                scheduled_for: Some(*due),
            };
            let cause = format!("{SCHEDULE_CAUSE}{}", due.to_rfc3339());
            decide(
                store,
                service,
                &format!("cron-start:{run}"),
                command,
                &actor,
                &cause,
            )
            .await?;
            tracing::info!(service.id = %service, run.id = %run, due = %due, "cron run due");
            Ok(())
        }
        Action::Expire { service, run } => {
            let command = service::Command::RecordCronRunEnded {
                run: run.clone(),
                status: "timed_out".to_owned(),
                exit_code: None,
            };
            tracing::warn!(service.id = %service, run.id = %run, "cron run outlived its cap without a report; recording timed_out");
            decide(
                store,
                service,
                &format!("cron-expire:{run}"),
                command,
                &actor,
                &format!("cron-expire:{run}"),
            )
            .await
        }
    }
}

//! The schedule loop: every tick, for each active cron job with a live
//! digest, the latest due time not yet handled gets a `StartCronRun`; runs
//! that outlived their cap (plus grace) without their node reporting are
//! ended `timed_out`, and runs given to a node since declared lost are
//! ended `failed` (they would otherwise hold every later due time until
//! the cap).
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
use berth_schemas::ids::{CronRunId, JobId, NodeId, ServiceId};
use berth_schemas::Actor;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::schedule::Schedule;
use crate::view::{CronView, SCHEDULE_CAUSE};
use crate::{decide, scheduled_run_id, CronError, CronOptions};

/// Causation id prefix of the ends the loss of a node caused (the node's
/// id follows): the dispatcher stops the container on that node, should
/// it come back.
pub const NODE_LOST_CAUSE: &str = "node-lost:";

/// The causation id of an end `node`'s loss caused.
fn lost(node: &NodeId) -> String {
    format!("{NODE_LOST_CAUSE}{node}")
}

/// Why a job or cron run whose node was lost ends.
pub const RUN_NODE_LOST: &str =
    "its node was lost while it ran (or before it started); not run again, as it may have done part of its work";

/// Why a cron run no end was reported for ends `timed_out`.
pub const RUN_UNREPORTED: &str =
    "its node reported no end within its time limit (and a grace after it); counted as timed out";

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
    /// End a run whose node was lost.
    NodeLost {
        service: ServiceId,
        run: CronRunId,
        node: NodeId,
    },
    /// End a one-off job whose node was lost.
    JobNodeLost {
        service: ServiceId,
        job: JobId,
        node: NodeId,
    },
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
    for (service, jobs) in &view.placed_jobs {
        for (job, node) in jobs {
            if view.is_lost(node) {
                out.push(Action::JobNodeLost {
                    service: service.clone(),
                    job: job.clone(),
                    node: node.clone(),
                });
            }
        }
    }
    for (id, job) in &view.jobs {
        let state = &job.state;
        if let Some(active) = &state.cron.active {
            let lost = active.node.as_ref().filter(|n| view.is_lost(n));
            if active.started_at.is_some_and(|t| t + cap < wall) {
                out.push(Action::Expire {
                    service: id.clone(),
                    run: active.id.clone(),
                });
            } else if let Some(node) = lost {
                out.push(Action::NodeLost {
                    service: id.clone(),
                    run: active.id.clone(),
                    node: node.clone(),
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
            let outcome = carry_out(&store, &action).await;
            if let Err(e) = &outcome {
                tracing::warn!(action = ?action, error = %e, "cron action not done");
            }
            // A due time the rules refused (no live deploy yet, suspended)
            // is not tried again; one the store did not take is.
            if let (Action::Start { service, due }, Ok(()) | Err(CronError::Refused(_))) =
                (&action, &outcome)
            {
                tried.insert(service.clone(), *due);
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
                reason: Some(RUN_UNREPORTED.to_owned()),
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
        Action::NodeLost { service, run, node } => {
            let command = service::Command::RecordCronRunEnded {
                run: run.clone(),
                status: "failed".to_owned(),
                exit_code: None,
                reason: Some(RUN_NODE_LOST.to_owned()),
            };
            tracing::warn!(service.id = %service, run.id = %run, node.id = %node, "the node running the cron run was lost; recording failed");
            let key = format!("cron-node-lost:{run}");
            decide(store, service, &key, command, &actor, &lost(node)).await
        }
        Action::JobNodeLost { service, job, node } => {
            let command = service::Command::RecordJobEnded {
                job: job.clone(),
                success: false,
                exit_code: None,
                reason: Some(RUN_NODE_LOST.to_owned()),
            };
            tracing::warn!(service.id = %service, job.id = %job, node.id = %node, "the node running the job was lost; recording failed");
            let key = format!("job-node-lost:{job}");
            decide(store, service, &key, command, &actor, &lost(node)).await
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::view::Job;
    use berth_domain::service::{apply_at, decide, Command, CreateService};
    use berth_domain::Ctx;
    use berth_schemas::ids::{DeployId, NodeId, OwnerId, UserId};
    use berth_schemas::model::{ResolvedImage, Sealed, ServiceType};
    use chrono::TimeZone;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, s).unwrap()
    }

    fn run(state: ServiceState, c: Command, at: DateTime<Utc>) -> ServiceState {
        logged(state, c, at, &mut Vec::new())
    }

    /// `run`, adding the events decided to `log`.
    fn logged(
        state: ServiceState,
        c: Command,
        at: DateTime<Utc>,
        log: &mut Vec<berth_schemas::Event>,
    ) -> ServiceState {
        let events = decide(&state, c, &Ctx::default()).unwrap();
        log.extend(events.iter().cloned());
        events.iter().fold(state, |s, e| apply_at(s, e, Some(at)))
    }

    use berth_domain::service::ServiceState;

    /// A cron job created and live at 10:00:30, schedule `*/10 * * * *`.
    fn live_job() -> ServiceState {
        live_job_logged(&mut Vec::new())
    }

    /// `live_job`, adding its events to `log`.
    fn live_job_logged(log: &mut Vec<berth_schemas::Event>) -> ServiceState {
        let d = DeployId::generate();
        let mut c = CreateService::new(
            OwnerId::User(UserId::generate()),
            "job",
            ServiceType::CronJob,
            "registry.example.com/team/job:v1",
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            d.clone(),
        );
        c.schedule = Some("*/10 * * * *".into());
        let at = t(10, 0, 30);
        let s = logged(
            ServiceState::default(),
            Command::Create(Box::new(c)),
            at,
            log,
        );
        to_live(s, d, at, log)
    }

    /// `d`, requested, taken through to live at `at`.
    fn to_live(
        s: ServiceState,
        d: DeployId,
        at: DateTime<Utc>,
        log: &mut Vec<berth_schemas::Event>,
    ) -> ServiceState {
        let steps = [
            Command::RecordResolved {
                deploy: d.clone(),
                image: ResolvedImage {
                    digest: DIGEST.into(),
                    index_digest: None,
                    compressed_size: 1,
                },
            },
            Command::RecordPulled {
                deploy: d.clone(),
                node: NodeId::generate(),
                digest: DIGEST.into(),
            },
            Command::RecordUpdateStarted { deploy: d.clone() },
            Command::RecordLive {
                deploy: d,
                digest: DIGEST.into(),
            },
        ];
        steps
            .into_iter()
            .fold(s, |s, step| logged(s, step, at, log))
    }

    /// A live cron job deployed five more times (each replacing the one
    /// before), and every event of it.
    fn redeployed_job() -> (ServiceState, Vec<berth_schemas::Event>) {
        use berth_domain::service::DeployRequest;
        use berth_schemas::model::DeployTrigger;
        let mut log = Vec::new();
        let mut s = live_job_logged(&mut log);
        for _ in 0..5 {
            let d = DeployId::generate();
            let request = DeployRequest::new(d.clone(), DeployTrigger::Api);
            s = logged(s, Command::RequestDeploy(request), t(10, 0, 30), &mut log);
            s = to_live(s, d, t(10, 0, 30), &mut log);
        }
        assert_eq!(s.deploys.len(), 6, "the rules hold the ended deploys");
        (s, log)
    }

    /// The view's one job holds its live deploy and at most one ended one
    /// (the fold lets ended deploys go one look at a time), and ticks as
    /// the whole state does.
    fn holds_the_live_deploy_alone(v: &CronView, whole: &ServiceState) {
        let job = v.jobs.values().next().unwrap();
        assert!(job.state.deploys.len() <= 2, "{:?}", job.state.deploys);
        assert_eq!(
            job.state.live_deploy().map(|d| &d.id),
            whole.live_deploy().map(|d| &d.id)
        );
        let (full, _) = view(whole.clone(), None);
        let tried = HashMap::new();
        let expected = starts(&full, &tried, t(10, 20, 5));
        assert!(!expected.is_empty());
        assert_eq!(starts(v, &tried, t(10, 20, 5)), expected);
    }

    #[test]
    fn the_view_holds_no_ended_deploys_folded_or_restored() {
        use berth_eventlog::projection::Projection;
        let (whole, events) = redeployed_job();
        // Folded from the log.
        let id = berth_schemas::AggregateId::Service(ServiceId::generate());
        let mut folded = CronView::default();
        for (i, event) in events.into_iter().enumerate() {
            let env = berth_schemas::Envelope {
                id: berth_schemas::ids::EventId::generate(),
                version: event.version(),
                aggregate: id.clone(),
                sequence: i as u64 + 1,
                time: t(10, 0, 30),
                actor: berth_schemas::Actor::system("test"),
                correlation_id: None,
                causation_id: None,
                event,
            };
            folded.apply(i as u64 + 1, &env);
        }
        holds_the_live_deploy_alone(&folded, &whole);
        // Restored from a snapshot that held every recent deploy.
        let (snapshot, _) = view(whole.clone(), None);
        let mut restored = CronView::default();
        restored.restore(snapshot);
        holds_the_live_deploy_alone(&restored, &whole);
    }

    fn view(state: ServiceState, last: Option<DateTime<Utc>>) -> (CronView, ServiceId) {
        let id = ServiceId::generate();
        let mut v = CronView::default();
        v.jobs.insert(
            id.clone(),
            Job {
                state,
                last_scheduled: last,
            },
        );
        (v, id)
    }

    fn starts(
        v: &CronView,
        tried: &HashMap<ServiceId, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        due_actions(v, tried, &CronOptions::default(), now, now)
            .into_iter()
            .filter_map(|a| match a {
                Action::Start { due, .. } => Some(due),
                Action::Expire { .. } | Action::NodeLost { .. } | Action::JobNodeLost { .. } => {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn the_latest_unhandled_due_time_starts_once() {
        let (v, id) = view(live_job(), None);
        let mut tried = HashMap::new();
        assert!(starts(&v, &tried, t(10, 9, 59)).is_empty());
        assert_eq!(starts(&v, &tried, t(10, 10, 0)), vec![t(10, 10, 0)]);
        // Down from 10:10 to 10:45: only 10:40 runs, not 10:20 and 10:30.
        assert_eq!(starts(&v, &tried, t(10, 45, 0)), vec![t(10, 40, 0)]);
        tried.insert(id, t(10, 40, 0));
        assert!(starts(&v, &tried, t(10, 45, 0)).is_empty());
        // Handled in the log (another copy, or before a restart).
        let (v, _) = view(live_job(), Some(t(10, 40, 0)));
        assert!(starts(&v, &HashMap::new(), t(10, 49, 0)).is_empty());
        assert_eq!(
            starts(&v, &HashMap::new(), t(10, 50, 0)),
            vec![t(10, 50, 0)]
        );
    }

    #[test]
    fn suspended_jobs_and_jobs_without_a_live_digest_are_not_started() {
        let s = run(live_job(), Command::Suspend, t(10, 1, 0));
        let (v, _) = view(s, None);
        assert!(starts(&v, &HashMap::new(), t(10, 30, 0)).is_empty());
        let mut s = live_job();
        s.live = None;
        let (v, _) = view(s, None);
        assert!(starts(&v, &HashMap::new(), t(10, 30, 0)).is_empty());
    }

    /// A live job with a manual run started at 10:01.
    fn with_manual_run() -> (CronRunId, ServiceState) {
        let run_id = CronRunId::generate();
        let s = run(
            live_job(),
            Command::StartCronRun {
                run: run_id.clone(),
                manual: true,
                scheduled_for: None,
            },
            t(10, 1, 0),
        );
        (run_id, s)
    }

    #[test]
    fn a_run_past_cap_and_grace_is_expired() {
        let (run_id, s) = with_manual_run();
        let (v, id) = view(s, Some(t(23, 0, 0)));
        let opts = CronOptions::default();
        let expire = |wall| {
            due_actions(&v, &HashMap::new(), &opts, t(23, 0, 0), wall)
                .into_iter()
                .any(|a| {
                    a == Action::Expire {
                        service: id.clone(),
                        run: run_id.clone(),
                    }
                })
        };
        // 12 h cap + 5 min grace from 10:01.
        assert!(!expire(t(22, 5, 59)));
        assert!(expire(t(22, 6, 1)));
    }

    #[test]
    fn a_run_given_to_a_node_since_lost_fails() {
        let node = NodeId::generate();
        let (run_id, mut s) = with_manual_run();
        let ended = |s: &ServiceState, lost: bool| {
            let (mut v, id) = view(s.clone(), Some(t(10, 0, 0)));
            v.nodes.insert(
                node.clone(),
                berth_domain::node::NodeState {
                    lost,
                    ..Default::default()
                },
            );
            let want = Action::NodeLost {
                service: id,
                run: run_id.clone(),
                node: node.clone(),
            };
            due_actions(
                &v,
                &HashMap::new(),
                &CronOptions::default(),
                t(10, 2, 0),
                t(10, 2, 0),
            )
            .contains(&want)
        };
        // Not placed yet: nothing to say of any node.
        assert!(!ended(&s, true));
        s = run(
            s,
            Command::RecordCronRunPlaced {
                run: run_id.clone(),
                node: node.clone(),
            },
            t(10, 1, 1),
        );
        assert_eq!(
            s.cron.active.as_ref().and_then(|a| a.node.clone()),
            Some(node.clone())
        );
        assert!(!ended(&s, false), "its node is live");
        assert!(ended(&s, true));
        // Placed again on the same node: nothing new is recorded; a run
        // no longer active is not placed.
        let again = Command::RecordCronRunPlaced {
            run: run_id.clone(),
            node: node.clone(),
        };
        assert!(decide(&s, again, &Ctx::default()).unwrap().is_empty());
        let other = Command::RecordCronRunPlaced {
            run: CronRunId::generate(),
            node: node.clone(),
        };
        assert!(decide(&s, other, &Ctx::default()).unwrap().is_empty());
    }

    /// What the dispatch sweep takes up: jobs still pending, and the
    /// active run given to no node, once past the limit; a job placed,
    /// started or ended, and a run placed, are not.
    #[test]
    fn stuck_jobs_and_runs_are_those_undispatched_past_the_limit() {
        use crate::view::Stuck;
        use berth_eventlog::projection::Projection;
        use berth_schemas::events::{JobCreated, JobEnded, JobPlaced, JobStarted};
        use berth_schemas::model::Plan;
        let service = ServiceId::generate();
        let (a, b, c) = (JobId::generate(), JobId::generate(), JobId::generate());
        let mut v = CronView::default();
        let env = |event: berth_schemas::Event, at| berth_schemas::Envelope {
            id: berth_schemas::ids::EventId::generate(),
            version: event.version(),
            aggregate: berth_schemas::AggregateId::Service(service.clone()),
            sequence: 1,
            time: at,
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        };
        let created = |job: &JobId| -> berth_schemas::Event {
            JobCreated {
                job: job.clone(),
                start_command: "true".into(),
                plan: Plan {
                    name: "starter".into(),
                    cpu_millis: 500,
                    memory_mib: 512,
                },
                digest: DIGEST.into(),
            }
            .into()
        };
        v.apply(1, &env(created(&a), t(10, 0, 0)));
        v.apply(2, &env(created(&b), t(10, 0, 0)));
        v.apply(3, &env(created(&c), t(10, 0, 50)));
        let job = |j: &JobId| Stuck::Job {
            service: service.clone(),
            job: j.clone(),
        };
        let mut first = vec![job(&a), job(&b)];
        first.sort_by_key(|s| format!("{s:?}"));
        let mut got = v.stuck(t(10, 0, 30));
        got.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(got, first, "created before the limit, not yet dispatched");
        let node = NodeId::generate();
        v.apply(
            4,
            &env(
                JobPlaced {
                    job: a.clone(),
                    node,
                }
                .into(),
                t(10, 1, 0),
            ),
        );
        v.apply(5, &env(JobStarted { job: b.clone() }.into(), t(10, 1, 0)));
        assert_eq!(v.stuck(t(10, 2, 0)), vec![job(&c)]);
        let ended = JobEnded {
            job: c.clone(),
            status: "canceled".into(),
            exit_code: None,
            reason: None,
        };
        v.apply(6, &env(ended.into(), t(10, 1, 0)));
        assert!(v.stuck(t(10, 2, 0)).is_empty());

        // A run started at 10:01 and given to no node.
        let (run_id, s) = with_manual_run();
        let (mut v, id) = view(s.clone(), None);
        assert!(v.stuck(t(10, 1, 0)).is_empty(), "not past the limit yet");
        assert_eq!(
            v.stuck(t(10, 1, 1)),
            vec![Stuck::Run {
                service: id.clone(),
                run: run_id.clone()
            }]
        );
        let placed = run(
            s,
            Command::RecordCronRunPlaced {
                run: run_id,
                node: NodeId::generate(),
            },
            t(10, 1, 0),
        );
        v.jobs.get_mut(&id).unwrap().state = placed;
        assert!(v.stuck(t(10, 20, 0)).is_empty(), "placed");
    }

    #[test]
    fn a_job_given_to_a_node_since_lost_fails_until_it_ends() {
        let service = ServiceId::generate();
        let (job, node) = (JobId::generate(), NodeId::generate());
        let mut v = CronView::default();
        let env = |event: berth_schemas::Event| berth_schemas::Envelope {
            id: berth_schemas::ids::EventId::generate(),
            version: event.version(),
            aggregate: berth_schemas::AggregateId::Service(service.clone()),
            sequence: 1,
            time: Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        };
        use berth_eventlog::projection::Projection;
        v.apply(
            1,
            &env(berth_schemas::events::JobPlaced {
                job: job.clone(),
                node: node.clone(),
            }
            .into()),
        );
        let lost = |v: &CronView| {
            due_actions(
                v,
                &HashMap::new(),
                &CronOptions::default(),
                t(10, 0, 0),
                t(10, 0, 0),
            )
            .contains(&Action::JobNodeLost {
                service: service.clone(),
                job: job.clone(),
                node: node.clone(),
            })
        };
        assert!(!lost(&v), "its node is not known lost");
        v.nodes.insert(
            node.clone(),
            berth_domain::node::NodeState {
                lost: true,
                ..Default::default()
            },
        );
        assert!(lost(&v));
        // Once it ended (failed for that, or otherwise), nothing more.
        v.apply(
            2,
            &env(berth_schemas::events::JobEnded {
                job: job.clone(),
                status: "failed".into(),
                exit_code: None,
                reason: None,
            }
            .into()),
        );
        assert!(!lost(&v));
        assert!(v.placed_jobs.is_empty());
    }
}

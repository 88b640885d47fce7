//! The fault suite: a workload of deploys (API, deploy hook, bus), scales,
//! restarts and rollbacks against three services of an installation whose
//! components run as their own `berth run` processes, while faults are
//! injected (one kind per test, and all mixed); afterwards the history is
//! checked against a model (see `model.rs`, `verdict.rs`) and a report is
//! printed and written under the target dir. See docs/testing.md.
//!
//! `BERTH_FAULTS_SEED` repeats a run's plan; `BERTH_FAULTS_ROUNDS` sets
//! how many fault rounds each test runs (longer runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fault;
mod model;
mod nodes;
mod notify;
mod report;
mod rng;
mod verdict;
mod workload;
mod world;

use std::time::{Duration, Instant};

use berth_schemas::model::DeployStatus;
use futures::future::join_all;

use crate::fault::{Fault, FaultKind};
use crate::model::Log;
use crate::rng::Rng;
use crate::workload::Record;
use crate::world::{Setup, World};

/// Fault rounds per test unless `BERTH_FAULTS_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 3;
/// Commands per lane per round (two lanes per service, three services).
const PER_LANE: usize = 2;
/// How long an installation may take to converge after a round.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

fn rounds() -> usize {
    std::env::var("BERTH_FAULTS_ROUNDS")
        .ok()
        .map(|r| {
            r.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BERTH_FAULTS_ROUNDS={r:?} is not a number"))
        })
        .unwrap_or(DEFAULT_ROUNDS)
}

/// Polls until nothing disagrees with the model; how long that took, or
/// what still disagreed at the limit.
async fn converge(world: &World, log: &mut Log, limit: Duration) -> Result<Duration, Vec<String>> {
    let t0 = Instant::now();
    loop {
        let left = match log.refresh(world).await {
            Ok(()) => model::disagreements(world, log).await,
            Err(e) => vec![format!("the log cannot be read: {e}")],
        };
        if left.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deploys of `svc` that were live once: what a rollback may target.
fn rollback_targets(log: &Log, svc: &str) -> Vec<String> {
    log.services
        .get(svc)
        .map(|s| {
            s.deploys
                .iter()
                .filter(|d| matches!(d.status, DeployStatus::Live | DeployStatus::Deactivated))
                .map(|d| d.id.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The process a fault stops or starves, if it hits one.
fn process_of(f: &Fault) -> Option<&'static str> {
    match f.kind {
        FaultKind::Kill | FaultKind::Pause => Some(f.component),
        FaultKind::DiskFull => Some("node"),
        FaultKind::NodeLost => Some("node2"),
        _ => None,
    }
}

/// Plans round `round`'s `per_round` faults of `kinds`, never two on one
/// process or one server. A node is lost in the first fault round (once:
/// it never comes back). With one fault a round the kinds take turns from
/// `turn`, so each comes up; with more they are drawn.
fn plan_faults(
    rng: &mut Rng,
    world: &World,
    kinds: &[FaultKind],
    per_round: usize,
    round: usize,
    turn: usize,
) -> Vec<Fault> {
    let components: Vec<&'static str> = world
        .components
        .iter()
        .copied()
        .filter(|c| !world.is_lost(c))
        .collect();
    let mut out: Vec<Fault> = Vec::new();
    if round == 1 && kinds.contains(&FaultKind::NodeLost) {
        out.push(Fault::plan(rng, FaultKind::NodeLost, &components));
    }
    let kinds: Vec<FaultKind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::NodeLost)
        .collect();
    if per_round == 1 && out.is_empty() {
        let kind = kinds[(turn + round) % kinds.len()];
        out.push(Fault::plan(rng, kind, &components));
    }
    while out.len() < per_round {
        let kind = rng.pick(&kinds);
        let f = Fault::plan(rng, kind, &components);
        let clash = out.iter().any(|o| {
            o.kind.clashes(f.kind) || (process_of(o).is_some() && process_of(o) == process_of(&f))
        });
        if !clash {
            out.push(f);
        }
    }
    out
}

/// One test: an installation, one calm round, then fault rounds of `kinds`
/// (`per_round` faults at once), each followed by convergence; then the
/// verdict and the report.
async fn suite(test: &str, kinds: &[FaultKind], per_round: usize, setup: Setup) {
    let base = rng::base_seed();
    eprintln!("fault suite {test}: seed {base} (BERTH_FAULTS_SEED={base} repeats the plan)");
    let mut rng = Rng::new(rng::seed_for(base, test));
    let turn = rng.below(kinds.len());
    let rounds = rounds();
    let t0 = Instant::now();
    let world = World::start(setup).await;
    let mut log = Log::default();
    if let Err(left) = converge(&world, &mut log, CONVERGE_LIMIT).await {
        panic!(
            "the first deploys did not converge: {left:#?}\n{}",
            world.log_tails()
        );
    }
    // A round converges also when no deploy goes live: the first must.
    let not_live: Vec<&str> = world
        .services
        .iter()
        .filter(|s| log.services[&s.id].live.is_none())
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        not_live.is_empty(),
        "the first deploys of {not_live:?} did not go live\n{}",
        world.log_tails()
    );
    let mut scale_now: Vec<u32> = world
        .services
        .iter()
        .map(|s| log.services[&s.id].config.as_ref().unwrap().num_instances)
        .collect();
    let mut records: Vec<Record> = Vec::new();
    let mut injected = Vec::new();
    let mut converge_times = Vec::new();
    let mut problems = Vec::new();
    for round in 0..=rounds {
        let faulted = round > 0;
        let mut lanes = Vec::new();
        for (i, svc) in world.services.iter().enumerate() {
            let targets = rollback_targets(&log, &svc.id);
            for lane in workload::plan(&mut rng, PER_LANE, scale_now[i], setup.notify) {
                if let Some(n) = lane.iter().rev().find_map(|p| p.num_instances) {
                    scale_now[i] = n;
                }
                lanes.push((i, lane, targets.clone(), rng.fork()));
            }
        }
        let faults = if faulted {
            plan_faults(&mut rng, &world, kinds, per_round, round, turn)
        } else {
            Vec::new()
        };
        let mut fault_rngs: Vec<Rng> = faults.iter().map(|_| rng.fork()).collect();
        let work = join_all(lanes.iter_mut().map(|(i, lane, targets, lane_rng)| {
            workload::run_lane(&world, *i, std::mem::take(lane), targets, lane_rng, faulted)
        }));
        let breaking = join_all(
            faults
                .iter()
                .zip(fault_rngs.iter_mut())
                .map(|(f, r)| fault::inject(&world, f, r)),
        );
        let (done, ()) = tokio::join!(work, async {
            breaking.await;
        });
        records.extend(done.into_iter().flatten());
        injected.extend(
            faults
                .iter()
                .map(|f| format!("round {round}: {}", f.describe())),
        );
        world.assert_all_running();
        match converge(&world, &mut log, CONVERGE_LIMIT).await {
            Ok(took) if faulted => converge_times.push(took),
            Ok(_) => {}
            Err(left) => {
                problems.push(format!(
                    "round {round} did not converge in {CONVERGE_LIMIT:?}"
                ));
                problems.push("events naming what disagrees:".to_owned());
                problems.extend(model::events_naming(&log, &left));
                problems.extend(left);
                for svc in &world.services {
                    problems.push(format!("last events of {}:", svc.name));
                    problems.extend(model::history(&log, &svc.id, 30));
                }
                break;
            }
        }
    }
    let tally = verdict::tally(&world, &log, &records);
    problems.extend(tally.failures());
    problems.extend(verdict::scale_disagreements(&world, &log, &records));
    let mut notes = Vec::new();
    if setup.notify && problems.is_empty() {
        let notified = notify::settle(&world, &mut log).await;
        notes.push(notified.line());
        problems.extend(notified.problems);
    }
    notes.extend(model::lost_nodes(&world, &log));
    if setup.small_disk {
        let full = world.log_lines("node", &["No space left", "reserve free"]);
        notes.push(format!("node log: {} lines about a full disk", full.len()));
        // What failed, each kind once: the message without time and ids.
        let mut kinds: Vec<String> = full
            .iter()
            .filter_map(|l| l.split("error=").nth(1))
            .map(|e| {
                e.chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(110)
                    .collect()
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        notes.extend(kinds.iter().take(4).map(|k| format!("  {k}")));
    }
    let report = report::Report {
        test,
        seed: base,
        rounds,
        faults: &injected,
        tally: &tally,
        converge: &converge_times,
        latencies: report::deploy_latencies(&log, &records),
        wall: t0.elapsed(),
        notes: &notes,
        problems: &problems,
    };
    report.publish();
    assert!(
        problems.is_empty(),
        "the fault suite's model disagrees (see the report above)\n{}",
        world.log_tails()
    );
    assert!(tally.acked > 0, "no command was acknowledged");
}

/// The installation for `kinds`, with failure notifications if `notify`.
fn setup(kinds: &[FaultKind], notify: bool) -> Setup {
    Setup {
        notify,
        ..fault::setup_for(kinds)
    }
}

/// The notifier is among the processes killed, and some deploys fail on
/// purpose: every failure must be notified exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_killed_with_sigkill_in_a_loop() {
    let kinds = [FaultKind::Kill];
    suite("kill9", &kinds, 1, setup(&kinds, true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_paused_and_resumed() {
    let kinds = [FaultKind::Pause];
    suite("pause", &kinds, 1, setup(&kinds, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_servers_of_a_three_node_cluster_killed_or_cut_off() {
    let kinds = [FaultKind::NatsKill, FaultKind::Partition];
    suite("nats", &kinds, 1, setup(&kinds, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_or_slow_and_node_disk_full() {
    let kinds = [
        FaultKind::RegistryDown,
        FaultKind::RegistrySlow,
        FaultKind::DiskFull,
    ];
    suite("registry-disk", &kinds, 1, setup(&kinds, false)).await;
}

/// Two faults a round; a second node is lost for good in the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_mixed() {
    let all = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::NatsKill,
        FaultKind::Partition,
        FaultKind::RegistryDown,
        FaultKind::RegistrySlow,
        FaultKind::DiskFull,
        FaultKind::NodeLost,
    ];
    suite("mixed", &all, 2, setup(&all, false)).await;
}

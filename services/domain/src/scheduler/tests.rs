//! Given/when/then tests of the scheduler's rules, over service states built
//! through the service aggregate's own `decide` and the instance facts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use berth_schemas::events::{InstanceHealthy, InstanceStarted, InstanceUnhealthy, ServerFailed};
use berth_schemas::ids::{DeployId, InstanceId, NodeId};
use berth_schemas::model::{DeployStatus, Plan as Size};
use berth_schemas::Event;
use chrono::{DateTime, Utc};

use super::sim::{deploy_id, digest, node, node_id, t0, Svc};
use super::*;
use crate::service::Command;

fn two_nodes() -> ClusterView {
    ClusterView::new(vec![node(1, 4000, 8192), node(2, 4000, 8192)])
}

fn schedules(plan: &Plan) -> Vec<(&DeployId, &NodeId, &str)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Schedule {
                deploy,
                node,
                digest,
                ..
            } => Some((deploy, node, digest.as_str())),
            _ => None,
        })
        .collect()
}

fn stops(plan: &Plan) -> Vec<&InstanceId> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { instance } => Some(instance),
            _ => None,
        })
        .collect()
}

/// A web service with `n` healthy instances of `deploy_id(0)` live on `digest(1)`.
fn live(n: u32) -> (Svc, Vec<InstanceId>) {
    let mut s = Svc::web(n);
    s.updating(&deploy_id(0), &digest(1));
    let ids = (0..n)
        .map(|i| s.instance(&deploy_id(0), 1 + (i % 2) as u8, &digest(1), true))
        .collect();
    s.run(Command::RecordLive {
        deploy: deploy_id(0),
        digest: digest(1),
    });
    (s, ids)
}

// ---- instance tracking ----

#[test]
fn instance_facts_track_deploy_node_digest_and_phase() {
    let mut s = Svc::web(2);
    let a = s.instance(&deploy_id(0), 1, &digest(1), true);
    let b = s.instance(&deploy_id(0), 2, &digest(1), false);
    s.apply(&[Event::InstanceUnhealthy(InstanceUnhealthy {
        instance: a.clone(),
        reason: "503".into(),
    })]);
    let inst = &s.state.instances;
    assert_eq!(inst.of_deploy(&deploy_id(0)).count(), 2);
    assert_eq!(inst.healthy_count(&deploy_id(0)), 0);
    assert_eq!(inst.get(&a).unwrap().phase, InstancePhase::Unhealthy);
    assert_eq!(inst.get(&b).unwrap().phase, InstancePhase::Running);
    assert_eq!(
        inst.on_node(&node_id(2)).map(|i| &i.id).collect::<Vec<_>>(),
        vec![&b]
    );
    s.apply(&[Event::InstanceStopped(
        berth_schemas::events::InstanceStopped { instance: a },
    )]);
    assert_eq!(s.state.instances.len(), 1);
}

#[test]
fn server_failed_marks_instances_lost_and_rescheduled_moves_them() {
    let mut s = Svc::web(1);
    let a = s.instance(&deploy_id(0), 1, &digest(1), true);
    s.apply(&[Event::ServerFailed(ServerFailed {
        node: node_id(1),
        instances: vec![a.clone()],
    })]);
    assert_eq!(
        s.state.instances.get(&a).unwrap().phase,
        InstancePhase::Lost
    );
    let r = s.ids.next_instance();
    s.apply(&[Event::InstanceRescheduled(
        berth_schemas::events::InstanceRescheduled {
            instance: a.clone(),
            replacement: r.clone(),
            from_node: node_id(1),
            to_node: node_id(2),
        },
    )]);
    assert!(s.state.instances.get(&a).is_none());
    let moved = s.state.instances.get(&r).unwrap();
    assert_eq!(
        (&moved.deploy, &moved.node, moved.digest.as_str()),
        (&deploy_id(0), &node_id(2), digest(1).as_str())
    );
}

// ---- rolling out ----

#[test]
fn nothing_starts_before_the_update_phase() {
    let mut s = Svc::web(2);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(plan, Plan::default());
}

#[test]
fn a_rolling_out_deploy_gets_its_instances_spread_over_nodes() {
    let mut s = Svc::web(2);
    s.updating(&deploy_id(0), &digest(1));
    let plan = s.reconcile(&two_nodes());
    let mut placed = schedules(&plan);
    placed.sort();
    assert_eq!(
        placed,
        vec![
            (&deploy_id(0), &node_id(1), digest(1).as_str()),
            (&deploy_id(0), &node_id(2), digest(1).as_str())
        ]
    );
    assert_eq!(plan.actions.len(), 2);
}

#[test]
fn while_new_instances_are_not_healthy_it_waits_for_the_readiness_window() {
    let mut s = Svc::web(2);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), true);
    s.instance(&deploy_id(0), 2, &digest(1), false);
    s.now = t0() + chrono::TimeDelta::minutes(5);
    let plan = s.reconcile(&two_nodes());
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(10 * 60)));
}

#[test]
fn all_new_instances_healthy_marks_the_deploy_live() {
    let mut s = Svc::web(2);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), true);
    s.instance(&deploy_id(0), 2, &digest(1), true);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(
        plan.actions,
        vec![Action::MarkLive {
            deploy: deploy_id(0),
            digest: digest(1)
        }]
    );
}

#[test]
fn not_healthy_within_the_window_fails_and_the_old_version_keeps_serving() {
    let (mut s, old) = live(2);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let a = s.instance(&new, 1, &digest(2), true);
    let b = s.instance(&new, 2, &digest(2), false);
    s.now = t0() + chrono::TimeDelta::minutes(15);
    let plan = s.reconcile(&two_nodes());
    assert!(matches!(
        plan.actions.as_slice(),
        [Action::FailDeploy { deploy, .. }] if deploy == &new
    ));
    s.carry_out(&plan);
    assert_eq!(
        s.state.deploy(&new).unwrap().status,
        DeployStatus::UpdateFailed
    );
    // The failed deploy's instances go; the live ones stay.
    let plan = s.reconcile(&two_nodes());
    let mut stopped = stops(&plan);
    stopped.sort();
    let mut expected = vec![&a, &b];
    expected.sort();
    assert_eq!(stopped, expected);
    assert!(old.iter().all(|o| !stopped.contains(&o)));
}

/// A second deploy rolling out over a live one, with one new instance
/// (healthy once, or not yet): the service, the deploy and the instance.
fn rolling_out(healthy: bool) -> (Svc, DeployId, InstanceId) {
    let (mut s, _) = live(1);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let i = s.instance(&new, 1, &digest(2), healthy);
    (s, new, i)
}

/// The one action of `plan`, a failed `deploy`: its reason.
fn failure_of(plan: &Plan, deploy: &DeployId) -> String {
    let [Action::FailDeploy { deploy: d, reason }] = plan.actions.as_slice() else {
        panic!("{plan:?}");
    };
    assert_eq!(d, deploy);
    reason.clone()
}

/// A deploy that never goes live says why one of its instances is not
/// healthy: the check the node last saw fail, or how its process ended.
#[test]
fn a_failed_deploy_says_why_an_instance_is_not_healthy() {
    for (fact, says) in [
        (
            "unhealthy",
            "GET /: connection refused; the instance listens on 3000, not 10000",
        ),
        (
            "exited",
            "ran out of memory: killed for going over its memory limit",
        ),
    ] {
        let (mut s, new, i) = rolling_out(false);
        let event = if fact == "unhealthy" {
            Event::InstanceUnhealthy(InstanceUnhealthy {
                instance: i.clone(),
                reason: says.to_owned(),
            })
        } else {
            Event::InstanceExited(berth_schemas::events::InstanceExited {
                exit_code: Some(137),
                oom_killed: true,
                ..berth_schemas::events::InstanceExited::of(i.clone())
            })
        };
        s.apply(&[event]);
        s.now = t0() + chrono::TimeDelta::minutes(15);
        let plan = s.reconcile(&two_nodes());
        assert_eq!(
            failure_of(&plan, &new),
            format!("0 of 1 new instances healthy within the readiness window; {i}: {says}")
        );
        // Passing again clears it.
        s.apply(&[Event::InstanceHealthy(InstanceHealthy {
            instance: i.clone(),
        })]);
        let problem = s.state.instances.get(&i).and_then(|x| x.problem.clone());
        assert_eq!(problem, None);
    }
    // A reason from a node is kept to a bounded length.
    let (mut s, _, i) = rolling_out(false);
    s.apply(&[Event::InstanceUnhealthy(InstanceUnhealthy {
        instance: i.clone(),
        reason: "é".repeat(1000),
    })]);
    let kept = s
        .state
        .instances
        .get(&i)
        .and_then(|x| x.problem.clone())
        .unwrap_or_default();
    assert!(
        kept.len() <= crate::service::instances::PROBLEM_MAX && kept.len() >= 290,
        "{}",
        kept.len()
    );
}

/// A new instance whose program cannot be run fails its deploy with the
/// reason its node found, not only an exit status.
#[test]
fn a_deploy_whose_program_cannot_run_fails_saying_why() {
    let why = "/entry.sh has Windows (CRLF) line endings: its first line names `/bin/sh` followed by a carriage return, which is not in the image; save it with LF line endings";
    let (mut s, new, i) = rolling_out(false);
    for _ in 0..EXITS_BEFORE_FAILING {
        s.apply(&[Event::InstanceExited(
            berth_schemas::events::InstanceExited {
                exit_code: Some(127),
                cannot_run: Some(why.to_owned()),
                ..berth_schemas::events::InstanceExited::of(i.clone())
            },
        )]);
    }
    let plan = s.reconcile(&two_nodes());
    assert_eq!(
        failure_of(&plan, &new),
        format!(
            "{i}: exited {EXITS_BEFORE_FAILING} times without passing its health check; \
             the last time: exited with status 127: {why}"
        )
    );
}

/// A new instance that keeps exiting before it ever passed its check
/// fails its deploy at once, saying how it ended; one that passed once is
/// left to the readiness window.
#[test]
fn a_new_instance_that_keeps_exiting_fails_its_deploy_without_waiting() {
    let exit = |i: &InstanceId| {
        Event::InstanceExited(berth_schemas::events::InstanceExited {
            exit_code: Some(1),
            ..berth_schemas::events::InstanceExited::of(i.clone())
        })
    };
    let (mut s, new, i) = rolling_out(false);
    for _ in 1..EXITS_BEFORE_FAILING {
        s.apply(&[exit(&i)]);
    }
    let plan = s.reconcile(&two_nodes());
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::FailDeploy { .. })),
        "{plan:?}"
    );
    s.apply(&[exit(&i)]);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(
        failure_of(&plan, &new),
        format!(
            "{i}: exited {EXITS_BEFORE_FAILING} times without passing its health check; \
             the last time: exited with status 1"
        )
    );

    // Passed once, then exits as often: the window decides.
    let (mut s, _, i) = rolling_out(true);
    for _ in 0..EXITS_BEFORE_FAILING + 2 {
        s.apply(&[exit(&i)]);
    }
    let plan = s.reconcile(&two_nodes());
    assert!(plan.actions.is_empty(), "{plan:?}");
}

// ---- zero downtime ----

#[test]
fn old_live_instances_stop_only_after_the_new_deploy_is_live() {
    let (mut s, old) = live(2);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    // New instances are scheduled; the old ones are not touched.
    let plan = s.reconcile(&two_nodes());
    assert_eq!(schedules(&plan).len(), 2);
    assert!(stops(&plan).is_empty());
    s.carry_out(&plan);
    // All healthy: live, still no stop in the same plan.
    let plan = s.reconcile(&two_nodes());
    assert_eq!(
        plan.actions,
        vec![Action::MarkLive {
            deploy: new.clone(),
            digest: digest(2)
        }]
    );
    s.carry_out(&plan);
    assert_eq!(s.state.live.as_ref(), Some(&new));
    // Now the old instances drain.
    let plan = s.reconcile(&two_nodes());
    let mut stopped = stops(&plan);
    stopped.sort();
    assert_eq!(stopped, old.iter().collect::<Vec<_>>());
    s.carry_out(&plan);
    assert_eq!(s.reconcile(&two_nodes()), Plan::default());
}

#[test]
fn a_healthy_old_instance_waits_while_the_live_deploy_is_not_fully_healthy() {
    let (mut s, old) = live(1);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let n = s.instance(&new, 2, &digest(2), true);
    s.run(Command::RecordLive {
        deploy: new.clone(),
        digest: digest(2),
    });
    s.apply(&[Event::InstanceUnhealthy(InstanceUnhealthy {
        instance: n,
        reason: "timeout".into(),
    })]);
    let plan = s.reconcile(&two_nodes());
    assert!(!stops(&plan).contains(&&old[0]), "{plan:?}");
}

// ---- the live deploy ----

#[test]
fn the_live_deploy_scales_up_and_down() {
    let (mut s, _) = live(2);
    s.run(Command::Scale { num_instances: 4 });
    let plan = s.reconcile(&two_nodes());
    assert_eq!(schedules(&plan).len(), 2);
    s.carry_out(&plan);
    assert_eq!(s.state.instances.healthy_count(&deploy_id(0)), 4);
    s.run(Command::Scale { num_instances: 1 });
    let plan = s.reconcile(&two_nodes());
    assert_eq!(stops(&plan).len(), 3);
    s.carry_out(&plan);
    assert_eq!(s.reconcile(&two_nodes()), Plan::default());
}

#[test]
fn scaling_down_stops_unhealthy_instances_first() {
    let (mut s, ids) = live(2);
    s.apply(&[Event::InstanceUnhealthy(InstanceUnhealthy {
        instance: ids[1].clone(),
        reason: "503".into(),
    })]);
    s.run(Command::Scale { num_instances: 1 });
    let plan = s.reconcile(&two_nodes());
    assert_eq!(stops(&plan), vec![&ids[1]]);
}

#[test]
fn an_instance_running_another_digest_is_replaced_then_stopped() {
    let (mut s, ids) = live(1);
    // The node reports it started another digest (a floating tag moved).
    s.apply(&[Event::InstanceStarted(InstanceStarted {
        instance: ids[0].clone(),
        node: node_id(1),
        digest: digest(9),
        addr: None,
        published: None,
    })]);
    s.apply(&[Event::InstanceHealthy(InstanceHealthy {
        instance: ids[0].clone(),
    })]);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(
        schedules(&plan),
        vec![(&deploy_id(0), &node_id(2), digest(1).as_str())]
    );
    assert!(stops(&plan).is_empty(), "the only healthy instance stays");
    s.carry_out(&plan);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(stops(&plan), vec![&ids[0]]);
    assert!(schedules(&plan).is_empty());
}

#[test]
fn a_suspended_service_stops_everything() {
    let (mut s, ids) = live(2);
    s.run(Command::Suspend);
    let plan = s.reconcile(&two_nodes());
    let mut stopped = stops(&plan);
    stopped.sort();
    assert_eq!(stopped, ids.iter().collect::<Vec<_>>());
    assert_eq!(plan.actions.len(), 2);
}

// ---- lost nodes ----

#[test]
fn instances_on_a_lost_node_are_rescheduled_elsewhere() {
    let (mut s, ids) = live(2);
    let mut view = ClusterView::new(vec![
        node(1, 4000, 8192),
        node(2, 4000, 8192),
        node(3, 4000, 8192),
    ]);
    view.nodes[0].lost = true;
    let plan = s.reconcile(&view);
    let lost = s.state.instances.get(&ids[0]).unwrap();
    assert_eq!(lost.node, node_id(1));
    match plan.actions.as_slice() {
        [Action::Reschedule {
            instance,
            from_node,
            to_node,
            deploy,
            digest: d,
            ..
        }] => {
            assert_eq!(instance, &ids[0]);
            assert_eq!(from_node, &node_id(1));
            // Node 2 already holds one instance: spread onto node 3.
            assert_eq!(to_node, &node_id(3));
            assert_eq!((deploy, d), (&deploy_id(0), &digest(1)));
        }
        other => panic!("{other:?}"),
    }
    s.carry_out(&plan);
    assert_eq!(s.reconcile(&view), Plan::default());
}

#[test]
fn with_no_room_left_a_lost_instance_waits_requeues_and_says_why() {
    let (mut s, _) = live(2);
    // Node 2 holds the other instance, which takes all of its room.
    let mut view = ClusterView::new(vec![node(1, 4000, 8192), node(2, 500, 512)]);
    view.nodes[0].lost = true;
    let plan = s.reconcile(&view);
    match plan.actions.as_slice() {
        [Action::ReportBlocked(b)] => {
            assert_eq!((&b.deploy, b.unplaced), (&deploy_id(0), 1));
            assert_eq!(
                b.reason,
                format!(
                    "no node has room: needs 0.5 CPU / 512 MiB, largest free 0 CPU / 0 MiB on {}",
                    node_id(2)
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.requeue_after, Some(PLACEMENT_RETRY));
}

// ---- placement ----

fn size(cpu: u32, mem: u32) -> Size {
    Size {
        name: "t".into(),
        cpu_millis: cpu,
        memory_mib: mem,
    }
}

#[test]
fn place_prefers_the_node_with_most_free_capacity() {
    let mut a = node(1, 4000, 8192);
    a.used_cpu = 3000;
    let b = node(2, 2000, 8192);
    assert_eq!(
        place(&[a, b], &size(500, 512), 1, &[]).unwrap(),
        vec![node_id(2)]
    );
}

#[test]
fn place_spreads_instances_of_the_service() {
    let a = node(1, 8000, 8192);
    let b = node(2, 1000, 1024);
    // Node 1 has far more room but already holds one of the instances.
    assert_eq!(
        place(&[a.clone(), b.clone()], &size(500, 512), 1, &[node_id(1)]).unwrap(),
        vec![node_id(2)]
    );
    assert_eq!(
        place(&[a, b], &size(500, 512), 3, &[]).unwrap(),
        vec![node_id(1), node_id(2), node_id(1)]
    );
}

#[test]
fn place_never_uses_a_lost_node_and_fails_when_nothing_fits() {
    let mut a = node(1, 8000, 8192);
    a.lost = true;
    let b = node(2, 1000, 1024);
    assert_eq!(
        place(&[a.clone(), b.clone()], &size(500, 512), 2, &[]).unwrap(),
        vec![node_id(2), node_id(2)]
    );
    assert_eq!(
        place(&[a, b], &size(500, 512), 3, &[]),
        Err(PlacementError::NoCapacity {
            requested: 3,
            placeable: 2
        })
    );
    assert!(place(&[node(3, 100, 8192)], &size(500, 512), 1, &[]).is_err());
}

#[test]
fn lost_nodes_are_those_silent_for_longer_than_the_timeout() {
    let hb: BTreeMap<NodeId, DateTime<Utc>> = [
        (node_id(1), t0()),
        (node_id(2), t0() + chrono::TimeDelta::seconds(20)),
        (node_id(3), t0() + chrono::TimeDelta::seconds(25)),
    ]
    .into();
    let now = t0() + chrono::TimeDelta::seconds(35);
    assert_eq!(
        lost_nodes(&hb, now, Duration::from_secs(10)),
        vec![node_id(1), node_id(2)]
    );
    assert_eq!(
        lost_nodes(&hb, now, Duration::from_secs(15)),
        vec![node_id(1)]
    );
    assert!(lost_nodes(&hb, now, Duration::MAX).is_empty());
}

#[test]
fn sequential_ids_are_valid_and_distinct() {
    let mut ids = SequentialIds(0);
    let a = ids.next_instance();
    let b = ids.next_instance();
    assert_ne!(a, b);
    assert!(a.as_str().starts_with("ins-"));
    assert_eq!(SequentialIds(0).next_instance(), a);
}

#[test]
fn the_readiness_window_counts_from_update_started() {
    let mut s = Svc::web(1);
    s.now = t0() + chrono::TimeDelta::minutes(10);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), false);
    // 20 minutes after the deploy started, 10 after its update started.
    s.now = t0() + chrono::TimeDelta::minutes(20);
    let plan = s.reconcile(&two_nodes());
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(5 * 60)));
    s.now = t0() + chrono::TimeDelta::minutes(25);
    let plan = s.reconcile(&two_nodes());
    assert!(matches!(
        plan.actions.as_slice(),
        [Action::FailDeploy { deploy, .. }] if deploy == &deploy_id(0)
    ));
}

#[test]
fn a_restart_replaces_every_instance_without_downtime() {
    let (mut s, old) = live(2);
    s.now += chrono::TimeDelta::minutes(1);
    s.run(Command::Restart);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(schedules(&plan).len(), 2);
    assert!(stops(&plan).is_empty(), "{plan:?}");
    s.carry_out(&plan);
    let plan = s.reconcile(&two_nodes());
    let mut stopped = stops(&plan);
    stopped.sort();
    assert_eq!(stopped, old.iter().collect::<Vec<_>>());
    assert!(schedules(&plan).is_empty());
    s.carry_out(&plan);
    assert_eq!(s.reconcile(&two_nodes()), Plan::default());
}

// ---- a service with a disk ----

fn carry_out_placing(s: &mut Svc, plan: &Plan) -> Result<(), crate::error::DomainError> {
    s.carry_out_placing(plan)
}

/// Node 1 with room for one starter instance, node 2 with plenty.
fn small_and_big() -> ClusterView {
    ClusterView::new(vec![node(1, 500, 512), node(2, 4000, 8192)])
}

#[test]
fn a_disk_stays_on_the_node_of_its_first_instance() {
    let mut s = Svc::with_disk();
    s.updating(&deploy_id(0), &digest(1));
    let plan = s.reconcile(&two_nodes());
    let placed = schedules(&plan);
    assert_eq!(placed.len(), 1);
    let at = placed[0].1.clone();
    carry_out_placing(&mut s, &plan).unwrap();
    assert_eq!(s.state.disk_node.as_ref(), Some(&at), "disk_placed");
    let plan = s.reconcile(&two_nodes());
    s.carry_out(&plan);
    assert_eq!(s.state.live.as_ref(), Some(&deploy_id(0)));

    // No other node takes its instance, even one with far more room.
    let other = if at == node_id(1) { 2 } else { 1 };
    let mut view = two_nodes();
    for n in &mut view.nodes {
        if n.id == at {
            n.used_cpu = 3500;
        }
    }
    s.now += chrono::TimeDelta::minutes(1);
    s.run(Command::Restart);
    let plan = s.reconcile(&view);
    carry_out_placing(&mut s, &plan).unwrap();
    let plan = s.reconcile(&view);
    let placed = schedules(&plan);
    assert_eq!(placed.len(), 1, "{plan:?}");
    assert_eq!(placed[0].1, &at);
    // The service's rules refuse it too (a stale plan).
    let refused = carry_out_placing(
        &mut s,
        &Plan {
            actions: vec![Action::Schedule {
                instance: InstanceId::generate(),
                deploy: deploy_id(0),
                node: node_id(other),
                digest: digest(1),
            }],
            ..Plan::default()
        },
    );
    assert!(refused.is_err(), "placed off its disk's node");
}

#[test]
fn a_service_with_a_disk_stops_its_old_instance_before_the_new_one_starts() {
    let mut s = Svc::with_disk();
    s.updating(&deploy_id(0), &digest(1));
    let plan = s.reconcile(&small_and_big());
    carry_out_placing(&mut s, &plan).unwrap();
    let plan = s.reconcile(&small_and_big());
    s.carry_out(&plan);
    let old: Vec<InstanceId> = s.state.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(old.len(), 1);
    let at = s.state.disk_node.clone().unwrap();

    // A deploy: the old instance stops first, nothing is placed beside it.
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let plan = s.reconcile(&small_and_big());
    assert_eq!(stops(&plan), old.iter().collect::<Vec<_>>(), "{plan:?}");
    assert!(schedules(&plan).is_empty(), "{plan:?}");
    // While it is stopping, still nothing new (it holds the disk).
    let plan = s.reconcile(&small_and_big());
    assert!(schedules(&plan).is_empty(), "{plan:?}");
    // Placing beside it is refused by the service's rules as well.
    let early = carry_out_placing(
        &mut s,
        &Plan {
            actions: vec![Action::Schedule {
                instance: InstanceId::generate(),
                deploy: new.clone(),
                node: at.clone(),
                digest: digest(2),
            }],
            ..Plan::default()
        },
    );
    assert!(early
        .unwrap_err()
        .to_string()
        .contains("one instance at a time"));
    // Stopped: the new one goes to the disk's node, then live.
    s.carry_out(&Plan {
        actions: vec![Action::Stop {
            instance: old[0].clone(),
        }],
        ..Plan::default()
    });
    let plan = s.reconcile(&small_and_big());
    assert_eq!(schedules(&plan), vec![(&new, &at, digest(2).as_str())]);
    carry_out_placing(&mut s, &plan).unwrap();
    let plan = s.reconcile(&small_and_big());
    s.carry_out(&plan);
    assert_eq!(s.state.live.as_ref(), Some(&new));
    assert_eq!(s.reconcile(&small_and_big()), Plan::default());

    // A restart the same way round.
    s.now += chrono::TimeDelta::minutes(1);
    s.run(Command::Restart);
    let plan = s.reconcile(&small_and_big());
    assert_eq!(stops(&plan).len(), 1, "{plan:?}");
    assert!(schedules(&plan).is_empty(), "{plan:?}");
    s.carry_out(&plan);
    let plan = s.reconcile(&small_and_big());
    assert_eq!(schedules(&plan).len(), 1, "{plan:?}");
}

#[test]
fn a_disk_on_a_lost_node_holds_its_instance_and_says_why() {
    let mut s = Svc::with_disk();
    s.updating(&deploy_id(0), &digest(1));
    let plan = s.reconcile(&two_nodes());
    carry_out_placing(&mut s, &plan).unwrap();
    let plan = s.reconcile(&two_nodes());
    s.carry_out(&plan);
    let at = s.state.disk_node.clone().unwrap();
    let i = s.state.instances.iter().next().unwrap().id.clone();
    s.apply(&[Event::ServerFailed(ServerFailed {
        node: at.clone(),
        instances: vec![i],
    })]);
    let mut view = two_nodes();
    for n in &mut view.nodes {
        n.lost = n.id == at;
    }
    let plan = s.reconcile(&view);
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Reschedule { .. } | Action::Schedule { .. })),
        "{plan:?}"
    );
    let why = blocked(&plan);
    assert_eq!(why.len(), 1, "{plan:?}");
    assert!(
        why[0].reason.contains("dsk-aaaaaaaaaaaaaaaaaaaa") && why[0].reason.contains("lost"),
        "{}",
        why[0].reason
    );
}

// ---- room ----

/// Nodes `1` and `2`, each with room for `per_node` starter instances
/// (0.5 CPU, 512 MiB) and nothing of other services on them.
fn room_for(per_node: u32) -> ClusterView {
    ClusterView::new(vec![
        node(1, 500 * per_node, 512 * per_node),
        node(2, 500 * per_node, 512 * per_node),
    ])
}

/// No node holds more of the service's instances than it has room for.
fn assert_fits(s: &Svc, view: &ClusterView) {
    let size = &s.state.config.as_ref().unwrap().plan;
    for n in &view.nodes {
        let here = s.state.instances.on_node(&n.id).count() as u32;
        assert!(
            n.used_cpu + here * size.cpu_millis <= n.cpu_millis
                && n.used_mem + here * size.memory_mib <= n.memory_mib,
            "{} holds {here} instances: {:?}",
            n.id,
            s.state.instances
        );
    }
}

fn blocked(plan: &Plan) -> Vec<&berth_schemas::events::PlacementBlocked> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::ReportBlocked(b) => Some(b),
            _ => None,
        })
        .collect()
}

#[test]
fn a_deploy_requested_with_a_scale_up_gets_the_room_first_and_goes_live() {
    // One instance live, room for four: the scale to three and the deploy
    // arrive before the scheduler's next pass.
    let (mut s, old) = live(1);
    let view = room_for(2);
    s.run(Command::Scale { num_instances: 3 });
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let plan = s.reconcile(&view);
    // The three free places go to the deploy; the live deploy, which it
    // replaces, does not grow meanwhile.
    assert_eq!(schedules(&plan).len(), 3, "{plan:?}");
    assert!(schedules(&plan).iter().all(|(d, _, _)| *d == &new));
    s.carry_out(&plan);
    assert_fits(&s, &view);
    let plan = s.reconcile(&view);
    assert_eq!(
        plan.actions,
        vec![Action::MarkLive {
            deploy: new.clone(),
            digest: digest(2)
        }]
    );
    s.carry_out(&plan);
    let plan = s.reconcile(&view);
    assert_eq!(stops(&plan), vec![&old[0]]);
    s.carry_out(&plan);
    assert_eq!(s.reconcile(&view), Plan::default());
}

#[test]
fn a_deploy_requested_with_a_restart_is_not_held_up_by_the_restart() {
    // Three live, room for six: a restart and a deploy arrive together.
    let (mut s, old) = live(3);
    let view = room_for(3);
    s.now += chrono::TimeDelta::minutes(1);
    s.run(Command::Restart);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let plan = s.reconcile(&view);
    // The deploy replaces every instance anyway: no restart replacements
    // take its room.
    assert_eq!(schedules(&plan).len(), 3, "{plan:?}");
    assert!(schedules(&plan).iter().all(|(d, _, _)| *d == &new));
    assert!(stops(&plan).is_empty());
    s.carry_out(&plan);
    assert_fits(&s, &view);
    let plan = s.reconcile(&view);
    assert!(matches!(plan.actions.as_slice(), [Action::MarkLive { deploy, .. }] if deploy == &new));
    s.carry_out(&plan);
    // Live, and placed after the restart: the old ones go, nothing else.
    let plan = s.reconcile(&view);
    let mut stopped = stops(&plan);
    stopped.sort();
    assert_eq!(stopped, old.iter().collect::<Vec<_>>());
    assert!(schedules(&plan).is_empty());
}

#[test]
fn a_deploy_without_room_beside_the_instances_it_replaces_fails_saying_so() {
    // The scale-up went through first and filled the nodes; the deploy's
    // new instances need room beside the old ones until they serve.
    let (mut s, _) = live(1);
    let view = room_for(2);
    s.run(Command::Scale { num_instances: 3 });
    let plan = s.reconcile(&view);
    s.carry_out(&plan);
    let new = s.request(1);
    s.updating(&new, &digest(2));
    let plan = s.reconcile(&view);
    assert_eq!(schedules(&plan).len(), 1, "{plan:?}");
    let reason = format!(
        "no node has room: needs 0.5 CPU / 512 MiB, largest free 0 CPU / 0 MiB on {}",
        node_id(1)
    );
    match blocked(&plan).as_slice() {
        [b] => assert_eq!((&b.deploy, b.unplaced, &b.reason), (&new, 2, &reason)),
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.requeue_after, Some(PLACEMENT_RETRY));
    s.carry_out(&plan);
    assert_fits(&s, &view);
    assert!(s.state.deploy(&new).unwrap().placement_blocked.is_some());
    s.now = t0() + chrono::TimeDelta::minutes(15);
    let plan = s.reconcile(&view);
    let fail = plan.actions.iter().find_map(|a| match a {
        Action::FailDeploy { deploy, reason } if deploy == &new => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        fail,
        Some(format!(
            "1 of 3 new instances healthy within the readiness window; 2 not placed: {reason}"
        ))
    );
}

#[test]
fn a_service_blocked_by_other_services_instances_is_told_why_and_placed_once_they_stop() {
    // Another service's instances take most of the only node, stopping or
    // not: they hold their room until the node reports them stopped.
    let mut s = Svc::web(1);
    s.updating(&deploy_id(0), &digest(1));
    let mut view = ClusterView::new(vec![node(1, 1000, 812)]);
    view.nodes[0].used_cpu = 800;
    view.nodes[0].used_mem = 512;
    let plan = s.reconcile(&view);
    assert!(schedules(&plan).is_empty());
    let reason = format!(
        "no node has room: needs 0.5 CPU / 512 MiB, largest free 0.2 CPU / 300 MiB on {}",
        node_id(1)
    );
    match blocked(&plan).as_slice() {
        [b] => assert_eq!(
            (b.unplaced, b.free_cpu_millis, b.free_memory_mib, &b.reason),
            (1, 200, 300, &reason)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.requeue_after, Some(PLACEMENT_RETRY));
    s.carry_out(&plan);
    // Retried: the same shortfall, recorded once.
    let plan = s.reconcile(&view);
    let before = s.state.clone();
    s.carry_out(&plan);
    assert_eq!(s.state, before);
    // Had they never stopped, the deploy would fail at the end of its
    // readiness window naming the shortfall (plans are pure: this one is
    // not carried out).
    s.now = t0() + chrono::TimeDelta::minutes(15);
    let plan = s.reconcile(&view);
    let expected =
        format!("0 of 1 new instances healthy within the readiness window; 1 not placed: {reason}");
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::FailDeploy { reason: r, .. } if *r == expected)),
        "{plan:?}"
    );
    // Their stops are reported within the window: the retry places it.
    s.now = t0() + chrono::TimeDelta::seconds(30);
    view.nodes[0].used_cpu = 0;
    view.nodes[0].used_mem = 0;
    let plan = s.reconcile(&view);
    assert_eq!(schedules(&plan).len(), 1);
    assert!(blocked(&plan).is_empty());
}

#[test]
fn cpus_read_as_plans_are_written() {
    let size = |cpu| Size {
        name: "t".into(),
        cpu_millis: cpu,
        memory_mib: 64,
    };
    let d = deploy_id(0);
    for (cpu, text) in [(500, "0.5"), (2000, "2"), (1250, "1.25"), (5, "0.005")] {
        let b = place::shortfall(&[], &size(cpu), &d, 1);
        assert_eq!(
            b.reason,
            format!("no node has room: needs {text} CPU / 64 MiB, and no node is up")
        );
    }
}

#[test]
fn a_draining_instance_goes_even_when_the_plan_would_keep_it() {
    // Two healthy live instances, both wanted; one was told to drain (a
    // scale-down the owner took back before it stopped).
    let (mut s, ids) = live(2);
    s.apply(&[Event::InstanceDraining(
        berth_schemas::events::InstanceDraining {
            instance: ids[0].clone(),
        },
    )]);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(stops(&plan), vec![&ids[0]], "{plan:?}");
    // Stopped once, not twice.
    let (s, ids) = live(1);
    let mut s = s;
    s.apply(&[Event::InstanceDraining(
        berth_schemas::events::InstanceDraining {
            instance: ids[0].clone(),
        },
    )]);
    s.run(Command::Suspend);
    let plan = s.reconcile(&two_nodes());
    assert_eq!(stops(&plan), vec![&ids[0]], "{plan:?}");
}

//! Random services against the scheduler: whatever instances exist, in
//! whatever phases and on whichever nodes, reconcile never places on a lost
//! node, never leaves a service with a healthy instance without one (zero
//! downtime), decides the same way twice, and, carried out again and again,
//! reaches a fixed point where the live deploy runs exactly `numInstances`
//! instances of its recorded digest and nothing else runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use berth_schemas::events::{InstanceHealthy, ServerFailed};
use berth_schemas::Event;
use proptest::prelude::*;

use super::sim::{deploy_id, digest, node, node_id, Svc};
use super::*;
use crate::service::Command;

const NODES: u8 = 4;

#[derive(Debug, Clone)]
struct Inst {
    node: u8,
    healthy: bool,
    wrong_digest: bool,
}

fn inst() -> impl Strategy<Value = Inst> {
    (0..NODES, any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(node, healthy, wrong)| Inst {
        node,
        healthy,
        wrong_digest: wrong,
    })
}

#[derive(Debug, Clone)]
struct Case {
    first_n: u32,
    n: u32,
    live: Vec<Inst>,
    rollout: Option<Vec<Inst>>,
    lost: Vec<bool>,
    server_failed: bool,
    suspended: bool,
    restart: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..4,
        1u32..4,
        prop::collection::vec(inst(), 0..5),
        prop::option::of(prop::collection::vec(inst(), 0..4)),
        prop::collection::vec(any::<bool>(), 2),
        any::<bool>(),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(
            |(first_n, n, live, rollout, lost, server_failed, suspended, restart)| Case {
                first_n,
                n,
                live,
                rollout,
                lost,
                server_failed,
                suspended,
                restart,
            },
        )
}

/// Nodes 0 and 1 never fail; 2 and 3 are lost as the case says. No other
/// service uses them (reconcile counts the service's own instances).
fn view(lost: &[bool]) -> ClusterView {
    let nodes = (0..NODES)
        .map(|i| {
            let mut n = node(i, 8000, 16384);
            n.lost = i >= 2 && lost[usize::from(i - 2)];
            n
        })
        .collect();
    ClusterView::new(nodes)
}

fn build(c: &Case) -> Svc {
    let mut s = Svc::web(c.first_n);
    s.updating(&deploy_id(0), &digest(1));
    let add = |s: &mut Svc, deploy: &DeployId, good: &str, list: &[Inst]| {
        for i in list {
            let d = if i.wrong_digest {
                digest(9)
            } else {
                good.to_owned()
            };
            s.instance(deploy, i.node, &d, i.healthy);
        }
    };
    add(&mut s, &deploy_id(0), &digest(1), &c.live);
    s.run(Command::RecordLive {
        deploy: deploy_id(0),
        digest: digest(1),
    });
    if c.n != c.first_n {
        s.run(Command::Scale { num_instances: c.n });
    }
    if let Some(list) = &c.rollout {
        let d = s.request(1);
        s.updating(&d, &digest(2));
        add(&mut s, &d, &digest(2), list);
    }
    if c.server_failed {
        for n in 2..NODES {
            if c.lost[usize::from(n - 2)] {
                let on: Vec<_> = s
                    .state
                    .instances
                    .on_node(&node_id(n))
                    .map(|i| i.id.clone())
                    .collect();
                s.apply(&[Event::ServerFailed(ServerFailed {
                    node: node_id(n),
                    instances: on,
                })]);
            }
        }
    }
    s.now += chrono::TimeDelta::minutes(1);
    if c.restart {
        s.run(Command::Restart);
    }
    if c.suspended {
        s.run(Command::Suspend);
    }
    s
}

fn serving(s: &Svc, v: &ClusterView) -> BTreeSet<InstanceId> {
    s.state
        .instances
        .iter()
        .filter(|i| i.is_healthy() && v.holds(i))
        .map(|i| i.id.clone())
        .collect()
}

/// Reconciles and carries out until no action is left, checking every plan.
fn run_to_fixed_point(s: &mut Svc, c: &Case) {
    for _ in 0..40 {
        let v = view(&c.lost);
        let mut again = s.ids;
        let plan = s.reconcile(&v);
        assert_eq!(
            reconcile(&s.state, &v, s.now, &mut again),
            plan,
            "not deterministic"
        );
        for a in &plan.actions {
            if let Action::Schedule { node, .. } | Action::Reschedule { to_node: node, .. } = a {
                assert!(v.is_up(node), "placed on lost node {node}: {plan:?}");
            }
        }
        let before = serving(s, &v);
        if !c.suspended && !before.is_empty() {
            let stopped: BTreeSet<_> = plan
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::Stop { instance } => Some(instance.clone()),
                    _ => None,
                })
                .collect();
            assert!(
                before.iter().any(|i| !stopped.contains(i)),
                "stopped every healthy instance: {plan:?}"
            );
        }
        if plan.actions.is_empty() {
            match plan.requeue_after {
                // Waiting on the readiness window: let it pass.
                Some(d) => s.now += chrono::TimeDelta::from_std(d).unwrap(),
                None => return,
            }
            continue;
        }
        s.carry_out(&plan);
    }
    panic!("no fixed point: {:?}", s.state.instances);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn reconcile_is_safe_and_converges(c in case()) {
        let mut s = build(&c);
        run_to_fixed_point(&mut s, &c);
        // Instances that were unhealthy recover (the node agent restarts
        // them); then the scheduler finishes the job.
        let v = view(&c.lost);
        let heal: Vec<Event> = s.state.instances.iter().filter(|i| v.holds(i)).map(|i| {
            Event::InstanceHealthy(InstanceHealthy { instance: i.id.clone() })
        }).collect();
        s.apply(&heal);
        run_to_fixed_point(&mut s, &c);

        if c.suspended {
            prop_assert!(s.state.instances.is_empty());
            return Ok(());
        }
        let live = s.state.live_deploy().unwrap();
        prop_assert!(s.state.active.is_none(), "the rollout ended");
        let digest = live.digest().unwrap();
        let v = view(&c.lost);
        let all: Vec<_> = s.state.instances.iter().collect();
        prop_assert_eq!(all.len(), c.n as usize, "{:?}", all);
        for i in all {
            prop_assert_eq!(&i.deploy, &live.id);
            prop_assert_eq!(i.digest.as_str(), digest);
            prop_assert!(i.is_healthy() && v.holds(i));
            if let (true, Some(r)) = (c.restart, s.state.restart_requested_at) {
                prop_assert!(i.scheduled_at.unwrap() >= r, "placed before the restart");
            }
        }
    }
}

/// What happens to a service with a disk between two reconciles.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A new deploy starts updating.
    Deploy,
    Restart,
    /// Its instance fails its checks.
    Unhealthy,
    /// Only the plan's first action is carried out (a stop still under
    /// way, a start not yet made).
    Some,
    /// The whole plan is carried out.
    All,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Deploy),
        Just(Step::Restart),
        Just(Step::Unhealthy),
        Just(Step::Some),
        Just(Step::All),
    ]
}

/// Checks one plan for a service with a disk: a new instance is placed
/// only when the service has none left, one at a time, on the disk's node.
fn check_disk_plan(s: &Svc, plan: &Plan) {
    let placed: Vec<&NodeId> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Schedule { node, .. } | Action::Reschedule { to_node: node, .. } => Some(node),
            _ => None,
        })
        .collect();
    if placed.is_empty() {
        return;
    }
    assert_eq!(placed.len(), 1, "two placed at once: {plan:?}");
    assert!(
        s.state.instances.is_empty(),
        "placed beside {:?}: {plan:?}",
        s.state.instances
    );
    if let Some(at) = &s.state.disk_node {
        assert_eq!(placed[0], at, "placed off the disk's node: {plan:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_service_with_a_disk_never_runs_two_instances_and_converges(
        steps in prop::collection::vec(step(), 1..24),
    ) {
        // Once the disk has a node, that node is the fullest: only the
        // pin keeps the instance there.
        let view_of = |s: &Svc| {
            let mut v = view(&[false, false]);
            for n in &mut v.nodes {
                if Some(&n.id) == s.state.disk_node.as_ref() {
                    n.used_cpu = 6000;
                }
            }
            v
        };
        let mut s = Svc::with_disk();
        s.updating(&deploy_id(0), &digest(1));
        let mut deploys = 1u8;
        let mut first_node: Option<NodeId> = None;
        for step in steps {
            match step {
                Step::Deploy => {
                    let d = s.request(deploys);
                    // Queued behind a running one, it is not updating yet.
                    if s.state.active.as_ref() == Some(&d) {
                        s.updating(&d, &digest(deploys % 3 + 1));
                    }
                    deploys += 1;
                }
                Step::Restart => {
                    s.now += chrono::TimeDelta::seconds(1);
                    if s.state.live.is_some() {
                        s.run(Command::Restart);
                    }
                }
                Step::Unhealthy => {
                    let sick: Vec<Event> = s.state.instances.iter().map(|i| {
                        Event::InstanceUnhealthy(berth_schemas::events::InstanceUnhealthy {
                            instance: i.id.clone(),
                            reason: "503".into(),
                        })
                    }).collect();
                    s.apply(&sick);
                }
                Step::Some | Step::All => {
                    let plan = s.reconcile(&view_of(&s));
                    check_disk_plan(&s, &plan);
                    let plan = match step {
                        Step::Some => Plan { actions: plan.actions.into_iter().take(1).collect(), ..Plan::default() },
                        _ => plan,
                    };
                    s.carry_out_placing(&plan).unwrap();
                }
            }
            prop_assert!(s.state.instances.len() <= 1, "{:?}", s.state.instances);
            if let Some(at) = &s.state.disk_node {
                prop_assert_eq!(first_node.get_or_insert_with(|| at.clone()), at, "the disk moved");
            }
        }
        // Left alone (its instances recovered, queued deploys resolved as
        // they come up), it ends with one healthy instance of the live
        // deploy on the disk's node, or none when no deploy went live.
        let heal: Vec<Event> = s.state.instances.iter().map(|i| {
            Event::InstanceHealthy(InstanceHealthy { instance: i.id.clone() })
        }).collect();
        s.apply(&heal);
        for _ in 0..80 {
            if let Some(d) = s.state.active_deploy() {
                if d.digest().is_none() {
                    let id = d.id.clone();
                    s.updating(&id, &digest(2));
                }
            }
            let plan = s.reconcile(&view_of(&s));
            check_disk_plan(&s, &plan);
            if plan.actions.is_empty() {
                match plan.requeue_after {
                    Some(d) => s.now += chrono::TimeDelta::from_std(d).unwrap(),
                    None if s.state.active.is_none() => break,
                    None => {}
                }
                continue;
            }
            s.carry_out_placing(&plan).unwrap();
        }
        prop_assert!(s.state.active.is_none(), "deploys left running: {:?}", s.state.active);
        let Some(live) = s.state.live_deploy().map(|d| d.id.clone()) else {
            prop_assert!(s.state.instances.is_empty(), "{:?}", s.state.instances);
            return Ok(());
        };
        let all: Vec<_> = s.state.instances.iter().collect();
        prop_assert_eq!(all.len(), 1, "{:?}", all);
        prop_assert_eq!(&all[0].deploy, &live);
        prop_assert!(all[0].is_healthy());
        prop_assert_eq!(Some(&all[0].node), s.state.disk_node.as_ref());
    }
}

//! Random command sequences against the service aggregate: whatever is
//! accepted or refused, the invariants hold after every step (checked by
//! `Scenario::append`), statuses only move forward, and refusals change
//! nothing.

use berth_schemas::ids::DeployId;
use berth_schemas::model::{
    DeployStatus, DeployTrigger, OverlapPolicy, PullFailureReason, ResolvedImage, ServiceType,
};
use proptest::prelude::*;

use super::{digest, node, Scenario, IMAGE};
use crate::service::{Command, DeployRequest};

#[derive(Debug, Clone)]
enum Op {
    Request,
    Rollback(usize),
    Cancel(usize),
    Resolve(usize, u8),
    Pulled(usize, u8),
    PreStart(usize),
    PreEnd(usize, bool),
    UpdateStart(usize),
    Live(usize, u8),
    Fail(usize),
    PullFail(usize),
    Missing(usize, u8),
    Suspend,
    Resume,
    Policy(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..8;
    let d = 1u8..4;
    prop_oneof![
        3 => Just(Op::Request),
        1 => i.clone().prop_map(Op::Rollback),
        1 => i.clone().prop_map(Op::Cancel),
        3 => (i.clone(), d.clone()).prop_map(|(i, d)| Op::Resolve(i, d)),
        2 => (i.clone(), d.clone()).prop_map(|(i, d)| Op::Pulled(i, d)),
        2 => i.clone().prop_map(Op::PreStart),
        2 => (i.clone(), any::<bool>()).prop_map(|(i, ok)| Op::PreEnd(i, ok)),
        3 => i.clone().prop_map(Op::UpdateStart),
        3 => (i.clone(), d.clone()).prop_map(|(i, d)| Op::Live(i, d)),
        1 => i.clone().prop_map(Op::Fail),
        1 => i.clone().prop_map(Op::PullFail),
        1 => (i, d).prop_map(|(i, d)| Op::Missing(i, d)),
        1 => Just(Op::Suspend),
        1 => Just(Op::Resume),
        1 => any::<bool>().prop_map(Op::Policy),
    ]
}

fn pick(s: &Scenario, i: usize) -> DeployId {
    // Mostly known deploys, sometimes an unknown one.
    if s.state.deploys.is_empty() || i == 7 {
        DeployId::generate()
    } else {
        s.state.deploys[i % s.state.deploys.len()].id.clone()
    }
}

fn command(s: &Scenario, op: &Op) -> Command {
    match *op {
        Op::Request => Command::RequestDeploy(DeployRequest::new(
            DeployId::generate(),
            DeployTrigger::DeployHook,
        )),
        Op::Rollback(i) => {
            Command::RequestDeploy(DeployRequest::rollback(DeployId::generate(), pick(s, i)))
        }
        Op::Cancel(i) => Command::CancelDeploy { deploy: pick(s, i) },
        Op::Resolve(i, d) => Command::RecordResolved {
            deploy: pick(s, i),
            image: ResolvedImage {
                digest: digest(d),
                index_digest: None,
                compressed_size: 10,
            },
        },
        Op::Pulled(i, d) => Command::RecordPulled {
            deploy: pick(s, i),
            node: node(),
            digest: digest(d),
        },
        Op::PreStart(i) => Command::RecordPreDeployStarted { deploy: pick(s, i) },
        Op::PreEnd(i, success) => Command::RecordPreDeployEnded {
            deploy: pick(s, i),
            success,
            exit_code: Some(if success { 0 } else { 1 }),
            reason: None,
        },
        Op::UpdateStart(i) => Command::RecordUpdateStarted { deploy: pick(s, i) },
        Op::Live(i, d) => Command::RecordLive {
            deploy: pick(s, i),
            digest: digest(d),
        },
        Op::Fail(i) => Command::RecordFailed {
            deploy: pick(s, i),
            status: DeployStatus::UpdateFailed,
            reason: "boom".into(),
        },
        Op::PullFail(i) => Command::RecordPullFailed {
            deploy: Some(pick(s, i)),
            node: None,
            image: IMAGE.into(),
            reason: PullFailureReason::RegistryUnavailable,
            message: "503".into(),
        },
        Op::Missing(i, d) => Command::MarkRollbackTargetMissing {
            deploy: pick(s, i),
            digest: digest(d),
        },
        Op::Suspend => Command::Suspend,
        Op::Resume => Command::Resume {
            deploy: DeployId::generate(),
        },
        Op::Policy(cancel) => Command::Update {
            settings: Box::new(berth_schemas::events::ServiceSettings {
                overlap_policy: Some(if cancel {
                    OverlapPolicy::Cancel
                } else {
                    OverlapPolicy::Wait
                }),
                ..Default::default()
            }),
            deploy: DeployId::generate(),
        },
    }
}

/// Where a status may go next; anything else is a corruption.
fn may_follow(from: DeployStatus, to: DeployStatus) -> bool {
    use DeployStatus::*;
    from == to
        || matches!(
            (from, to),
            (Created, _)
                | (Queued, UpdateInProgress | Canceled)
                | (
                    UpdateInProgress,
                    PreDeployInProgress | Live | UpdateFailed | Canceled
                )
                | (
                    PreDeployInProgress,
                    UpdateInProgress | PreDeployFailed | UpdateFailed | Canceled
                )
                | (Live, Deactivated)
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn invariants_hold_under_random_commands(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = Scenario::created(ServiceType::WebService, &DeployId::generate());
        for op in &ops {
            let before = s.state.clone();
            let cmd = command(&s, op);
            match s.try_run(cmd) {
                Ok(_) => {}
                Err(_) => prop_assert_eq!(&s.state, &before, "a refusal changed state"),
            }
            for d in &before.deploys {
                let now = s.state.deploy(&d.id).map(|n| n.status);
                prop_assert!(
                    now.is_some_and(|n| may_follow(d.status, n)),
                    "{:?} went {:?} -> {:?} on {:?}", d.id, d.status, now, op
                );
                // A recorded digest never changes.
                if let Some(dg) = d.digest() {
                    prop_assert_eq!(s.state.deploy(&d.id).and_then(|n| n.digest()), Some(dg));
                }
            }
        }
    }

    #[test]
    fn deciding_twice_gives_the_same_events(ops in proptest::collection::vec(op(), 1..30)) {
        let mut s = Scenario::created(ServiceType::WebService, &DeployId::generate());
        for op in &ops {
            let cmd = command(&s, op);
            let a = s.when(cmd.clone());
            let b = s.when(cmd.clone());
            prop_assert_eq!(&a, &b);
            // Applying an accepted decision, then deciding the same command
            // again, never doubles its effect for worker facts.
            if let Ok(events) = a {
                s.append(&events);
                let is_fact = !matches!(cmd, Command::RequestDeploy(_) | Command::Resume { .. } | Command::Update { .. } | Command::Suspend);
                if is_fact && !events.is_empty() {
                    let again = s.when(cmd);
                    prop_assert!(matches!(again.as_deref(), Ok([]) | Err(_)) || matches!(events.first(), Some(berth_schemas::Event::ImagePullFailed(_))),
                        "repeating {:?} produced {:?}", op, again);
                }
            }
        }
    }
}

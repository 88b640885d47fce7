//! Given a service's state, the cluster and the time, when a pass is
//! asked for its steps, then these are what the scheduler carries out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_schemas::events::{ImagePullFailed, InstanceDraining, ServiceSettings};
use berth_schemas::ids::{DeployId, OwnerId, UserId};
use berth_schemas::model::{DeployStatus, PullFailureReason, ResolvedImage, Sealed, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, TimeDelta, Utc};

use super::sim::{deploy_id, digest, node, node_id, Svc};
use super::*;
use crate::service::{Command, CreateService};

const SEQ: u64 = 42;

fn two_nodes() -> ClusterView {
    ClusterView::new(vec![node(1, 4000, 8192), node(2, 4000, 8192)])
}

fn at(s: &mut Svc, view: &ClusterView, now: DateTime<Utc>) -> Vec<Step> {
    steps(&s.state, SEQ, view, &Timings::default(), now, &mut s.ids)
}

fn now(s: &mut Svc, view: &ClusterView) -> Vec<Step> {
    let t = s.now;
    at(s, view, t)
}

fn decided(steps: &[Step]) -> Vec<(&Command, &str)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Decide { command, key } => Some((command, key.as_str())),
            _ => None,
        })
        .collect()
}

fn enqueued(steps: &[Step]) -> Vec<(&NodeId, &Work, &str)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Enqueue { node, work, id } => Some((node, work, id.as_str())),
            _ => None,
        })
        .collect()
}

fn rechecks(steps: &[Step]) -> Vec<(Duration, &Recheck)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Recheck { after, why } => Some((*after, why)),
            _ => None,
        })
        .collect()
}

fn resolved(s: &mut Svc, deploy: &DeployId) {
    s.run(Command::RecordResolved {
        deploy: deploy.clone(),
        image: ResolvedImage {
            digest: digest(1),
            index_digest: None,
            compressed_size: 1,
        },
    });
}

fn with_pre_deploy(s: &mut Svc) {
    s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            pre_deploy_command: Some(Some("./migrate".into())),
            ..ServiceSettings::default()
        }),
        deploy: deploy_id(9),
    });
}

/// A web service whose first deploy runs its pre-deploy command since `s.now`.
fn pre_deploying() -> Svc {
    let mut s = Svc::web(1);
    with_pre_deploy(&mut s);
    resolved(&mut s, &deploy_id(0));
    s.run(Command::RecordPreDeployStarted {
        deploy: deploy_id(0),
    });
    s
}

#[test]
fn a_service_not_created_has_no_steps() {
    let state = ServiceState::default();
    let mut ids = SequentialIds(0);
    let none = steps(
        &state,
        SEQ,
        &two_nodes(),
        &Timings::default(),
        Utc::now(),
        &mut ids,
    );
    assert!(none.is_empty());
}

#[test]
fn a_deploy_still_resolving_waits() {
    let mut s = Svc::web(1);
    assert_eq!(now(&mut s, &two_nodes()), vec![]);
}

#[test]
fn a_pulled_deploy_without_pre_deploy_starts_its_update() {
    let mut s = Svc::web(1);
    resolved(&mut s, &deploy_id(0));
    let steps = now(&mut s, &two_nodes());
    assert_eq!(
        steps.first(),
        Some(&Step::Decide {
            command: Command::RecordUpdateStarted {
                deploy: deploy_id(0)
            },
            key: format!("update-started-{}", deploy_id(0)),
        })
    );
}

#[test]
fn a_pulled_deploy_with_a_pre_deploy_command_starts_it() {
    let mut s = Svc::web(1);
    with_pre_deploy(&mut s);
    resolved(&mut s, &deploy_id(0));
    let steps = now(&mut s, &two_nodes());
    assert_eq!(
        decided(&steps).first().map(|d| d.0),
        Some(&Command::RecordPreDeployStarted {
            deploy: deploy_id(0)
        })
    );
}

#[test]
fn a_running_pre_deploy_is_enqueued_with_a_fixed_id_and_checked_at_its_deadline() {
    let mut s = pre_deploying();
    let half_min = s.now + TimeDelta::seconds(30);
    let steps = at(&mut s, &two_nodes(), half_min);
    let work = enqueued(&steps);
    assert_eq!(work.len(), 1, "{steps:?}");
    let (_, work, id) = work[0];
    assert_eq!(id, format!("pre-deploy-{}", deploy_id(0)));
    match work {
        Work::PreDeploy {
            instance,
            command,
            timeout_secs,
            ..
        } => {
            assert_eq!(Some(instance), pre_deploy_instance(&deploy_id(0)).as_ref());
            assert_eq!(command, "./migrate");
            assert_eq!(*timeout_secs, 1800);
        }
        other => panic!("not a pre-deploy run: {other:?}"),
    }
    // What is left of timeout + grace (31 min), not a whole limit from now.
    assert_eq!(
        rechecks(&steps),
        vec![(
            Duration::from_secs(31 * 60 - 30),
            &Recheck::PreDeployDeadline
        )]
    );
    assert!(decided(&steps).is_empty());
}

#[test]
fn a_pre_deploy_enqueued_longer_ago_than_the_queue_dedupes_is_not_enqueued_again() {
    let mut s = pre_deploying();
    // Past 3/4 of the 120 s duplicate window.
    let later = s.now + TimeDelta::seconds(91);
    let steps = at(&mut s, &two_nodes(), later);
    assert!(enqueued(&steps).is_empty(), "{steps:?}");
    assert_eq!(rechecks(&steps).len(), 1);
    assert_eq!(rechecks(&steps)[0].1, &Recheck::PreDeployDeadline);
}

#[test]
fn a_pre_deploy_that_never_reported_back_fails_the_deploy() {
    let mut s = pre_deploying();
    let late = s.now + TimeDelta::seconds(1800 + 60);
    let steps = at(&mut s, &two_nodes(), late);
    assert_eq!(
        steps,
        vec![Step::Decide {
            command: Command::RecordFailed {
                deploy: deploy_id(0),
                status: DeployStatus::PreDeployFailed,
                reason: "the pre-deploy command did not report back within 1860s".into(),
            },
            key: format!("pre-deploy-lost-{}", deploy_id(0)),
        }]
    );
}

#[test]
fn a_pre_deploy_without_room_is_reported_and_retried() {
    let mut s = pre_deploying();
    let full = ClusterView::new(vec![node(1, 100, 100)]);
    let steps = now(&mut s, &full);
    let d = decided(&steps);
    assert!(matches!(d[0].0, Command::RecordPlacementBlocked(b) if b.unplaced == 1));
    assert_eq!(d[0].1, format!("blocked-{}-{SEQ}", deploy_id(0)));
    assert!(enqueued(&steps).is_empty());
    assert_eq!(
        rechecks(&steps),
        vec![(PLACEMENT_RETRY, &Recheck::Placement)]
    );
}

#[test]
fn a_successful_pre_deploy_starts_the_update() {
    let mut s = pre_deploying();
    s.run(Command::RecordPreDeployEnded {
        deploy: deploy_id(0),
        success: true,
        exit_code: Some(0),
        reason: None,
    });
    let steps = now(&mut s, &two_nodes());
    assert_eq!(
        decided(&steps).first().map(|d| d.0),
        Some(&Command::RecordUpdateStarted {
            deploy: deploy_id(0)
        })
    );
}

#[test]
fn a_cron_jobs_deploy_goes_live_once_updating() {
    let owner = OwnerId::User("usr-aaaaaaaaaaaaaaaaaaaa".parse::<UserId>().unwrap());
    let mut c = CreateService::new(
        owner,
        "job",
        ServiceType::CronJob,
        "ghcr.io/acme/job:v1",
        Sealed {
            kid: "k1".into(),
            ciphertext: "hook".into(),
        },
        deploy_id(0),
    );
    c.schedule = Some("* * * * *".into());
    let mut s = Svc::web(1);
    s.state = ServiceState::default();
    s.run(Command::Create(Box::new(c)));
    s.updating(&deploy_id(0), &digest(1));
    let steps = now(&mut s, &two_nodes());
    assert_eq!(
        steps,
        vec![Step::Decide {
            command: Command::RecordLive {
                deploy: deploy_id(0),
                digest: digest(1),
            },
            key: format!("live-{}", deploy_id(0)),
        }]
    );
}

#[test]
fn new_instances_are_placed_in_one_decision_then_started_on_their_nodes() {
    let mut s = Svc::web(2);
    s.updating(&deploy_id(0), &digest(1));
    let steps = now(&mut s, &two_nodes());
    let d = decided(&steps);
    let Command::Place {
        scheduled,
        rescheduled,
    } = d[0].0
    else {
        panic!("not a placement: {steps:?}");
    };
    assert_eq!((scheduled.len(), rescheduled.len()), (2, 0));
    assert_eq!(d[0].1, format!("place-{}-2", scheduled[0].instance));
    // Appended first; once placed, each is started with its id as message id.
    let placed: Vec<Event> = scheduled.iter().cloned().map(Event::from).collect();
    s.apply(&placed);
    let steps = now(&mut s, &two_nodes());
    let work = enqueued(&steps);
    assert_eq!(work.len(), 2, "{steps:?}");
    for (i, (node, work, id)) in work.into_iter().enumerate() {
        assert_eq!(node, &scheduled[i].node);
        assert_eq!(id, scheduled[i].instance.as_str());
        assert_eq!(
            work,
            &Work::Start {
                instance: scheduled[i].instance.clone(),
                deploy: deploy_id(0),
                digest: digest(1),
            }
        );
    }
}

#[test]
fn instances_on_a_node_recorded_lost_are_reported_first() {
    let mut s = Svc::web(1);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), true);
    let mut view = two_nodes();
    view.nodes[0].lost = true;
    let steps = now(&mut s, &view);
    assert_eq!(
        steps.first(),
        Some(&Step::Decide {
            command: Command::RecordServerFailed { node: node_id(1) },
            key: format!("server-failed-{}-{SEQ}", node_id(1)),
        })
    );
}

#[test]
fn a_healthy_web_instance_is_drained_before_its_stop_is_enqueued() {
    let mut s = Svc::web(1);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), true);
    s.instance(&deploy_id(0), 2, &digest(1), true);
    s.run(Command::RecordLive {
        deploy: deploy_id(0),
        digest: digest(1),
    });
    // Two healthy where one is wanted: one goes, drained first.
    let steps = now(&mut s, &two_nodes());
    let d = decided(&steps);
    assert!(
        matches!(d.as_slice(), [(Command::Drain { instances }, _)] if instances.len() == 1),
        "{steps:?}"
    );
    assert!(enqueued(&steps).is_empty());
    let Command::Drain { instances } = d[0].0 else {
        unreachable!()
    };
    let gone = instances[0].clone();
    s.apply(&[Event::InstanceDraining(InstanceDraining {
        instance: gone.clone(),
    })]);
    // Within the drain delay: look again when it ends.
    let half = s.now + TimeDelta::milliseconds(400);
    let steps = at(&mut s, &two_nodes(), half);
    assert!(enqueued(&steps).is_empty());
    assert_eq!(
        rechecks(&steps),
        vec![(Duration::from_millis(600), &Recheck::Drain)]
    );
    // After it: the stop goes to the node, which reports it.
    let after = s.now + TimeDelta::seconds(1);
    let steps = at(&mut s, &two_nodes(), after);
    let node = s.state.instances.get(&gone).unwrap().node.clone();
    assert_eq!(
        enqueued(&steps),
        vec![(
            &node,
            &Work::Stop {
                instance: gone.clone()
            },
            format!("stop-{gone}").as_str()
        )]
    );
    assert!(decided(&steps).is_empty(), "the node reports the stop");
}

#[test]
fn after_a_failed_pull_of_the_live_image_nothing_more_is_placed_for_a_while() {
    let mut s = Svc::web(1);
    s.updating(&deploy_id(0), &digest(1));
    s.instance(&deploy_id(0), 1, &digest(1), true);
    s.run(Command::RecordLive {
        deploy: deploy_id(0),
        digest: digest(1),
    });
    s.run(Command::Scale { num_instances: 2 });
    // The new instance was placed, then its node could not pull the image.
    let placed = s.ids.next_instance();
    s.apply(&[
        Event::InstanceScheduled(berth_schemas::events::InstanceScheduled {
            instance: placed.clone(),
            deploy: deploy_id(0),
            node: node_id(2),
            digest: digest(1),
        }),
        Event::ImagePullFailed(ImagePullFailed {
            deploy: Some(deploy_id(0)),
            node: Some(node_id(2)),
            image: "ghcr.io/acme/app:v1".into(),
            reason: PullFailureReason::ImageNotFound,
            message: "gone".into(),
        }),
    ]);
    let ten_s = s.now + TimeDelta::seconds(10);
    let steps = at(&mut s, &two_nodes(), ten_s);
    // The stranded one is let go (never started: recorded stopped here,
    // and the node told), and none replaces it until the back-off ends.
    assert_eq!(
        enqueued(&steps),
        vec![(
            &node_id(2),
            &Work::Stop {
                instance: placed.clone()
            },
            format!("stop-{placed}").as_str()
        )]
    );
    let d = decided(&steps);
    assert!(
        matches!(d.as_slice(), [(Command::Release { instances }, _)] if instances == &vec![placed.clone()]),
        "{steps:?}"
    );
    // Once it is gone, the back-off holds back the placement the plan
    // wants, and says when it ends.
    s.apply(&[Event::InstanceStopped(
        berth_schemas::events::InstanceStopped { instance: placed },
    )]);
    let steps = at(&mut s, &two_nodes(), ten_s);
    assert!(decided(&steps).is_empty(), "{steps:?}");
    assert!(enqueued(&steps).is_empty(), "{steps:?}");
    assert!(rechecks(&steps).contains(&(
        Duration::from_secs(50),
        &Recheck::PullBackoff {
            deploy: deploy_id(0)
        }
    )));
    // After it, the instance is placed again.
    let later = s.now + TimeDelta::seconds(61);
    let steps = at(&mut s, &two_nodes(), later);
    assert!(matches!(
        decided(&steps).as_slice(),
        [(Command::Place { .. }, _)]
    ));
}

#[test]
fn the_pre_deploy_run_id_is_fixed_per_deploy() {
    let d = DeployId::generate();
    let a = pre_deploy_instance(&d).unwrap();
    assert_eq!(Some(a.clone()), pre_deploy_instance(&d));
    assert_ne!(Some(a), pre_deploy_instance(&DeployId::generate()));
}

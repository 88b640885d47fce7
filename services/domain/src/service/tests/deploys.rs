//! The deploy state machine: every status and transition, overlap policies,
//! cancels, failures, rollbacks, and late or repeated worker facts.

use berth_schemas::events::{
    CancelReason, DeployCanceled, DeployCreated, DeployDeactivated, DeployFailed, DeployLive,
    DeployQueued, DeployStarted, ImagePullFailed, PreDeployEnded, PreDeployStarted,
    ServiceSettings,
};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{
    DeployPhase, DeployStatus, DeployTrigger, OverlapPolicy, PullFailureReason, ResolvedImage,
    ServiceType,
};
use berth_schemas::Event;

use super::{digest, node, Scenario, IMAGE};
use crate::error::ErrorKind;
use crate::service::{apply, Command, DeployRequest};

fn started(id: &DeployId, trigger: DeployTrigger) -> Event {
    DeployStarted {
        deploy: id.clone(),
        trigger: Some(trigger),
    }
    .into()
}

fn canceled(id: &DeployId, reason: CancelReason, by: Option<&DeployId>) -> Event {
    DeployCanceled {
        deploy: id.clone(),
        reason,
        by: by.cloned(),
    }
    .into()
}

fn created_event(id: &DeployId, trigger: DeployTrigger, image: &str) -> Event {
    DeployCreated {
        deploy: id.clone(),
        trigger,
        image: image.into(),
        credential: None,
        rollback_of: None,
    }
    .into()
}

#[test]
fn create_starts_the_initial_deploy_with_the_normalised_image() {
    let d0 = DeployId::generate();
    let s = Scenario::created(ServiceType::WebService, &d0);
    assert_eq!(s.history.len(), 3);
    assert!(matches!(s.history[0], Event::ServiceCreated(_)));
    assert_eq!(
        s.history[1..],
        [
            created_event(&d0, DeployTrigger::ServiceCreated, IMAGE),
            started(&d0, DeployTrigger::ServiceCreated)
        ]
    );
    assert_eq!(s.status(&d0), DeployStatus::UpdateInProgress);
    assert_eq!(s.deploy(&d0).phase, Some(DeployPhase::Resolving));
    assert_eq!(s.state.active, Some(d0));
}

#[test]
fn every_status_of_the_pipeline_with_a_pre_deploy_command() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    assert_eq!(s.status(&d0), DeployStatus::Live);

    // created: the request alone, before admission.
    let d1 = DeployId::generate();
    let only_created = apply(
        s.state.clone(),
        &created_event(&d1, DeployTrigger::Api, IMAGE),
    );
    assert_eq!(
        only_created.deploy(&d1).map(|d| d.status),
        Some(DeployStatus::Created)
    );

    // update_in_progress (resolving → pulling)
    let events = s.run(Command::RequestDeploy(DeployRequest::new(
        d1.clone(),
        DeployTrigger::Api,
    )));
    assert_eq!(
        events,
        vec![
            created_event(&d1, DeployTrigger::Api, IMAGE),
            started(&d1, DeployTrigger::Api)
        ]
    );
    assert_eq!(s.status(&d1), DeployStatus::UpdateInProgress);
    s.resolve(&d1, &digest(2));
    assert_eq!(s.deploy(&d1).phase, Some(DeployPhase::Pulling));
    assert_eq!(s.deploy(&d1).digest(), Some(digest(2).as_str()));

    // queued: a second request while d1 runs.
    let (d2, events) = s.request(DeployTrigger::DeployHook);
    assert_eq!(events[1], DeployQueued { deploy: d2.clone() }.into());
    assert_eq!(s.status(&d2), DeployStatus::Queued);

    // pre_deploy_in_progress → update_in_progress → live
    assert_eq!(
        s.run(Command::RecordPreDeployStarted { deploy: d1.clone() }),
        vec![PreDeployStarted { deploy: d1.clone() }.into()]
    );
    assert_eq!(s.status(&d1), DeployStatus::PreDeployInProgress);
    s.run(Command::RecordPreDeployEnded {
        deploy: d1.clone(),
        success: true,
        exit_code: Some(0),
        reason: None,
    });
    assert_eq!(s.status(&d1), DeployStatus::UpdateInProgress);
    s.run(Command::RecordUpdateStarted { deploy: d1.clone() });
    assert_eq!(s.deploy(&d1).phase, Some(DeployPhase::Updating));
    // The previous live deploy is still live while d1 updates.
    assert_eq!(s.status(&d0), DeployStatus::Live);

    let events = s.run(Command::RecordLive {
        deploy: d1.clone(),
        digest: digest(2),
    });
    // live + deactivated + the queued one starts, atomically.
    assert_eq!(
        events,
        vec![
            DeployLive {
                deploy: d1.clone(),
                digest: digest(2)
            }
            .into(),
            DeployDeactivated {
                deploy: d0.clone(),
                by: d1.clone()
            }
            .into(),
            started(&d2, DeployTrigger::DeployHook),
        ]
    );
    assert_eq!(s.status(&d1), DeployStatus::Live);
    assert_eq!(s.status(&d0), DeployStatus::Deactivated);
    assert_eq!(s.deploy(&d0).ended_by, Some(d1.clone()));
    assert_eq!(s.status(&d2), DeployStatus::UpdateInProgress);
    assert_eq!(s.state.live, Some(d1));
    assert_eq!(s.state.current_digest(), Some(digest(2).as_str()));
}

#[test]
fn pre_deploy_failure_ends_pre_deploy_failed_and_the_previous_live_keeps_serving() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::Api);
    s.resolve(&d1, &digest(2));
    s.run(Command::RecordPreDeployStarted { deploy: d1.clone() });
    let events = s.run(Command::RecordPreDeployEnded {
        deploy: d1.clone(),
        success: false,
        exit_code: Some(3),
        reason: None,
    });
    assert_eq!(
        events,
        vec![
            PreDeployEnded {
                deploy: d1.clone(),
                success: false,
                exit_code: Some(3),
                reason: None
            }
            .into(),
            DeployFailed {
                deploy: d1.clone(),
                status: DeployStatus::PreDeployFailed,
                reason: "pre-deploy command exited with code 3".into()
            }
            .into(),
        ]
    );
    assert_eq!(s.status(&d1), DeployStatus::PreDeployFailed);
    assert_eq!(s.status(&d0), DeployStatus::Live);
    assert_eq!(s.state.live, Some(d0));
    assert_eq!(s.state.active, None);
}

#[test]
fn update_failure_keeps_the_previous_live_and_starts_the_next_queued() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::Api);
    let (d2, _) = s.request(DeployTrigger::Api);
    s.resolve(&d1, &digest(2));
    s.run(Command::RecordUpdateStarted { deploy: d1.clone() });
    let events = s.run(Command::RecordFailed {
        deploy: d1.clone(),
        status: DeployStatus::UpdateFailed,
        reason: "health check timed out".into(),
    });
    assert_eq!(
        events,
        vec![
            DeployFailed {
                deploy: d1.clone(),
                status: DeployStatus::UpdateFailed,
                reason: "health check timed out".into()
            }
            .into(),
            started(&d2, DeployTrigger::Api),
        ]
    );
    assert_eq!(s.status(&d1), DeployStatus::UpdateFailed);
    assert_eq!(s.status(&d0), DeployStatus::Live);
    assert_eq!(
        s.deploy(&d1).reason.as_deref(),
        Some("health check timed out")
    );
}

#[test]
fn a_pull_failure_fails_the_running_deploy_with_its_reason() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::DeployHook);
    let events = s.run(Command::RecordPullFailed {
        deploy: Some(d1.clone()),
        node: None,
        image: IMAGE.into(),
        reason: PullFailureReason::Unauthorized,
        message: "token revoked".into(),
    });
    assert_eq!(events.len(), 2);
    assert!(
        matches!(&events[0], Event::ImagePullFailed(e) if e.reason == PullFailureReason::Unauthorized)
    );
    assert_eq!(
        events[1],
        DeployFailed {
            deploy: d1.clone(),
            status: DeployStatus::UpdateFailed,
            reason: "unauthorized: token revoked".into()
        }
        .into()
    );
    assert_eq!(s.status(&d0), DeployStatus::Live);

    // A failed pull of the live digest (scale-out) is recorded, nothing ends.
    let pf = Command::RecordPullFailed {
        deploy: Some(d0.clone()),
        node: Some(node()),
        image: IMAGE.into(),
        reason: PullFailureReason::ImageNotFound,
        message: "manifest unknown".into(),
    };
    let events = s.run(pf);
    assert_eq!(events.len(), 1);
    assert_eq!(s.status(&d0), DeployStatus::Live);
    // Outside any deploy: recorded.
    let events = s.run(Command::RecordPullFailed {
        deploy: None,
        node: Some(node()),
        image: IMAGE.into(),
        reason: PullFailureReason::RegistryUnavailable,
        message: "503".into(),
    });
    assert!(matches!(
        &events[..],
        [Event::ImagePullFailed(ImagePullFailed { deploy: None, .. })]
    ));
}

#[test]
fn overlap_wait_runs_only_the_newest_of_three_queued_requests() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    let (a, ea) = s.request(DeployTrigger::DeployHook);
    let (b, _) = s.request(DeployTrigger::DeployHook);
    let (c, _) = s.request(DeployTrigger::Api);
    assert_eq!(ea[1], DeployQueued { deploy: a.clone() }.into());
    assert_eq!(s.state.queue, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(s.status(&d0), DeployStatus::UpdateInProgress);

    let events = s.go_live(&d0, &digest(1));
    assert_eq!(
        events,
        vec![
            DeployLive {
                deploy: d0.clone(),
                digest: digest(1)
            }
            .into(),
            canceled(&a, CancelReason::Superseded, Some(&c)),
            canceled(&b, CancelReason::Superseded, Some(&c)),
            started(&c, DeployTrigger::Api),
        ]
    );
    assert_eq!(s.status(&a), DeployStatus::Canceled);
    assert_eq!(s.deploy(&a).cancel_reason, Some(CancelReason::Superseded));
    assert_eq!(s.deploy(&b).ended_by, Some(c.clone()));
    assert_eq!(s.status(&c), DeployStatus::UpdateInProgress);
    assert!(s.state.queue.is_empty());
}

#[test]
fn overlap_wait_promotes_the_newest_whichever_way_the_running_deploy_ends() {
    for end in ["failed", "canceled", "pull_failed", "pre_deploy_failed"] {
        let d0 = DeployId::generate();
        let mut s = Scenario::created(ServiceType::WebService, &d0);
        let (a, _) = s.request(DeployTrigger::Api);
        let (b, _) = s.request(DeployTrigger::Api);
        s.resolve(&d0, &digest(1));
        let cmd = match end {
            "failed" => Command::RecordFailed {
                deploy: d0.clone(),
                status: DeployStatus::UpdateFailed,
                reason: "x".into(),
            },
            "canceled" => Command::CancelDeploy { deploy: d0.clone() },
            "pull_failed" => Command::RecordPullFailed {
                deploy: Some(d0.clone()),
                node: Some(node()),
                image: IMAGE.into(),
                reason: PullFailureReason::DigestMismatch,
                message: "x".into(),
            },
            _ => {
                s.run(Command::RecordPreDeployStarted { deploy: d0.clone() });
                Command::RecordPreDeployEnded {
                    deploy: d0.clone(),
                    success: false,
                    exit_code: None,
                    reason: Some("timeout".into()),
                }
            }
        };
        let events = s.run(cmd);
        let tail = &events[events.len() - 2..];
        assert_eq!(
            tail,
            [
                canceled(&a, CancelReason::Superseded, Some(&b)),
                started(&b, DeployTrigger::Api)
            ],
            "{end}"
        );
        assert_eq!(s.state.active, Some(b));
    }
}

#[test]
fn overlap_cancel_cancels_the_running_deploy_and_starts_the_new_one() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    s.set_policy(OverlapPolicy::Cancel);
    let (d1, _) = s.request(DeployTrigger::Api);
    s.resolve(&d1, &digest(2));
    let d2 = DeployId::generate();
    let events = s.run(Command::RequestDeploy(DeployRequest::new(
        d2.clone(),
        DeployTrigger::DeployHook,
    )));
    assert_eq!(
        events,
        vec![
            created_event(&d2, DeployTrigger::DeployHook, IMAGE),
            canceled(&d1, CancelReason::OverlapCancel, Some(&d2)),
            started(&d2, DeployTrigger::DeployHook),
        ]
    );
    assert_eq!(s.status(&d1), DeployStatus::Canceled);
    assert_eq!(s.status(&d2), DeployStatus::UpdateInProgress);
    assert_eq!(s.status(&d0), DeployStatus::Live);
}

#[test]
fn overlap_cancel_also_supersedes_deploys_queued_under_wait() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    let (q, _) = s.request(DeployTrigger::Api);
    s.set_policy(OverlapPolicy::Cancel);
    let (n, events) = s.request(DeployTrigger::Api);
    assert_eq!(
        events[1..],
        [
            canceled(&d0, CancelReason::OverlapCancel, Some(&n)),
            canceled(&q, CancelReason::Superseded, Some(&n)),
            started(&n, DeployTrigger::Api),
        ]
    );
}

#[test]
fn explicit_cancel_of_a_queued_deploy_leaves_the_rest_alone() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    let (a, _) = s.request(DeployTrigger::Api);
    let (b, _) = s.request(DeployTrigger::Api);
    let events = s.run(Command::CancelDeploy { deploy: a.clone() });
    assert_eq!(events, vec![canceled(&a, CancelReason::Explicit, None)]);
    assert_eq!(s.state.queue, vec![b.clone()]);
    assert_eq!(s.status(&d0), DeployStatus::UpdateInProgress);
    // Canceling again is a no-op; the running deploy ending starts b alone.
    assert_eq!(s.run(Command::CancelDeploy { deploy: a }), vec![]);
    let events = s.go_live(&d0, &digest(1));
    assert_eq!(events.last(), Some(&started(&b, DeployTrigger::Api)));
}

#[test]
fn explicit_cancel_of_the_running_deploy_starts_the_newest_queued() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::Api);
    let (a, _) = s.request(DeployTrigger::Api);
    let (b, _) = s.request(DeployTrigger::Api);
    s.resolve(&d1, &digest(2));
    s.run(Command::RecordPreDeployStarted { deploy: d1.clone() });
    let events = s.run(Command::CancelDeploy { deploy: d1.clone() });
    assert_eq!(
        events,
        vec![
            canceled(&d1, CancelReason::Explicit, None),
            canceled(&a, CancelReason::Superseded, Some(&b)),
            started(&b, DeployTrigger::Api),
        ]
    );
    assert_eq!(s.status(&d0), DeployStatus::Live);

    // Live and failed deploys cannot be canceled; unknown ones are not found.
    assert_eq!(
        s.refused(Command::CancelDeploy { deploy: d0 }),
        ErrorKind::Conflict
    );
    assert_eq!(
        s.refused(Command::CancelDeploy {
            deploy: DeployId::generate()
        }),
        ErrorKind::NotFound
    );
}

#[test]
fn a_repeated_request_is_a_no_op_and_a_reused_id_a_conflict() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::Api);
    assert_eq!(
        s.run(Command::RequestDeploy(DeployRequest::new(
            d1.clone(),
            DeployTrigger::Api
        ))),
        vec![]
    );
    assert_eq!(
        s.refused(Command::RequestDeploy(DeployRequest::new(
            d1,
            DeployTrigger::Manual
        ))),
        ErrorKind::Conflict
    );
}

#[test]
fn worker_facts_repeated_late_or_out_of_order_never_corrupt_state() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    let (q, _) = s.request(DeployTrigger::Api);

    // Out of order on the running deploy: conflicts.
    for cmd in [
        Command::RecordPreDeployStarted { deploy: d0.clone() },
        Command::RecordUpdateStarted { deploy: d0.clone() },
        Command::RecordLive {
            deploy: d0.clone(),
            digest: digest(1),
        },
        Command::RecordPulled {
            deploy: d0.clone(),
            node: node(),
            digest: digest(1),
        },
        Command::RecordPreDeployEnded {
            deploy: d0.clone(),
            success: true,
            exit_code: None,
            reason: None,
        },
    ] {
        assert_eq!(s.refused(cmd), ErrorKind::Conflict);
    }
    // Facts about a queued deploy: conflicts (no worker can know it yet).
    assert_eq!(
        s.refused(Command::RecordFailed {
            deploy: q.clone(),
            status: DeployStatus::UpdateFailed,
            reason: "x".into()
        }),
        ErrorKind::Conflict
    );
    // Unknown deploy: not found.
    assert_eq!(
        s.refused(Command::RecordUpdateStarted {
            deploy: DeployId::generate()
        }),
        ErrorKind::NotFound
    );

    // Repeats of an applied fact: no events.
    s.resolve(&d0, &digest(1));
    assert_eq!(s.resolve(&d0, &digest(1)), vec![]);
    let other_digest = s.when(Command::RecordResolved {
        deploy: d0.clone(),
        image: ResolvedImage {
            digest: digest(2),
            index_digest: None,
            compressed_size: 1,
        },
    });
    assert_eq!(other_digest.unwrap_err().kind(), ErrorKind::Conflict);
    let pulled = Command::RecordPulled {
        deploy: d0.clone(),
        node: node(),
        digest: digest(1),
    };
    assert_eq!(s.run(pulled.clone()).len(), 1);
    assert_eq!(s.run(pulled), vec![]);
    let wrong_pull = s.when(Command::RecordPulled {
        deploy: d0.clone(),
        node: node(),
        digest: digest(3),
    });
    assert_eq!(wrong_pull.unwrap_err().kind(), ErrorKind::Conflict);
    s.run(Command::RecordUpdateStarted { deploy: d0.clone() });
    assert_eq!(
        s.run(Command::RecordUpdateStarted { deploy: d0.clone() }),
        vec![]
    );
    // Live with another digest than resolved: refused.
    assert_eq!(
        s.refused(Command::RecordLive {
            deploy: d0.clone(),
            digest: digest(2)
        }),
        ErrorKind::Conflict
    );

    // Cancel it; every later fact about it is ignored and nothing changes.
    s.run(Command::CancelDeploy { deploy: d0.clone() });
    let before = s.state.clone();
    for cmd in [
        Command::RecordLive {
            deploy: d0.clone(),
            digest: digest(1),
        },
        Command::RecordFailed {
            deploy: d0.clone(),
            status: DeployStatus::UpdateFailed,
            reason: "late".into(),
        },
        Command::RecordUpdateStarted { deploy: d0.clone() },
        Command::RecordPreDeployStarted { deploy: d0.clone() },
        Command::RecordPullFailed {
            deploy: Some(d0.clone()),
            node: None,
            image: IMAGE.into(),
            reason: PullFailureReason::ImageNotFound,
            message: "late".into(),
        },
    ] {
        assert_eq!(s.run(cmd), vec![]);
    }
    assert_eq!(s.state, before);
    assert_eq!(s.status(&d0), DeployStatus::Canceled);

    // The same live fact twice goes live once.
    s.go_live(&q, &digest(4));
    assert_eq!(
        s.run(Command::RecordLive {
            deploy: q.clone(),
            digest: digest(4)
        }),
        vec![]
    );
    // A failure status that is not a failure is invalid.
    assert_eq!(
        s.refused(Command::RecordFailed {
            deploy: q,
            status: DeployStatus::Live,
            reason: "x".into()
        }),
        ErrorKind::Invalid
    );
}

#[test]
fn replaying_the_decided_events_onto_the_seen_state_equals_a_full_replay() {
    // Scenario::append asserts this after every step; here once explicitly
    // over a busy history, applied event by event from an empty state.
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    s.request(DeployTrigger::Api);
    let (b, _) = s.request(DeployTrigger::Api);
    let (c, _) = s.request(DeployTrigger::Api);
    s.run(Command::CancelDeploy { deploy: b });
    let seen = s.state.clone();
    let events = s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            overlap_policy: Some(OverlapPolicy::Cancel),
            image: Some("ghcr.io/acme/app:v3".into()),
            ..Default::default()
        }),
        deploy: DeployId::generate(),
    });
    let mut folded = seen;
    for e in &events {
        folded = apply(folded, e);
    }
    assert_eq!(folded, s.state);
    assert_eq!(
        <crate::service::Service as crate::aggregate::Aggregate>::replay(&s.history),
        s.state
    );
    // The update redeployed with the new image under the new policy.
    assert_eq!(s.status(&c), DeployStatus::Canceled);
}

#[test]
fn a_long_history_holds_only_recent_ended_deploys_and_a_full_fold_holds_all() {
    use crate::service::KEPT_ENDED_DEPLOYS;
    let first = DeployId::generate();
    let mut s = Scenario::live_web(&first);
    let mut ids = vec![first.clone()];
    for n in 0..300u32 {
        let (id, _) = s.request(DeployTrigger::DeployHook);
        s.go_live(&id, &digest((n % 250) as u8 + 2));
        ids.push(id);
    }
    // A running deploy stays however many deploys end after it.
    let (running, _) = s.request(DeployTrigger::Api);
    let held = s.state.deploys.len();
    assert!(
        held <= KEPT_ENDED_DEPLOYS + 30,
        "{held} deploys held after 302"
    );
    assert_eq!(s.state.forgotten_deploys as usize + held, ids.len() + 1);
    // The newest are held, the oldest are not; live and running always are.
    assert!(s.state.deploy(&ids[0]).is_none());
    assert!(s.state.deploy(ids.last().unwrap()).is_some());
    assert_eq!(s.state.live.as_ref(), ids.last());
    assert_eq!(s.state.active.as_ref(), Some(&running));
    assert!(s.state.deploy(&running).is_some());
    // Every event is still in the history: a fold keeping every deploy
    // sees the first one as it ended.
    let all = s
        .history
        .iter()
        .fold(crate::service::ServiceState::keeping_every_deploy(), apply);
    assert_eq!(all.deploys.len(), ids.len() + 1);
    assert_eq!(all.forgotten_deploys, 0);
    assert_eq!(
        all.deploy(&first).map(|d| d.status),
        Some(DeployStatus::Deactivated)
    );
}

#[test]
fn a_retry_shows_while_the_deploy_waits_for_its_digest_and_never_after() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::BackgroundWorker, &d0);
    let at = chrono::Utc::now();
    let retry = |attempt, message: &str| Command::RecordRetrying {
        deploy: d0.clone(),
        attempt,
        retry_at: at,
        message: message.to_owned(),
    };
    let events = s.run(retry(1, &"x".repeat(2000)));
    let [Event::DeployRetrying(r)] = events.as_slice() else {
        unreachable!("{events:?}")
    };
    assert_eq!(r.message.len(), 512, "a long message is cut");
    s.run(retry(2, "503"));
    assert_eq!(s.deploy(&d0).retrying.as_ref().map(|r| r.attempt), Some(2));
    s.resolve(&d0, &digest(1));
    assert!(s.deploy(&d0).retrying.is_none(), "resolved: shown no more");
    assert!(
        s.run(retry(3, "late")).is_empty(),
        "a late report records nothing"
    );
}

#[test]
fn deploys_piling_up_unended_are_looked_over_rarely_and_let_go_once_they_end() {
    use crate::service::KEPT_ENDED_DEPLOYS;
    let first = DeployId::generate();
    let mut s = Scenario::live_web(&first);
    let piled: Vec<DeployId> = (0..400)
        .map(|_| s.request(DeployTrigger::DeployHook).0)
        .collect();
    let unended = s.state.deploys.iter().filter(|d| !d.is_ended()).count();
    assert_eq!(unended, piled.len() + 1, "the hooked deploys pile up");
    // Each look over the held deploys waits for as many new ones as were
    // unended at the last look (looks at 129 and 257 here, the next at 514),
    // not one pass per deploy (which would look again at the next one).
    assert!(
        s.state.forget_check_at > s.state.deploys.len() + KEPT_ENDED_DEPLOYS,
        "next look at {} with {} held",
        s.state.forget_check_at,
        s.state.deploys.len()
    );
    for id in &piled {
        s.run(Command::CancelDeploy { deploy: id.clone() });
    }
    let unended: Vec<_> = s.state.deploys.iter().filter(|d| !d.is_ended()).collect();
    assert_eq!(unended.len(), 1, "only the live deploy runs on");
    assert_eq!(Some(&unended[0].id), s.state.live.as_ref());
    // Once they ended, new deploys bring the held ones back to the bound.
    for n in 0..150u32 {
        let (id, _) = s.request(DeployTrigger::DeployHook);
        s.go_live(&id, &digest((n % 250) as u8 + 2));
    }
    let held = s.state.deploys.len();
    let requested = 1 + piled.len() + 150;
    assert!(
        held <= KEPT_ENDED_DEPLOYS + 30,
        "{held} deploys held after {requested}"
    );
    assert_eq!(s.state.forgotten_deploys as usize + held, requested);
}

#[test]
fn a_view_of_served_deploys_holds_the_newest_deactivated_ones_as_the_full_fold_has_them() {
    use crate::service::{Deploy, ServiceState};
    let first = DeployId::generate();
    let mut s = Scenario::live_web(&first);
    for n in 0..40u32 {
        let (id, _) = s.request(DeployTrigger::DeployHook);
        if n % 3 == 0 {
            // Ended without serving: never a rollback target.
            s.run(Command::CancelDeploy { deploy: id });
        } else {
            s.go_live(&id, &digest((n % 250) as u8 + 2));
        }
    }
    let (running, _) = s.request(DeployTrigger::Api);
    let served = s
        .history
        .iter()
        .fold(ServiceState::keeping_served(3), apply);
    let deactivated = |st: &ServiceState| -> Vec<Deploy> {
        st.deploys
            .iter()
            .filter(|d| d.status == DeployStatus::Deactivated)
            .map(|d| Deploy::clone(d))
            .collect()
    };
    let full = deactivated(&s.state);
    assert!(
        full.len() > 6,
        "the full fold holds {} deactivated",
        full.len()
    );
    let newest = |ds: &[Deploy], n: usize| ds[ds.len() - n..].to_vec();
    // The newest three as the full fold has them, a few more at most
    // between two looks (a look every three new deploys).
    let held = deactivated(&served);
    assert!(
        (3..=6).contains(&held.len()),
        "{} deactivated held",
        held.len()
    );
    assert_eq!(held, newest(&full, held.len()));
    // Besides those: the live deploy, the running one, and at most the few
    // ended since the last look; each as the full fold has it.
    assert!(served.deploys.len() <= 3 + 3 + 2, "{:?}", served.deploys);
    for d in &served.deploys {
        assert_eq!(s.state.deploy(&d.id), Some(&**d));
    }
    assert_eq!(served.live_deploy(), s.state.live_deploy());
    assert_eq!(served.active.as_ref(), Some(&running));
    assert_eq!(served.deploy(&running), s.state.deploy(&running));
    assert_eq!(
        served.forgotten_deploys as usize + served.deploys.len(),
        s.state.forgotten_deploys as usize + s.state.deploys.len()
    );
    // A state read back with every recent deploy comes down to the newest
    // three served, the live and the running one at once.
    let mut restored = s.state.clone();
    restored.keep_only_served(3);
    assert_eq!(deactivated(&restored), newest(&full, 3));
    assert_eq!(restored.deploys.len(), 5);
    assert_eq!(restored.deploy(&running), s.state.deploy(&running));
    // And keeps to it as deploys go on.
    let from = s.history.len();
    s.go_live(&running, &digest(99));
    for n in 0..10u32 {
        let (id, _) = s.request(DeployTrigger::DeployHook);
        s.go_live(&id, &digest(n as u8 + 100));
    }
    restored = s.history[from..].iter().fold(restored, apply);
    assert!(
        restored.deploys.len() <= 3 + 3 + 2,
        "{}",
        restored.deploys.len()
    );
    assert_eq!(restored.live_deploy(), s.state.live_deploy());
    assert_eq!(
        deactivated(&restored),
        newest(&deactivated(&s.state), deactivated(&restored).len())
    );
}

#[test]
fn the_nodes_a_deploy_was_pulled_on_are_held_sorted_and_once_however_often_told() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::BackgroundWorker, &d0);
    s.resolve(&d0, &digest(1));
    let nodes: Vec<berth_schemas::ids::NodeId> =
        ["nod-cccccccccccccccccccc", "nod-bbbbbbbbbbbbbbbbbbbb"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
    let pulled = |node: &berth_schemas::ids::NodeId, d: &str| -> Event {
        berth_schemas::events::ImagePulled {
            deploy: d0.clone(),
            node: node.clone(),
            digest: d.to_owned(),
        }
        .into()
    };
    // Facts as a log may hold them: repeated, unordered, one of another digest.
    s.append(&[
        pulled(&nodes[0], &digest(1)),
        pulled(&nodes[1], &digest(1)),
        pulled(&nodes[0], &digest(1)),
        pulled(&node(), &digest(2)),
    ]);
    assert_eq!(
        s.deploy(&d0).pulled_on,
        vec![nodes[1].clone(), nodes[0].clone()]
    );
}

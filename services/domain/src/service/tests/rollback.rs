//! Rollbacks (SPEC §7) and image overrides: a rollback deploys the target's
//! recorded digest, never its tag, and is refused for targets without one.

use berth_schemas::events::{DeployCreated, DeployDeactivated, RollbackTargetMissing};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployTrigger, PullFailureReason, ResolvedImage};
use berth_schemas::Event;

use super::{digest, Scenario};
use crate::error::ErrorKind;
use crate::service::{Command, DeployRequest};

/// A rollback deploy starting.
fn started(id: &DeployId) -> Event {
    berth_schemas::events::DeployStarted {
        deploy: id.clone(),
        trigger: Some(berth_schemas::model::DeployTrigger::Rollback),
    }
    .into()
}

fn rollback_fixture() -> (Scenario, DeployId, DeployId) {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::DeployHook);
    s.go_live(&d1, &digest(2));
    (s, d0, d1)
}

#[test]
fn rollback_deploys_the_targets_recorded_digest_never_its_tag() {
    let (mut s, d0, d1) = rollback_fixture();
    let r = DeployId::generate();
    let events = s.run(Command::RequestDeploy(DeployRequest::rollback(
        r.clone(),
        d0.clone(),
    )));
    let want_image = format!("ghcr.io/acme/app@{}", digest(1));
    assert_eq!(
        events,
        vec![
            DeployCreated {
                deploy: r.clone(),
                trigger: DeployTrigger::Rollback,
                image: want_image.clone(),
                credential: None,
                rollback_of: Some(d0.clone()),
            }
            .into(),
            started(&r),
        ]
    );
    // The resolver may only confirm the pinned digest.
    let other = s.when(Command::RecordResolved {
        deploy: r.clone(),
        image: ResolvedImage {
            digest: digest(9),
            index_digest: None,
            compressed_size: 1,
        },
    });
    assert_eq!(other.unwrap_err().kind(), ErrorKind::Conflict);
    let events = s.go_live(&r, &digest(1));
    assert_eq!(
        events[1],
        DeployDeactivated {
            deploy: d1,
            by: r.clone()
        }
        .into()
    );
    assert_eq!(s.state.current_digest(), Some(digest(1).as_str()));
    assert_eq!(s.deploy(&r).image, want_image);
}

#[test]
fn rollback_image_not_found_fails_and_the_current_version_keeps_serving() {
    let (mut s, d0, d1) = rollback_fixture();
    let r = DeployId::generate();
    s.run(Command::RequestDeploy(DeployRequest::rollback(
        r.clone(),
        d0,
    )));
    let events = s.run(Command::RecordPullFailed {
        deploy: Some(r.clone()),
        node: None,
        image: s.deploy(&r).image.clone(),
        reason: PullFailureReason::ImageNotFound,
        message: "manifest unknown".into(),
    });
    assert!(
        matches!(&events[1], Event::DeployFailed(f) if f.reason.starts_with("image_not_found"))
    );
    assert_eq!(s.state.live, Some(d1));
}

#[test]
fn rollback_refusals() {
    let (mut s, d0, _) = rollback_fixture();
    let when = |s: &Scenario, req| s.when(Command::RequestDeploy(req)).unwrap_err();

    let missing = when(
        &s,
        DeployRequest::rollback(DeployId::generate(), DeployId::generate()),
    );
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // A deploy that failed before resolving has no digest to roll back to.
    let (never, _) = s.request(DeployTrigger::Api);
    s.run(Command::CancelDeploy {
        deploy: never.clone(),
    });
    let err = when(&s, DeployRequest::rollback(DeployId::generate(), never));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("never resolved"), "{err}");

    // Marked not rollback-eligible by the registry check.
    let events = s.run(Command::MarkRollbackTargetMissing {
        deploy: d0.clone(),
        digest: digest(1),
    });
    assert_eq!(
        events,
        vec![RollbackTargetMissing {
            deploy: d0.clone(),
            digest: digest(1)
        }
        .into()]
    );
    assert_eq!(
        s.run(Command::MarkRollbackTargetMissing {
            deploy: d0.clone(),
            digest: digest(1),
        }),
        vec![]
    );
    let err = when(
        &s,
        DeployRequest::rollback(DeployId::generate(), d0.clone()),
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("rollback_target_missing"), "{err}");

    // Malformed requests.
    let mut with_image = DeployRequest::rollback(DeployId::generate(), d0.clone());
    with_image.image = Some("ghcr.io/acme/app:v0".into());
    assert_eq!(when(&s, with_image).kind(), ErrorKind::Invalid);
    let mut not_rollback = DeployRequest::new(DeployId::generate(), DeployTrigger::Api);
    not_rollback.rollback_of = Some(d0);
    assert_eq!(when(&s, not_rollback).kind(), ErrorKind::Invalid);
    let no_target = DeployRequest::new(DeployId::generate(), DeployTrigger::Rollback);
    assert_eq!(when(&s, no_target).kind(), ErrorKind::Invalid);
}

#[test]
fn image_overrides_must_stay_in_the_services_repository() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let ok = DeployRequest::with_image(
        DeployId::generate(),
        DeployTrigger::DeployHook,
        "ghcr.io/acme/app:v2",
    );
    let events = s.run(Command::RequestDeploy(ok));
    assert!(matches!(&events[0], Event::DeployCreated(c) if c.image == "ghcr.io/acme/app:v2"));
    for bad in [
        "ghcr.io/acme/other:v2",
        "acme/app:v2",
        "ghcr.io/acme/app:bad tag",
    ] {
        let req = DeployRequest::with_image(DeployId::generate(), DeployTrigger::DeployHook, bad);
        assert_eq!(
            s.refused(Command::RequestDeploy(req)),
            ErrorKind::Invalid,
            "{bad}"
        );
    }
}

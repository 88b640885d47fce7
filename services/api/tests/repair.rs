//! The repairer run by every API replica: what a creation interrupted after
//! its name claim and credential attachment left is given back once the
//! grace period has passed, not before, by one append each even with two
//! replicas repairing at once; and the late `service_created` of such a
//! creation is refused for good.

use std::time::Duration;

use axum::http::StatusCode;
use berth_api::AppState;
use berth_domain::owner::{self, OwnerState};
use berth_domain::service::{self, CreateService};
use berth_domain::ErrorKind;
use berth_eventlog::{ExecuteError, NewEvent, Stamp};
use berth_ingress::IngressOptions;
use berth_schemas::events::{CredentialAttached, ServiceNameClaimed};
use berth_schemas::ids::{CredentialId, DeployId, ServiceId};
use berth_schemas::model::{Sealed, ServiceType};
use berth_schemas::{Actor, AggregateId, Envelope, Event};
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::support::App;

const GRACE: Duration = Duration::from_secs(2);

fn count(events: &[Envelope], pick: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| pick(&e.event)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_give_back_an_interrupted_creation_once_after_the_grace() {
    let opts = IngressOptions {
        repair_grace: GRACE,
        ..IngressOptions::default()
    };
    let every = opts.repair_every();
    let app = App::start_with(false, opts.clone()).await;
    // A second API replica on the same log, with its own read model and repairer.
    let _other = AppState::start(
        app.store.clone(),
        app.key.clone(),
        opts,
        app.shutdown.clone(),
        &TaskTracker::new(),
    )
    .await
    .unwrap();
    let alice = app.owner().await;
    let (s, c) = app
        .post(
            "/v1/registrycredentials",
            &alice,
            json!({"name": "ci", "registry": "GENERIC", "host": "registry.example.com", "username": "ci", "authToken": "tok"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let cred: CredentialId = c["id"].as_str().unwrap().parse().unwrap();

    // What a creation that died after its first two steps leaves.
    let svc = ServiceId::generate();
    let owner_id = AggregateId::Owner(alice.id.clone());
    let cred_id = AggregateId::Credential(cred.clone());
    let svc_id = AggregateId::Service(svc.clone());
    let test = Actor::system("test");
    let claim = ServiceNameClaimed {
        name: "web".into(),
        service: svc.clone(),
    };
    let at = app.store.load(&owner_id).await.unwrap().version;
    app.store
        .append(
            &owner_id,
            at,
            vec![NewEvent::new(claim, test.clone())],
            "test-claim",
        )
        .await
        .unwrap();
    let attach = CredentialAttached {
        service: svc.clone(),
    };
    let at = app.store.load(&cred_id).await.unwrap().version;
    app.store
        .append(
            &cred_id,
            at,
            vec![NewEvent::new(attach, test.clone())],
            "test-attach",
        )
        .await
        .unwrap();

    // Within the grace period it may be a creation in flight: untouched.
    tokio::time::sleep(GRACE / 4).await;
    let held: OwnerState = app
        .events_of(&owner_id)
        .await
        .iter()
        .fold(OwnerState::default(), owner::fold);
    assert_eq!(held.service_named("web"), Some(&svc));
    assert!(app.events_of(&svc_id).await.is_empty());

    // Then given back, by both replicas, once.
    let t0 = std::time::Instant::now();
    loop {
        let (s, v) = app
            .delete(&format!("/v1/registrycredentials/{cred}"), &alice)
            .await;
        if s == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still attached: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = std::time::Instant::now();
    loop {
        let state: OwnerState = app
            .events_of(&owner_id)
            .await
            .iter()
            .fold(OwnerState::default(), owner::fold);
        if state.service_named("web").is_none() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "name still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both replicas had time for several passes.
    tokio::time::sleep(every * 3).await;
    let on_service = app.events_of(&svc_id).await;
    assert_eq!(
        count(&on_service, |e| matches!(
            e,
            Event::ServiceCreationAbandoned(_)
        )),
        1,
        "{on_service:?}"
    );
    assert_eq!(on_service.len(), 1, "{on_service:?}");
    let on_owner = app.events_of(&owner_id).await;
    assert_eq!(
        count(&on_owner, |e| matches!(e, Event::ServiceNameReleased(_))),
        1,
        "{on_owner:?}"
    );
    let on_cred = app.events_of(&cred_id).await;
    assert_eq!(
        count(&on_cred, |e| matches!(e, Event::CredentialDetached(_))),
        1,
        "{on_cred:?}"
    );
    for e in on_owner.iter().chain(&on_cred).chain(&on_service) {
        if matches!(
            e.event,
            Event::ServiceNameReleased(_)
                | Event::CredentialDetached(_)
                | Event::ServiceCreationAbandoned(_)
        ) {
            assert_eq!(e.actor, Actor::system("repair"), "{e:?}");
        }
    }

    // The creation's late last step can never land now.
    let late = CreateService::new(
        alice.id.clone(),
        "web",
        ServiceType::BackgroundWorker,
        "docker.io/library/alpine:latest",
        Sealed {
            kid: "k".into(),
            ciphertext: "x".into(),
        },
        DeployId::generate(),
    );
    let refused = app
        .store
        .execute::<service::Service>(
            &svc_id,
            "test-late-create",
            &Stamp::new(test.clone()),
            service::Command::Create(Box::new(late)),
        )
        .await;
    match refused {
        Err(ExecuteError::Rejected(e)) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        other => panic!("late create not refused: {:?}", other.map(|e| e.appended)),
    }
}

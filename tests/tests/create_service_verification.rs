//! Service creation verifies image access through the resolver before it
//! appends anything (SPEC §4): every inaccessible image is refused with
//! SPEC §9's reason and the event stream's last sequence does not move.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_ingress::{IngressError, NewService};
use berth_schemas::ids::CredentialId;
use berth_schemas::model::{DeployStatus, DeployTrigger, PullFailureReason, ServiceType};
use berth_schemas::AggregateId;
use berth_tests::image::{build_image, small_image, ImageOptions, Layer, Platform};
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::resolver::{fast_options, App};
use berth_tests::NatsVersion;

fn service(name: &str, image: String, cred: Option<&CredentialId>) -> NewService {
    let mut s = NewService::new(name, ServiceType::BackgroundWorker, &image);
    s.credential = cred.cloned();
    s
}

async fn inaccessible_images_are_refused_and_append_nothing(version: NatsVersion) {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "ci".into(),
        pass: "right".into(),
    })
    .await
    .unwrap();
    let amd = small_image("amd64").unwrap();
    let arm = small_image("arm64").unwrap();
    reg.push_image("team/app", "v1", &amd).await.unwrap();
    reg.push_image("team/arm", "v1", &arm).await.unwrap();
    reg.push_index(
        "team/armindex",
        "v1",
        &[(Platform::linux("arm64"), &arm)],
        false,
    )
    .await
    .unwrap();
    // Over the tests' 1 MB limit.
    let big = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::random(1_500_000).unwrap()],
    )
    .unwrap();
    reg.push_image("team/big", "v1", &big).await.unwrap();

    let app = App::start_with(version, Some(fast_options())).await;
    let alice = app.owner().await;
    let right = app.credential(&alice, &reg.host, "ci", "right").await;
    let wrong = app.credential(&alice, &reg.host, "ci", "wrong").await;
    // The right password, but made for another registry: never sent here.
    let elsewhere = app
        .credential(&alice, "registry.example.com", "ci", "right")
        .await;
    let h = &reg.host;

    let cases = [
        (
            "missing tag",
            format!("{h}/team/app:nope"),
            Some(&right),
            PullFailureReason::ImageNotFound,
        ),
        (
            "unknown repo",
            format!("{h}/team/never:v1"),
            Some(&right),
            PullFailureReason::ImageNotFound,
        ),
        (
            "wrong password",
            format!("{h}/team/app:v1"),
            Some(&wrong),
            PullFailureReason::Unauthorized,
        ),
        (
            "credential for another registry",
            format!("{h}/team/app:v1"),
            Some(&elsewhere),
            PullFailureReason::Unauthorized,
        ),
        (
            "no credential",
            format!("{h}/team/app:v1"),
            None,
            PullFailureReason::Unauthorized,
        ),
        (
            "arm64 only",
            format!("{h}/team/arm:v1"),
            Some(&right),
            PullFailureReason::UnsupportedPlatform,
        ),
        (
            "arm64-only index",
            format!("{h}/team/armindex:v1"),
            Some(&right),
            PullFailureReason::UnsupportedPlatform,
        ),
        (
            "too large",
            format!("{h}/team/big:v1"),
            Some(&right),
            PullFailureReason::ImageTooLarge,
        ),
    ];
    for (what, image, cred, reason) in cases {
        let before = app.last_seq().await;
        let err = app
            .ingress
            .create_service(&alice, service("svc", image.clone(), cred))
            .await
            .unwrap_err();
        match &err {
            IngressError::ImageInaccessible {
                image: got,
                reason: r,
                message,
            } => {
                assert_eq!(*r, reason, "{what}: {message}");
                assert_eq!(got, &image, "{what}");
                assert!(!message.is_empty());
            }
            other => panic!("{what}: expected ImageInaccessible, got {other:?}"),
        }
        assert_eq!(err.http_status(), 422, "{what}");
        assert_eq!(
            app.last_seq().await,
            before,
            "{what}: something was appended"
        );
    }

    // The same name then succeeds with an accessible image: the refusals
    // left no claim behind.
    let created = app
        .ingress
        .create_service(
            &alice,
            service("svc", format!("{h}/team/app:v1"), Some(&right)),
        )
        .await
        .unwrap();
    assert_eq!(created.verified.digest, amd.digest);
    assert_eq!(created.image, format!("{h}/team/app:v1"));
    let d = created.state.deploy(&created.deploy).unwrap();
    assert_eq!(d.trigger, DeployTrigger::ServiceCreated);
    assert_eq!(d.status, DeployStatus::UpdateInProgress);
    assert_eq!(d.credential.as_ref(), Some(&right));
}

#[tokio::test]
async fn inaccessible_images_are_refused_on_modern_nats() {
    inaccessible_images_are_refused_and_append_nothing(NatsVersion::Modern).await;
}

#[tokio::test]
async fn inaccessible_images_are_refused_on_legacy_nats() {
    inaccessible_images_are_refused_and_append_nothing(NatsVersion::Legacy).await;
}

#[tokio::test]
async fn invalid_commands_and_taken_names_are_refused_before_the_registry_is_asked() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("app", "v1", &img).await.unwrap();
    let app = App::start().await;
    let alice = app.owner().await;
    let image = format!("{}/app:v1", reg.host);
    let taken = app
        .ingress
        .create_service(&alice, service("taken", image.clone(), None))
        .await
        .unwrap();
    // The resolver appends the first deploy's digest on its own time: the
    // log is at rest only once that is in.
    app.await_deploy(&alice, &taken.id, &taken.deploy).await;

    let before = app.last_seq().await;
    let bad_image = app
        .ingress
        .create_service(&alice, service("x", format!("{}/App:v1", reg.host), None))
        .await
        .unwrap_err();
    assert_eq!(bad_image.http_status(), 400, "{bad_image}");
    let mut cron_without_schedule = service("cron", image.clone(), None);
    cron_without_schedule.service_type = ServiceType::CronJob;
    let e = app
        .ingress
        .create_service(&alice, cron_without_schedule)
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 400, "{e}");
    let e = app
        .ingress
        .create_service(&alice, service("taken", image.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 409, "{e}");
    let e = app
        .ingress
        .create_service(
            &alice,
            service("y", image.clone(), Some(&CredentialId::generate())),
        )
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 404, "{e}");
    assert_eq!(app.last_seq().await, before);

    // Short names are normalised as Docker does.
    let created = app
        .ingress
        .create_service(&alice, service("z", format!("{}/app", reg.host), None))
        .await;
    let e = created.unwrap_err();
    assert_eq!(
        e.pull_failure(),
        Some(PullFailureReason::ImageNotFound),
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!("{}/app:latest", reg.host)),
        "{e}"
    );
    let owner = app
        .events_of(&AggregateId::Owner(alice.owner.clone()))
        .await;
    assert_eq!(
        owner
            .iter()
            .filter(|e| e.event.type_name() == "service_name_claimed")
            .count(),
        1
    );
}

#[tokio::test]
async fn without_a_resolver_nothing_is_created_and_the_caller_may_retry() {
    let app = App::start_with(NatsVersion::Modern, None).await;
    let alice = app.owner().await;
    let before = app.last_seq().await;
    let e = app
        .ingress
        .create_service(&alice, service("svc", "127.0.0.1:1/app:v1".into(), None))
        .await
        .unwrap_err();
    assert!(matches!(e, IngressError::CheckUnavailable(_)), "{e:?}");
    assert_eq!(e.http_status(), 503);
    assert!(e.is_retryable());
    assert_eq!(app.last_seq().await, before);
}

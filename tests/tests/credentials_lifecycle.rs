//! Registry credentials through the application layer against a real
//! nats-server and docker-registry: add/list/show/rotate/remove, owner
//! scoping, and removal refused while a service uses the credential (409
//! naming the service), allowed once the service is deleted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_domain::DomainError;
use berth_ingress::{IngressError, NewService, Rotation};
use berth_runtime::Secret;
use berth_schemas::ids::CredentialId;
use berth_schemas::model::{RegistryKind, ServiceType};
use berth_schemas::AggregateId;
use berth_tests::resolver::{basic, registry_with_app, App};

#[tokio::test]
async fn credentials_are_listed_shown_rotated_and_owner_scoped() {
    let app = App::start().await;
    let alice = app.owner().await;
    let bob = app.owner().await;

    let a = app
        .ingress
        .add_credential(
            &alice,
            berth_ingress::NewCredential {
                name: "ci bot".into(),
                registry: RegistryKind::Github,
                host: None,
                username: "octo".into(),
                token: Secret::new("ghp_lifecycleToken"),
            },
        )
        .await
        .unwrap();
    assert_eq!(a.name, "ci bot");
    assert_eq!(a.registry, RegistryKind::Github);
    assert!(a.updated_at.is_some());
    let b = app
        .credential(&bob, "registry.example.com", "bob", "bobs-token")
        .await;

    // Lists are per owner and read-your-writes.
    let listed = app.ingress.list_credentials(&alice).await.unwrap();
    assert_eq!(listed, vec![a.clone()]);
    let bobs = app.ingress.list_credentials(&bob).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, b);
    assert_eq!(bobs[0].host.as_deref(), Some("registry.example.com"));
    assert_eq!(app.ingress.show_credential(&alice, &a.id).await.unwrap(), a);

    // The API shape: id, name, registry, username, updatedAt (no token).
    let json = serde_json::to_value(&listed[0]).unwrap();
    let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["id", "name", "registry", "updatedAt", "username"]);
    assert_eq!(json["registry"], "GITHUB");

    // Another owner's credential does not exist for bob, whatever he does.
    for err in [
        app.ingress.show_credential(&bob, &a.id).await.unwrap_err(),
        app.ingress
            .rotate_credential(
                &bob,
                &a.id,
                Rotation {
                    token: Secret::new("stolen"),
                    username: None,
                    name: None,
                },
            )
            .await
            .unwrap_err(),
        app.ingress
            .remove_credential(&bob, &a.id)
            .await
            .unwrap_err(),
        app.ingress
            .show_credential(&alice, &CredentialId::generate())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.http_status(), 404, "{err}");
    }

    // Rotation: new token and username, later updatedAt; list follows.
    let before = app
        .events_of(&AggregateId::Credential(a.id.clone()))
        .await
        .len();
    let rotated = app
        .ingress
        .rotate_credential(
            &alice,
            &a.id,
            Rotation {
                token: Secret::new("ghp_rotatedToken"),
                username: Some("octo2".into()),
                name: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(rotated.username, "octo2");
    assert_eq!(rotated.name, "ci bot");
    assert!(rotated.updated_at >= a.updated_at);
    let events = app.events_of(&AggregateId::Credential(a.id.clone())).await;
    assert_eq!(events.len(), before + 1);
    assert_eq!(
        events.last().unwrap().event.type_name(),
        "credential_rotated"
    );
    assert_eq!(
        app.ingress.list_credentials(&alice).await.unwrap(),
        vec![rotated]
    );

    // Invalid input is a 400 and appends nothing.
    let seq = app.last_seq().await;
    let err = app
        .ingress
        .add_credential(
            &alice,
            berth_ingress::NewCredential {
                name: "no host".into(),
                registry: RegistryKind::Generic,
                host: None,
                username: "u".into(),
                token: Secret::new("t"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400, "{err}");
    assert_eq!(app.last_seq().await, seq);

    // Removal of an unused credential; it is gone for everyone.
    app.ingress.remove_credential(&alice, &a.id).await.unwrap();
    assert!(app
        .ingress
        .list_credentials(&alice)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        app.ingress
            .show_credential(&alice, &a.id)
            .await
            .unwrap_err()
            .http_status(),
        404
    );
    assert_eq!(app.ingress.list_credentials(&bob).await.unwrap().len(), 1);
}

#[tokio::test]
async fn removal_is_refused_while_in_use_and_allowed_after_the_service_is_deleted() {
    let (reg, _) = registry_with_app(basic("ci", "right-password")).await;

    let app = App::start().await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let cred = app
        .credential(&alice, &reg.host, "ci", "right-password")
        .await;

    let mut new = NewService::new(
        "api",
        ServiceType::WebService,
        &format!("{}/team/app:v1", reg.host),
    );
    new.credential = Some(cred.clone());
    let created = app
        .ingress
        .create_service(&alice, new.clone())
        .await
        .unwrap();
    // The resolver appends the first deploy's digest on its own time: the
    // log is at rest only once that is in.
    app.await_deploy(&alice, &created.id, &created.deploy).await;

    // Bob cannot attach alice's credential: not found, nothing appended.
    let seq = app.last_seq().await;
    let mut stolen = new.clone();
    stolen.name = "bobs".into();
    let err = app.ingress.create_service(&bob, stolen).await.unwrap_err();
    assert_eq!(err.http_status(), 404, "{err}");
    assert_eq!(app.last_seq().await, seq);
    // Nor delete or deploy alice's service.
    let err = app
        .ingress
        .delete_service(&bob, &created.id)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 404, "{err}");
    let err = app
        .ingress
        .request_deploy(&bob, &created.id, None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 404, "{err}");
    assert_eq!(app.last_seq().await, seq);

    // In use: 409 naming the service; nothing appended.
    let err = app
        .ingress
        .remove_credential(&alice, &cred)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 409, "{err}");
    match &err {
        IngressError::Rejected(DomainError::CredentialInUse { services }) => {
            assert_eq!(services, &vec![created.id.clone()]);
        }
        other => panic!("expected CredentialInUse, got {other:?}"),
    }
    assert!(err.to_string().contains(created.id.as_str()), "{err}");
    assert_eq!(app.last_seq().await, seq);

    // Delete the service: name released, credential detached, removal allowed.
    app.ingress
        .delete_service(&alice, &created.id)
        .await
        .unwrap();
    app.ingress.remove_credential(&alice, &cred).await.unwrap();
    let types: Vec<_> = app
        .events_of(&AggregateId::Credential(cred.clone()))
        .await
        .iter()
        .map(|e| e.event.type_name())
        .collect();
    assert_eq!(
        types,
        [
            "credential_created",
            "credential_attached",
            "credential_detached",
            "credential_removed"
        ]
    );
    // The name is free again.
    let again = app
        .ingress
        .create_service(
            &alice,
            NewService::new(
                "api",
                ServiceType::WebService,
                &format!("{}/team/app:v1", reg.host),
            ),
        )
        .await;
    // Without a credential the htpasswd registry refuses: the name check
    // passed, the image check is what failed.
    assert_eq!(
        again.unwrap_err().pull_failure(),
        Some(berth_schemas::model::PullFailureReason::Unauthorized)
    );
}

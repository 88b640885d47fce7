//! Registry credential routes, and owner isolation on every route: another
//! owner's key sees nothing and changes nothing.

use axum::http::{Method, StatusCode};
use berth_schemas::ids::{CredentialId, ServiceId};
use berth_schemas::AggregateId;
use serde_json::{json, Value};

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_routes() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let host = app.registry.as_ref().unwrap().host.clone();
    let (s, v) = app
        .post(
            "/v1/registrycredentials",
            &alice,
            json!({"name": "ci", "registry": "GENERIC"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"].as_array().unwrap().len(), 2, "{v}");
    let (s, v) = app
        .post(
            "/v1/registrycredentials",
            &alice,
            json!({"name": "ci", "registry": "QUAY", "username": "u", "authToken": "t"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, c) = app
        .post("/v1/registrycredentials", &alice,
              json!({"name": "ci", "registry": "GENERIC", "host": host, "username": "ci", "authToken": "tok-SECRET-1"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert!(!c.to_string().contains("tok-SECRET-1"));
    let id = c["id"].as_str().unwrap().to_owned();
    let (s, list) = app.get("/v1/registrycredentials", &alice).await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, v) = app
        .patch(
            &format!("/v1/registrycredentials/{id}"),
            &alice,
            json!({"authToken": "tok-SECRET-2", "username": "ci2"}),
        )
        .await;
    assert_eq!(
        (s, v["username"].as_str()),
        (StatusCode::OK, Some("ci2")),
        "{v}"
    );
    assert!(!v.to_string().contains("tok-SECRET-2"));
    // In use → 409 naming the service; after the service is gone → 204.
    let (s, v) = app
        .post("/v1/services", &alice,
              json!({"type": "background_worker", "name": "w", "image": {"imagePath": app.image("v1"), "registryCredentialId": id}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let svc = v["service"]["id"].as_str().unwrap().to_owned();
    let (s, v) = app
        .delete(&format!("/v1/registrycredentials/{id}"), &alice)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains(&svc), "{v}");
    let (s, _) = app.delete(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .delete(&format!("/v1/registrycredentials/{id}"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .get(&format!("/v1/registrycredentials/{id}"), &alice)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The token never reached the log in clear.
    let log = format!("{:?}", app.envelopes().await);
    assert!(!log.contains("tok-SECRET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_never_sees_another_owners_resources() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, hook) = app.service(&alice, "mine").await;
    let (_, c) = app
        .post(
            "/v1/registrycredentials",
            &alice,
            json!({"name": "ci", "registry": "DOCKER", "username": "ci", "authToken": "t"}),
        )
        .await;
    let cred = c["id"].as_str().unwrap().to_owned();
    let dep = app.latest_deploy(&alice, &svc).await;
    // Let the resolver finish, so the log of the service is at rest.
    app.wait_resolved(&alice, &svc, &dep).await;
    // Bob's calls name Alice's service, owner and credential: none of the
    // three may change.
    let alices = [
        AggregateId::Service(svc.parse::<ServiceId>().unwrap()),
        AggregateId::Owner(alice.id.clone()),
        AggregateId::Credential(cred.parse::<CredentialId>().unwrap()),
    ];
    let mut before = Vec::new();
    for id in &alices {
        before.push(app.events_of(id).await.len());
    }

    let (s, list) = app.get("/v1/services", &bob).await;
    assert_eq!((s, list), (StatusCode::OK, json!([])));
    let (s, list) = app.get("/v1/registrycredentials", &bob).await;
    assert_eq!((s, list), (StatusCode::OK, json!([])));
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/services/{svc}"), None),
        (
            Method::PATCH,
            format!("/v1/services/{svc}"),
            Some(json!({"serviceDetails": {"healthCheckPath": "/x"}})),
        ),
        (Method::DELETE, format!("/v1/services/{svc}"), None),
        (Method::GET, format!("/v1/services/{svc}/deploys"), None),
        (Method::GET, format!("/v1/services/{svc}/events"), None),
        (
            Method::POST,
            format!("/v1/services/{svc}/deploys"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/services/{svc}/deploys/{dep}"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/deploys/{dep}/cancel"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/rollback"),
            Some(json!({"deployId": dep})),
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/scale"),
            Some(json!({"numInstances": 5})),
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/restart"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/suspend"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/services/{svc}/resume"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/services/{svc}/deploy-hook"), None),
        (
            Method::POST,
            format!("/v1/services/{svc}/deploy-hook/regenerate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/cron-jobs/{svc}/runs"),
            Some(json!({})),
        ),
        (Method::DELETE, format!("/v1/cron-jobs/{svc}/runs"), None),
        (
            Method::GET,
            format!("/v1/notification-settings/overrides/services/{svc}"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/notification-settings/overrides/services/{svc}"),
            Some(json!({"notifyOnFail": "all"})),
        ),
        (
            Method::GET,
            format!("/v1/notification-settings/owners/{}", alice.id),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/notification-settings/owners/{}", alice.id),
            Some(json!({"notificationsToSend": "none"})),
        ),
        (Method::GET, format!("/v1/registrycredentials/{cred}"), None),
        (
            Method::PATCH,
            format!("/v1/registrycredentials/{cred}"),
            Some(json!({"authToken": "x"})),
        ),
        (
            Method::DELETE,
            format!("/v1/registrycredentials/{cred}"),
            None,
        ),
    ];
    for (m, path, body) in calls {
        let (s, v) = app.call(m.clone(), &path, Some(&bob.key), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {v}");
        assert!(!v.to_string().contains("mine"), "{m} {path} leaked: {v}");
    }
    // Bob creating with Alice's credential: 404, nothing created.
    let (s, _) = app
        .post("/v1/services", &bob,
              json!({"type": "background_worker", "name": "x", "image": {"imagePath": app.image("v1"), "registryCredentialId": cred}}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let mut after = Vec::new();
    for id in &alices {
        after.push(app.events_of(id).await.len());
    }
    assert_eq!(
        before, after,
        "another owner changed Alice's service, owner or credential"
    );
    // Alice still sees everything; her hook still works.
    let (s, _) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK);
}

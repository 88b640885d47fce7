//! Registry credential routes, and owner isolation on every route of the
//! route table: another owner's key sees nothing and changes nothing.

use axum::http::{Method, StatusCode};
use berth_api::openapi::{Route, ROUTES};
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
    assert_eq!(s, StatusCode::OK, "{c}");
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

/// The body Bob's call carries, so that it gets past validation to the
/// lookup of Alice's resource. A body a route refuses is a 400, which fails
/// the test rather than skipping the route.
fn body_for(r: &Route, dep: &str) -> Option<Value> {
    match (r.method, r.path) {
        ("patch", "/v1/services/{serviceId}") => {
            Some(json!({"serviceDetails": {"healthCheckPath": "/x"}}))
        }
        ("post", "/v1/services/{serviceId}/rollback") => Some(json!({"deployId": dep})),
        ("post", "/v1/services/{serviceId}/scale") => Some(json!({"numInstances": 5})),
        ("put", "/v1/services/{serviceId}/autoscaling") => Some(json!({
            "enabled": true, "min": 1, "max": 3,
            "criteria": {"cpu": {"enabled": true, "percentage": 60},
                         "memory": {"enabled": false, "percentage": 80}}})),
        ("post", "/v1/services/{serviceId}/jobs") => Some(json!({"startCommand": "true"})),
        ("post", "/v1/services/{serviceId}/exec") => Some(json!({"command": ["cat", "/etc/mine"]})),
        ("put" | "patch", "/v1/services/{serviceId}/env-vars") => {
            Some(json!([{"key": "A", "value": "b"}]))
        }
        ("put", "/v1/services/{serviceId}/env-vars/{envVarKey}") => Some(json!({"value": "b"})),
        ("put", "/v1/services/{serviceId}/secret-files") => {
            Some(json!([{"name": "a", "content": "b"}]))
        }
        ("put", "/v1/services/{serviceId}/secret-files/{secretFileName}") => {
            Some(json!({"content": "b"}))
        }
        ("post", "/v1/services/{serviceId}/custom-domains") => {
            Some(json!({"name": "bob.example.test"}))
        }
        ("patch", "/v1/notification-settings/overrides/services/{serviceId}") => {
            Some(json!({"notifyOnFail": "all"}))
        }
        ("patch", "/v1/notification-settings/owners/{ownerId}") => {
            Some(json!({"notificationsToSend": "none"}))
        }
        ("patch", "/v1/registrycredentials/{registryCredentialId}") => {
            Some(json!({"authToken": "x"}))
        }
        ("patch", "/v1/disks/{diskId}") => Some(json!({"sizeGB": 50})),
        ("post" | "patch", _) => Some(json!({})),
        _ => None,
    }
}

/// The query of a listing that must name a resource (Render's `/v1/logs`,
/// its values and its live subscription), naming Alice's service; `None`
/// for a listing that names nothing.
fn names_a_resource(path: &str, svc: &str) -> Option<String> {
    match path {
        "/v1/logs" | "/v1/logs/subscribe" => Some(format!("resource={svc}")),
        "/v1/logs/values" => Some(format!("resource={svc}&label=instance")),
        _ => None,
    }
}

/// Every route of the table (so a new route cannot skip this), called by
/// Bob naming Alice's service, deploy, credential, API key, integration,
/// disk and owner: each is 404 and changes nothing; Bob's lists show none of
/// Alice's; a create naming Alice as the owner is 404.
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
    let (s, keys) = app.get("/v1/api-keys", &alice).await;
    assert_eq!(s, StatusCode::OK, "{keys}");
    let api_key = keys[0]["id"].as_str().unwrap().to_owned();
    let (s, i) = app
        .post("/v1/integrations", &alice, json!({"name": "ci"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{i}");
    let integration = i["id"].as_str().unwrap().to_owned();
    let (s, h) = app
        .post(
            "/v1/webhooks",
            &alice,
            json!({"ownerId": alice.id.to_string(), "name": "mine", "url": "https://hooks.example.test/mine",
                   "enabled": true, "eventFilter": []}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let webhook = h["id"].as_str().unwrap().to_owned();
    let dep = app.latest_deploy(&alice, &svc).await;
    // Let the resolver finish, so the log of the service is at rest; then
    // take the deploy live as the scheduler would, so Alice can run a job.
    app.go_live(&alice, &svc).await;
    let (s, j) = app
        .post(
            &format!("/v1/services/{svc}/jobs"),
            &alice,
            json!({"startCommand": "true"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let job = j["id"].as_str().unwrap().to_owned();
    let owner = alice.id.to_string();
    let (s, events) = app.get(&format!("/v1/services/{svc}/events"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{events}");
    let event = events[0]["event"]["id"].as_str().unwrap().to_owned();
    let (s, v) = app.get(&format!("/v1/events/{event}"), &alice).await;
    assert_eq!(s, StatusCode::OK, "Alice finds her own event: {v}");
    // Her service has written a line, which Alice reads.
    app.log_line(
        &svc,
        &berth_schemas::ids::InstanceId::generate(),
        berth_schemas::logs::Stream::Stdout,
        "mine: a line only Alice reads",
    )
    .await;
    let (s, v) = app.get(&format!("/v1/logs?resource={svc}"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["logs"][0]["message"], "mine: a line only Alice reads");
    // A service of hers with a disk.
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "background_worker", "name": "mine-db", "image": {"imagePath": app.image("v1")},
                   "serviceDetails": {"disk": {"name": "mine", "mountPath": "/data"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let db = v["service"]["id"].as_str().unwrap().to_owned();
    let disk = v["service"]["serviceDetails"]["disk"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its log at rest too before Bob's calls are counted against it.
    app.go_live(&alice, &db).await;
    let alices_ids = [
        &svc,
        &dep,
        &cred,
        &api_key,
        &integration,
        &owner,
        &event,
        &job,
        &disk,
        &webhook,
    ];
    // Bob's calls name Alice's service, owner (her keys and integrations)
    // and credential: none of the three may change.
    let alices = [
        AggregateId::Service(svc.parse::<ServiceId>().unwrap()),
        AggregateId::Service(db.parse::<ServiceId>().unwrap()),
        AggregateId::Owner(alice.id.clone()),
        AggregateId::Credential(cred.parse::<CredentialId>().unwrap()),
    ];
    let mut before = Vec::new();
    for id in &alices {
        before.push(app.events_of(id).await.len());
    }

    let mut named = 0;
    for r in ROUTES {
        let method: Method = r.method.to_uppercase().parse().unwrap();
        if r.path.starts_with("/v1/metrics/") {
            // A series names its service in the query.
            let path = format!("{}?resource={svc}", r.path);
            let (s, v) = app.call(method, &path, Some(&bob.key), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "GET {path}: {v}");
            named += 1;
            continue;
        }
        if !r.path.contains('{') {
            // A collection: Bob's list holds nothing of Alice's, and a
            // create naming Alice as its owner finds no such owner. A
            // create without an owner field names nothing of hers. A
            // listing that must name a resource names hers: not found.
            if let Some(q) = names_a_resource(r.path, &svc) {
                let path = format!("{}?{q}", r.path);
                let (s, v) = app.call(method, &path, Some(&bob.key), None).await;
                assert_eq!(s, StatusCode::NOT_FOUND, "GET {path}: {v}");
                assert!(!v.to_string().contains("mine"), "GET {path} leaked: {v}");
                named += 1;
            } else if method == Method::GET {
                let (s, v) = app.call(method, r.path, Some(&bob.key), None).await;
                assert_eq!(s, StatusCode::OK, "GET {}: {v}", r.path);
                for id in alices_ids {
                    assert!(
                        !v.to_string().contains(id.as_str()),
                        "GET {} leaked {id}: {v}",
                        r.path
                    );
                }
            } else if r.body_fields().iter().any(|f| f == "ownerId") {
                let (s, v) = app
                    .call(
                        method,
                        r.path,
                        Some(&bob.key),
                        Some(json!({"ownerId": owner})),
                    )
                    .await;
                assert_eq!(
                    s,
                    StatusCode::NOT_FOUND,
                    "{} {} as Alice: {v}",
                    r.method,
                    r.path
                );
            }
            continue;
        }
        let path = r
            .path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    None => seg,
                    Some("serviceId" | "resourceId") => &svc,
                    Some("deployId") => &dep,
                    Some("jobId") => &job,
                    Some("registryCredentialId") => &cred,
                    Some("apiKeyId") => &api_key,
                    Some("integrationId") => &integration,
                    Some("ownerId") => &owner,
                    Some("eventId") => &event,
                    Some("diskId") => &disk,
                    Some("webhookId") => &webhook,
                    // Whether Alice's service has it or not, it is not Bob's.
                    Some("envVarKey") => "MINE_KEY",
                    Some("secretFileName") => "mine.json",
                    Some("customDomainIdOrName") => "mine.example.test",
                    Some(other) => panic!(
                        "{}: Alice has no {{{other}}} for Bob to name; create one above",
                        r.path
                    ),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let (s, v) = app
            .call(method.clone(), &path, Some(&bob.key), body_for(r, &dep))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert!(
            !v.to_string().contains("mine"),
            "{method} {path} leaked: {v}"
        );
        named += 1;
    }
    assert!(named > 0);
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
    // Alice still sees everything; her key, integration and hook still work.
    let (s, _) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    let (s, list) = app.get("/v1/integrations", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["id"], integration.as_str(), "{list}");
    assert_eq!(list[0]["revoked"], false, "{list}");
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK);
}

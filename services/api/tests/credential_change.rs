//! Changing a service's registry credential with PATCH: the new one must be
//! the caller's, is attached before the service names it (so it cannot be
//! removed while in use), the old one is released, and "" removes it.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_swaps_and_removes_the_credential() {
    let app = App::start(true).await;
    let (alice, bob) = (app.owner().await, app.owner().await);
    let host = app.registry.as_ref().unwrap().host.clone();
    let cred = |name: &'static str| json!({"name": name, "registry": "GENERIC", "host": host, "username": "ci", "authToken": "tok"});
    let mut ids = Vec::new();
    for (owner, name) in [(&alice, "a"), (&alice, "b"), (&bob, "bobs")] {
        let (s, c) = app.post("/v1/registrycredentials", owner, cred(name)).await;
        assert_eq!(s, StatusCode::OK, "{c}");
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    let [a, b, bobs] = [&ids[0], &ids[1], &ids[2]];
    let (s, v) = app
        .post("/v1/services", &alice,
              json!({"type": "background_worker", "name": "w", "image": {"imagePath": app.image("v1"), "registryCredentialId": a}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let svc = v["service"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/services/{svc}");
    let credential_of = |v: &serde_json::Value| v["image"]["registryCredentialId"].clone();

    // Someone else's, unknown, malformed: refused, nothing changed.
    for (bad, want) in [
        (bobs.as_str(), StatusCode::NOT_FOUND),
        ("rgc-aaaaaaaaaaaaaaaaaaaa", StatusCode::NOT_FOUND),
        ("nope", StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = app
            .patch(
                &path,
                &alice,
                json!({"image": {"registryCredentialId": bad}}),
            )
            .await;
        assert_eq!(s, want, "{bad}: {v}");
    }
    let (_, v) = app.get(&path, &alice).await;
    assert_eq!(credential_of(&v), json!(a), "{v}");

    // a → b: b is in use now, a is free.
    let (s, v) = app
        .patch(&path, &alice, json!({"image": {"registryCredentialId": b}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = app.get(&path, &alice).await;
    assert_eq!(credential_of(&v), json!(b), "{v}");
    let (s, v) = app
        .delete(&format!("/v1/registrycredentials/{b}"), &alice)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "b is in use: {v}");
    let (s, v) = app
        .delete(&format!("/v1/registrycredentials/{a}"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "a was released: {v}");

    // "" removes it (the test image is public); b is then free too.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"image": {"registryCredentialId": ""}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = app.get(&path, &alice).await;
    assert_eq!(credential_of(&v), json!(null), "{v}");
    let (s, v) = app
        .delete(&format!("/v1/registrycredentials/{b}"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "b was released: {v}");
}

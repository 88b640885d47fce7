//! Renaming a service with PATCH: the new name is claimed on the owner
//! (409 when another service holds it, nothing changed), the old one is
//! released for reuse, and a rename in a request that fails on another
//! field (here an unknown credential) does not happen.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_claims_the_new_name_and_frees_the_old_one() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (a, _) = app.service(&alice, "alpha").await;
    let (_b, _) = app.service(&alice, "beta").await;
    let path = format!("/v1/services/{a}");

    // Taken by another service: 409, nothing appended to the owner (the
    // resolver keeps appending deploy facts to the services meanwhile).
    let owner = berth_schemas::AggregateId::Owner(alice.id.clone());
    let before = app.events_of(&owner).await.len();
    let (s, v) = app.patch(&path, &alice, json!({"name": "beta"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        app.events_of(&owner).await.len(),
        before,
        "a refused rename appended"
    );
    // A name the rules refuse: 400, nothing appended.
    let (s, v) = app.patch(&path, &alice, json!({"name": "Bad Name"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        app.events_of(&owner).await.len(),
        before,
        "a refused rename appended"
    );
    let (_, shown) = app.get(&path, &alice).await;
    assert_eq!(shown["name"], "alpha", "{shown}");

    let (s, v) = app.patch(&path, &alice, json!({"name": "gamma"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, shown) = app.get(&path, &alice).await;
    assert_eq!(shown["name"], "gamma", "{shown}");
    // The old name is free again; the new one is taken.
    let (_c, _) = app.service(&alice, "alpha").await;
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "background_worker", "name": "gamma", "image": {"imagePath": app.image("v1")}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // An unknown credential in the same request: 404, name kept, and the
    // name it asked for is still free.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"name": "delta", "image": {"registryCredentialId": "rgc-aaaaaaaaaaaaaaaaaaaa"}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, shown) = app.get(&path, &alice).await;
    assert_eq!(shown["name"], "gamma", "{shown}");
    let (_d, _) = app.service(&alice, "delta").await;

    // Another owner may use any of these names: names are per owner.
    let bob = app.owner().await;
    let (_, _) = app.service(&bob, "gamma").await;
}

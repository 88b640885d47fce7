//! Render's workspace and user routes: the owner an API key acts for is
//! the one owner listed, shown, and answered as the user; another owner is
//! not found.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_owner_is_the_one_workspace_and_user() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let id = alice.id.to_string();
    let (s, v) = app.get("/v1/owners", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let me = json!({"id": id, "name": "test", "email": "", "type": "user"});
    assert_eq!(v, json!([{"owner": me, "cursor": id}]));
    // Its notification email is its email.
    let (s, _) = app
        .patch(
            &format!("/v1/notification-settings/owners/{id}"),
            &alice,
            json!({"email": "ops@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = app.get(&format!("/v1/owners/{id}"), &alice).await;
    assert_eq!(v["email"], "ops@example.com", "{v}");
    let (_, v) = app.get("/v1/users", &alice).await;
    assert_eq!(
        v,
        json!({"id": id, "email": "ops@example.com", "name": "test"})
    );
    // Filters filter; another owner is not found, nor listed.
    let (_, v) = app.get("/v1/owners?name=someone-else", &alice).await;
    assert_eq!(v, json!([]));
    let (_, v) = app.get("/v1/owners?email=ops@example.com", &alice).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (s, _) = app.get(&format!("/v1/owners/{id}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = app.get("/v1/owners", &bob).await;
    assert!(!v.to_string().contains(&id), "{v}");
}

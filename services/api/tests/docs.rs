//! The OpenAPI document: served at `/v1/openapi.json`, equal to the
//! committed `services/api/openapi.json` (run with
//! `BERTH_UPDATE_OPENAPI=1` to rewrite it), and every route it lists is
//! routed. Plus the first-start bootstrap of credentials.json.

use std::os::unix::fs::PermissionsExt;

use axum::http::{Method, StatusCode};

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_served_committed_and_complete() {
    let app = App::start(false).await;
    let (s, served) = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(served, berth_api::openapi::document());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("BERTH_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "services/api/openapi.json is stale: run BERTH_UPDATE_OPENAPI=1 cargo test -p berth-api --test integration openapi"
    );
    for (method, route, ..) in berth_api::openapi::ROUTES {
        let path = route
            .replace("{serviceId}", "srv-aaaaaaaaaaaaaaaaaaaa")
            .replace("{deployId}", "dep-aaaaaaaaaaaaaaaaaaaa")
            .replace("{registryCredentialId}", "rgc-aaaaaaaaaaaaaaaaaaaa")
            .replace("{apiKeyId}", "key-aaaaaaaaaaaaaaaaaaaa")
            .replace("{integrationId}", "itg-aaaaaaaaaaaaaaaaaaaa")
            .replace("{ownerId}", "usr-aaaaaaaaaaaaaaaaaaaa");
        let m: Method = method.to_uppercase().parse().unwrap();
        let (s, v) = app.call(m, &path, None, None).await;
        assert_ne!(
            s,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {route} not routed"
        );
        assert_ne!(
            v["message"], "route not found",
            "{method} {route} not routed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_the_store_alone() {
    let app = App::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api")
        .await
        .unwrap();
    assert!(b.created);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.path).unwrap()).unwrap();
    let (s, _) = app
        .call(Method::GET, "/v1/services", creds["apiKey"].as_str(), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_writes_credentials_that_work() {
    let app = App::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = berth_api::bootstrap(&app.state.ingress, &data, "http://127.0.0.1:7000")
        .await
        .unwrap();
    assert!(b.created);
    let mode = std::fs::metadata(&b.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.path).unwrap()).unwrap();
    assert_eq!(creds["apiUrl"], "http://127.0.0.1:7000");
    assert!(creds["ownerId"].as_str().unwrap().starts_with("usr-"));
    let key = creds["apiKey"].as_str().unwrap();
    let (s, v) = app.call(Method::GET, "/v1/services", Some(key), None).await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!([])));
    let (s, _) = app
        .call(
            Method::GET,
            &format!(
                "/v1/notification-settings/owners/{}",
                creds["ownerId"].as_str().unwrap()
            ),
            Some(key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // The second start keeps the file and creates nothing.
    let before = app.last_seq().await;
    let again = berth_api::bootstrap_store(&app.store, &app.key, &data, "http://x")
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.path, b.path);
    assert_eq!(app.last_seq().await, before);
    let still: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&b.path).unwrap()).unwrap();
    assert_eq!(still, creds);
}

//! The route table and the OpenAPI document made from it: served at
//! `/v1/openapi.json`, equal to the committed `services/api/openapi.json`
//! (run with `BERTH_UPDATE_OPENAPI=1` to rewrite it); every route the table
//! lists is routed with exactly its methods, and no code adds a route
//! outside the table (so nothing is served undocumented). The dashboard's
//! pages are a table of their own, held to the same rules and kept out of
//! the document. Plus the first-start bootstrap of credentials.json.

use std::os::unix::fs::PermissionsExt;

use axum::http::{Method, StatusCode};
use berth_schemas::ids::{
    ApiKeyId, CredentialId, DeployId, DiskId, IntegrationId, JobId, OwnerId, ServiceId, UserId,
};

use crate::support::App;

/// `template` with each `{parameter}` replaced by a well-formed id of its
/// kind; a parameter this does not know fails the test, so a new kind of
/// route cannot go unchecked.
fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                None => seg.to_owned(),
                Some("serviceId" | "resourceId") => ServiceId::generate().to_string(),
                Some("deployId") => DeployId::generate().to_string(),
                Some("jobId") => JobId::generate().to_string(),
                Some("registryCredentialId") => CredentialId::generate().to_string(),
                Some("apiKeyId") => ApiKeyId::generate().to_string(),
                Some("integrationId") => IntegrationId::generate().to_string(),
                Some("ownerId") => OwnerId::User(UserId::generate()).to_string(),
                Some("eventId") => "evt-aaaaaaaaaaaaaaaaaaaa".to_owned(),
                Some("diskId") => DiskId::generate().to_string(),
                Some("webhookId") => berth_schemas::ids::WebhookId::generate().to_string(),
                Some("envVarKey") => "SOME_KEY".to_owned(),
                Some("secretFileName") => "key.json".to_owned(),
                Some("customDomainIdOrName") => "www.example.test".to_owned(),
                Some(other) => panic!("{template}: no example for {{{other}}}"),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

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
    let routes = berth_api::openapi::ROUTES;
    // The document has an operation for each route of the table, and no
    // other.
    let documented: usize = served["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, routes.len());
    for r in routes {
        assert!(
            served["paths"][r.path][r.method].is_object(),
            "{} {} is not in the document",
            r.method,
            r.path
        );
    }
    // The document describes the JSON API only: no page of the dashboard.
    for p in berth_api::openapi::PAGES {
        assert!(
            !served["paths"].as_object().unwrap().contains_key(p.path),
            "the dashboard's {} is in the OpenAPI document",
            p.path
        );
    }
    // The router serves each path with the table's methods, and answers
    // any other method 405: a method added outside the table is caught.
    let table: Vec<(&str, &str)> = routes.iter().map(|r| (r.method, r.path)).collect();
    served_as_listed(&app, &table, "route table").await;
}

/// Each path of `table` (method, template) is routed with exactly the
/// methods it lists: another method is a 405, a listed one neither a 405
/// nor a "no such route" 404.
async fn served_as_listed(app: &App, table: &[(&str, &str)], which: &str) {
    let paths: std::collections::BTreeSet<&str> = table.iter().map(|(_, p)| *p).collect();
    for template in paths {
        let path = example_path(template);
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let listed = table
                .iter()
                .any(|(m, p)| *p == template && *m == method.as_str().to_lowercase());
            let (s, v) = app.call(method.clone(), &path, None, None).await;
            if listed {
                // A 404 of the API names what was not found; the route
                // itself is missing when it says "route" (or is a page).
                let missing = s == StatusCode::NOT_FOUND
                    && v["message"].as_str().is_none_or(|m| m == "route not found");
                assert!(
                    s != StatusCode::METHOD_NOT_ALLOWED && !missing,
                    "{method} {template} not routed: {s} {v}"
                );
            } else {
                assert_eq!(
                    s,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is served but not in the {which}: {v}"
                );
            }
        }
    }
}

/// Every page of the dashboard's table is served with exactly its methods
/// (any other method is a 405, as for the API's), and a path in neither
/// table is a 404: nothing is served that is not in a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_are_served_from_their_table() {
    let app = App::start(false).await;
    let pages: Vec<(&str, &str)> = berth_api::openapi::PAGES
        .iter()
        .map(|r| (r.method, r.path))
        .collect();
    served_as_listed(&app, &pages, "page table").await;
    for unknown in ["/nothing", "/services/srv-x/nothing", "/v1/nothing"] {
        let (s, _) = app.call(Method::GET, unknown, None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{unknown}");
    }
}

/// The router is built from the route table alone: no other code of the
/// crate registers a route (an axum router cannot list its routes, so this
/// is what keeps a route from being served undocumented).
#[test]
fn routes_are_added_only_from_the_table() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = vec![std::path::PathBuf::from(src)];
    let mut offenders = Vec::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") || p.ends_with("src/openapi.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for call in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            if text.contains(call) {
                offenders.push(format!("{}: {call}", p.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes added outside the table in openapi.rs: {offenders:?}"
    );
    // Inside openapi.rs, routes are added by the two tables' macros only.
    let table = std::fs::read_to_string(format!("{src}/openapi.rs")).unwrap();
    assert_eq!(
        table.matches(".route(").count(),
        2,
        "openapi.rs adds routes outside its ROUTES and PAGES tables"
    );
    for call in [".route_service(", ".nest(", ".nest_service(", ".merge("] {
        assert!(!table.contains(call), "openapi.rs: {call}");
    }
}

/// The credentials file at `path`, as JSON.
fn credentials(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Whether `key` is let in by the API.
async fn key_works(app: &App, key: Option<&str>) -> bool {
    let (s, _) = app.call(Method::GET, "/v1/services", key, None).await;
    s == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_the_store_alone() {
    let app = App::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let b = berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api")
        .await
        .unwrap();
    assert!(b.created);
    let creds = credentials(&b.path);
    assert!(key_works(&app, creds["apiKey"].as_str()).await);
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
    let creds = credentials(&b.path);
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
    // The second start keeps the owner and key and creates nothing; the
    // API's address it brings up to date.
    let before = app.last_seq().await;
    let again = berth_api::bootstrap_store(&app.store, &app.key, &data, "http://x")
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.path, b.path);
    assert_eq!(app.last_seq().await, before);
    let still = credentials(&b.path);
    assert_eq!(
        (&still["ownerId"], &still["apiKey"], &still["apiUrl"]),
        (
            &creds["ownerId"],
            &creds["apiKey"],
            &serde_json::json!("http://x")
        )
    );
    let mode = std::fs::metadata(&b.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "rewritten, still the operator's only");
}

/// A first start that died after its owner was appended (or whose answer
/// was lost) is finished by the next one with the same owner and key: no
/// second owner, and a key that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_died_midway_is_finished_with_the_same_owner_and_key() {
    let app = App::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let owner = OwnerId::User(UserId::generate());
    let key_id = ApiKeyId::generate();
    let secret = berth_ingress::owners::new_api_key();
    let pending = dir.path().join(berth_api::bootstrap::PENDING_FILE);
    std::fs::write(
        &pending,
        serde_json::to_vec(&serde_json::json!({
            "ownerId": owner.to_string(),
            "apiKeyId": key_id.to_string(),
            "apiKey": secret.expose(),
        }))
        .unwrap(),
    )
    .unwrap();
    // Its owner landed; then it died.
    app.state
        .ingress
        .ensure_owner(&owner, "admin")
        .await
        .unwrap();
    let before = app.last_seq().await;
    let b = berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api")
        .await
        .unwrap();
    assert!(b.created);
    assert_eq!(
        app.last_seq().await,
        before + 1,
        "only the key is appended: no second owner"
    );
    let creds = credentials(&b.path);
    assert_eq!(
        (&creds["ownerId"], &creds["apiKeyId"], &creds["apiKey"]),
        (
            &serde_json::json!(owner.to_string()),
            &serde_json::json!(key_id.to_string()),
            &serde_json::json!(secret.expose())
        )
    );
    assert!(key_works(&app, Some(secret.expose())).await);
    assert!(!pending.exists(), "the pending choice is gone once written");
    // Finishing again (a start that died after writing, before removing
    // the pending file) appends nothing.
    let again = berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api")
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(app.last_seq().await, before + 1);
}

/// Two first starts at once make one owner between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_starts_at_once_make_one_owner() {
    let app = App::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let before = app.last_seq().await;
    let (a, b) = tokio::join!(
        berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api"),
        berth_api::bootstrap_store(&app.store, &app.key, dir.path(), "http://api"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        [a.created, b.created].iter().filter(|c| **c).count(),
        1,
        "one of them made it"
    );
    assert_eq!(app.last_seq().await, before + 2, "one owner, one key");
    let creds = credentials(&a.path);
    assert!(key_works(&app, creds["apiKey"].as_str()).await);
}

//! Registry credentials in Render's contract: create answers 200, every
//! answer is Render's `RegistryCredential` (id, name, registry, username,
//! updatedAt, all present, registry one of Render's values or `GENERIC`)
//! with berth's `host` added, the list is a plain array honouring Render's
//! filters and accepting the ones it cannot apply, and the update takes
//! Render's whole body. The token is never in an answer.

use axum::http::StatusCode;
use berth_schemas::ids::OwnerId;
use berth_schemas::AggregateId;
use serde_json::{json, Value};

use crate::support::{App, Owner};

const TOKEN: &str = "tok-NEVER-SHOWN";

/// Fails unless `v` is a `RegistryCredential` as Render's SDKs parse it.
fn assert_render_credential(v: &Value) {
    for f in ["id", "name", "registry", "username", "updatedAt"] {
        assert!(v[f].is_string(), "{f} missing or not a string: {v}");
    }
    assert!(
        [
            "DOCKER",
            "GITHUB",
            "GITLAB",
            "GOOGLE_ARTIFACT",
            "AWS_ECR",
            "GENERIC"
        ]
        .contains(&v["registry"].as_str().unwrap()),
        "{v}"
    );
    chrono::DateTime::parse_from_rfc3339(v["updatedAt"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("updatedAt is not a time ({e}): {v}"));
    assert!(v["id"].as_str().unwrap().starts_with("rgc-"), "{v}");
    assert!(!v.to_string().contains(TOKEN), "token shown: {v}");
    assert!(
        v.get("authToken").is_none() && v.get("token").is_none(),
        "{v}"
    );
}

async fn create(app: &App, o: &Owner, body: Value) -> Value {
    let (s, c) = app.post("/v1/registrycredentials", o, body).await;
    assert_eq!(s, StatusCode::OK, "create answers 200, as Render's: {c}");
    assert_render_credential(&c);
    c
}

async fn list(app: &App, o: &Owner, query: &str) -> Vec<Value> {
    let (s, v) = app.get(&format!("/v1/registrycredentials{query}"), o).await;
    assert_eq!(s, StatusCode::OK, "{query}: {v}");
    let items = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    items.iter().for_each(assert_render_credential);
    items.clone()
}

fn names(items: &[Value]) -> Vec<&str> {
    items.iter().map(|c| c["name"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_answer_in_renders_shape() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    // Render's create body, owner included.
    let docker = create(
        &app,
        &alice,
        json!({"registry": "DOCKER", "name": "hub", "username": "me",
               "authToken": TOKEN, "ownerId": alice.id.to_string()}),
    )
    .await;
    assert_eq!(
        (&docker["registry"], &docker["name"], &docker["username"]),
        (&json!("DOCKER"), &json!("hub"), &json!("me")),
        "{docker}"
    );
    assert!(docker.get("host").is_none(), "{docker}");
    // berth's GENERIC keeps its host as an extra field.
    let generic = create(
        &app,
        &alice,
        json!({"registry": "GENERIC", "host": "registry.example.com:5000",
               "name": "own", "username": "ci", "authToken": TOKEN}),
    )
    .await;
    assert_eq!(generic["host"], "registry.example.com:5000", "{generic}");

    let id = docker["id"].as_str().unwrap();
    let path = format!("/v1/registrycredentials/{id}");
    let (s, shown) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{shown}");
    assert_render_credential(&shown);
    assert_eq!(shown, docker);
    // A plain array of credentials, not `[{cursor, …}]`.
    let all = list(&app, &alice, "").await;
    assert_eq!(names(&all), ["hub", "own"]);
    assert!(all.iter().all(|c| c.get("cursor").is_none()));

    // Render's update body: all four fields, the registry unchanged.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"registry": "DOCKER", "name": "hub2", "username": "me2", "authToken": TOKEN}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_credential(&v);
    assert_eq!(
        (&v["name"], &v["username"]),
        (&json!("hub2"), &json!("me2"))
    );
    let time =
        |v: &Value| chrono::DateTime::parse_from_rfc3339(v["updatedAt"].as_str().unwrap()).unwrap();
    assert!(time(&v) >= time(&docker), "{v}");
    // berth's own: the token alone.
    let (s, v) = app.patch(&path, &alice, json!({"authToken": TOKEN})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_credential(&v);
    assert_eq!(v["name"], "hub2");
    // The registry and host stay what the credential was made for.
    let before = app.last_seq().await;
    for (body, field) in [
        (
            json!({"registry": "GITHUB", "name": "hub2", "username": "me2", "authToken": TOKEN}),
            "registry",
        ),
        (
            json!({"host": "elsewhere.example.com", "authToken": TOKEN}),
            "host",
        ),
        (
            json!({"registry": "DOCKER", "name": "hub2", "username": "me2"}),
            "authToken",
        ),
    ] {
        let (s, v) = app.patch(&path, &alice, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["fields"][0]["field"], field, "{v}");
        assert!(!v.to_string().contains(TOKEN), "{v}");
    }
    let generic_path = format!(
        "/v1/registrycredentials/{}",
        generic["id"].as_str().unwrap()
    );
    let (s, v) = app
        .patch(
            &generic_path,
            &alice,
            json!({"registry": "GENERIC", "host": "registry.example.com:5000",
                   "name": "own", "username": "ci", "authToken": TOKEN}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the same registry and host: {v}");
    assert!(app.last_seq().await > before);

    // Render's AWS_ECR and unknown registries: a field error, nothing made.
    let before = app.last_seq().await;
    for registry in ["AWS_ECR", "QUAY", "docker"] {
        let (s, v) = app
            .post(
                "/v1/registrycredentials",
                &alice,
                json!({"registry": registry, "name": "x", "username": "u", "authToken": TOKEN}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{registry}: {v}");
        assert_eq!(v["fields"][0]["field"], "registry", "{v}");
    }
    assert_eq!(app.last_seq().await, before);

    let (s, v) = app.delete(&path, &alice).await;
    assert_eq!((s, v), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(names(&list(&app, &alice, "").await), ["own"]);
    // The token never reached the log in clear.
    let cred = AggregateId::Credential(id.parse().unwrap());
    assert!(!format!("{:?}", app.events_of(&cred).await).contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_takes_renders_query() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    for (registry, name, user) in [
        ("DOCKER", "a", "u1"),
        ("GITHUB", "b", "u2"),
        ("GITLAB", "c", "u1"),
    ] {
        create(
            &app,
            &alice,
            json!({"registry": registry, "name": name, "username": user, "authToken": TOKEN}),
        )
        .await;
    }
    let other = OwnerId::User(berth_schemas::ids::UserId::generate());
    let (mine, others, both) = (
        format!("?ownerId={}", alice.id),
        format!("?ownerId={other}"),
        format!("?ownerId={other}&ownerId={}", alice.id),
    );
    for (query, want) in [
        // Arrays as Render's SDKs send them (repeated keys), or comma-separated.
        ("?type=DOCKER&type=GITLAB", vec!["a", "c"]),
        ("?type=GITHUB,GITLAB", vec!["b", "c"]),
        ("?type=AWS_ECR", vec![]),
        ("?name=b", vec!["b"]),
        ("?username=u1", vec!["a", "c"]),
        ("?username=u1&type=GITLAB", vec!["c"]),
        (mine.as_str(), vec!["a", "b", "c"]),
        (others.as_str(), vec![]),
        (both.as_str(), vec!["a", "b", "c"]),
        ("?updatedAfter=2000-01-01T00:00:00Z", vec!["a", "b", "c"]),
        ("?updatedAfter=2999-01-01T00:00:00Z", vec![]),
        // Python's isoformat() of a naive datetime: no offset, read as UTC.
        ("?updatedBefore=2999-01-01T00:00:00", vec!["a", "b", "c"]),
        ("?updatedBefore=2000-01-01T00:00:00.5", vec![]),
        // Accepted and not applied: berth does not keep creation times.
        ("?createdBefore=2000-01-01T00:00:00Z", vec!["a", "b", "c"]),
        // Unknown parameters are accepted and ignored.
        ("?includePreviews=true&foo=bar", vec!["a", "b", "c"]),
        ("?limit=2", vec!["a", "b"]),
        ("?limit=100&type=", vec!["a", "b", "c"]),
    ] {
        let got = list(&app, &alice, query).await;
        assert_eq!(names(&got), want, "{query}");
    }
    // Pages: the cursor is the last credential's id.
    let first = list(&app, &alice, "?limit=2").await;
    let cursor = first[1]["id"].as_str().unwrap();
    let rest = list(&app, &alice, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(names(&rest), ["c"]);
    // With a filter, the page still starts after the cursor.
    let a = first[0]["id"].as_str().unwrap();
    let rest = list(&app, &alice, &format!("?type=GITLAB&cursor={a}")).await;
    assert_eq!(names(&rest), ["c"]);
    for query in [
        "?limit=0",
        "?limit=x",
        "?cursor=rgc-nope",
        "?updatedAfter=yesterday",
    ] {
        let (s, v) = app
            .get(&format!("/v1/registrycredentials{query}"), &alice)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
    }
}

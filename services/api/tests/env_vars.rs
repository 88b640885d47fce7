//! A service's env vars one at a time, as Render's routes serve them: set
//! (given or generated), read with values by their owner, replace all,
//! delete; validation; concurrent sets of different keys both land; values
//! sealed in the log; another owner finds nothing.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_one_at_a_time_and_all_at_once() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "envy").await;
    let base = format!("/v1/services/{svc}/env-vars");
    let put = |path: String, body: serde_json::Value| {
        let app = &app;
        let key = alice.key.clone();
        async move { app.call(Method::PUT, &path, Some(&key), Some(body)).await }
    };

    let (s, v) = app.get(&base, &alice).await;
    assert_eq!((s, v.clone()), (StatusCode::OK, json!([])), "{v}");
    let (s, v) = put(
        format!("{base}/DATABASE_URL"),
        json!({"value": "postgres://s3cret-one"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["key"], &v["value"]),
        (&json!("DATABASE_URL"), &json!("postgres://s3cret-one"))
    );
    assert!(
        v["deployId"].as_str().unwrap().starts_with("dep-"),
        "the change's deploy: {v}"
    );
    let (s, v) = put(format!("{base}/TOKEN"), json!({"generateValue": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let generated = v["value"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 44, "256 bits, base64: {v}");
    let (s, v) = app.get(&format!("{base}/TOKEN"), &alice).await;
    assert_eq!(
        (s, v["value"].as_str()),
        (StatusCode::OK, Some(generated.as_str()))
    );
    // Listed by key with values; the service shows the keys only.
    let (_, v) = app.get(&base, &alice).await;
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["envVar"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["DATABASE_URL", "TOKEN"]);
    assert_eq!(v[0]["cursor"], "DATABASE_URL");
    let (_, page) = app
        .get(&format!("{base}?limit=1&cursor=DATABASE_URL"), &alice)
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["envVar"]["key"], "TOKEN");
    let (_, svc_view) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(svc_view["envVarKeys"], json!(["DATABASE_URL", "TOKEN"]));
    assert!(
        !svc_view.to_string().contains("s3cret-one"),
        "a service view shows no value"
    );

    // Refused: bad key, no value, both, too large; nothing appended.
    let before = app.last_seq().await;
    for (path, body) in [
        (format!("{base}/1BAD"), json!({"value": "x"})),
        (format!("{base}/OK"), json!({})),
        (
            format!("{base}/OK"),
            json!({"value": "x", "generateValue": true}),
        ),
        (
            format!("{base}/OK"),
            json!({"value": "x".repeat(16 * 1024 + 1)}),
        ),
        (format!("{base}/OK"), json!({"value": 5})),
    ] {
        let (s, v) = put(path.clone(), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
    let (s, _) = app.delete(&format!("{base}/NOPE"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.get(&format!("{base}/NOPE"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(app.last_seq().await, before, "a refused change appended");

    // Two sets of different keys at once: both land.
    let (a, b) = tokio::join!(
        put(format!("{base}/A"), json!({"value": "1"})),
        put(format!("{base}/B"), json!({"value": "2"})),
    );
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK), "{a:?} {b:?}");
    let (_, v) = app.get(&base, &alice).await;
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["envVar"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["A", "B", "DATABASE_URL", "TOKEN"]);

    // A merge sets and removes some keys and keeps the others, in one
    // change: one deploy, named in the answer.
    let (s, v) = app
        .call(
            Method::PATCH,
            &base,
            Some(&alice.key),
            Some(json!([{"key": "C", "value": "3"}, {"key": "B", "value": null}])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let keys: Vec<&str> = v["envVars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["envVar"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["A", "C", "DATABASE_URL", "TOKEN"], "{v}");
    assert!(v["deployId"].as_str().unwrap().starts_with("dep-"), "{v}");
    let (s, v) = app
        .call(
            Method::PATCH,
            &base,
            Some(&alice.key),
            Some(json!([{"key": "NOT_THERE", "value": null}])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v.get("deployId").is_none(),
        "nothing changed, nothing deployed: {v}"
    );
    for bad in [
        json!([{"key": "X", "value": "1"}, {"key": "X", "value": "2"}]),
        json!([{"key": "X", "value": null, "generateValue": true}]),
        json!([{"key": "9X", "value": "1"}]),
        json!([{"key": "X"}]),
    ] {
        let (s, v) = app
            .call(Method::PATCH, &base, Some(&alice.key), Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    // Delete one; replace all.
    let (s, _) = app.delete(&format!("{base}/A"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.get(&format!("{base}/A"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = put(
        base.clone(),
        json!([{"key": "ONLY", "value": "v"}, {"key": "GEN", "generateValue": true}]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = app.get(&base, &alice).await;
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["envVar"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["GEN", "ONLY"], "replace removes the others");
    let (s, v) = put(
        base.clone(),
        json!([{"key": "X", "value": "1"}, {"key": "X", "value": "2"}]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // At most 200: the 201st is refused by every route, nothing appended.
    let full: Vec<serde_json::Value> = (0..200)
        .map(|i| json!({"key": format!("K{i}"), "value": "v"}))
        .collect();
    let (s, v) = put(base.clone(), serde_json::Value::Array(full)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = app.last_seq().await;
    let (s, v) = put(format!("{base}/ONE_MORE"), json!({"value": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app
        .call(
            Method::PATCH,
            &base,
            Some(&alice.key),
            Some(json!([{"key": "ONE_MORE", "value": "x"}])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(app.last_seq().await, before, "a refused change appended");
    // Replacing one of the 200 is no more than 200.
    let (s, v) = put(format!("{base}/K0"), json!({"value": "w"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Another owner finds nothing; values never reach the log in clear.
    let bob = app.owner().await;
    let (s, _) = app.get(&base, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::PUT,
            &format!("{base}/A"),
            Some(&bob.key),
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let log = format!("{:?}", app.envelopes().await);
    assert!(
        !log.contains("s3cret-one") && !log.contains(&generated),
        "a value in clear in the log"
    );
}

//! Log stream settings through the API (Render's `/logs/streams/…`): the
//! owner's stream and each service's override, tokens sealed and never
//! shown, a token never carried to another endpoint, bad values refused
//! with nothing appended, and another owner's settings not found.

use axum::http::{Method, StatusCode};
use berth_schemas::model::{seal_context, LogStreamSetting};
use berth_schemas::{AggregateId, Event};
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_sets_changes_and_removes_its_log_stream() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let path = format!("/v1/logs/streams/owner/{}", alice.id);
    let put = |body| app.call(Method::PUT, &path, Some(&alice.key), Some(body));

    // None set: 200 without an endpoint; a PUT without one is refused.
    let (s, v) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"ownerId": alice.id.as_str(), "tokenConfigured": false})
    );
    let (s, v) = put(json!({"preview": "send"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("endpoint"), "{v}");

    let token = "sekret-token-0123";
    let (s, v) = put(
        json!({"preview": "drop", "endpoint": "logs.example.com:6514",
                           "token": token}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["endpoint"], "logs.example.com:6514");
    assert_eq!(v["preview"], "drop");
    assert_eq!(v["tokenConfigured"], true);
    let (_, shown) = app.get(&path, &alice).await;
    assert_eq!(shown, v);
    assert!(!shown.to_string().contains("sekret"), "{shown}");

    // The log holds the token sealed; it opens with the owner's context.
    let events = app.events_of(&AggregateId::Owner(alice.id.clone())).await;
    assert!(!format!("{events:?}").contains("sekret"));
    let set = events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::LogStreamChanged(c) => c.stream.clone(),
            _ => None,
        })
        .expect("a log stream event");
    let opened = app
        .key
        .open(
            set.token.as_ref().unwrap(),
            &seal_context::owner_log_stream_token(&alice.id),
        )
        .unwrap();
    assert_eq!(opened.expose(), token);
    assert_eq!(set.preview, LogStreamSetting::Drop);

    // Same endpoint, no token: kept. Another endpoint: dropped.
    let (_, v) = put(json!({"preview": "send"})).await;
    assert_eq!(
        (v["endpoint"].as_str(), v["tokenConfigured"].as_bool()),
        (Some("logs.example.com:6514"), Some(true)),
        "{v}"
    );
    let (_, v) = put(json!({"preview": "send", "endpoint": "other.example.com:6514"})).await;
    assert_eq!(v["tokenConfigured"], false, "{v}");

    // Bad values: 400 naming the field, nothing appended, never echoed.
    let before = app.last_seq().await;
    for (body, field) in [
        (
            json!({"preview": "send", "endpoint": "tls://h.example:1"}),
            "endpoint",
        ),
        (
            json!({"preview": "send", "endpoint": "h.example"}),
            "endpoint",
        ),
        (
            json!({"preview": "send", "endpoint": "h.example:99999"}),
            "endpoint",
        ),
        (json!({"preview": "send", "token": "two words"}), "token"),
        (json!({"preview": "maybe"}), "`send` or `drop`"),
        (json!({"endpoint": "h.example:1"}), "preview"),
        (json!({"preview": "send", "extra": 1}), "extra"),
    ] {
        let (s, v) = put(body.clone()).await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {s} {v}"
        );
        assert!(v.to_string().contains(field), "{body}: {v}");
        assert!(!v.to_string().contains("two words"), "echoed: {v}");
    }
    assert_eq!(app.last_seq().await, before);

    // Removed: 204, then 404; the GET shows none again.
    let (s, _) = app.delete(&path, &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.delete(&path, &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = app.get(&path, &alice).await;
    assert!(v.get("endpoint").is_none(), "{v}");

    // Another owner's stream: not found, whatever the method.
    let bob = app.owner().await;
    let (s, _) = app.get(&path, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::PUT,
            &path,
            Some(&bob.key),
            Some(json!({"preview": "send", "endpoint": "h.example:1"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_overrides_its_owners_stream() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let a = app.web_service(&alice, "streamed").await;
    let b = app.web_service(&alice, "quiet").await;
    let _c = app.web_service(&alice, "follows").await;
    let path = |id: &str| format!("/v1/logs/streams/resource/{id}");
    let put = |id: String, body| {
        let p = path(&id);
        let key = alice.key.clone();
        let app = &app;
        async move { app.call(Method::PUT, &p, Some(&key), Some(body)).await }
    };

    let (s, v) = app.get(&path(&a), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"resourceId": a, "tokenConfigured": false}));

    let (s, v) = put(
        a.clone(),
        json!({"setting": "send", "endpoint": "own.example.com:6514", "token": "svc-sekret"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"resourceId": a, "setting": "send", "endpoint": "own.example.com:6514",
               "tokenConfigured": true})
    );
    let (s, v) = put(b.clone(), json!({"setting": "drop"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["setting"], "drop");

    // The token opens with the service's context only.
    let state = app
        .events_of(&AggregateId::Service(a.parse().unwrap()))
        .await;
    let sealed = state
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::LogStreamOverrideChanged(c) => c.stream.clone()?.token,
            _ => None,
        })
        .expect("a sealed token");
    let id = a.parse().unwrap();
    assert_eq!(
        app.key
            .open(&sealed, &seal_context::service_log_stream_token(&id))
            .unwrap()
            .expose(),
        "svc-sekret"
    );

    // The listing has the two overrides only, filterable by setting.
    let (s, v) = app.get("/v1/logs/streams/resource", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["resourceId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(!v.to_string().contains("sekret"), "{v}");
    let (_, v) = app
        .get("/v1/logs/streams/resource?setting=drop", &alice)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["resourceId"], b.as_str());
    let (_, v) = app.get("/v1/logs/streams/resource?limit=1", &alice).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (s, v) = app
        .get("/v1/logs/streams/resource?logStreamId=x", &alice)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Render's rules: send needs an endpoint, drop takes neither.
    let before = app.last_seq().await;
    for body in [
        json!({"setting": "send"}),
        json!({"setting": "drop", "endpoint": "h.example:1"}),
        json!({"setting": "drop", "token": "t"}),
        json!({"setting": "send", "endpoint": "no-port.example"}),
    ] {
        let (s, v) = put(b.clone(), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    assert_eq!(app.last_seq().await, before);

    // Another owner sees none of it.
    let bob = app.owner().await;
    let (s, _) = app.get(&path(&a), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = app.get("/v1/logs/streams/resource", &bob).await;
    assert_eq!(v, json!([]));

    // Removed: the service follows its owner again; a second DELETE is 404.
    let (s, _) = app.delete(&path(&a), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.delete(&path(&a), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = app.get(&path(&a), &alice).await;
    assert!(v.get("setting").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_page_sets_a_services_log_stream_override() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "noisy").await;
    // Nothing else happens to it here (no node takes it further).
    let first = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &first).await;
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let settings = format!("/services/{svc}/settings");
    let action = format!("/services/{svc}/log-stream");
    let resource = format!("/v1/logs/streams/resource/{svc}");
    let page = b.get(&settings).await;
    assert!(
        page.html.contains("Follow the owner's log stream"),
        "{}",
        page.html
    );

    // Following already: saving "default" says so, changes nothing.
    let seq = app.last_seq().await;
    let same = b
        .submit(&settings, &action, &[("setting", "default")])
        .await;
    assert!(
        same.html.contains("follow the owner's log stream"),
        "{}",
        same.html
    );
    assert_eq!(app.last_seq().await, seq);

    let send = b
        .submit(
            &settings,
            &action,
            &[
                ("setting", "send"),
                ("endpoint", "logs.example.test:6514"),
                ("token", "tok-secret-1"),
            ],
        )
        .await;
    assert!(
        send.html.contains("sent to logs.example.test:6514"),
        "{}",
        send.html
    );
    assert!(!send.html.contains("tok-secret-1"), "the token was shown");
    let (_, v) = app.get(&resource, &alice).await;
    assert_eq!(
        (&v["setting"], &v["endpoint"], &v["tokenConfigured"]),
        (
            &json!("send"),
            &json!("logs.example.test:6514"),
            &json!(true)
        )
    );

    // The API's refusal, said on the page; nothing changed.
    let bad = b
        .submit(
            &settings,
            &action,
            &[("setting", "send"), ("endpoint", "https://x")],
        )
        .await;
    assert!(bad.html.contains("has a scheme"), "{}", bad.html);
    let (_, still) = app.get(&resource, &alice).await;
    assert_eq!(still["endpoint"], "logs.example.test:6514");

    let dropped = b.submit(&settings, &action, &[("setting", "drop")]).await;
    assert!(dropped.html.contains("are not sent"), "{}", dropped.html);
    let (_, v) = app.get(&resource, &alice).await;
    assert_eq!(v["setting"], "drop");
    let back = b
        .submit(&settings, &action, &[("setting", "default")])
        .await;
    assert!(
        back.html.contains("follow the owner's log stream"),
        "{}",
        back.html
    );
    let (_, v) = app.get(&resource, &alice).await;
    assert!(v.get("setting").is_none(), "{v}");
}

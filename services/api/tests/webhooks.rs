//! An owner's webhooks through the API, in Render's shapes (`Webhook`,
//! `WebhookWithCursor`, `WebhookEventWithCursor`): created with a secret
//! berth makes, listed, retrieved, updated (the secret stays), deleted;
//! refused with why, recording nothing; URL and secret never in the log
//! in clear.

use axum::http::StatusCode;
use berth_schemas::ids::WebhookId;
use berth_schemas::webhooks::WebhookSend;
use berth_schemas::AggregateId;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_created_listed_updated_and_deleted_in_renders_shape() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let owner = alice.id.to_string();
    let url = "https://hooks.example.test/berth?token=hunter2-in-the-url";
    let (s, h) = app
        .post(
            "/v1/webhooks",
            &alice,
            json!({"ownerId": owner, "name": "deploys", "url": url, "enabled": true,
                   "eventFilter": ["deploy_ended", "server_failed", "deploy_ended"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let id = h["id"].as_str().unwrap().to_owned();
    assert!(id.parse::<WebhookId>().is_ok(), "{h}");
    let secret = h["secret"].as_str().unwrap().to_owned();
    let raw = data_encoding::BASE64
        .decode(secret.strip_prefix("whsec_").unwrap().as_bytes())
        .unwrap();
    assert_eq!(raw.len(), 32, "a Standard-Webhooks secret of 32 bytes");
    assert_eq!(
        h,
        json!({"id": id, "url": url, "name": "deploys", "secret": secret, "enabled": true,
               "eventFilter": ["deploy_ended", "server_failed"]})
    );
    let (s, got) = app.get(&format!("/v1/webhooks/{id}"), &alice).await;
    assert_eq!((s, &got), (StatusCode::OK, &h));
    let (s, list) = app
        .get(&format!("/v1/webhooks?ownerId={owner}"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list, json!([{"webhook": h, "cursor": id}]));

    // What is given changes; the secret stays.
    let (s, u) = app
        .patch(
            &format!("/v1/webhooks/{id}"),
            &alice,
            json!({"enabled": false, "eventFilter": []}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(
        (
            &u["enabled"],
            &u["eventFilter"],
            &u["secret"],
            &u["url"],
            &u["name"]
        ),
        (
            &json!(false),
            &json!([]),
            &json!(secret),
            &json!(url),
            &json!("deploys")
        )
    );
    // Nothing sent to it yet: no events.
    let (s, sends) = app.get(&format!("/v1/webhooks/{id}/events"), &alice).await;
    assert_eq!((s, sends), (StatusCode::OK, json!([])));

    // Neither the URL nor the secret is in the log in clear.
    let log = serde_json::to_string(&app.envelopes().await).unwrap();
    assert!(!log.contains("hunter2") && !log.contains(&secret[6..]));

    let (s, _) = app.delete(&format!("/v1/webhooks/{id}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for path in [
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/events"),
    ] {
        let (s, v) = app.get(&path, &alice).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let (s, v) = app.delete(&format!("/v1/webhooks/{id}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, list) = app.get("/v1/webhooks", &alice).await;
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_webhook_is_refused_with_why_and_records_nothing() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let owner = alice.id.to_string();
    let (_, h) = app
        .post(
            "/v1/webhooks",
            &alice,
            json!({"ownerId": owner, "name": "ok", "url": "http://hooks.example.test/",
                   "enabled": true, "eventFilter": []}),
        )
        .await;
    let id = h["id"].as_str().unwrap().to_owned();
    let agg = AggregateId::Owner(alice.id.clone());
    let events = || app.events_of(&agg);
    let before = events().await.len();
    let good = json!({"ownerId": owner, "name": "x", "url": "https://h.example.test/",
                      "enabled": true, "eventFilter": []});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    for (body, field, says) in [
        (
            with("url", json!("ftp://h.example.test/")),
            "url",
            "http(s) URL",
        ),
        (with("url", json!("https://a b/")), "url", "without spaces"),
        (with("name", json!("  ")), "name", "not blank"),
        (
            with("eventFilter", json!(["deploy_finished"])),
            "eventFilter",
            "\"deploy_finished\" is not an event type",
        ),
        (json!({"ownerId": owner}), "url", "is required"),
    ] {
        let (s, v) = app.post("/v1/webhooks", &alice, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let named = v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == field);
        assert!(
            named.is_some_and(|f| f["message"].as_str().unwrap().contains(says)),
            "{body}: {v}"
        );
    }
    let (s, v) = app
        .patch(
            &format!("/v1/webhooks/{id}"),
            &alice,
            json!({"eventFilter": ["nope"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app
        .patch(
            &format!("/v1/webhooks/{id}"),
            &alice,
            json!({"secret": "whsec_mine"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "the secret is berth's to make: {v}"
    );
    let (s, v) = app
        .get(
            &format!("/v1/webhooks/{id}/events?sentAfter=yesterday"),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(events().await.len(), before, "refusals record nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_sends_are_listed_newest_first_by_time_and_page() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let (_, h) = app
        .post(
            "/v1/webhooks",
            &alice,
            json!({"ownerId": alice.id.to_string(), "name": "x", "url": "https://h.example.test/",
                   "enabled": true, "eventFilter": []}),
        )
        .await;
    let id: WebhookId = h["id"].as_str().unwrap().parse().unwrap();
    // As the notifier records them: one per attempt.
    app.store.provision_webhook_sends().await.unwrap();
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(10);
    // Recorded out of order (attempts end in another order than they
    // start): listed by when each was sent.
    for n in [0i64, 1, 3, 2, 4] {
        let send = WebhookSend {
            id: "ntf-aaaaaaaaaaaaaaaaaaaa".into(),
            event_id: format!("evt-{}", "b".repeat(20)),
            event_type: "deploy_ended".into(),
            sent_at: t0 + chrono::Duration::minutes(n),
            status_code: Some(if n < 4 { 503 } else { 200 }),
            response_body: Some(format!("answer {n}")),
            error: None,
        };
        app.store
            .record_webhook_send(&alice.id, &id, &send)
            .await
            .unwrap();
    }
    let path = format!("/v1/webhooks/{id}/events");
    let (s, all) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    let bodies: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["webhookEvent"]["responseBody"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        bodies,
        ["answer 4", "answer 3", "answer 2", "answer 1", "answer 0"]
    );
    assert_eq!(all[0]["webhookEvent"]["statusCode"], 200);
    assert_eq!(all[0]["webhookEvent"]["eventType"], "deploy_ended");
    // Pages follow the cursor; the time bounds cut.
    let (_, first) = app.get(&format!("{path}?limit=2"), &alice).await;
    let cursor = first[1]["cursor"].as_str().unwrap();
    let (_, next) = app
        .get(&format!("{path}?limit=2&cursor={cursor}"), &alice)
        .await;
    assert_eq!(next[0]["webhookEvent"]["responseBody"], "answer 2");
    let after =
        (t0 + chrono::Duration::seconds(90)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let before =
        (t0 + chrono::Duration::seconds(210)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, cut) = app
        .get(
            &format!("{path}?sentAfter={after}&sentBefore={before}"),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{cut}");
    let cut: Vec<_> = cut
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["webhookEvent"]["responseBody"].clone())
        .collect();
    assert_eq!(cut, [json!("answer 3"), json!("answer 2")]);
    // Another owner sees none of them.
    let bob = app.owner().await;
    let (s, _) = app.get(&path, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

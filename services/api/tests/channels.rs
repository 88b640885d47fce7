//! Notification channels set through the API: sealed before they are
//! appended (the owner's events hold only sealed values, which open with the
//! notifier's context), never shown back, validated (a bad value changes
//! nothing), and removable.

use axum::http::StatusCode;
use berth_schemas::model::seal_context;
use berth_schemas::{AggregateId, Event};
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_webhook_channels_are_sealed_never_shown_and_validated() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let path = format!("/v1/notification-settings/owners/{}", alice.id);
    let slack = "https://hooks.slack.test/services/T000/B000/sekretslackpath";
    let hook = "http://127.0.0.1:9/hook?token=sekrethookquery";
    let secret = "whsec_c2VrcmV0LXNpZ25pbmcta2V5LTAxMjM0NQ==";
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"notificationsToSend": "all", "slackWebhookUrl": slack,
                        "webhookUrl": hook, "webhookSecret": secret}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["slackConfigured"], true, "{v}");
    assert_eq!(v["webhookConfigured"], true, "{v}");
    assert_eq!(v["notificationsToSend"], "all", "{v}");
    let (_, shown) = app.get(&path, &alice).await;
    for text in [v.to_string(), shown.to_string()] {
        for clear in ["sekretslackpath", "sekrethookquery", "c2VrcmV0"] {
            assert!(!text.contains(clear), "{clear} shown in {text}");
        }
    }

    // The log holds sealed values only; they open to what was sent.
    let owner = AggregateId::Owner(alice.id.clone());
    let events = app.events_of(&owner).await;
    let raw = format!("{events:?}");
    assert!(!raw.contains("sekretslackpath") && !raw.contains("sekrethookquery"));
    let set = events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::NotificationSettingsChanged(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a settings event");
    let open = |sealed: &Option<berth_schemas::model::Sealed>, field: &str| {
        app.key
            .open(
                sealed.as_ref().unwrap(),
                &seal_context::notification(&alice.id, field),
            )
            .unwrap()
            .expose()
            .to_owned()
    };
    assert_eq!(open(&set.slack_webhook_url, "slack_webhook_url"), slack);
    assert_eq!(open(&set.webhook_url, "webhook_url"), hook);
    assert_eq!(open(&set.webhook_secret, "webhook_secret"), secret);

    // Bad values: 400 naming the field, nothing appended.
    let before = app.last_seq().await;
    for (body, field) in [
        (json!({"webhookSecret": "not base64!"}), "webhookSecret"),
        (json!({"webhookSecret": "whsec_YWJj"}), "webhookSecret"),
        (json!({"slackWebhookUrl": "ftp://x"}), "slackWebhookUrl"),
        (json!({"webhookUrl": "http://a b"}), "webhookUrl"),
    ] {
        let (s, v) = app.patch(&path, &alice, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(field), "{v}");
        assert!(!v.to_string().contains("YWJj"), "the value is echoed: {v}");
    }
    assert_eq!(app.last_seq().await, before);

    // "" removes a channel; the others stay.
    let (s, v) = app
        .patch(&path, &alice, json!({"slackWebhookUrl": ""}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["slackConfigured"], false, "{v}");
    assert_eq!(v["webhookConfigured"], true, "{v}");
}

//! Notification settings in Render's contract: the owner's
//! `NotificationSetting` (and what `emailEnabled` means for berth's one
//! recipient), each service's `NotificationServiceOverride` (`default` is
//! no override: the owner's setting applies), and the `[{override, cursor}]`
//! listing. Channel secrets never appear in any answer.

use axum::http::StatusCode;
use berth_schemas::ids::{OwnerId, ServiceId, UserId};
use berth_schemas::model::NotifySetting;
use berth_schemas::{AggregateId, Event};
use serde_json::{json, Value};

use crate::support::{App, Owner};

const SLACK: &str = "https://hooks.slack.test/services/T0/B0/sekretslackpath";
const HOOK: &str = "http://127.0.0.1:9/hook?token=sekrethookquery";
const SECRET: &str = "whsec_c2VrcmV0LXNpZ25pbmcta2V5LTAxMjM0NQ==";

fn assert_no_secret(v: &Value) {
    let text = v.to_string();
    for clear in ["sekretslackpath", "sekrethookquery", "c2VrcmV0"] {
        assert!(!text.contains(clear), "{clear} shown in {text}");
    }
}

/// Fails unless `v` is a `NotificationSetting` as Render's SDKs parse it.
fn assert_render_setting(v: &Value, owner: &Owner) {
    assert_eq!(v["ownerId"], owner.id.to_string(), "{v}");
    for f in [
        "slackEnabled",
        "emailEnabled",
        "previewNotificationsEnabled",
    ] {
        assert!(v[f].is_boolean(), "{f} missing or not a boolean: {v}");
    }
    // berth has no previews: never preview notifications.
    assert_eq!(v["previewNotificationsEnabled"], false, "{v}");
    assert!(
        ["all", "failure", "none"].contains(&v["notificationsToSend"].as_str().unwrap_or("")),
        "{v}"
    );
    assert_no_secret(v);
}

/// Fails unless `v` is a `NotificationServiceOverride` for `svc`.
fn assert_render_override(v: &Value, svc: &str) {
    assert_eq!(v["serviceId"], svc, "{v}");
    assert!(
        ["default", "true", "false"]
            .contains(&v["previewNotificationsEnabled"].as_str().unwrap_or("")),
        "{v}"
    );
    assert!(
        ["default", "all", "failure", "none"]
            .contains(&v["notificationsToSend"].as_str().unwrap_or("")),
        "{v}"
    );
    assert_no_secret(v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_settings_in_renders_shape() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let path = format!("/v1/notification-settings/owners/{}", alice.id);
    let (s, v) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_setting(&v, &alice);
    assert_eq!(
        (
            &v["notificationsToSend"],
            &v["emailEnabled"],
            &v["slackEnabled"]
        ),
        (&json!("failure"), &json!(false), &json!(false)),
        "{v}"
    );

    // notificationsToSend round-trips, alone and with Render's other fields.
    for setting in ["all", "none", "failure"] {
        let (s, v) = app
            .patch(
                &path,
                &alice,
                json!({"notificationsToSend": setting, "previewNotificationsEnabled": true}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_render_setting(&v, &alice);
        assert_eq!(v["notificationsToSend"], setting, "{v}");
        let (_, v) = app.get(&path, &alice).await;
        assert_eq!(v["notificationsToSend"], setting, "{v}");
    }

    // emailEnabled against berth's one recipient.
    let before = app.last_seq().await;
    for (body, field) in [
        // Nowhere to send: no recipient stored or given.
        (json!({"emailEnabled": true}), "emailEnabled"),
        (json!({"emailEnabled": true, "email": ""}), "emailEnabled"),
        (
            json!({"emailEnabled": false, "email": "ops@example.com"}),
            "emailEnabled",
        ),
        (json!({"notificationsToSend": "default"}), ""),
        (json!({"previewNotificationsEnabled": "yes"}), ""),
    ] {
        let (s, v) = app.patch(&path, &alice, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        if !field.is_empty() {
            assert_eq!(v["fields"][0]["field"], field, "{v}");
        }
    }
    assert_eq!(app.last_seq().await, before, "a refused PATCH appended");
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"emailEnabled": true, "email": "ops@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["emailEnabled"], &v["email"]),
        (&json!(true), &json!("ops@example.com"))
    );
    let (s, v) = app
        .patch(&path, &alice, json!({"emailEnabled": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["email"], "ops@example.com",
        "true keeps the recipient: {v}"
    );
    let (s, v) = app
        .patch(&path, &alice, json!({"emailEnabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_setting(&v, &alice);
    assert_eq!(
        (&v["emailEnabled"], &v["email"]),
        (&json!(false), &Value::Null)
    );
    let (s, v) = app
        .patch(&path, &alice, json!({"email": "dev@example.com"}))
        .await;
    assert_eq!(
        (s, &v["emailEnabled"]),
        (StatusCode::OK, &json!(true)),
        "{v}"
    );
    let (s, v) = app.patch(&path, &alice, json!({"email": ""})).await;
    assert_eq!(
        (s, &v["emailEnabled"]),
        (StatusCode::OK, &json!(false)),
        "{v}"
    );
    // The notifier reads the recipient from the owner's events: gone.
    let last = app
        .events_of(&AggregateId::Owner(alice.id.clone()))
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e.event {
            Event::NotificationSettingsChanged(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!((last.email, last.notify), (None, NotifySetting::Failure));

    // Slack and webhook: set, answered as enabled, never shown.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"slackWebhookUrl": SLACK, "webhookUrl": HOOK, "webhookSecret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_setting(&v, &alice);
    assert_eq!(
        (&v["slackEnabled"], &v["webhookConfigured"]),
        (&json!(true), &json!(true)),
        "{v}"
    );
    let (_, v) = app.get(&path, &alice).await;
    assert_render_setting(&v, &alice);
    assert_eq!(v["slackEnabled"], true, "{v}");

    // Another owner's settings do not exist for Alice.
    let other = OwnerId::User(UserId::generate());
    let (s, _) = app
        .get(&format!("/v1/notification-settings/owners/{other}"), &alice)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_overrides_in_renders_shape() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let owner_path = format!("/v1/notification-settings/owners/{}", alice.id);
    let (s, _) = app
        .patch(
            &owner_path,
            &alice,
            json!({"slackWebhookUrl": SLACK, "webhookUrl": HOOK, "webhookSecret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (one, _) = app.service(&alice, "one").await;
    let (two, _) = app.service(&alice, "two").await;
    let path = format!("/v1/notification-settings/overrides/services/{one}");

    // No override: Render's `default`.
    let (s, v) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_render_override(&v, &one);
    assert_eq!(
        (&v["notificationsToSend"], &v["previewNotificationsEnabled"]),
        (&json!("default"), &json!("default")),
        "{v}"
    );

    // Each setting round-trips and is what the service stores.
    let id: ServiceId = one.parse().unwrap();
    for (setting, stored) in [
        ("none", Some(NotifySetting::None)),
        ("all", Some(NotifySetting::All)),
        ("failure", Some(NotifySetting::Failure)),
        // `default` clears the override: the owner's setting applies.
        ("default", None),
    ] {
        let (s, v) = app
            .patch(&path, &alice, json!({"notificationsToSend": setting}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_render_override(&v, &one);
        assert_eq!(v["notificationsToSend"], setting, "{v}");
        let (_, v) = app.get(&path, &alice).await;
        assert_eq!(v["notificationsToSend"], setting, "{v}");
        let state = app.ingress_state(&id).await;
        assert_eq!(state.config.unwrap().notify, stored, "{setting}");
    }

    // Render's preview field is accepted and changes nothing; berth's
    // `notifyOnFail` still works; a body with neither changes nothing.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"previewNotificationsEnabled": "true"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["notificationsToSend"], &v["previewNotificationsEnabled"]),
        (&json!("default"), &json!("default")),
        "{v}"
    );
    let (s, v) = app
        .patch(&path, &alice, json!({"notifyOnFail": "all"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["notificationsToSend"], "all", "{v}");
    let (s, v) = app
        .patch(&path, &alice, json!({"notifyOnFail": null}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["notificationsToSend"], "default", "{v}");
    // A service's own spelling works here too.
    let (s, v) = app
        .patch(&path, &alice, json!({"notifyOnFail": "ignore"}))
        .await;
    assert_eq!(
        (s, &v["notificationsToSend"]),
        (StatusCode::OK, &json!("none")),
        "{v}"
    );
    let (s, v) = app
        .patch(&path, &alice, json!({"notifyOnFail": "default"}))
        .await;
    assert_eq!(
        (s, &v["notificationsToSend"]),
        (StatusCode::OK, &json!("default")),
        "{v}"
    );
    let before = app.last_seq().await;
    for body in [
        json!({"notificationsToSend": "ignore"}),
        json!({"previewNotificationsEnabled": true}),
        json!({"notificationsToSend": "all", "notifyOnFail": "none"}),
    ] {
        let (s, v) = app.patch(&path, &alice, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    assert_eq!(app.last_seq().await, before, "a refused PATCH appended");
    let (s, _) = app
        .patch(
            &format!("/v1/notification-settings/overrides/services/{two}"),
            &alice,
            json!({"notificationsToSend": "none"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The listing: `[{override, cursor}]`, newest service first.
    let list = |query: &'static str| {
        let app = &app;
        let alice = &alice;
        async move {
            let (s, v) = app
                .get(
                    &format!("/v1/notification-settings/overrides{query}"),
                    alice,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{query}: {v}");
            assert_no_secret(&v);
            let items = v.as_array().unwrap().clone();
            for item in &items {
                let svc = item["override"]["serviceId"].as_str().unwrap();
                assert_render_override(&item["override"], svc);
                assert_eq!(item["cursor"], svc, "{item}");
            }
            items
        }
    };
    let all = list("").await;
    let ids: Vec<&str> = all
        .iter()
        .map(|i| i["override"]["serviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [two.as_str(), one.as_str()], "{all:?}");
    assert_eq!(all[0]["override"]["notificationsToSend"], "none");
    // The listing reads the log: a cleared override reads back cleared
    // (not as the setting it had before).
    assert_eq!(all[1]["override"]["notificationsToSend"], "default");
    // Unknown parameters are accepted.
    assert_eq!(list("?includeDefaults=true&x=1").await, all);
    let page = list("?limit=1").await;
    assert_eq!(page, all[..1]);
    let (s, v) = app
        .get(
            &format!("/v1/notification-settings/overrides?limit=1&cursor={two}"),
            &alice,
        )
        .await;
    assert_eq!(
        (s, v.as_array().unwrap().as_slice()),
        (StatusCode::OK, &all[1..])
    );
    let (s, v) = app
        .get(
            &format!("/v1/notification-settings/overrides?serviceId={one}"),
            &alice,
        )
        .await;
    assert_eq!(
        (s, v.as_array().unwrap().as_slice()),
        (StatusCode::OK, &all[1..])
    );
    let (s, v) = app
        .get(
            &format!(
                "/v1/notification-settings/overrides?serviceId={one}&serviceId={two}&ownerId={}",
                alice.id
            ),
            &alice,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, Value::Array(all.clone())));
    let other = OwnerId::User(UserId::generate());
    let (s, v) = app
        .get(
            &format!("/v1/notification-settings/overrides?ownerId={other}"),
            &alice,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    for query in ["?limit=0", "?cursor=srv-nope"] {
        let (s, v) = app
            .get(
                &format!("/v1/notification-settings/overrides{query}"),
                &alice,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
    }
    // Another owner lists none of Alice's services.
    let bob = app.owner().await;
    let (s, v) = app.get("/v1/notification-settings/overrides", &bob).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

/// A webhook is only sent signed: a URL without a secret (given now or
/// stored) is a 400 naming `webhookSecret`, never stored to be silently
/// never called; so is removing the secret of a webhook that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_needs_its_secret() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let path = format!("/v1/notification-settings/owners/{}", alice.id);
    let before = app.last_seq().await;
    for body in [
        json!({"webhookUrl": HOOK}),
        json!({"webhookUrl": HOOK, "webhookSecret": ""}),
    ] {
        let (s, v) = app.patch(&path, &alice, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["fields"][0]["field"], "webhookSecret", "{v}");
        assert_no_secret(&v);
    }
    assert_eq!(app.last_seq().await, before, "a refused change appended");

    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"webhookUrl": HOOK, "webhookSecret": SECRET}),
        )
        .await;
    assert_eq!(
        (s, &v["webhookConfigured"]),
        (StatusCode::OK, &json!(true)),
        "{v}"
    );
    // A new URL keeps the stored secret.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"webhookUrl": "http://127.0.0.1:9/other"}),
        )
        .await;
    assert_eq!(
        (s, &v["webhookConfigured"]),
        (StatusCode::OK, &json!(true)),
        "{v}"
    );
    // The secret alone cannot go while the URL stays.
    let (s, v) = app.patch(&path, &alice, json!({"webhookSecret": ""})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Both together remove the webhook.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"webhookUrl": "", "webhookSecret": ""}),
        )
        .await;
    assert_eq!(
        (s, &v["webhookConfigured"]),
        (StatusCode::OK, &json!(false)),
        "{v}"
    );
}

//! An owner's webhooks (Render's webhooks API) end to end: the notifier
//! on a real nats-server posts every event of the types each webhook asks
//! for, in Render's shape, signed with that webhook's secret (verified by
//! PyPI's standardwebhooks); a webhook turned off or deleted gets nothing
//! more; every attempt is recorded with the receiver's answer.

use std::time::Duration;

use anyhow::Result;
use berth_domain::owner::{self, Owner};
use berth_domain::webhook::Settings;
use berth_eventlog::Stamp;
use berth_notifier::notify::{delivery_id, HOOK};
use berth_runtime::{Secret, SecretKey};
use berth_schemas::events::{DeployLive, DeployStarted};
use berth_schemas::ids::{DeployId, OwnerId, WebhookId};
use berth_schemas::model::{seal_context, NotifySetting};
use berth_schemas::{Actor, AggregateId};

use crate::notify::test_options;
use crate::support::*;

/// Adds a webhook to `owner` posting to `url`; returns it and its secret.
async fn add_hook(
    store: &berth_eventlog::EventStore,
    key: &SecretKey,
    owner: &OwnerId,
    url: &str,
    enabled: bool,
    filter: &[&str],
) -> Result<(WebhookId, String)> {
    let id = WebhookId::generate();
    let secret = webhook_secret();
    let seal = |v: &str, field| {
        key.seal(
            &Secret::new(v.to_owned()),
            &seal_context::webhook(owner, &id, field),
        )
    };
    store
        .execute::<Owner>(
            &AggregateId::Owner(owner.clone()),
            &format!("hook:{id}"),
            &Stamp::new(Actor::system("test")),
            owner::Command::CreateWebhook {
                webhook: id.clone(),
                settings: Settings {
                    name: "ci".to_owned(),
                    url: seal(url, "url")?,
                    enabled,
                    event_filter: filter.iter().map(|s| s.to_string()).collect(),
                },
                secret: seal(&secret, "secret")?,
            },
        )
        .await?;
    Ok((id, secret))
}

fn deploy(deploy: &DeployId) -> Vec<berth_schemas::Event> {
    vec![
        DeployStarted {
            deploy: deploy.clone(),
            trigger: None,
        }
        .into(),
        DeployLive {
            deploy: deploy.clone(),
            digest: "sha256:abc".to_owned(),
        }
        .into(),
    ]
}

#[tokio::test]
async fn each_webhook_gets_the_types_it_asks_for_signed_and_every_attempt_is_recorded() -> Result<()>
{
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let http = HttpSink::start(0.0)?;
    // No notification channel: only the webhooks send.
    let owner = owner(store, key, NotifySetting::All, &Channels::default()).await?;
    let (ended, ended_secret) = add_hook(
        store,
        key,
        &owner,
        &http.url("/ended"),
        true,
        &["deploy_ended"],
    )
    .await?;
    let (every, _) = add_hook(store, key, &owner, &http.url("/fail/every"), true, &[]).await?;
    let (off, _) = add_hook(store, key, &owner, &http.url("/off"), false, &[]).await?;
    let (svc, v) = service(store, key, &owner, None).await?;
    let notifier = w.notifier(test_options());

    let d1 = DeployId::generate();
    let v = append(store, &svc, v, deploy(&d1)).await?;
    let got = http
        .wait_for(1, Duration::from_secs(20), |p| p["path"] == "/ended")
        .await?;
    let post = &got[0];
    verify_webhook(&ended_secret, post)?;
    assert!(verify_webhook(&webhook_secret(), post).is_err());
    let body: serde_json::Value = serde_json::from_str(post["body"].as_str().unwrap())?;
    assert_eq!(body["type"], "deploy_ended");
    assert_eq!(body["data"]["serviceId"], svc.as_str());
    assert!(body["data"]["serviceName"]
        .as_str()
        .unwrap()
        .starts_with("svc-"));
    assert_eq!(body["data"]["status"], "succeeded");
    let event_id = body["data"]["id"].as_str().unwrap().to_owned();
    let delivery = delivery_id(&event_id, &format!("{HOOK}{ended}")).unwrap();
    assert_eq!(post["headers"]["webhook-id"], delivery.as_str());

    // The webhook for every type answers 500: both events, each tried
    // until the last attempt (4 in these options), each attempt recorded.
    let failing = http
        .wait_for(8, Duration::from_secs(30), |p| p["path"] == "/fail/every")
        .await?;
    let types: std::collections::BTreeSet<String> = failing
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p["body"].as_str().unwrap()).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        ["deploy_ended", "deploy_started"].map(String::from).into()
    );
    // Each wait four times the one before (200 ms here): 0.2, 0.8, 3.2 s.
    let mut at: Vec<f64> = failing
        .iter()
        .filter(|p| p["body"].as_str().unwrap().contains("deploy_ended"))
        .map(|p| p["at"].as_f64().unwrap())
        .collect();
    at.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.len() == 3 && gaps[0] >= 0.15 && gaps[1] >= 0.7 && gaps[2] >= 3.0,
        "waits between attempts {gaps:?}"
    );
    let sends = store.webhook_sends(&owner, &every).await?;
    assert_eq!(sends.len(), 8, "{sends:?}");
    assert!(sends
        .iter()
        .all(|(_, s)| s.status_code == Some(500) && s.error.is_none()));
    let sends = store.webhook_sends(&owner, &ended).await?;
    assert_eq!(sends.len(), 1, "{sends:?}");
    let (_, s) = &sends[0];
    assert_eq!(
        (s.event_id.as_str(), s.event_type.as_str()),
        (event_id.as_str(), "deploy_ended")
    );
    assert_eq!(
        (s.status_code, s.response_body.as_deref()),
        (Some(200), Some("ok"))
    );
    assert_eq!(s.id, delivery.as_str());

    // Deleted: nothing more to it; the one turned off never got anything.
    store
        .execute::<Owner>(
            &AggregateId::Owner(owner.clone()),
            &format!("delete:{ended}"),
            &Stamp::new(Actor::system("test")),
            owner::Command::DeleteWebhook {
                webhook: ended.clone(),
            },
        )
        .await?;
    append(store, &svc, v, deploy(&DeployId::generate())).await?;
    http.wait_for(16, Duration::from_secs(30), |p| p["path"] == "/fail/every")
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        http.posts()
            .iter()
            .filter(|p| p["path"] == "/ended")
            .count(),
        1
    );
    assert_eq!(
        http.posts().iter().filter(|p| p["path"] == "/off").count(),
        0
    );
    assert!(store.webhook_sends(&owner, &off).await?.is_empty());
    notifier.stop().await
}

//! Notification endpoints on internal addresses (BERTH_ALLOW_TARGETS):
//! Slack and webhook URLs on a loopback sink are refused when loopback is
//! not allowed (nothing reaches the sink; the failed attempt records the
//! typed reason, naming the host only) and delivered when it is; the
//! metadata address is refused even with loopback allowed.

use std::time::Duration;

use anyhow::Result;
use berth_domain::timeline::TimelineEvent;
use berth_notifier::channels::Senders;
use berth_notifier::notify::delivery_id;
use berth_notifier::settings::Channel;
use berth_runtime::{AddressPolicy, Secret};
use berth_schemas::events::DeployFailed;
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployStatus, NotifySetting};
use berth_schemas::{AggregateId, Event};

use crate::notify::test_options;
use crate::support::*;

const REFUSED_LOOPBACK: &str = "webhook host 127.0.0.1 is a loopback address; the operator \
                                has not allowed loopback targets (BERTH_ALLOW_TARGETS)";

fn event() -> TimelineEvent {
    TimelineEvent {
        id: "evt-aaaaaaaaaaaaaaaaaaaa".to_owned(),
        timestamp: chrono::Utc::now(),
        service_id: "srv-aaaaaaaaaaaaaaaaaaaa".to_owned(),
        kind: "deploy_ended".to_owned(),
        details: serde_json::json!({ "status": "update_failed" }),
    }
}

#[tokio::test]
async fn senders_post_to_loopback_only_when_it_is_allowed() -> Result<()> {
    let sink = HttpSink::start(0.0)?;
    let timeout = Duration::from_secs(3);
    let hook = Secret::new(sink.url("/hook"));
    let slack = Secret::new(format!(
        "http://localhost:{}/slack/T000/B000/slacktoken",
        sink.port
    ));

    let strict = Senders::new(None, timeout, AddressPolicy::PUBLIC_ONLY)?;
    let e = strict.webhook(&hook, None, "ntf-1", &event()).await;
    assert_eq!(e.map_err(|e| e.0), Err(REFUSED_LOOPBACK.to_owned()));
    let e = strict.slack(&slack, &event()).await.unwrap_err().0;
    assert!(
        e.starts_with("webhook host localhost resolves only to loopback addresses"),
        "{e}"
    );
    assert!(!e.contains("slacktoken"), "the Slack URL leaked: {e}");

    let local = Senders::new(None, timeout, AddressPolicy::LOOPBACK)?;
    let metadata = Secret::new("http://169.254.169.254/latest/meta-data/".to_owned());
    let e = local.webhook(&metadata, None, "ntf-2", &event()).await;
    let e = e.unwrap_err().0;
    assert!(
        e.starts_with("webhook host 169.254.169.254 is a link-local address"),
        "{e}"
    );
    assert!(sink.posts().is_empty(), "{:?}", sink.posts());

    local.webhook(&hook, None, "ntf-3", &event()).await?;
    local.slack(&slack, &event()).await?;
    assert_eq!(sink.posts().len(), 2, "{:?}", sink.posts());
    Ok(())
}

#[tokio::test]
async fn the_notifier_records_a_refused_webhook_and_sends_nothing() -> Result<()> {
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let sink = HttpSink::start(0.0)?;
    let ch = Channels {
        webhook: Some(sink.url("/hook")),
        ..Channels::default()
    };
    let owner = owner(store, key, NotifySetting::Failure, &ch).await?;
    let (svc, v) = service(store, key, &owner, None).await?;
    let mut opts = test_options();
    opts.targets = AddressPolicy::PUBLIC_ONLY;
    opts.max_attempts = 2;
    let notifier = w.notifier(opts);

    let failed: Event = DeployFailed {
        deploy: DeployId::generate(),
        status: DeployStatus::UpdateFailed,
        reason: "health check never passed".to_owned(),
    }
    .into();
    append(store, &svc, v, vec![failed]).await?;
    let loaded = store.load(&AggregateId::Service(svc.clone())).await?;
    let event_id = loaded.events.last().map(|e| e.id.to_string());
    let delivery = delivery_id(&event_id.unwrap_or_default(), Channel::Webhook.as_str()).unwrap();
    wait_delivery(
        store,
        &delivery,
        Duration::from_secs(20),
        Duration::from_millis(100),
        |evs| evs.contains(&"notification_abandoned"),
    )
    .await?;
    let events = store.load(&AggregateId::Delivery(delivery)).await?.events;
    let errors: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::NotificationAttemptFailed(f) => Some(f.error.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors, [REFUSED_LOOPBACK; 2]);
    assert!(sink.posts().is_empty(), "{:?}", sink.posts());
    notifier.stop().await?;
    Ok(())
}

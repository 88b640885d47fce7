//! `kill -9` of the notifier between sending a webhook and acknowledging it:
//! the notifier runs in a child process (this test binary, one ignored test);
//! the sink answers slowly, so the child is killed while the request is
//! open. A second notifier redelivers with the same `webhook-id` (the
//! documented contract: one delivery, or the same id twice), records one
//! `notification_delivered`, and no secret shows in the child's debug log.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use berth_eventlog::{EventStore, StoreConfig};
use berth_notifier::notify::delivery_id;
use berth_notifier::settings::Channel;
use berth_runtime::SecretKey;
use berth_schemas::events::DeployFailed;
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployStatus, NotifySetting};
use berth_schemas::Subjects;
use berth_tests::eventlog::open_store;
use berth_tests::{init_tracing, NatsServer, NatsVersion};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const URL_ENV: &str = "BERTH_NOTIFIER_TEST_NATS";
const PREFIX_ENV: &str = "BERTH_NOTIFIER_TEST_PREFIX";
const KEY_ENV: &str = "BERTH_NOTIFIER_TEST_KEY";

/// The notifier in the child process; runs until killed.
#[tokio::test]
#[ignore = "started by kill::redelivery_after_kill_9_reuses_the_webhook_id"]
async fn child_notifier() -> Result<()> {
    let (Ok(url), Ok(prefix), Ok(key)) = (
        std::env::var(URL_ENV),
        std::env::var(PREFIX_ENV),
        std::env::var(KEY_ENV),
    ) else {
        return Ok(());
    };
    init_tracing();
    let client = async_nats::connect(url).await?;
    let store = EventStore::open(client, Subjects::new(&prefix)?, StoreConfig::default()).await?;
    let key = SecretKey::from_base64(&key)?;
    berth_notifier::component(store, key, crate::notify::test_options())
        .run(CancellationToken::new(), None)
        .await?;
    Ok(())
}

#[tokio::test]
async fn redelivery_after_kill_9_reuses_the_webhook_id() -> Result<()> {
    init_tracing();
    let nats = NatsServer::start(NatsVersion::Legacy)?;
    let client = nats.connect().await?;
    let store = open_store(&client, 1).await?;
    let key_b64 = SecretKey::generate_base64();
    let key = SecretKey::from_base64(&key_b64)?;
    // Answers /slow/… after 1.5 s: the kill lands while the request is open.
    let http = HttpSink::start(1.5)?;
    let secret = webhook_secret();
    let url_token = "tok-urlsecret-9f8e7d";
    let ch = Channels {
        webhook: Some(http.url(&format!("/slow/hook/{url_token}"))),
        webhook_secret: Some(secret.clone()),
        ..Channels::default()
    };
    let owner = owner(&store, &key, NotifySetting::Failure, &ch).await?;
    let (svc, v) = service(&store, &key, &owner, None).await?;

    let logdir = tempfile::tempdir()?;
    let log_path = logdir.path().join("child.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "kill::child_notifier",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_ENV, nats.url())
        .env(PREFIX_ENV, store.subjects().prefix())
        .env(KEY_ENV, &key_b64)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let mut child = Proc(child);

    append(
        &store,
        &svc,
        v,
        vec![DeployFailed {
            deploy: DeployId::generate(),
            status: DeployStatus::PreDeployFailed,
            reason: "migration exited 1".to_owned(),
        }
        .into()],
    )
    .await?;
    let first = http.wait_for(1, Duration::from_secs(30), |_| true).await?;
    child.0.kill()?; // SIGKILL while the post is unanswered
    child.0.wait()?;
    let webhook_id = first[0]["headers"]["webhook-id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = serde_json::from_str(first[0]["body"].as_str().unwrap())?;
    let d = delivery_id(
        body["data"]["id"].as_str().unwrap(),
        Channel::Webhook.as_str(),
    )
    .unwrap();
    assert_eq!(webhook_id, d.as_str());
    assert_eq!(delivery_events(&store, &d).await?, ["notification_queued"]);

    // A new notifier takes over the unacknowledged delivery.
    let notifier = Running::spawn(&store, &key, crate::notify::test_options());
    let evs = wait_delivery(
        &store,
        &d,
        Duration::from_secs(30),
        Duration::from_millis(200),
        |evs| evs.contains(&"notification_delivered"),
    )
    .await?;
    assert_eq!(evs, ["notification_queued", "notification_delivered"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posts = http.posts();
    // The contract: one delivery, or the same webhook-id twice. The kill
    // came before any answer, so here it is the second case.
    assert_eq!(posts.len(), 2, "{posts:?}");
    for p in &posts {
        assert_eq!(p["headers"]["webhook-id"], webhook_id.as_str());
        verify_webhook(&secret, p)?;
    }
    notifier.stop().await?;

    // The child's debug log names the delivery but holds no secret.
    let text = std::fs::read_to_string(&log_path)?;
    assert!(text.contains(d.as_str()), "the child did not log: {text}");
    for s in [
        secret.trim_start_matches("whsec_"),
        url_token,
        "hook-secret-value",
    ] {
        assert!(!text.contains(s), "secret {s} in the notifier's log");
    }
    Ok(())
}

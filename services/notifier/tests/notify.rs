//! Notifications end to end: the notifier component on a real nats-server
//! sends to aiosmtpd, and to an HTTP sink as Slack and as a signed webhook
//! (verified by PyPI's standardwebhooks); settings `none`/`failure`/`all`
//! with the service override winning; a dead endpoint delays nobody else;
//! no secret in any payload or event.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_notifier::notify::delivery_id;
use berth_notifier::settings::Channel;
use berth_notifier::NotifierOptions;
use berth_schemas::events::{
    CronJobRunEnded, DeployFailed, DeployLive, DeployStarted, ImagePullFailed, JobEnded,
};
use berth_schemas::ids::{CronRunId, DeployId, JobId};
use berth_schemas::model::{DeployStatus, NotifySetting, PullFailureReason};
use berth_schemas::Event;

use crate::support::*;

/// How often a test re-reads a delivery's events.
const POLL: Duration = Duration::from_millis(100);

pub fn test_options() -> NotifierOptions {
    NotifierOptions {
        ack_wait: Duration::from_secs(2),
        retry_delay: Duration::from_millis(200),
        send_timeout: Duration::from_secs(3),
        max_attempts: 4,
        ..NotifierOptions::default()
    }
}

fn failed(deploy: &DeployId) -> Event {
    DeployFailed {
        deploy: deploy.clone(),
        status: DeployStatus::UpdateFailed,
        reason: "health check never passed".to_owned(),
    }
    .into()
}

fn live(deploy: &DeployId) -> Event {
    DeployLive {
        deploy: deploy.clone(),
        digest: "sha256:abc".to_owned(),
    }
    .into()
}

#[tokio::test]
async fn every_channel_delivers_once_signed_and_without_secrets() -> Result<()> {
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let smtp = SmtpSink::start()?;
    let http = HttpSink::start(0.0)?;
    let secret = webhook_secret();
    let slack_token = "T000/B000/slacktokenvalue123";
    let ch = Channels {
        email: Some("ops@example.com".to_owned()),
        slack: Some(http.url(&format!("/slack/{slack_token}"))),
        webhook: Some(http.url("/hook")),
        webhook_secret: Some(secret.clone()),
    };
    let owner = owner(store, key, NotifySetting::Failure, &ch).await?;
    let (svc, v) = service(store, key, &owner, None).await?;

    let mut opts = test_options();
    opts.smtp = Some(berth_notifier::channels::SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: smtp.port,
        from: "berth@example.com".to_owned(),
        username: None,
        password: None,
    });
    let notifier = w.notifier(opts);

    let deploy = DeployId::generate();
    let pull_failed: Event = ImagePullFailed {
        deploy: Some(deploy.clone()),
        node: None,
        image: "registry.example/app:2".to_owned(),
        reason: PullFailureReason::ImageNotFound,
        message: "manifest unknown".to_owned(),
    }
    .into();
    let t0 = std::time::Instant::now();
    append(
        store,
        &svc,
        v,
        vec![
            DeployStarted {
                deploy: deploy.clone(),
                trigger: None,
            }
            .into(),
            pull_failed,
        ],
    )
    .await?;

    let mails = smtp.wait_for(1, Duration::from_secs(20)).await?;
    let slack = http
        .wait_for(1, Duration::from_secs(20), |p| {
            p["path"].as_str().unwrap().starts_with("/slack")
        })
        .await?;
    let hooks = http
        .wait_for(1, Duration::from_secs(20), |p| p["path"] == "/hook")
        .await?;
    eprintln!(
        "measured: event appended -> email, Slack and webhook all received in {:?}",
        t0.elapsed()
    );

    // Email: to the owner, about the pull failure of this service.
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("ops@example.com"), "{}", mails[0]);
    assert!(mails[0].contains(svc.as_str()));
    assert!(mails[0].contains("image_pull_failed"));
    // Slack: incoming-webhook JSON with a text.
    let body: serde_json::Value = serde_json::from_str(slack[0]["body"].as_str().unwrap())?;
    assert!(body["text"].as_str().unwrap().contains("image_pull_failed"));
    // Webhook: Standard-Webhooks headers, verified independently; id = delivery id.
    let hook = &hooks[0];
    verify_webhook(&secret, hook)?;
    let wrong = webhook_secret();
    assert!(
        verify_webhook(&wrong, hook).is_err(),
        "a wrong secret must not verify"
    );
    let body: serde_json::Value = serde_json::from_str(hook["body"].as_str().unwrap())?;
    assert_eq!(body["type"], "image_pull_failed");
    assert_eq!(body["data"]["serviceId"], svc.as_str());
    assert_eq!(
        body["data"]["details"]["imageURL"],
        "registry.example/app:2"
    );
    assert_eq!(body["data"]["details"]["pullFailure"], "image_not_found");
    let event_id = body["data"]["id"].as_str().unwrap().to_owned();
    let expected = delivery_id(&event_id, Channel::Webhook.as_str()).unwrap();
    assert_eq!(hook["headers"]["webhook-id"], expected.as_str());

    // Outcomes recorded on each delivery aggregate.
    for ch in [Channel::Email, Channel::Slack, Channel::Webhook] {
        let d = delivery_id(&event_id, ch.as_str()).unwrap();
        wait_delivery(store, &d, Duration::from_secs(10), POLL, |evs| {
            evs == ["notification_queued", "notification_delivered"]
        })
        .await
        .with_context(|| format!("{ch:?}"))?;
    }
    // Exactly one of each, also after a while (no duplicate sends).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(http.posts().len(), 2, "{:?}", http.posts());

    // No secret anywhere: captured payloads, emails, and the whole log.
    let log = String::from_utf8_lossy(&all_log_bytes(store).await?).into_owned();
    // The slack token is in the URL the sink was posted to (that is the
    // channel itself), never in a body or header.
    let bodies: String = http
        .posts()
        .iter()
        .map(|p| format!("{}{}", p["body"], p["headers"]))
        .collect();
    let mails = smtp.mails().concat();
    assert!(!bodies.is_empty() && !mails.is_empty() && !log.is_empty());
    let secret_body = secret.trim_start_matches("whsec_");
    for s in [secret_body, slack_token, "hook-secret-value"] {
        assert!(!bodies.contains(s), "secret {s} in a post");
        assert!(!mails.contains(s), "secret {s} in an email");
        assert!(!log.contains(s), "secret {s} in the log");
    }

    notifier.stop().await?;
    Ok(())
}

#[tokio::test]
async fn settings_none_failure_all_and_the_override_wins() -> Result<()> {
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let http = HttpSink::start(0.0)?;
    let ch = Channels {
        webhook: Some(http.url("/hook")),
        webhook_secret: Some(webhook_secret()),
        ..Channels::default()
    };
    let failure_owner = owner(store, key, NotifySetting::Failure, &ch).await?;
    let none_owner = owner(store, key, NotifySetting::None, &ch).await?;
    let all_owner = owner(store, key, NotifySetting::All, &ch).await?;

    // (owner, override) → which of (live, failed, cron failed, cron ok,
    // job failed, job ok; a canceled job never) notify.
    let cases = [
        (&failure_owner, None, "F-default"),
        (&failure_owner, Some(NotifySetting::All), "F-all"),
        (&failure_owner, Some(NotifySetting::None), "F-none"),
        (&none_owner, None, "N-default"),
        (&none_owner, Some(NotifySetting::Failure), "N-failure"),
        (&all_owner, None, "A-default"),
        (&all_owner, Some(NotifySetting::Failure), "A-failure"),
    ];
    let mut expected = BTreeSet::new();
    let mut names = std::collections::HashMap::new();
    let mut services = Vec::new();
    for (owner, over, name) in cases {
        let (svc, v) = service(store, key, owner, over).await?;
        names.insert(svc.to_string(), name);
        let effective = over.unwrap_or(if owner == &failure_owner {
            NotifySetting::Failure
        } else if owner == &none_owner {
            NotifySetting::None
        } else {
            NotifySetting::All
        });
        match effective {
            NotifySetting::All => {
                for t in [
                    "live",
                    "update_failed",
                    "cron_failed",
                    "cron_succeeded",
                    "job_failed",
                    "job_succeeded",
                ] {
                    expected.insert((name, t));
                }
            }
            NotifySetting::Failure => {
                expected.insert((name, "update_failed"));
                expected.insert((name, "cron_failed"));
                expected.insert((name, "job_failed"));
            }
            NotifySetting::None => {}
        }
        services.push((svc, v));
    }
    let notifier = w.notifier(test_options());
    for (svc, v) in &services {
        let (d1, d2) = (DeployId::generate(), DeployId::generate());
        let cron = |status: &str| -> Event {
            CronJobRunEnded {
                run: CronRunId::generate(),
                status: status.to_owned(),
                exit_code: Some(if status == "failed" { 1 } else { 0 }),
                reason: None,
            }
            .into()
        };
        let job = |status: &str| -> Event {
            JobEnded {
                job: JobId::generate(),
                status: status.to_owned(),
                exit_code: None,
                reason: (status == "failed").then(|| "out of memory".to_owned()),
            }
            .into()
        };
        append(
            store,
            svc,
            *v,
            vec![
                live(&d1),
                failed(&d2),
                cron("failed"),
                cron("succeeded"),
                job("failed"),
                job("succeeded"),
                job("canceled"),
            ],
        )
        .await?;
    }
    let posts = http
        .wait_for(expected.len(), Duration::from_secs(30), |_| true)
        .await?;
    // Let anything unexpected arrive too before judging.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posts = if http.posts().len() > posts.len() {
        http.posts()
    } else {
        posts
    };
    let got: BTreeSet<(&str, &str)> = posts
        .iter()
        .map(|p| {
            let body: serde_json::Value =
                serde_json::from_str(p["body"].as_str().unwrap()).unwrap();
            let name = names[body["data"]["serviceId"].as_str().unwrap()];
            let details = &body["data"]["details"];
            let status = details["finalStatus"]
                .as_str()
                .or_else(|| details["runStatus"].as_str())
                .or_else(|| details["status"].as_str())
                .unwrap()
                .to_owned();
            let what = match (body["type"].as_str().unwrap(), status.as_str()) {
                ("deploy_ended", "live") => "live",
                ("deploy_ended", "update_failed") => "update_failed",
                ("cron_job_run_ended", "failed") => "cron_failed",
                ("cron_job_run_ended", "succeeded") => "cron_succeeded",
                ("job_run_ended", "failed") => "job_failed",
                ("job_run_ended", "succeeded") => "job_succeeded",
                other => panic!("unexpected notification {other:?}"),
            };
            (name, what)
        })
        .collect();
    assert_eq!(posts.len(), expected.len(), "one post per notification");
    assert_eq!(got, expected);

    notifier.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_endpoint_delays_no_other_delivery() -> Result<()> {
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let http = HttpSink::start(0.0)?;
    // Owner A's webhook hangs; owner B's and A's Slack answer at once.
    let a = owner(
        store,
        key,
        NotifySetting::Failure,
        &Channels {
            webhook: Some(http.url("/hang/a")),
            slack: Some(http.url("/slack/a")),
            ..Channels::default()
        },
    )
    .await?;
    let b = owner(
        store,
        key,
        NotifySetting::Failure,
        &Channels {
            webhook: Some(http.url("/hook/b")),
            ..Channels::default()
        },
    )
    .await?;
    let (sa, va) = service(store, key, &a, None).await?;
    let (sb, vb) = service(store, key, &b, None).await?;
    let notifier = w.notifier(test_options());
    // Several failures on A first, so its hanging deliveries are in flight.
    let mut failures = Vec::new();
    for _ in 0..5 {
        failures.push(failed(&DeployId::generate()));
    }
    append(store, &sa, va, failures).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = std::time::Instant::now();
    append(store, &sb, vb, vec![failed(&DeployId::generate())]).await?;
    http.wait_for(1, Duration::from_secs(10), |p| p["path"] == "/hook/b")
        .await?;
    let took = t0.elapsed();
    eprintln!("measured: B's webhook {took:?} after its event, with A's endpoint hanging");
    assert!(
        took < Duration::from_secs(2),
        "B waited {took:?} behind A's dead endpoint"
    );
    http.wait_for(5, Duration::from_secs(10), |p| p["path"] == "/slack/a")
        .await?;
    // A's webhook deliveries record failed attempts (timeouts) and go on retrying.
    let hung = http.posts();
    let hung: Vec<_> = hung.iter().filter(|p| p["path"] == "/hang/a").collect();
    assert!(!hung.is_empty());
    let body: serde_json::Value = serde_json::from_str(hung[0]["body"].as_str().unwrap())?;
    let d = delivery_id(
        body["data"]["id"].as_str().unwrap(),
        Channel::Webhook.as_str(),
    )
    .unwrap();
    let evs = wait_delivery(store, &d, Duration::from_secs(15), POLL, |evs| {
        evs.contains(&"notification_attempt_failed")
    })
    .await?;
    assert!(!evs.contains(&"notification_delivered"), "{evs:?}");
    notifier.stop().await?;
    Ok(())
}

#[tokio::test]
async fn failed_attempts_retry_with_the_same_id_and_growing_delays_then_abandon() -> Result<()> {
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let http = HttpSink::start(0.0)?;
    let secret = webhook_secret();
    // One owner whose webhook always fails, one whose webhook fails twice.
    let mk = |path: &str| Channels {
        webhook: Some(http.url(path)),
        webhook_secret: Some(secret.clone()),
        ..Channels::default()
    };
    let dead = owner(store, key, NotifySetting::Failure, &mk("/fail/x")).await?;
    let flaky = owner(store, key, NotifySetting::Failure, &mk("/flaky/y")).await?;
    let (sd, vd) = service(store, key, &dead, None).await?;
    let (sf, vf) = service(store, key, &flaky, None).await?;
    let notifier = w.notifier(test_options());
    append(store, &sd, vd, vec![failed(&DeployId::generate())]).await?;
    append(store, &sf, vf, vec![failed(&DeployId::generate())]).await?;

    // test_options: 4 attempts, retry delay 200 ms × attempt.
    let fails = http
        .wait_for(4, Duration::from_secs(20), |p| p["path"] == "/fail/x")
        .await?;
    let flakes = http
        .wait_for(3, Duration::from_secs(20), |p| p["path"] == "/flaky/y")
        .await?;
    for posts in [&fails, &flakes] {
        let id = &posts[0]["headers"]["webhook-id"];
        assert!(posts.iter().all(|p| &p["headers"]["webhook-id"] == id));
        for p in posts.iter() {
            verify_webhook(&secret, p)?;
        }
    }
    let at: Vec<f64> = fails.iter().map(|p| p["at"].as_f64().unwrap()).collect();
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("measured: retry gaps {gaps:?} s (200 ms × attempt)");
    assert!(
        gaps[0] >= 0.15 && gaps[1] >= 0.35 && gaps[2] >= 0.55,
        "{gaps:?}"
    );
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");

    let id_of = |p: &serde_json::Value| {
        let body: serde_json::Value = serde_json::from_str(p["body"].as_str().unwrap()).unwrap();
        delivery_id(
            body["data"]["id"].as_str().unwrap(),
            Channel::Webhook.as_str(),
        )
        .unwrap()
    };
    let (d_dead, d_flaky) = (id_of(&fails[0]), id_of(&flakes[0]));
    let a = wait_delivery(store, &d_dead, Duration::from_secs(10), POLL, |evs| {
        evs.last() == Some(&"notification_abandoned")
    })
    .await?;
    let b = wait_delivery(store, &d_flaky, Duration::from_secs(10), POLL, |evs| {
        evs.last() == Some(&"notification_delivered")
    })
    .await?;
    let f = "notification_attempt_failed";
    assert_eq!(
        a,
        ["notification_queued", f, f, f, f, "notification_abandoned"]
    );
    assert_eq!(b, ["notification_queued", f, f, "notification_delivered"]);
    // Abandoned means abandoned: no fifth attempt.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = http
        .posts()
        .iter()
        .filter(|p| p["path"] == "/fail/x")
        .count();
    assert_eq!(n, 4);
    notifier.stop().await?;
    Ok(())
}

/// A notifier (a new process: nothing read yet) reading a copy of the log
/// that is behind the service's creation decides a failure of that
/// service once the copy catches up, rather than dropping it as a failure
/// of a service with no owner.
#[tokio::test]
async fn a_failure_read_from_a_copy_that_is_behind_is_notified_once_it_catches_up() -> Result<()> {
    use berth_tests::behind::{lagging_store, BehindCopy};
    let w = World::start().await?;
    let (store, key) = (&w.store, &w.key);
    let http = HttpSink::start(0.0)?;
    let secret = webhook_secret();
    let lagging = lagging_store(&w.nats.url(), store.subjects()).await;
    let copy = BehindCopy::start(&w.nats.url(), store.subjects()).await;
    let channels = Channels {
        webhook: Some(http.url("/hook")),
        webhook_secret: Some(secret.clone()),
        ..Channels::default()
    };
    let alice = owner(store, key, NotifySetting::Failure, &channels).await?;
    let (svc, v) = service(store, key, &alice, None).await?;
    let notifier = Running::spawn(&lagging, key, test_options());
    append(store, &svc, v, vec![failed(&DeployId::generate())]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        http.posts().is_empty(),
        "sent while the copy has no such service"
    );
    copy.catch_up();
    let posts = http
        .wait_for(1, Duration::from_secs(30), |p| p["path"] == "/hook")
        .await?;
    verify_webhook(&secret, &posts[0])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(http.posts().len(), 1, "notified once");
    notifier.stop().await?;
    copy.stop().await;
    Ok(())
}

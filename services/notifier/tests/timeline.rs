//! The timeline: log events become Render's types in order, the read model
//! answers type/time filters and pages, and the integration stream carries
//! the same JSON on `<prefix>.events.<service>`, published again (same ids)
//! after a restart rather than skipped.

use std::time::Duration;

use anyhow::Result;
use berth_domain::timeline::{Answer, Entry, Page, Query, Timeline, TimelineEvent, UnknownCursor};
use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_schemas::events::CancelReason;
use berth_schemas::events::{
    CronJobRunEnded, CronJobRunStarted, DeployCanceled, DeployCreated, DeployFailed, DeployLive,
    DeployStarted, ImagePullFailed, InstanceCountChanged, InstanceScheduled, PreDeployEnded,
    PreDeployStarted, RollbackTargetMissing, ServerFailed, ServerRestarted,
};
use berth_schemas::ids::{CronRunId, DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::model::{DeployStatus, DeployTrigger, NotifySetting, PullFailureReason};
use berth_schemas::{Envelope, Event};
use futures::StreamExt;

use crate::support::*;

/// The timeline folded on its own, as the API folds it into its index.
#[derive(Debug, Default)]
struct Folded(Timeline);

impl Projection for Folded {
    type Snapshot = Timeline;

    fn apply(&mut self, stream_seq: u64, env: &Envelope) {
        self.0.push(stream_seq, env);
    }

    fn snapshot(&self) -> Timeline {
        self.0.clone()
    }

    fn restore(&mut self, snapshot: Timeline) {
        self.0 = snapshot;
    }
}

/// Held entries with their details, read from the log as the API reads them.
async fn shown(store: &EventStore, entries: &[Entry]) -> Result<Vec<TimelineEvent>> {
    let mut out = Vec::new();
    for e in entries {
        let commit = store.get_commit(e.seq).await?;
        out.push(
            e.event(&commit.events)
                .expect("the entry's commit holds its event"),
        );
    }
    Ok(out)
}

async fn query(
    timeline: &std::sync::RwLock<Folded>,
    store: &EventStore,
    service: &ServiceId,
    q: &Query,
) -> Result<Result<Page, UnknownCursor>> {
    let answer = timeline.read().unwrap().0.answer(service, q);
    Ok(match answer {
        Ok(Answer::Page(p)) => Ok(Page {
            events: shown(store, &p.entries).await?,
            next_cursor: p.next_cursor,
        }),
        Ok(Answer::NeedsHistory) => panic!("a short timeline is held whole"),
        Err(e) => Err(e),
    })
}

fn history() -> (Vec<Event>, Vec<(&'static str, Option<&'static str>)>) {
    let (d1, d2, d3) = (
        DeployId::generate(),
        DeployId::generate(),
        DeployId::generate(),
    );
    let (i1, n1) = (InstanceId::generate(), NodeId::generate());
    let run = CronRunId::generate();
    let events: Vec<Event> = vec![
        DeployCreated {
            deploy: d1.clone(),
            trigger: DeployTrigger::Api,
            image: "app:1".to_owned(),
            credential: None,
            rollback_of: None,
        }
        .into(),
        DeployStarted {
            deploy: d1.clone(),
            trigger: None,
        }
        .into(),
        PreDeployStarted { deploy: d1.clone() }.into(),
        PreDeployEnded {
            deploy: d1.clone(),
            success: true,
            exit_code: Some(0),
            reason: None,
        }
        .into(),
        InstanceScheduled {
            instance: i1.clone(),
            deploy: d1.clone(),
            node: n1.clone(),
            digest: "sha256:1".to_owned(),
        }
        .into(),
        DeployLive {
            deploy: d1.clone(),
            digest: "sha256:1".to_owned(),
        }
        .into(),
        InstanceCountChanged { from: 1, to: 3 }.into(),
        ServerRestarted {
            instance: i1.clone(),
            attempt: 1,
        }
        .into(),
        ServerFailed {
            node: n1.clone(),
            instances: vec![i1.clone()],
        }
        .into(),
        DeployStarted {
            deploy: d2.clone(),
            trigger: None,
        }
        .into(),
        ImagePullFailed {
            deploy: Some(d2.clone()),
            node: None,
            image: "app:2".to_owned(),
            reason: PullFailureReason::Unauthorized,
            message: "401".to_owned(),
        }
        .into(),
        DeployFailed {
            deploy: d2.clone(),
            status: DeployStatus::UpdateFailed,
            reason: "image".to_owned(),
        }
        .into(),
        DeployCanceled {
            deploy: d3.clone(),
            reason: CancelReason::Explicit,
            by: None,
        }
        .into(),
        RollbackTargetMissing {
            deploy: d1.clone(),
            digest: "sha256:1".to_owned(),
        }
        .into(),
        CronJobRunStarted {
            run: run.clone(),
            digest: "sha256:1".to_owned(),
            manual: true,
        }
        .into(),
        CronJobRunEnded {
            run,
            status: "timed_out".to_owned(),
            exit_code: None,
            reason: None,
        }
        .into(),
    ];
    let expected = vec![
        ("deploy_started", None),
        ("pre_deploy_started", None),
        ("pre_deploy_ended", Some("succeeded")),
        ("deploy_ended", Some("live")),
        ("instance_count_changed", None),
        ("server_restarted", None),
        ("server_failed", None),
        ("deploy_started", None),
        ("image_pull_failed", None),
        ("deploy_ended", Some("update_failed")),
        ("deploy_ended", Some("canceled")),
        ("rollback_target_missing", None),
        ("cron_job_run_started", None),
        ("cron_job_run_ended", Some("timed_out")),
    ];
    (events, expected)
}

fn shape(events: &[TimelineEvent]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|t| {
            (
                t.kind.clone(),
                t.outcome()
                    .or_else(|| t.details["preDeployStatus"].as_str())
                    .map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn timeline_in_order_with_filters_and_on_the_integration_stream() -> Result<()> {
    let w = World::start().await?;
    let (client, store, key) = (&w.client, &w.store, &w.key);
    let owner = owner(store, key, NotifySetting::None, &Channels::default()).await?;
    let (svc, v) = service(store, key, &owner, None).await?;
    let (other, ov) = service(store, key, &owner, None).await?;
    let mut sub = client
        .subscribe(format!("{}.events.>", store.subjects().prefix()))
        .await?;
    client.flush().await?;

    let (events, expected) = history();
    let expected: Vec<(String, Option<String>)> = expected
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s.map(str::to_owned)))
        .collect();
    append(store, &svc, v, events).await?;
    append(
        store,
        &other,
        ov,
        vec![InstanceCountChanged { from: 1, to: 2 }.into()],
    )
    .await?;

    // The read model.
    let mut runner = ProjectionRunner::new(store, Folded::default(), ProjectionOptions::default());
    runner.catch_up().await?;
    let timeline = runner.state();
    let held = timeline.read().unwrap().0.all(&svc);
    let all = shown(store, &held).await?;
    assert_eq!(shape(&all), expected);
    assert!(all
        .iter()
        .all(|t| t.id.starts_with("evt-") && t.service_id == svc.as_str()));
    assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    let pull = all.iter().find(|t| t.kind == "image_pull_failed").unwrap();
    assert_eq!(pull.details["imageURL"], "app:2");
    assert_eq!(pull.details["pullFailure"], "unauthorized");
    assert_eq!(pull.details["message"], "401");
    let json = serde_json::to_value(pull)?;
    for field in ["id", "timestamp", "serviceId", "type", "details"] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }

    // Type filter, newest first, pages with a cursor.
    let q = Query {
        types: ["deploy_ended".to_owned()].into(),
        limit: Some(2),
        ..Query::default()
    };
    let p1 = query(&timeline, store, &svc, &q).await??;
    assert_eq!(
        shape(&p1.events),
        vec![
            ("deploy_ended".to_owned(), Some("canceled".to_owned())),
            ("deploy_ended".to_owned(), Some("update_failed".to_owned()))
        ]
    );
    let p2 = query(
        &timeline,
        store,
        &svc,
        &Query {
            cursor: p1.next_cursor.clone(),
            ..q.clone()
        },
    )
    .await??;
    assert_eq!(
        shape(&p2.events),
        vec![("deploy_ended".to_owned(), Some("live".to_owned()))]
    );
    assert_eq!(p2.next_cursor, None);
    // Time range: only what happened after the 10th event.
    let cut = all[9].timestamp;
    let later = query(
        &timeline,
        store,
        &svc,
        &Query {
            start_time: Some(cut),
            limit: Some(100),
            ..Query::default()
        },
    )
    .await??;
    assert!(later.events.iter().all(|t| t.timestamp >= cut));
    assert!(later.events.len() >= 4 && later.events.len() < all.len());
    let empty = query(
        &timeline,
        store,
        &svc,
        &Query {
            end_time: Some(all[0].timestamp - chrono::Duration::seconds(1)),
            ..Query::default()
        },
    )
    .await??;
    assert!(empty.events.is_empty());
    // A cursor that is not an entry of this timeline is refused.
    let unknown = query(
        &timeline,
        store,
        &svc,
        &Query {
            cursor: Some("evt-aaaaaaaaaaaaaaaaaaaa".to_owned()),
            ..Query::default()
        },
    )
    .await?;
    assert!(unknown.is_err());
    // The other service's timeline is its own.
    assert_eq!(timeline.read().unwrap().0.all(&other).len(), 1);

    // The integration stream carries the same JSON, per service subject, in order.
    let notifier = w.notifier(crate::notify::test_options());
    let mut got = Vec::new();
    let mut subjects = Vec::new();
    while got.len() < all.len() + 1 {
        let msg = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await?
            .unwrap();
        subjects.push(msg.subject.to_string());
        got.push(serde_json::from_slice::<TimelineEvent>(&msg.payload)?);
    }
    let mine: Vec<TimelineEvent> = got
        .iter()
        .filter(|t| t.service_id == svc.as_str())
        .cloned()
        .collect();
    assert_eq!(mine, all);
    let want = store.subjects().service_events(&owner, &svc);
    assert_eq!(subjects.iter().filter(|s| **s == want).count(), all.len());
    notifier.stop().await?;
    // Nothing more than once while running.
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn the_integration_stream_resumes_after_a_restart_without_loss() -> Result<()> {
    let w = World::start().await?;
    let (client, store, key) = (&w.client, &w.store, &w.key);
    let owner = owner(store, key, NotifySetting::None, &Channels::default()).await?;
    let (svc, mut v) = service(store, key, &owner, None).await?;
    let mut sub = client
        .subscribe(store.subjects().service_events(&owner, &svc))
        .await?;
    client.flush().await?;
    let start = || w.notifier(crate::notify::test_options());
    let counts = |from: u32| -> Vec<Event> {
        (from..from + 3)
            .map(|n| InstanceCountChanged { from: n, to: n + 1 }.into())
            .collect()
    };
    let mut recv = async |n: usize| -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(15), sub.next())
                .await?
                .unwrap();
            let t: TimelineEvent = serde_json::from_slice(&m.payload)?;
            out.push(t.details["fromInstances"].as_u64().unwrap());
        }
        Ok(out)
    };

    let notifier = start();
    v = append(store, &svc, v, counts(1)).await?;
    assert_eq!(recv(3).await?, [1, 2, 3]);
    notifier.stop().await?;
    // Written while no notifier runs: published once it is back, in order,
    // and nothing from before is sent again after a clean stop.
    append(store, &svc, v, counts(4)).await?;
    let notifier = start();
    assert_eq!(recv(3).await?, [4, 5, 6]);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sub.next())
            .await
            .is_err(),
        "republished after a clean restart"
    );
    notifier.stop().await?;
    Ok(())
}

/// A notifier that remembers no owners (a new process) reads a copy of
/// the log that is behind the service's creation (a server that rejoined
/// after a partition): the service's events wait for the copy, rather than
/// being dropped as a service "with no owner in the log".
#[tokio::test]
async fn a_notifier_reading_a_copy_that_is_behind_publishes_once_it_catches_up() -> Result<()> {
    use berth_tests::behind::{lagging_store, BehindCopy};
    let w = World::start().await?;
    let (client, store, key) = (&w.client, &w.store, &w.key);
    let lagging = lagging_store(&w.nats.url(), store.subjects()).await;
    let copy = BehindCopy::start(&w.nats.url(), store.subjects()).await;
    let owner = owner(store, key, NotifySetting::None, &Channels::default()).await?;
    let (svc, v) = service(store, key, &owner, None).await?;
    let mut sub = client
        .subscribe(store.subjects().service_events(&owner, &svc))
        .await?;
    client.flush().await?;
    let count =
        |from: u32| -> Vec<Event> { vec![InstanceCountChanged { from, to: from + 1 }.into()] };
    // A notifier on the log itself publishes what there is.
    let first = w.notifier(crate::notify::test_options());
    let v = append(store, &svc, v, count(0)).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await?
            .unwrap();
        let t: TimelineEvent = serde_json::from_slice(&m.payload)?;
        if t.details["toInstances"].as_u64() == Some(1) {
            break;
        }
    }
    first.stop().await?;
    // A new one, on the copy: the next event's owner is not in its commit.
    let second = Running::spawn(&lagging, key, crate::notify::test_options());
    append(store, &svc, v, count(1)).await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), sub.next())
            .await
            .is_err(),
        "published while the copy has no such service"
    );
    copy.catch_up();
    let m = tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await?
        .unwrap();
    let t: TimelineEvent = serde_json::from_slice(&m.payload)?;
    assert_eq!(t.details["toInstances"].as_u64(), Some(2), "{t:?}");
    second.stop().await?;
    copy.stop().await;
    Ok(())
}

//! A deploy whose new instances never pass their health check ends
//! `update_failed` when the readiness window closes, or sooner when they
//! keep exiting; the live deploy keeps serving and the failed deploy's
//! instances are removed.

use std::time::Duration;

use berth_domain::service::{self, Command, ServiceState};
use berth_schemas::events::{DeployFailed, ServiceSettings};
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::logs::LogLine;
use berth_schemas::model::{DeployStatus, ServiceType};
use berth_schemas::{Envelope, Event};

use berth_tests::scheduler::{scheduler_options, types, World};

/// Updates `svc`'s custom command to `command` (a new deploy) and waits up
/// to a minute for that deploy to fail: the deploy, the service's events
/// then, and the failure.
async fn update_until_failed(
    w: &World,
    svc: &ServiceId,
    command: &str,
) -> (DeployId, Vec<Envelope>, DeployFailed) {
    let deploy = DeployId::generate();
    let settings = ServiceSettings {
        docker_command: Some(Some(command.into())),
        ..ServiceSettings::default()
    };
    let update = Command::Update {
        settings: Box::new(settings),
        deploy: deploy.clone(),
    };
    w.command(svc, update).await;
    let (ev, failed) = w.wait_failed(svc, &deploy, Duration::from_secs(60)).await;
    (deploy, ev, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_instances_that_never_get_healthy_fail_the_update_and_the_live_deploy_serves_on() {
    let w = World::start().await;
    let _n1 = w.start_node("n1").await;
    let _n2 = w.start_node("n2").await;
    let mut opts = scheduler_options();
    opts.readiness_window = Duration::from_secs(4);
    let _scheduler = w.start_scheduler_with(opts).await;
    let (svc, d1) = w.create(ServiceType::WebService, |_| {}).await;
    w.wait_live(&svc, &d1).await;
    let serving: Vec<_> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(serving.len(), 1);

    // The new command never listens on $PORT: its health check never passes.
    let (d2, ev, failed) = update_until_failed(&w, &svc, "sleep 600").await;
    let t = types(&ev);
    assert_eq!(failed.status, DeployStatus::UpdateFailed, "{t:?}");
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, Event::UpdateStarted(u) if u.deploy == d2)),
        "{t:?}"
    );
    // The failed deploy did get instances, so their removal below is checked.
    assert!(
        ev.iter()
            .any(|e| matches!(&e.event, Event::InstanceScheduled(i) if i.deploy == d2)),
        "{t:?}"
    );

    // The live deploy is still d1 with its instance, and only it remains.
    let state = |ev: &[Envelope]| ev.iter().fold(ServiceState::default(), service::fold);
    let s = state(
        &w.wait_events(
            &svc,
            Duration::from_secs(30),
            "failed instances gone",
            |ev| state(ev).instances.iter().all(|i| i.deploy == d1),
        )
        .await,
    );
    assert_eq!(s.live.as_ref(), Some(&d1), "{t:?}");
    let now: Vec<_> = s.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(now, serving, "the live deploy's instance was touched");
    assert!(s.instances.iter().all(|i| i.is_healthy()));
}

/// A new command that exits at once fails its deploy as soon as its
/// instance has exited a few times (within the minute waited here, with a
/// ten-minute readiness window), saying how it ended; the live deploy
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_instances_that_keep_exiting_fail_the_update_without_waiting_out_the_window() {
    let w = World::start().await;
    let _n1 = w.start_node("n1").await;
    let mut opts = scheduler_options();
    opts.readiness_window = Duration::from_secs(600);
    let _scheduler = w.start_scheduler_with(opts).await;
    let mut logs = w
        .store
        .client()
        .subscribe(w.store.subjects().logs_all())
        .await
        .unwrap();
    let (svc, d1) = w.create(ServiceType::WebService, |_| {}).await;
    w.wait_live(&svc, &d1).await;

    let (d2, ev, failed) = update_until_failed(&w, &svc, "sh -c 'echo starting; exit 3'").await;
    assert_eq!(failed.status, DeployStatus::UpdateFailed);
    assert!(
        failed
            .reason
            .contains("exited 3 times without passing its health check")
            && failed.reason.ends_with("exited with status 3"),
        "{}",
        failed.reason
    );
    let s = ev.iter().fold(ServiceState::default(), service::fold);
    assert_eq!(s.live.as_ref(), Some(&d1));

    // The service's logs say each deploy's outcome once, as lines of no
    // instance (its instances' lines keep theirs).
    let digest = ev
        .iter()
        .find_map(|e| match &e.event {
            Event::DeployLive(l) if l.deploy == d1 => Some(l.digest.clone()),
            _ => None,
        })
        .unwrap();
    let mut deploy_lines = Vec::new();
    let mut instance_lines = 0;
    let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(m)) =
        tokio::time::timeout_at(quiet, futures::StreamExt::next(&mut logs)).await
    {
        let line: LogLine = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(line.service, svc);
        match line.instance {
            None => deploy_lines.push(line.line),
            Some(_) => instance_lines += 1,
        }
    }
    assert_eq!(
        deploy_lines,
        [
            format!(
                "==> Your service is live 🎉 (deploy {d1}, {})",
                &digest[..19]
            ),
            format!("==> Deploy {d2} failed (update_failed): {}", failed.reason),
        ]
    );
    assert!(instance_lines > 0);
}

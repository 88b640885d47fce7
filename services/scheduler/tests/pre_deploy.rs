//! Pre-deploy commands: run once on a node before the update starts; a
//! failing one ends the deploy `pre_deploy_failed` and the live deploy's
//! instances keep running.

use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployStatus, ServiceType};
use berth_schemas::Event;

use berth_scheduler::SchedulerOptions;

use berth_tests::scheduler::{assert_in_order, containers, count, scheduler_options, types, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_deploy_runs_before_the_update_and_a_failing_one_keeps_the_old_deploy_serving() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;

    let (svc, d1) = w
        .create(ServiceType::WebService, |c| {
            c.pre_deploy_command = Some("true".into())
        })
        .await;
    let ev = w.wait_live(&svc, &d1).await;
    let t = types(&ev);
    assert_in_order(
        &ev,
        &[
            "image_resolved",
            "pre_deploy_started",
            "pre_deploy_ended",
            "update_started",
            "instance_scheduled",
            "deploy_live",
        ],
    );
    assert_eq!(count(&ev, "pre_deploy_started"), 1, "{t:?}");
    assert_eq!(count(&ev, "pre_deploy_ended"), 1, "{t:?}");
    let live: Vec<String> = w
        .state(&svc)
        .await
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(live.len(), 1);

    // Now the pre-deploy command fails.
    w.command(
        &svc,
        Command::Update {
            settings: Box::new(ServiceSettings {
                pre_deploy_command: Some(Some("sh -c 'exit 3'".into())),
                ..Default::default()
            }),
            deploy: DeployId::generate(),
        },
    )
    .await;
    let d2 = w.deploy(&svc, "v2").await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(60), "pre-deploy failure", |ev| {
            ev.iter().any(|e| {
                matches!(&e.event, Event::DeployFailed(f) if f.deploy == d2 && f.status == DeployStatus::PreDeployFailed)
            })
        })
        .await;
    let t = types(&ev);
    assert!(
        ev.iter().any(|e| matches!(&e.event, Event::PreDeployEnded(p) if p.deploy == d2 && !p.success && p.exit_code == Some(3))),
        "{t:?}"
    );
    // Give the scheduler time to do anything wrong, then check nothing did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = w.state(&svc).await;
    assert_eq!(s.live.as_ref(), Some(&d1));
    assert_eq!(
        s.instances
            .iter()
            .map(|i| i.id.to_string())
            .collect::<Vec<_>>(),
        live
    );
    let ev = w.events(&svc).await;
    assert!(
        !ev.iter()
            .any(|e| matches!(&e.event, Event::InstanceScheduled(i) if i.deploy == d2)),
        "{:?}",
        types(&ev)
    );
    assert_eq!(count(&ev, "instance_stopped"), 0, "{:?}", types(&ev));
    assert_eq!(containers(&[&n1, &n2]), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pre_deploy_whose_node_dies_fails_after_its_timeout() {
    let w = World::start().await;
    let mut n1 = w.start_node("n1").await;
    let _scheduler = w
        .start_scheduler_with(SchedulerOptions {
            pre_deploy_timeout_secs: 3,
            pre_deploy_grace: Duration::from_secs(1),
            ..scheduler_options()
        })
        .await;
    // Deaf to SIGTERM: when its timeout passes the run is still in its
    // shutdown delay, so the node cannot report it before it goes.
    let (svc, d1) = w
        .create(ServiceType::WebService, |c| {
            c.pre_deploy_command = Some("sh -c 'trap \"\" TERM; sleep 30'".into())
        })
        .await;
    w.wait_events(&svc, Duration::from_secs(30), "pre-deploy started", |ev| {
        count(ev, "pre_deploy_started") == 1
    })
    .await;
    // The only node dies with the run.
    n1.stop().await;
    n1.kill_containers();
    let (ev, failed) = w.wait_failed(&svc, &d1, Duration::from_secs(30)).await;
    assert_eq!(failed.status, DeployStatus::PreDeployFailed);
    assert!(failed.reason.contains("did not report back"), "{failed:?}");
    assert_eq!(count(&ev, "update_started"), 0, "{:?}", types(&ev));
}

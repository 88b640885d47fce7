//! Scaling out and in: new instances pull and start on their node, extras
//! are stopped, the containers on the nodes follow.

use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::model::ServiceType;

use berth_scheduler::SchedulerOptions;

use berth_tests::scheduler::{containers, count, scheduler_options, settled, types, World, REPO};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_one_to_three_to_one() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, d1) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
    w.wait_live(&svc, &d1).await;
    settled(&w, &svc, &[&n1, &n2], 1).await;

    w.command(&svc, Command::Scale { num_instances: 3 }).await;
    settled(&w, &svc, &[&n1, &n2], 3).await;
    let s = w.state(&svc).await;
    assert!(s
        .instances
        .iter()
        .all(|i| i.deploy == d1 && i.digest == w.v1));
    // Both nodes hold some (spread), and the one that had none pulled.
    assert!(!n1.containers().is_empty() && !n2.containers().is_empty());
    let ev = w.events(&svc).await;
    assert_eq!(count(&ev, "image_pulled"), 2, "{:?}", types(&ev));

    w.command(&svc, Command::Scale { num_instances: 1 }).await;
    settled(&w, &svc, &[&n1, &n2], 1).await;
    let ev = w.events(&svc).await;
    assert_eq!(count(&ev, "instance_stopped"), 2, "{:?}", types(&ev));
    assert_eq!(count(&ev, "instance_scheduled"), 3, "{:?}", types(&ev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_out_after_the_image_is_gone_backs_off_and_keeps_the_running_one() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w
        .start_scheduler_with(SchedulerOptions {
            pull_backoff: Duration::from_secs(30),
            ..scheduler_options()
        })
        .await;
    let (svc, d1) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
    w.wait_live(&svc, &d1).await;
    settled(&w, &svc, &[&n1, &n2], 1).await;
    let running = w
        .state(&svc)
        .await
        .instances
        .iter()
        .next()
        .unwrap()
        .id
        .clone();

    w.registry.delete_manifest(REPO, &w.v1).await.unwrap();
    w.command(&svc, Command::Scale { num_instances: 2 }).await;
    w.wait_events(&svc, Duration::from_secs(30), "pull failure", |ev| {
        count(ev, "image_pull_failed") >= 1
    })
    .await;
    // Within the back-off: the new instance let go, no new attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ev = w.events(&svc).await;
    let t = types(&ev);
    assert_eq!(count(&ev, "image_pull_failed"), 1, "{t:?}");
    assert_eq!(count(&ev, "instance_scheduled"), 2, "{t:?}");
    let s = w.state(&svc).await;
    assert_eq!(
        s.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![running.clone()],
        "{t:?}"
    );
    assert_eq!(containers(&[&n1, &n2]), vec![running.to_string()]);
}

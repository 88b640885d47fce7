//! Autoscaling end to end, on what real instances use: a worker whose
//! program spins is scaled up to its max by the nodes' CPU samples, and
//! once a deploy makes it idle, back down to its min after the window.

use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::events::{AutoscalingStarted, ServiceSettings};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{AutoscalingConfig, ServiceType};
use berth_schemas::Event;

use berth_domain::service::autoscaling::Timings;
use berth_scheduler::SchedulerOptions;
use berth_tests::scheduler::{count, node_options, scheduler_options, settled, types, World};

fn started(ev: &[berth_schemas::Envelope]) -> Vec<AutoscalingStarted> {
    ev.iter()
        .filter_map(|e| match &e.event {
            Event::AutoscalingStarted(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spinning_worker_is_scaled_up_by_its_cpu_and_down_once_idle() {
    let w = World::start().await;
    let dir = w.dir.path().join("n1");
    let mut sampled = node_options("n1", &dir);
    sampled.usage_interval = Some(Duration::from_millis(500));
    let n1 = w.start_node_with(sampled).await;
    let _scheduler = w
        .start_scheduler_with(SchedulerOptions {
            autoscale_every: Duration::from_millis(500),
            autoscale: Timings {
                settle: Duration::from_secs(1),
                scale_down_after: Duration::from_secs(3),
            },
            ..scheduler_options()
        })
        .await;
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| {
            c.docker_command = Some("sh -c 'while :; do :; done'".into());
        })
        .await;
    w.wait_live(&svc, &d1).await;
    settled(&w, &svc, &[&n1], 1).await;
    // A sample no one can read on the service's subject is skipped.
    w.client
        .publish(
            w.store.subjects().usage(&svc, &n1.id),
            "{not a sample".into(),
        )
        .await
        .unwrap();

    let on = AutoscalingConfig::on(1, 2, Some(50), None);
    w.command(&svc, Command::SetAutoscaling(Some(on))).await;
    // One instance spinning uses all of its plan's CPU: twice the target.
    let ev = w
        .wait_events(&svc, Duration::from_secs(60), "scaled up and done", |ev| {
            count(ev, "autoscaling_ended") >= 1
        })
        .await;
    let up = started(&ev);
    assert_eq!(up.len(), 1, "{:?}", types(&ev));
    assert_eq!((up[0].from_instances, up[0].to_instances), (1, 2));
    assert!(up[0].current_cpu.unwrap() >= 75, "{:?}", up[0]);
    assert_eq!(up[0].target_cpu, Some(50));
    settled(&w, &svc, &[&n1], 2).await;

    // Idle from the next deploy on: one instance again, once every look
    // of the window wanted fewer.
    let d2 = DeployId::generate();
    w.command(
        &svc,
        Command::Update {
            settings: Box::new(ServiceSettings {
                docker_command: Some(Some("sleep 600".into())),
                ..ServiceSettings::default()
            }),
            deploy: d2.clone(),
        },
    )
    .await;
    w.wait_live(&svc, &d2).await;
    let ev = w
        .wait_events(
            &svc,
            Duration::from_secs(60),
            "scaled down and done",
            |ev| count(ev, "autoscaling_ended") >= 2,
        )
        .await;
    let all = started(&ev);
    assert_eq!(all.len(), 2, "{:?}", types(&ev));
    assert_eq!((all[1].from_instances, all[1].to_instances), (2, 1));
    assert!(all[1].current_cpu.unwrap() < 25, "{:?}", all[1]);
    settled(&w, &svc, &[&n1], 1).await;
    // Scaling by hand is refused while it is autoscaled.
    let refused =
        berth_tests::eventlog::service_command(&w.store, &svc, Command::Scale { num_instances: 2 })
            .await;
    assert!(refused.is_err(), "{refused:?}");
}

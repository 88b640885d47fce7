//! Crashes and copies: a scheduler killed with SIGKILL mid-deploy and
//! started again finishes the deploy exactly once with exactly the wanted
//! containers; two copies at once place each instance once.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_eventlog::{EventStore, StoreConfig};
use berth_scheduler::Scheduler;
use berth_schemas::model::ServiceType;
use berth_schemas::{Event, Subjects};
use tokio_util::sync::CancellationToken;

use berth_tests::scheduler::{containers, count, scheduler_options, types, World};

const URL_ENV: &str = "BERTH_TEST_NATS_URL";
const PREFIX_ENV: &str = "BERTH_TEST_PREFIX";

/// The scheduler in a child process (this test binary, re-executed).
#[tokio::test]
#[ignore = "run by scheduler_killed_mid_deploy in a child process"]
async fn child_scheduler() {
    if !berth_tests::is_alone() {
        return;
    }
    berth_tests::init_tracing();
    let client = async_nats::connect(std::env::var(URL_ENV).unwrap())
        .await
        .unwrap();
    let subjects = Subjects::new(&std::env::var(PREFIX_ENV).unwrap()).unwrap();
    let store = EventStore::open(client, subjects, StoreConfig::default())
        .await
        .unwrap();
    // Any installation key: the services of these tests have no secrets.
    let key = berth_runtime::SecretKey::from_base64(&berth_runtime::SecretKey::generate_base64())
        .unwrap();
    Scheduler::new(store, key, scheduler_options())
        .run(CancellationToken::new(), None)
        .await
        .unwrap();
}

/// A child scheduler process, SIGKILLed (and reaped) on drop at the latest.
struct ChildScheduler(Child);

impl ChildScheduler {
    fn kill9(&mut self) {
        // `Child::kill` is SIGKILL on unix.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildScheduler {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_child(w: &World) -> ChildScheduler {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash::child_scheduler",
            "--nocapture",
        ])
        .env(berth_tests::ALONE_ENV, "1")
        .env(URL_ENV, w.nats.url())
        .env(PREFIX_ENV, w.subjects().prefix())
        .spawn()
        .unwrap();
    ChildScheduler(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_killed_mid_deploy_finishes_it_exactly_once() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let mut child = spawn_child(&w);
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| c.num_instances = Some(3))
        .await;
    // Kill as soon as the update has begun (instances being placed), then
    // again in the next copy as soon as an instance started.
    let t0 = Instant::now();
    loop {
        let ev = w.events(&svc).await;
        if count(&ev, "update_started") + count(&ev, "instance_scheduled") > 0 {
            child.kill9();
            assert_eq!(
                count(&w.events(&svc).await, "deploy_live"),
                0,
                "killed too late to be mid-deploy"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", types(&ev));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut second = spawn_child(&w);
    loop {
        let ev = w.events(&svc).await;
        if count(&ev, "instance_started") > 0 || count(&ev, "deploy_live") > 0 {
            second.kill9();
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", types(&ev));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut again = spawn_child(&w);
    w.wait_live(&svc, &d1).await;
    // Let a restarted copy do anything wrong it would do.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ev = w.events(&svc).await;
    let t = types(&ev);
    assert_eq!(count(&ev, "deploy_live"), 1, "{t:?}");
    assert_eq!(count(&ev, "instance_scheduled"), 3, "{t:?}");
    assert_eq!(count(&ev, "instance_stopped"), 0, "{t:?}");
    let s = w.state(&svc).await;
    let ids: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(ids.len(), 3);
    assert!(s.instances.iter().all(|i| i.is_healthy()));
    assert_eq!(
        containers(&[&n1, &n2]),
        ids,
        "orphaned or missing containers"
    );
    again.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_scheduler_copies_place_each_instance_once() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _a = w.start_scheduler().await;
    let _b = w.start_scheduler().await;
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| c.num_instances = Some(4))
        .await;
    w.wait_live(&svc, &d1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev = w.events(&svc).await;
    let t = types(&ev);
    assert_eq!(count(&ev, "instance_scheduled"), 4, "{t:?}");
    assert_eq!(count(&ev, "update_started"), 1, "{t:?}");
    assert_eq!(count(&ev, "deploy_live"), 1, "{t:?}");
    let s = w.state(&svc).await;
    let ids: Vec<String> = s.instances.iter().map(|i| i.id.to_string()).collect();
    assert_eq!(containers(&[&n1, &n2]), ids);
    assert!(ev
        .iter()
        .all(|e| !matches!(e.event, Event::InstanceStopped(_))));
}

/// The exact crash window: instances appended, the scheduler dies before
/// enqueueing a thing. The next scheduler starts them, places no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_appended_but_never_enqueued_are_started_by_the_next_scheduler() {
    use berth_domain::service::Command;
    use berth_schemas::events::InstanceScheduled;
    use berth_schemas::ids::InstanceId;

    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| c.num_instances = Some(2))
        .await;
    w.wait_events(&svc, Duration::from_secs(30), "resolved", |ev| {
        count(ev, "image_resolved") == 1
    })
    .await;
    // What a scheduler did before it was killed.
    w.command(&svc, Command::RecordUpdateStarted { deploy: d1.clone() })
        .await;
    let placed: Vec<InstanceScheduled> = [&n1, &n2]
        .iter()
        .map(|n| InstanceScheduled {
            instance: InstanceId::generate(),
            deploy: d1.clone(),
            node: n.id.clone(),
            digest: w.v1.clone(),
        })
        .collect();
    w.command(
        &svc,
        Command::Place {
            scheduled: placed.clone(),
            rescheduled: vec![],
        },
    )
    .await;
    assert!(containers(&[&n1, &n2]).is_empty());

    let _scheduler = w.start_scheduler().await;
    w.wait_live(&svc, &d1).await;
    let ev = w.events(&svc).await;
    assert_eq!(count(&ev, "instance_scheduled"), 2, "{:?}", types(&ev));
    let mut want: Vec<String> = placed.iter().map(|p| p.instance.to_string()).collect();
    want.sort();
    assert_eq!(n1.containers(), vec![placed[0].instance.to_string()]);
    assert_eq!(containers(&[&n1, &n2]), want);
}

//! Stopping the scheduler while it is busy: a sweep over thousands of
//! services stops taking services once told to stop, so the scheduler
//! returns well within `berth up`'s grace period instead of driving (and,
//! with the store going away, failing and retrying) every service first.

use std::time::{Duration, Instant};

use berth_domain::service::{Command, CreateService};
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::secrets::SecretKey;
use berth_runtime::ReadyFlag;
use berth_scheduler::Scheduler;
use berth_schemas::ids::{DeployId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{Sealed, ServiceType};
use berth_tests::eventlog::service_command;
use berth_tests::scheduler::scheduler_options;
use berth_tests::{NatsServer, NatsVersion};
use futures::StreamExt;

/// Services in the log; at one pass at a time the start-up sweep over
/// them takes far longer than [`STOPS_WITHIN`].
const SERVICES: usize = 10_000;
/// How soon the scheduler must return once told to stop (`berth up` gives
/// every component 10 s).
const STOPS_WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_scheduler_stops_within_the_grace_period() {
    berth_tests::init_tracing();
    let nats = NatsServer::start(NatsVersion::Modern).unwrap();
    let client = nats.connect().await.unwrap();
    let store = EventStore::open(
        client.clone(),
        berth_tests::unique_subjects(),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let owner = OwnerId::User(UserId::generate());
    futures::stream::iter(0..SERVICES)
        .for_each_concurrent(64, |n| {
            let (store, owner) = (store.clone(), owner.clone());
            async move {
                let c = CreateService::new(
                    owner,
                    &format!("svc-{n}"),
                    ServiceType::BackgroundWorker,
                    "registry.example/app/web:v1",
                    Sealed {
                        kid: "k".into(),
                        ciphertext: "x".into(),
                    },
                    DeployId::generate(),
                );
                let service = ServiceId::generate();
                service_command(&store, &service, Command::Create(Box::new(c)))
                    .await
                    .unwrap();
            }
        })
        .await;

    let opts = berth_scheduler::SchedulerOptions {
        concurrency: 1,
        ..scheduler_options()
    };
    let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
    let scheduler = Scheduler::new(store.clone(), key, opts);
    let (stop, ready) = (
        tokio_util::sync::CancellationToken::new(),
        ReadyFlag::default(),
    );
    let task = tokio::spawn(scheduler.run(stop.clone(), Some(ready.clone())));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !ready.get(),
        "the start-up sweep ended before the stop: the test would prove nothing (more services)"
    );

    stop.cancel();
    let t0 = Instant::now();
    let ran = tokio::time::timeout(STOPS_WITHIN, task).await;
    let took = t0.elapsed();
    assert!(
        ran.is_ok(),
        "the scheduler still ran {took:?} after it was told to stop"
    );
    ran.unwrap().unwrap().unwrap();
}

//! The cron component end to end: real nats-server, registry, runc (as
//! root) and the node component. A cron job's live deploy is set up with
//! the service commands the resolver and scheduler would issue; runs are
//! then started by the cron component's schedule (on a clock running 30–60×
//! faster, so `* * * * *` fires every one or two seconds) or by
//! `trigger_run`, dispatched to the node, pulled and run; a service's
//! one-off jobs go the same way.

use std::time::Duration;

use berth_cron::{Clock, Cron, CronOptions};
use berth_domain::service::{Command, CreateService, JobStatus, ServiceState};
use berth_eventlog::EventStore;
use berth_node::{Node, NodeOptions};
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::ids::{CronRunId, DeployId, JobId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{seal_context, PullFailureReason, ResolvedImage, Sealed, ServiceType};
use berth_schemas::{Actor, AggregateId, Envelope, Event};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use berth_tests::behind::{lagging_store, BehindCopy};
use berth_tests::node::{types, World, REPO};

fn node_options() -> NodeOptions {
    NodeOptions {
        heartbeat: Duration::from_millis(500),
        progress_interval: Duration::from_millis(200),
        ..berth_tests::node::test_options("cron-node", 4000, 4096)
    }
}

/// A node and a cron component running in-process; stopped on drop.
struct Running {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    node: NodeId,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start(w: &World, opts: CronOptions) -> Running {
    start_keyed(w, opts, key()).await
}

/// [`start`] with the cron component holding the installation key `key`.
async fn start_keyed(w: &World, opts: CronOptions, key: SecretKey) -> Running {
    let stop = CancellationToken::new();
    let (node, node_task) = start_node(w, stop.clone()).await;
    let cron_task = start_cron(w, opts, key, stop.clone()).await;
    Running {
        stop,
        tasks: vec![node_task, cron_task],
        node,
    }
}

async fn start_node(w: &World, stop: CancellationToken) -> (NodeId, JoinHandle<()>) {
    start_node_on(w, w.store.clone(), stop).await
}

/// [`start_node`] reading and appending through `store`.
async fn start_node_on(
    w: &World,
    store: EventStore,
    stop: CancellationToken,
) -> (NodeId, JoinHandle<()>) {
    let node_id = berth_node::load_or_create_id(&w.node_dir()).unwrap();
    let node = Node::new(store, node_options()).with_checks(berth_node::NodeChecks {
        subnet: w.subnet.parsed(),
        ports: berth_tests::node_ports(),
        ..berth_node::NodeChecks::default()
    });
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let (client, dir) = (w.client.clone(), w.node_dir());
    let node_task = tokio::spawn(async move {
        node.serve(client, dir, stop, move |r| {
            let _ = ready_tx.send(r);
        })
        .await
        .unwrap();
    });
    tokio::time::timeout(Duration::from_secs(20), ready_rx.wait_for(|r| *r))
        .await
        .expect("node ready within 20 s")
        .unwrap();
    (node_id, node_task)
}

async fn start_cron(
    w: &World,
    opts: CronOptions,
    key: SecretKey,
    stop: CancellationToken,
) -> JoinHandle<()> {
    start_cron_on(w.store.clone(), opts, key, stop).await
}

/// [`start_cron`] reading and appending through `store`.
async fn start_cron_on(
    store: EventStore,
    opts: CronOptions,
    key: SecretKey,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let cron = Cron::new(store, key, opts);
    let ready = berth_runtime::ReadyFlag::default();
    let r = ready.clone();
    let cron_task = tokio::spawn(async move {
        cron.run(stop, Some(r)).await.unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready.get() {
        assert!(std::time::Instant::now() < deadline, "cron not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cron_task
}

/// An installation key for the cron component to open the jobs' secrets
/// with.
fn key() -> SecretKey {
    SecretKey::from_base64(&SecretKey::generate_base64()).unwrap()
}

fn options(clock: Clock) -> CronOptions {
    CronOptions {
        tick: Duration::from_millis(100),
        clock,
        ..CronOptions::default()
    }
}

/// A cron job of the registry's image, its first deploy live, as the
/// resolver and the scheduler would have recorded it.
async fn cron_job(w: &World, schedule: &str, command: &str) -> ServiceId {
    cron_job_with_env(w, &key(), schedule, command, &[]).await
}

/// [`cron_job`] with env vars, sealed with `key` as ingress seals them.
async fn cron_job_with_env(
    w: &World,
    key: &SecretKey,
    schedule: &str,
    command: &str,
    env: &[(&str, &str)],
) -> ServiceId {
    let service = ServiceId::generate();
    let deploy = DeployId::generate();
    let mut create = CreateService::new(
        OwnerId::User(UserId::generate()),
        &format!("cron-{}", &service.as_str()[4..12]),
        ServiceType::CronJob,
        &format!("{}/{REPO}:v1", w.registry.host),
        Sealed {
            kid: "k".into(),
            ciphertext: "x".into(),
        },
        deploy.clone(),
    );
    create.schedule = Some(schedule.to_owned());
    create.docker_command = Some(command.to_owned());
    for (name, value) in env {
        let sealed = key
            .seal(&Secret::new(*value), &seal_context::env_var(&service, name))
            .unwrap();
        create.env_vars.insert((*name).to_owned(), sealed);
    }
    create.shutdown_delay_secs = Some(1);
    w.command(&service, Command::Create(Box::new(create))).await;
    w.command(
        &service,
        Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: w.digest.clone(),
                index_digest: None,
                compressed_size: 1,
            },
        },
    )
    .await;
    w.command(
        &service,
        Command::RecordPulled {
            deploy: deploy.clone(),
            node: NodeId::generate(),
            digest: w.digest.clone(),
        },
    )
    .await;
    w.command(
        &service,
        Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        },
    )
    .await;
    w.command(
        &service,
        Command::RecordLive {
            deploy,
            digest: w.digest.clone(),
        },
    )
    .await;
    service
}

/// Runs started, in order: (run, digest, manual, causation).
fn started(events: &[Envelope]) -> Vec<(CronRunId, String, bool, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::CronJobRunStarted(s) => Some((
                s.run.clone(),
                s.digest.clone(),
                s.manual,
                e.causation_id.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Runs ended: (run, status, exit code).
fn ended(events: &[Envelope]) -> Vec<(CronRunId, String, Option<i32>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::CronJobRunEnded(s) => Some((s.run.clone(), s.status.clone(), s.exit_code)),
            _ => None,
        })
        .collect()
}

/// Why each run ended as it did, in order.
fn reasons(events: &[Envelope]) -> Vec<Option<String>> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::CronJobRunEnded(s) => Some(s.reason.clone()),
            _ => None,
        })
        .collect()
}

fn ended_count(events: &[Envelope]) -> usize {
    ended(events).len()
}

async fn state(w: &World, service: &ServiceId) -> ServiceState {
    w.store
        .load(&AggregateId::Service(service.clone()))
        .await
        .unwrap()
        .events
        .iter()
        .fold(ServiceState::default(), berth_domain::service::fold)
}

/// Containers the node's runc knows now.
fn containers(w: &World) -> Vec<String> {
    if !w.runc_root().exists() {
        return vec![];
    }
    berth_tests::agent::runc_list(&w.runc_root())
}

async fn wait_containers(w: &World, within: Duration, pred: impl Fn(&[String]) -> bool) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let c = containers(w);
        if pred(&c) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containers not as expected within {within:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn instance_of(run: &CronRunId) -> String {
    berth_cron::run_instance(run).to_string()
}

#[tokio::test]
async fn runs_on_schedule_each_recording_digest_and_exit_code() {
    let w = World::start().await;
    // 30× faster: `* * * * *` is due every 2 s of real time.
    let _r = start(&w, options(Clock::accelerated(30))).await;
    let service = cron_job(&w, "* * * * *", "sh -c 'echo ran; exit 3'").await;

    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 2)
        .await;
    let s = started(&events);
    let e = ended(&events);
    assert!(s.len() >= 2, "{:?}", types(&events));
    for i in 0..2 {
        let (run, digest, manual, cause) = &s[i];
        assert_eq!(digest, &w.digest, "run {i} ran the live digest");
        assert!(!manual);
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.starts_with("cron-schedule:")),
            "{cause:?}"
        );
        assert_eq!(
            e[i],
            (run.clone(), "failed".to_owned(), Some(3)),
            "run {i} ended with the command's exit code"
        );
    }
    // Two different due times, one schedule minute apart (or more, if one
    // was skipped while the first ran).
    let at = |i: usize| {
        let c = s[i].3.as_deref().unwrap();
        chrono::DateTime::parse_from_rfc3339(c.strip_prefix("cron-schedule:").unwrap()).unwrap()
    };
    assert!((at(1) - at(0)).num_seconds() >= 60, "{} {}", at(0), at(1));
    assert_eq!((at(1) - at(0)).num_seconds() % 60, 0);
    // Each run pulled on the node: manifest fetched per run (pull facts).
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Event::ImagePulled(p) if p.digest == w.digest)),
        "{:?}",
        types(&events)
    );
    // Nothing left running.
    wait_containers(&w, Duration::from_secs(10), |c| c.is_empty()).await;
}

#[tokio::test]
async fn a_run_sees_its_env_sealed_to_the_node_it_runs_on() {
    let w = World::start().await;
    let key = key();
    let _r = start_keyed(&w, options(Clock::accelerated(30)), key.clone()).await;
    let service = cron_job_with_env(
        &w,
        &key,
        "* * * * *",
        "sh -c 'test \"$GREETING\" = sealed-hello'",
        &[("GREETING", "sealed-hello")],
    )
    .await;
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 1)
        .await;
    let (_, status, code) = ended(&events).remove(0);
    assert_eq!(
        (status.as_str(), code),
        ("succeeded", Some(0)),
        "{:?}",
        types(&events)
    );
}

#[tokio::test]
async fn a_due_time_during_an_active_run_is_skipped_and_recorded() {
    let w = World::start().await;
    // 60×: due every second; each run sleeps 4 s.
    let _r = start(&w, options(Clock::accelerated(60))).await;
    let service = cron_job(&w, "* * * * *", "sleep 4").await;

    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            ended_count(e) >= 1
                && e.iter()
                    .any(|x| matches!(x.event, Event::CronJobRunSkipped(_)))
        })
        .await;
    let first = &started(&events)[0].0;
    let skip = events
        .iter()
        .find_map(|e| match &e.event {
            Event::CronJobRunSkipped(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        &skip.active_run, first,
        "skipped because the first was active"
    );
    let (run, status, code) = &ended(&events)[0];
    assert_eq!((run, status.as_str(), *code), (first, "succeeded", Some(0)));
    // Never two runs active: every start after the first comes after an end.
    let mut active = 0i32;
    for e in &events {
        match &e.event {
            Event::CronJobRunStarted(_) => active += 1,
            Event::CronJobRunEnded(_) => active -= 1,
            _ => {}
        }
        assert!(active <= 1, "two runs active: {:?}", types(&events));
    }
}

#[tokio::test]
async fn manual_trigger_cancels_the_active_run_and_cancel_stops_it() {
    let w = World::start().await;
    // A schedule that is never due during the test.
    let _r = start(&w, options(Clock::System)).await;
    let service = cron_job(&w, "0 0 1 1 *", "sleep 60").await;
    let actor = Actor::system("test");

    let run1 = berth_cron::trigger_run(&w.store, &service, &actor)
        .await
        .unwrap();
    let i1 = instance_of(&run1);
    wait_containers(&w, Duration::from_secs(30), |c| c.contains(&i1)).await;

    let run2 = berth_cron::trigger_run(&w.store, &service, &actor)
        .await
        .unwrap();
    let i2 = instance_of(&run2);
    // The first run is recorded canceled at once and its container stops;
    // the second runs.
    let events = w
        .wait_events(&service, Duration::from_secs(5), |e| ended_count(e) >= 1)
        .await;
    assert_eq!(
        ended(&events)[0],
        (run1.clone(), "canceled".to_owned(), None)
    );
    wait_containers(&w, Duration::from_secs(30), |c| {
        c.contains(&i2) && !c.contains(&i1)
    })
    .await;
    let s = state(&w, &service).await;
    assert_eq!(s.cron.active.as_ref().map(|r| &r.id), Some(&run2));
    assert!(s.cron.active.as_ref().unwrap().manual);

    // Cancel: recorded, container gone, nothing else ends later.
    berth_cron::cancel_run(&w.store, &service, &run2, &actor)
        .await
        .unwrap();
    wait_containers(&w, Duration::from_secs(30), |c| !c.contains(&i2)).await;
    let events = w.events_after(&service, Duration::from_secs(2)).await;
    assert_eq!(
        ended(&events),
        vec![
            (run1, "canceled".to_owned(), None),
            (run2, "canceled".to_owned(), None)
        ],
        "{:?}",
        types(&events)
    );
    assert_eq!(state(&w, &service).await.cron.active, None);
}

#[tokio::test]
async fn a_deleted_image_fails_the_run_and_a_job_with_image_pull_failed() {
    let w = World::start().await;
    let r = start(&w, options(Clock::System)).await;
    let service = cron_job(&w, "0 0 1 1 *", "true").await;
    w.registry.delete_manifest(REPO, &w.digest).await.unwrap();

    let run = berth_cron::trigger_run(&w.store, &service, &Actor::system("test"))
        .await
        .unwrap();
    // A job of the same image fails the same way; one on an instance type
    // no node can hold fails at once, never enqueued.
    let job = JobId::generate();
    let huge = JobId::generate();
    for (j, plan) in [
        (&job, None),
        (
            &huge,
            Some(berth_schemas::model::Plan {
                name: "pro_ultra".into(),
                cpu_millis: 8000,
                memory_mib: 32768,
            }),
        ),
    ] {
        w.command(
            &service,
            Command::CreateJob {
                job: j.clone(),
                start_command: "true".into(),
                plan,
            },
        )
        .await;
    }
    let job_end = |events: &[Envelope], j: &JobId| {
        events.iter().find_map(|e| match &e.event {
            Event::JobEnded(x) if &x.job == j => Some(x.clone()),
            _ => None,
        })
    };
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            ended_count(e) >= 1 && job_end(e, &job).is_some() && job_end(e, &huge).is_some()
        })
        .await;
    let pulled = job_end(&events, &job).unwrap();
    assert_eq!(pulled.status, "failed");
    assert!(
        pulled
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("was not pulled")),
        "{pulled:?}"
    );
    let unplaced = job_end(&events, &huge).unwrap();
    assert_eq!(unplaced.status, "failed");
    assert!(
        unplaced
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("no node has room")),
        "{unplaced:?}"
    );
    let failed = events
        .iter()
        .find_map(|e| match &e.event {
            Event::ImagePullFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("image_pull_failed recorded");
    assert_eq!(failed.reason, PullFailureReason::ImageNotFound);
    assert_eq!(failed.node.as_ref(), Some(&r.node));
    assert!(failed.image.ends_with(&w.digest), "{}", failed.image);
    assert_eq!(ended(&events), vec![(run, "failed".to_owned(), None)]);
    assert_eq!(reasons(&events), vec![pulled.reason.clone()]);
    // The live deploy is untouched.
    let s = state(&w, &service).await;
    assert_eq!(s.current_digest(), Some(w.digest.as_str()));
    assert!(containers(&w).is_empty());
}

#[tokio::test]
async fn a_run_past_its_cap_is_stopped_as_timed_out() {
    let w = World::start().await;
    let opts = CronOptions {
        run_timeout: Duration::from_secs(2),
        ..options(Clock::System)
    };
    let _r = start(&w, opts).await;
    let service = cron_job(&w, "0 0 1 1 *", "sleep 60").await;
    let run = berth_cron::trigger_run(&w.store, &service, &Actor::system("test"))
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let events = w
        .wait_events(&service, Duration::from_secs(40), |e| ended_count(e) >= 1)
        .await;
    assert_eq!(ended(&events), vec![(run, "timed_out".to_owned(), None)]);
    assert_eq!(
        reasons(&events),
        vec![Some("timed out after 2 s".to_owned())]
    );
    // Cap (2 s) + pull + SIGTERM→SIGKILL delay (1 s): far below the sleep.
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
    wait_containers(&w, Duration::from_secs(10), |c| c.is_empty()).await;
}

/// A run whose program cannot run ends saying why, in its own record
/// (what the API's run listing and a failure notification show).
#[tokio::test]
async fn a_run_whose_program_cannot_run_says_why() {
    let w = World::start().await;
    let _r = start(&w, options(Clock::System)).await;
    let service = cron_job(&w, "0 0 1 1 *", "/no/such/program").await;
    let run = berth_cron::trigger_run(&w.store, &service, &Actor::system("test"))
        .await
        .unwrap();
    let events = w
        .wait_events(&service, Duration::from_secs(40), |e| ended_count(e) >= 1)
        .await;
    assert_eq!(ended(&events), vec![(run, "failed".to_owned(), Some(127))]);
    assert_eq!(
        reasons(&events),
        vec![Some(
            "exited with status 127: /no/such/program is not in the image".to_owned()
        )]
    );
}

#[tokio::test]
async fn two_cron_copies_start_each_due_time_once() {
    let w = World::start().await;
    // Both copies on one clock (as two machines on NTP would be).
    let clock = Clock::accelerated(30);
    let r = start(&w, options(clock)).await;
    let second = Cron::new(w.store.clone(), key(), options(clock));
    let s = r.stop.clone();
    let copy = tokio::spawn(async move { second.run(s, None).await.unwrap() });
    let service = cron_job(&w, "* * * * *", "true").await;

    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 3)
        .await;
    let s = started(&events);
    let mut due: Vec<&str> = s.iter().filter_map(|x| x.3.as_deref()).collect();
    let all = due.len();
    // Every start names its due time, so the check below sees them all.
    assert_eq!(all, s.len(), "a start without its due time: {s:?}");
    due.sort();
    due.dedup();
    assert_eq!(due.len(), all, "a due time started twice: {s:?}");
    let mut runs: Vec<&CronRunId> = s.iter().map(|x| &x.0).collect();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), s.len());
    // No due time both started and skipped (the second copy's append of a
    // started due time must not turn into a skip).
    for e in &events {
        if let Event::CronJobRunSkipped(k) = &e.event {
            let at = format!("cron-schedule:{}", k.scheduled_for.to_rfc3339());
            assert!(!due.contains(&at.as_str()), "{at} started and skipped");
        }
    }
    // Every run was executed once: one end per start.
    let e = ended(&events);
    for (run, ..) in &s[..3] {
        assert_eq!(e.iter().filter(|x| &x.0 == run).count(), 1, "{run}");
    }
    drop(r);
    let _ = copy.await;
}

#[tokio::test]
async fn after_a_restart_only_the_latest_missed_due_time_runs() {
    let w = World::start().await;
    let node_stop = CancellationToken::new();
    let (_node, node_task) = start_node(&w, node_stop.clone()).await;
    let _guard = Running {
        stop: node_stop,
        tasks: vec![node_task],
        node: NodeId::generate(),
    };
    // One clock across the restart; 30×: due every 2 s.
    let clock = Clock::accelerated(30);
    let first = CancellationToken::new();
    let task = start_cron(&w, options(clock), key(), first.clone()).await;
    let service = cron_job(&w, "* * * * *", "true").await;
    w.wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 1)
        .await;
    first.cancel();
    task.await.unwrap();
    let before = started(&w.events_after(&service, Duration::from_millis(300)).await).len();

    // Down for ~7 s: three or four due times pass.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let events = w.events_after(&service, Duration::ZERO).await;
    assert_eq!(started(&events).len(), before, "nothing starts while down");
    let restarted_at = clock.now();
    let second = CancellationToken::new();
    let task = start_cron(&w, options(clock), key(), second.clone()).await;
    let events = w
        .wait_events(&service, Duration::from_secs(30), |e| {
            started(e).len() > before
        })
        .await;
    second.cancel();
    task.await.unwrap();
    let s = started(&events);
    let due = |i: usize| {
        let c = s[i].3.as_deref().unwrap();
        chrono::DateTime::parse_from_rfc3339(c.strip_prefix("cron-schedule:").unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    // The first start after the restart is the latest due time (not the
    // oldest missed one), and the ones missed in between never ran.
    let (last_before, first_after) = (due(before - 1), due(before));
    assert!(
        first_after > restarted_at - chrono::Duration::seconds(60),
        "{first_after} vs restart at {restarted_at}"
    );
    assert!(
        (first_after - last_before).num_seconds() >= 180,
        "missed due times were caught up one by one: {last_before} → {first_after}"
    );
}

#[tokio::test]
async fn a_run_no_node_can_take_fails_instead_of_blocking_the_job() {
    let w = World::start().await;
    let stop = CancellationToken::new();
    let task = start_cron(&w, options(Clock::System), key(), stop.clone()).await;
    let service = cron_job(&w, "0 0 1 1 *", "true").await;
    let run = berth_cron::trigger_run(&w.store, &service, &Actor::system("test"))
        .await
        .unwrap();
    let events = w
        .wait_events(&service, Duration::from_secs(20), |e| ended_count(e) >= 1)
        .await;
    assert_eq!(ended(&events), vec![(run, "failed".to_owned(), None)]);
    assert_eq!(
        reasons(&events),
        vec![Some(
            "no node has room for it: needs 500 millicores and 512 MiB".to_owned()
        )]
    );
    assert_eq!(state(&w, &service).await.cron.active, None);
    stop.cancel();
    task.await.unwrap();
}

/// A service's one-off jobs end to end: each runs its own command once on
/// the node in the live image with the service's env (sealed to the
/// node), pending → running → how it ended, with its exit code; several
/// at once; a canceled one's container is stopped.
#[tokio::test]
async fn one_off_jobs_run_their_command_once_and_a_canceled_one_stops() {
    let w = World::start().await;
    let key = key();
    let _r = start_keyed(&w, options(Clock::System), key.clone()).await;
    // A schedule that is not due during the test: only the jobs run.
    let service = cron_job_with_env(
        &w,
        &key,
        "0 0 1 1 *",
        "sh -c 'echo the schedule ran; exit 9'",
        &[("GREETING", "sealed-hello")],
    )
    .await;
    let ok = JobId::generate();
    let failing = JobId::generate();
    let long = JobId::generate();
    for (job, command) in [
        (&ok, "sh -c 'test \"$GREETING\" = sealed-hello'"),
        (&failing, "sh -c 'echo migrating; exit 4'"),
        (&long, "sleep 600"),
    ] {
        w.command(
            &service,
            Command::CreateJob {
                job: job.clone(),
                start_command: command.to_owned(),
                plan: None,
            },
        )
        .await;
    }
    let job_ends = |events: &[Envelope]| -> Vec<(JobId, String, Option<i32>)> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                Event::JobEnded(x) => Some((x.job.clone(), x.status.clone(), x.exit_code)),
                _ => None,
            })
            .collect()
    };
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            job_ends(e).len() >= 2
                && e.iter()
                    .any(|x| matches!(&x.event, Event::JobStarted(s) if s.job == long))
        })
        .await;
    let ends = job_ends(&events);
    assert!(
        ends.contains(&(ok.clone(), "succeeded".to_owned(), Some(0))),
        "{ends:?}"
    );
    assert!(
        ends.contains(&(failing.clone(), "failed".to_owned(), Some(4))),
        "{ends:?}"
    );
    let s = state(&w, &service).await;
    assert_eq!(
        s.jobs.get(&long).map(|j| j.status),
        Some(berth_domain::service::JobStatus::Running)
    );
    for j in [&ok, &failing] {
        let job = s.jobs.get(j).unwrap();
        assert!(
            job.started_at.is_some() && job.finished_at.is_some(),
            "{job:?}"
        );
    }
    // The long one runs until canceled; then its container goes.
    let long_instance = berth_domain::service::job_instance(&long).to_string();
    wait_containers(&w, Duration::from_secs(10), |c| c.contains(&long_instance)).await;
    w.command(&service, Command::CancelJob { job: long.clone() })
        .await;
    wait_containers(&w, Duration::from_secs(20), |c| c.is_empty()).await;
    let events = w
        .wait_events(&service, Duration::from_secs(10), |e| {
            job_ends(e).len() == 3
        })
        .await;
    assert!(job_ends(&events).contains(&(long.clone(), "canceled".to_owned(), None)));
    // Each ran once; the schedule never did.
    let starts = events
        .iter()
        .filter(|e| matches!(&e.event, Event::JobStarted(_)))
        .count();
    assert_eq!(starts, 3);
    assert!(started(&events).is_empty());
}

/// A run given to a node that is then declared lost ends `failed` at the
/// next tick, rather than holding every later due time until its 12 h
/// cap; a job there ends `failed` too, rather than running for good;
/// where each went is in the log (`cron_job_run_placed`, `job_placed`).
/// The node here was only cut off (it runs on): both containers are
/// stopped on it, so no later run overlaps the old one.
#[tokio::test]
async fn a_run_and_a_job_on_a_node_declared_lost_fail_at_once() {
    let w = World::start().await;
    let (node_stop, cron_stop) = (CancellationToken::new(), CancellationToken::new());
    let (node, node_task) = start_node(&w, node_stop.clone()).await;
    let cron_task = start_cron(&w, options(Clock::System), key(), cron_stop.clone()).await;
    let service = cron_job(&w, "0 0 1 1 *", "sleep 600").await;
    let actor = Actor::system("test");
    let run = berth_cron::trigger_run(&w.store, &service, &actor)
        .await
        .unwrap();
    let i = instance_of(&run);
    let job = JobId::generate();
    w.command(
        &service,
        Command::CreateJob {
            job: job.clone(),
            start_command: "sleep 600".to_owned(),
            plan: None,
        },
    )
    .await;
    let j = berth_domain::service::job_instance(&job).to_string();
    wait_containers(&w, Duration::from_secs(30), |c| {
        c.contains(&i) && c.contains(&j)
    })
    .await;
    let s = state(&w, &service).await;
    assert_eq!(
        s.cron.active.as_ref().and_then(|a| a.node.as_ref()),
        Some(&node),
        "the run's node is recorded"
    );
    assert_eq!(s.jobs.get(&job).and_then(|j| j.node.as_ref()), Some(&node));

    // The scheduler stops hearing the node and declares it lost.
    w.store
        .execute::<berth_domain::node::Node>(
            &AggregateId::Node(node.clone()),
            "test-lost",
            &berth_eventlog::Stamp::new(Actor::system("test")),
            berth_domain::node::Command::DeclareLost {
                last_heartbeat: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
    let job_ended = |e: &[Envelope]| {
        e.iter().find_map(|x| match &x.event {
            Event::JobEnded(end) if end.job == job => Some(end.clone()),
            _ => None,
        })
    };
    let events = w
        .wait_events(&service, Duration::from_secs(10), |e| {
            ended_count(e) >= 1 && job_ended(e).is_some()
        })
        .await;
    assert_eq!(ended(&events), vec![(run, "failed".to_owned(), None)]);
    let end = job_ended(&events).unwrap();
    assert_eq!(end.status, "failed");
    assert_eq!(end.reason.as_deref(), Some(berth_cron::RUN_NODE_LOST));
    assert_eq!(
        reasons(&events),
        vec![Some(berth_cron::RUN_NODE_LOST.to_owned())]
    );
    let s = state(&w, &service).await;
    assert_eq!(s.cron.active, None);
    assert!(!s.jobs.get(&job).unwrap().status.is_active());
    wait_containers(&w, Duration::from_secs(30), |c| {
        !c.contains(&i) && !c.contains(&j)
    })
    .await;
    node_stop.cancel();
    node_task.await.unwrap();
    cron_stop.cancel();
    cron_task.await.unwrap();
}

/// A node on the log, the cron component (with `opts`) on a store whose
/// reads a [`BehindCopy`] can hold back, and a live cron job whose
/// schedule is not due during a test.
async fn cron_reading_a_copy(w: &World, opts: CronOptions) -> (Running, ServiceId) {
    let key = key();
    let stop = CancellationToken::new();
    let (_, node) = start_node(w, stop.clone()).await;
    let lagging = lagging_store(&w.nats.url(), w.store.subjects()).await;
    let cron = start_cron_on(lagging, opts, key.clone(), stop.clone()).await;
    let running = Running {
        stop,
        tasks: vec![node, cron],
        node: NodeId::generate(),
    };
    let service = cron_job_with_env(w, &key, "0 0 1 1 *", "true", &[]).await;
    (running, service)
}

/// A one-off job of `service` running `command`, created.
async fn create_job(w: &World, service: &ServiceId, command: &str) -> JobId {
    let job = JobId::generate();
    w.command(
        service,
        Command::CreateJob {
            job: job.clone(),
            start_command: command.to_owned(),
            plan: None,
        },
    )
    .await;
    job
}

/// How `job` ended (status, exit code), if it has.
fn job_end(events: &[Envelope], job: &JobId) -> Option<(String, Option<i32>)> {
    events.iter().find_map(|x| match &x.event {
        Event::JobEnded(j) if &j.job == job => Some((j.status.clone(), j.exit_code)),
        _ => None,
    })
}

/// The cron component reading a copy of the log that is behind (a server
/// that rejoined after a partition): a job created meanwhile is not in
/// the service it reads. The job must wait for the copy, not be taken as
/// "no longer pending" and dropped (it would stay pending for good).
#[tokio::test]
async fn a_job_read_from_a_copy_of_the_log_that_is_behind_waits_for_it() {
    let w = World::start().await;
    let (_r, service) = cron_reading_a_copy(&w, options(Clock::System)).await;
    let copy = BehindCopy::start(&w.nats.url(), w.store.subjects()).await;
    let job = create_job(&w, &service, "sh -c 'echo migrated'").await;
    // The dispatcher has the commit but reads the service without the job.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state(&w, &service).await.jobs.get(&job).map(|j| j.status),
        Some(JobStatus::Pending),
        "nothing can place the job while the copy is behind"
    );
    copy.catch_up();
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            job_end(e, &job).is_some()
        })
        .await;
    assert_eq!(
        job_end(&events, &job),
        Some(("succeeded".to_owned(), Some(0))),
        "{:?}",
        types(&events)
    );
    copy.stop().await;
}

/// A node reading a copy of the log that is behind, given a cron run the
/// copy does not have. Its first run has already recorded the image
/// pulled on this node, so the second one appends nothing before the node
/// reads the service to see whether the run is still active: on the copy
/// it is not, and the run must wait for the copy rather than be taken as
/// canceled and never started (left active until its cap). Once the copy
/// catches up it runs, once, and ends with its exit code.
#[tokio::test]
async fn a_cron_run_on_a_node_reading_a_copy_that_is_behind_waits_for_it() {
    let w = World::start().await;
    let key = key();
    let stop = CancellationToken::new();
    let lagging = lagging_store(&w.nats.url(), w.store.subjects()).await;
    let (node_id, node) = start_node_on(&w, lagging, stop.clone()).await;
    let cron = start_cron(&w, options(Clock::System), key.clone(), stop.clone()).await;
    let _r = Running {
        stop,
        tasks: vec![node, cron],
        node: node_id,
    };
    let service = cron_job_with_env(&w, &key, "0 0 1 1 *", "sh -c 'echo ran; exit 0'", &[]).await;
    let actor = Actor::system("test");
    let first = berth_cron::trigger_run(&w.store, &service, &actor)
        .await
        .unwrap();
    w.wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 1)
        .await;
    let copy = BehindCopy::start(&w.nats.url(), w.store.subjects()).await;
    let second = berth_cron::trigger_run(&w.store, &service, &actor)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = w.events_after(&service, Duration::ZERO).await;
    assert_eq!(
        ended_count(&events),
        1,
        "nothing more ends while the node's copy is behind: {:?}",
        types(&events)
    );
    copy.catch_up();
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| ended_count(e) >= 2)
        .await;
    let ok = |run| (run, "succeeded".to_owned(), Some(0));
    assert_eq!(
        ended(&events),
        vec![ok(first), ok(second)],
        "{:?}",
        types(&events)
    );
    copy.stop().await;
}

/// A job and a cron run whose only dispatch came to nothing (here: refused
/// while the cron component read a copy of the log that was behind, then
/// dead-lettered, as after its retries) are dispatched again by the sweep
/// once they have waited `stuck_after`, and each runs once.
#[tokio::test]
async fn a_job_and_a_run_whose_dispatch_came_to_nothing_are_dispatched_by_the_sweep() {
    let w = World::start().await;
    let mut opts = options(Clock::System);
    opts.max_deliver = 1;
    opts.stuck_after = Some(Duration::from_secs(2));
    let (_r, service) = cron_reading_a_copy(&w, opts).await;
    let copy = BehindCopy::start(&w.nats.url(), w.store.subjects()).await;
    let job = create_job(&w, &service, "true").await;
    let run = berth_cron::trigger_run(&w.store, &service, &Actor::system("test"))
        .await
        .unwrap();
    // Each one delivery, refused on the copy and dead-lettered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    copy.catch_up();
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            ended_count(e) >= 1 && job_end(e, &job).is_some()
        })
        .await;
    assert_eq!(
        ended(&events),
        vec![(run, "succeeded".to_owned(), Some(0))],
        "{:?}",
        types(&events)
    );
    assert_eq!(
        job_end(&events, &job),
        Some(("succeeded".to_owned(), Some(0)))
    );
    // Once each, though the sweep looks again.
    let events = w.events_after(&service, Duration::from_secs(3)).await;
    let starts = events
        .iter()
        .filter(|e| matches!(&e.event, Event::JobStarted(_)))
        .count();
    assert_eq!(
        (starts, ended_count(&events)),
        (1, 1),
        "{:?}",
        types(&events)
    );
    copy.stop().await;
}

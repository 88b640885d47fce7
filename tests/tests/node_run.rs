//! The node component in-process against real nats-server, registry and
//! runc (as root): registration with a persisted identity; a `RunInstance`
//! work item pulls (ImagePulled), starts (InstanceStarted) and the
//! instance's output reaches the logs subject; a redelivered `RunInstance`
//! does nothing new; `StopInstance` → InstanceStopped and no container
//! left; a deleted image → ImagePullFailed `image_not_found` and nothing
//! runs; a job or cron run its node's restart interrupted is not run
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_tests::agent;
use berth_tests::node;

use std::time::Duration;

use berth_agent::LogLine;
use berth_domain::credential;
use berth_node::{Node, NodeOptions};
use berth_runtime::node_key::ForNode;
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::commands::{NodeRunSpec, NodeWork, OneOffPurpose};
use berth_schemas::ids::{CredentialId, NodeId, OwnerId, UserId};
use berth_schemas::model::{seal_context, PullFailureReason};
use berth_schemas::model::{EnvVars, RegistryKind};
use berth_schemas::Actor;
use berth_schemas::{AggregateId, Event};
use berth_tests::node::{count, first, types, World};
use berth_tests::registry::RegistryAuth;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn options() -> NodeOptions {
    berth_tests::node::test_options("test-node", 2000, 2048)
}

struct Running {
    id: NodeId,
    stop: CancellationToken,
    task: JoinHandle<Result<(), berth_node::NodeError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("node stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

async fn start_node(w: &World) -> Running {
    let id = berth_node::load_or_create_id(&w.node_dir()).unwrap();
    let node = Node::new(w.store.clone(), options()).with_checks(berth_node::NodeChecks {
        subnet: w.subnet.parsed(),
        ports: berth_tests::node_ports(),
        ..berth_node::NodeChecks::default()
    });
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        node.serve(w.client.clone(), w.node_dir(), stop.clone(), move |r| {
            let _ = ready_tx.send(r);
        }),
    );
    tokio::time::timeout(Duration::from_secs(20), ready_rx.wait_for(|r| *r))
        .await
        .expect("node ready within 20 s")
        .unwrap();
    Running { id, stop, task }
}

/// The events the node appended.
fn by_node(events: &[berth_schemas::Envelope]) -> Vec<&berth_schemas::Envelope> {
    events
        .iter()
        .filter(|e| e.actor == berth_schemas::Actor::system("node"))
        .collect()
}

/// The installation's key, which the node never sees: the test seals with
/// it as ingress does, and reseals to the node as the scheduler does.
fn key() -> SecretKey {
    SecretKey::from_base64(&SecretKey::generate_base64()).unwrap()
}

#[tokio::test]
async fn run_instance_pulls_starts_logs_is_idempotent_and_stops() {
    let w = World::start().await;
    let key = key();
    let node = start_node(&w).await;

    // Registered once, under the id kept in its dir, with the public key of
    // the key pair kept beside it.
    let reg = w
        .store
        .load(&AggregateId::Node(node.id.clone()))
        .await
        .unwrap()
        .events;
    assert_eq!(types(&reg), vec!["node_registered"]);
    let Event::NodeRegistered(r) = &reg[0].event else {
        unreachable!()
    };
    assert_eq!(
        (r.name.as_str(), r.cpu_millis, r.memory_mib),
        ("test-node", 2000, 2048)
    );
    let pair = berth_node::load_or_create_key(&w.node_dir()).unwrap();
    assert_eq!(r.public_key, Some(pair.public().to_base64()));

    let mut spec = w
        .spec(
        "sh -c 'echo hello-$GREETING; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done'",
    ).await;
    // The service's value as the log keeps it, resealed to this node.
    let mut env = EnvVars::new();
    env.insert(
        "GREETING".into(),
        key.seal(
            &Secret::new("sealed-world"),
            &seal_context::env_var(&spec.service, "GREETING"),
        )
        .unwrap(),
    );
    let to = w.node_key(&node.id).await;
    let seal = ForNode {
        key: &key,
        node: &node.id,
        to: &to,
    };
    spec.env = seal.seal_env(&spec.service, &spec.instance, &env).unwrap();
    let mut logs = w
        .client
        .subscribe(w.store.subjects().logs(&spec.service))
        .await
        .unwrap();
    let mut usage = w
        .client
        .subscribe(w.store.subjects().usage(&spec.service, &node.id))
        .await
        .unwrap();
    w.client.flush().await.unwrap();
    let work = NodeWork::RunInstance(spec.clone());
    w.enqueue(&node.id, &work, "run-1").await;

    let events = w
        .wait_events(&spec.service, Duration::from_secs(30), |e| {
            count(e, "instance_started") == 1
        })
        .await;
    let t = types(&events);
    let pulled = t
        .iter()
        .position(|x| *x == "image_pulled")
        .expect("image_pulled");
    let started = t.iter().position(|x| *x == "instance_started").unwrap();
    assert!(pulled < started, "pulled before started: {t:?}");
    for e in by_node(&events) {
        assert_eq!(e.correlation_id.as_ref(), Some(&spec.deploy), "{e:?}");
    }
    // Progress before the pull's end, its last figure complete.
    let progressed: Vec<_> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            Event::ImagePullProgressed(p) => Some((i, p.clone())),
            _ => None,
        })
        .collect();
    let (at, last) = progressed.last().expect("image_pull_progressed");
    assert!(*at < pulled, "{t:?}");
    assert!(
        last.bytes_total > 0 && last.bytes_done == last.bytes_total,
        "{last:?}"
    );
    assert_eq!(last.node, node.id);
    let Event::ImagePulled(p) = &first(&events, "image_pulled").unwrap().event else {
        unreachable!()
    };
    assert_eq!(
        (p.node.clone(), p.digest.as_str()),
        (node.id.clone(), w.digest.as_str())
    );
    let Event::InstanceStarted(s) = &first(&events, "instance_started").unwrap().event else {
        unreachable!()
    };
    assert_eq!(s.instance, spec.instance);

    // Its output, with the env value the node unsealed.
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l == "tick-3") {
        let m = tokio::time::timeout(Duration::from_secs(10), logs.next())
            .await
            .expect("log lines within 10 s")
            .unwrap();
        lines.push(serde_json::from_slice::<LogLine>(&m.payload).unwrap().line);
    }
    assert!(lines[0].starts_with("==> Running: sh -c"), "{lines:?}");
    assert_eq!(lines[1], "hello-sealed-world");

    // What it uses, read from its cgroup, sampled every second here.
    let used = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), usage.next())
            .await
            .expect("a resource sample within 10 s")
            .unwrap();
        let sample: berth_schemas::metrics::UsageSample =
            serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(sample.node, node.id);
        let mine = sample
            .instances
            .iter()
            .find(|u| u.instance == spec.instance)
            .cloned();
        if let Some(u) = mine.filter(|u| u.cpu_nanos > 0) {
            break u;
        }
    };
    assert!(used.memory_bytes > 0, "{used:?}");
    assert_eq!(used.memory_limit_bytes, 0, "no plan, no limit: {used:?}");

    // A redelivery (the same item enqueued again) starts nothing new.
    w.enqueue(&node.id, &work, "run-1-again").await;
    let events = w.events_after(&spec.service, Duration::from_secs(2)).await;
    assert_eq!(
        count(&events, "instance_started"),
        1,
        "{:?}",
        types(&events)
    );
    assert_eq!(
        node::count(&events, "image_pulled"),
        1,
        "no second pull for a running instance"
    );
    assert_eq!(
        agent::runc_list(&w.runc_root()),
        vec![spec.instance.to_string()]
    );

    // Stop.
    w.enqueue(
        &node.id,
        &NodeWork::StopInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
        },
        "stop-1",
    )
    .await;
    let events = w
        .wait_events(&spec.service, Duration::from_secs(20), |e| {
            count(e, "instance_stopped") == 1
        })
        .await;
    assert_eq!(count(&events, "instance_exited"), 0, "{:?}", types(&events));
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    assert!(agent::processes_of(&[&spec.instance]).is_empty());

    // A late redelivery of the start does not bring a stopped instance back.
    w.enqueue(&node.id, &work, "run-1-late").await;
    let events = w.events_after(&spec.service, Duration::from_secs(2)).await;
    assert_eq!(
        count(&events, "instance_started"),
        1,
        "{:?}",
        types(&events)
    );
    assert!(agent::runc_list(&w.runc_root()).is_empty());

    // A restarted node keeps its identity and registers nothing new.
    node.stop().await;
    let again = start_node(&w).await;
    let reg = w
        .store
        .load(&AggregateId::Node(again.id.clone()))
        .await
        .unwrap()
        .events;
    assert_eq!(types(&reg), vec!["node_registered"]);
    again.stop().await;
}

#[tokio::test]
async fn deleted_image_fails_image_not_found_and_nothing_runs() {
    let w = World::start().await;
    let node = start_node(&w).await;
    w.registry
        .delete_manifest(node::REPO, &w.digest)
        .await
        .unwrap();
    let spec = w.spec("echo never").await;
    w.enqueue(&node.id, &NodeWork::RunInstance(spec.clone()), "run")
        .await;
    let events = w
        .wait_events(&spec.service, Duration::from_secs(30), |e| {
            count(e, "image_pull_failed") == 1
        })
        .await;
    let Event::ImagePullFailed(f) = &first(&events, "image_pull_failed").unwrap().event else {
        unreachable!()
    };
    assert_eq!(f.reason, PullFailureReason::ImageNotFound, "{f:?}");
    assert_eq!(f.node.as_ref(), Some(&node.id));
    assert_eq!(f.deploy.as_ref(), Some(&spec.deploy));
    assert!(f.image.contains(&w.digest), "{}", f.image);
    // The job was acked (not retried into a second failure) and nothing ran.
    let events = w.events_after(&spec.service, Duration::from_secs(2)).await;
    assert_eq!(
        count(&events, "image_pull_failed"),
        1,
        "{:?}",
        types(&events)
    );
    assert_eq!(
        count(&events, "instance_started"),
        0,
        "{:?}",
        types(&events)
    );
    // The service's rules ended the deploy.
    assert_eq!(count(&events, "deploy_failed"), 1, "{:?}", types(&events));
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    node.stop().await;
}

#[tokio::test]
async fn crashes_are_recorded_as_exited_and_restarted_one_offs_run_once() {
    let w = World::start().await;
    let node = start_node(&w).await;
    let spec = w.spec("sh -c 'echo crashing; exit 3'").await;
    w.enqueue(&node.id, &NodeWork::RunInstance(spec.clone()), "run")
        .await;
    let events = w
        .wait_events(&spec.service, Duration::from_secs(30), |e| {
            count(e, "server_restarted") >= 1 && count(e, "instance_exited") >= 2
        })
        .await;
    let exited: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::InstanceExited(x) => Some(x.clone()),
            _ => None,
        })
        .collect();
    assert!(exited
        .iter()
        .all(|x| x.exit_code == Some(3) && x.instance == spec.instance));
    let Event::ServerRestarted(r) = &first(&events, "server_restarted").unwrap().event else {
        unreachable!()
    };
    assert_eq!(r.attempt, 1);
    for e in by_node(&events) {
        assert_eq!(e.correlation_id.as_ref(), Some(&spec.deploy), "{e:?}");
    }
    w.enqueue(
        &node.id,
        &NodeWork::StopInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
        },
        "stop",
    )
    .await;
    w.wait_events(&spec.service, Duration::from_secs(20), |e| {
        count(e, "instance_stopped") == 1
    })
    .await;

    // A pre-deploy one-off: runs to completion once, even when its item
    // comes again, and its exit code ends the pre-deploy.
    let once = w.spec("sh -c 'echo once-ran; exit 3'").await;
    w.command(
        &once.service,
        berth_domain::service::Command::RecordPreDeployStarted {
            deploy: once.deploy.clone(),
        },
    )
    .await;
    let mut logs = w.subscribe_logs(&once.service).await;
    let work = NodeWork::RunOnce {
        spec: once.clone(),
        timeout_secs: 20,
        purpose: Some(OneOffPurpose::PreDeploy),
        seen: 0,
    };
    w.enqueue(&node.id, &work, "once-1").await;
    let line = |m: async_nats::Message| serde_json::from_slice::<LogLine>(&m.payload).unwrap().line;
    let first_line = tokio::time::timeout(Duration::from_secs(30), logs.next())
        .await
        .expect("the one-off's output within 30 s")
        .unwrap();
    let mut seen = vec![line(first_line)];
    // Enqueued again after it ran: it must not run a second time.
    w.enqueue(&node.id, &work, "once-2").await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), logs.next()).await {
        seen.push(line(m));
    }
    // What ran, its output and how it ended, once.
    assert_eq!(
        seen,
        [
            "==> Running: sh -c 'echo once-ran; exit 3'",
            "once-ran",
            "==> Exited with status 3"
        ]
    );
    let events = w.events_after(&once.service, Duration::ZERO).await;
    assert_eq!(count(&events, "image_pulled"), 1, "{:?}", types(&events));
    assert_eq!(
        count(&events, "instance_started"),
        0,
        "{:?}",
        types(&events)
    );
    assert_eq!(count(&events, "instance_exited"), 0, "{:?}", types(&events));
    assert_eq!(
        count(&events, "pre_deploy_ended"),
        1,
        "{:?}",
        types(&events)
    );
    let Event::PreDeployEnded(end) = &first(&events, "pre_deploy_ended").unwrap().event else {
        unreachable!()
    };
    assert_eq!((end.success, end.exit_code), (false, Some(3)));
    assert_eq!(count(&events, "deploy_failed"), 1, "{:?}", types(&events));
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    node.stop().await;
}

#[tokio::test]
async fn private_registry_pulls_with_the_sealed_credential_only() {
    let w = World::start_with(RegistryAuth::Htpasswd {
        user: "puller".into(),
        pass: "s3cret-pass".into(),
    })
    .await;
    let key = key();
    let node = start_node(&w).await;
    let to = w.node_key(&node.id).await;
    let seal = ForNode {
        key: &key,
        node: &node.id,
        to: &to,
    };
    let owner = OwnerId::User(UserId::generate());

    // A credential as ingress stores it: the token sealed for its id.
    let cred = CredentialId::generate();
    let token = key
        .seal(
            &Secret::new("s3cret-pass"),
            &seal_context::credential_token(&cred),
        )
        .unwrap();
    let create = credential::Command::Create {
        owner: owner.clone(),
        name: "reg".into(),
        registry: RegistryKind::Generic,
        host: Some(w.registry.host.clone()),
        username: "puller".into(),
        token: token.clone(),
    };
    w.store
        .execute::<credential::CredentialAggregate>(
            &AggregateId::Credential(cred.clone()),
            "create",
            &berth_eventlog::Stamp::new(Actor::system("test")),
            create,
        )
        .await
        .unwrap();

    // The credential's login sealed to this node for `spec`, as the
    // scheduler composes it.
    let with_login = |mut spec: NodeRunSpec| {
        spec.credential = Some(cred.clone());
        spec.login = Some(
            seal.seal_login(&spec.service, &spec.instance, &cred, "puller", &token)
                .unwrap(),
        );
        spec
    };

    // Unauthorized, each with its reason: no credential; one that does not
    // exist; a live one of another owner (its login even sealed to this
    // node); the owner's, but the item carries no login for this node; the
    // owner's, with a login sealed for another instance.
    let anonymous = w.spec("echo never").await;
    let mut unknown = w.spec("echo never").await;
    unknown.credential = Some(CredentialId::generate());
    let strangers = with_login(w.spec("echo never").await);
    let mut bare = with_login(w.spec_of(&owner, "echo never").await);
    bare.login = None;
    let mut elsewhere = with_login(w.spec_of(&owner, "echo never").await);
    elsewhere.login = with_login(w.spec_of(&owner, "echo never").await).login;
    for (s, why) in [
        (&anonymous, "requires credentials"),
        (&unknown, "does not exist"),
        (&strangers, "not this owner's"),
        (&bare, "carries no login"),
        (&elsewhere, "cannot be opened on this node"),
    ] {
        w.enqueue(
            &node.id,
            &NodeWork::RunInstance(s.clone()),
            s.instance.as_str(),
        )
        .await;
        let events = w
            .wait_events(&s.service, Duration::from_secs(30), |e| {
                count(e, "image_pull_failed") == 1
            })
            .await;
        let Event::ImagePullFailed(f) = &first(&events, "image_pull_failed").unwrap().event else {
            unreachable!()
        };
        assert_eq!(f.reason, PullFailureReason::Unauthorized, "{f:?}");
        assert!(f.message.contains(why), "{why}: {}", f.message);
        assert!(!f.message.contains("s3cret"), "{}", f.message);
    }

    // With it: pulled and started.
    let good = with_login(w.spec_of(&owner, "sh -c 'echo authorized; sleep 60'").await);
    w.enqueue(&node.id, &NodeWork::RunInstance(good.clone()), "good")
        .await;
    w.wait_events(&good.service, Duration::from_secs(30), |e| {
        count(e, "instance_started") == 1
    })
    .await;
    w.enqueue(
        &node.id,
        &NodeWork::StopInstance {
            service: good.service.clone(),
            instance: good.instance.clone(),
        },
        "stop-good",
    )
    .await;
    w.wait_events(&good.service, Duration::from_secs(20), |e| {
        count(e, "instance_stopped") == 1
    })
    .await;
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    node.stop().await;
}

/// A job whose start an earlier delivery of its work recorded (its node
/// went down while it ran, and the agent's restart ended its container)
/// is not run a second time: it may have done part of its work. It ends
/// failed, saying why, before its image is pulled; nothing runs.
#[tokio::test]
async fn an_interrupted_job_ends_failed_and_is_not_run_again() {
    use berth_domain::service::Command;
    let w = World::start().await;
    let node = start_node(&w).await;
    let mut spec = w.spec("sh -c 'echo the-job-ran'").await;
    for command in [
        Command::RecordUpdateStarted {
            deploy: spec.deploy.clone(),
        },
        Command::RecordLive {
            deploy: spec.deploy.clone(),
            digest: w.digest.clone(),
        },
    ] {
        w.command(&spec.service, command).await;
    }
    let job = berth_schemas::ids::JobId::generate();
    w.command(
        &spec.service,
        Command::CreateJob {
            job: job.clone(),
            start_command: "sh -c 'echo the-job-ran'".into(),
            plan: None,
        },
    )
    .await;
    // What the earlier delivery recorded before its node went down.
    w.command(
        &spec.service,
        Command::RecordJobStarted { job: job.clone() },
    )
    .await;
    spec.instance = berth_domain::service::job_instance(&job);
    let mut logs = w.subscribe_logs(&spec.service).await;
    let work = NodeWork::RunOnce {
        spec: spec.clone(),
        timeout_secs: 20,
        purpose: Some(OneOffPurpose::Job { job: job.clone() }),
        seen: 0,
    };
    w.enqueue(&node.id, &work, "job-again").await;
    let events = w
        .wait_events(&spec.service, Duration::from_secs(30), |e| {
            count(e, "job_ended") == 1
        })
        .await;
    let Event::JobEnded(end) = &first(&events, "job_ended").unwrap().event else {
        unreachable!()
    };
    assert_eq!(end.status, "failed");
    assert!(
        end.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("interrupted: its node restarted")),
        "{end:?}"
    );
    assert_eq!(count(&events, "job_started"), 1, "{:?}", types(&events));
    // Nothing ran, nothing was even pulled for it: no output but berth's
    // line saying why, no container.
    assert_eq!(count(&events, "image_pulled"), 0, "{:?}", types(&events));
    let mut said = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), logs.next()).await {
        said.push(serde_json::from_slice::<LogLine>(&m.payload).unwrap().line);
    }
    assert_eq!(said.len(), 1, "the job ran again: {said:?}");
    assert!(
        said[0].contains("its node restarted while it ran"),
        "{said:?}"
    );
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    node.stop().await;
}

/// A cron run whose node went down while it ran (the agent's restart
/// ended its container) is not run again when its work item comes back:
/// it may have done part of its work. It ends failed, says why in the
/// service's logs, and its command ran once.
#[tokio::test]
async fn an_interrupted_cron_run_ends_failed_and_is_not_run_again() {
    use berth_domain::service::{Command, CreateService};
    use berth_schemas::ids::{CronRunId, DeployId, ServiceId};
    use berth_schemas::model::{ResolvedImage, Sealed, ServiceType};
    let w = World::start().await;
    let node = start_node(&w).await;
    let (service, deploy) = (ServiceId::generate(), DeployId::generate());
    let mut create = CreateService::new(
        OwnerId::User(UserId::generate()),
        &format!("cron-{}", &service.as_str()[4..12]),
        ServiceType::CronJob,
        &format!("{}/{}:v1", w.registry.host, node::REPO),
        Sealed {
            kid: "k".into(),
            ciphertext: "x".into(),
        },
        deploy.clone(),
    );
    create.schedule = Some("0 0 1 1 *".into());
    let image = ResolvedImage {
        digest: w.digest.clone(),
        index_digest: None,
        compressed_size: 1,
    };
    let run = CronRunId::generate();
    for command in [
        Command::Create(Box::new(create)),
        Command::RecordResolved {
            deploy: deploy.clone(),
            image,
        },
        Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        },
        Command::RecordLive {
            deploy: deploy.clone(),
            digest: w.digest.clone(),
        },
        Command::StartCronRun {
            run: run.clone(),
            manual: true,
            scheduled_for: None,
        },
    ] {
        w.command(&service, command).await;
    }
    let mut spec = w.spec("sh -c 'echo the-run-ran; exec sleep 600'").await;
    spec.service = service.clone();
    spec.deploy = deploy;
    spec.port = None;
    let mut logs = w.subscribe_logs(&service).await;
    let work = NodeWork::RunOnce {
        spec: spec.clone(),
        timeout_secs: 600,
        purpose: Some(OneOffPurpose::CronRun { run: run.clone() }),
        seen: 0,
    };
    w.enqueue(&node.id, &work, "cron-run").await;
    let line = |m: async_nats::Message| -> String {
        let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
        l.line
    };
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), logs.next())
            .await
            .expect("the run's output within 30 s")
            .unwrap();
        if line(m) == "the-run-ran" {
            break;
        }
    }

    // The node goes down mid-run; the next one ends the container it
    // finds and gets the work item again.
    node.stop().await;
    let node = start_node(&w).await;
    let events = w
        .wait_events(&service, Duration::from_secs(60), |e| {
            count(e, "cron_job_run_ended") == 1
        })
        .await;
    let Event::CronJobRunEnded(end) = &first(&events, "cron_job_run_ended").unwrap().event else {
        unreachable!()
    };
    assert_eq!((end.run.clone(), end.status.as_str()), (run, "failed"));
    let mut said = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), logs.next()).await {
        said.push(line(m));
    }
    assert!(
        !said.iter().any(|l| l == "the-run-ran"),
        "the run ran again: {said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.contains("its node restarted while it ran")),
        "{said:?}"
    );
    assert!(agent::runc_list(&w.runc_root()).is_empty());
    node.stop().await;
}

//! `GET /v1/nodes` (every registered node, its heartbeat as heard, and only
//! the caller's instances counted) and `GET /v1/cron-jobs/{id}/runs` (a
//! cron job's runs from its timeline, newest first, paged, ended ones with
//! how they ended); an instance's exit in its listing and on the timeline;
//! a service's one-off jobs (`/v1/services/{id}/jobs`).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use berth_domain::node::{self, Capacity};
use berth_domain::service::{self, Command};
use berth_domain::timeline::KEPT_PER_SERVICE;
use berth_eventlog::Stamp;
use berth_schemas::events::{InstanceExited, InstancePortDetected, InstanceScheduled};
use berth_schemas::heartbeat::Heartbeat;
use berth_schemas::ids::{CronRunId, DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::{Actor, AggregateId};
use serde_json::{json, Value};

use crate::support::App;

/// Reports `commands` on service `svc` as the workers would.
async fn record(app: &App, svc: &str, commands: Vec<Command>) {
    let id = AggregateId::Service(svc.parse::<ServiceId>().unwrap());
    let stamp = Stamp::new(Actor::system("test"));
    for command in commands {
        app.store
            .execute::<service::Service>(&id, &uuid_key(), &stamp, command)
            .await
            .unwrap();
    }
}

fn uuid_key() -> String {
    DeployId::generate().to_string()
}

/// Takes `svc`'s first deploy live; returns (deploy, digest).
async fn first_deploy_live(app: &App, o: &crate::support::Owner, svc: &str) -> (DeployId, String) {
    let (dep, digest) = app.go_live(o, svc).await;
    (dep.parse().unwrap(), digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_with_their_heartbeat_and_only_your_instances() {
    let app = App::start(true).await;
    let (alice, bob) = (app.owner().await, app.owner().await);

    let (s, v) = app.get("/v1/nodes", &alice).await;
    assert_eq!((s, v.clone()), (StatusCode::OK, json!([])), "{v}");
    let (s, _) = app
        .call(axum::http::Method::GET, "/v1/nodes", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (n1, n2) = (NodeId::generate(), NodeId::generate());
    for (n, name) in [(&n1, "one"), (&n2, "two")] {
        app.store
            .execute::<node::Node>(
                &AggregateId::Node(n.clone()),
                &format!("register-{n}"),
                &Stamp::new(Actor::system("test")),
                node::Command::Register {
                    capacity: Capacity {
                        name: name.to_owned(),
                        cpu_millis: 2000,
                        memory_mib: 1024,
                    },
                    public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned(),
                    reach: None,
                },
            )
            .await
            .unwrap();
    }
    // Two is lost.
    app.store
        .execute::<node::Node>(
            &AggregateId::Node(n2.clone()),
            "lost",
            &Stamp::new(Actor::system("test")),
            node::Command::DeclareLost {
                last_heartbeat: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();

    // Alice has two instances on one, Bob one.
    for (o, name, n) in [(&alice, "a", 2), (&bob, "b", 1)] {
        let (svc, _) = app.service(o, name).await;
        let (deploy, digest) = first_deploy_live(&app, o, &svc).await;
        let scheduled = (0..n)
            .map(|_| InstanceScheduled {
                instance: InstanceId::generate(),
                deploy: deploy.clone(),
                node: n1.clone(),
                digest: digest.clone(),
            })
            .collect();
        record(
            &app,
            &svc,
            vec![Command::Place {
                scheduled,
                rescheduled: vec![],
            }],
        )
        .await;
    }

    // One heart-beats; the API hears it.
    let hb = Heartbeat {
        node: n1.clone(),
        time: chrono::Utc::now(),
        instances: vec![],
    };
    let client = app.store.client().clone();
    let subject = app.store.subjects().heartbeat();
    let t0 = std::time::Instant::now();
    let listed = loop {
        client
            .publish(subject.clone(), serde_json::to_vec(&hb).unwrap().into())
            .await
            .unwrap();
        let (s, v) = app.get("/v1/nodes", &alice).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let heard = v
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == n1.as_str() && n["lastHeartbeatAt"].is_string());
        if heard {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no heartbeat heard: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id = |v: &Value, id: &NodeId| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {v}"))
    };
    let one = by_id(&listed, &n1);
    assert_eq!(
        (
            one["name"].as_str(),
            one["state"].as_str(),
            one["cpuMillis"].as_u64()
        ),
        (Some("one"), Some("alive"), Some(2000)),
        "{one}"
    );
    assert_eq!(one["memoryMib"], 1024, "{one}");
    assert_eq!(one["instances"], 2, "Alice's instances only: {one}");
    let two = by_id(&listed, &n2);
    assert_eq!(two["state"], "lost", "{two}");
    assert!(two["lastHeartbeatAt"].is_null(), "never heard: {two}");
    assert!(two["stateChangedAt"].is_string(), "{two}");
    assert_eq!(two["instances"], 0, "{two}");

    let (_, for_bob) = app.get("/v1/nodes", &bob).await;
    assert_eq!(
        by_id(&for_bob, &n1)["instances"],
        1,
        "Bob's only: {for_bob}"
    );
    let text = for_bob.to_string();
    assert!(!text.contains("srv-") && !text.contains("ins-"), "{text}");
}

/// An instance's exit shows where an operator looks: what went wrong in
/// the instance listing, and an `instance_exited` entry on the timeline
/// (berth's own type: listed when asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_exit_shows_in_the_listing_and_on_the_timeline() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "oom").await;
    let (deploy, digest) = first_deploy_live(&app, &alice, &svc).await;
    let instance = InstanceId::generate();
    let exited = InstanceExited {
        exit_code: Some(137),
        oom_killed: true,
        ..InstanceExited::of(instance.clone())
    };
    record(
        &app,
        &svc,
        vec![
            Command::Place {
                scheduled: vec![InstanceScheduled {
                    instance: instance.clone(),
                    deploy,
                    node: NodeId::generate(),
                    digest,
                }],
                rescheduled: vec![],
            },
            Command::RecordInstanceFact(Box::new(exited.into())),
        ],
    )
    .await;
    let says = "ran out of memory: killed for going over its memory limit";
    let t0 = std::time::Instant::now();
    loop {
        let (s, v) = app
            .get(&format!("/v1/services/{svc}/instances"), &alice)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v[0]["problem"] == says {
            assert_eq!(v[0]["id"], instance.as_str());
            assert_eq!(v[0]["phase"], "exited");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("/v1/services/{svc}/events");
    let (_, all) = app.get(&path, &alice).await;
    assert!(
        !all.to_string().contains("instance_exited"),
        "Render's types only: {all}"
    );
    let (s, v) = app
        .get(&format!("{path}?type=instance_exited"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let details = &v[0]["event"]["details"];
    assert_eq!(details["instanceId"], instance.as_str(), "{v}");
    assert_eq!(details["outOfMemory"], true, "{v}");
    assert_eq!(details["message"], says, "{v}");
}

/// A port detected on an instance shows where Render shows it: the
/// service's `openPorts`, and an `instance_port_detected` entry on the
/// timeline saying what berth did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detected_port_shows_in_open_ports_and_on_the_timeline() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = app.web_service(&alice, "fixed").await;
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["openPorts"], json!([]), "{v}");
    let instance = InstanceId::generate();
    let detected = InstancePortDetected {
        instance: instance.clone(),
        port: 3000,
        expected: 10000,
    };
    record(
        &app,
        &svc,
        vec![Command::RecordInstanceFact(Box::new(detected.into()))],
    )
    .await;
    let t0 = std::time::Instant::now();
    loop {
        let (s, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["serviceDetails"]["openPorts"] != json!([]) {
            assert_eq!(
                v["serviceDetails"]["openPorts"],
                json!([{"port": 3000, "protocol": "TCP"}]),
                "{v}"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}")).await;
    assert!(
        page.html.contains("<dt>Port</dt><dd><code>3000</code>"),
        "{}",
        page.html
    );
    let path = format!("/v1/services/{svc}/events?type=instance_port_detected");
    let (s, v) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let details = &v[0]["event"]["details"];
    assert_eq!(details["instanceId"], instance.as_str(), "{v}");
    assert_eq!(
        (details["port"].as_u64(), details["expectedPort"].as_u64()),
        (Some(3000), Some(10000)),
        "{v}"
    );
    assert_eq!(
        details["message"],
        "detected service running on port 3000: served there, as the service sets no PORT (berth expected 10000; set PORT=3000 to say so)",
        "{v}"
    );

    // A service that sets PORT serves there: nothing detected is shown.
    let (s, v) = app
        .call(
            Method::PUT,
            &format!("/v1/services/{svc}/env-vars"),
            Some(&alice.key),
            Some(json!([{"key": "PORT", "value": "3000"}])),
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
        if v["serviceDetails"]["openPorts"] == json!([]) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_are_listed_newest_first_with_how_they_ended() {
    let app = App::start(true).await;
    let (alice, bob) = (app.owner().await, app.owner().await);
    let svc = app.cron_job(&alice, "nightly").await;
    let runs_path = format!("/v1/cron-jobs/{svc}/runs");
    let (s, v) = app.get(&runs_path, &alice).await;
    assert_eq!((s, v.clone()), (StatusCode::OK, json!([])), "{v}");

    let (_, digest) = first_deploy_live(&app, &alice, &svc).await;
    let (s, first) = app.post(&runs_path, &alice, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let first_id = first["id"].as_str().unwrap().to_owned();
    record(
        &app,
        &svc,
        vec![Command::RecordCronRunEnded {
            run: first_id.parse().unwrap(),
            status: "failed".to_owned(),
            exit_code: Some(3),
            reason: None,
        }],
    )
    .await;
    let (_, second) = app.post(&runs_path, &alice, json!({})).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    // The scheduler gives the active run to a node.
    let node = NodeId::generate();
    record(
        &app,
        &svc,
        vec![Command::RecordCronRunPlaced {
            run: second_id.parse().unwrap(),
            node: node.clone(),
        }],
    )
    .await;

    let (s, v) = app.get(&runs_path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let runs: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["cronJobRun"])
        .collect();
    assert_eq!(runs.len(), 2, "{v}");
    assert_eq!(runs[0]["id"], second_id.as_str(), "newest first: {v}");
    assert_eq!(
        (runs[0]["status"].as_str(), runs[0]["runStatus"].as_str()),
        (Some("pending"), Some("running")),
        "{v}"
    );
    assert!(runs[0]["finishedAt"].is_null(), "{v}");
    assert_eq!(runs[0]["nodeId"], node.to_string().as_str(), "{v}");
    assert!(runs[1]["nodeId"].is_null(), "an ended run's: {v}");
    assert_eq!(runs[1]["id"], first_id.as_str(), "{v}");
    assert_eq!(
        (
            runs[1]["status"].as_str(),
            runs[1]["runStatus"].as_str(),
            runs[1]["exitCode"].as_i64(),
            runs[1]["triggeredBy"].as_str(),
        ),
        (Some("unsuccessful"), Some("failed"), Some(3), Some("api")),
        "{v}"
    );
    assert!(runs[1]["finishedAt"].is_string(), "{v}");
    assert_eq!(runs[1]["digest"], digest.as_str(), "{v}");

    // Paged: one at a time, the cursor leads to the older run.
    let (_, page) = app.get(&format!("{runs_path}?limit=1"), &alice).await;
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");
    let cursor = page[0]["cursor"].as_str().unwrap();
    let (_, next) = app
        .get(&format!("{runs_path}?limit=1&cursor={cursor}"), &alice)
        .await;
    assert_eq!(next[0]["cronJobRun"]["id"], first_id.as_str(), "{next}");
    let (s, _) = app
        .get(&format!("{runs_path}?cursor=evt-nosuch"), &alice)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // More runs than the read model holds entries for: the older pages
    // come from the log, and every run is listed once.
    record(
        &app,
        &svc,
        vec![Command::RecordCronRunEnded {
            run: second_id.parse().unwrap(),
            status: "succeeded".to_owned(),
            exit_code: Some(0),
            reason: None,
        }],
    )
    .await;
    let more = KEPT_PER_SERVICE / 2 + 40;
    for _ in 0..more {
        let run = CronRunId::generate();
        record(
            &app,
            &svc,
            vec![
                Command::StartCronRun {
                    run: run.clone(),
                    manual: false,
                    scheduled_for: Some(chrono::Utc::now()),
                },
                Command::RecordCronRunEnded {
                    run,
                    status: "succeeded".to_owned(),
                    exit_code: Some(0),
                    reason: None,
                },
            ],
        )
        .await;
    }
    let listed: Vec<String> = app
        .all_pages(&runs_path, &alice, "cronJobRun")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), more + 2, "every run once");
    assert_eq!(listed.last().map(String::as_str), Some(first_id.as_str()));
    let unique: std::collections::HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len());
    // Small pages, deep into the entries held and then from the log: each
    // run shows how it ended (a held page reads only the ends up to the
    // next run's start; one that stops short leaves a run "pending").
    let mut cursor = String::new();
    let mut seen = 0;
    loop {
        let (s, page) = app
            .get(&format!("{runs_path}?limit=7{cursor}"), &alice)
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let items = page.as_array().unwrap();
        let Some(last) = items.last() else { break };
        for run in items.iter().map(|i| &i["cronJobRun"]) {
            let ended = if run["id"] == first_id.as_str() {
                "unsuccessful"
            } else {
                "successful"
            };
            assert_eq!(run["status"], ended, "{run}");
            assert!(run["finishedAt"].is_string(), "{run}");
        }
        seen += items.len();
        cursor = format!("&cursor={}", last["cursor"].as_str().unwrap());
    }
    assert_eq!(seen, more + 2);

    // Another owner's cron job does not exist; a worker has no runs.
    let (s, _) = app.get(&runs_path, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (worker, _) = app.service(&alice, "w").await;
    let (s, v) = app
        .get(&format!("/v1/cron-jobs/{worker}/runs"), &alice)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "type", "{v}");
}

/// Render's one-off jobs: asked for on the live image (201, pending),
/// then as the node reports them (running, how they ended), listed newest
/// first with Render's status filter, canceled; refused without a live
/// deploy, for an unknown instance type, and for another owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_jobs_are_created_listed_and_canceled() {
    let app = App::start(true).await;
    let (alice, bob) = (app.owner().await, app.owner().await);
    let svc = app.web_service(&alice, "jobs").await;
    let jobs = format!("/v1/services/{svc}/jobs");
    let body = json!({"startCommand": "rake db:migrate"});
    // No live deploy yet: nothing to run the job in.
    let (s, v) = app.post(&jobs, &alice, body.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, digest) = first_deploy_live(&app, &alice, &svc).await;

    let (s, first) = app.post(&jobs, &alice, body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "pending", "{first}");
    assert_eq!(first["serviceId"], svc.as_str());
    assert_eq!(first["startCommand"], "rake db:migrate");
    assert_eq!(first["planId"], "starter", "the service's own: {first}");
    assert_eq!(first["digest"], digest.as_str());
    assert!(
        first["createdAt"].as_str().is_some_and(|t| t > "2026"),
        "when it was asked for: {first}"
    );
    assert!(first["startedAt"].is_null(), "{first}");
    assert!(first["nodeId"].is_null(), "not placed yet: {first}");
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert!(first_id.starts_with("job-"), "{first_id}");
    assert_eq!(
        first["instanceId"].as_str(),
        Some(format!("ins-{}", &first_id[4..]).as_str()),
        "the container its lines carry: {first}"
    );
    let (s, second) = app
        .post(
            &jobs,
            &alice,
            json!({"startCommand": "sleep 600", "planId": "standard"}),
        )
        .await;
    assert_eq!(
        (s, second["planId"].as_str()),
        (StatusCode::CREATED, Some("standard"))
    );
    let second_id = second["id"].as_str().unwrap().to_owned();
    for (bad, why) in [
        (
            json!({"startCommand": "true", "planId": "enormous"}),
            "planId",
        ),
        (json!({"startCommand": "   "}), "startCommand"),
        (json!({}), "startCommand"),
    ] {
        let (s, v) = app.post(&jobs, &alice, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{v}");
    }

    // Placed on a node, which reports it started, then failed with its
    // code.
    let job: berth_schemas::ids::JobId = first_id.parse().unwrap();
    let node = berth_schemas::ids::NodeId::generate();
    record(
        &app,
        &svc,
        vec![
            Command::RecordJobPlaced {
                job: job.clone(),
                node: node.clone(),
            },
            Command::RecordJobStarted { job: job.clone() },
            Command::RecordJobEnded {
                job,
                success: false,
                exit_code: Some(4),
                reason: None,
            },
        ],
    )
    .await;
    let (s, got) = app.get(&format!("{jobs}/{first_id}"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(
        (got["status"].as_str(), got["exitCode"].as_i64()),
        (Some("failed"), Some(4))
    );
    assert!(
        got["startedAt"].is_string() && got["finishedAt"].is_string(),
        "{got}"
    );
    assert_eq!(got["nodeId"], node.as_str(), "where it ran: {got}");

    let (s, v) = app.get(&jobs, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["job"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_id.as_str(), first_id.as_str()], "newest first");
    assert_eq!(v[0]["cursor"], second_id.as_str());
    let (_, failed) = app.get(&format!("{jobs}?status=failed"), &alice).await;
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["job"]["id"], first_id.as_str());
    let (s, _) = app.get(&format!("{jobs}?status=exploded"), &alice).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, page) = app
        .get(&format!("{jobs}?limit=1&cursor={second_id}"), &alice)
        .await;
    assert_eq!(page[0]["job"]["id"], first_id.as_str(), "{page}");

    // Cancel: the pending one ends canceled; an ended one stays as it is.
    let (s, canceled) = app
        .post(&format!("{jobs}/{second_id}/cancel"), &alice, json!({}))
        .await;
    assert_eq!(
        (s, canceled["status"].as_str()),
        (StatusCode::OK, Some("canceled")),
        "{canceled}"
    );
    let (s, still) = app
        .post(&format!("{jobs}/{first_id}/cancel"), &alice, json!({}))
        .await;
    assert_eq!(
        (s, still["status"].as_str()),
        (StatusCode::OK, Some("failed"))
    );
    let (s, _) = app.get(&format!("{jobs}/job-nosuch"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .get(
            &format!("{jobs}/{}", berth_schemas::ids::JobId::generate()),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // More jobs than the service holds: the first is still found, and
    // every job is listed once, the older pages read from the log.
    let mut more = Vec::new();
    for _ in 0..berth_domain::service::KEPT_JOBS {
        let job = berth_schemas::ids::JobId::generate();
        more.push(Command::CreateJob {
            job: job.clone(),
            start_command: "true".into(),
            plan: None,
        });
        more.push(Command::RecordJobEnded {
            job,
            success: true,
            exit_code: Some(0),
            reason: None,
        });
    }
    record(&app, &svc, more).await;
    let (s, got) = app.get(&format!("{jobs}/{first_id}"), &alice).await;
    assert_eq!(
        (s, got["status"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{got}"
    );
    let all = app.all_pages(&jobs, &alice, "job").await;
    let mut ids: Vec<&str> = all.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), berth_domain::service::KEPT_JOBS + 2);
    assert_eq!(ids.last(), Some(&first_id.as_str()), "oldest last");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), berth_domain::service::KEPT_JOBS + 2, "each once");
    let (_, failed) = app.get(&format!("{jobs}?status=failed"), &alice).await;
    assert_eq!(failed[0]["job"]["id"], first_id.as_str(), "{failed}");

    // Another owner sees none of it and can run nothing there.
    for (s, _) in [
        app.get(&jobs, &bob).await,
        app.get(&format!("{jobs}/{first_id}"), &bob).await,
        app.post(&jobs, &bob, body.clone()).await,
        app.post(&format!("{jobs}/{second_id}/cancel"), &bob, json!({}))
            .await,
    ] {
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

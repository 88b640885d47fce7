//! Bus commands (SPEC §12): a valid `scale` changes the instance count; an
//! invalid command (bad count, unknown service, garbage, bad request id)
//! is answered with the reason as data and appends nothing; a `deploy`
//! republished with the same request id creates one deploy.

use std::time::Duration;

use berth_api::bus::CommandReply;
use berth_schemas::commands::{DeployCommand, RestartCommand, ScaleCommand};
use berth_schemas::ids::{OwnerId, ServiceId};
use berth_schemas::subjects::CommandKind;
use berth_schemas::{AggregateId, Event};

use crate::support::App;

async fn ask<T: serde::Serialize>(
    app: &App,
    owner: &OwnerId,
    kind: CommandKind,
    cmd: &T,
) -> CommandReply {
    ask_raw(app, owner, kind, rmp_serde::to_vec_named(cmd).unwrap()).await
}

async fn ask_raw(app: &App, owner: &OwnerId, kind: CommandKind, payload: Vec<u8>) -> CommandReply {
    let subject = app.store.subjects().command(owner, kind);
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        app.store.client().request(subject, payload.into()),
    )
    .await
    .unwrap()
    .unwrap();
    // The documented contract: a JSON object.
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", msg.payload))
}

/// An API answering bus commands until the test ends.
async fn serving() -> App {
    let app = App::start(true).await;
    let subs = berth_api::bus::subscribe(&app.state.ingress).await.unwrap();
    tokio::spawn(berth_api::bus::serve(
        app.state.ingress.clone(),
        subs,
        app.shutdown.clone(),
    ));
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_restart_and_deploy_commands() {
    let app = serving().await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "scaled").await;
    let service: ServiceId = svc.parse().unwrap();
    let id = AggregateId::Service(service.clone());
    // Let the resolver finish so the log is at rest.
    let first = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &first).await;

    let r = ask(
        &app,
        &alice.id,
        CommandKind::Scale,
        &ScaleCommand {
            request_id: "req-1".into(),
            service: service.clone(),
            num_instances: 4,
        },
    )
    .await;
    assert!(r.ok, "{r:?}");
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["numInstances"], 4);
    let changed = app
        .events_of(&id)
        .await
        .into_iter()
        .filter(|e| matches!(&e.event, Event::InstanceCountChanged(c) if c.from == 1 && c.to == 4))
        .count();
    assert_eq!(changed, 1);

    // Invalid commands: reason as data, nothing appended.
    let before = app.last_seq().await;
    let r = ask(
        &app,
        &alice.id,
        CommandKind::Scale,
        &ScaleCommand {
            request_id: "req-2".into(),
            service: service.clone(),
            num_instances: 0,
        },
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.status, 400);
    assert!(
        r.message.as_deref().unwrap().contains("numInstances"),
        "{r:?}"
    );
    let r = ask(
        &app,
        &alice.id,
        CommandKind::Scale,
        &ScaleCommand {
            request_id: "req-3".into(),
            service: ServiceId::generate(),
            num_instances: 2,
        },
    )
    .await;
    assert_eq!((r.ok, r.status), (false, 404), "{r:?}");
    let r = ask(
        &app,
        &alice.id,
        CommandKind::Scale,
        &ScaleCommand {
            request_id: String::new(),
            service: service.clone(),
            num_instances: 2,
        },
    )
    .await;
    assert_eq!((r.ok, r.status), (false, 400), "{r:?}");
    assert!(r.message.as_deref().unwrap().contains("requestId"), "{r:?}");
    let r = ask_raw(&app, &alice.id, CommandKind::Scale, b"\xc1garbage".to_vec()).await;
    assert_eq!((r.ok, r.status), (false, 400), "{r:?}");
    // Unknown fields are refused like the API refuses them.
    let r = ask_raw(
        &app,
        &alice.id,
        CommandKind::Restart,
        rmp_serde::to_vec_named(
            &serde_json::json!({"requestId": "r", "service": svc, "force": true}),
        )
        .unwrap(),
    )
    .await;
    assert_eq!((r.ok, r.status), (false, 400), "{r:?}");
    let r = ask(
        &app,
        &alice.id,
        CommandKind::Deploy,
        &DeployCommand {
            request_id: "dep-x".into(),
            service: service.clone(),
            image_url: Some("docker.io/library/other:1".into()),
        },
    )
    .await;
    assert_eq!((r.ok, r.status), (false, 400), "{r:?}");
    // Nothing live: a restart is a conflict.
    let r = ask(
        &app,
        &alice.id,
        CommandKind::Restart,
        &RestartCommand {
            request_id: "r-1".into(),
            service: service.clone(),
        },
    )
    .await;
    assert_eq!((r.ok, r.status), (false, 409), "{r:?}");
    assert_eq!(app.last_seq().await, before, "a refused command appended");
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["numInstances"], 4);

    // Deploy, republished with the same request id: one deploy.
    let cmd = DeployCommand {
        request_id: "ci-42".into(),
        service: service.clone(),
        image_url: None,
    };
    let a = ask(&app, &alice.id, CommandKind::Deploy, &cmd).await;
    let b = ask(&app, &alice.id, CommandKind::Deploy, &cmd).await;
    assert!(a.ok && b.ok, "{a:?} {b:?}");
    assert_eq!(a.deploy, b.deploy);
    // Republished after another deploy landed (its first answer lost, say):
    // still the deploy it made, not the newest.
    let other = DeployCommand {
        request_id: "ci-43".into(),
        ..cmd.clone()
    };
    let c = ask(&app, &alice.id, CommandKind::Deploy, &other).await;
    let again = ask(&app, &alice.id, CommandKind::Deploy, &cmd).await;
    assert!(c.ok && again.ok, "{c:?} {again:?}");
    assert_ne!(c.deploy, a.deploy);
    assert_eq!(
        again.deploy, a.deploy,
        "the republished command's own deploy"
    );
    let (_, list) = app
        .get(&format!("/v1/services/{svc}/deploys"), &alice)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

/// The documented contract, spoken by a client no one here wrote: Python's
/// `nats-py` sends MessagePack (named fields, as `docs/integration.md`
/// says) and JSON bodies and reads the JSON replies; the same request id
/// twice acts once; a refusal is data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_client_scales_with_msgpack_and_json_and_reads_json_replies() {
    let app = serving().await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "outside").await;
    let first = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &first).await;
    let subject = app.store.subjects().command(&alice.id, CommandKind::Scale);
    const SCRIPT: &str = r#"
import asyncio, json, sys
import msgpack, nats

async def main(url, subject, service):
    nc = await nats.connect(url)
    out = []
    bodies = [
        msgpack.packb({"requestId": "py-1", "service": service, "numInstances": 3}),
        msgpack.packb({"requestId": "py-1", "service": service, "numInstances": 3}),
        json.dumps({"requestId": "py-2", "service": service, "numInstances": 2}).encode(),
        json.dumps({"requestId": "py-3", "service": service, "numInstances": -1}).encode(),
    ]
    for body in bodies:
        msg = await nc.request(subject, body, timeout=10)
        out.append(json.loads(msg.data))
    await nc.close()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &app.nats.url(), &subject, &svc])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed (scripts/install-deps installs nats-py and msgpack): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replies[0], serde_json::json!({"ok": true, "status": 200}));
    assert_eq!(replies[1], replies[0], "the same request id acts once");
    assert_eq!(replies[2], serde_json::json!({"ok": true, "status": 200}));
    assert_eq!(replies[3]["ok"], false);
    assert_eq!(replies[3]["status"], 400);
    assert!(replies[3]["message"].is_string(), "{}", replies[3]);
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["numInstances"], 2, "{v}");
    let events = app
        .store
        .load(&AggregateId::Service(svc.parse().unwrap()))
        .await
        .unwrap()
        .events;
    let changes = events
        .iter()
        .filter(|e| matches!(e.event, Event::InstanceCountChanged(_)))
        .count();
    assert_eq!(changes, 2, "py-1 once, py-2 once, the refused one never");
}

/// A command on one owner's subject acts on that owner's services only:
/// another owner's service is not found and nothing is appended (an
/// integration's NATS credentials let it publish under its own owner only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_under_one_owner_cannot_touch_another_owners_service() {
    let app = serving().await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, _) = app.service(&bob, "bobs").await;
    let first = app.latest_deploy(&bob, &svc).await;
    app.wait_resolved(&bob, &svc, &first).await;
    let service: ServiceId = svc.parse().unwrap();
    let id = AggregateId::Service(service.clone());
    let before = app.store.load(&id).await.unwrap().events.len();
    let scale = ScaleCommand {
        request_id: "cross-1".into(),
        service: service.clone(),
        num_instances: 3,
    };
    let restart = RestartCommand {
        request_id: "cross-2".into(),
        service: service.clone(),
    };
    let deploy = DeployCommand {
        request_id: "cross-3".into(),
        service: service.clone(),
        image_url: None,
    };
    for r in [
        ask(&app, &alice.id, CommandKind::Scale, &scale).await,
        ask(&app, &alice.id, CommandKind::Restart, &restart).await,
        ask(&app, &alice.id, CommandKind::Deploy, &deploy).await,
    ] {
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.status, 404, "{r:?}");
    }
    assert_eq!(
        app.store.load(&id).await.unwrap().events.len(),
        before,
        "a refused command appended"
    );
    // Under its own owner the same command acts.
    let r = ask(&app, &bob.id, CommandKind::Scale, &scale).await;
    assert!(r.ok, "{r:?}");
}

//! `POST /v1/services/{id}/exec` without a node: every refusal the API
//! makes before or instead of running anything — bad bodies (400, each
//! field named), an instance the service does not have (404), one not
//! running or none at all (409), and a node that is not connected (503 in
//! a second, not after the command's timeout); and what a command sent
//! leaves on the service's events. A command actually run is the CLI
//! end-to-end test's (`services/berth/tests/cli_exec.rs`).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use berth_schemas::ids::InstanceId;
use berth_schemas::{Actor, AggregateId};
use serde_json::{json, Value};

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_refused_with_a_reason_when_nothing_can_run_them() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "w").await;
    let (deploy, digest) = app.go_live(&alice, &svc).await;
    let path = format!("/v1/services/{svc}/exec");

    // Bodies: each refusal names its field.
    for (body, field) in [
        (json!({"command": []}), "command"),
        (json!({"command": ["--version"]}), "command"),
        (json!({"command": ["sh", "a\u{0}b"]}), "command"),
        (
            json!({"command": ["true"], "timeoutSeconds": 0}),
            "timeoutSeconds",
        ),
        (
            json!({"command": ["true"], "timeoutSeconds": 601}),
            "timeoutSeconds",
        ),
        (
            json!({"command": ["cat"], "stdin": "x".repeat(32 * 1024 + 1)}),
            "stdin",
        ),
    ] {
        let (s, v) = app.post(&path, &alice, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["fields"][0]["field"], field, "{body}: {v}");
    }
    for body in [json!({}), json!({"command": ["true"], "tty": true})] {
        let (s, v) = app.post(&path, &alice, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Live, no instance yet: nothing to run in.
    let (s, v) = app.post(&path, &alice, json!({"command": ["true"]})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no running instance"),
        "{v}"
    );
    let (s, v) = app
        .post(
            &path,
            &alice,
            json!({"command": ["true"], "instanceId": InstanceId::generate().to_string()}),
        )
        .await;
    assert_eq!(
        (s, v["message"].clone()),
        (StatusCode::NOT_FOUND, json!("instance not found"))
    );
    let (s, _) = app
        .post(
            &path,
            &alice,
            json!({"command": ["true"], "instanceId": "nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Placed, not started: named, it is not running.
    let (instance, node) = app.place(&svc, &deploy, &digest).await;
    let named = json!({"command": ["true"], "instanceId": instance.to_string()});
    let (s, v) = app.post(&path, &alice, named.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not running"),
        "{v}"
    );

    // Running on a node that is not connected: 503 within a second,
    // naming the node, though the command's timeout is long.
    app.started(&svc, &instance, &node, &digest).await;
    let t0 = Instant::now();
    let (s, v): (StatusCode, Value) = app
        .post(
            &path,
            &alice,
            json!({"command": ["sleep", "1"], "timeoutSeconds": 600}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["id"], "unavailable", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(node.as_str()) && message.contains("not connected"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The command is not echoed back.
    assert!(!v.to_string().contains("sleep"), "{v}");
    // It was recorded before it was sent, with who sent it, its instance,
    // node and program — not its arguments. Refusals before that (above)
    // recorded nothing.
    let (s, v) = app
        .get(
            &format!("/v1/services/{svc}/events?type=instance_command_requested"),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let details = &items[0]["event"]["details"];
    assert_eq!(details["program"], "sleep", "{v}");
    assert_eq!(details["instanceId"], instance.as_str(), "{v}");
    assert_eq!(details["nodeId"], node.as_str(), "{v}");
    assert!(!v.to_string().contains("\"1\""), "arguments recorded: {v}");
    let envelope = app
        .events_of(&AggregateId::Service(svc.parse().unwrap()))
        .await;
    let fact = envelope
        .iter()
        .find(|e| e.event.type_name() == "instance_command_requested")
        .unwrap();
    assert!(
        matches!(fact.actor, Actor::ApiKey { .. }),
        "{:?}",
        fact.actor
    );
}

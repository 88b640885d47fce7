//! Integrations against a real `berth up` that started its own nats-server:
//! anonymous clients are refused; `berth integration create` writes a
//! credentials file with which a client no one here wrote (Python's
//! `nats-py`) scales its owner's service and reads its owner's events, and
//! is refused another owner's subjects; after `berth integration revoke`
//! the credentials no longer connect.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::cli_support::{eventually, Setup};

const SLEEP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'";

/// Connects with the credentials file and reports what happened, as JSON.
const SCRIPT: &str = r#"
import asyncio, json, sys
import nats

async def main(url, creds_path, service, other_owner):
    creds = json.load(open(creds_path))
    errors = []
    async def on_error(e):
        errors.append(str(e))
    nc = await nats.connect(url, user=creds["user"], password=creds["password"],
                            inbox_prefix=creds["inboxPrefix"], error_cb=on_error,
                            allow_reconnect=False)
    prefix, owner = creds["subjectPrefix"], creds["ownerId"]
    events = []
    async def on_event(msg):
        events.append(json.loads(msg.data))
    await nc.subscribe(f"{prefix}.events.{owner}.>", cb=on_event)
    await nc.subscribe(f"{prefix}.events.{other_owner}.>", cb=on_event)
    await nc.flush()
    out = {}
    body = json.dumps({"requestId": "int-1", "service": service, "numInstances": 2}).encode()
    msg = await nc.request(f"{prefix}.cmd.{owner}.scale", body, timeout=10)
    out["own"] = json.loads(msg.data)
    try:
        await nc.request(f"{prefix}.cmd.{other_owner}.scale", body, timeout=2)
        out["other"] = "answered"
    except Exception as e:
        out["other"] = type(e).__name__
    for _ in range(100):
        if any(e.get("type") == "instance_count_changed" for e in events):
            break
        await asyncio.sleep(0.1)
    out["events"] = [e.get("type") for e in events]
    out["errors"] = errors
    await nc.close()
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:]))
"#;

const CONNECT: &str = r#"
import asyncio, json, sys
import nats

async def main(url, creds_path):
    creds = json.load(open(creds_path))
    try:
        nc = await nats.connect(url, user=creds["user"], password=creds["password"],
                                allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=2)
        await nc.close()
        print("connected")
    except Exception as e:
        print("refused:", type(e).__name__, e)

asyncio.run(main(*sys.argv[1:]))
"#;

async fn python(args: &[&str]) -> String {
    let out = tokio::process::Command::new("python3")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python failed (scripts/install-deps installs nats-py): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_integration_acts_for_its_owner_only_until_revoked() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let url = cli.nats_url.clone();

    // The server berth started refuses anonymous clients.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(url.as_str())
            .await
            .is_err(),
        "an anonymous client connected to the nats-server berth up started"
    );

    let image = setup.push("app/i", "v1").await;
    let created = cli
        .run(&[
            "service",
            "create",
            "scaled",
            "--type",
            "background_worker",
            "--image",
            &image,
            "--command",
            SLEEP,
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    let service = cli.json(&["service", "show", "scaled"]).await;
    let id = service["id"].as_str().unwrap().to_owned();

    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("scaler.creds.json");
    let made = cli
        .ok(&[
            "integration",
            "create",
            "scaler",
            "--out",
            creds.to_str().unwrap(),
        ])
        .await;
    assert!(made.contains("int-itg-"), "{made}");
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let listed = cli.ok(&["integration", "list"]).await;
    assert!(
        listed.contains("scaler") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains("password"), "{listed}");

    // The server learns the new user from the log: retry until it does.
    let other_owner = "usr-aaaaaaaaaaaaaaaaaaaa";
    let creds_arg = creds.to_str().unwrap();
    eventually(
        "the integration's user to exist",
        Duration::from_secs(20),
        || async { python(&["-c", CONNECT, &url, creds_arg]).await.trim() == "connected" },
    )
    .await;
    let out = python(&["-c", SCRIPT, &url, creds_arg, &id, other_owner]).await;
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        out["own"],
        serde_json::json!({"ok": true, "status": 200}),
        "{out}"
    );
    assert_ne!(out["other"], "answered", "{out}");
    let errors = out["errors"].to_string().to_lowercase();
    assert!(
        errors.contains(&format!("cmd.{other_owner}.scale"))
            && errors.contains("permissions violation"),
        "publishing under another owner was not refused: {out}"
    );
    assert!(
        errors.contains(&format!("events.{other_owner}")),
        "subscribing to another owner's events was not refused: {out}"
    );
    let seen: Vec<&str> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(seen.contains(&"instance_count_changed"), "{out}");
    let shown = cli.json(&["service", "show", "scaled"]).await;
    assert_eq!(shown["serviceDetails"]["numInstances"], 2, "{shown}");

    // Revoked: the credentials no longer connect.
    cli.ok(&["integration", "revoke", "scaler"]).await;
    eventually(
        "the revoked user to be refused",
        Duration::from_secs(20),
        || async {
            python(&["-c", CONNECT, &url, creds_arg])
                .await
                .starts_with("refused")
        },
    )
    .await;

    setup.stop().await;
}

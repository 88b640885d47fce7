//! End to end: `berth exec` runs a command in a running instance of a
//! service through the API and the instance's node, as the instance's own
//! process runs, against a real `berth up` (which starts its own
//! nats-server with a user per role: the API and the node are allowed
//! exactly what this takes, or `Setup::stop` fails).

use serde_json::Value;

use crate::cli_support::Setup;

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'";

#[tokio::test]
async fn cli_runs_a_command_in_a_running_instance() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let v1 = setup.push("app/x", "v1").await;
    let tmp = tempfile::tempdir().unwrap();
    let env_file = tmp.path().join("env");
    std::fs::write(&env_file, "GREETING=hello there\n").unwrap();
    let created = cli
        .run(&[
            "service",
            "create",
            "x",
            "--type",
            "background_worker",
            "--image",
            &v1,
            "--command",
            LOOP,
            "--env-file",
            env_file.to_str().unwrap(),
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");

    // Its environment, its image's files, its user.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--",
            "sh",
            "-c",
            "echo $GREETING; cat /etc/marker; echo; busybox id -u",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello there\nv1\n0\n", "{out:?}");
    // Its exit code and its stderr, on the CLI's own.
    let out = cli
        .run(&["exec", "x", "--", "sh", "-c", "echo oops >&2; exit 5"])
        .await;
    assert_eq!((out.code, out.stderr.as_str()), (5, "oops\n"), "{out:?}");
    // Standard input.
    let out = cli
        .run_with(
            &["exec", "x", "-i", "--", "busybox", "tr", "a-z", "A-Z"],
            &[],
            Some("piped in\n"),
        )
        .await;
    assert_eq!(out.stdout, "PIPED IN\n", "{out:?}");
    // JSON: the instance it ran in is one of the service's.
    let ran: Value =
        serde_json::from_str(&cli.ok(&["exec", "x", "--json", "--", "true"]).await).unwrap();
    let instance = ran["instanceId"].as_str().unwrap().to_owned();
    let instances = cli.json(&["service", "instances", "x"]).await;
    let ids: Vec<&str> = instances
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert!(ids.contains(&instance.as_str()), "{ran} {instances}");
    assert_eq!(ran["exitCode"], 0, "{ran}");
    // Named, then past its timeout: killed, exit 124 as timeout(1) says.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--instance",
            &instance,
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ])
        .await;
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("killed after 1s"), "{out:?}");

    // Refused: an instance the service does not have, a program the
    // image does not have, a bad timeout — each with the API's reason.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--instance",
            "ins-aaaaaaaaaaaaaaaaaaaa",
            "--",
            "true",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("instance not found"), "{out:?}");
    let out = cli.run(&["exec", "x", "--", "no-such-program"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no-such-program"), "{out:?}");
    let out = cli
        .run(&["exec", "x", "--timeout", "0", "--", "true"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("timeout"), "{out:?}");
    let out = cli.run(&["exec", "x"]).await;
    assert_eq!(out.code, 64, "no command: {out:?}");

    // Suspended: no running instance to run in.
    cli.ok(&["service", "suspend", "x"]).await;
    // (While its instance stops, it may still be listed: "not running".)
    let mut refused = Value::Null;
    for _ in 0..60 {
        let out = cli.run(&["exec", "x", "--", "true"]).await;
        assert!(out.code == 0 || out.stderr.contains("running"), "{out:?}");
        if out.stderr.contains("no running instance") {
            refused = Value::String(out.stderr);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        refused
            .as_str()
            .is_some_and(|e| e.contains("no running instance")),
        "{refused}"
    );
    setup.stop().await;
}

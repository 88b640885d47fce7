//! End to end: the `berth` client commands against a real `berth up`
//! (its own API port, data dir and prefix, a real nats-server, a real
//! docker-registry with basic auth, real runc instances). Asserts on what
//! the commands print, not only on exit codes.

use std::time::Duration;

use berth_tests::free_port;
use berth_tests::registry::RegistryAuth;
use berth_tests::NatsVersion;
use serde_json::Value;

use crate::cli_support::{busybox_image, eventually, Setup};

#[tokio::test]
async fn cli_drives_a_real_installation() {
    let (user, pass) = ("cliuser", "s3cret-registry-pass");
    let mut setup = Setup::start_with(
        NatsVersion::Legacy,
        RegistryAuth::Htpasswd {
            user: user.into(),
            pass: pass.into(),
        },
    )
    .await;
    let (cli, api_url, registry) = (setup.cli.clone(), setup.api_url.clone(), &setup.registry);
    registry
        .push_image("app/ticker", "v1", &busybox_image("v1"))
        .await
        .unwrap();

    // Credentials: the token only through stdin, never echoed back.
    let refused = cli
        .run(&["credential", "add", "--name", "reg", "--username", user])
        .await;
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(refused.stderr.contains("--token-stdin"), "{refused:?}");
    let added = cli
        .run_with(
            &[
                "credential",
                "add",
                "--name",
                "reg",
                "--registry",
                "generic",
                "--host",
                &registry.host,
                "--username",
                user,
                "--token-stdin",
            ],
            &[],
            Some(&format!("{pass}\n")),
        )
        .await;
    assert_eq!(added.code, 0, "{added:?}");
    assert!(added.stdout.contains("GENERIC"), "{added:?}");
    assert!(!added.stdout.contains(pass), "token echoed: {added:?}");
    let creds = cli.json(&["credential", "list"]).await;
    let cred = creds.as_array().unwrap();
    assert_eq!(cred.len(), 1, "{creds}");
    let cred_id = cred[0]["id"].as_str().unwrap().to_owned();
    assert!(cred_id.starts_with("rgc-"), "{creds}");
    assert!(!creds.to_string().contains(pass), "{creds}");
    let table = cli.ok(&["credential", "list"]).await;
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&cred_id) && table.contains(user), "{table}");

    // A service from the private image, followed until live.
    let image = format!("{}/app/ticker:v1", registry.host);
    let created = cli
        .run(&[
            "service",
            "create",
            "ticker",
            "--type",
            "background_worker",
            "--image",
            &image,
            "--credential",
            &cred_id,
            "--command",
            // PID 1 ignores SIGTERM unless it traps it; without the trap every
            // stop waits for the kill timeout and delays the next deploy.
            "sh -c 'trap \"exit 0\" TERM; while true; do echo tick-tock; sleep 1; done'",
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    println!("$ berth service create …\n{}", created.stdout);
    assert!(created.stdout.contains("created:"), "{created:?}");
    assert!(created.stdout.contains(" live"), "{created:?}");
    // Pull progress comes from the service's event subject over NATS.
    assert!(created.stdout.contains("pulled on nod-"), "{created:?}");
    assert!(
        created.stdout.contains(&format!("{api_url}/deploy/srv-")),
        "{created:?}"
    );

    // Errors under --json are JSON too, with the one exit code table.
    let missing = cli
        .run(&["service", "show", "no-such-service", "--json"])
        .await;
    assert_eq!(missing.code, 1, "{missing:?}");
    let err: Value = serde_json::from_str(missing.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON: {e}: {missing:?}"));
    assert_eq!(
        (
            err["error"]["kind"].as_str(),
            err["error"]["status"].as_u64(),
            err["error"]["exitCode"].as_u64()
        ),
        (Some("refused"), Some(404), Some(1)),
        "{err}"
    );
    let usage = cli.run(&["service", "delete", "ticker", "--json"]).await;
    assert_eq!(usage.code, 64, "{usage:?}");
    assert_eq!(
        serde_json::from_str::<Value>(usage.stdout.trim()).unwrap()["error"]["kind"],
        "usage"
    );
    let bad_flag = cli.run(&["image", "normalize"]).await;
    assert_eq!(
        bad_flag.code, 64,
        "a bad command line is 64 for every command: {bad_flag:?}"
    );

    let list = cli.json(&["service", "list"]).await;
    let svc = &list[0]["service"];
    assert_eq!(svc["name"], "ticker", "{list}");
    let id = svc["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["service", "list"]).await;
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("ticker") && row.contains("background_worker"),
        "{table}"
    );
    assert!(row.contains(&image) && row.contains("active"), "{table}");

    let shown = cli.json(&["service", "show", "ticker"]).await;
    assert_eq!(shown["id"], id.as_str(), "{shown}");
    assert_eq!(shown["image"]["registryCredentialId"], cred_id.as_str());
    let live = shown["liveDeployId"].as_str().unwrap().to_owned();
    let table = cli.ok(&["service", "show", &id]).await;
    println!("$ berth service show {id}\n{table}");
    assert!(table.contains(&format!("live deploy:  {live}")), "{table}");
    assert!(
        table.contains("DEPLOY") && table.contains("live"),
        "{table}"
    );

    // The running instance's lines so far.
    let logs = cli.run(&["service", "logs", "ticker", "--tail", "3"]).await;
    println!("$ berth service logs ticker --tail 3\n{}", logs.stdout);
    assert_eq!(logs.code, 0, "{logs:?}");
    assert!(logs.stdout.contains("| tick-tock"), "{logs:?}");
    assert!(logs.stdout.lines().count() <= 3, "{logs:?}");

    // Scale, and watch the service and its timeline show it.
    let scaled = cli.json(&["service", "scale", "ticker", "2"]).await;
    assert_eq!(scaled["ok"], true, "{scaled}");
    assert!(
        scaled["message"].as_str().unwrap().contains("scaling to 2"),
        "{scaled}"
    );
    eventually("numInstances 2", Duration::from_secs(30), || async {
        cli.json(&["service", "show", &id]).await["serviceDetails"]["numInstances"] == 2
    })
    .await;
    eventually(
        "instance_count_changed event",
        Duration::from_secs(30),
        || async {
            cli.ok(&["service", "events", "ticker"])
                .await
                .contains("instance_count_changed")
        },
    )
    .await;
    // Autoscaled: said by `show`, the count set by hand refused, then off.
    let auto = cli
        .ok(&[
            "service",
            "autoscale",
            "ticker",
            "--min",
            "2",
            "--max",
            "3",
            "--cpu",
            "60",
        ])
        .await;
    assert!(
        auto.contains("autoscaling between 2 and 3 instances, keeping CPU at 60 %"),
        "{auto}"
    );
    let table = cli.ok(&["service", "show", "ticker"]).await;
    assert!(
        table.contains("autoscaling between 2 and 3 instances, keeping CPU at 60 %"),
        "{table}"
    );
    let by_hand = cli.run(&["service", "scale", "ticker", "3"]).await;
    assert_eq!(by_hand.code, 1, "{by_hand:?}");
    assert!(by_hand.stderr.contains("autoscaling sets"), "{by_hand:?}");
    let neither = cli
        .run(&["service", "autoscale", "ticker", "--min", "2"])
        .await;
    assert_eq!(neither.code, 64, "{neither:?}");
    let off = cli.ok(&["service", "autoscale", "ticker", "--off"]).await;
    assert!(off.contains("autoscaling removed"), "{off}");
    let shown = cli.json(&["service", "show", "ticker"]).await;
    assert!(
        shown["serviceDetails"].get("autoscaling").is_none(),
        "{shown}"
    );
    assert_eq!(shown["serviceDetails"]["numInstances"], 2, "{shown}");
    let events = cli.ok(&["service", "events", "ticker"]).await;
    println!("$ berth service events ticker\n{events}");
    assert!(events.starts_with("TIME"), "{events}");
    assert!(events.contains("deploy_ended"), "{events}");
    let filtered = cli
        .json(&["service", "events", "ticker", "--type", "deploy_started"])
        .await;
    let types: Vec<&str> = filtered
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert!(
        !types.is_empty() && types.iter().all(|t| *t == "deploy_started"),
        "{filtered}"
    );
    // A time window: everything so far is before a time in the future, and
    // nothing is at or after it.
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let before = cli
        .json(&["service", "events", "ticker", "--until", &later])
        .await;
    assert!(!before.as_array().unwrap().is_empty(), "{before}");
    let after = cli
        .json(&["service", "events", "ticker", "--since", &later])
        .await;
    assert!(after.as_array().unwrap().is_empty(), "{after}");

    // A second deploy, followed to the end: progress on stdout, or on
    // stderr with --json so stdout is one JSON document.
    let deployed = cli.run(&["service", "deploy", "ticker"]).await;
    assert_eq!(deployed.code, 0, "{deployed:?}");
    println!("$ berth service deploy ticker\n{}", deployed.stdout);
    assert!(deployed.stdout.contains(" live"), "{deployed:?}");
    assert!(
        deployed.stdout.contains("event deploy_started"),
        "{deployed:?}"
    );
    let deployed = cli.run(&["service", "deploy", "ticker", "--json"]).await;
    assert_eq!(deployed.code, 0, "{deployed:?}");
    let last: Value = serde_json::from_str(&deployed.stdout).unwrap();
    assert_eq!(last["status"], "live", "{deployed:?}");
    assert!(
        deployed.stderr.contains(" update_in_progress"),
        "{deployed:?}"
    );
    let shown = cli.json(&["service", "show", "ticker"]).await;
    assert_eq!(shown["liveDeployId"], last["id"], "{shown}");

    // Hook URL, and a regenerated one that differs.
    let hook = cli.ok(&["hook", "url", "ticker"]).await;
    assert!(
        hook.trim()
            .starts_with(&format!("{api_url}/deploy/{id}?key=")),
        "{hook}"
    );
    let again = cli.ok(&["hook", "regenerate", &id]).await;
    assert!(again
        .trim()
        .starts_with(&format!("{api_url}/deploy/{id}?key=")));
    assert_ne!(hook.trim(), again.trim());

    // API keys: a new key works until it is revoked.
    let made = cli.json(&["apikey", "create", "--label", "ci"]).await;
    let (key_id, key) = (
        made["id"].as_str().unwrap().to_owned(),
        made["key"].as_str().unwrap().to_owned(),
    );
    let with_key = cli
        .run_with(&["service", "list"], &[("BERTH_API_KEY", &key)], None)
        .await;
    assert_eq!(with_key.code, 0, "{with_key:?}");
    assert!(with_key.stdout.contains("ticker"), "{with_key:?}");
    let keys = cli.ok(&["apikey", "list"]).await;
    let row = keys
        .lines()
        .find(|l| l.starts_with(&key_id))
        .unwrap_or_else(|| panic!("{keys}"));
    assert!(row.contains("ci") && row.contains("active"), "{keys}");
    assert!(!keys.contains(&key), "key shown again: {keys}");
    assert!(cli
        .ok(&["apikey", "revoke", &key_id])
        .await
        .contains("revoked"));
    let keys = cli.ok(&["apikey", "list"]).await;
    let row = keys.lines().find(|l| l.starts_with(&key_id)).unwrap();
    assert!(row.contains("revoked"), "{keys}");
    let revoked = cli
        .run_with(&["service", "list"], &[("BERTH_API_KEY", &key)], None)
        .await;
    assert_eq!(revoked.code, 1, "{revoked:?}");
    assert!(revoked.stderr.contains("401"), "{revoked:?}");
    assert!(
        revoked.stderr.contains("check BERTH_API_KEY"),
        "{revoked:?}"
    );

    // Errors: unknown service by name and by id, unreachable API, usage.
    let unknown = cli.run(&["service", "show", "nosuch"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.contains("no service named \"nosuch\""),
        "{unknown:?}"
    );
    let missing = berth_schemas::ids::ServiceId::generate().to_string();
    let unknown = cli.run(&["service", "scale", &missing, "3"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("404"), "{unknown:?}");
    assert!(unknown.stdout.is_empty(), "{unknown:?}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = cli
        .run_with(&["service", "list"], &[("BERTH_API_URL", &dead)], None)
        .await;
    assert_eq!(unreachable.code, 69, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("is `berth up` running?"),
        "{unreachable:?}"
    );
    assert!(unreachable.stderr.contains(&dead), "{unreachable:?}");
    let bad = cli.run(&["service", "scale", "ticker"]).await;
    assert_eq!(bad.code, 64, "{bad:?}");
    assert!(bad.stderr.contains("<INSTANCES>"), "{bad:?}");
    let no_yes = cli.run(&["service", "delete", "ticker"]).await;
    assert_eq!(no_yes.code, 64, "{no_yes:?}");
    assert!(no_yes.stderr.contains("--yes"), "{no_yes:?}");

    // Delete, then it is gone from the listing.
    assert!(cli
        .ok(&["service", "delete", "ticker", "--yes"])
        .await
        .contains("deleted"));
    let gone = cli.ok(&["service", "list"]).await;
    assert!(gone.contains("no services"), "{gone}");
    assert!(cli
        .ok(&["credential", "rm", &cred_id])
        .await
        .contains(&format!("deleted {cred_id}")));

    setup.stop().await;
}

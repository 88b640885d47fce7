//! End to end, second part: the client commands that change a running
//! service (update, rollback, suspend/resume, restart), credential
//! show/rotate with the token from a file and from stdin, env vars from a
//! file, and cron jobs — against a real `berth up`.

use std::time::Duration;

use serde_json::Value;

use crate::cli_support::{eventually, Setup};

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do echo up; sleep 1; done'";

#[tokio::test]
async fn cli_changes_a_running_service() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let (v1, v2) = (
        setup.push("app/w", "v1").await,
        setup.push("app/w", "v2").await,
    );
    let tmp = tempfile::tempdir().unwrap();

    // Credential: token from a file, then rotated from stdin; never shown.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let added = cli
        .json(&[
            "credential",
            "add",
            "--name",
            "hub",
            "--registry",
            "docker",
            "--username",
            "me",
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .await;
    let cred = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["registry"], "DOCKER", "{added}");
    let rotated = cli
        .run_with(
            &[
                "credential",
                "rotate",
                &cred,
                "--token-stdin",
                "--username",
                "me2",
            ],
            &[],
            Some("second-token"),
        )
        .await;
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert!(rotated.stdout.contains("me2"), "{rotated:?}");
    // By name as well as by id.
    let shown = cli.ok(&["credential", "show", "hub"]).await;
    assert!(shown.contains(&cred) && shown.contains("me2"), "{shown}");
    assert!(!shown.contains("token"), "{shown}");
    let nothing = cli.run(&["credential", "rotate", &cred]).await;
    assert_eq!(nothing.code, 64, "{nothing:?}");
    assert!(cli
        .ok(&["credential", "rm", &cred])
        .await
        .contains("deleted"));
    let gone = cli.run(&["credential", "show", &cred]).await;
    assert_eq!(gone.code, 1, "{gone:?}");

    // A worker with env vars from a file (values never shown, keys are).
    let env_file = tmp.path().join("env");
    std::fs::write(
        &env_file,
        "# comment\nGREETING=hello\n\nSECRET_TOKEN=abc123\n",
    )
    .unwrap();
    let created = cli
        .run(&[
            "service",
            "create",
            "w",
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
    let svc = cli.json(&["service", "show", "w"]).await;
    let id = svc["id"].as_str().unwrap().to_owned();
    let first = svc["liveDeployId"].as_str().unwrap().to_owned();
    assert_eq!(
        svc["envVarKeys"],
        serde_json::json!(["GREETING", "SECRET_TOKEN"])
    );
    let table = cli.ok(&["service", "show", "w"]).await;
    assert!(table.contains("GREETING,SECRET_TOKEN"), "{table}");
    assert!(!table.contains("abc123"), "{table}");

    // Env vars one at a time: listed with values hidden unless revealed;
    // set and unset keep every other key, start one deploy and say so.
    let listed = cli.ok(&["env", "list", "w"]).await;
    assert!(
        listed.contains("GREETING")
            && listed.contains("SECRET_TOKEN")
            && !listed.contains("abc123"),
        "{listed}"
    );
    let revealed = cli.json(&["env", "list", "w", "--reveal"]).await;
    assert!(revealed.to_string().contains("abc123"), "{revealed}");
    let set = cli.run(&["env", "set", "w", "NEW_ONE=1", "--wait"]).await;
    assert_eq!(set.code, 0, "{set:?}");
    assert!(
        set.stdout.contains("deploy dep-") && set.stdout.contains("live"),
        "{set:?}"
    );
    let unset = cli.ok(&["env", "unset", "w", "GREETING"]).await;
    assert!(
        unset.contains("deploy dep-") && unset.contains("berth service follow"),
        "{unset}"
    );
    let followed = cli.run(&["service", "follow", "w"]).await;
    assert_eq!(
        followed.code, 0,
        "the newest deploy goes live: {followed:?}"
    );
    // `update --env` merges too: the other keys stay.
    let merged = cli
        .ok(&["service", "update", "w", "--env", "EXTRA=2"])
        .await;
    assert!(merged.contains("env vars merged"), "{merged}");
    let keys = cli.json(&["service", "show", "w"]).await["envVarKeys"].clone();
    assert_eq!(
        keys,
        serde_json::json!(["EXTRA", "NEW_ONE", "SECRET_TOKEN"]),
        "set, unset and update --env kept the others"
    );
    let follow_all = cli.run(&["service", "follow", "w"]).await;
    assert_eq!(follow_all.code, 0, "{follow_all:?}");

    // Notification settings: the owner's, and one service's override.
    let shown = cli.ok(&["notify", "show"]).await;
    assert!(shown.contains("failure"), "the default: {shown}");
    let set = cli
        .ok(&[
            "notify",
            "set",
            "--send",
            "all",
            "--email",
            "ops@example.com",
        ])
        .await;
    assert!(
        set.contains("all") && set.contains("ops@example.com"),
        "{set}"
    );
    let over = cli.ok(&["notify", "service", "w", "--send", "none"]).await;
    assert!(over.trim().ends_with("none"), "{over}");
    let over = cli.ok(&["notify", "service", "w"]).await;
    assert!(over.trim().ends_with("none"), "{over}");
    let bad = cli.run(&["notify", "set", "--send", "sometimes"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");

    // Where its instances run.
    let instances = cli.ok(&["service", "instances", "w"]).await;
    assert!(
        instances
            .lines()
            .any(|l| l.starts_with("ins-") && l.contains("nod-") && l.contains("yes")),
        "{instances}"
    );

    // An empty value clears an optional setting; a refused value names
    // the flag to change; flags the API would refuse on update are gone.
    let set_pre = cli
        .run(&["service", "update", "w", "--pre-deploy-command", "true"])
        .await;
    assert_eq!(set_pre.code, 0, "{set_pre:?}");
    assert_eq!(
        cli.json(&["service", "show", "w"]).await["serviceDetails"]["preDeployCommand"],
        "true"
    );
    let cleared = cli
        .run(&["service", "update", "w", "--pre-deploy-command", ""])
        .await;
    assert_eq!(cleared.code, 0, "{cleared:?}");
    assert!(
        cli.json(&["service", "show", "w"]).await["serviceDetails"]["preDeployCommand"].is_null()
    );
    let bad = cli
        .run(&["service", "update", "w", "--plan", "enormous"])
        .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("--plan:"),
        "the flag to change is named: {bad:?}"
    );
    let gone = cli
        .run(&["service", "update", "w", "--instances", "3"])
        .await;
    assert_eq!(gone.code, 64, "scale with `service scale`: {gone:?}");

    // Update the image: a new deploy goes live with v2.
    let updated = cli
        .ok(&["service", "update", "w", "--image", &v2, "--wait"])
        .await;
    assert!(updated.contains(&v2), "{updated}");
    assert!(updated.contains(" live"), "followed to live: {updated}");
    // The live deploy's row in `service show` holds all of `want`.
    let live_row = |want: Vec<String>| {
        let cli = cli.clone();
        let id = id.clone();
        async move {
            let live = cli.json(&["service", "show", &id]).await["liveDeployId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let table = cli.ok(&["service", "show", &id]).await;
            table.lines().any(|l| {
                l.starts_with(&live)
                    && l.contains(" live ")
                    && want.iter().all(|w| l.contains(w.as_str()))
            })
        }
    };
    eventually("v2 live", Duration::from_secs(60), || {
        live_row(vec![v2.clone(), "service_updated".into()])
    })
    .await;

    // Roll back to the first deploy: its digest again, in a new deploy.
    let ended = cli
        .json(&[
            "service",
            "events",
            "w",
            "--type",
            "deploy_ended",
            "--limit",
            "100",
        ])
        .await;
    let first_digest = ended
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["details"]["deployId"] == first.as_str())
        .and_then(|e| e["event"]["details"]["digest"].as_str())
        .unwrap_or_else(|| panic!("no deploy_ended for {first}: {ended}"))
        .to_owned();
    let rolled = cli.ok(&["service", "rollback", "w", &first]).await;
    assert!(
        rolled.contains(&id) && rolled.contains("deploy dep-"),
        "{rolled}"
    );
    assert!(
        rolled.contains("berth service follow"),
        "how to follow it: {rolled}"
    );
    eventually("the rollback live", Duration::from_secs(60), || {
        live_row(vec![first_digest.clone(), "rollback".into()])
    })
    .await;
    let now = cli.json(&["service", "show", "w"]).await;
    assert_ne!(now["liveDeployId"], Value::from(first.as_str()), "{now}");

    // Suspend and resume.
    assert!(cli
        .ok(&["service", "suspend", "w"])
        .await
        .contains("suspending"));
    eventually("suspended", Duration::from_secs(30), || async {
        cli.ok(&["service", "show", "w"])
            .await
            .contains("state:        suspended")
    })
    .await;
    let list = cli.ok(&["service", "list"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("suspended")),
        "{list}"
    );
    let resumed = cli.ok(&["service", "resume", "w", "--wait"]).await;
    assert!(
        resumed.contains("resuming")
            && resumed.contains("deploy dep-")
            && resumed.contains(" live"),
        "resume starts a deploy, followed: {resumed}"
    );
    eventually("active", Duration::from_secs(30), || async {
        cli.ok(&["service", "show", "w"])
            .await
            .contains("state:        active")
    })
    .await;
    assert!(cli
        .ok(&["service", "restart", "w"])
        .await
        .contains("restarting"));

    // A cron job, run now from the CLI.
    let cron = cli
        .run(&[
            "service",
            "create",
            "nightly",
            "--type",
            "cron_job",
            "--image",
            &v1,
            "--schedule",
            "0 3 * * *",
            "--command",
            "echo ran",
        ])
        .await;
    assert_eq!(cron.code, 0, "{cron:?}");
    eventually("cron job deployed", Duration::from_secs(60), || async {
        cli.json(&["service", "show", "nightly"]).await["liveDeployId"].is_string()
    })
    .await;
    let run = cli.ok(&["cron", "run", "nightly"]).await;
    assert!(run.contains("run ") && run.contains(" started"), "{run}");
    eventually(
        "cron run in the timeline",
        Duration::from_secs(60),
        || async {
            cli.ok(&["service", "events", "nightly"])
                .await
                .contains("cron_job_run_started")
        },
    )
    .await;
    // Not a cron job: the API refuses, the CLI says so and exits 1.
    let wrong = cli.run(&["cron", "run", "w"]).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(
        wrong.stderr.contains("/v1/cron-jobs/")
            && wrong.stderr.contains("only cron jobs have runs"),
        "{wrong:?}"
    );

    // A worker with a disk: shown with its node once placed, grown (never
    // shrunk), and kept to one instance.
    let store = cli
        .run(&[
            "service",
            "create",
            "store",
            "--type",
            "background_worker",
            "--image",
            &v1,
            "--disk",
            "data:/data:1",
            "--command",
            "sh -c 'echo started >> /data/starts; exec sleep 600'",
        ])
        .await;
    assert_eq!(store.code, 0, "{store:?}");
    eventually("the disk placed", Duration::from_secs(60), || async {
        let shown = cli.ok(&["service", "show", "store"]).await;
        shown.contains("data at /data, 1 GB (dsk-") && shown.contains(", on nod-")
    })
    .await;
    let grown = cli.ok(&["service", "disk", "store", "--size", "2"]).await;
    assert!(grown.contains("2 GB"), "{grown}");
    assert!(grown.contains("berth service restart store"), "{grown}");
    for (args, says) in [
        (
            vec!["service", "disk", "store", "--size", "1"],
            "only grows",
        ),
        (vec!["service", "disk", "nightly"], "has no disk"),
        (
            vec!["service", "scale", "store", "2"],
            "a service with a disk runs one instance",
        ),
    ] {
        let refused = cli.run(&args).await;
        assert_eq!(refused.code, 1, "{args:?}: {refused:?}");
        assert!(refused.stderr.contains(says), "{args:?}: {refused:?}");
    }

    // Its snapshots: one taken now and listed; two restarts write two
    // more starts; restored, the disk is as it was at the snapshot (one
    // start) and the instance the restore deploys adds its own.
    let starts = || async {
        let out = cli
            .run(&[
                "exec",
                "store",
                "--",
                "sh",
                "-c",
                "while read l; do echo \"$l\"; done < /data/starts",
            ])
            .await;
        out.stdout.lines().count()
    };
    cli.ok(&["service", "follow", "store"]).await;
    let taken = cli.ok(&["service", "disk", "store", "--snapshot"]).await;
    assert!(taken.contains(" taken ("), "{taken}");
    let key = taken
        .split_whitespace()
        .find(|w| w.starts_with("snp-"))
        .expect("the snapshot's key")
        .to_owned();
    let listed = cli.ok(&["service", "disk", "store", "--snapshots"]).await;
    assert!(listed.contains(&key) && listed.contains("MiB"), "{listed}");
    for n in [2, 3] {
        cli.ok(&["service", "restart", "store"]).await;
        eventually(
            "a restart's start on the disk",
            Duration::from_secs(60),
            || async { starts().await == n },
        )
        .await;
    }
    let unsure = cli
        .run(&["service", "disk", "store", "--restore", &key])
        .await;
    assert_eq!(unsure.code, 64, "{unsure:?}");
    assert!(unsure.stderr.contains("--yes"), "{unsure:?}");
    let restored = cli
        .ok(&["service", "disk", "store", "--restore", &key, "--yes"])
        .await;
    assert!(
        restored.contains(&format!("restored to {key}")),
        "{restored}"
    );
    eventually("the restored disk", Duration::from_secs(60), || async {
        starts().await == 2
    })
    .await;

    // A deploy that cannot go live (its instance exits at once): following
    // gives up at --timeout with exit 1 and says where things stand. (The
    // scheduler keeps retrying such a deploy for minutes, so its final
    // verdict is not waited for here.)
    let crash = cli
        .run(&[
            "service",
            "create",
            "crash",
            "--type",
            "background_worker",
            "--image",
            &v1,
            "--command",
            "sh -c 'exit 3'",
        ])
        .await;
    assert_eq!(crash.code, 0, "{crash:?}");
    let stuck = cli
        .run(&["service", "deploy", "crash", "--timeout", "6"])
        .await;
    assert_eq!(stuck.code, 1, "{stuck:?}");
    assert!(stuck.stderr.contains("after 6 s"), "{stuck:?}");
    // Queued behind the first (still retrying) deploy, or in progress.
    assert!(stuck.stdout.contains("] dep-"), "{stuck:?}");
    assert!(stuck.stderr.contains(" still "), "{stuck:?}");

    // Logs come from the API, not from NATS: an unreachable API is exit
    // 69, an unreachable NATS server changes nothing (and `logs` does not
    // even take the NATS options). The worker says `up` every second; the
    // restart above may have just stopped its old instance, whose
    // `==> Stopped` line can then be the newest.
    let no_nats = cli
        .run_with(
            &["service", "logs", "w", "--tail", "5"],
            &[("BERTH_NATS_URL", "nats://127.0.0.1:1")],
            None,
        )
        .await;
    assert_eq!(no_nats.code, 0, "{no_nats:?}");
    assert!(no_nats.stdout.contains("| up"), "{no_nats:?}");
    let flag = cli
        .run(&["service", "logs", "w", "--nats-url", "nats://127.0.0.1:1"])
        .await;
    assert_eq!(flag.code, 64, "{flag:?}");
    let no_api = cli
        .run(&["service", "logs", &id, "--api-url", "http://127.0.0.1:1"])
        .await;
    assert_eq!(no_api.code, 69, "{no_api:?}");
    assert!(
        no_api.stderr.contains("cannot reach the berth API"),
        "{no_api:?}"
    );

    // A rename: the service answers to its new name, the old one is gone.
    let renamed = cli
        .ok(&["service", "update", "w", "--rename", "w-renamed"])
        .await;
    assert!(renamed.contains("w-renamed"), "{renamed}");
    let shown = cli.ok(&["service", "show", "w-renamed"]).await;
    assert!(shown.contains(&id), "{shown}");
    let old = cli.run(&["service", "show", "w"]).await;
    assert_eq!(old.code, 1, "{old:?}");

    let hook = cli.ok(&["hook", "url", "nightly"]).await;
    assert!(
        hook.starts_with(&format!("{}/deploy/srv-", setup.api_url)),
        "{hook}"
    );

    setup.stop().await;
}

//! End to end, third part, against a real `berth up`: `berth node list`,
//! `berth cron runs`, `berth job run|list`, the service settings `--overlap-policy`,
//! `--shutdown-delay-seconds` and `--notify-on-fail`, and the CLI finding
//! the installation from another directory and as another user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::cli_support::{eventually, runtime_dir, Out, Setup, BERTH};

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do echo up; sleep 1; done'";

/// `berth args` with nothing but `PATH` and `env` set, in `cwd`, as
/// `nobody` when `as_nobody`.
async fn bare(args: &[&str], env: &[(&str, &Path)], cwd: &Path, as_nobody: bool) -> Out {
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BERTH,
        ]);
        c
    } else {
        Command::new(BERTH)
    };
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("berth did not finish in 60 s")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn cli_lists_nodes_and_cron_runs_sets_every_setting_and_finds_the_installation() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let image = setup.push("app/w", "v1").await;

    // The node berth up runs, alive and heard.
    eventually("the node heard", Duration::from_secs(30), || async {
        let nodes = cli.json(&["node", "list"]).await;
        nodes[0]["lastHeartbeatAt"].is_string()
    })
    .await;
    let nodes = cli.json(&["node", "list"]).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    let node = &nodes[0];
    assert_eq!(
        (
            node["name"].as_str(),
            node["state"].as_str(),
            node["cpuMillis"].as_u64(),
            node["memoryMib"].as_u64(),
            node["instances"].as_u64(),
        ),
        (
            Some("cli-node"),
            Some("alive"),
            Some(4000),
            Some(4096),
            Some(0)
        ),
        "{nodes}"
    );
    let node_id = node["id"].as_str().unwrap().to_owned();

    // A worker with every remaining setting given on the command line.
    let created = cli
        .run(&[
            "service",
            "create",
            "w",
            "--type",
            "background_worker",
            "--image",
            &image,
            "--command",
            LOOP,
            "--overlap-policy",
            "cancel",
            "--shutdown-delay-seconds",
            "5",
            "--notify-on-fail",
            "ignore",
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    let svc = cli.json(&["service", "show", "w"]).await;
    assert_eq!(
        (
            svc["serviceDetails"]["overlapPolicy"].as_str(),
            svc["serviceDetails"]["shutdownDelaySeconds"].as_u64(),
            svc["notifyOnFail"].as_str(),
        ),
        (Some("cancel"), Some(5), Some("ignore")),
        "{svc}"
    );
    let table = cli.ok(&["service", "show", "w"]).await;
    assert!(
        table.contains("overlap:      cancel")
            && table.contains("shutdown:     5 s")
            && table.contains("notify:       ignore"),
        "{table}"
    );
    // Changed, and the notification setting cleared back to the owner's.
    let updated = cli
        .run(&[
            "service",
            "update",
            "w",
            "--overlap-policy",
            "wait",
            "--shutdown-delay-seconds",
            "300",
            "--notify-on-fail",
            "",
        ])
        .await;
    assert_eq!(updated.code, 0, "{updated:?}");
    let svc = cli.json(&["service", "show", "w"]).await;
    assert_eq!(
        (
            svc["serviceDetails"]["overlapPolicy"].as_str(),
            svc["serviceDetails"]["shutdownDelaySeconds"].as_u64(),
            svc["notifyOnFail"].as_str(),
        ),
        (Some("wait"), Some(300), Some("default")),
        "{svc}"
    );
    for bad in [
        ["--shutdown-delay-seconds", "0"],
        ["--shutdown-delay-seconds", "301"],
        ["--overlap-policy", "sometimes"],
        ["--notify-on-fail", "always"],
    ] {
        let refused = cli.run(&["service", "update", "w", bad[0], bad[1]]).await;
        assert_eq!(refused.code, 64, "{bad:?}: {refused:?}");
        assert!(refused.stderr.contains(bad[0]), "{bad:?}: {refused:?}");
    }

    // The worker's instance shows on the node, counted for its owner.
    eventually(
        "the instance on the node",
        Duration::from_secs(30),
        || async { cli.json(&["node", "list"]).await[0]["instances"].as_u64() >= Some(1) },
    )
    .await;
    let table = cli.ok(&["node", "list"]).await;
    println!("$ berth node list\n{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&node_id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("cli-node") && row.contains("alive") && row.contains("s ago"),
        "{table}"
    );

    // A cron job whose run fails with exit 3: listed with how it ended.
    let cron = cli
        .run(&[
            "service",
            "create",
            "nightly",
            "--type",
            "cron_job",
            "--image",
            &image,
            "--schedule",
            "0 3 * * *",
            "--command",
            "sh -c 'exit 3'",
        ])
        .await;
    assert_eq!(cron.code, 0, "{cron:?}");
    assert!(cli
        .ok(&["cron", "runs", "nightly"])
        .await
        .contains("no runs yet"));
    eventually("cron job deployed", Duration::from_secs(60), || async {
        cli.json(&["service", "show", "nightly"]).await["liveDeployId"].is_string()
    })
    .await;
    let started = cli.ok(&["cron", "run", "nightly"]).await;
    let run_id = started
        .split_whitespace()
        .find(|w| w.starts_with("crn-"))
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    eventually("the run ended", Duration::from_secs(90), || async {
        let runs = cli.json(&["cron", "runs", "nightly"]).await;
        runs[0]["cronJobRun"]["runStatus"] == "failed"
    })
    .await;
    let runs = cli.json(&["cron", "runs", "nightly"]).await;
    let run = &runs[0]["cronJobRun"];
    assert_eq!(
        (
            run["id"].as_str(),
            run["status"].as_str(),
            run["exitCode"].as_i64(),
            run["triggeredBy"].as_str(),
        ),
        (
            Some(run_id.as_str()),
            Some("unsuccessful"),
            Some(3),
            Some("api")
        ),
        "{runs}"
    );
    let table = cli.ok(&["cron", "runs", "nightly"]).await;
    println!("$ berth cron runs nightly\n{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&run_id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("failed") && row.contains(" 3 ") && row.contains("api"),
        "{table}"
    );
    // A run whose program cannot run: the table says why.
    let before = cli.json(&["service", "show", "nightly"]).await["liveDeployId"].clone();
    cli.ok(&[
        "service",
        "update",
        "nightly",
        "--command",
        "/opt/nightly/run",
    ])
    .await;
    eventually("the new command live", Duration::from_secs(60), || async {
        let live = cli.json(&["service", "show", "nightly"]).await["liveDeployId"].clone();
        live.is_string() && live != before
    })
    .await;
    let started = cli.ok(&["cron", "run", "nightly"]).await;
    let second = started
        .split_whitespace()
        .find(|w| w.starts_with("crn-"))
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    eventually("the second run ended", Duration::from_secs(90), || async {
        let runs = cli.json(&["cron", "runs", "nightly"]).await;
        runs[0]["cronJobRun"]["id"] == second.as_str()
            && runs[0]["cronJobRun"]["runStatus"] == "failed"
    })
    .await;
    let table = cli.ok(&["cron", "runs", "nightly"]).await;
    println!("$ berth cron runs nightly\n{table}");
    assert!(
        table.lines().next().unwrap_or_default().contains("REASON"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&second))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("127") && row.contains("/opt/nightly/run is not in the image"),
        "{table}"
    );
    let wrong = cli.run(&["cron", "runs", "w"]).await;
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(
        wrong.stderr.contains("only cron jobs have runs"),
        "{wrong:?}"
    );

    // One-off jobs in the same service's image: `--wait` follows each to
    // its end and exits 1 unless it succeeded.
    let failed = cli
        .run(&[
            "job",
            "run",
            "nightly",
            "sh -c 'echo migrating; exit 4'",
            "--wait",
        ])
        .await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(failed.stderr.contains("failed (exit 4)"), "{failed:?}");
    // Its output is in the service's logs under the instance it names.
    let hint = failed
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("its output: "))
        .unwrap_or_else(|| panic!("{failed:?}"))
        .to_owned();
    let instance = hint.rsplit(' ').next().unwrap().to_owned();
    assert!(instance.starts_with("ins-"), "{hint}");
    eventually(
        "the job's output in the logs",
        Duration::from_secs(30),
        || async {
            cli.ok(&["service", "logs", "nightly", "--instance", &instance])
                .await
                .contains("migrating")
        },
    )
    .await;
    let ok = cli
        .run(&[
            "job", "run", "nightly", "true", "--plan", "standard", "--wait",
        ])
        .await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("succeeded (exit 0)"), "{ok:?}");
    let jobs = cli.json(&["job", "list", "nightly"]).await;
    let listed: Vec<(&str, &str, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let j = &i["job"];
            (
                j["startCommand"].as_str().unwrap(),
                j["status"].as_str().unwrap(),
                j["planId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("true", "succeeded", "standard"),
            ("sh -c 'echo migrating; exit 4'", "failed", "starter")
        ],
        "{jobs}"
    );
    let table = cli.ok(&["job", "list", "nightly"]).await;
    println!("$ berth job list nightly\n{table}");

    // From another directory, with no BERTH_DATA_DIR: the record `berth
    // up` wrote in its runtime dir leads to the data dir.
    let run_dir = runtime_dir(&cli.data);
    let record = run_dir.join("berth/api.json");
    let recorded: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        recorded["apiUrl"].as_str(),
        Some(setup.api_url.as_str()),
        "{recorded}"
    );
    assert_eq!(
        std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let env = [("XDG_RUNTIME_DIR", run_dir.as_path())];
    let found = bare(&["service", "list"], &env, elsewhere.path(), false).await;
    assert_eq!(found.code, 0, "{found:?}");
    assert!(found.stdout.contains("nightly"), "{found:?}");
    // Nothing recorded, nothing here: every place looked is named.
    let none = bare(
        &["service", "list"],
        &[("XDG_RUNTIME_DIR", elsewhere.path())],
        elsewhere.path(),
        false,
    )
    .await;
    assert_eq!(none.code, 64, "{none:?}");
    assert!(
        none.stderr.contains("./.berth/credentials.json")
            && none
                .stderr
                .contains(&format!("{}/berth/api.json", elsewhere.path().display())),
        "{none:?}"
    );

    // As another user: the record is found, the key (0600, root's) is
    // not readable, and the message names the file and the way on.
    for dir in [cli.data.parent().unwrap(), elsewhere.path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let credentials = cli.data.join("credentials.json");
    assert_eq!(
        std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let denied = bare(&["service", "list"], &env, elsewhere.path(), true).await;
    println!("$ berth service list (as nobody)\n{}", denied.stderr);
    assert_eq!(denied.code, 64, "{denied:?}");
    assert!(
        denied
            .stderr
            .contains(&format!("cannot read {}", credentials.display()))
            && denied.stderr.contains("permission denied")
            && denied.stderr.contains("readable only by root (mode 0600)")
            && denied.stderr.contains(&record.display().to_string())
            && denied.stderr.contains("sudo")
            && denied.stderr.contains("BERTH_API_KEY"),
        "{denied:?}"
    );
    // With a key of their own, the record still gives them the API.
    let key = cli.json(&["apikey", "create", "--label", "nobody"]).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut with_key = Command::new("setpriv");
    with_key
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            BERTH,
        ])
        .args(["service", "list"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_RUNTIME_DIR", &run_dir)
        .env("BERTH_API_KEY", &key)
        .current_dir(elsewhere.path());
    let out = with_key.output().await.unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("nightly"),
        "{out:?}"
    );

    // Stopped, berth up takes its record away.
    setup.stop().await;
    assert!(!record.exists(), "{} left behind", record.display());
    // A record a killed `berth up` left behind is passed over, and said.
    let stale = serde_json::json!({
        "dataDir": cli.data, "apiUrl": setup.api_url, "pid": 1 << 23,
    });
    std::fs::write(&record, stale.to_string()).unwrap();
    let passed_over = bare(&["service", "list"], &env, elsewhere.path(), false).await;
    assert_eq!(passed_over.code, 64, "{passed_over:?}");
    assert!(
        passed_over.stderr.contains(&format!(
            "{} (left by `berth up` pid 8388608, which is not running)",
            record.display()
        )),
        "{passed_over:?}"
    );
}

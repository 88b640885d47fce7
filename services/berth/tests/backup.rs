//! Backup and restore as docs/operating.md says: with `berth up` stopped,
//! its data dir without the node's own state (`node/`) is the
//! installation — the NATS store, the secret key, the credentials file and
//! the NATS users. Restored into a fresh data dir (another machine), `berth
//! up` serves the same services, with their sealed values readable and the
//! same API key.

use std::path::Path;
use std::time::Duration;

use berth_tests::free_port;

use crate::cli_support::{eventually, runc_root, start_up, Cleanup, Cli, Setup};

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do echo up; sleep 1; done'";

/// Copies `from` into `to`, leaving out the node's own state.
fn copy_installation(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "node" {
            continue;
        }
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(entry.path())
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success(), "cp {:?}", entry.path());
    }
}

#[tokio::test]
async fn a_backup_restored_into_a_fresh_data_dir_serves_the_same_services() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let image = setup.push("app/kept", "v1").await;
    let created = cli
        .run(&[
            "service",
            "create",
            "kept",
            "--type",
            "background_worker",
            "--image",
            &image,
            "--command",
            LOOP,
            "--env",
            "SECRET=restored-value",
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    let before = cli.json(&["service", "show", "kept"]).await;
    let key_before = std::fs::read_to_string(cli.data.join("credentials.json")).unwrap();

    // Back up with berth up stopped; the old machine's containers go.
    setup.stop().await;
    berth_tests::runc::remove_leftovers(&runc_root(&cli.data), &cli.data);
    let restored_dir = tempfile::tempdir().unwrap();
    let restored = restored_dir.path().join("data");
    copy_installation(&cli.data, &restored);

    // Restore: berth up on the copy, on other ports.
    let api_port = free_port();
    let nats_url = format!("nats://127.0.0.1:{}", free_port());
    let mut again = Cleanup {
        child: None,
        data: restored.clone(),
    };
    again.child = Some(start_up(&restored, &nats_url, &cli.prefix, api_port).await);
    let cli2 = Cli {
        data: restored.clone(),
        nats_url,
        prefix: cli.prefix.clone(),
    };
    let after = cli2.json(&["service", "show", "kept"]).await;
    assert_eq!(after["id"], before["id"], "{after}");
    assert_eq!(after["liveDeployId"], before["liveDeployId"], "{after}");
    // The same key opens the sealed values; the same API key works.
    let env = cli2.json(&["env", "list", "kept", "--reveal"]).await;
    assert!(env.to_string().contains("restored-value"), "{env}");
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(restored.join("credentials.json")).unwrap())
            .unwrap();
    let old: serde_json::Value = serde_json::from_str(&key_before).unwrap();
    assert_eq!(creds["apiKey"], old["apiKey"]);
    assert_eq!(
        creds["apiUrl"],
        format!("http://127.0.0.1:{api_port}"),
        "apiUrl follows the new address"
    );
    // And it deploys: a new deploy on the restored installation goes live.
    let deployed = cli2.run(&["service", "deploy", "kept"]).await;
    assert_eq!(deployed.code, 0, "{deployed:?}");
    eventually(
        "the restored service live again",
        Duration::from_secs(60),
        || async {
            cli2.json(&["service", "show", "kept"]).await["liveDeployId"] != before["liveDeployId"]
        },
    )
    .await;
    drop(again);
}

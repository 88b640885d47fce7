//! End to end: `berth secret-file` gives a running service a file its
//! instances read in `/etc/secrets`, through the API, the scheduler and a
//! real node, against a real `berth up`; contents are listed only when
//! asked; removing the file deploys an instance without it.

use std::time::Duration;

use crate::cli_support::{eventually, Setup};

#[tokio::test]
async fn a_secret_file_set_from_the_cli_is_read_in_etc_secrets() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let v1 = setup.push("app/files", "v1").await;
    cli.ok(&[
        "service",
        "create",
        "files",
        "--type",
        "background_worker",
        "--image",
        &v1,
        "--command",
        "sleep 600",
        "--wait",
    ])
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("key.json");
    std::fs::write(&file, "{\"key\": \"sekret-77\"}\n").unwrap();
    let set = cli
        .ok(&[
            "secret-file",
            "set",
            "files",
            "key.json",
            "--from-file",
            file.to_str().unwrap(),
        ])
        .await;
    assert!(set.contains("/etc/secrets/key.json set"), "{set}");
    let cat = || {
        let cli = cli.clone();
        async move {
            cli.run(&[
                "exec",
                "files",
                "--",
                "busybox",
                "cat",
                "/etc/secrets/key.json",
            ])
            .await
        }
    };
    let mut last = None;
    for _ in 0..120 {
        let out = cat().await;
        if out.stdout == "{\"key\": \"sekret-77\"}\n" {
            last = None;
            break;
        }
        last = Some(out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last.is_none(),
        "{last:?}\n{}",
        cli.ok(&["service", "events", "files"]).await
    );
    let listed = cli.ok(&["secret-file", "list", "files"]).await;
    assert!(
        listed.contains("/etc/secrets/key.json") && listed.contains("21"),
        "{listed}"
    );
    assert!(
        !listed.contains("sekret"),
        "a content shown unasked: {listed}"
    );
    let revealed = cli.ok(&["secret-file", "list", "files", "--reveal"]).await;
    assert!(revealed.contains("sekret-77"), "{revealed}");

    cli.ok(&["secret-file", "rm", "files", "key.json"]).await;
    eventually(
        "an instance without the file",
        Duration::from_secs(60),
        || async {
            let out = cat().await;
            out.code != 0 && out.stderr.contains("No such file")
        },
    )
    .await;
    let bad = cli.run(&["secret-file", "rm", "files", "key.json"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    setup.stop().await;
}

//! `berth demo` as a newcomer runs it: from a data dir that does not exist
//! yet, in a network namespace of its own that has only loopback (so it
//! provably needs no network, and its default ports meet no other test),
//! it must exit 0 having shown every step, and leave nothing running:
//! no container, no nats-server, no registry, no `berth up`.

use std::time::Duration;

use berth_tests::runc::runc_list;

use crate::cli_support::{processes_naming, runc_root, Cleanup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_offline_from_a_clean_data_dir_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Removes what a failed demo left (asserted absent below first).
    let _cleanup = Cleanup {
        child: None,
        data: data.clone(),
    };
    let demo = tokio::process::Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" demo",
            env!("CARGO_BIN_EXE_berth"),
        ])
        .current_dir(dir.path())
        .env("BERTH_DATA_DIR", &data)
        // Where the berth up it starts records itself: the test's own.
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .env_remove("BERTH_API_URL")
        .env_remove("BERTH_API_KEY")
        .env_remove("BERTH_NATS_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), demo)
        .await
        .expect("the demo finishes within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "berth demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // Every step ran and showed its proof, in order: v1 served, still v1
    // after the tag moved, v2 after the hook, v1 again after the rollback.
    for step in 1..=7 {
        assert!(stdout.contains(&format!("[{step}/7]")), "{stdout}");
    }
    let answers: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("hello from "))
        .collect();
    assert_eq!(
        answers,
        [
            "hello from v1",
            "hello from v1",
            "hello from v2",
            "hello from v1"
        ],
        "{stdout}"
    );
    assert_eq!(stdout.matches('✓').count(), 4, "{stdout}");
    // `berth service instances` shows the instance, healthy, with the
    // address the router reaches it at.
    assert!(
        stdout.lines().map(str::trim).any(|l| l.starts_with("ins-")
            && l.contains(" healthy ")
            && l.split_whitespace().any(|w| w.starts_with("127.0.0.1:"))),
        "{stdout}"
    );
    assert!(
        stdout.contains("@sha256:"),
        "the rollback names a digest: {stdout}"
    );
    assert!(stdout.contains("everything it started is gone"), "{stdout}");

    // A fresh installation was made where the user pointed...
    assert!(data.join("credentials.json").is_file());
    // ...and nothing it started is left running.
    assert_eq!(runc_list(&runc_root(&data)), Vec::<String>::new());
    assert_eq!(processes_naming(&data), Vec::<i32>::new());
    assert_eq!(
        processes_naming(std::path::Path::new("berth-demo-registry")),
        Vec::<i32>::new()
    );
}

//! The node's machine check through the real binary: on a machine the node
//! cannot run on, `berth run node` refuses at once with one sentence (exit
//! 64, nothing started), and `berth up` says so and runs everything else.
//! The non-root case runs the binary as `nobody` (through `setpriv` when
//! the tests run as root).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use berth_tests::free_port;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Pid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::cli_support::berth;

const NOBODY: u32 = 65534;

/// `cmd` as an unprivileged user: unchanged when the tests are not root,
/// else through `setpriv` as `nobody` with no groups (and so no
/// capabilities).
fn unprivileged(cmd: Command) -> Command {
    if !geteuid().is_root() {
        return cmd;
    }
    let std = cmd.as_std();
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ])
    .arg(std.get_program())
    .args(std.get_args())
    .env_clear()
    .kill_on_drop(true);
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

/// A data dir `nobody` can create files in.
fn data_dir_for_nobody(dir: &Path) -> std::path::PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    if geteuid().is_root() {
        std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    data
}

/// What `berth up` printed until its summary ended, and what it said on
/// stderr by then; it is stopped with SIGTERM and must exit 0.
async fn up_summary(mut cmd: Command) -> (String, String) {
    let mut child = cmd
        .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
        .env("BERTH_API_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stdout = tokio::time::timeout(Duration::from_secs(60), async {
        let mut lines = Vec::new();
        while let Some(line) = out.next_line().await.unwrap() {
            let end = line.trim().starts_with("components:");
            lines.push(line);
            if end {
                return lines.join("\n");
            }
        }
        panic!("berth up exited before its summary: {lines:?}");
    })
    .await
    .expect("berth up printed its summary within 60 s");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("berth up stopped within 20 s")
        .unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n--- stderr\n{err}");
    (stdout, err)
}

fn components(summary: &str) -> Vec<String> {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("components:"))
        .unwrap()
        .split(',')
        .map(|c| c.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn a_normal_user_is_told_the_node_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_for_nobody(dir.path());
    let nats = berth_tests::NatsServer::start(berth_tests::NatsVersion::Modern).unwrap();
    let prefix = berth_tests::unique_prefix();

    let mut run = berth(&data, &nats.url(), &prefix);
    run.args(["run", "node"]);
    let out = unprivileged(run).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "berth needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) to run containers \
             (run `berth run node` as root)"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");

    let mut up = berth(&data, &nats.url(), &prefix);
    up.arg("up");
    let (summary, stderr) = up_summary(unprivileged(up)).await;
    assert!(
        stderr.contains(
            "node not started: berth needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) to run \
             containers (run `berth up` as root, or run `berth run node` as root on this \
             machine); deploys will wait for a node"
        ),
        "{stderr}"
    );
    assert!(
        summary.contains("node:       node not started"),
        "{summary}"
    );
    let running = components(&summary);
    assert!(!running.iter().any(|c| c == "node"), "{running:?}");
    assert!(running.iter().any(|c| c == "api"), "{running:?}");
}

/// As root too: a missing runc or CNI plugins stop the node the same way,
/// naming each thing and the setting that points at it.
#[tokio::test]
async fn what_is_missing_is_named_with_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let no_plugins = dir.path().join("cni");
    std::fs::create_dir(&no_plugins).unwrap();
    let cni = no_plugins.to_str().unwrap();
    let unused = format!("nats://127.0.0.1:{}", free_port());

    let out = berth(&data, &unused, "preflight")
        .args(["run", "node"])
        .env("BERTH_NODE_RUNC", "/no/such/runc")
        .env("BERTH_NODE_CNI_PATH", cni)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for needle in [
        "a working runc (`/no/such/runc --version`: no such file; BERTH_NODE_RUNC)",
        &format!(
            "the CNI plugins bridge, host-local, portmap and firewall in {cni} \
             (BERTH_NODE_CNI_PATH)"
        ),
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!data.exists(), "nothing is started before the check");

    let nats = berth_tests::NatsServer::start(berth_tests::NatsVersion::Modern).unwrap();
    let mut up = berth(&data, &nats.url(), &berth_tests::unique_prefix());
    up.arg("up").env("BERTH_NODE_RUNC", "/no/such/runc");
    let (summary, stderr) = up_summary(up).await;
    assert!(
        stderr.contains("node not started: berth needs a working runc"),
        "{stderr}"
    );
    assert!(
        stderr.contains("install what is missing and start berth again"),
        "{stderr}"
    );
    assert!(
        !components(&summary).iter().any(|c| c == "node"),
        "{summary}"
    );
}

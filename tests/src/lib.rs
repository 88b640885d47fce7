//! # berth-tests: the harness that starts real servers
//!
//! Integration and end-to-end tests run against the real things (STYLE.md
//! §9): this crate starts them. Each test owns its servers — free ports, its
//! own temp store dir, killed on drop — and a unique subject prefix, so tests
//! run in parallel without seeing each other.
//!
//! - [`NatsServer`]: one `nats-server` with JetStream, Debian's 2.9.10
//!   ([`NatsVersion::Legacy`]) or a current one ([`NatsVersion::Modern`]);
//!   `kill9()` and `restart()` on the same port and store.
//! - [`NatsCluster`]: N routed servers for replicated streams.
//! - [`unique_prefix`] / [`unique_subjects`]: names no other test uses.
//! - [`eventlog`]: scenarios shared by the event-store tests.
//! - [`registry`], [`image`], [`layers`]: a real registry and images for it.
//! - [`runc`]: root/runc checks and cleanup of what real containers leave.
//! - [`net`]: test subnets no other test holds; what a node network leaves.
//! - [`pebble`]: an ACME CA (Pebble) with a DNS answer for any name, and a
//!   throwaway CA for test certificates.
//!
//! And the worlds the component tests share, each on real servers:
//!
//! - [`agent`]: a busybox image built from the host's static busybox,
//!   pulled and unpacked, and an agent with its own state dir and runc root;
//! - [`node`]: a store, a registry with that image and helpers to enqueue
//!   node work and wait for the facts a node reports;
//! - [`resolver`]: a registry, the resolver component and the ingress
//!   application layer (credential, create-service and resolver tests);
//! - [`scheduler`]: a registry with two image versions, the resolver, node
//!   components and the scheduler (scheduler and router tests).
//!
//! [`bench`] holds the registry and pull benchmarks the examples run.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod agent;
pub mod api;
pub mod behind;
pub mod bench;
pub mod eventlog;
pub mod image;
pub mod layers;
mod nats;
pub mod net;
pub mod netns;
pub mod node;
pub mod pebble;
pub mod proxy;
pub mod registry;
pub mod resolver;
pub mod runc;
pub mod scheduler;
pub mod syslog;
pub mod tmpfs;
pub mod two_machines;
pub mod webhook;

pub use nats::{nats_binary, NatsCluster, NatsServer, NatsVersion, Place};

use std::sync::atomic::{AtomicU64, Ordering};

use berth_schemas::Subjects;

/// A subject prefix no other test in any process uses (`t` + pid + counter + time).
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{:x}x{:x}x{:x}", std::process::id(), n, nanos)
}

/// [`Subjects`] under a [`unique_prefix`].
pub fn unique_subjects() -> Subjects {
    Subjects::new(&unique_prefix()).expect("unique prefixes are valid")
}

/// Ports tests hand out: below the kernel's ephemeral range (32768-60999
/// on Linux), so no `bind(0)` and no outgoing connection anywhere on the
/// machine takes one, and below nodes' default host ports (20000-29999).
const TEST_PORTS: std::ops::Range<u32> = 10_000..20_000;

/// Host ports a test's node publishes instances on: 100 of 20000–29999
/// given to no other node of this process (the 101st node gets the first
/// hundred again, by then long gone). Nodes of tests running side by side
/// share this machine's network, and two nodes handing out the same host
/// port would each send the other's traffic to their own instance.
pub fn node_ports() -> std::ops::RangeInclusive<u16> {
    const SLOTS: u32 = 100;
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761) % SLOTS)
    });
    let slot = next.fetch_add(1, Ordering::Relaxed) % SLOTS;
    let first = (20_000 + slot * 100) as u16;
    first..=first + 99
}

/// A TCP port free on every address now and handed to no one else by this
/// process. Picking a port and binding it later races with everything else
/// that picks ports; ports from the ephemeral range are handed out by the
/// kernel to every `bind(0)`, so a server of one test could take the port
/// another test picked for its own server. These never are, and this
/// process never hands one out twice (each process starts at its own
/// offset, for test binaries running side by side).
pub fn free_port() -> u16 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let span = TEST_PORTS.end - TEST_PORTS.start;
        std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761) % span)
    });
    let span = TEST_PORTS.end - TEST_PORTS.start;
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = (TEST_PORTS.start + offset) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// Log output kept in memory, for a test that installs its own global
/// subscriber (in a process of its own, see [`run_alone`]) and reads what
/// was logged: `with_writer(move || captured.clone())`.
#[derive(Debug, Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a test tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The environment variable set for a test that [`run_alone`] runs in its
/// own process.
pub const ALONE_ENV: &str = "BERTH_TEST_ALONE";

/// Whether this process is the child [`run_alone`] started.
pub fn is_alone() -> bool {
    std::env::var_os(ALONE_ENV).is_some()
}

/// Runs the ignored test `path` (module path inside this test binary, e.g.
/// `credentials_secrecy::child`) in a process of its own and asserts that it
/// ran and passed. For tests that own process-global state, such as the
/// tracing subscriber, which the other tests in the same binary would share.
///
/// libtest exits 0 when `--exact` matches no test, so the exit status alone
/// would let a renamed child pass without running: the child's summary
/// line must say that exactly one test passed.
pub fn run_alone(path: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            path,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ALONE_ENV, "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown with this test's output (libtest captures it).
    print!("{stdout}");
    assert!(
        out.status.success(),
        "{path} failed in its own process: {}",
        out.status
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: "))
        .unwrap_or_default();
    assert!(
        summary.starts_with("ok. 1 passed; 0 failed;"),
        "{path} did not run as the one test of its process: {summary:?}"
    );
}

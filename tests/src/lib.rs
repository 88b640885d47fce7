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
//!
//! Later issues add registry and runc helpers here.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod eventlog;
pub mod image;
pub mod layers;
mod nats;
pub mod registry;

pub use nats::{nats_binary, NatsCluster, NatsServer, NatsVersion};

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

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
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

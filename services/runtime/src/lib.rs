//! # berth-runtime: the plumbing every berth process shares
//!
//! Nothing here knows about deploys. It turns flags and `BERTH_*` variables
//! into a validated [`Config`] (every problem reported before any port is
//! bound), keeps owner-supplied URLs off internal addresses ([`egress`]),
//! sets up tracing, serves `/healthz` and `/metrics`, runs
//! [`Component`]s under one shutdown story (signal → cancel → wait out the
//! grace period → drain NATS), and can start a local `nats-server` for
//! one-machine installs and benchmarks.

pub mod component;
pub mod config;
pub mod egress;
pub mod http;
pub mod http1;
pub mod local_nats;
pub mod nats_auth;
pub mod node_key;
pub mod run;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;

pub use component::{BoxError, Component, ComponentContext};
pub use config::{Config, ConfigError, RawConfig};
pub use egress::{AddressPolicy, TargetGuard, TargetRefused};
pub use http::{install_metrics, Health, HttpServer, ReadyFlag};
pub use local_nats::{LocalNats, LocalNatsError, NatsServerSpec, SyncInterval};
pub use node_key::{ForNode, NodeKeyPair, NodePublicKey};
pub use run::{run_components, RunDeps, RunError};
pub use secrets::{Secret, SecretError, SecretKey};
pub use shutdown::{drain_nats, Drained, Shutdown};
pub use telemetry::init_tracing;

/// Writes `bytes` to `path` with exactly `mode` (its directory, when this
/// makes it, with exactly `dir_mode`) through a temporary file beside it,
/// synced, then renamed over it: a reader never sees half a file, and the
/// umask narrows neither.
pub fn write_whole(
    path: &std::path::Path,
    bytes: &[u8],
    mode: u32,
    dir_mode: u32,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

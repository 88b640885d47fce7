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

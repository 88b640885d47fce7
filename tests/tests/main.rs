//! End-to-end tests of berth against real nats-server, registry and runc,
//! one binary (one link) for all of them; each module owns its servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent_disk;
mod agent_exec;
mod agent_restart;
mod agent_rootfs;
mod agent_run;
mod agent_sandbox;
mod agent_stop;
mod agent_terminal;
mod crate_layering;
mod create_service_verification;
mod credentials_lifecycle;
mod credentials_race;
mod credentials_secrecy;
mod eventlog_append;
mod eventlog_cluster;
mod eventlog_projection;
mod eventlog_worker;
mod nats_liveness;
mod nats_roles;
mod net_legacy;
mod node_run;
mod persistent_snapshots;
mod puller_kill;
mod puller_pull;
mod puller_store;
mod resolve_auth;
mod resolve_basic;
mod resolve_bench;
mod resolve_platform;
mod resolve_retry;
mod resolve_targets;
mod resolver_deploys;
mod unpack_bombs;
mod unpack_fuzz;
mod unpack_hostile;
mod unpack_umoci;

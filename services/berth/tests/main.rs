//! Black-box tests of the real `berth` binary, one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backup;
mod cli;
mod cli_domains;
mod cli_exec;
mod cli_installation;
mod cli_lifecycle;
mod cli_logs;
mod cli_secret_files;
mod cli_support;
mod crash;
mod dashboard_browser;
mod demo;
mod deploy_config;
mod integrations;
mod log_streams;
mod node;
mod node_seal;
mod preflight;
mod private_nodes;
mod render_sdk;
mod start_wait;
mod up;
mod webhooks;

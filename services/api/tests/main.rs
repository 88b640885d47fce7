//! Integration tests of berth-api against real servers, one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod allow_list;
mod auth;
mod autoscaling;
mod bus;
mod channels;
mod conformance;
mod credential_change;
mod credentials;
mod custom_domains;
mod dashboard;
mod dashboard_live;
mod disks;
mod docs;
mod env_vars;
mod events;
mod exec;
mod fuzz;
mod history;
mod hooks;
mod isolation;
mod listing;
mod log_streams;
mod logs;
mod logs_live;
mod maintenance;
mod metrics;
mod nodes_cron;
mod notifications;
mod rename;
mod repair;
mod routes;
mod secret_files;
mod shared_state;
mod shell;
mod support;

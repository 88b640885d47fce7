//! # berth: the CLI and the all-in-one `berth up`
//!
//! A thin main: parse the command line, hand the subcommand its
//! arguments, and turn the outcome into an exit code, the same for every
//! command: 0 ok; 1 failed (the API refused, a followed deploy failed,
//! anything else at run time); 64 usage (a bad command line or input, bad
//! configuration, a machine the node cannot run on); 69 the API
//! unreachable.

mod bench;
mod check;
mod cli;
mod client;
mod components;
mod demo;
mod exit;
mod image;
mod installation;
mod nats_users;
mod projector;
mod secret;
mod up;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{BenchCommand, Cli, Command, ImageCommand, NatsCommand};

/// mimalloc rather than glibc's malloc: the event store's append path makes
/// many small, short-lived allocations across tokio's threads, where glibc
/// fragments (`malloc_consolidate` in profiles) and cost ~2 µs of client
/// CPU per append (BENCHMARKS.md, event log).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return client::parse_failed(e),
    };
    let outcome = match cli.command {
        Command::Image(ImageCommand::Normalize { reference }) => image::normalize(&reference),
        Command::Up(args) => with_runtime(up::up(args)),
        Command::Run(args) => with_runtime(up::run_one(args)),
        Command::Demo(args) => with_runtime(demo::demo(args)),
        Command::Bench(BenchCommand::Eventlog(args)) => with_runtime(bench::eventlog(args)),
        Command::Bench(BenchCommand::Scale(args)) => with_runtime(bench::scale::scale(args)),
        Command::Bench(BenchCommand::Dashboard(args)) => {
            with_runtime(bench::dashboard::dashboard(args))
        }
        Command::Nats(cmd) => with_runtime(nats(cmd)),
        // Client commands have their own exit codes (1 refused, 64 usage, 69 unreachable).
        Command::Client(cmd) => return client::main(cmd),
    };
    outcome.report()
}

async fn nats(cmd: NatsCommand) -> exit::Outcome {
    match cmd {
        NatsCommand::Creds {
            role,
            out,
            node_id,
            subject_prefix,
        } => {
            let node = match node_id.map(|n| n.parse()).transpose() {
                Ok(n) => n,
                Err(e) => return exit::Outcome::Usage(format!("--node-id: {e}")),
            };
            match nats_users::write_creds(&role, node, &subject_prefix, &out) {
                Ok(c) => {
                    println!("{} ({}): {}", c.user, c.role, out.display());
                    exit::Outcome::Ok
                }
                Err(e) => exit::Outcome::Failed(e),
            }
        }
        NatsCommand::Auth {
            creds,
            out,
            integrations_with,
            nats_url,
            subject_prefix,
        } => {
            let integrations = match integrations_with {
                None => None,
                Some(control) => match berth_runtime::config::parse_nats_urls(&nats_url) {
                    Ok(servers) => Some((servers, control)),
                    Err(e) => return exit::Outcome::Usage(format!("BERTH_NATS_URL: {e}")),
                },
            };
            match nats_users::write_auth(&creds, &subject_prefix, integrations, &out).await {
                Ok(n) => {
                    println!("{n} NATS users: {}", out.display());
                    exit::Outcome::Ok
                }
                Err(e) => exit::Outcome::Failed(e),
            }
        }
    }
}

fn with_runtime(fut: impl std::future::Future<Output = exit::Outcome>) -> exit::Outcome {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let outcome = rt.block_on(fut);
            // Everything we own has been awaited by now (tracked tasks, the
            // drained client, the nats-server child); do not let a stray
            // blocking-pool thread hold the exit up.
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            outcome
        }
        Err(e) => exit::Outcome::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")),
    }
}

//! The command line. Every option also reads a `BERTH_*` variable; the
//! shared ones live in [`berth_runtime::RawConfig`].

use std::path::PathBuf;

use berth_runtime::RawConfig;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Deploy prebuilt container images on your own machines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every component in one process (starts a local nats-server if none answers).
    Up(UpArgs),
    /// Run one component alone.
    Run(RunArgs),
    /// See berth work on this machine, offline: a web service from a tiny
    /// local image through a tag push, a deploy by hook and a rollback
    /// (uses the `berth up` that answers, or starts one; removes what it
    /// started).
    Demo(DemoArgs),
    /// Image reference tools.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Benchmarks against a fresh local nats-server.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// NATS users for a server berth does not start (a cluster, compose).
    #[command(subcommand)]
    Nats(NatsCommand),
    /// API client commands (service, credential, env, domain, hook, cron, node, apikey, …).
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

/// `berth nats …`: credentials per role and the server's users.
#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Write credentials for a role (kept if FILE already holds that role's).
    Creds {
        /// `control` (every control-plane component), `node` (one per
        /// node: bound to its id) or `operator` (the CLI's pull progress).
        role: String,
        /// Where to write them (mode 0600).
        #[arg(long, short)]
        out: std::path::PathBuf,
        /// The node's id (`nod-…`) for `node`; a new one when not given.
        #[arg(long)]
        node_id: Option<String>,
        /// The installation's subject prefix.
        #[arg(long, env = "BERTH_SUBJECT_PREFIX", default_value = "berth")]
        subject_prefix: String,
    },
    /// Write the server's `authorization` block for credentials files (and
    /// the integrations in the log); include it from every server's config
    /// and reload the servers (`nats-server --signal reload`).
    Auth {
        /// Credentials files, one user each.
        #[arg(required = true)]
        creds: Vec<std::path::PathBuf>,
        /// Where to write the block (mode 0600).
        #[arg(long, short)]
        out: std::path::PathBuf,
        /// Also the integrations owners created, read from the log with
        /// the control credentials given here (`BERTH_NATS_URL` names the servers).
        #[arg(long)]
        integrations_with: Option<std::path::PathBuf>,
        /// NATS server URL(s), for `--integrations-with`.
        #[arg(long, env = "BERTH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The installation's subject prefix.
        #[arg(long, env = "BERTH_SUBJECT_PREFIX", default_value = "berth")]
        subject_prefix: String,
    },
}

/// Every component's settings, each component's under its own heading in
/// `--help` (the shared ones under "General" and "NATS").
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten, next_help_heading = "General")]
    pub common: RawConfig,

    /// Check the configuration (and the NATS credentials file) and print
    /// the settings each component would use, as JSON; then exit: 0 when
    /// valid, 64 when not. Nothing is connected, bound or written.
    #[arg(long, help_heading = "General")]
    pub check: bool,

    /// Key (base64 of 32 bytes) sealing secrets at rest; when unset it is read
    /// from, or created in, `$BERTH_DATA_DIR/secret.key`.
    #[arg(
        long,
        env = "BERTH_SECRET_KEY",
        hide_env_values = true,
        help_heading = "General"
    )]
    pub secret_key: Option<String>,

    #[command(flatten, next_help_heading = "API")]
    pub api: berth_api::ApiArgs,

    #[command(flatten, next_help_heading = "Router")]
    pub router: berth_router::RouterArgs,

    #[command(flatten, next_help_heading = "Node")]
    pub node: berth_node::NodeArgs,

    #[command(flatten, next_help_heading = "Scheduler")]
    pub scheduler: berth_scheduler::SchedulerArgs,

    #[command(flatten, next_help_heading = "Resolver")]
    pub resolver: berth_resolver::ResolverArgs,

    #[command(flatten, next_help_heading = "Cron")]
    pub cron: berth_cron::CronArgs,

    #[command(flatten, next_help_heading = "Notifier")]
    pub notifier: berth_notifier::NotifierArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Which component.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::components::NAMES))]
    pub component: String,

    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A static busybox to build the demo's image from.
    #[arg(long, env = "BERTH_DEMO_BUSYBOX", default_value = "/bin/busybox")]
    pub busybox: PathBuf,

    /// Seconds to wait for `berth up` to answer and for each deploy.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Print the fully qualified form of an image reference.
    Normalize {
        /// e.g. `alpine`, `ghcr.io/org/app:1.2`, `host:5000/x@sha256:…`
        reference: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append, load and rebuild throughput of the event store.
    Eventlog(BenchEventlogArgs),
    /// `berth up` restarted on a long history: start-up time, memory,
    /// listing and hook latency.
    Scale(BenchScaleArgs),
    /// The dashboard: the services page with many services, and many
    /// live streams on one service receiving every deploy event.
    Dashboard(BenchDashboardArgs),
}

#[derive(Debug, Args)]
pub struct BenchDashboardArgs {
    /// Services in the history (one owner).
    #[arg(long, default_value_t = 1000)]
    pub services: u64,

    /// Requests of each services page measured.
    #[arg(long, default_value_t = 500)]
    pub page_requests: u64,

    /// SSE streams on the one service.
    #[arg(long, default_value_t = 500)]
    pub subscribers: u64,

    /// Deploys requested (and canceled) on it while they follow.
    #[arg(long, default_value_t = 50)]
    pub deploys: u64,

    /// nats-server binary to start (default: `nats-server` on PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,

    /// Log filter.
    #[arg(long, env = "BERTH_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Args)]
pub struct BenchScaleArgs {
    /// Services in the history (one owner).
    #[arg(long, default_value_t = 10_000)]
    pub services: u64,

    /// Events in the log, about.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,

    /// Deploys in the history of the one big service.
    #[arg(long, default_value_t = 100_000)]
    pub big_deploys: u64,

    /// Listing requests measured after the restart.
    #[arg(long, default_value_t = 1000)]
    pub list_requests: u64,

    /// Hook calls measured on each of the two services.
    #[arg(long, default_value_t = 200)]
    pub hooks: u64,

    /// Seconds the first start runs before it is stopped.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,

    /// Print the restarted process's resident memory to stderr each time
    /// it moves by 16 MiB, with the time (to line it up with its log).
    #[arg(long)]
    pub memory_trace: bool,

    /// nats-server binary to start (default: `nats-server` on PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,

    /// Log filter.
    #[arg(long, env = "BERTH_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Args)]
pub struct BenchEventlogArgs {
    /// Events appended in the pipelined phase [default: 100000].
    #[arg(long, env = "BERTH_BENCH_EVENTS")]
    pub events: Option<u64>,

    /// Aggregates those events are spread over [default: 1000].
    #[arg(long, env = "BERTH_BENCH_AGGREGATES")]
    pub aggregates: Option<u64>,

    /// Sequential appends to one aggregate, for latency [default: 5000].
    #[arg(long, env = "BERTH_BENCH_SEQUENTIAL")]
    pub sequential: Option<u64>,

    /// Events in the log for the rebuild and restart phases [default: 1000000].
    #[arg(long, env = "BERTH_BENCH_REBUILD")]
    pub rebuild: Option<u64>,

    /// nats-server binary to start (default: `nats-server` on PATH), e.g.
    /// `/usr/sbin/nats-server` for Debian's 2.9.10.
    #[arg(long, env = "BERTH_BENCH_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,

    /// Use a running server at this URL instead of starting one.
    #[arg(long, env = "BERTH_BENCH_NATS_URL", conflicts_with_all = ["nats_server", "sync_interval"])]
    pub nats_url: Option<String>,

    /// JetStream fsync policies to compare, comma separated, each on a fresh
    /// server in this run: `always`, an interval such as `2m`, or `default`
    /// (the server's own: every 2 minutes from 2.10).
    #[arg(long, env = "BERTH_BENCH_SYNC_INTERVAL", default_value = "default")]
    pub sync_interval: String,

    /// Log filter.
    #[arg(long, env = "BERTH_LOG", default_value = "warn")]
    pub log: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The heading an option's variable says it belongs under.
    fn component_of(env: &str) -> &'static str {
        let name = env.trim_start_matches("BERTH_");
        for (prefix, heading) in [
            ("API_", "API"),
            ("ROUTER_", "Router"),
            // The router's managed certificates.
            ("ACME_", "Router"),
            ("NODE_", "Node"),
            ("SCHEDULER_", "Scheduler"),
            ("RESOLVER_", "Resolver"),
            ("CRON_", "Cron"),
            ("NOTIFIER_", "Notifier"),
            ("NATS_", "NATS"),
        ] {
            if name.starts_with(prefix) {
                return heading;
            }
        }
        match name {
            "SUBJECT_PREFIX" | "REPLICAS" => "NATS",
            _ => "General",
        }
    }

    #[test]
    fn up_help_lists_each_components_options_under_its_heading() {
        let mut cli = Cli::command();
        cli.build();
        for name in ["up", "run"] {
            let cmd = cli.find_subcommand(name).unwrap();
            let mut seen = 0;
            for arg in cmd.get_arguments() {
                let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                    // Without a variable (`--check`): under some heading all
                    // the same, never loose among the help.
                    if let Some(long) = arg.get_long().filter(|l| *l != "help") {
                        assert!(
                            arg.get_help_heading().is_some(),
                            "berth {name} --{long} has no heading"
                        );
                    }
                    continue;
                };
                seen += 1;
                assert_eq!(
                    arg.get_help_heading(),
                    Some(component_of(env)),
                    "berth {name} --{}",
                    arg.get_long().unwrap_or_default()
                );
            }
            assert!(seen > 40, "berth {name}: only {seen} options");
        }
    }

    /// Every client command, by its path (`service deploy`), with whether
    /// it takes `--nats-url`.
    fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<(String, bool)>) {
        if cmd.get_subcommands().next().is_none() {
            let nats = cmd
                .get_arguments()
                .any(|a| a.get_long() == Some("nats-url"));
            out.push((path.trim().to_owned(), nats));
        }
        for sub in cmd.get_subcommands() {
            leaves(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn only_the_commands_that_talk_to_nats_show_its_options() {
        let mut cli = Cli::command();
        cli.build();
        let mut all = Vec::new();
        leaves(&cli, "", &mut all);
        let talk_to_nats = [
            "up",
            "run",
            "nats auth",
            "bench eventlog",
            // Following a deploy shows its pull progress, from NATS.
            "service create",
            "service update",
            "service deploy",
            "service follow",
            "service rollback",
            "service resume",
            "env set",
            "env unset",
        ];
        for (path, nats) in &all {
            assert_eq!(
                *nats,
                talk_to_nats.contains(&path.as_str()),
                "berth {path} --nats-url"
            );
        }
        for path in ["service list", "node list", "cron runs", "apikey create"] {
            assert!(all.iter().any(|(p, _)| p == path), "{path}");
        }
    }
}

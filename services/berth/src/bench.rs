//! `berth bench eventlog`: measures the event store against a nats-server
//! started just for the run (fresh store dir, free port), so numbers from
//! different server builds compare: `--nats-server /usr/sbin/nats-server`
//! (Debian 2.9.10) vs the 2.15.1 on PATH. `--nats-url` uses a running one.

use std::time::Duration;

use anyhow::Context;
use berth_eventlog::bench::BenchOptions;
use berth_runtime::config::{parse_nats_urls, LogFormat};
use berth_runtime::local_nats::{find_on_path, free_port, INSTALL_HINT};
use berth_runtime::{drain_nats, LocalNats, NatsServerSpec};
use berth_schemas::Subjects;

use crate::cli::BenchEventlogArgs;
use crate::exit::Outcome;

pub async fn eventlog(args: BenchEventlogArgs) -> Outcome {
    let defaults = BenchOptions::default();
    let opts = BenchOptions {
        pipelined_events: args.events.unwrap_or(defaults.pipelined_events),
        aggregates: args.aggregates.unwrap_or(defaults.aggregates),
        sequential_appends: args.sequential.unwrap_or(defaults.sequential_appends),
        rebuild_events: args.rebuild.unwrap_or(defaults.rebuild_events),
    };
    if opts.pipelined_events == 0 || opts.aggregates == 0 || opts.aggregates > opts.pipelined_events
    {
        return Outcome::Usage(format!(
            "need --events > 0 and 0 < --aggregates <= --events (got {} and {})",
            opts.pipelined_events, opts.aggregates
        ));
    }
    let servers = match args.nats_url.as_deref().map(parse_nats_urls).transpose() {
        Ok(s) => s,
        Err(m) => return Outcome::Usage(format!("--nats-url: {m}")),
    };
    if let Err(e) = berth_runtime::telemetry::init_with(&args.log, LogFormat::Pretty) {
        return Outcome::Usage(format!("--log: {e}"));
    }
    run(args, servers, opts).await.into()
}

async fn run(
    args: BenchEventlogArgs,
    servers: Option<Vec<async_nats::ServerAddr>>,
    opts: BenchOptions,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir for the nats-server store")?;
    let (local, servers) = match servers {
        Some(s) => (None, s),
        None => {
            let binary = match args.nats_server.clone() {
                Some(b) => b,
                None => find_on_path("nats-server")
                    .with_context(|| format!("`nats-server` is not on PATH: {INSTALL_HINT}"))?,
            };
            let spec = NatsServerSpec {
                binary,
                host: "127.0.0.1".to_owned(),
                port: free_port().context("finding a free port")?,
                store_dir: dir.path().join("store"),
                log_file: dir.path().join("nats-server.log"),
            };
            let nats = LocalNats::start(spec).await?;
            let url = parse_nats_urls(nats.url()).map_err(anyhow::Error::msg)?;
            (Some(nats), url)
        }
    };
    let result = bench(servers, opts).await;
    if let Some(nats) = local {
        nats.stop(Duration::from_secs(5)).await.ok();
    }
    result
}

async fn bench(servers: Vec<async_nats::ServerAddr>, opts: BenchOptions) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("berth bench")
        .connect(servers)
        .await
        .context("connecting to nats-server")?;
    println!(
        "nats-server {}: {} pipelined events over {} aggregates, {} sequential appends, {} events to rebuild",
        client.server_info().version,
        opts.pipelined_events,
        opts.aggregates,
        opts.sequential_appends,
        opts.rebuild_events
    );
    // A prefix of its own: the bench may run against a server berth uses.
    let subjects = Subjects::new("berthbench").map_err(anyhow::Error::msg)?;
    let report = berth_eventlog::bench::eventlog(client.clone(), subjects, opts)
        .await
        .context("running the event log benchmark")?;
    println!("{report}");
    drain_nats(&client, Duration::from_secs(5)).await;
    Ok(())
}

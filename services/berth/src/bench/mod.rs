//! `berth bench eventlog`: measures the event store against a nats-server
//! started just for the run (fresh store dir, free port), so numbers from
//! different server builds compare: `--nats-server /usr/sbin/nats-server`
//! (Debian 2.9.10) vs the 2.15.1 on PATH. `--nats-url` uses a running one.
//! `--sync-interval always,default` runs the whole bench once per fsync
//! policy, each on a fresh server, so their cost compares within one run.
//! The measurement itself is [`eventlog`].

pub mod dashboard;
mod eventlog;
pub mod scale;

use std::time::Duration;

use anyhow::Context;
use berth_runtime::config::{parse_nats_urls, LogFormat};
use berth_runtime::local_nats::{find_on_path, free_port, INSTALL_HINT};
use berth_runtime::{drain_nats, LocalNats, NatsServerSpec, SyncInterval};
use berth_schemas::Subjects;

use crate::cli::BenchEventlogArgs;
use crate::exit::Outcome;
use eventlog::BenchOptions;

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
    let syncs = match parse_syncs(&args.sync_interval) {
        Ok(s) => s,
        Err(m) => return Outcome::Usage(format!("--sync-interval: {m}")),
    };
    if let Err(e) = berth_runtime::telemetry::init_with(&args.log, LogFormat::Pretty) {
        return Outcome::Usage(format!("--log: {e}"));
    }
    let result = match servers {
        Some(servers) => bench(servers, opts).await,
        None => run_each(args, &syncs, opts).await,
    };
    result.into()
}

/// `always`, an interval or `default` (`None`: the server's own), comma separated.
fn parse_syncs(list: &str) -> Result<Vec<Option<SyncInterval>>, String> {
    list.split(',')
        .map(str::trim)
        .map(|s| match s {
            "default" => Ok(None),
            s => SyncInterval::parse(s).map(Some),
        })
        .collect()
}

/// One bench per fsync policy, each on a server of its own.
async fn run_each(
    args: BenchEventlogArgs,
    syncs: &[Option<SyncInterval>],
    opts: BenchOptions,
) -> anyhow::Result<()> {
    let binary = match args.nats_server.clone() {
        Some(b) => b,
        None => find_on_path("nats-server")
            .with_context(|| format!("`nats-server` is not on PATH: {INSTALL_HINT}"))?,
    };
    for sync in syncs {
        let label = sync.map_or("default (the server's own)".to_owned(), |s| s.to_string());
        println!("== sync_interval: {label}");
        let dir = tempfile::tempdir().context("creating a temp dir for the nats-server store")?;
        let spec = NatsServerSpec {
            binary: binary.clone(),
            host: "127.0.0.1".to_owned(),
            port: free_port().context("finding a free port")?,
            store_dir: dir.path().join("store"),
            log_file: dir.path().join("nats-server.log"),
            config_file: dir.path().join("nats-server.conf"),
            sync: *sync,
            // A throwaway server on loopback for this run only.
            authorization: None,
        };
        let nats = LocalNats::start(spec).await?;
        let url = parse_nats_urls(nats.url()).map_err(anyhow::Error::msg)?;
        let result = bench(url, opts.clone()).await;
        nats.stop(Duration::from_secs(5)).await.ok();
        result?;
    }
    Ok(())
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
    let report = eventlog::run(client.clone(), subjects, opts)
        .await
        .context("running the event log benchmark")?;
    println!("{report}");
    drain_nats(&client, Duration::from_secs(5)).await;
    Ok(())
}

//! `berth bench scale`: berth with a long history. On a nats-server of its
//! own, it starts `berth up` once (stream, installation key, first owner),
//! stops it, writes a history of many services and about a million events
//! for that owner ([`seed`]), starts `berth up` on it (the first start
//! after the history was written, which also runs a hook on every
//! service the bench aims at), stops it, and then measures a restart:
//!
//! - time from spawning `berth up` to the API answering a listing;
//! - resident memory of the whole process after it;
//! - `GET /v1/services?limit=100` latency, paging through the listing;
//! - deploy hook latency on a service with a long deploy history against
//!   one with a single deploy, the first (cold) call of each apart.

pub(crate) mod seed;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_runtime::local_nats::{find_on_path, free_port, INSTALL_HINT};
use berth_runtime::secrets::{Secret, SecretKey};
use berth_runtime::{LocalNats, NatsServerSpec};
use berth_schemas::ids::{OwnerId, ServiceId};
use hdrhistogram::Histogram;
use tokio::process::{Child, Command};

use crate::cli::BenchScaleArgs;
use crate::exit::Outcome;

pub async fn scale(args: BenchScaleArgs) -> Outcome {
    if let Err(e) =
        berth_runtime::telemetry::init_with(&args.log, berth_runtime::config::LogFormat::Pretty)
    {
        return Outcome::Usage(format!("--log: {e}"));
    }
    let plan = seed::Plan {
        services: args.services,
        events: args.events,
        big_deploys: args.big_deploys,
    };
    if plan.services < 2 || plan.big_deploys == 0 {
        return Outcome::Usage("need --services >= 2 and --big-deploys >= 1".to_owned());
    }
    run(args, plan).await.into()
}

/// A `berth up` the bench started, and where it answers.
pub(crate) struct Up {
    pub(crate) child: Child,
    pub(crate) api: String,
}

impl Up {
    /// Spawns `berth up` on `nats` with its data in `data`.
    pub(crate) fn spawn(data: &Path, nats: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the berth binary")?;
        let api = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(exe)
            .arg("up")
            .env("BERTH_DATA_DIR", data)
            .env("BERTH_NATS_URL", nats)
            .env("BERTH_API_ADDR", &api)
            .env("BERTH_ROUTER_ADDR", format!("127.0.0.1:{}", free_port()?))
            .env("BERTH_HTTP_ADDR", format!("127.0.0.1:{}", free_port()?))
            .env("BERTH_SHUTDOWN_GRACE_SECS", "10")
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting berth up")?;
        Ok(Up {
            child,
            api: format!("http://{api}"),
        })
    }

    /// SIGTERM, then waits for it to exit.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY-free: a signal to our own child.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("berth up did not stop within 60 s")?
            .context("waiting for berth up")?;
        Ok(())
    }

    /// Resident and peak memory of the process, in MiB.
    pub(crate) fn memory(&self) -> Option<(f64, f64)> {
        memory_of(self.child.id()?)
    }

    /// Samples the resident memory every 20 ms; the highest seen since the
    /// last `take` is read with it. With `trace`, each move of 16 MiB or
    /// more is printed to stderr with the time.
    fn sampler(&self, trace: bool) -> Sampler {
        let max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let pid = self.child.id();
        let m = max.clone();
        let task = tokio::spawn(async move {
            let mut printed = 0.0;
            while let Some((rss, _)) = pid.and_then(memory_of) {
                if trace && (rss - printed).abs() >= 16.0 {
                    eprintln!(
                        "memory {} {rss:.0} MiB",
                        chrono::Utc::now().format("%H:%M:%S%.3f")
                    );
                    printed = rss;
                }
                m.fetch_max(rss as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Sampler { max, task }
    }
}

/// The highest resident memory a process reached while sampled.
struct Sampler {
    max: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// The highest resident MiB since the last call.
    fn take(&self) -> u64 {
        self.max.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resident and peak memory of process `pid`, in MiB.
fn memory_of(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What `berth up` wrote on its first start.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Credentials {
    pub(crate) owner_id: String,
    pub(crate) api_key: String,
}

/// Polls a listing until it answers 200 with at least `min` services.
pub(crate) async fn until_listing(
    http: &reqwest::Client,
    up: &mut Up,
    key: &str,
    min: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Some(status) = up.child.try_wait().context("checking on berth up")? {
            bail!("berth up exited ({status}) before its API answered");
        }
        let answer = http
            .get(format!("{}/v1/services?limit=1", up.api))
            .bearer_auth(key)
            .send()
            .await;
        if let Ok(r) = answer {
            if r.status().is_success() {
                let body = r.bytes().await.unwrap_or_default();
                let items: Vec<serde_json::Value> =
                    serde_json::from_slice(&body).unwrap_or_default();
                if items.len() >= min {
                    return Ok(started.elapsed());
                }
            }
        }
        if started.elapsed() > within {
            bail!("the API did not answer a listing within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// When the consumers of the event log had caught up.
#[derive(Debug)]
pub(crate) struct CaughtUp {
    /// Until every consumer was delivered everything, at once.
    pub(crate) all: Duration,
    /// Each consumer seen behind, with the first poll that found it
    /// delivered everything after its last time behind: slowest first.
    pub(crate) each: Vec<(String, Duration)>,
}

/// Waits until every consumer of the event log was delivered everything
/// (a job still being retried, such as the resolver retrying the
/// unreachable registry of a hook's deploy, is delivered already).
pub(crate) async fn caught_up(url: &str, within: Duration) -> anyhow::Result<CaughtUp> {
    use futures::TryStreamExt;
    let client = async_nats::connect(url).await.context("connecting")?;
    let js = async_nats::jetstream::new(client);
    let subjects = berth_schemas::Subjects::new("berth").map_err(anyhow::Error::msg)?;
    let stream = js
        .get_stream(subjects.events_stream())
        .await
        .context("the event stream")?;
    let started = Instant::now();
    // Consumers behind at the last poll, and when each one that had been
    // behind was first found caught up (again).
    let mut was_behind = std::collections::HashSet::<String>::new();
    let mut caught = std::collections::HashMap::<String, Duration>::new();
    loop {
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .context("listing consumers")?;
        let now = started.elapsed();
        let behind: std::collections::HashSet<String> = infos
            .iter()
            .filter(|c| c.num_pending > 0)
            .map(|c| c.name.clone())
            .collect();
        for name in was_behind.difference(&behind) {
            caught.insert(name.clone(), now);
        }
        for name in &behind {
            caught.remove(name);
        }
        if behind.is_empty() {
            let mut each: Vec<_> = caught.into_iter().collect();
            each.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            return Ok(CaughtUp { all: now, each });
        }
        if now > within {
            bail!(
                "{} consumers of the log still behind after {within:?}",
                behind.len()
            );
        }
        was_behind = behind;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The body of a successful GET of `url` with `key`; `what` names it in
/// errors.
async fn get(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    what: &str,
) -> anyhow::Result<bytes::Bytes> {
    let r = http
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("{what}: request"))?;
    if !r.status().is_success() {
        bail!("{what} answered {}", r.status());
    }
    r.bytes().await.with_context(|| format!("{what}: body"))
}

/// One deploy hook call; its latency.
async fn hook(
    http: &reqwest::Client,
    api: &str,
    (id, key): &(ServiceId, Secret),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let r = http
        .post(format!("{api}/deploy/{id}?key={}", key.expose()))
        .send()
        .await
        .context("calling a deploy hook")?;
    let took = started.elapsed();
    if !r.status().is_success() {
        bail!("deploy hook answered {}", r.status());
    }
    Ok(took)
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new(3).context("histogram")
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn run(args: BenchScaleArgs, plan: seed::Plan) -> anyhow::Result<()> {
    let (nats, dir) = own_nats(args.nats_server.clone()).await?;
    let data: PathBuf = dir.path().join("data");
    let url = nats.url().to_owned();
    let http = crate::client::http::build_http().map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = measure(&args, &plan, &data, &url, &http).await;
    nats.stop(Duration::from_secs(5)).await.ok();
    result
}

/// A nats-server of the bench's own (`binary`, else the one on PATH) on a
/// free port, storing in the temp dir returned with it.
pub(crate) async fn own_nats(
    binary: Option<PathBuf>,
) -> anyhow::Result<(LocalNats, tempfile::TempDir)> {
    let binary = match binary {
        Some(b) => b,
        None => find_on_path("nats-server")
            .with_context(|| format!("`nats-server` is not on PATH: {INSTALL_HINT}"))?,
    };
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let nats = LocalNats::start(NatsServerSpec {
        binary,
        host: "127.0.0.1".to_owned(),
        port: free_port().context("finding a free port")?,
        store_dir: dir.path().join("store"),
        log_file: dir.path().join("nats-server.log"),
        config_file: dir.path().join("nats-server.conf"),
        sync: None,
        // A throwaway server on loopback for this run only.
        authorization: None,
    })
    .await?;
    Ok((nats, dir))
}

/// The first start of `berth up` on `url` with its data in `data` (stream,
/// installation key, first owner), stopped once its API answers; what it
/// wrote to credentials.json.
pub(crate) async fn first_start(
    data: &Path,
    url: &str,
    http: &reqwest::Client,
) -> anyhow::Result<Credentials> {
    let mut up = Up::spawn(data, url)?;
    let creds: Credentials = {
        let path = data.join("credentials.json");
        let started = Instant::now();
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(c) = serde_json::from_slice(&bytes) {
                    break c;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("berth up wrote no {} within 60 s", path.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until_listing(http, &mut up, &creds.api_key, 0, Duration::from_secs(60)).await?;
    up.stop().await?;
    Ok(creds)
}

/// Writes `plan`'s history for the first owner into the log at `url`,
/// hook keys sealed with the installation's key in `data`.
pub(crate) async fn seed_history(
    data: &Path,
    url: &str,
    creds: &Credentials,
    plan: &seed::Plan,
) -> anyhow::Result<seed::Seeded> {
    let owner: OwnerId = creds.owner_id.parse().map_err(anyhow::Error::msg)?;
    let key =
        SecretKey::load_or_create(&data.join("secret.key")).context("the installation key")?;
    let client = async_nats::connect(url).await.context("connecting")?;
    let store = berth_eventlog::EventStore::open(
        client.clone(),
        berth_schemas::Subjects::new("berth").map_err(anyhow::Error::msg)?,
        berth_eventlog::StoreConfig::default(),
    )
    .await?;
    println!(
        "seeding {} services, ~{} events, one service with {} deploys…",
        plan.services, plan.events, plan.big_deploys
    );
    let seeded = seed::seed(&store, &key, &owner, plan).await?;
    let info = store.last_stream_seq().await?;
    println!(
        "seeded {} events in {} commits in {:.1} s (log at sequence {info})",
        seeded.events, seeded.commits, seeded.seconds
    );
    drop(store);
    berth_runtime::drain_nats(&client, Duration::from_secs(5)).await;
    Ok(seeded)
}

async fn measure(
    args: &BenchScaleArgs,
    plan: &seed::Plan,
    data: &Path,
    url: &str,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    // First start: the stream, the installation key, the first owner.
    let creds = first_start(data, url, http).await?;
    let seeded = seed_history(data, url, &creds, plan).await?;

    // The first start on that history: everything read once; a hook on
    // each of the two services, so they have been written to by berth.
    let mut up = Up::spawn(data, url)?;
    let first = until_listing(http, &mut up, &creds.api_key, 1, Duration::from_secs(1800)).await?;
    println!(
        "first start after the seed: API answering in {:.2} s",
        first.as_secs_f64()
    );
    let big_cold = hook(http, &up.api, &seeded.big).await?;
    hook(http, &up.api, &seeded.fresh).await?;
    println!(
        "first hook on the big service ever: {:.1} ms",
        big_cold.as_secs_f64() * 1000.0
    );
    // A restart is measured on a berth that had caught up: every consumer
    // of the log through the history, then room for the read models'
    // periodic snapshots.
    let caught = caught_up(url, Duration::from_secs(1800)).await?;
    println!(
        "every consumer of the log caught up {:.1} s after that",
        caught.all.as_secs_f64()
    );
    for (name, at) in caught.each.iter().take(5) {
        println!(
            "  consumer {name}: caught up after {:.1} s",
            at.as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    up.stop().await?;

    // The measured restart.
    let mut up = Up::spawn(data, url)?;
    let sampler = up.sampler(args.memory_trace);
    let answering =
        until_listing(http, &mut up, &creds.api_key, 1, Duration::from_secs(600)).await?;
    let after_start = up.memory();
    let peak_start = sampler.take();
    let mut list = histogram()?;
    let mut cursor: Option<String> = None;
    for _ in 0..args.list_requests {
        // Cursors are service ids: nothing to escape.
        let query = match &cursor {
            Some(c) => format!("limit=100&cursor={c}"),
            None => "limit=100".to_owned(),
        };
        let started = Instant::now();
        let url = format!("{}/v1/services?{query}", up.api);
        let body = get(http, &url, &creds.api_key, "a listing").await?;
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&body).context("a listing's body")?;
        list.record(started.elapsed().as_micros() as u64)?;
        // Page through the first 20 pages, then start over.
        cursor = items
            .last()
            .and_then(|i| i["cursor"].as_str())
            .map(str::to_owned)
            .filter(|_| list.len() % 20 != 0);
    }
    let peak_list = sampler.take();
    let big_first = hook(http, &up.api, &seeded.big).await?;
    let fresh_first = hook(http, &up.api, &seeded.fresh).await?;
    let (mut big, mut fresh) = (histogram()?, histogram()?);
    for _ in 0..args.hooks {
        big.record(hook(http, &up.api, &seeded.big).await?.as_micros() as u64)?;
        fresh.record(hook(http, &up.api, &seeded.fresh).await?.as_micros() as u64)?;
    }
    // A page of the big service's timeline: its entries' details read
    // from the log by sequence.
    let mut timeline = histogram()?;
    for _ in 0..args.list_requests.min(200) {
        let started = Instant::now();
        let url = format!(
            "{}/v1/services/{}/events?limit=100&allTypes=true",
            up.api, seeded.big.0
        );
        get(http, &url, &creds.api_key, "a timeline page").await?;
        timeline.record(started.elapsed().as_micros() as u64)?;
    }
    let after_all = up.memory();
    let peak_hooks = sampler.take();
    // And what it settles at once the work the hooks started is done.
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let settled = up.memory();
    let peak_settle = sampler.take();
    drop(sampler);
    up.stop().await?;

    let mem = |m: Option<(f64, f64)>| {
        m.map_or("unknown".to_owned(), |(rss, hwm)| {
            format!("{rss:.0} MiB resident (peak {hwm:.0} MiB)")
        })
    };
    println!("restart:");
    println!(
        "  API answering a listing  {:>8.2} s after spawning berth up",
        answering.as_secs_f64()
    );
    println!(
        "  memory after start       {} (highest sampled while starting {peak_start} MiB)",
        mem(after_start)
    );
    println!(
        "  memory after the runs    {} (highest sampled: listing {peak_list} MiB, hooks {peak_hooks} MiB)",
        mem(after_all)
    );
    println!(
        "  memory {} s later        {} (highest sampled {peak_settle} MiB)",
        args.settle_secs,
        mem(settled)
    );
    println!(
        "  GET /v1/services?limit=100  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} requests)",
        ms(&list, 0.5),
        ms(&list, 0.99),
        list.max() as f64 / 1000.0,
        list.len()
    );
    println!(
        "  GET /v1/services/{{id}}/events?limit=100 (the {}-deploy service)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} requests)",
        plan.big_deploys,
        ms(&timeline, 0.5),
        ms(&timeline, 0.99),
        timeline.max() as f64 / 1000.0,
        timeline.len()
    );
    println!(
        "  hook, {} deploys      first {:.1} ms  p50 {:.2} ms  p99 {:.2} ms",
        plan.big_deploys,
        big_first.as_secs_f64() * 1000.0,
        ms(&big, 0.5),
        ms(&big, 0.99)
    );
    println!(
        "  hook, 1 deploy            first {:.1} ms  p50 {:.2} ms  p99 {:.2} ms",
        fresh_first.as_secs_f64() * 1000.0,
        ms(&fresh, 0.5),
        ms(&fresh, 0.99)
    );
    Ok(())
}

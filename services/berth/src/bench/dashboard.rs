//! `berth bench dashboard`: the dashboard under load. On a nats-server of
//! its own, `berth up` starts once (first owner), stops, gets a history of
//! `--services` services written into the log (the scale bench's seed:
//! cron jobs on a yearly schedule, so nothing runs), and starts again.
//! Then, signed in like a browser (sign-in form, session cookie):
//!
//! - the services page (`/`) with that many services: the first page,
//!   pages of 100 followed through the listing, and a filtered page;
//! - `--subscribers` SSE streams on one service while `--deploys` deploys
//!   are requested by its hook and canceled through the API, one after the
//!   other: every subscriber must receive every commit of the service
//!   since it connected, in order, none lost and none twice — and every
//!   tenth drops its connection halfway and resumes with `Last-Event-ID`;
//!   the delay from a hook call to each subscriber holding the commit of
//!   the deploy it made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_schemas::AggregateId;
use futures::future::join_all;
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use tokio::sync::watch;

use super::scale::{self, seed, Up};
use crate::cli::BenchDashboardArgs;
use crate::exit::Outcome;

pub async fn dashboard(args: BenchDashboardArgs) -> Outcome {
    if let Err(e) =
        berth_runtime::telemetry::init_with(&args.log, berth_runtime::config::LogFormat::Pretty)
    {
        return Outcome::Usage(format!("--log: {e}"));
    }
    if args.services < 2 || args.subscribers == 0 || args.deploys == 0 {
        return Outcome::Usage(
            "need --services >= 2, --subscribers >= 1 and --deploys >= 1".to_owned(),
        );
    }
    run(args).await.into()
}

/// A client that follows no redirect (the sign-in answers 303 with the
/// cookie) and puts no limit on a response's length (streams).
fn client() -> anyhow::Result<reqwest::Client> {
    crate::client::http::http_builder()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(1024)
        .build()
        .context("an HTTP client")
}

/// The value of cookie `name` an answer sets.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|v| v.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Signs in through the form as a browser does; the session cookie.
async fn sign_in(http: &reqwest::Client, api: &str, key: &str) -> anyhow::Result<String> {
    let page = http.get(format!("{api}/login")).send().await?;
    let login = set_cookie(&page, "berth_login").context("the sign-in form's cookie")?;
    let html = page.text().await?;
    let marker = "name=\"_csrf\" value=\"";
    let at = html.find(marker).context("the sign-in form's token")? + marker.len();
    let csrf = &html[at..at + html[at..].find('"').unwrap_or(0)];
    let enc = crate::client::http::enc;
    let form = format!("_csrf={}&key={}", enc(csrf), enc(key));
    let r = http
        .post(format!("{api}/login"))
        .header(COOKIE, format!("berth_login={login}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let session = set_cookie(&r, "berth_session")
        .with_context(|| format!("signing in answered {}", r.status()))?;
    Ok(format!("berth_session={session}"))
}

/// One GET of a page as the session; its latency and body.
async fn page(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
) -> anyhow::Result<(Duration, String)> {
    let t0 = Instant::now();
    let r = http.get(url).header(COOKIE, cookie).send().await?;
    if !r.status().is_success() {
        bail!("{url} answered {}", r.status());
    }
    let body = r.text().await?;
    Ok((t0.elapsed(), body))
}

/// The cursor of a list page's "Next page" link.
fn next_cursor(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let link = &html[..at];
    let c = link.rfind("cursor=")? + "cursor=".len();
    Some(
        link[c..]
            .chars()
            .take_while(|ch| *ch != '"' && *ch != '&')
            .collect(),
    )
}

/// What one subscriber received.
#[derive(Debug, Default)]
struct Received {
    ids: Vec<u64>,
    /// When the commit creating each deploy arrived.
    created: Vec<(String, Instant)>,
    reconnects: u32,
}

/// Reads the frames in `buf`, adding their commits to `got`.
fn frames(buf: &mut String, got: &mut Received) {
    while let Some(end) = buf.find("\n\n") {
        let frame: String = buf.drain(..end + 2).collect();
        let mut id = None;
        let mut commit = false;
        let mut data = "";
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse::<u64>().ok();
            } else if line.trim() == "event: commit" || line.trim() == "event:commit" {
                commit = true;
            } else if let Some(v) = line.strip_prefix("data:") {
                data = v.trim();
            }
        }
        let (Some(id), true) = (id, commit) else {
            continue;
        };
        got.ids.push(id);
        let now = Instant::now();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
            for e in v["events"].as_array().into_iter().flatten() {
                if e["type"] == "deploy_created" {
                    if let Some(d) = e["deployId"].as_str() {
                        got.created.push((d.to_owned(), now));
                    }
                }
            }
        }
    }
}

/// One browser's stream of `url`: follows it until it has the commit at
/// `until` (learnt once the run is over); with `drop_at`, leaves after that
/// many commits and comes back with `Last-Event-ID`.
async fn subscribe(
    http: reqwest::Client,
    url: String,
    cookie: String,
    drop_at: Option<usize>,
    mut until: watch::Receiver<u64>,
    ready: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<Received> {
    let mut got = Received::default();
    let mut dropped = false;
    loop {
        let mut req = http.get(&url).header(COOKIE, &cookie);
        if let Some(last) = got.ids.last() {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let mut resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("the stream answered {}", resp.status());
        }
        if got.reconnects == 0 && !dropped {
            ready.add_permits(1);
        }
        let mut buf = String::new();
        loop {
            let target = *until.borrow();
            if target > 0 && got.ids.last().is_some_and(|l| *l >= target) {
                return Ok(got);
            }
            if drop_at.is_some_and(|n| !dropped && got.ids.len() >= n) {
                dropped = true;
                break;
            }
            tokio::select! {
                chunk = resp.chunk() => match chunk? {
                    Some(c) => {
                        buf.push_str(&String::from_utf8_lossy(&c));
                        frames(&mut buf, &mut got);
                    }
                    None => break,
                },
                _ = until.changed() => {}
            }
        }
        got.reconnects += 1;
    }
}

/// One deploy hook call; the deploy it made.
async fn hook(http: &reqwest::Client, api: &str, seeded: &seed::Seeded) -> anyhow::Result<String> {
    let (id, key) = &seeded.fresh;
    let r = http
        .post(format!("{api}/deploy/{id}?key={}", key.expose()))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("deploy hook answered {}", r.status());
    }
    let v: serde_json::Value = serde_json::from_str(&r.text().await?)?;
    v["deploy"]["id"]
        .as_str()
        .map(str::to_owned)
        .context("the hook's deploy id")
}

async fn run(args: BenchDashboardArgs) -> anyhow::Result<()> {
    let (nats, dir) = scale::own_nats(args.nats_server.clone()).await?;
    let data = dir.path().join("data");
    let url = nats.url().to_owned();
    let result = measure(&args, &data, &url).await;
    nats.stop(Duration::from_secs(5)).await.ok();
    result
}

async fn measure(
    args: &BenchDashboardArgs,
    data: &std::path::Path,
    url: &str,
) -> anyhow::Result<()> {
    let http = client()?;
    let creds = scale::first_start(data, url, &http).await?;
    let plan = seed::Plan {
        services: args.services,
        events: args.services * 12,
        big_deploys: 2,
    };
    let seeded = scale::seed_history(data, url, &creds, &plan).await?;
    let mut up = Up::spawn(data, url)?;
    let api = up.api.clone();
    scale::until_listing(&http, &mut up, &creds.api_key, 1, Duration::from_secs(300)).await?;
    scale::caught_up(url, Duration::from_secs(600)).await?;
    let result = measured(args, &http, &api, &creds, &seeded, url).await;
    up.stop().await?;
    result
}

async fn measured(
    args: &BenchDashboardArgs,
    http: &reqwest::Client,
    api: &str,
    creds: &scale::Credentials,
    seeded: &seed::Seeded,
    url: &str,
) -> anyhow::Result<()> {
    let cookie = sign_in(http, api, &creds.api_key).await?;

    // The services page.
    let mut first = scale::histogram()?;
    for _ in 0..args.page_requests {
        let (took, html) = page(http, &format!("{api}/"), &cookie).await?;
        if !html.contains("<h1>Services</h1>") {
            bail!("the services page did not render");
        }
        first.record(took.as_micros() as u64)?;
    }
    let mut paged = scale::histogram()?;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    for _ in 0..args.page_requests {
        let url = match &cursor {
            Some(c) => format!("{api}/?limit=100&cursor={c}"),
            None => format!("{api}/?limit=100"),
        };
        let (took, html) = page(http, &url, &cookie).await?;
        paged.record(took.as_micros() as u64)?;
        cursor = next_cursor(&html);
        pages += usize::from(cursor.is_none());
    }
    let mut filtered = scale::histogram()?;
    for _ in 0..args.page_requests {
        let url = format!("{api}/?type=cron_job&suspended=not_suspended&name=svc-00042");
        let (took, _) = page(http, &url, &cookie).await?;
        filtered.record(took.as_micros() as u64)?;
    }
    println!("services page, {} services:", args.services);
    for (what, h) in [
        ("  GET /              (first 50)", &first),
        ("  GET /?limit=100    (paging)  ", &paged),
        ("  GET /?name=…&type=…          ", &filtered),
    ] {
        println!(
            "{what}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} requests)",
            scale::ms(h, 0.5),
            scale::ms(h, 0.99),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
    println!("  (paged through the whole listing {pages} times)");

    // Subscribers on one service.
    let service = seeded.fresh.0.clone();
    let store = {
        let client = async_nats::connect(url).await.context("connecting")?;
        berth_eventlog::EventStore::open(
            client,
            berth_schemas::Subjects::new("berth").map_err(anyhow::Error::msg)?,
            berth_eventlog::StoreConfig::default(),
        )
        .await?
    };
    let start = store.last_stream_seq().await?;
    let stream = format!("{api}/services/{service}/live?after={start}");
    let (done_tx, done_rx) = watch::channel(0u64);
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let connecting = Instant::now();
    let subscribers: Vec<_> = (0..args.subscribers)
        .map(|i| {
            let drop_at = (i % 10 == 0).then_some(args.deploys as usize);
            tokio::spawn(subscribe(
                http.clone(),
                stream.clone(),
                cookie.clone(),
                drop_at,
                done_rx.clone(),
                ready.clone(),
            ))
        })
        .collect();
    let all = u32::try_from(args.subscribers).unwrap_or(u32::MAX);
    tokio::time::timeout(Duration::from_secs(60), ready.acquire_many(all))
        .await
        .context("subscribers not connected within 60 s")?
        .context("subscribers")?
        .forget();
    println!(
        "{} subscribers connected in {:.2} s",
        args.subscribers,
        connecting.elapsed().as_secs_f64()
    );
    let mut sent = Vec::new();
    let t0 = Instant::now();
    for _ in 0..args.deploys {
        let at = Instant::now();
        let dep = hook(http, api, seeded).await?;
        sent.push((dep.clone(), at));
        let r = http
            .post(format!("{api}/v1/services/{service}/deploys/{dep}/cancel"))
            .bearer_auth(&creds.api_key)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("cancel answered {}", r.status());
        }
    }
    let acted = t0.elapsed();
    // What the log holds for the service once the requests are done (a
    // worker may still add to it later; the target is what was there).
    let expected: Vec<u64> = store
        .commits_between(
            &AggregateId::Service(service.clone()),
            start,
            u64::MAX,
            1_000_000,
        )
        .await?
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    let target = expected
        .last()
        .copied()
        .context("no commit on the service")?;
    done_tx.send_replace(target);
    let known = Instant::now();
    let results = tokio::time::timeout(Duration::from_secs(120), join_all(subscribers))
        .await
        .context("subscribers did not all reach the last commit within 120 s")?;
    let finished = known.elapsed();
    let mut ok = 0;
    let mut bad = Vec::new();
    let mut events = 0usize;
    let mut reconnects = 0;
    let mut latency = scale::histogram()?;
    for (i, r) in results.into_iter().enumerate() {
        let got = r.context("a subscriber task")??;
        events += got.ids.len();
        reconnects += got.reconnects;
        let mine: Vec<u64> = got.ids.iter().copied().filter(|s| *s <= target).collect();
        if mine == expected {
            ok += 1;
        } else {
            bad.push(format!(
                "subscriber {i}: {} commits, {} expected (first difference at {:?})",
                mine.len(),
                expected.len(),
                mine.iter().zip(&expected).position(|(a, b)| a != b)
            ));
        }
        for (dep, at) in &got.created {
            if let Some((_, sent_at)) = sent.iter().find(|(d, _)| d == dep) {
                latency.record(at.saturating_duration_since(*sent_at).as_micros() as u64)?;
            }
        }
    }
    println!(
        "{} subscribers on one service, {} deploys requested and canceled in {:.2} s ({} commits in the log):",
        args.subscribers,
        args.deploys,
        acted.as_secs_f64(),
        expected.len()
    );
    println!(
        "  every commit, in order, none lost or repeated: {ok} of {} subscribers ({events} messages, {reconnects} resumed with Last-Event-ID)",
        args.subscribers
    );
    println!(
        "  hook call → its deploy's commit at a subscriber  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} deliveries)",
        scale::ms(&latency, 0.5),
        scale::ms(&latency, 0.99),
        latency.max() as f64 / 1000.0,
        latency.len()
    );
    println!(
        "  every subscriber had the last commit {:.0} ms after it was known",
        finished.as_secs_f64() * 1000.0
    );
    if !bad.is_empty() {
        bail!("subscribers missed commits:\n{}", bad.join("\n"));
    }
    Ok(())
}

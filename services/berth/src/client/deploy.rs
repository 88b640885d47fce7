//! Following a deploy: poll the deploy and the service's timeline, print
//! each status change and each new timeline event as it appears, and end
//! with the deploy's verdict (an error unless it went live).
//!
//! Pull progress (bytes per node) is not in the API; when the
//! installation's NATS server answers, the service's own event subject is
//! watched for `image_pull_progressed`/`image_pulled` (a JetStream append
//! is an ordinary publish, so a core subscription sees it). Without NATS
//! the deploy is still followed, just without byte counts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use berth_schemas::ids::ServiceId;
use berth_schemas::{AggregateId, Commit, Event, Subjects};
use futures::StreamExt;
use serde_json::Value;

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError, NatsOpts};

/// Columns of a deploy table.
pub const HEADER: &[&str] = &[
    "DEPLOY", "STATUS", "TRIGGER", "IMAGE", "CREATED", "FINISHED",
];

/// What started a deploy: Render's trigger, or the service's creation
/// for its first deploy.
fn trigger(d: &Value) -> String {
    if d.get("firstDeploy").and_then(Value::as_bool) == Some(true) {
        "service_created".to_owned()
    } else {
        s(d, "trigger")
    }
}

/// One deploy as a table row.
pub fn row(d: &Value) -> Vec<String> {
    vec![
        s(d, "id"),
        s(d, "status"),
        trigger(d),
        s(d, "image/ref"),
        output::time(d, "createdAt"),
        output::time(d, "finishedAt"),
    ]
}

/// A progress line: stdout, or stderr with `--json` (stdout is then kept
/// for the one JSON document).
fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Statuses a deploy never leaves.
fn finished(status: &str) -> bool {
    matches!(
        status,
        "live" | "deactivated" | "update_failed" | "canceled" | "pre_deploy_failed"
    )
}

/// Follows deploy `dep` of service `id` until it ends or `timeout_secs`
/// pass; the deploy as it ended if it went live. Progress goes to stdout,
/// or to stderr with `--json` (the caller prints the JSON).
pub async fn follow(
    api: &Api,
    nats: &NatsOpts,
    id: &str,
    dep: &str,
    timeout_secs: u64,
) -> Result<Value, ClientError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    let path = format!("/v1/services/{}/deploys/{}", enc(id), enc(dep));
    let mut last_status = String::new();
    let mut last_retry = String::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut since: Option<String> = None;
    let mut pulls = Pulls::watch(api, nats, id, dep).await;
    loop {
        let d = api.get(&path).await?;
        let status = s(&d, "status");
        if since.is_none() {
            since = d
                .get("createdAt")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        if status != last_status {
            let line = format!("[{:>5.1}s] {dep} {status}", started.elapsed().as_secs_f64());
            progress(api.json(), &line);
            last_status = status.clone();
        }
        // A registry being retried shows on the deploy itself.
        if let Some(r) = d.get("retrying").filter(|r| r.is_object()) {
            let attempt = s(r, "attempt");
            if attempt != last_retry {
                let line = format!(
                    "  registry failed (attempt {attempt}), retrying at {}: {}",
                    output::time(r, "retryAt"),
                    s(r, "message")
                );
                progress(api.json(), &line);
                last_retry = attempt;
            }
        }
        // Timeline events since the deploy was created, oldest first.
        if let Some(t) = &since {
            let evs = api
                .get(&format!(
                    "/v1/services/{}/events?limit=100&allTypes=true&startTime={}",
                    enc(id),
                    enc(t)
                ))
                .await
                .unwrap_or(Value::Null);
            let mut new: Vec<&Value> = evs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("event"))
                .filter(|e| seen.insert(s(e, "id")))
                .collect();
            new.reverse();
            for e in new {
                let line = format!(
                    "  event {} {}",
                    s(e, "type"),
                    output::details(e.get("details").unwrap_or(&Value::Null))
                );
                progress(api.json(), &line);
            }
        }
        if finished(&status) {
            return match status.as_str() {
                "live" => Ok(d),
                _ => {
                    let reason = d
                        .get("reason")
                        .and_then(Value::as_str)
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    let hint = if status == "deactivated" {
                        " (a newer deploy replaced it)"
                    } else {
                        ""
                    };
                    Err(ClientError::Failed(format!(
                        "deploy {dep} ended {status}{reason}{hint}; see `berth service events {id}`"
                    )))
                }
            };
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Failed(format!(
                "deploy {dep} still {status} after {timeout_secs} s; it goes on without us \
                 (`berth service show {id}`)"
            )));
        }
        pulls
            .for_a_while(Duration::from_millis(500), api.json())
            .await;
    }
}

/// Pull progress of one deploy, from the service's event subject.
struct Pulls {
    sub: Option<async_nats::Subscriber>,
    dep: String,
    /// Last percentage printed per node (printing every 10 %).
    shown: HashMap<String, u64>,
}

impl Pulls {
    async fn watch(api: &Api, nats: &NatsOpts, id: &str, dep: &str) -> Self {
        let sub = async {
            let service: ServiceId = id.parse().ok()?;
            let subjects = Subjects::new(&nats.subject_prefix).ok()?;
            let subject = subjects.aggregate(&AggregateId::Service(service));
            let client = nats.connect(api.data_dir()).await.ok()?;
            client.subscribe(subject).await.ok()
        }
        .await;
        Self {
            sub,
            dep: dep.to_owned(),
            shown: HashMap::new(),
        }
    }

    /// Prints pull progress arriving within `wait` (just sleeps without NATS).
    async fn for_a_while(&mut self, wait: Duration, json: bool) {
        let Some(sub) = self.sub.as_mut() else {
            tokio::time::sleep(wait).await;
            return;
        };
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await {
            let Ok(commit) = Commit::decode(&msg.payload) else {
                continue;
            };
            for env in commit.events {
                let line = match &env.event {
                    // A total of 0 means nothing to fetch (all blobs already there).
                    Event::ImagePullProgressed(p)
                        if p.deploy.to_string() == self.dep && p.bytes_total > 0 =>
                    {
                        let pct = (p.bytes_done * 100)
                            .checked_div(p.bytes_total)
                            .unwrap_or(0)
                            .min(100);
                        let node = p.node.to_string();
                        let last = self.shown.get(&node).copied();
                        if last.is_some_and(|l| pct < l + 10 && pct < 100) {
                            continue;
                        }
                        self.shown.insert(node.clone(), pct);
                        format!(
                            "  pulling on {node}: {} / {} ({pct}%)",
                            mb(p.bytes_done),
                            mb(p.bytes_total)
                        )
                    }
                    Event::ImagePulled(p) if p.deploy.to_string() == self.dep => {
                        format!("  pulled on {}: {}", p.node, p.digest)
                    }
                    _ => continue,
                };
                progress(json, &line);
            }
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

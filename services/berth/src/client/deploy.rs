//! Following a deploy: poll the deploy and the service's timeline, print
//! each status change and each new timeline event as it appears, and end
//! with the deploy's verdict (an error unless it went live).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::enc;
use super::output::{self, s};
use super::{Api, ClientError};

/// Columns of a deploy table.
pub const HEADER: &[&str] = &[
    "DEPLOY", "STATUS", "TRIGGER", "IMAGE", "CREATED", "FINISHED",
];

/// One deploy as a table row.
pub fn row(d: &Value) -> Vec<String> {
    vec![
        s(d, "id"),
        s(d, "status"),
        s(d, "trigger"),
        s(d, "image/ref"),
        output::time(d, "createdAt"),
        output::time(d, "finishedAt"),
    ]
}

/// Statuses a deploy never leaves.
fn finished(status: &str) -> bool {
    matches!(
        status,
        "live" | "deactivated" | "update_failed" | "canceled" | "pre_deploy_failed"
    )
}

/// Follows deploy `dep` of service `id` until it ends or `timeout_secs` pass.
pub async fn follow(api: &Api, id: &str, dep: &str, timeout_secs: u64) -> Result<(), ClientError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    let path = format!("/v1/services/{}/deploys/{}", enc(id), enc(dep));
    let mut last_status = String::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut since: Option<String> = None;
    loop {
        let d = api.get(&path).await?;
        let status = s(&d, "status");
        if since.is_none() {
            since = d
                .get("createdAt")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        // Timeline events since the deploy was created, oldest first.
        if let Some(t) = &since {
            let evs = api
                .get(&format!(
                    "/v1/services/{}/events?limit=100&startTime={}",
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
                if api.json {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
        }
        if status != last_status {
            let line = format!("[{:>5.1}s] {dep} {status}", started.elapsed().as_secs_f64());
            if api.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            last_status = status.clone();
        }
        if finished(&status) {
            if api.json {
                output::json(&d);
            }
            return match status.as_str() {
                "live" => Ok(()),
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

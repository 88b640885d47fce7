//! `berth service logs`: a service's kept log lines, read through the API
//! (`GET /v1/logs`, so only your own services' lines), then with `-f` the
//! new ones as they are kept.
//!
//! Following polls the API once a second from just after the last line
//! shown (its `nextStartTime`): plain requests that any proxy passes, no
//! connection held open between them, and nothing lost or repeated across
//! them because the API never splits lines of one microsecond between
//! pages.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use serde_json::Value;

use super::http::enc;
use super::{Api, ClientError};

/// Lines shown when neither `--tail` nor `--since` says.
const DEFAULT_TAIL: usize = 100;

/// The API's largest page.
const PAGE: usize = 100;

/// How often `-f` asks for new lines.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service id or name.
    pub service: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines kept since this time: a duration back from now (`90s`,
    /// `15m`, `2h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only the last N lines [default: 100, or every line with --since].
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only this instance (`ins-…`).
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Only lines containing TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
}

/// `--since`: a duration back from `now`, or an RFC 3339 time.
fn since(given: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ClientError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(given) {
        return Ok(t.with_timezone(&Utc));
    }
    let usage = || {
        ClientError::Usage(format!(
            "--since {given:?}: give a duration such as 90s, 15m, 2h or 7d, or an RFC 3339 time"
        ))
    };
    let split = given
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(usage)?;
    let (n, unit) = given.split_at(split);
    let n: i64 = n.parse().map_err(|_| usage())?;
    let back = match unit {
        "s" => TimeDelta::try_seconds(n),
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        _ => None,
    }
    .ok_or_else(usage)?;
    now.checked_sub_signed(back).ok_or_else(usage)
}

/// The query naming the service and the filters, without window or page.
fn filters(id: &str, args: &LogsArgs) -> String {
    let mut q = format!("resource={}", enc(id));
    if let Some(i) = &args.instance {
        q.push_str(&format!("&instance={}", enc(i)));
    }
    if let Some(t) = &args.grep {
        q.push_str(&format!("&text={}", enc(t)));
    }
    q
}

/// A time as the API reads it.
fn at(t: DateTime<Utc>) -> String {
    enc(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The value of label `name` of a line, `-` without one.
fn label<'a>(line: &'a Value, name: &str) -> &'a str {
    line["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .and_then(|l| l["value"].as_str())
        .unwrap_or("-")
}

/// A line's message for a terminal: control characters (which could move
/// the cursor or recolour the screen) shown escaped; tabs kept.
fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line as printed: the API's object with `--json`, else
/// `time instance level | message`.
fn render(line: &Value, json: bool) -> String {
    if json {
        return line.to_string();
    }
    let time = line["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "{time} {} {:<5} | {}",
        label(line, "instance"),
        label(line, "level"),
        printable(line["message"].as_str().unwrap_or_default())
    )
}

/// Prints `lines`; how many.
fn print(lines: &[Value], json: bool) -> usize {
    for l in lines {
        println!("{}", render(l, json));
    }
    lines.len()
}

/// One page of the API's answer.
struct Page {
    lines: Vec<Value>,
    more: bool,
    next_start: Option<String>,
    next_end: Option<String>,
}

async fn page(api: &Api, query: &str) -> Result<Page, ClientError> {
    let v = api.get(&format!("/v1/logs?{query}")).await?;
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    Ok(Page {
        lines: v["logs"].as_array().cloned().unwrap_or_default(),
        more: v["hasMore"] == true,
        next_start: text("nextStartTime"),
        next_end: text("nextEndTime"),
    })
}

/// The newest `n` lines from `start`, oldest first.
async fn tail(api: &Api, base: &str, start: &str, n: usize) -> Result<Vec<Value>, ClientError> {
    let mut newest_first = Vec::new();
    let mut window = format!("startTime={start}");
    while newest_first.len() < n {
        let limit = (n - newest_first.len()).min(PAGE);
        let p = page(api, &format!("{base}&{window}&limit={limit}")).await?;
        newest_first.extend(p.lines);
        match (p.more, p.next_end) {
            (true, Some(end)) => window = format!("startTime={start}&endTime={}", enc(&end)),
            _ => break,
        }
    }
    newest_first.truncate(n);
    newest_first.reverse();
    Ok(newest_first)
}

/// Prints the lines of `service` `id` as `args` asks; with `-f`, goes on
/// printing new ones until interrupted.
pub async fn run(api: &Api, id: &str, args: LogsArgs) -> Result<(), ClientError> {
    let now = Utc::now();
    let start = match &args.since {
        Some(s) => since(s, now)?,
        None => DateTime::UNIX_EPOCH,
    };
    let base = filters(id, &args);
    let json = api.json();
    // Where following starts: just after the last line shown.
    let mut cursor = at(start);
    let mut shown = 0usize;
    let tail_n = match (args.tail, &args.since) {
        (Some(n), _) => Some(n),
        (None, None) => Some(DEFAULT_TAIL),
        (None, Some(_)) => None,
    };
    match tail_n {
        Some(n) => {
            // With --tail 0 too: the newest line says where following starts.
            let mut lines = tail(api, &base, &at(start), n.max(1)).await?;
            if let Some(t) = lines.last().and_then(|l| l["timestamp"].as_str()) {
                let last = DateTime::parse_from_rfc3339(t).map_err(|e| {
                    ClientError::Failed(format!("the API sent a bad time {t:?}: {e}"))
                })?;
                cursor = at(last.with_timezone(&Utc) + TimeDelta::microseconds(1));
            }
            lines.drain(..lines.len().saturating_sub(n));
            shown += print(&lines, json);
        }
        None => loop {
            let p = page(
                api,
                &format!("{base}&direction=forward&startTime={cursor}&limit={PAGE}"),
            )
            .await?;
            shown += print(&p.lines, json);
            if let Some(next) = p.next_start {
                cursor = enc(&next);
            }
            if !p.more {
                break;
            }
        },
    }
    if !args.follow {
        if shown == 0 && !json {
            eprintln!("no log lines kept for {id} (that match)");
        }
        return Ok(());
    }
    if !json {
        eprintln!("following {id} (Ctrl-C to stop)");
    }
    let follow = async {
        loop {
            let query = format!("{base}&direction=forward&startTime={cursor}&limit={PAGE}");
            match page(api, &query).await {
                Ok(p) => {
                    print(&p.lines, json);
                    if let Some(next) = p.next_start {
                        cursor = enc(&next);
                    }
                    if p.more {
                        continue;
                    }
                }
                // berth restarting: wait for it rather than give up.
                Err(e @ (ClientError::Unreachable(_) | ClientError::Api { status: 503, .. })) => {
                    eprintln!("berth: {e}; retrying");
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        r = follow => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t = |s: &str| since(s, now).map(|t| t.to_rfc3339()).ok();
        assert_eq!(t("90s").as_deref(), Some("2026-11-27T11:58:30+00:00"));
        assert_eq!(t("2h").as_deref(), Some("2026-11-27T10:00:00+00:00"));
        assert_eq!(t("7d").as_deref(), Some("2026-11-20T12:00:00+00:00"));
        assert_eq!(
            t("2026-11-27T08:00:00+01:00").as_deref(),
            Some("2026-11-27T07:00:00+00:00")
        );
        for bad in [
            "",
            "h",
            "5",
            "5w",
            "-5m",
            "yesterday",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(since(bad, now), Err(ClientError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn lines_print_with_their_labels_and_no_terminal_controls() {
        let line = json!({
            "id": "7",
            "message": "a\tb \u{1b}[2Jgone\r",
            "timestamp": "2026-11-27T07:04:29.123456Z",
            "labels": [
                {"name": "resource", "value": "srv-x"},
                {"name": "instance", "value": "ins-y"},
                {"name": "level", "value": "error"},
            ],
        });
        assert_eq!(
            render(&line, false),
            "2026-11-27 07:04:29.123 ins-y error | a\tb \\u{1b}[2Jgone\\r"
        );
        assert_eq!(render(&line, true), line.to_string());
        // berth's line about a deploy has no instance.
        let deploy = json!({
            "id": "8",
            "message": "==> Your service is live",
            "timestamp": "2026-11-27T07:04:30Z",
            "labels": [
                {"name": "resource", "value": "srv-x"},
                {"name": "type", "value": "app"},
                {"name": "level", "value": "info"},
            ],
        });
        assert_eq!(
            render(&deploy, false),
            "2026-11-27 07:04:30.000 - info  | ==> Your service is live"
        );
    }
}

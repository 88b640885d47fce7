//! `berth service logs`: a service's kept log lines, read through the API
//! (`GET /v1/logs`, so only your own services' lines), then with `-f` the
//! new ones as they are kept.
//!
//! Following takes the new lines from the API's live subscription
//! (`GET /v1/logs/subscribe`, a WebSocket opened before the history is
//! read, its lines after the last one shown printed as they come: each
//! line's `id` only grows). Where no WebSocket gets through (a proxy that
//! does not pass them, an API that has none), or once the subscription
//! ends (berth restarting, the client too slow), it polls the API once a
//! second from just after the last line shown (its `nextStartTime`):
//! plain requests, nothing lost or repeated across them because the API
//! never splits lines of one microsecond between pages.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

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
    // Opened before the history is read: no line falls between the two.
    let live = match args.follow {
        true => subscribe(api, &base).await,
        false => None,
    };
    let mut shown = Shown {
        cursor: at(start),
        last_id: 0,
        count: 0,
        json,
    };
    let tail_n = match (args.tail, &args.since) {
        (Some(n), _) => Some(n),
        (None, None) => Some(DEFAULT_TAIL),
        (None, Some(_)) => None,
    };
    match tail_n {
        Some(n) => {
            // With --tail 0 too: the newest line says where following starts.
            let mut lines = tail(api, &base, &at(start), n.max(1)).await?;
            let newest = lines.last().cloned();
            lines.drain(..lines.len().saturating_sub(n));
            for l in &lines {
                shown.print(l)?;
            }
            if let Some(newest) = newest {
                shown.passed(&newest)?;
            }
        }
        None => while shown.forward(api, &base).await? {},
    }
    if !args.follow {
        if shown.count == 0 && !json {
            eprintln!("no log lines kept for {id} (that match)");
        }
        return Ok(());
    }
    let follow = async {
        if let Some(mut socket) = live {
            if !json {
                eprintln!("following {id} live (Ctrl-C to stop)");
            }
            let why = follow_live(&mut socket, &mut shown).await?;
            if !json {
                eprintln!("berth: {why}; following by asking every second");
            }
        } else if !json {
            eprintln!("following {id} (Ctrl-C to stop)");
        }
        follow_polling(api, &base, &mut shown).await
    };
    tokio::select! {
        r = follow => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// What has been shown: where the next page starts, the newest line's id.
struct Shown {
    cursor: String,
    last_id: u64,
    count: usize,
    json: bool,
}

impl Shown {
    /// Prints `line` unless it was shown already (a live line the history
    /// had).
    fn print(&mut self, line: &Value) -> Result<(), ClientError> {
        let id = id_of(line);
        if id != 0 && id <= self.last_id {
            return Ok(());
        }
        println!("{}", render(line, self.json));
        self.count += 1;
        self.passed(line)
    }

    /// Prints the next page of lines after those shown; whether more
    /// are kept after it.
    async fn forward(&mut self, api: &Api, base: &str) -> Result<bool, ClientError> {
        let query = format!(
            "{base}&direction=forward&startTime={}&limit={PAGE}",
            self.cursor
        );
        let p = page(api, &query).await?;
        for l in &p.lines {
            self.print(l)?;
        }
        if let Some(next) = p.next_start {
            self.cursor = enc(&next);
        }
        Ok(p.more)
    }

    /// Moves past `line`: following starts after it.
    fn passed(&mut self, line: &Value) -> Result<(), ClientError> {
        self.last_id = self.last_id.max(id_of(line));
        if let Some(t) = line["timestamp"].as_str() {
            let last = DateTime::parse_from_rfc3339(t)
                .map_err(|e| ClientError::Failed(format!("the API sent a bad time {t:?}: {e}")))?;
            self.cursor = at(last.with_timezone(&Utc) + TimeDelta::microseconds(1));
        }
        Ok(())
    }
}

/// A line's id (its place in the logs stream; 0 when it has none).
fn id_of(line: &Value) -> u64 {
    line["id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

type Socket = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

/// The API's live subscription to the lines `base` names, when one gets
/// through.
async fn subscribe(api: &Api, base: &str) -> Option<Socket> {
    match api.websocket(&format!("/v1/logs/subscribe?{base}")).await {
        Ok(upgraded) => Some(
            tokio_tungstenite::WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "no live subscription; following by polling");
            None
        }
    }
}

/// Prints the subscription's lines until it ends; why it ended.
async fn follow_live(socket: &mut Socket, shown: &mut Shown) -> Result<String, ClientError> {
    while let Some(msg) = socket.next().await {
        match msg {
            Ok(Message::Text(text)) => match serde_json::from_str::<Value>(text.as_str()) {
                Ok(line) => shown.print(&line)?,
                Err(e) => return Ok(format!("the API sent a line that is not JSON ({e})")),
            },
            Ok(Message::Close(Some(frame))) => {
                return Ok(format!("the live lines ended: {}", frame.reason));
            }
            Ok(Message::Close(None)) => return Ok("the live lines ended".to_owned()),
            Ok(_) => {}
            Err(e) => return Ok(format!("the live lines broke off ({e})")),
        }
    }
    Ok("the live lines ended".to_owned())
}

/// Asks for new lines every [`POLL`], for ever.
async fn follow_polling(api: &Api, base: &str, shown: &mut Shown) -> Result<(), ClientError> {
    loop {
        match shown.forward(api, base).await {
            Ok(true) => continue,
            Ok(false) => {}
            // berth restarting: wait for it rather than give up.
            Err(e @ (ClientError::Unreachable(_) | ClientError::Api { status: 503, .. })) => {
                eprintln!("berth: {e}; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
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

    #[test]
    fn a_line_already_shown_is_not_shown_again() {
        let mut shown = Shown {
            cursor: String::new(),
            last_id: 0,
            count: 0,
            json: true,
        };
        let line =
            |id: &str| json!({"id": id, "message": "m", "timestamp": "2026-12-07T08:00:00Z"});
        for id in ["5", "5", "4", "6", "6"] {
            shown.print(&line(id)).unwrap();
        }
        assert_eq!(
            (shown.count, shown.last_id),
            (2, 6),
            "5 and 6 once each, 4 not at all"
        );
        assert!(
            shown.cursor.starts_with("2026-12-07T08%3A00%3A00.000001Z"),
            "{}",
            shown.cursor
        );
    }
}

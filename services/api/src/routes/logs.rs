//! `GET /v1/logs`: the kept output of the caller's services, in Render's
//! shape (`{hasMore, nextStartTime, nextEndTime, logs: [{id, message,
//! timestamp, labels}]}`), paged by time as Render pages it: the next page
//! is asked for with `startTime=nextStartTime&endTime=nextEndTime`.
//!
//! A window is `[startTime, endTime)` at microseconds (what Render's
//! clients keep of a timestamp). A page never splits lines of one
//! microsecond, so the next window neither repeats nor skips a line; it may
//! hold a few lines more than `limit` when they share the last one's time.
//!
//! `GET /v1/logs/values` (Render's): the values one label takes on the
//! lines the same listing query names, each once.
//!
//! `GET /v1/logs/subscribe` (Render's, a WebSocket): the lines stored
//! from the moment it opens, as they come, each a text message in the
//! same `{id, message, timestamp, labels}` shape (so a client that pages
//! `GET /v1/logs` first can drop the lines it already has by `id`), with
//! the same service, instance, text, level and type filters. Every
//! refusal comes before the upgrade, as an ordinary API error. The
//! server pings the client; one silent for [`CLIENT_GONE`] is taken for
//! gone, as is one that stops reading for [`CLIENT_GONE`]. Revoking the
//! key a subscription was opened with, or deleting one of its services,
//! closes it with 1008 before it sends another line. One that leaves
//! more lines untaken than the API queues for it (`crate::logtap`) is
//! closed with 1013 and told to page the rest.
//!
//! Every service named must be one of the caller's: another owner's
//! service is not found, like one that does not exist. Each line is
//! returned as JSON string data, never interpreted. Filters berth has no
//! data for (Render's request-log `host`, `statusCode`, `method`, `path`,
//! task and sandbox filters) are accepted and not applied.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use berth_eventlog::logs::KeptLine;
use berth_ingress::IngressError;
use berth_schemas::ids::ServiceId;
use berth_schemas::logs::Stream;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::owner_matches;
use super::services::service_id;
use crate::app::{self, AppState, Authed};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// Most services one request may name.
const MAX_RESOURCES: usize = 20;

/// Most distinct values `GET /v1/logs/values` keeps while it reads a
/// window (what it holds stays bounded whatever the lines say; a label's
/// values beyond these are not listed).
const MAX_VALUES: usize = 10_000;

/// The window when none is given ends now and starts an hour before
/// (Render's defaults).
const DEFAULT_WINDOW: TimeDelta = TimeDelta::hours(1);

/// Query of `GET /v1/logs`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsQuery {
    /// Which lines: the same as a subscription's.
    #[serde(flatten)]
    pub lines: LogsSubscribeQuery,
    /// Start of the window, included: RFC 3339 or Unix seconds (default an
    /// hour before `endTime`).
    #[serde(default, deserialize_with = "query::one")]
    pub start_time: Option<String>,
    /// End of the window, excluded: RFC 3339 or Unix seconds (default now).
    #[serde(default, deserialize_with = "query::one")]
    pub end_time: Option<String>,
    /// `backward` (default: the newest lines first) or `forward` (the
    /// oldest first).
    #[serde(default, deserialize_with = "query::one")]
    pub direction: Option<String>,
    /// 1 to 100 (default 20).
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// Query of `GET /v1/logs/values`: a label and the lines whose values
/// of it are listed, as `GET /v1/logs` names them.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsValuesQuery {
    /// `instance`, `level` or `type`; Render's request-log labels `host`,
    /// `method` and `statusCode` are accepted and have no values (berth
    /// keeps no request logs).
    #[serde(default, deserialize_with = "query::one")]
    pub label: Option<String>,
    /// The lines, window, direction and limit, as `GET /v1/logs` takes
    /// them; `limit` counts values.
    #[serde(flatten)]
    pub logs: LogsQuery,
}

/// Query of `GET /v1/logs/subscribe`, and which lines `GET /v1/logs`
/// lists.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsSubscribeQuery {
    /// Must be the caller's own (any other owner is not found).
    #[serde(default, deserialize_with = "query::one")]
    pub owner_id: Option<String>,
    /// Service ids (repeated or comma-separated): at least one, at most 20.
    #[serde(default, deserialize_with = "query::many")]
    pub resource: Vec<String>,
    /// Only these instances (`ins-…`).
    #[serde(default, deserialize_with = "query::many")]
    pub instance: Vec<String>,
    /// Only lines containing each of these texts (case-sensitive).
    #[serde(default, deserialize_with = "query::every")]
    pub text: Vec<String>,
    /// Only these levels: `info` (stdout) or `error` (stderr).
    #[serde(default, deserialize_with = "query::many")]
    pub level: Vec<String>,
    /// Only these types; instance output is `app`.
    #[serde(default, deserialize_with = "query::many", rename = "type")]
    pub types: Vec<String>,
}

impl LogsSubscribeQuery {
    /// Whether instance output (`app`) is asked for at all.
    fn wants_app(&self) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == "app")
    }

    /// What a line must be, beyond its service.
    fn filter(self) -> Filter {
        Filter {
            instances: self.instance.into_iter().collect(),
            texts: self.text,
            levels: self.level.into_iter().collect(),
        }
    }
}

/// One page of log lines.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsPage {
    /// More lines match in the window beyond this page.
    pub has_more: bool,
    /// `startTime` of the next page.
    pub next_start_time: DateTime<Utc>,
    /// `endTime` of the next page.
    pub next_end_time: DateTime<Utc>,
    /// In the page's direction: newest first for `backward`.
    pub logs: Vec<LogEntry>,
}

/// One line.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LogEntry {
    /// Unique among the kept lines.
    pub id: String,
    /// The line as the instance wrote it (without its newline).
    pub message: String,
    /// When it was kept, to the microsecond.
    pub timestamp: DateTime<Utc>,
    /// `resource` (the service), `instance`, `type` and `level`.
    pub labels: Vec<LogLabel>,
}

/// A label of a line.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LogLabel {
    pub name: LabelName,
    pub value: String,
}

/// The labels berth gives (Render's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LabelName {
    Resource,
    Instance,
    Type,
    Level,
}

/// Which end of the window a page starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// `t` cut to the microsecond.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A time parameter: RFC 3339 (as Render's clients send it) or Unix
/// seconds (as Render documents it), cut to the microsecond.
fn time(name: &str, given: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(given) = given.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let epoch = given.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if epoch {
        let secs: f64 = given
            .parse()
            .map_err(|_| ApiError::field(name, "must be an RFC 3339 time or Unix seconds"))?;
        // Whole microseconds: a float's further digits are noise.
        let micros = (secs * 1e6).round();
        return DateTime::from_timestamp_micros(micros as i64)
            .filter(|_| micros.is_finite() && micros < 1e17)
            .map(Some)
            .ok_or_else(|| ApiError::field(name, "is out of range"));
    }
    Ok(query::time(name, Some(given))?.map(micros))
}

/// A line as a candidate for the page: its time to the microsecond.
#[derive(Debug, Clone)]
struct Candidate {
    time: DateTime<Utc>,
    kept: KeptLine,
}

/// Picks a page from lines offered oldest first: the first `limit` for
/// `forward`, the last `limit` for `backward`, never cutting between two
/// lines of the same microsecond (the page grows to hold them instead).
#[derive(Debug)]
struct Picker {
    direction: Direction,
    limit: usize,
    lines: VecDeque<Candidate>,
    /// Lines matched that the page left out.
    more: bool,
}

impl Picker {
    fn new(direction: Direction, limit: usize) -> Self {
        Self {
            direction,
            limit: limit.max(1),
            lines: VecDeque::new(),
            more: false,
        }
    }

    /// Offers the next matching line; breaks once a forward page is full
    /// (nothing after it can enter).
    fn offer(&mut self, c: Candidate) -> ControlFlow<()> {
        match self.direction {
            Direction::Forward => {
                if self.lines.len() >= self.limit
                    && self.lines.back().is_some_and(|last| last.time != c.time)
                {
                    self.more = true;
                    return ControlFlow::Break(());
                }
                self.lines.push_back(c);
            }
            Direction::Backward => {
                self.lines.push_back(c);
                while self.lines.len() > self.limit {
                    let oldest_kept = self.lines[self.lines.len() - self.limit].time;
                    if self.lines.front().is_some_and(|f| f.time == oldest_kept) {
                        break;
                    }
                    self.lines.pop_front();
                    self.more = true;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// What a line must be to be listed.
#[derive(Debug)]
struct Filter {
    instances: BTreeSet<String>,
    texts: Vec<String>,
    levels: BTreeSet<String>,
}

impl Filter {
    fn keeps(&self, k: &KeptLine) -> bool {
        // A line about a deploy (no instance) is not any instance's.
        (self.instances.is_empty()
            || k.line
                .instance
                .as_ref()
                .is_some_and(|i| self.instances.contains(i.as_str())))
            && (self.levels.is_empty() || self.levels.contains(level(k.line.stream)))
            && self.texts.iter().all(|t| k.line.line.contains(t.as_str()))
    }
}

/// Render's level of a line: berth reads no levels out of messages, so
/// the stream says it (berth's own `==> …` lines are `info`, as the
/// program's standard output).
fn level(s: Stream) -> &'static str {
    match s {
        Stream::Stdout | Stream::System => "info",
        Stream::Stderr => "error",
    }
}

fn entry(c: Candidate) -> LogEntry {
    let label = |name, value: &str| LogLabel {
        name,
        value: value.to_owned(),
    };
    let l = &c.kept.line;
    let mut labels = vec![label(LabelName::Resource, l.service.as_str())];
    // berth's lines about a deploy carry no instance label.
    if let Some(i) = &l.instance {
        labels.push(label(LabelName::Instance, i.as_str()));
    }
    labels.extend([
        label(LabelName::Type, "app"),
        label(LabelName::Level, level(l.stream)),
    ]);
    LogEntry {
        id: c.kept.seq.to_string(),
        message: c.kept.line.line,
        timestamp: c.time,
        labels,
    }
}

/// The services named, each the caller's (404 otherwise, the same as for
/// a service that does not exist).
async fn services(
    st: &AppState,
    owner: &berth_schemas::ids::OwnerId,
    given: &[String],
) -> Result<Vec<ServiceId>, ApiError> {
    if given.is_empty() {
        return Err(ApiError::field("resource", "name at least one service id"));
    }
    if given.len() > MAX_RESOURCES {
        return Err(ApiError::field(
            "resource",
            format!("at most {MAX_RESOURCES} services at once"),
        ));
    }
    let ids = given
        .iter()
        .map(|s| service_id(s))
        .collect::<Result<BTreeSet<_>, _>>()?;
    // As of the log's end, as listings are: a service created a moment
    // ago is there, one deleted a moment ago is gone (its lines with it).
    st.caught_up().await?;
    if !st.read(|i| ids.iter().all(|id| i.owns(owner, id)))? {
        return Err(ApiError::not_found("service"));
    }
    Ok(ids.into_iter().collect())
}

/// What a listing of lines asks for, each part checked: the window,
/// the direction, the limit, the caller's services it names and the
/// filters.
struct Asked {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    direction: Direction,
    limit: usize,
    ids: Vec<ServiceId>,
    /// Whether instance output (`app`) is asked for at all.
    app: bool,
    filter: Filter,
}

async fn asked(
    st: &AppState,
    caller: &berth_ingress::Caller,
    q: LogsQuery,
) -> Result<Asked, ApiError> {
    let limit = app::limit(q.limit.as_deref())?.unwrap_or(20);
    let direction = match q.direction.as_deref() {
        None | Some("") | Some("backward") => Direction::Backward,
        Some("forward") => Direction::Forward,
        Some(_) => return Err(ApiError::field("direction", "must be backward or forward")),
    };
    let end = time("endTime", q.end_time.as_deref())?.unwrap_or_else(|| micros(Utc::now()));
    let start = time("startTime", q.start_time.as_deref())?.unwrap_or(end - DEFAULT_WINDOW);
    let lines = q.lines;
    owner_matches(lines.owner_id.as_deref(), caller.owner.as_str())?;
    let ids = services(st, &caller.owner, &lines.resource).await?;
    Ok(Asked {
        start,
        end,
        direction,
        limit,
        ids,
        app: lines.wants_app(),
        filter: lines.filter(),
    })
}

impl Asked {
    /// Offers `each` the window's lines of each service named that the
    /// filters keep, a service's oldest first; a break ends that
    /// service's.
    async fn read(
        &self,
        st: &AppState,
        mut each: impl FnMut(&ServiceId, KeptLine) -> ControlFlow<()>,
    ) -> Result<(), ApiError> {
        for id in &self.ids {
            st.ingress
                .store()
                .read_logs(id, self.start, self.end, |kept| {
                    if !self.filter.keeps(&kept) {
                        return ControlFlow::Continue(());
                    }
                    each(id, kept)
                })
                .await
                .map_err(|e| ApiError::from(IngressError::Store(e.to_string())))?;
        }
        Ok(())
    }
}

/// The labels `GET /v1/logs/values` lists values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValuesOf {
    Instance,
    Level,
    Type,
    /// Render's request-log labels: berth keeps no request logs.
    Request,
}

impl ValuesOf {
    fn parse(given: Option<&str>) -> Result<Self, ApiError> {
        match given {
            Some("instance") => Ok(Self::Instance),
            Some("level") => Ok(Self::Level),
            Some("type") => Ok(Self::Type),
            Some("host" | "method" | "statusCode") => Ok(Self::Request),
            _ => Err(ApiError::field(
                "label",
                "must be one of instance, level, type, host, method, statusCode",
            )),
        }
    }

    /// Its value on `line`, when it has one.
    fn of(self, line: &KeptLine) -> Option<&str> {
        match self {
            Self::Instance => line.line.instance.as_ref().map(|i| i.as_str()),
            Self::Level => Some(level(line.line.stream)),
            Self::Type => Some("app"),
            Self::Request => None,
        }
    }
}

/// GET /v1/logs/values: the values a label takes on the lines `GET
/// /v1/logs` would list for the same query, each once, at most `limit`:
/// for `backward` (the default) the values of the newest lines first,
/// for `forward` those of the oldest first.
pub async fn values(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<LogsValuesQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let label = ValuesOf::parse(q.label.as_deref())?;
    let asked = asked(&st, &caller, q.logs).await?;
    if label == ValuesOf::Request || !asked.app {
        return Ok(Json(Vec::new()));
    }
    // Each value with the stream sequence of its first and last line:
    // the stream's order is the order the lines were kept in.
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    asked
        .read(&st, |_, kept| {
            if let Some(v) = label.of(&kept) {
                let full = seen.len() >= MAX_VALUES;
                match seen.get_mut(v) {
                    Some((first, last)) => {
                        *first = (*first).min(kept.seq);
                        *last = (*last).max(kept.seq);
                    }
                    None if !full => {
                        seen.insert(v.to_owned(), (kept.seq, kept.seq));
                    }
                    None => {}
                }
            }
            ControlFlow::Continue(())
        })
        .await?;
    let mut found: Vec<(String, (u64, u64))> = seen.into_iter().collect();
    match asked.direction {
        Direction::Backward => found.sort_by_key(|(_, (_, last))| std::cmp::Reverse(*last)),
        Direction::Forward => found.sort_by_key(|(_, (first, _))| *first),
    }
    Ok(Json(
        found
            .into_iter()
            .take(asked.limit)
            .map(|(v, _)| v)
            .collect(),
    ))
}

/// GET /v1/logs
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<LogsQuery>,
) -> Result<Json<LogsPage>, ApiError> {
    let asked = asked(&st, &caller, q).await?;
    let (start, end, direction, limit) = (asked.start, asked.end, asked.direction, asked.limit);
    let mut picked = Picker::new(direction, limit);
    // Instance output is all `app`: asked for other types only, nothing.
    if asked.app {
        // Each service's page, then the page of them all.
        let mut each: HashMap<ServiceId, Picker> = HashMap::new();
        asked
            .read(&st, |id, kept| {
                let one = each
                    .entry(id.clone())
                    .or_insert_with(|| Picker::new(direction, limit));
                one.offer(Candidate {
                    time: micros(kept.time),
                    kept,
                })
            })
            .await?;
        let mut merged = Vec::new();
        for one in each.into_values() {
            picked.more |= one.more;
            merged.extend(one.lines);
        }
        merged.sort_by_key(|c| (c.time, c.kept.seq));
        for c in merged {
            if picked.offer(c).is_break() {
                break;
            }
        }
    }
    let (next_start_time, next_end_time) = match direction {
        Direction::Forward => (
            picked
                .lines
                .back()
                .map_or(start, |c| c.time + TimeDelta::microseconds(1)),
            end,
        ),
        Direction::Backward => (start, picked.lines.front().map_or(end, |c| c.time)),
    };
    let mut logs: Vec<LogEntry> = picked.lines.into_iter().map(entry).collect();
    if direction == Direction::Backward {
        logs.reverse();
    }
    Ok(Json(LogsPage {
        has_more: picked.more,
        next_start_time,
        next_end_time,
        logs,
    }))
}

/// How often, at most, a subscription with lines to send looks again at
/// what it stands on (at least at every ping).
const RECHECK: Duration = Duration::from_secs(1);

/// How often a subscription's client is pinged.
const CLIENT_PING: Duration = Duration::from_secs(30);
/// A client that answers nothing, or takes no message, for this long is
/// taken for gone.
pub const CLIENT_GONE: Duration = Duration::from_secs(90);

/// GET /v1/logs/subscribe
pub async fn subscribe(
    State(st): State<AppState>,
    Authed(caller): Authed,
    headers: axum::http::HeaderMap,
    Listing(q): Listing<LogsSubscribeQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    owner_matches(q.owner_id.as_deref(), caller.owner.as_str())?;
    let ids = services(&st, &caller.owner, &q.resource).await?;
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::bad_request(
            "this route opens a WebSocket: send `Connection: Upgrade` and `Upgrade: websocket`",
        ));
    };
    let subscription = Subscription {
        wanted: q.wants_app(),
        filter: q.filter(),
    };
    // Open before the upgrade is answered: every line stored after the
    // client sees the 101 is sent.
    let watch = st
        .log_tap
        .watch(st.ingress.store(), &caller.owner, ids.into_iter().collect())
        .await?;
    let standing = Standing {
        key_sha: app::bearer_sha256(&headers).unwrap_or_default(),
        caller,
        st,
    };
    Ok(upgrade
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| pump(socket, watch, subscription, standing)))
}

/// What a subscription stands on, checked again at every ping: its key
/// not revoked, its services still the owner's.
struct Standing {
    st: AppState,
    caller: berth_ingress::Caller,
    key_sha: String,
}

impl Standing {
    /// Why the subscription may not go on, if it may not.
    fn fallen(&self, services: &BTreeSet<ServiceId>) -> Option<String> {
        if !app::still_valid(&self.st, &self.caller, &self.key_sha) {
            return Some("the API key this subscription was opened with was revoked".to_owned());
        }
        let owner = &self.caller.owner;
        let gone = services
            .iter()
            .find(|s| !self.st.read(|i| i.owns(owner, s)).unwrap_or(false))?;
        Some(format!("{gone} was deleted"))
    }
}

/// Which of its services' live lines (those its
/// [`Watch`](crate::logtap::Watch) hands on) a subscription sends.
#[derive(Debug)]
pub(crate) struct Subscription {
    filter: Filter,
    /// Asked for instance output (`app`) at all.
    wanted: bool,
}

impl Subscription {
    /// The lines holding each of `texts`.
    pub(crate) fn holding(texts: Vec<String>) -> Self {
        Self {
            filter: Filter {
                instances: BTreeSet::new(),
                texts,
                levels: BTreeSet::new(),
            },
            wanted: true,
        }
    }

    pub(crate) fn keeps(&self, k: &KeptLine) -> bool {
        self.wanted && self.filter.keeps(k)
    }
}

/// A live line as `GET /v1/logs` lists it.
pub(crate) fn live_entry(kept: Arc<KeptLine>) -> LogEntry {
    let kept = Arc::unwrap_or_clone(kept);
    entry(Candidate {
        time: micros(kept.time),
        kept,
    })
}

/// Sends the subscription's lines until the client or the server ends it.
async fn pump(
    mut socket: WebSocket,
    mut watch: crate::logtap::Watch,
    subscription: Subscription,
    standing: Standing,
) {
    use super::terminal::send_within;
    use crate::logtap::Ended;
    let shutdown = standing.st.dashboard.shutdown.clone();
    let mut ping = tokio::time::interval(CLIENT_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    let mut checked = heard;
    let close = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Some((1001, "the server is shutting down".to_owned())),
            line = watch.next() => match line {
                Ok(kept) => {
                    if !subscription.keeps(&kept) {
                        continue;
                    }
                    // Lines keep coming only while the key stands (looked
                    // at once a second at most).
                    if checked.elapsed() >= RECHECK {
                        checked = tokio::time::Instant::now();
                        if let Some(why) = standing.fallen(watch.services()) {
                            break Some((1008, why));
                        }
                    }
                    let text = serde_json::to_string(&live_entry(kept)).unwrap_or_default();
                    if !send_within(&mut socket, Message::Text(text.into()), CLIENT_GONE).await {
                        break None;
                    }
                }
                Err(Ended::Behind) => {
                    break Some((1013, "lines came faster than this client took them; \
                         page the rest from GET /v1/logs and subscribe again".to_owned()));
                }
                Err(Ended::Stopped) => {
                    break Some((1011, "the logs stream stopped; subscribe again".to_owned()));
                }
            },
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() >= CLIENT_GONE {
                    break None;
                }
                if let Some(why) = standing.fallen(watch.services()) {
                    break Some((1008, why));
                }
                if !send_within(&mut socket, Message::Ping(Default::default()), CLIENT_GONE).await {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        send_within(
            &mut socket,
            Message::Close(Some(frame)),
            Duration::from_secs(5),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use berth_schemas::ids::InstanceId;
    use berth_schemas::logs::LogLine;

    use super::*;

    fn line(seq: u64, micros: i64) -> Candidate {
        let time = DateTime::from_timestamp_micros(micros).unwrap_or_default();
        Candidate {
            time,
            kept: KeptLine {
                seq,
                time,
                line: LogLine {
                    service: ServiceId::generate(),
                    instance: Some(InstanceId::generate()),
                    stream: Stream::Stdout,
                    line: format!("l{seq}"),
                    time,
                },
            },
        }
    }

    fn pick(direction: Direction, limit: usize, times: &[i64]) -> (Vec<u64>, bool) {
        let mut p = Picker::new(direction, limit);
        for (i, t) in times.iter().enumerate() {
            if p.offer(line(i as u64, *t)).is_break() {
                break;
            }
        }
        (p.lines.iter().map(|c| c.kept.seq).collect(), p.more)
    }

    #[test]
    fn forward_pages_take_the_oldest_and_never_split_a_microsecond() {
        assert_eq!(pick(Direction::Forward, 2, &[1, 2, 3]), (vec![0, 1], true));
        assert_eq!(pick(Direction::Forward, 2, &[1, 2]), (vec![0, 1], false));
        assert_eq!(
            pick(Direction::Forward, 2, &[1, 2, 2, 2, 3]),
            (vec![0, 1, 2, 3], true)
        );
        assert_eq!(pick(Direction::Forward, 1, &[5, 5]), (vec![0, 1], false));
    }

    #[test]
    fn backward_pages_take_the_newest_and_never_split_a_microsecond() {
        assert_eq!(pick(Direction::Backward, 2, &[1, 2, 3]), (vec![1, 2], true));
        assert_eq!(pick(Direction::Backward, 3, &[1, 2]), (vec![0, 1], false));
        assert_eq!(
            pick(Direction::Backward, 2, &[1, 2, 2, 2, 3]),
            (vec![1, 2, 3, 4], true)
        );
        assert_eq!(pick(Direction::Backward, 1, &[4, 4]), (vec![0, 1], false));
        assert_eq!(pick(Direction::Backward, 1, &[3, 4, 4]), (vec![1, 2], true));
    }

    #[test]
    fn times_are_rfc_3339_or_unix_seconds_to_the_microsecond() {
        let t = |s: &str| {
            time("t", Some(s))
                .ok()
                .flatten()
                .map(|t| t.timestamp_micros())
        };
        assert_eq!(t("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(t("1700000000.25"), Some(1_700_000_000_250_000));
        assert_eq!(
            t("2023-11-14T22:13:20.000001999Z"),
            Some(1_700_000_000_000_001)
        );
        assert_eq!(t("2023-11-14T22:13:20"), Some(1_700_000_000_000_000));
        assert!(time("t", Some("yesterday")).is_err());
        assert!(time("t", Some("1.2.3")).is_err());
        assert!(time("t", Some("99999999999999999999")).is_err());
        assert_eq!(time("t", None).ok().flatten(), None);
    }
}

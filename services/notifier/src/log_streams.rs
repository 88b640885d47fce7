//! Log streams: every line an owner's services write, sent to the owner's
//! TLS syslog endpoint (or a service's own, or none: its override), as
//! Render's log streams do.
//!
//! - **Where**: two read models of the log (owners' streams, services'
//!   names, types, owners and overrides), restored from snapshots, decide
//!   each line's target ([`berth_domain::log_stream::target`]).
//! - **What**: one RFC 5424 message per line, newline-framed (RFC 6587's
//!   non-transparent framing, which syslog providers take over TLS):
//!   `<PRI>1 TIME SERVICE-NAME SERVICE-ID INSTANCE-ID TYPE - TEXT`, the
//!   severity read from a `level` field of a logfmt or JSON line, else
//!   `error` for standard error and `info` for the rest; the token, when
//!   set, and a space before it.
//! - **How**: a durable consumer on the logs stream, which exists only
//!   while some stream is set (made again, it starts at new lines). Each
//!   target has one TLS connection and a queue of [`QUEUE_LINES`] lines;
//!   a line is acknowledged once written and flushed, so lines read
//!   before a crash are sent after it (at least once).
//! - **Bounds**: a target that cannot keep up, or cannot be reached,
//!   loses its own lines, counted in the notifier's log (never anyone
//!   else's): a full queue drops the new line, an unreachable endpoint
//!   drops what waits for it, then is tried again after a pause (1 s,
//!   doubling to 60 s). Unacknowledged lines are at most
//!   [`MAX_ACK_PENDING`]; a connection idle for [`IDLE`] is closed.
//! - **Addresses**: the endpoint is resolved and connected to under the
//!   operator's [`AddressPolicy`], as notification URLs are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use berth_domain::log_stream::{self, Endpoint};
use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_runtime::{AddressPolicy, SecretKey};
use berth_schemas::ids::{OwnerId, ServiceId};
use berth_schemas::logs::{LogLine, Stream};
use berth_schemas::model::{seal_context, LogStream, LogStreamOverride, Sealed, ServiceType};
use berth_schemas::{AggregateId, Envelope, Event};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lines a target's queue holds.
pub const QUEUE_LINES: usize = 4096;
/// Lines read and not yet acknowledged, in all.
pub const MAX_ACK_PENDING: i64 = 50_000;
/// A connection with nothing to send for this long is closed.
pub const IDLE: Duration = Duration::from_secs(120);
/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write and flush may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause before an unreachable endpoint is tried again.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Most lines written to a connection at once.
const BATCH: usize = 512;
/// How often dropped lines are reported, per target.
const REPORT_EVERY: Duration = Duration::from_secs(30);

// ---- where lines go -------------------------------------------------

/// Owners' log streams (folded from the owner aggregates).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OwnerStreams {
    streams: HashMap<OwnerId, LogStream>,
}

impl Projection for OwnerStreams {
    type Snapshot = OwnerStreams;

    fn apply(&mut self, _seq: u64, env: &Envelope) {
        if let (AggregateId::Owner(owner), Event::LogStreamChanged(e)) =
            (&env.aggregate, &env.event)
        {
            match &e.stream {
                Some(s) => self.streams.insert(owner.clone(), s.clone()),
                None => self.streams.remove(owner),
            };
        }
    }

    fn snapshot(&self) -> OwnerStreams {
        self.clone()
    }

    fn snapshot_ref(&self) -> Option<&OwnerStreams> {
        Some(self)
    }

    fn restore(&mut self, snapshot: OwnerStreams) {
        *self = snapshot;
    }
}

/// What a line needs of its service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceFacts {
    pub owner: OwnerId,
    pub name: String,
    pub service_type: ServiceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<LogStreamOverride>,
}

/// Services' names, owners and overrides; a deleted service leaves it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServiceStreams {
    services: HashMap<ServiceId, ServiceFacts>,
}

impl Projection for ServiceStreams {
    type Snapshot = ServiceStreams;

    fn apply(&mut self, _seq: u64, env: &Envelope) {
        let AggregateId::Service(id) = &env.aggregate else {
            return;
        };
        match &env.event {
            Event::ServiceCreated(e) => {
                self.services.entry(id.clone()).or_insert(ServiceFacts {
                    owner: e.owner.clone(),
                    name: e.name.clone(),
                    service_type: e.service_type,
                    stream: None,
                });
            }
            Event::ServiceUpdated(e) => {
                if let (Some(f), Some(name)) = (self.services.get_mut(id), &e.settings.name) {
                    f.name.clone_from(name);
                }
            }
            Event::LogStreamOverrideChanged(e) => {
                if let Some(f) = self.services.get_mut(id) {
                    f.stream.clone_from(&e.stream);
                }
            }
            Event::ServiceDeleted(_) => {
                self.services.remove(id);
            }
            _ => {}
        }
    }

    fn snapshot(&self) -> ServiceStreams {
        self.clone()
    }

    fn snapshot_ref(&self) -> Option<&ServiceStreams> {
        Some(self)
    }

    fn restore(&mut self, snapshot: ServiceStreams) {
        *self = snapshot;
    }
}

/// One connection's identity: whose lines, where, with which token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub owner: OwnerId,
    pub endpoint: String,
    /// The sealed token and whose it is (what it opens with).
    pub token: Option<(Sealed, TokenOf)>,
}

/// Whose setting a token is, which says its seal context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenOf {
    /// The owner's stream.
    Owner,
    /// This service's override.
    Service(ServiceId),
}

impl Target {
    /// The context `token` opens with.
    fn context(&self, of: &TokenOf) -> String {
        match of {
            TokenOf::Owner => seal_context::owner_log_stream_token(&self.owner),
            TokenOf::Service(s) => seal_context::service_log_stream_token(s),
        }
    }
}

/// Where `service`'s lines go, if anywhere, and what the line needs of it
/// (borrowed from the read model: a line costs no copy of its service).
pub fn route<'a>(
    owners: &OwnerStreams,
    services: &'a ServiceStreams,
    service: &ServiceId,
) -> Option<(Target, &'a ServiceFacts)> {
    let f = services.services.get(service)?;
    let (endpoint, token) = log_stream::target(owners.streams.get(&f.owner), f.stream.as_ref())?;
    let of = match f.stream {
        Some(_) => TokenOf::Service(service.clone()),
        None => TokenOf::Owner,
    };
    let target = Target {
        owner: f.owner.clone(),
        endpoint: endpoint.to_owned(),
        token: token.map(|t| (t.clone(), of)),
    };
    Some((target, f))
}

/// [`any_target`] of the shared read models; `None` when one cannot be
/// read (the caller keeps doing what it does).
fn any_target_in(owners: &RwLock<OwnerStreams>, services: &RwLock<ServiceStreams>) -> Option<bool> {
    Some(any_target(&*owners.read().ok()?, &*services.read().ok()?))
}

/// Whether any line has somewhere to go.
fn any_target(owners: &OwnerStreams, services: &ServiceStreams) -> bool {
    !owners.streams.is_empty()
        || services
            .services
            .values()
            .any(|f| f.stream.as_ref().is_some_and(|o| o.endpoint.is_some()))
}

// ---- what is sent ---------------------------------------------------

/// Render's service type names.
fn type_name(t: ServiceType) -> &'static str {
    match t {
        ServiceType::WebService => "web_service",
        ServiceType::PrivateService => "private_service",
        ServiceType::BackgroundWorker => "background_worker",
        ServiceType::CronJob => "cron_job",
    }
}

/// The syslog severity of a line: a `level` of logfmt (`level=warn`) or
/// JSON (`"level":"warn"`) when it names one, else by its stream.
pub fn severity(stream: Stream, text: &str) -> u8 {
    level_in(text)
        .and_then(|l| match l.to_ascii_lowercase().as_str() {
            "emerg" | "emergency" | "panic" => Some(0),
            "alert" => Some(1),
            "crit" | "critical" | "fatal" => Some(2),
            "err" | "error" => Some(3),
            "warn" | "warning" => Some(4),
            "notice" => Some(5),
            "info" | "information" => Some(6),
            "debug" | "trace" => Some(7),
            _ => None,
        })
        .unwrap_or(match stream {
            Stream::Stderr => 3,
            Stream::Stdout | Stream::System => 6,
        })
}

/// The value of the first `level` key of a logfmt or JSON line.
fn level_in(text: &str) -> Option<&str> {
    for key in ["\"level\":", "level="] {
        let mut from = 0;
        while let Some(at) = text[from..].find(key) {
            let start = from + at;
            from = start + key.len();
            // A key of its own, not the end of another (`loglevel=`).
            let before = text[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = text[from..].trim_start().trim_start_matches('"');
            let end = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            if end > 0 {
                return Some(&rest[..end]);
            }
        }
    }
    None
}

/// An RFC 5424 header field: printable ASCII without spaces, at most
/// `max` bytes, `-` when nothing is left.
fn field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() {
        "-".to_owned()
    } else {
        f
    }
}

/// One line as a syslog message (without the token), newline-terminated.
/// Facility `user` (1).
pub fn frame(line: &LogLine, facts: &ServiceFacts) -> Vec<u8> {
    let pri = 8 + u16::from(severity(line.stream, &line.line));
    let text = line.line.replace(['\n', '\r'], " ");
    format!(
        "<{pri}>1 {time} {host} {app} {proc} {msgid} - {text}\n",
        time = line
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        host = field(&facts.name, 255),
        app = field(line.service.as_str(), 48),
        proc = field(line.instance.as_ref().map_or("", |i| i.as_str()), 128),
        msgid = type_name(facts.service_type),
    )
    .into_bytes()
}

// ---- how it is sent -------------------------------------------------

/// A line on its way: its bytes and its message, acknowledged once sent
/// (or dropped).
struct Outgoing {
    bytes: Vec<u8>,
    msg: Message,
}

/// What the senders share.
#[derive(Debug, Clone)]
struct Shared {
    /// Where whether each endpoint delivers is recorded.
    store: EventStore,
    key: SecretKey,
    targets: AddressPolicy,
    tls: Arc<rustls::ClientConfig>,
}

/// The TLS client configuration: ring, the platform's roots
/// (`SSL_CERT_FILE` names a bundle of others).
fn tls_config() -> Result<rustls::ClientConfig, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth())
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Resolves and connects to `endpoint` under the address policy, then
/// speaks TLS with it. The error is for the operator's log.
async fn connect(shared: &Shared, endpoint: &str) -> Result<Tls, String> {
    let ep = Endpoint::parse("endpoint", endpoint).map_err(|e| e.to_string())?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", ep.host))?
        .collect();
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| shared.targets.check(a.ip()).is_ok())
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "log stream host {} has no address berth may connect to ({})",
            ep.host,
            berth_runtime::egress::SETTING
        ));
    }
    let mut last = String::new();
    for addr in allowed {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                    .map_err(|e| format!("{}: {e}", ep.host))?;
                let tls = tokio_rustls::TlsConnector::from(shared.tls.clone());
                return match tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(format!("TLS with {endpoint}: {e}")),
                    Err(_) => Err(format!("TLS with {endpoint}: timed out")),
                };
            }
            Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
            Err(_) => last = format!("connecting to {addr}: timed out"),
        }
    }
    Err(last)
}

/// Lines dropped for a target, reported now and then.
struct Drops {
    count: u64,
    reported: Instant,
}

impl Drops {
    /// The first drop is reported at once.
    fn new() -> Self {
        Self {
            count: 0,
            reported: Instant::now()
                .checked_sub(REPORT_EVERY)
                .unwrap_or_else(Instant::now),
        }
    }

    fn add(&mut self, n: u64, target: &Target, why: &str) {
        self.count += n;
        if self.count > 0 && self.reported.elapsed() >= REPORT_EVERY {
            tracing::warn!(owner = %target.owner, endpoint = %target.endpoint, lines = self.count,
                reason = why, "log stream lines dropped");
            self.count = 0;
            self.reported = Instant::now();
        }
    }
}

async fn ack_all(batch: &mut Vec<Outgoing>) {
    for o in batch.drain(..) {
        if let Err(e) = o.msg.ack().await {
            tracing::debug!(error = %e, "log line not acknowledged; it comes again");
        }
    }
}

/// One target's connection: sends what its queue brings until the queue
/// is idle for [`IDLE`] or closed.
/// Records on the owner whether `target`'s endpoint takes lines (`None`)
/// or why not; the owner records a change only. A failure to record is
/// logged: the lines go on regardless.
async fn report(shared: &Shared, target: &Target, failure: Option<String>) {
    let command = berth_domain::owner::Command::RecordLogStreamDelivery {
        endpoint: target.endpoint.clone(),
        failure: failure.map(|e| (e, chrono::Utc::now())),
    };
    let key = format!(
        "log-stream-delivery-{}",
        berth_schemas::ids::DeployId::generate()
    );
    let stamp = berth_eventlog::Stamp::new(berth_schemas::Actor::system("notifier"));
    if let Err(e) = shared
        .store
        .execute::<berth_domain::owner::Owner>(
            &berth_schemas::AggregateId::Owner(target.owner.clone()),
            &key,
            &stamp,
            command,
        )
        .await
    {
        tracing::warn!(owner = %target.owner, endpoint = %target.endpoint, error = %e,
            "whether a log stream endpoint delivers could not be recorded");
    }
}

async fn send_loop(shared: Shared, target: Target, mut rx: mpsc::Receiver<Outgoing>) {
    let token = match &target.token {
        None => None,
        Some((sealed, of)) => match shared.key.open(sealed, &target.context(of)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(owner = %target.owner, error = %e,
                    "log stream token does not open; its lines are dropped");
                let why = "its token does not open here (sealed with another installation key): set it again";
                report(&shared, &target, Some(why.to_owned())).await;
                while let Some(o) = rx.recv().await {
                    let _ = o.msg.ack().await;
                }
                return;
            }
        },
    };
    let prefix = token.map(|t| format!("{} ", t.expose()).into_bytes());
    let mut drops = Drops::new();
    let mut pause = Duration::from_secs(1);
    // Whether this loop last found the endpoint failing (`None`: not
    // tried yet; its first success clears what an earlier loop left).
    let mut failing: Option<bool> = None;
    let mut conn: Option<Tls> = None;
    let mut batch: Vec<Outgoing> = Vec::new();
    // Whether the batch failed once to be written already.
    let mut retried = false;
    loop {
        if batch.is_empty() {
            match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(o)) => batch.push(o),
                Ok(None) | Err(_) => break,
            }
            retried = false;
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(&shared, &target.endpoint).await {
                Ok(s) => {
                    pause = Duration::from_secs(1);
                    conn.insert(s)
                }
                Err(e) => {
                    tracing::warn!(owner = %target.owner, endpoint = %target.endpoint, error = %e,
                        "log stream endpoint unreachable; its lines are dropped for {pause:?}");
                    if failing != Some(true) {
                        report(&shared, &target, Some(format!("unreachable: {e}"))).await;
                        failing = Some(true);
                    }
                    let n = batch.len() as u64;
                    ack_all(&mut batch).await;
                    drops.add(n, &target, "endpoint unreachable");
                    // Whatever comes while pausing is dropped too.
                    let until = tokio::time::Instant::now() + pause;
                    while let Ok(Some(o)) = tokio::time::timeout_at(until, rx.recv()).await {
                        batch.push(o);
                        if batch.len() >= BATCH {
                            let n = batch.len() as u64;
                            ack_all(&mut batch).await;
                            drops.add(n, &target, "endpoint unreachable");
                        }
                    }
                    let n = batch.len() as u64;
                    ack_all(&mut batch).await;
                    drops.add(n, &target, "endpoint unreachable");
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
            },
        };
        let mut out = Vec::with_capacity(batch.iter().map(|o| o.bytes.len() + 64).sum());
        for o in &batch {
            if let Some(p) = &prefix {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(&o.bytes);
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await;
        let error = match written {
            Ok(Ok(())) => {
                ack_all(&mut batch).await;
                if failing != Some(false) {
                    report(&shared, &target, None).await;
                    failing = Some(false);
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no progress in {WRITE_TIMEOUT:?}"),
        };
        conn = None;
        if retried {
            // Twice: left unacknowledged, the server delivers them again
            // after the ack wait, and the queue moves on.
            tracing::warn!(owner = %target.owner, endpoint = %target.endpoint, error = %error,
                "log stream connection lost again; its lines come again later");
            batch.clear();
        } else {
            // Sent again on a new connection (a line may then come twice).
            tracing::warn!(owner = %target.owner, endpoint = %target.endpoint, error = %error,
                "log stream connection lost; its lines are sent on a new one");
            retried = true;
        }
    }
    if let Some(mut s) = conn {
        let _ = s.shutdown().await;
    }
}

// ---- the loop -------------------------------------------------------

/// The log streams' forwarder: run by the notifier.
#[derive(Debug)]
pub struct Forwarder {
    store: EventStore,
    shared: Shared,
    consumer: String,
    ack_wait: Duration,
}

impl Forwarder {
    /// A forwarder reading the logs stream with durable consumer
    /// `consumer`, opening tokens with `key`, connecting under `targets`.
    pub fn new(
        store: EventStore,
        key: SecretKey,
        targets: AddressPolicy,
        consumer: String,
        ack_wait: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            store: store.clone(),
            shared: Shared {
                store,
                key,
                targets,
                tls: Arc::new(tls_config()?),
            },
            consumer,
            ack_wait,
        })
    }

    /// Follows the settings and forwards lines until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let opts = |kind: &str, key: &str| ProjectionOptions {
            filter: Some(self.store.subjects().aggregate_kind(kind)),
            snapshot_key: Some(key.to_owned()),
            ..ProjectionOptions::default()
        };
        let owners = ProjectionRunner::new(
            &self.store,
            OwnerStreams::default(),
            opts("owner", "log-streams-owners"),
        );
        let services = ProjectionRunner::new(
            &self.store,
            ServiceStreams::default(),
            opts("service", "log-streams-services"),
        );
        let (o, s) = (owners.state(), services.state());
        let mut changed = owners.applied();
        let mut changed_s = services.applied();
        let inner = shutdown.child_token();
        let a = tokio::spawn(owners.run(inner.clone()));
        let b = tokio::spawn(services.run(inner.clone()));
        let mut senders: HashMap<Target, mpsc::Sender<Outgoing>> = HashMap::new();
        // Lines dropped because a target's queue was full, per target.
        let mut full: HashMap<Target, Drops> = HashMap::new();
        'outer: loop {
            // Wait until some line has somewhere to go.
            loop {
                let wanted = any_target_in(&o, &s).unwrap_or(false);
                if wanted {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    // A runner that stopped disables its branch: the
                    // sleep still comes round.
                    Ok(()) = changed.changed() => {}
                    Ok(()) = changed_s.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            let consumer = match self
                .store
                .logs_consumer(&self.consumer, self.ack_wait, MAX_ACK_PENDING)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "log streams: no consumer on the logs stream yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            let mut messages = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "log streams: reading the logs stream failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            tracing::info!(consumer = %self.consumer, "log streams forwarding");
            let mut check = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'outer,
                    _ = check.tick() => {
                        // Connections closed while idle leave the map.
                        senders.retain(|_, tx| !tx.is_closed());
                        full.retain(|t, _| senders.contains_key(t));
                        let wanted = any_target_in(&o, &s).unwrap_or(true);
                        if !wanted {
                            // Nothing to send: the server forgets our place,
                            // so a stream set later starts at new lines.
                            drop(messages);
                            if let Err(e) = self.store.drop_logs_consumer(&self.consumer).await {
                                tracing::warn!(error = %e, "log streams: consumer not deleted");
                            }
                            tracing::info!("log streams idle: no stream is set");
                            continue 'outer;
                        }
                    }
                    next = messages.next() => match next {
                        Some(Ok(msg)) => self.hand_on(msg, &o, &s, &mut senders, &mut full).await,
                        other => {
                            // The consumer lost (a server restarting, a
                            // leader moving): read again after a pause.
                            if let Some(Err(e)) = other {
                                tracing::debug!(error = %e, "log streams: reading again");
                            }
                            tokio::select! {
                                _ = shutdown.cancelled() => break 'outer,
                                _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'outer,
                            }
                        }
                    },
                }
            }
        }
        inner.cancel();
        let _ = a.await;
        let _ = b.await;
    }

    /// Puts one line on its target's queue, or acknowledges it when it
    /// goes nowhere (or its queue is full).
    async fn hand_on(
        &self,
        msg: Message,
        owners: &RwLock<OwnerStreams>,
        services: &RwLock<ServiceStreams>,
        senders: &mut HashMap<Target, mpsc::Sender<Outgoing>>,
        full: &mut HashMap<Target, Drops>,
    ) {
        let routed = berth_eventlog::logs::kept(&msg).and_then(|kept| {
            let (o, s) = (owners.read().ok()?, services.read().ok()?);
            let (target, facts) = route(&o, &s, &kept.line.service)?;
            Some((target, frame(&kept.line, facts)))
        });
        let Some((target, bytes)) = routed else {
            let _ = msg.ack().await;
            return;
        };
        let mut out = Outgoing { bytes, msg };
        for _ in 0..2 {
            // Looked up before inserting: the target is copied once per
            // connection, not once per line.
            if !senders.contains_key(&target) {
                let (tx, rx) = mpsc::channel(QUEUE_LINES);
                tokio::spawn(send_loop(self.shared.clone(), target.clone(), rx));
                senders.insert(target.clone(), tx);
            }
            let Some(tx) = senders.get(&target) else {
                break;
            };
            match tx.try_send(out) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(o)) => {
                    let _ = o.msg.ack().await;
                    full.entry(target.clone()).or_insert_with(Drops::new).add(
                        1,
                        &target,
                        "the endpoint takes lines slower than they come",
                    );
                    return;
                }
                // The sender went idle and stopped: a new one.
                Err(mpsc::error::TrySendError::Closed(o)) => {
                    senders.remove(&target);
                    out = o;
                }
            }
        }
        let _ = out.msg.ack().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_schemas::ids::InstanceId;

    #[test]
    fn levels_come_from_logfmt_and_json_then_the_stream() {
        assert_eq!(severity(Stream::Stdout, "level=warn msg=x"), 4);
        assert_eq!(
            severity(Stream::Stdout, r#"{"level":"error","msg":"x"}"#),
            3
        );
        assert_eq!(
            severity(Stream::Stdout, r#"{"msg":"x", "level": "DEBUG"}"#),
            7
        );
        assert_eq!(severity(Stream::Stderr, "plain"), 3);
        assert_eq!(severity(Stream::Stdout, "plain"), 6);
        assert_eq!(severity(Stream::System, "==> Exited"), 6);
        // Another key ending in `level` is not it.
        assert_eq!(severity(Stream::Stdout, "loglevel=error"), 6);
        assert_eq!(severity(Stream::Stderr, "level=bogus"), 3);
    }

    #[test]
    fn a_line_is_one_rfc5424_message() {
        let facts = ServiceFacts {
            owner: OwnerId::User(berth_schemas::ids::UserId::generate()),
            name: "shop web".into(),
            service_type: ServiceType::WebService,
            stream: None,
        };
        let service = ServiceId::generate();
        let instance = InstanceId::generate();
        let line = LogLine {
            service: service.clone(),
            instance: Some(instance.clone()),
            stream: Stream::Stderr,
            line: "boom\r\nagain".into(),
            time: "2026-12-07T12:00:00.5Z".parse().unwrap(),
        };
        let got = String::from_utf8(frame(&line, &facts)).unwrap();
        assert_eq!(
            got,
            format!(
                "<11>1 2026-12-07T12:00:00.500000Z shopweb {service} {instance} web_service - boom  again\n"
            )
        );
        let deploy_line = LogLine {
            instance: None,
            stream: Stream::System,
            ..line
        };
        let got = String::from_utf8(frame(&deploy_line, &facts)).unwrap();
        assert!(got.starts_with("<14>1 "), "{got}");
        assert!(
            got.contains(&format!(" {service} - web_service - ")),
            "{got}"
        );
    }

    fn created(owner: &OwnerId, name: &str) -> Event {
        use berth_domain::service::{decide, Command, CreateService, ServiceState};
        let sealed = Sealed {
            kid: "k".into(),
            ciphertext: "c".into(),
        };
        let c = CreateService::new(
            owner.clone(),
            name,
            ServiceType::WebService,
            "registry.example/web:1",
            sealed,
            berth_schemas::ids::DeployId::generate(),
        );
        let events = decide(
            &ServiceState::default(),
            Command::Create(Box::new(c)),
            &berth_domain::aggregate::Ctx::default(),
        )
        .unwrap();
        events
            .into_iter()
            .find(|e| matches!(e, Event::ServiceCreated(_)))
            .unwrap()
    }

    fn env(aggregate: AggregateId, event: Event) -> Envelope {
        Envelope {
            id: berth_schemas::ids::EventId::generate(),
            version: event.version(),
            aggregate,
            sequence: 1,
            time: chrono::Utc::now(),
            actor: berth_schemas::Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    #[test]
    fn lines_go_to_the_override_else_the_owner_and_nowhere_once_deleted() {
        let owner = OwnerId::User(berth_schemas::ids::UserId::generate());
        let svc = ServiceId::generate();
        let (mut o, mut s) = (OwnerStreams::default(), ServiceStreams::default());
        s.apply(
            1,
            &env(AggregateId::Service(svc.clone()), created(&owner, "web")),
        );
        assert!(route(&o, &s, &svc).is_none());
        assert!(!any_target(&o, &s));
        let stream = LogStream {
            endpoint: "logs.example:6514".into(),
            token: None,
            preview: berth_schemas::model::LogStreamSetting::Send,
        };
        o.apply(
            2,
            &env(
                AggregateId::Owner(owner.clone()),
                berth_schemas::events::LogStreamChanged {
                    stream: Some(stream),
                }
                .into(),
            ),
        );
        let (t, f) = route(&o, &s, &svc).unwrap();
        assert_eq!(
            (t.endpoint.as_str(), f.name.as_str()),
            ("logs.example:6514", "web")
        );
        let drop = LogStreamOverride {
            setting: berth_schemas::model::LogStreamSetting::Drop,
            endpoint: None,
            token: None,
        };
        s.apply(
            3,
            &env(
                AggregateId::Service(svc.clone()),
                berth_schemas::events::LogStreamOverrideChanged { stream: Some(drop) }.into(),
            ),
        );
        assert!(route(&o, &s, &svc).is_none());
        s.apply(
            4,
            &env(
                AggregateId::Service(svc.clone()),
                berth_schemas::events::LogStreamOverrideChanged { stream: None }.into(),
            ),
        );
        assert!(route(&o, &s, &svc).is_some());
        s.apply(
            5,
            &env(
                AggregateId::Service(svc.clone()),
                berth_schemas::events::ServiceDeleted {}.into(),
            ),
        );
        assert!(route(&o, &s, &svc).is_none());
        assert!(any_target(&o, &s), "the owner's stream is still set");
    }
}

//! Opening the store: checking the server, then provisioning (idempotently)
//! the event stream, the work stream, the dead-letter stream and the snapshot
//! bucket. Everything else in this crate goes through an [`EventStore`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use berth_schemas::Subjects;

use crate::cache::AggregateCache;
use crate::StoreError;

/// How the store's streams are provisioned.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Stream replicas: 1 on a single server, 3 on a cluster (needs nats-server >= 2.11).
    pub replicas: usize,
    /// How long a `Nats-Msg-Id` is remembered: the window within which a
    /// retried command with the same idempotency key appends nothing.
    pub duplicate_window: Duration,
    /// How long a JetStream request or publish acknowledgement may take before
    /// it counts as failed (outcome unknown for appends).
    pub request_timeout: Duration,
    /// Attempts `execute` makes before giving up on a contended aggregate.
    pub max_execute_attempts: u32,
    /// Publish acknowledgements allowed in flight on this connection.
    pub max_ack_inflight: usize,
    /// Aggregates kept in memory so loads fetch only new commits (0
    /// disables); folded states are kept for
    /// [`STATES_PER_CACHED_AGGREGATE`] times as many.
    pub cached_aggregates: usize,
    /// Whether a long run of an aggregate's commits is read through an
    /// ordered consumer (one stream) rather than one direct get each. A
    /// connection whose permissions allow no consumers on the event log
    /// (a node's) reads one commit at a time.
    pub stream_long_reads: bool,
}

/// Folded states kept per cached aggregate. A shard of the cache that is
/// full forgets all it holds, and states are hashed over 16 shards: with
/// room for exactly as many states as there are services, about half the
/// shards overflow and forget theirs (at 10,000 services a sweep over them
/// folded ~5,000 again, beside the API index's copies, +80 MiB). Twice the
/// room holds them all; a state the API index shares costs a pointer.
pub const STATES_PER_CACHED_AGGREGATE: usize = 2;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
            max_execute_attempts: 16,
            max_ack_inflight: 10_000,
            cached_aggregates: 10_000,
            stream_long_reads: true,
        }
    }
}

/// A nats-server version, as the server announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `2.9.10`, `v2.11.0-RC.1` and the like (pre-release tags ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        Some(Self {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next().flatten().unwrap_or(0),
        })
    }

    /// True from 2.11, where per-subject optimistic concurrency holds on
    /// replicated streams (see NOTES.md: more than one winner on 2.9 R3).
    pub fn safe_replicated_concurrency(&self) -> bool {
        (self.major, self.minor) >= (2, 11)
    }

    /// Direct gets (`allow_direct`) exist from 2.9.
    pub fn supports_direct_get(&self) -> bool {
        (self.major, self.minor) >= (2, 9)
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The event store of one berth installation: one NATS connection, the
/// names under one prefix, handles on the provisioned streams. Cheap to
/// clone (one shared allocation): handlers clone it per request.
#[derive(Debug, Clone)]
pub struct EventStore {
    inner: Arc<StoreInner>,
}

impl std::ops::Deref for EventStore {
    type Target = StoreInner;

    fn deref(&self) -> &StoreInner {
        &self.inner
    }
}

/// What an [`EventStore`] shares between its clones.
#[derive(Debug)]
pub struct StoreInner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) subjects: Subjects,
    pub(crate) cfg: StoreConfig,
    pub(crate) events: stream::Stream,
    pub(crate) snapshots: kv::Store,
    pub(crate) server_version: ServerVersion,
    pub(crate) direct: bool,
    pub(crate) cache: AggregateCache,
    /// Folded states of aggregates commands were decided on.
    pub(crate) states: crate::folded::StateCache,
    /// Folded states kept across restarts (registered types only).
    pub(crate) durable: crate::durable::Durable,
    /// What this store appended lately, for read models in this process.
    pub(crate) recent: crate::recent::RecentCommits,
    /// Long reads streamed at once (each through a consumer of its own).
    pub(crate) streamed_reads: tokio::sync::Semaphore,
}

impl EventStore {
    /// Checks the server and provisions every stream and bucket (idempotent:
    /// safe to call from every binary at start-up).
    pub async fn open(
        client: async_nats::Client,
        subjects: Subjects,
        cfg: StoreConfig,
    ) -> Result<EventStore, StoreError> {
        if cfg.replicas == 0 || cfg.replicas > 5 {
            return Err(StoreError::Config(format!(
                "replicas must be 1-5, got {}",
                cfg.replicas
            )));
        }
        let info = client.server_info();
        let server_version = ServerVersion::parse(&info.version).ok_or_else(|| {
            StoreError::Unsupported(format!("unreadable server version {:?}", info.version))
        })?;
        if !info.jetstream {
            return Err(StoreError::Unsupported(
                "JetStream is not enabled on the server".to_owned(),
            ));
        }
        if cfg.replicas > 1 && !server_version.safe_replicated_concurrency() {
            return Err(StoreError::ReplicasNeedNewerServer {
                server_version: server_version.to_string(),
                replicas: cfg.replicas,
            });
        }
        let direct = server_version.supports_direct_get();
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.request_timeout)
            .max_ack_inflight(cfg.max_ack_inflight)
            .build(client.clone());

        let events = ensure_stream(
            &js,
            stream::Config {
                name: subjects.events_stream(),
                subjects: vec![subjects.events_all()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                num_replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
                allow_direct: direct,
                deny_delete: true,
                deny_purge: true,
                description: Some("berth event log: one subject per aggregate".to_owned()),
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            stream::Config {
                name: subjects.work_stream(),
                subjects: vec![subjects.work_all()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
                description: Some("berth work items handed to workers".to_owned()),
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            stream::Config {
                name: subjects.dead_letter_stream(),
                subjects: vec![subjects.dead_letter_all()],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                allow_direct: direct,
                description: Some("berth work items that exhausted their deliveries".to_owned()),
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            crate::dead_letter::advisory_stream_config(&subjects, cfg.replicas),
        )
        .await?;
        let snapshots =
            ensure_bucket(&js, &subjects.snapshot_bucket(), cfg.replicas, direct).await?;
        tracing::info!(
            nats.version = %server_version,
            stream = %subjects.events_stream(),
            replicas = cfg.replicas,
            "event store open"
        );
        let inner = Arc::new(StoreInner {
            client,
            js,
            subjects,
            cache: AggregateCache::new(cfg.cached_aggregates),
            states: crate::folded::StateCache::new(
                cfg.cached_aggregates
                    .saturating_mul(STATES_PER_CACHED_AGGREGATE),
            ),
            durable: crate::durable::Durable::default(),
            recent: crate::recent::RecentCommits::default(),
            streamed_reads: tokio::sync::Semaphore::new(crate::log::STREAMED_READS_AT_ONCE),
            cfg,
            events,
            snapshots,
            server_version,
            direct,
        });
        Ok(EventStore { inner })
    }

    /// The subject names this store uses.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The JetStream context (for code that needs raw access, like the bench).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The version of the server the store was opened against.
    pub fn server_version(&self) -> ServerVersion {
        self.server_version
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Returns once the server has processed everything this connection sent
    /// before the call (subscriptions, publications). `Client::flush` only
    /// empties the client's buffer; a request the server answers is ordered
    /// after them on the connection, so its answer proves they arrived.
    /// (A stream info request: `query_account` cannot parse 2.9's answer.)
    pub async fn server_round_trip(&self) -> Result<(), StoreError> {
        self.last_stream_seq().await.map(drop)
    }

    /// The sequence of the last message in the event stream (0 when empty).
    pub async fn last_stream_seq(&self) -> Result<u64, StoreError> {
        let info = self
            .events
            .get_info()
            .await
            .map_err(|e| StoreError::Request(e.to_string()))?;
        Ok(info.state.last_sequence)
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, StoreError> {
    let name = config.name.clone();
    let provision = |e: &jetstream::context::CreateStreamError| {
        StoreError::provision(&name, crate::error::stream_request_transient(e), e)
    };
    if let Ok(existing) = js.get_stream(&config.name).await {
        return check_existing(existing, &config);
    }
    match js.create_stream(config.clone()).await {
        Ok(created) => Ok(created),
        // Another binary may have created it between our get and create.
        Err(e) => match js.get_stream(&config.name).await {
            Ok(existing) => check_existing(existing, &config),
            Err(_) => Err(provision(&e)),
        },
    }
}

fn check_existing(
    existing: stream::Stream,
    config: &stream::Config,
) -> Result<stream::Stream, StoreError> {
    let have = &existing.cached_info().config;
    if have.num_replicas.max(1) != config.num_replicas.max(1) {
        return Err(StoreError::Config(format!(
            "stream {} exists with {} replicas, configured {}",
            config.name, have.num_replicas, config.num_replicas
        )));
    }
    Ok(existing)
}

/// Creates the snapshot bucket's stream by hand: async-nats' `create_key_value`
/// fails on 2.9 (it queries account fields 2.9 does not send, NOTES.md).
async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    direct: bool,
) -> Result<kv::Store, StoreError> {
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: direct,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            description: Some("berth projection snapshots".to_owned()),
            ..Default::default()
        },
    )
    .await?;
    // The stream was just found or made: not finding the bucket now is
    // the server's "not now".
    js.get_key_value(bucket)
        .await
        .map_err(|e| StoreError::provision(&format!("KV_{bucket}"), true, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_gate_replicas() {
        let v = ServerVersion::parse("2.9.10");
        assert_eq!(
            v,
            Some(ServerVersion {
                major: 2,
                minor: 9,
                patch: 10
            })
        );
        assert!(!v.is_some_and(|v| v.safe_replicated_concurrency()));
        assert!(
            ServerVersion::parse("v2.11.0-RC.1").is_some_and(|v| v.safe_replicated_concurrency())
        );
        assert!(ServerVersion::parse("2.15.1").is_some_and(|v| v.safe_replicated_concurrency()));
        assert!(ServerVersion::parse("garbage").is_none());
    }
}

//! Appending to and loading one aggregate, and the load → decide → append
//! loop. One decision is one NATS message (a [`Commit`]) published with the
//! expected per-subject sequence and the idempotency key as `Nats-Msg-Id`,
//! so it is atomic, ordered and deduplicated on every server version.

use std::sync::Arc;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::DirectGetErrorKind;
use berth_schemas::ids::{DeployId, EventId};
use berth_schemas::{Actor, AggregateId, Commit, Envelope, Event};

use crate::{AppendError, EventStore, StoreError};

/// Where an aggregate stands: what an append must name as expected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Stream sequence of the aggregate's last commit; 0 for a new aggregate.
    pub stream_seq: u64,
    /// Events the aggregate holds so far (the last envelope's `sequence`).
    pub events: u64,
}

impl Version {
    /// An aggregate with no events yet.
    pub const NEW: Version = Version {
        stream_seq: 0,
        events: 0,
    };
}

/// One event to append, with who caused it and why.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The fact.
    pub event: Event,
    /// Who caused it.
    pub actor: Actor,
    /// The deploy it belongs to, if any.
    pub correlation_id: Option<DeployId>,
    /// The event or command id that caused it.
    pub causation_id: Option<String>,
}

impl NewEvent {
    /// An event caused by `actor`, correlated with the deploy it names
    /// ([`Event::deploy`]), with no causation.
    pub fn new(event: impl Into<Event>, actor: Actor) -> Self {
        let event = event.into();
        Self {
            correlation_id: event.deploy().cloned(),
            event,
            actor,
            causation_id: None,
        }
    }

    /// Sets the deploy this event belongs to (for events that do not name
    /// one themselves).
    pub fn correlated(mut self, deploy: DeployId) -> Self {
        self.correlation_id = Some(deploy);
        self
    }

    /// Sets the event or command id that caused this one.
    pub fn caused_by(mut self, cause: impl Into<String>) -> Self {
        self.causation_id = Some(cause.into());
        self
    }
}

/// A successful append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The aggregate's version after the append: expect this next time.
    pub version: Version,
    /// The envelopes as stored (for a duplicate: those of the original
    /// append); shared with the store's cache of the aggregate, not copied.
    pub events: Arc<[Envelope]>,
    /// True when the idempotency key had been used already: nothing new was
    /// written and `version`/`events` describe the original append.
    pub duplicate: bool,
}

impl Appended {
    /// What an earlier append with the same key stored, at `stream_seq`.
    fn duplicate_of(stream_seq: u64, original: Commit) -> Self {
        Self {
            version: Version {
                stream_seq,
                events: original.events.last().map_or(0, |e| e.sequence),
            },
            events: original.events.into(),
            duplicate: true,
        }
    }
}

/// An aggregate's events and its version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Loaded {
    /// Every event, in order.
    pub events: Vec<Envelope>,
    /// Where the aggregate stands.
    pub version: Version,
}

/// The outcome of an append the server acknowledged as a duplicate of the
/// one at `seq`: what that original stored, read back. When it cannot be
/// read, the outcome is unknown (the caller retries with the same key): a
/// republished command builds its events anew (a new deploy id), and
/// reporting those would name something that was never stored.
fn duplicate_outcome(
    aggregate: &AggregateId,
    seq: u64,
    original: Result<Commit, StoreError>,
) -> Result<Appended, AppendError> {
    match original {
        Ok(original) => Ok(Appended::duplicate_of(seq, original)),
        Err(e) => Err(AppendError::OutcomeUnknown {
            aggregate: aggregate.clone(),
            reason: format!(
                "a duplicate of stream sequence {seq}, whose commit could not be read: {e}"
            ),
        }),
    }
}

impl EventStore {
    /// Appends the events of one decision as one message, if and only if the
    /// aggregate is still at `expected`. Envelope sequences continue from
    /// `expected.events + 1`. A repeated `idempotency_key` (within the
    /// duplicate window) appends nothing and reports the original append.
    pub async fn append(
        &self,
        aggregate: &AggregateId,
        expected: Version,
        events: Vec<NewEvent>,
        idempotency_key: &str,
    ) -> Result<Appended, AppendError> {
        let time = chrono::Utc::now();
        let envelopes = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| envelope(aggregate, expected.events + 1 + i as u64, time, e))
            .collect();
        self.commit(aggregate, expected, envelopes, idempotency_key)
            .await
    }

    /// Publishes `envelopes` (sequences already continuing from
    /// `expected.events + 1`) as one commit at `expected`: the one write
    /// path of [`EventStore::append`] and the command path.
    pub(crate) async fn commit(
        &self,
        aggregate: &AggregateId,
        expected: Version,
        envelopes: Arc<[Envelope]>,
        idempotency_key: &str,
    ) -> Result<Appended, AppendError> {
        if envelopes.is_empty() {
            return Err(AppendError::Empty);
        }
        if idempotency_key.is_empty()
            || idempotency_key.len() > 256
            || !idempotency_key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(AppendError::BadIdempotencyKey);
        }
        let payload = bytes::Bytes::from(Commit::encode_events(&envelopes)?);
        let subject = self.subjects.aggregate(aggregate);
        // A read model in this process may be handed the message before
        // the acknowledgement arrives: it finds these envelopes by the bytes.
        let _in_flight = self.recent.in_flight(&payload, &envelopes);
        let msg = PublishMessage::build()
            .payload(payload)
            .message_id(idempotency_key)
            .expected_last_subject_sequence(expected.stream_seq);
        let unknown = |reason: String| AppendError::OutcomeUnknown {
            aggregate: aggregate.clone(),
            reason,
        };
        let refused = |reason: String| AppendError::Refused {
            aggregate: aggregate.clone(),
            reason,
        };
        let ack_future = match self.js.send_publish(subject, msg).await {
            Ok(f) => f,
            Err(e) => {
                return Err(match e.kind() {
                    PublishErrorKind::MaxPayloadExceeded => refused(e.to_string()),
                    _ => unknown(e.to_string()),
                })
            }
        };
        let ack = match ack_future.await {
            Ok(ack) => ack,
            Err(e) => {
                return match e.kind() {
                    _ if is_wrong_last_sequence(&e) => {
                        let subject = self.subjects.aggregate(aggregate);
                        match self
                            .landed_already(&subject, expected, idempotency_key)
                            .await
                        {
                            Ok(Some((seq, original))) => Ok(Appended::duplicate_of(seq, original)),
                            Ok(None) => Err(AppendError::Conflict {
                                aggregate: aggregate.clone(),
                                expected,
                            }),
                            Err(e) => Err(unknown(format!(
                                "conflict, and checking whether this key landed failed: {e}"
                            ))),
                        }
                    }
                    PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::WrongLastMessageId => {
                        Err(refused(e.to_string()))
                    }
                    // "No stream" is how the client reads "no responders":
                    // in a cluster, while a killed server's stream leadership
                    // moves, nobody answers the subject for a moment. The
                    // store provisioned the stream at open, so this passes
                    // (the fault suite dead-lettered deploys on it while it
                    // was a refusal); nothing was stored, so a retry with the
                    // same key is safe.
                    PublishErrorKind::StreamNotFound => Err(unknown(e.to_string())),
                    // Timeouts, broken pipes, and server errors we cannot
                    // classify: the retry-with-the-same-key path is safe for all.
                    _ => Err(unknown(e.to_string())),
                };
            }
        };
        if ack.duplicate {
            let original = self.get_commit(ack.sequence).await;
            return duplicate_outcome(aggregate, ack.sequence, original);
        }
        let events_count = envelopes.last().map_or(expected.events, |e| e.sequence);
        let version = Version {
            stream_seq: ack.sequence,
            events: events_count,
        };
        self.cache.extend(aggregate, expected, version, &envelopes);
        self.recent.put(ack.sequence, &envelopes);
        Ok(Appended {
            version,
            events: envelopes,
            duplicate: false,
        })
    }

    /// Every event of one aggregate and its current version.
    ///
    /// One direct get of the subject's last message tells the version; the
    /// events before it come from the store's cache of aggregates (the log
    /// is append-only, so a cached prefix stays true) plus one direct get
    /// per commit not cached yet. An ordered consumer per load was tried and
    /// dropped: ephemeral consumers linger after use and a busy writer hits
    /// the server's consumer limit (error 10026).
    pub async fn load(&self, aggregate: &AggregateId) -> Result<Loaded, StoreError> {
        self.load_keeping(aggregate, true).await
    }

    /// [`EventStore::load`], keeping what was read in the cache of
    /// aggregates only if `keep`: a load folded at once into a kept state
    /// is not read again while that state is kept (commands decide on the
    /// state), so its events would only take the room of others.
    async fn load_keeping(
        &self,
        aggregate: &AggregateId,
        keep: bool,
    ) -> Result<Loaded, StoreError> {
        let subject = self.subjects.aggregate(aggregate);
        let Some(last) = self.get_last_for_subject(&subject).await? else {
            self.cache.forget(aggregate);
            return Ok(Loaded::default());
        };
        let last_seq = last.sequence;
        let cached = self.cache.get(aggregate);
        if let Some(c) = &cached {
            if c.version.stream_seq == last_seq {
                return Ok(c.clone());
            }
        }
        let last_commit = decode_commit(&last)?;
        let events_total = last_commit.events.last().map_or(0, |e| e.sequence);
        let version = Version {
            stream_seq: last_seq,
            events: events_total,
        };
        let first_of_last = last_commit.events.first().map_or(1, |e| e.sequence);
        let mut loaded = match cached {
            // The whole aggregate is in its last commit: nothing before it.
            _ if first_of_last == 1 => Loaded::default(),
            Some(c) if c.version.stream_seq < last_seq => c,
            _ => Loaded::default(),
        };
        if first_of_last > 1 {
            self.read_commits(&subject, &mut loaded, last_seq).await?;
        }
        loaded.events.extend(last_commit.events);
        loaded.version = version;
        if keep {
            self.cache.put(aggregate, &loaded);
        }
        Ok(loaded)
    }

    /// The events appended to `aggregate` after `after`, and the version
    /// now: what a caller holding state folded up to `after` needs to catch
    /// up, without reading (or copying) the history before it. One direct
    /// get per newer commit.
    pub async fn load_after(
        &self,
        aggregate: &AggregateId,
        after: Version,
    ) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded {
            events: Vec::new(),
            version: after,
        };
        let subject = self.subjects.aggregate(aggregate);
        self.read_commits(&subject, &mut loaded, u64::MAX).await?;
        Ok(loaded)
    }

    /// Adds to `loaded` every commit on `subject` after `loaded.version` and
    /// before stream sequence `before`, one direct get each, moving the
    /// version along.
    async fn read_commits(
        &self,
        subject: &str,
        loaded: &mut Loaded,
        before: u64,
    ) -> Result<(), StoreError> {
        let mut from = loaded.version.stream_seq + 1;
        let mut gets = 0;
        while let Some(msg) = self.get_next_for_subject(subject, from).await? {
            if msg.sequence >= before {
                return Ok(());
            }
            from = msg.sequence + 1;
            let commit = decode_commit(&msg)?;
            add_commit(loaded, msg.sequence, commit);
            gets += 1;
            if gets == DIRECT_GETS_BEFORE_STREAMING && self.cfg.stream_long_reads {
                // As many long reads as the permits allow are streamed; the
                // rest go on one get at a time rather than wait.
                if let Ok(_permit) = self.streamed_reads.try_acquire() {
                    return self.stream_commits(subject, loaded, before).await;
                }
            }
        }
        Ok(())
    }

    /// [`Self::read_commits`] for a long run of commits: one ordered
    /// consumer on the subject streams them, instead of a round trip each
    /// (a cold read of a service with a hundred thousand deploys took
    /// minutes one get at a time). The consumer is deleted once read: left
    /// to its inactivity threshold (30 s) the consumers of many long reads
    /// pile up, and a server refuses more than it allows on a stream
    /// (nats-server 2.15: 1,000), failing every read after.
    async fn stream_commits(
        &self,
        subject: &str,
        loaded: &mut Loaded,
        before: u64,
    ) -> Result<(), StoreError> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let request = |e: String| StoreError::Request(format!("streaming {subject}: {e}"));
        let consumer = self
            .events
            .create_consumer(OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: loaded.version.stream_seq + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| request(e.to_string()))?;
        let name = consumer.cached_info().name.clone();
        let read = if consumer.cached_info().num_pending == 0 {
            Ok(())
        } else {
            self.stream_into(subject, consumer, loaded, before).await
        };
        // Best effort: one that stays goes after its inactivity threshold.
        if let Err(e) = self.events.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "streamed read's consumer not deleted");
        }
        read
    }

    /// Reads `consumer`'s messages into `loaded` up to `before`.
    async fn stream_into(
        &self,
        subject: &str,
        consumer: async_nats::jetstream::consumer::Consumer<
            async_nats::jetstream::consumer::pull::OrderedConfig,
        >,
        loaded: &mut Loaded,
        before: u64,
    ) -> Result<(), StoreError> {
        use futures::StreamExt;
        let request = |e: String| StoreError::Request(format!("streaming {subject}: {e}"));
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| request(e.to_string()))?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| request(e.to_string()))?;
            let info = msg.info().map_err(|e| request(e.to_string()))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq >= before {
                break;
            }
            let commit = Commit::decode(&msg.payload).map_err(|source| StoreError::Decode {
                stream_seq: seq,
                source,
            })?;
            add_commit(loaded, seq, commit);
            if pending == 0 {
                break;
            }
        }
        Ok(())
    }

    /// After a conflict: did this very command land already (an earlier try
    /// whose ack was lost)? If it did, it passed the expected-sequence check,
    /// so it is the subject's first message after `expected`; its
    /// `Nats-Msg-Id` tells. The server checks the expected sequence before
    /// the duplicate window (seen on 2.9), so such a retry gets a conflict,
    /// not a duplicate ack.
    async fn landed_already(
        &self,
        subject: &str,
        expected: Version,
        key: &str,
    ) -> Result<Option<(u64, Commit)>, StoreError> {
        let Some(msg) = self
            .get_next_for_subject(subject, expected.stream_seq + 1)
            .await?
        else {
            return Ok(None);
        };
        let id = msg
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned());
        if id.as_deref() != Some(key) {
            return Ok(None);
        }
        Ok(Some((msg.sequence, decode_commit(&msg)?)))
    }

    /// [`EventStore::state`] for a consumer handling the commit at stream
    /// sequence `seen` of `aggregate`: a state that does not hold it yet
    /// (read from a copy of the log that is behind, such as a server that
    /// rejoined after a partition) is a transient [`StoreError::Request`],
    /// to be read again later — never a state to decide "nothing to do"
    /// on, which would drop the work.
    pub async fn state_holding<S, F>(
        &self,
        aggregate: &AggregateId,
        fold: F,
        seen: u64,
    ) -> Result<(Arc<S>, Version), StoreError>
    where
        S: Default + Clone + Send + Sync + 'static,
        F: Fn(S, &Envelope) -> S,
    {
        let (state, version) = self.state(aggregate, fold).await?;
        if version.stream_seq < seen {
            return Err(StoreError::Request(format!(
                "the copy of the log that answered is behind (at {} for {aggregate}, {seen} handled)",
                version.stream_seq
            )));
        }
        Ok((state, version))
    }

    /// The state of `aggregate` folded with `fold`, as of the log's end,
    /// and its version. From the store's folded state when it has one:
    /// only the commits appended since are read and folded.
    pub async fn state<S, F>(
        &self,
        aggregate: &AggregateId,
        fold: F,
    ) -> Result<(Arc<S>, Version), StoreError>
    where
        S: Default + Clone + Send + Sync + 'static,
        F: Fn(S, &Envelope) -> S,
    {
        let subject = self.subjects.aggregate(aggregate);
        let Some(last) = self.get_last_for_subject(&subject).await? else {
            // Not in the copy of the log that answered. The log only grows:
            // a state this store holds (it read or appended it) is nearer
            // the truth than none.
            if let Some(held) = self.states.get::<S>(aggregate) {
                return Ok((held.1, held.0));
            }
            self.cache.forget(aggregate);
            self.states.forget(aggregate);
            return Ok((Arc::new(S::default()), Version::NEW));
        };
        let mut known = self.states.get::<S>(aggregate);
        if known.is_none() {
            // Cold: start from a stored fold, if one is kept for `S`.
            known = self.stored_state::<S>(aggregate, last.sequence).await;
        }
        if let Some((version, state)) = known {
            // Equal: nothing new. Later than the log's last commit: the copy
            // that answered is behind what this store already holds (a
            // server that rejoined after a partition), and the log only
            // grows, so reads never go back to an older state.
            if version.stream_seq >= last.sequence {
                self.states.put(aggregate, version, Arc::clone(&state));
                return Ok((state, version));
            }
            if version.stream_seq < last.sequence {
                // What came between, then the last commit we already hold.
                let mut newer = Loaded {
                    events: Vec::new(),
                    version,
                };
                self.read_commits(&subject, &mut newer, last.sequence)
                    .await?;
                let last_commit = decode_commit(&last)?;
                let to = Version {
                    stream_seq: last.sequence,
                    events: last_commit
                        .events
                        .last()
                        .map_or(newer.version.events, |e| e.sequence),
                };
                newer.events.extend(last_commit.events);
                let state = self.advance(aggregate, version, state, to, &newer.events, &fold);
                return Ok((state, to));
            }
        }
        let loaded = self.load_keeping(aggregate, false).await?;
        let state = Arc::new(loaded.events.iter().fold(S::default(), &fold));
        self.keep_state(aggregate, loaded.version, &state);
        Ok((state, loaded.version))
    }

    /// Moves `state`, folded up to `from`, on to `to` by folding `events`
    /// (what was appended between) and records it as the aggregate's folded
    /// state. The store's own handle on it is let go first, so a state
    /// nobody else holds is folded in place rather than copied. A spare
    /// copy kept for batches (see [`EventStore::execute_batch`]) moves along.
    pub(crate) fn advance<S, F>(
        &self,
        aggregate: &AggregateId,
        from: Version,
        state: Arc<S>,
        to: Version,
        events: &[Envelope],
        fold: F,
    ) -> Arc<S>
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, &Envelope) -> S,
    {
        if let Some((version, cached)) = self.states.take::<S>(aggregate) {
            if version != from {
                // Someone else's, newer (or unrelated): it stays.
                self.states.put(aggregate, version, cached);
            }
        }
        let state = Arc::try_unwrap(state).unwrap_or_else(|shared| S::clone(&shared));
        let state = Arc::new(events.iter().fold(state, &fold));
        self.keep_state(aggregate, to, &state);
        if let Some((version, spare)) = self.states.take::<crate::command::Spare<S>>(aggregate) {
            if version == from {
                let spare = Arc::unwrap_or_clone(spare).advance(events, &fold);
                self.states.put(aggregate, to, Arc::new(spare));
            } else {
                // Already moved on (the batch that made it put it at `to`).
                self.states.put(aggregate, version, spare);
            }
        }
        state
    }

    /// Lets go of `aggregate`'s folded state of type `S` (a fold made for
    /// one look, too big to keep).
    pub fn forget_state<S: Send + Sync + 'static>(&self, aggregate: &AggregateId) {
        self.states.take::<S>(aggregate);
    }

    /// The folded states this store decides commands on, for a read model
    /// in the same process to share (see [`crate::FoldedStates`]).
    pub fn folded_states(&self) -> crate::FoldedStates {
        crate::FoldedStates::new(self.states.clone())
    }

    /// Remembers `state` as the aggregate's fold at `version` (and stores
    /// it, when its type is kept across restarts and it grew enough).
    pub(crate) fn keep_state<S: Send + Sync + 'static>(
        &self,
        aggregate: &AggregateId,
        version: Version,
        state: &Arc<S>,
    ) {
        self.states.put(aggregate, version, Arc::clone(state));
        self.maybe_store_state(aggregate, version, state);
    }

    /// Decodes the commit stored at one stream sequence.
    pub async fn get_commit(&self, stream_seq: u64) -> Result<Commit, StoreError> {
        let msg = if self.direct_reads() {
            self.events
                .direct_get(stream_seq)
                .await
                .map_err(|e| StoreError::Request(e.to_string()))?
        } else {
            self.events
                .get_raw_message(stream_seq)
                .await
                .map_err(|e| StoreError::Request(e.to_string()))?
        };
        decode_commit(&msg)
    }

    /// The commits of `aggregate` after stream sequence `after` and up to
    /// `upto`, each with its stream sequence, at most `limit` of them: what
    /// a follower that saw the aggregate up to `after` missed (a live view
    /// resumed from its last event id). One direct get per commit.
    pub async fn commits_between(
        &self,
        aggregate: &AggregateId,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Commit)>, StoreError> {
        let subject = self.subjects.aggregate(aggregate);
        let mut out = Vec::new();
        let mut from = after + 1;
        while out.len() < limit && from <= upto {
            let Some(msg) = self.get_next_for_subject(&subject, from).await? else {
                break;
            };
            if msg.sequence > upto {
                break;
            }
            from = msg.sequence + 1;
            out.push((msg.sequence, decode_commit(&msg)?));
        }
        Ok(out)
    }

    /// Direct gets may be answered by a lagging replica; on replicated
    /// streams reads go to the leader so a load is never older than an ack.
    fn direct_reads(&self) -> bool {
        self.direct && self.cfg.replicas == 1
    }

    async fn get_last_for_subject(
        &self,
        subject: &str,
    ) -> Result<Option<StreamMessage>, StoreError> {
        if self.direct_reads() {
            match self.events.direct_get_last_for_subject(subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::Request(e.to_string())),
            }
        } else {
            match self.events.get_last_raw_message_by_subject(subject).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(StoreError::Request(e.to_string())),
            }
        }
    }

    async fn get_next_for_subject(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<StreamMessage>, StoreError> {
        if self.direct_reads() {
            match self
                .events
                .direct_get_next_for_subject(subject, Some(from))
                .await
            {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::Request(e.to_string())),
            }
        } else {
            match self
                .events
                .raw_message_builder()
                .next_by_subject(subject)
                .sequence(from)
                .send()
                .await
            {
                Ok(m) => Ok(Some(m)),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(StoreError::Request(e.to_string())),
            }
        }
    }
}

/// One event of a commit as stored: `new` at `sequence` of `aggregate`.
pub(crate) fn envelope(
    aggregate: &AggregateId,
    sequence: u64,
    time: chrono::DateTime<chrono::Utc>,
    new: NewEvent,
) -> Envelope {
    Envelope {
        id: EventId::generate(),
        version: new.event.version(),
        aggregate: aggregate.clone(),
        sequence,
        time,
        actor: new.actor,
        correlation_id: new.correlation_id,
        causation_id: new.causation_id,
        event: new.event,
    }
}

/// The commit a stored message carries; a decode error names its sequence.
/// Commits read one direct get at a time before the rest are streamed.
const DIRECT_GETS_BEFORE_STREAMING: usize = 64;
/// Long reads a store streams at once, each through its own consumer (a
/// server limits the consumers of a stream).
pub(crate) const STREAMED_READS_AT_ONCE: usize = 64;

/// Appends one commit read at `stream_seq` to `loaded`.
fn add_commit(loaded: &mut Loaded, stream_seq: u64, commit: Commit) {
    if let Some(last) = commit.events.last() {
        loaded.version = Version {
            stream_seq,
            events: last.sequence,
        };
    }
    loaded.events.extend(commit.events);
}

fn decode_commit(msg: &StreamMessage) -> Result<Commit, StoreError> {
    Commit::decode(&msg.payload).map_err(|source| StoreError::Decode {
        stream_seq: msg.sequence,
        source,
    })
}

/// The expected-sequence check failed. async-nats maps only code 10071; a
/// clustered 2.11+ leader answers 10164 ("wrong last sequence", no number).
fn is_wrong_last_sequence(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|js| {
            js.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || js.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_schemas::events::InstanceCountChanged;
    use berth_schemas::ids::ServiceId;
    use berth_schemas::Actor;

    #[test]
    fn a_duplicate_reports_what_the_original_stored_or_that_its_outcome_is_unknown() {
        let a = AggregateId::Service(ServiceId::generate());
        let first = envelope(
            &a,
            4,
            chrono::Utc::now(),
            NewEvent::new(
                berth_schemas::Event::from(InstanceCountChanged { from: 1, to: 2 }),
                Actor::system("test"),
            ),
        );
        let original = Commit {
            events: vec![first.clone()],
        };
        let told = duplicate_outcome(&a, 17, Ok(original)).unwrap();
        assert!(told.duplicate);
        assert_eq!(
            told.version,
            Version {
                stream_seq: 17,
                events: 4
            }
        );
        assert_eq!(told.events[0].id, first.id);
        // Unreadable: not this try's events (a republished command's are
        // new), but an outcome the caller retries with the same key.
        let unread = duplicate_outcome(&a, 17, Err(StoreError::Request("timed out".into())));
        assert!(unread.is_err_and(|e| e.is_outcome_unknown()));
    }

    #[test]
    fn envelopes_encode_as_a_commit_and_decode_back() {
        let a = AggregateId::Service(ServiceId::generate());
        let events: Vec<Envelope> = (1..=3)
            .map(|i| {
                envelope(
                    &a,
                    i,
                    chrono::Utc::now(),
                    NewEvent::new(
                        berth_schemas::Event::from(InstanceCountChanged {
                            from: i as u32,
                            to: i as u32 + 1,
                        }),
                        Actor::system("test"),
                    ),
                )
            })
            .collect();
        let bytes = Commit::encode_events(&events).unwrap();
        assert_eq!(Commit::decode(&bytes).unwrap(), Commit { events });
    }
}

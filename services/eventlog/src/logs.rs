//! The logs stream: instance output kept for a while, so logs have history
//! and not only a live tail (SPEC §12). Nodes publish each line on core
//! NATS (`subjects.logs(service)`, [`LogLine`] as JSON); this stream
//! captures those subjects. Nodes never write to it through JetStream, nor
//! read it: only the control plane (the API) provisions and reads it.
//!
//! Its bounds, all enforced by the server:
//! - age: a line older than [`LogLimits::max_age`] is dropped;
//! - per service: one subject per service, at most
//!   [`LogLimits::lines_per_service`] messages each, and no message larger
//!   than [`MAX_LOG_MESSAGE`] (the stream refuses it), so a service holds
//!   at most `lines_per_service × MAX_LOG_MESSAGE` bytes of payload —
//!   whatever number of instances it went through;
//! - in all: [`LogLimits::max_bytes`], the oldest lines of any service
//!   going first.
//!
//! JetStream counts messages, not bytes, per subject: a service writing
//! short lines keeps as many lines as one writing long ones, so it holds
//! fewer bytes than its share.

use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream;
use berth_schemas::ids::ServiceId;
use berth_schemas::logs::{LogLine, MAX_LOG_MESSAGE};
use berth_schemas::Subjects;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::{EventStore, StoreError};

/// How long a read may wait for the server's next message.
const READ_WAIT: Duration = Duration::from_secs(5);

/// What the logs stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Lines older than this are dropped.
    pub max_age: Duration,
    /// The bytes each service may hold, counted as whole messages of
    /// [`MAX_LOG_MESSAGE`] bytes (see [`LogLimits::lines_per_service`]).
    pub bytes_per_service: u64,
    /// The bytes the whole stream may hold (per replica); `None`: no bound
    /// but the per-service ones.
    pub max_bytes: Option<u64>,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            bytes_per_service: 256 << 20,
            max_bytes: Some(10 << 30),
        }
    }
}

impl LogLimits {
    /// The messages each service keeps: as many of the largest messages
    /// as fit in [`LogLimits::bytes_per_service`] (at least one).
    pub fn lines_per_service(&self) -> i64 {
        let lines = self.bytes_per_service / MAX_LOG_MESSAGE as u64;
        i64::try_from(lines).unwrap_or(i64::MAX).max(1)
    }

    /// The stream's configuration under `subjects`, with `replicas`.
    pub fn stream_config(&self, subjects: &Subjects, replicas: usize) -> stream::Config {
        stream::Config {
            name: subjects.logs_stream(),
            subjects: vec![subjects.logs_all()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            max_messages_per_subject: self.lines_per_service(),
            max_bytes: self
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_messages: -1,
            max_message_size: i32::try_from(MAX_LOG_MESSAGE).unwrap_or(i32::MAX),
            num_replicas: replicas,
            // Lines carry no message ids; the window only costs memory.
            duplicate_window: Duration::from_secs(60),
            deny_delete: true,
            description: Some("berth instance logs: one subject per service".to_owned()),
            ..Default::default()
        }
    }
}

/// A reader's consumer: no acks, in memory, one replica, gone soon after
/// it is left (even if its delete is lost).
pub(crate) fn reader_config() -> pull::Config {
    pull::Config {
        ack_policy: AckPolicy::None,
        inactive_threshold: Duration::from_secs(10),
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Reads what an ephemeral consumer made with `config` on `stream` has,
/// oldest first, handing each message to `visit` until it breaks or
/// nothing is pending; then deletes the consumer. `request` words an error.
pub(crate) async fn read_once(
    stream: &stream::Stream<()>,
    config: pull::Config,
    request: &(dyn Fn(&dyn std::fmt::Display) -> StoreError + Sync),
    mut visit: impl FnMut(
        &async_nats::jetstream::Message,
        &async_nats::jetstream::message::Info<'_>,
    ) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| request(&e))?;
    let name = consumer.cached_info().name.clone();
    let read = async {
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.map_err(|e| request(&e))?;
        loop {
            let next = tokio::time::timeout(READ_WAIT, messages.next())
                .await
                .map_err(|_| request(&"timed out waiting for the server"))?;
            let Some(msg) = next else {
                return Ok(());
            };
            let msg = msg.map_err(|e| request(&e))?;
            let info = msg.info().map_err(|e| request(&e))?;
            if visit(&msg, &info).is_break() || info.pending == 0 {
                return Ok(());
            }
        }
    };
    let outcome = read.await;
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "reader not deleted; it expires");
    }
    outcome
}

/// Whether `have` (as the server reports it) already keeps what `want` says.
fn same_limits(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.max_age == want.max_age
        && have.max_messages_per_subject == want.max_messages_per_subject
        && have.max_bytes == want.max_bytes
        && have.max_message_size == want.max_message_size
        && have.num_replicas.max(1) == want.num_replicas.max(1)
        && have.discard == want.discard
}

/// One kept line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLine {
    /// Its stream sequence (unique in the stream).
    pub seq: u64,
    /// When the stream stored it (what reads are ordered and bounded by).
    pub time: DateTime<Utc>,
    /// The line as the node sent it.
    pub line: LogLine,
}

impl EventStore {
    /// Creates the logs stream with `limits`, or brings an existing one to
    /// them (settings changed since it was made). Idempotent. Replicas
    /// follow the event log's.
    pub async fn provision_logs(&self, limits: &LogLimits) -> Result<(), StoreError> {
        self.provision_stream(limits.stream_config(&self.subjects, self.cfg.replicas))
            .await
    }

    /// Creates a stream berth keeps beside the log (logs, metrics) as
    /// `want` says, or brings an existing one to `want`'s limits (its
    /// settings changed since it was made). Idempotent; safe when another
    /// process provisions it at the same time.
    pub async fn provision_stream(&self, want: stream::Config) -> Result<(), StoreError> {
        let provision = |e: &async_nats::jetstream::context::CreateStreamError| {
            StoreError::provision(&want.name, crate::error::stream_request_transient(e), e)
        };
        if let Ok(existing) = self.js.get_stream(&want.name).await {
            if same_limits(&existing.cached_info().config, &want) {
                return Ok(());
            }
            self.js
                .update_stream(&want)
                .await
                .map_err(|e| provision(&e))?;
            tracing::info!(stream = %want.name, "stream limits updated");
            return Ok(());
        }
        match self.js.create_stream(want.clone()).await {
            Ok(_) => Ok(()),
            // Another process may have created it between our get and create.
            Err(e) => match self.js.get_stream(&want.name).await {
                Ok(_) => Ok(()),
                Err(_) => Err(provision(&e)),
            },
        }
    }

    /// The kept lines of `service` stored from `from` (inclusive) until
    /// `until` (exclusive), oldest first, each given to `visit` until it
    /// breaks. A message that is not a [`LogLine`] is skipped.
    ///
    /// One ephemeral consumer on the service's subject, deleted afterwards;
    /// the work is bounded by what one service may hold.
    pub async fn read_logs(
        &self,
        service: &ServiceId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        mut visit: impl FnMut(KeptLine) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        if from >= until {
            return Ok(());
        }
        let subject = self.subjects.logs(service);
        let request = |e: &dyn std::fmt::Display| {
            StoreError::Request(format!("reading the logs of {service}: {e}"))
        };
        let stream = self.logs_stream().await.map_err(|e| request(&e))?;
        let config = pull::Config {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartTime { start_time: from },
            ..reader_config()
        };
        read_once(&stream, config, &request, |msg, info| {
            if info.published >= until {
                return ControlFlow::Break(());
            }
            match kept_line(msg, info) {
                Some(kept) => visit(kept),
                None => ControlFlow::Continue(()),
            }
        })
        .await
    }

    /// The logs stream (no request for its info).
    async fn logs_stream(
        &self,
    ) -> Result<stream::Stream<()>, async_nats::jetstream::context::GetStreamError> {
        self.js
            .get_stream_no_info(self.subjects.logs_stream())
            .await
    }

    /// Every line the logs stream stores after sequence `after` (`None`:
    /// after its last line now), of every service, in the stream's order,
    /// as long as the returned stream is read. One ordered consumer
    /// (recreated by the client after a gap, and gone from the server soon
    /// after the stream is dropped), so a process following many services'
    /// lines costs the server one consumer, on every server version (one
    /// filter subject). A caller that lost it resumes with the sequence of
    /// the last line it had: nothing is skipped or repeated.
    ///
    /// A message that is not a [`LogLine`], or whose line names another
    /// service than its subject, is skipped: the subject is what the
    /// stream keeps and reads by.
    pub async fn follow_logs(
        &self,
        after: Option<u64>,
    ) -> Result<
        impl futures::Stream<Item = Result<KeptLine, StoreError>> + Send + 'static,
        StoreError,
    > {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        let request =
            |e: &dyn std::fmt::Display| StoreError::Request(format!("following the logs: {e}"));
        let config = |after: u64| OrderedConfig {
            filter_subject: self.subjects.logs_all(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        };
        // One request for the stream: with its info when its last
        // sequence is where to start.
        let consumer = match after {
            Some(seq) => {
                let stream = self.logs_stream().await.map_err(|e| request(&e))?;
                stream.create_consumer(config(seq)).await
            }
            None => {
                let stream = self.js.get_stream(self.subjects.logs_stream());
                let stream = stream.await.map_err(|e| request(&e))?;
                let last = stream.cached_info().state.last_sequence;
                stream.create_consumer(config(last)).await
            }
        }
        .map_err(|e| request(&e))?;
        let messages = consumer.messages().await.map_err(|e| request(&e))?;
        Ok(messages.filter_map(move |msg| {
            let kept = match msg {
                Err(e) => Some(Err(request(&e))),
                Ok(msg) => msg
                    .info()
                    .ok()
                    .and_then(|info| kept_line(&msg, &info))
                    .map(Ok),
            };
            std::future::ready(kept)
        }))
    }
}

impl EventStore {
    /// The durable consumer `name` on the logs stream, made when missing
    /// (starting at the next line stored): explicit acks, redelivery after
    /// `ack_wait`, at most `max_ack_pending` lines unacknowledged. For a
    /// reader that must see every line once it started, across its own
    /// restarts (the notifier's log streams).
    pub async fn logs_consumer(
        &self,
        name: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<async_nats::jetstream::consumer::PullConsumer, StoreError> {
        let request =
            |e: &dyn std::fmt::Display| StoreError::Request(format!("logs consumer {name}: {e}"));
        let stream = self.logs_stream().await.map_err(|e| request(&e))?;
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: self.subjects.logs_all(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_ack_pending,
            max_deliver: -1,
            description: Some("berth notifier: log streams".to_owned()),
            ..Default::default()
        };
        stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| request(&e))
    }

    /// Deletes the durable consumer `name` of the logs stream, if it
    /// exists: a reader that stops for good lets the server forget its
    /// place (it starts at new lines when made again).
    pub async fn drop_logs_consumer(&self, name: &str) -> Result<(), StoreError> {
        let request =
            |e: &dyn std::fmt::Display| StoreError::Request(format!("logs consumer {name}: {e}"));
        let stream = self.logs_stream().await.map_err(|e| request(&e))?;
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(request(&e)),
        }
    }
}

/// A message of the logs stream as a kept line, unless it is none (see
/// [`EventStore::follow_logs`]).
pub fn kept(msg: &async_nats::jetstream::Message) -> Option<KeptLine> {
    msg.info().ok().and_then(|info| kept_line(msg, &info))
}

/// `msg` of the logs stream (`info`: its metadata) as a kept line,
/// unless it is none. The stream holds only `<prefix>.logs.<service>`
/// subjects, so the last token names the service.
fn kept_line(
    msg: &async_nats::jetstream::Message,
    info: &async_nats::jetstream::message::Info<'_>,
) -> Option<KeptLine> {
    let (seq, time) = (info.stream_sequence, info.published);
    match serde_json::from_slice::<LogLine>(&msg.payload) {
        Ok(line) if msg.subject.as_str().rsplit('.').next() == Some(line.service.as_str()) => {
            Some(KeptLine { seq, time, line })
        }
        Ok(line) => {
            tracing::debug!(stream.seq = seq, subject = %msg.subject, service = %line.service,
                "a log line on another service's subject; skipped");
            None
        }
        Err(e) => {
            tracing::debug!(stream.seq = seq, error = %e, "not a log line; skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_keeps_whole_messages_of_its_bytes() {
        let limits = LogLimits {
            bytes_per_service: 64 << 20,
            ..LogLimits::default()
        };
        assert_eq!(limits.lines_per_service(), 4096);
        let tiny = LogLimits {
            bytes_per_service: 10,
            ..LogLimits::default()
        };
        assert_eq!(tiny.lines_per_service(), 1);
        let s = Subjects::default();
        let c = limits.stream_config(&s, 3);
        assert_eq!(c.subjects, vec!["berth.logs.*".to_owned()]);
        assert_eq!(c.max_messages_per_subject, 4096);
        assert_eq!(c.max_message_size, 16 * 1024);
        assert_eq!(c.num_replicas, 3);
        assert!(same_limits(&c, &c));
        let older = LogLimits {
            max_age: Duration::from_secs(60),
            ..limits
        }
        .stream_config(&s, 3);
        assert!(!same_limits(&older, &c));
    }
}

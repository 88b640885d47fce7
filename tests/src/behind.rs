//! A copy of the event log that is behind, as a client connected to a
//! server that rejoined after a partition (or an old stream leader cut off
//! from the rest) reads it: its reads answer the log as it was when the
//! copy was made, while every other client reads the log as it is.
//!
//! How: the events stream stops answering direct gets itself
//! (`allow_direct` off) and this fixture answers them instead, from the
//! stream leader's own copy (`STREAM.MSG.GET`) — capped at the sequence
//! the copy was made at for requests from the lagging client (told apart
//! by its inbox prefix), in full for everyone else. Appends are not
//! touched: a lagging client's append at a stale version is refused by
//! the server, as it would be.
//!
//! An [`EventStore`] reads through direct gets when its stream has one
//! replica (as every single-server test has), so a store from
//! [`lagging_store`] reads the copy while one is held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::Subscriber;
use berth_eventlog::{EventStore, StoreConfig};
use berth_schemas::Subjects;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The inbox prefix that marks the lagging client's requests.
const LAGGING_INBOX: &str = "_BEHIND";

/// See the module docs. Dropping it stops the answering (the stream's own
/// direct gets are not turned back on: call [`BehindCopy::stop`] for that).
#[derive(Debug)]
pub struct BehindCopy {
    cap: Arc<AtomicU64>,
    task: JoinHandle<()>,
    js: jetstream::Context,
    stream: String,
}

impl Drop for BehindCopy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A direct get's JSON body (the subject-in-token form has none).
#[derive(Deserialize, Default)]
struct Request {
    seq: Option<u64>,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
}

/// A store of `subjects`' log on the server at `url`, on a client whose
/// reads a [`BehindCopy`] holds back while one is held (until then it
/// reads the log as any other). Open it before the copy is made: opening
/// provisions the streams, which would turn the server's direct gets back
/// on.
pub async fn lagging_store(url: &str, subjects: &Subjects) -> EventStore {
    let lagging = async_nats::ConnectOptions::new()
        .custom_inbox_prefix(LAGGING_INBOX)
        .connect(url)
        .await
        .expect("connecting the lagging client");
    EventStore::open(lagging, subjects.clone(), StoreConfig::default())
        .await
        .expect("opening the lagging client's store")
}

impl BehindCopy {
    /// From now on, [`lagging_store`]'s reads of `subjects`' log on the
    /// server at `url` are answered by a copy of the log as it is now.
    pub async fn start(url: &str, subjects: &Subjects) -> BehindCopy {
        let client = async_nats::connect(url).await.expect("connecting");
        let js = jetstream::new(client.clone());
        let stream = subjects.events_stream();
        let (events, last) = direct_gets(&js, &stream, false).await;
        let cap = Arc::new(AtomicU64::new(last));
        let subscription = client
            .subscribe(format!("$JS.API.DIRECT.GET.{stream}.>"))
            .await
            .expect("subscribing");
        let by_body = client
            .subscribe(format!("$JS.API.DIRECT.GET.{stream}"))
            .await
            .expect("subscribing");
        let not_found = NotFound::connect(url).await;
        client.flush().await.expect("flushing");
        let answer = Answer {
            client,
            events,
            prefix: format!("$JS.API.DIRECT.GET.{stream}."),
            stream: stream.clone(),
            cap: Arc::clone(&cap),
            not_found,
        };
        let task = tokio::spawn(answer.serve(futures::stream::select(subscription, by_body)));
        BehindCopy {
            cap,
            task,
            js,
            stream,
        }
    }

    /// The sequence the lagging client's reads stop at.
    pub fn at(&self) -> u64 {
        self.cap.load(Ordering::SeqCst)
    }

    /// The copy catches up: from now on the lagging client reads the log
    /// as it is.
    pub fn catch_up(&self) {
        self.cap.store(u64::MAX, Ordering::SeqCst);
    }

    /// The copy falls behind again, to the log as it was at `seq` (as a
    /// client might next be answered by another copy, further behind).
    pub fn hold_at(&self, seq: u64) {
        self.cap.store(seq, Ordering::SeqCst);
    }

    /// Stops answering and gives the stream its own direct gets back.
    pub async fn stop(self) {
        direct_gets(&self.js, &self.stream, true).await;
    }
}

/// Turns `stream`'s own direct gets on or off; the stream, and its last
/// sequence before.
async fn direct_gets(
    js: &jetstream::Context,
    stream: &str,
    on: bool,
) -> (jetstream::stream::Stream, u64) {
    let mut events = js.get_stream(stream).await.expect("the events stream");
    let info = events.info().await.expect("stream info").clone();
    let mut config = info.config;
    config.allow_direct = on;
    js.update_stream(config)
        .await
        .expect("turning the stream's direct gets on or off");
    (events, info.state.last_sequence)
}

struct Answer {
    client: async_nats::Client,
    events: jetstream::stream::Stream,
    /// The subject-in-token form's prefix (`…DIRECT.GET.<stream>.`).
    prefix: String,
    stream: String,
    cap: Arc<AtomicU64>,
    not_found: NotFound,
}

impl Answer {
    async fn serve(self, mut requests: futures::stream::Select<Subscriber, Subscriber>) {
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let cap = if reply.as_str().starts_with(LAGGING_INBOX) {
                self.cap.load(Ordering::SeqCst)
            } else {
                u64::MAX
            };
            let request = match msg.subject.as_str().strip_prefix(&self.prefix) {
                Some(subject) => Request {
                    last_by_subj: Some(subject.to_owned()),
                    ..Request::default()
                },
                None => serde_json::from_slice(&msg.payload).unwrap_or_default(),
            };
            match self.find(&request, cap).await {
                Some(m) => {
                    let mut headers = m.headers.clone();
                    headers.insert("Nats-Stream", self.stream.as_str());
                    headers.insert("Nats-Subject", m.subject.as_str());
                    headers.insert("Nats-Sequence", m.sequence.to_string().as_str());
                    headers.insert("Nats-Time-Stamp", rfc3339(&m).as_str());
                    let _ = self
                        .client
                        .publish_with_headers(reply, headers, m.payload)
                        .await;
                }
                None => self.not_found.send(reply.as_str()).await,
            }
        }
    }

    /// The message `request` asks for, in the log cut at `cap`.
    async fn find(&self, request: &Request, cap: u64) -> Option<StreamMessage> {
        let within = |m: StreamMessage| (m.sequence <= cap).then_some(m);
        if let Some(subject) = &request.last_by_subj {
            let last = self
                .events
                .get_last_raw_message_by_subject(subject)
                .await
                .ok()?;
            if last.sequence <= cap {
                return Some(last);
            }
            // The subject's last message at or before the cut.
            let mut found = None;
            let mut from = 1;
            while let Some(m) = self.next(subject, from).await {
                if m.sequence > cap {
                    break;
                }
                from = m.sequence + 1;
                found = Some(m);
            }
            return found;
        }
        if let Some(subject) = &request.next_by_subj {
            return within(self.next(subject, request.seq.unwrap_or(1)).await?);
        }
        within(self.events.get_raw_message(request.seq?).await.ok()?)
    }

    async fn next(&self, subject: &str, from: u64) -> Option<StreamMessage> {
        self.events
            .raw_message_builder()
            .next_by_subject(subject)
            .sequence(from)
            .send()
            .await
            .ok()
    }
}

fn rfc3339(m: &StreamMessage) -> String {
    m.time
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// "Not found" answers, which carry a status the client library cannot
/// publish: written on a connection of its own in the NATS protocol.
struct NotFound {
    writer: Arc<Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    pongs: JoinHandle<()>,
}

impl NotFound {
    async fn connect(url: &str) -> NotFound {
        let address = url.trim_start_matches("nats://");
        let (read, mut write) = TcpStream::connect(address)
            .await
            .expect("connecting for not-found answers")
            .into_split();
        write
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n")
            .await
            .expect("CONNECT");
        let writer = Arc::new(Mutex::new(write));
        let w = Arc::clone(&writer);
        let pongs = tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("PING") {
                    let _ = w.lock().await.write_all(b"PONG\r\n").await;
                }
            }
        });
        NotFound { writer, pongs }
    }

    async fn send(&self, reply: &str) {
        let headers = "NATS/1.0 404 Message Not Found\r\n\r\n";
        let frame = format!(
            "HPUB {reply} {len} {len}\r\n{headers}\r\n",
            len = headers.len()
        );
        let _ = self.writer.lock().await.write_all(frame.as_bytes()).await;
    }
}

impl Drop for NotFound {
    fn drop(&mut self) {
        self.pongs.abort();
    }
}

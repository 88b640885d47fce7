//! Folded states kept across restarts, for aggregates with long histories.
//!
//! The store's memory of folded states ([`crate::folded`]) is lost when the
//! process stops; without more, the first command on a service with a
//! hundred thousand deploys after a restart would read and fold its whole
//! history. A state type registered with [`EventStore::persist_states`] is
//! written to the snapshot bucket (key `state.<name>.<aggregate>`) each
//! time its aggregate has grown by `every` events since the last write,
//! and a cold read starts from it, folding only the commits after it.
//!
//! A stored state is a cache of a fold, never the truth: it records the
//! version it was folded up to, one newer than the log is ignored, an
//! unreadable one is ignored, and the name carries the fold's version, so
//! a release whose `apply` reads events differently uses a new name (and
//! refolds once) rather than trusting states folded by older rules.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, RwLock};

use berth_schemas::AggregateId;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{EventStore, Version};

type AnyState = Arc<dyn Any + Send + Sync>;
/// Encodes a state into a writer (the snapshot bucket's chunks, on a
/// blocking thread); `Err` if it is not of the codec's type or does not
/// encode.
type Encode = Box<dyn Fn(&AnyState, &mut dyn std::io::Write) -> Result<(), String> + Send + Sync>;
type Decode = Box<dyn Fn(&[u8]) -> Option<AnyState> + Send + Sync>;

/// How one state type is stored.
struct Codec {
    name: String,
    every: u64,
    encode: Encode,
    decode: Decode,
}

/// Aggregates remembered as written, at most; then the memory starts over
/// (the worst case is one extra write per long aggregate).
const WRITTEN_KEPT: usize = 100_000;

/// The registered state types and what was last written.
#[derive(Default)]
pub(crate) struct Durable {
    codecs: RwLock<HashMap<TypeId, Arc<Codec>>>,
    /// Events of each aggregate's last written (or read) state.
    written: Mutex<HashMap<(AggregateId, TypeId), u64>>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").finish_non_exhaustive()
    }
}

/// 16 bytes of version (stream sequence, events; big-endian), then the state.
const HEADER: usize = 16;

fn key(name: &str, aggregate: &AggregateId) -> String {
    format!("state.{name}.{aggregate}")
}

impl Durable {
    fn codec<S: 'static>(&self) -> Option<Arc<Codec>> {
        self.codecs.read().ok()?.get(&TypeId::of::<S>()).cloned()
    }

    fn note_written(&self, aggregate: &AggregateId, ty: TypeId, events: u64) {
        if let Ok(mut w) = self.written.lock() {
            if w.len() >= WRITTEN_KEPT {
                w.clear();
            }
            let e = w.entry((aggregate.clone(), ty)).or_insert(0);
            *e = (*e).max(events);
        }
    }

    /// Whether a state at `version` is due to be written.
    fn due(&self, aggregate: &AggregateId, ty: TypeId, every: u64, version: Version) -> bool {
        if version.events < every {
            return false;
        }
        let Ok(w) = self.written.lock() else {
            return false;
        };
        let last = w.get(&(aggregate.clone(), ty)).copied().unwrap_or(0);
        version.events >= last + every
    }
}

impl EventStore {
    /// Keeps folded states of type `S` across restarts under `name` (which
    /// names the fold too: change it when `S`'s fold changes), written each
    /// time an aggregate grew by `every` events. Registered once per
    /// process, before commands run; every clone of the store shares it.
    pub fn persist_states<S>(&self, name: &str, every: u64)
    where
        S: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let codec = Codec {
            name: name.to_owned(),
            every: every.max(1),
            encode: Box::new(|state: &AnyState, out: &mut dyn std::io::Write| {
                let state = state
                    .downcast_ref::<S>()
                    .ok_or_else(|| format!("not a {}", std::any::type_name::<S>()))?;
                rmp_serde::encode::write_named(out, state).map_err(|e| e.to_string())
            }),
            decode: Box::new(|bytes: &[u8]| {
                let state: S = rmp_serde::from_slice(bytes).ok()?;
                Some(Arc::new(state) as AnyState)
            }),
        };
        if let Ok(mut codecs) = self.durable.codecs.write() {
            codecs.insert(TypeId::of::<S>(), Arc::new(codec));
        }
    }

    /// The stored state of `aggregate` as `S`, if `S` is persisted and a
    /// usable one is stored no newer than `last` (the log's end for it).
    pub(crate) async fn stored_state<S: Send + Sync + 'static>(
        &self,
        aggregate: &AggregateId,
        last: u64,
    ) -> Option<(Version, Arc<S>)> {
        let codec = self.durable.codec::<S>()?;
        let bytes = match crate::snapshots::read(&self.snapshots, &key(&codec.name, aggregate))
            .await
        {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(aggregate = %aggregate, error = ?e, "stored state unreadable; folding the log");
                return None;
            }
        };
        let head: [u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        let (seq, events) = head.split_at(8);
        let version = Version {
            stream_seq: u64::from_be_bytes(seq.try_into().ok()?),
            events: u64::from_be_bytes(events.try_into().ok()?),
        };
        if version.stream_seq > last {
            return None;
        }
        let state = (codec.decode)(&bytes[HEADER..])?.downcast::<S>().ok()?;
        self.durable
            .note_written(aggregate, TypeId::of::<S>(), version.events);
        Some((version, state))
    }

    /// Writes `state` in the background if `S` is persisted and the
    /// aggregate grew enough since its last write.
    pub(crate) fn maybe_store_state<S: Send + Sync + 'static>(
        &self,
        aggregate: &AggregateId,
        version: Version,
        state: &Arc<S>,
    ) {
        let Some(codec) = self.durable.codec::<S>() else {
            return;
        };
        let ty = TypeId::of::<S>();
        if !self.durable.due(aggregate, ty, codec.every, version) {
            return;
        }
        self.durable.note_written(aggregate, ty, version.events);
        let state: AnyState = Arc::clone(state) as AnyState;
        let store = self.clone();
        let aggregate = aggregate.clone();
        tokio::spawn(async move {
            let chunk = crate::snapshots::chunk_size(store.client.server_info().max_payload);
            let k = key(&codec.name, &aggregate);
            // Encoded as it is written, on the snapshot writer's blocking
            // thread: no runtime thread spends the encoding, and no whole
            // copy of the encoded state is held.
            let encode = Arc::clone(&codec);
            let written = crate::snapshots::write_streamed(
                &store.snapshots,
                &k,
                chunk,
                version.stream_seq,
                move |sink| {
                    sink.write_all(&version.stream_seq.to_be_bytes())
                        .and_then(|()| sink.write_all(&version.events.to_be_bytes()))
                        .map_err(|e| e.to_string())?;
                    (encode.encode)(&state, sink)
                },
            )
            .await;
            if let Err(e) = written {
                tracing::warn!(aggregate = %aggregate, error = %e, "folded state not stored");
            }
        });
    }
}

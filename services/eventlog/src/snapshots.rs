//! Snapshot bytes in the KV bucket, split into chunks when one message
//! cannot hold them (a KV value is one NATS message: 1 MB by default).
//!
//! A snapshot that fits is stored as it always was: its bytes at its key.
//! A bigger one is written as chunks first, then a small manifest at the
//! key, so a reader never sees half of a snapshot: until the manifest is
//! written it reads the previous one. Chunks alternate between two slots
//! (`<key>.s0.c<i>`, `<key>.s1.c<i>`) so writing a new snapshot never
//! touches the chunks the current manifest points at; each chunk starts
//! with the generation of its snapshot, so chunks of two writers racing on
//! one key are never mixed into one snapshot (the read fails instead, as
//! for any unreadable snapshot).
//!
//! A snapshot is streamed both ways ([`write_streamed`], [`read_streamed`];
//! a long aggregate's stored fold is written the same way): it is encoded
//! on a blocking thread that hands each
//! chunk to the bucket as it fills, and decoded from the chunks as they
//! arrive, so a snapshot of tens of megabytes costs a few chunks of
//! memory beside the state it is made from or restores, not a second copy
//! of it (and no growing buffer's reallocations).

use std::io::{Read, Write};

use async_nats::jetstream::kv;
use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Room kept below the server's max payload for the protocol's own bytes.
const MARGIN: usize = 1024;
/// Bytes of the generation prefix on each chunk.
const GEN_LEN: usize = 8;

/// What the key holds for a chunked snapshot. The marker field keeps a
/// manifest from ever being read as an inline snapshot and the reverse.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    berth_chunked_snapshot: u8,
    generation: u64,
    slot: u8,
    chunks: u32,
    len: u64,
}

fn chunk_key(key: &str, slot: u8, i: u32) -> String {
    format!("{key}.s{slot}.c{i}")
}

fn manifest(bytes: &[u8]) -> Option<Manifest> {
    rmp_serde::from_slice::<Manifest>(bytes)
        .ok()
        .filter(|m| m.berth_chunked_snapshot == 1)
}

/// The largest chunk a server with `max_payload` takes.
pub(crate) fn chunk_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(MARGIN + GEN_LEN).max(1024)
}

/// A chunked snapshot as it is written: the slot is chosen (from the
/// current manifest) when its first chunk is.
struct ChunkedPut<'a> {
    kv: &'a kv::Store,
    key: &'a str,
    generation: u64,
    slot: Option<u8>,
    chunks: u32,
    len: u64,
}

impl<'a> ChunkedPut<'a> {
    fn new(kv: &'a kv::Store, key: &'a str, generation: u64) -> Self {
        ChunkedPut {
            kv,
            key,
            generation,
            slot: None,
            chunks: 0,
            len: 0,
        }
    }

    async fn chunk(&mut self, part: &[u8]) -> Result<(), String> {
        let slot = match self.slot {
            Some(slot) => slot,
            None => {
                let current = self
                    .kv
                    .get(self.key)
                    .await
                    .map_err(|e| e.to_string())?
                    .and_then(|b| manifest(&b));
                let slot = match current {
                    Some(m) if m.slot == 0 => 1,
                    _ => 0,
                };
                *self.slot.insert(slot)
            }
        };
        let mut value = Vec::with_capacity(GEN_LEN + part.len());
        value.extend_from_slice(&self.generation.to_be_bytes());
        value.extend_from_slice(part);
        self.kv
            .put(chunk_key(self.key, slot, self.chunks), value.into())
            .await
            .map_err(|e| format!("chunk {}: {e}", self.chunks))?;
        self.chunks += 1;
        self.len += part.len() as u64;
        Ok(())
    }

    /// Writes the manifest: from here on readers read this snapshot.
    async fn finish(self) -> Result<(), String> {
        let head = rmp_serde::to_vec_named(&Manifest {
            berth_chunked_snapshot: 1,
            generation: self.generation,
            slot: self.slot.unwrap_or(0),
            chunks: self.chunks,
            len: self.len,
        })
        .map_err(|e| e.to_string())?;
        self.kv
            .put(self.key, head.into())
            .await
            .map(|_| ())
            .map_err(|e| format!("manifest: {e}"))
    }
}

/// A piece of a snapshot being encoded.
enum Part {
    /// A whole chunk; more follows.
    Full(Vec<u8>),
    /// The rest (at most a chunk, maybe nothing).
    Last(Vec<u8>),
}

/// Where a streamed snapshot is encoded to: each chunk goes to the writer
/// as soon as it is full (waiting while the one before is written).
pub(crate) struct ChunkSink {
    buf: Vec<u8>,
    chunk: usize,
    tx: mpsc::Sender<Part>,
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() > self.chunk {
            let mut next = Vec::with_capacity(self.chunk + 1024);
            next.extend_from_slice(&self.buf[self.chunk..]);
            self.buf.truncate(self.chunk);
            let full = std::mem::replace(&mut self.buf, next);
            self.tx.blocking_send(Part::Full(full)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "snapshot write gave up")
            })?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes at `key` what `encode` writes to its sink, chunked when longer
/// than `chunk` bytes. `encode` runs on a blocking thread; at most three
/// chunks are held at once (being filled, waiting, being written).
pub(crate) async fn write_streamed<F>(
    kv: &kv::Store,
    key: &str,
    chunk: usize,
    generation: u64,
    encode: F,
) -> Result<(), String>
where
    F: FnOnce(&mut ChunkSink) -> Result<(), String> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(1);
    let encoding = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            buf: Vec::with_capacity(chunk + 1024),
            chunk,
            tx,
        };
        encode(&mut sink)?;
        let ChunkSink { buf, tx, .. } = sink;
        tx.blocking_send(Part::Last(buf))
            .map_err(|_| "snapshot write gave up".to_owned())
    });
    let mut put = ChunkedPut::new(kv, key, generation);
    let written = loop {
        match rx.recv().await {
            Some(Part::Full(part)) => {
                if let Err(e) = put.chunk(&part).await {
                    break Err(e);
                }
            }
            Some(Part::Last(rest)) if put.chunks == 0 => {
                break kv
                    .put(key, rest.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Some(Part::Last(rest)) => {
                let last = if rest.is_empty() {
                    Ok(())
                } else {
                    put.chunk(&rest).await
                };
                break match last {
                    Ok(()) => put.finish().await,
                    Err(e) => Err(e),
                };
            }
            // The encoder stopped (its error is below).
            None => break Ok(()),
        }
    };
    // Stops an encoder still waiting to hand over a chunk.
    drop(rx);
    let encoded = encoding
        .await
        .map_err(|e| format!("snapshot encoder: {e}"))
        .and_then(|r| r);
    // The bucket's error first: the encoder's is then only "gave up".
    written.and(encoded)
}

/// Why a stored snapshot could not be read back.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The bucket did not answer (worth retrying).
    Request(String),
    /// What is stored is not a whole snapshot.
    Broken(String),
}

/// One chunk of the snapshot `m` describes, without its generation.
async fn fetch_chunk(kv: &kv::Store, key: &str, m: &Manifest, i: u32) -> Result<Bytes, ReadError> {
    let mut part = kv
        .get(chunk_key(key, m.slot, i))
        .await
        .map_err(|e| ReadError::Request(e.to_string()))?
        .ok_or_else(|| ReadError::Broken(format!("chunk {i} of {} missing", m.chunks)))?;
    let generation = part
        .get(..GEN_LEN)
        .and_then(|g| <[u8; GEN_LEN]>::try_from(g).ok())
        .map(u64::from_be_bytes);
    if generation != Some(m.generation) {
        return Err(ReadError::Broken(format!(
            "chunk {i} belongs to another snapshot"
        )));
    }
    part.advance(GEN_LEN);
    Ok(part)
}

/// Reads the snapshot at `key`, joining chunks when it was chunked (as
/// [`read_streamed`] does).
pub(crate) async fn read(kv: &kv::Store, key: &str) -> Result<Option<Vec<u8>>, ReadError> {
    read_streamed(kv, key, |r| {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    })
    .await
}

/// What a streamed snapshot is decoded from: its chunks, as they arrive.
pub(crate) struct ChunkReader {
    current: Bytes,
    rx: Option<mpsc::Receiver<Bytes>>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.as_mut().and_then(|rx| rx.blocking_recv()) {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Reads the snapshot at `key` through `decode`. A chunked one is decoded
/// on a blocking thread from its chunks as they are fetched (one in hand,
/// one on the way), and must end exactly where its last chunk does.
pub(crate) async fn read_streamed<T, F>(
    kv: &kv::Store,
    key: &str,
    decode: F,
) -> Result<Option<T>, ReadError>
where
    T: Send + 'static,
    F: FnOnce(&mut ChunkReader) -> Result<T, String> + Send + 'static,
{
    let Some(head) = kv
        .get(key)
        .await
        .map_err(|e| ReadError::Request(e.to_string()))?
    else {
        return Ok(None);
    };
    let Some(m) = manifest(&head) else {
        let mut whole = ChunkReader {
            current: head,
            rx: None,
        };
        return decode(&mut whole).map(Some).map_err(ReadError::Broken);
    };
    let (tx, rx) = mpsc::channel(1);
    let decoding = tokio::task::spawn_blocking(move || {
        let mut reader = ChunkReader {
            current: Bytes::new(),
            rx: Some(rx),
        };
        let decoded = decode(&mut reader);
        // What is left unread (in hand, or the next chunk): none in a
        // whole snapshot. Waits for the fetcher's next chunk or its end.
        let next = reader.rx.as_mut().and_then(|rx| rx.blocking_recv());
        let rest = reader.current.len() + next.map_or(0, |b| b.len());
        decoded.map(|t| (t, rest))
    });
    let mut sent = 0u64;
    let mut fetched = Ok(());
    for i in 0..m.chunks {
        match fetch_chunk(kv, key, &m, i).await {
            Ok(part) => {
                sent += part.len() as u64;
                if tx.send(part).await.is_err() {
                    // The decoder is done before the snapshot is.
                    break;
                }
            }
            Err(e) => {
                fetched = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let decoded = decoding
        .await
        .map_err(|e| ReadError::Broken(format!("snapshot decoder: {e}")))?;
    fetched?;
    let (state, rest) = decoded.map_err(ReadError::Broken)?;
    if sent != m.len {
        return Err(ReadError::Broken(format!(
            "{sent} bytes joined, manifest says {}",
            m.len
        )));
    }
    if rest != 0 {
        return Err(ReadError::Broken(format!(
            "{rest} bytes after the snapshot's end"
        )));
    }
    Ok(Some(state))
}

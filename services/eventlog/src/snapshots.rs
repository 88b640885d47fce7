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

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

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

/// Writes `bytes` at `key`, chunked when longer than `chunk` bytes.
pub(crate) async fn write(
    kv: &kv::Store,
    key: &str,
    bytes: Vec<u8>,
    chunk: usize,
    generation: u64,
) -> Result<(), String> {
    if bytes.len() <= chunk {
        return kv
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let current = kv
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|b| manifest(&b));
    let slot = match current {
        Some(m) if m.slot == 0 => 1,
        _ => 0,
    };
    let mut chunks = 0u32;
    for part in bytes.chunks(chunk) {
        let mut value = Vec::with_capacity(GEN_LEN + part.len());
        value.extend_from_slice(&generation.to_be_bytes());
        value.extend_from_slice(part);
        kv.put(chunk_key(key, slot, chunks), value.into())
            .await
            .map_err(|e| format!("chunk {chunks}: {e}"))?;
        chunks += 1;
    }
    let head = rmp_serde::to_vec_named(&Manifest {
        berth_chunked_snapshot: 1,
        generation,
        slot,
        chunks,
        len: bytes.len() as u64,
    })
    .map_err(|e| e.to_string())?;
    kv.put(key, head.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("manifest: {e}"))
}

/// Why a stored snapshot could not be read back.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The bucket did not answer (worth retrying).
    Request(String),
    /// What is stored is not a whole snapshot.
    Broken(String),
}

/// Reads the snapshot at `key`, joining chunks when it was chunked.
pub(crate) async fn read(kv: &kv::Store, key: &str) -> Result<Option<Vec<u8>>, ReadError> {
    let Some(head) = kv
        .get(key)
        .await
        .map_err(|e| ReadError::Request(e.to_string()))?
    else {
        return Ok(None);
    };
    let Some(m) = manifest(&head) else {
        return Ok(Some(head.to_vec()));
    };
    let mut bytes = Vec::with_capacity(usize::try_from(m.len).unwrap_or(0));
    for i in 0..m.chunks {
        let part = kv
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
        bytes.extend_from_slice(&part[GEN_LEN..]);
    }
    if bytes.len() as u64 != m.len {
        return Err(ReadError::Broken(format!(
            "{} bytes joined, manifest says {}",
            bytes.len(),
            m.len
        )));
    }
    Ok(Some(bytes))
}

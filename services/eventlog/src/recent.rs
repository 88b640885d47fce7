//! The commits this store appended lately, as built: a read model following
//! the log in the same process (the API's index behind the hook desk, every
//! component of `berth up`) takes those envelopes instead of decoding the
//! message it is delivered again.
//!
//! Two ways in, because the read model's copy of a message can arrive
//! before the append's acknowledgement does (both come over one connection,
//! and the task waiting for the acknowledgement may not have run yet):
//!
//! - by stream sequence, once acknowledged as new: the last
//!   [`RECENT_COMMITS`] sequences of the stream (a slot per sequence modulo
//!   that, so keeping one costs no hashing; a duplicate's sequence names the
//!   original commit, not what was built, and is not kept);
//! - while in flight, by the bytes published: a message whose payload is
//!   byte for byte what an append in flight published holds exactly the
//!   envelopes that append built.
//!
//! A read model that falls further behind decodes, as one in another
//! process always does.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use berth_schemas::Envelope;
use bytes::Bytes;

/// Stream sequences kept: a few seconds of a burst of hooks; ~1 KB each.
pub(crate) const RECENT_COMMITS: usize = 4096;

type Slot = Option<(u64, Arc<[Envelope]>)>;
/// Appends in flight with the same payload hash: what each published, and
/// the envelopes it built.
type Published = Vec<(Bytes, Arc<[Envelope]>)>;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct RecentCommits {
    by_seq: Mutex<Box<[Slot]>>,
    /// Appends published and not yet answered, by a hash of their payload.
    in_flight: Mutex<HashMap<u64, Published>>,
    /// Payload hashing (not keyed: a collision costs one byte comparison).
    hasher: foldhash::fast::FixedState,
}

impl Default for RecentCommits {
    fn default() -> Self {
        Self {
            by_seq: Mutex::new(vec![None; RECENT_COMMITS].into_boxed_slice()),
            in_flight: Mutex::default(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

/// An append in flight, known to [`RecentCommits`] until dropped.
#[must_use = "the append is known as in flight only while this is held"]
pub(crate) struct InFlight<'a> {
    recent: &'a RecentCommits,
    hash: u64,
    payload: Bytes,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Ok(mut map) = self.recent.in_flight.lock() else {
            return;
        };
        if let Some(list) = map.get_mut(&self.hash) {
            // The entry this append added: the same allocation, not merely
            // equal bytes (two appends may publish the same bytes).
            if let Some(i) = list
                .iter()
                .position(|(p, _)| p.as_ptr() == self.payload.as_ptr())
            {
                list.swap_remove(i);
            }
            if list.is_empty() {
                map.remove(&self.hash);
            }
        }
    }
}

impl RecentCommits {
    /// Keeps the envelopes the server stored at `seq`.
    pub(crate) fn put(&self, seq: u64, events: &Arc<[Envelope]>) {
        if let Ok(mut slots) = self.by_seq.lock() {
            let i = (seq % RECENT_COMMITS as u64) as usize;
            slots[i] = Some((seq, Arc::clone(events)));
        }
    }

    /// Knows `events`, published as `payload`, until the guard is dropped
    /// (after [`RecentCommits::put`] when it was stored as new).
    pub(crate) fn in_flight(&self, payload: &Bytes, events: &Arc<[Envelope]>) -> InFlight<'_> {
        let hash = self.hasher.hash_one(payload.as_ref());
        if let Ok(mut map) = self.in_flight.lock() {
            map.entry(hash)
                .or_default()
                .push((payload.clone(), Arc::clone(events)));
        }
        InFlight {
            recent: self,
            hash,
            payload: payload.clone(),
        }
    }

    /// The envelopes of the message stored at `seq` with `payload`, if this
    /// store appended them lately or is appending them now.
    pub(crate) fn get(&self, seq: u64, payload: &[u8]) -> Option<Arc<[Envelope]>> {
        if let Some(events) = self.by_seq(seq) {
            return Some(events);
        }
        let hash = self.hasher.hash_one(payload);
        let map = self.in_flight.lock().ok()?;
        map.get(&hash)?
            .iter()
            .find(|(p, _)| p.as_ref() == payload)
            .map(|(_, events)| Arc::clone(events))
    }

    fn by_seq(&self, seq: u64) -> Option<Arc<[Envelope]>> {
        let slots = self.by_seq.lock().ok()?;
        match &slots[(seq % RECENT_COMMITS as u64) as usize] {
            Some((s, events)) if *s == seq => Some(Arc::clone(events)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn commit(n: usize) -> Arc<[Envelope]> {
        use berth_schemas::ids::{OwnerId, UserId};
        let owner = OwnerId::User(UserId::generate());
        let event = berth_schemas::events::OwnerCreated {
            owner: owner.clone(),
            name: "recent".into(),
        };
        let new = crate::NewEvent::new(event, berth_schemas::Actor::DeployHook);
        let aggregate = berth_schemas::AggregateId::Owner(owner);
        (0..n)
            .map(|i| {
                crate::log::envelope(&aggregate, i as u64 + 1, chrono::Utc::now(), new.clone())
            })
            .collect()
    }

    #[test]
    fn the_newest_sequences_are_kept_and_no_more() {
        let recent = RecentCommits::default();
        let one = commit(1);
        for seq in 1..=(RECENT_COMMITS as u64 + 10) {
            recent.put(seq, &one);
        }
        assert!(recent.get(10, b"").is_none(), "the oldest were let go");
        assert!(recent.get(11, b"").is_some());
        assert!(recent.get(RECENT_COMMITS as u64 + 10, b"").is_some());
        assert!(recent.get(RECENT_COMMITS as u64 + 11, b"").is_none());
        let kept = recent.by_seq.lock().unwrap();
        assert_eq!(kept.iter().filter(|s| s.is_some()).count(), RECENT_COMMITS);
    }

    #[test]
    fn an_append_in_flight_is_found_by_its_bytes_until_it_is_answered() {
        let recent = RecentCommits::default();
        let (a, b) = (commit(1), commit(2));
        let (pa, pb) = (
            Bytes::from_static(b"payload a"),
            Bytes::from_static(b"payload b"),
        );
        let guard_a = recent.in_flight(&pa, &a);
        let guard_b = recent.in_flight(&pb, &b);
        let found = recent.get(7, b"payload a").unwrap();
        assert!(Arc::ptr_eq(&found, &a));
        assert!(Arc::ptr_eq(&recent.get(8, b"payload b").unwrap(), &b));
        assert!(recent.get(9, b"payload c").is_none(), "other bytes");
        assert!(recent.get(9, b"payload").is_none(), "a prefix");
        drop(guard_a);
        assert!(recent.get(7, b"payload a").is_none(), "answered, not kept");
        recent.put(8, &b);
        drop(guard_b);
        assert!(
            Arc::ptr_eq(&recent.get(8, b"").unwrap(), &b),
            "kept by sequence"
        );
        assert!(recent.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn two_appends_of_the_same_bytes_are_each_let_go_alone() {
        let recent = RecentCommits::default();
        let (a, b) = (commit(1), commit(1));
        let (pa, pb) = (Bytes::from(b"same".to_vec()), Bytes::from(b"same".to_vec()));
        let guard_a = recent.in_flight(&pa, &a);
        let guard_b = recent.in_flight(&pb, &b);
        drop(guard_a);
        let found = recent.get(1, b"same").unwrap();
        assert!(
            Arc::ptr_eq(&found, &b),
            "b's entry stays while b is in flight"
        );
        drop(guard_b);
        assert!(recent.get(1, b"same").is_none());
    }
}

//! The store's memory of folded states: per aggregate (and state type), the
//! state as of a version. A command decides on it after folding only the
//! events appended since (O(new events), not O(history)); an append records
//! the state it produced. The log is append-only, so a state folded up to a
//! version stays true for that version; a writer elsewhere only makes the
//! entry older, which the next read or a conflicting append notices.
//!
//! States are kept behind `Arc` and handed out by reference; a caller that
//! changes one clones it once (one copy per command, instead of a fold of
//! the whole history). Bounded like the aggregate cache: a full shard
//! starts over.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use berth_schemas::AggregateId;
use foldhash::fast::RandomState;

use crate::Version;

const SHARDS: usize = 16;

type Key = (AggregateId, TypeId);
type Shard = Mutex<HashMap<Key, (Version, Arc<dyn Any + Send + Sync>), RandomState>>;

/// Folded states by aggregate and state type.
#[derive(Debug, Clone)]
pub(crate) struct StateCache {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    per_shard: usize,
}

impl StateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &Key) -> &Shard {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// The cached state of `id` as `S`, and its version.
    pub(crate) fn get<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
    ) -> Option<(Version, Arc<S>)> {
        let key = (id.clone(), TypeId::of::<S>());
        let map = self.shard(&key).lock().ok()?;
        let (version, state) = map.get(&key)?;
        let state = Arc::clone(state).downcast::<S>().ok()?;
        Some((*version, state))
    }

    /// Records `state` as `id`'s at `version`, unless a newer one is known.
    pub(crate) fn put<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        version: Version,
        state: Arc<S>,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let key = (id.clone(), TypeId::of::<S>());
        let Ok(mut map) = self.shard(&key).lock() else {
            return;
        };
        if let Some((have, _)) = map.get(&key) {
            // One as new is kept: at one version every fold of one type is
            // the same state, and the one kept may be shared with a read
            // model (see [`FoldedStates`]).
            if have.stream_seq >= version.stream_seq {
                return;
            }
        } else if map.len() >= self.per_shard {
            map.clear();
        }
        map.insert(key, (version, state));
    }

    /// Settles `state`, `id`'s fold as of `version`, with the cached one:
    /// takes the cached state if it is of the same version (the caller's
    /// copy is let go), else records the caller's (unless a newer one is
    /// known).
    pub(crate) fn settle<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        version: Version,
        state: &mut Arc<S>,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let key = (id.clone(), TypeId::of::<S>());
        let Ok(mut map) = self.shard(&key).lock() else {
            return;
        };
        match map.get(&key) {
            Some((have, cached)) if *have == version => {
                if let Ok(cached) = Arc::clone(cached).downcast::<S>() {
                    *state = cached;
                }
                return;
            }
            Some((have, _)) if have.stream_seq >= version.stream_seq => return,
            Some(_) => {}
            None if map.len() >= self.per_shard => map.clear(),
            None => {}
        }
        let shared: Arc<dyn Any + Send + Sync> = Arc::clone(state) as _;
        map.insert(key, (version, shared));
    }

    /// The cached state of `id` as `S` if it is exactly of `version`.
    pub(crate) fn get_at<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        version: Version,
    ) -> Option<Arc<S>> {
        self.get::<S>(id)
            .filter(|(v, _)| *v == version)
            .map(|(_, s)| s)
    }

    /// Takes the cached state of `id` as `S` out of the cache.
    pub(crate) fn take<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
    ) -> Option<(Version, Arc<S>)> {
        let key = (id.clone(), TypeId::of::<S>());
        let (version, state) = self.shard(&key).lock().ok()?.remove(&key)?;
        Some((version, state.downcast::<S>().ok()?))
    }

    /// Forgets every state of `id` (the aggregate is not in the log).
    pub(crate) fn forget(&self, id: &AggregateId) {
        for shard in self.shards.iter() {
            if let Ok(mut map) = shard.lock() {
                map.retain(|(a, _), _| a != id);
            }
        }
    }
}

/// The store's folded states, for a read model in the same process that
/// folds aggregates of the log the way the store's commands do (the same
/// state type, the same fold from the aggregate's first event): settling
/// its state with the store's leaves the process one copy of that state
/// where it held two. The store changes a shared state by copying it
/// (`Arc` semantics), so neither side sees the other's changes early.
#[derive(Debug, Clone)]
pub struct FoldedStates {
    states: StateCache,
}

impl FoldedStates {
    pub(crate) fn new(states: StateCache) -> Self {
        Self { states }
    }

    /// The store's state of `id` if it is the fold up to exactly
    /// `version` (the aggregate's commit at `version.stream_seq`, its
    /// event `version.events`): the read model may take it instead of
    /// folding that commit itself.
    pub fn at<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        version: Version,
    ) -> Option<Arc<S>> {
        self.states.get_at(id, version)
    }

    /// Settles `state`, the read model's fold of `id` up to `version`,
    /// with the store's: the store's copy replaces it if of the same
    /// version, else the store keeps this one (unless it knows a newer).
    pub fn settle<S: Send + Sync + 'static>(
        &self,
        id: &AggregateId,
        version: Version,
        state: &mut Arc<S>,
    ) {
        self.states.settle(id, version, state);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_schemas::ids::ServiceId;

    fn v(seq: u64) -> Version {
        Version {
            stream_seq: seq,
            events: seq,
        }
    }

    #[test]
    fn states_are_kept_per_type_and_never_go_back() {
        let c = StateCache::new(64);
        let id = AggregateId::Service(ServiceId::generate());
        c.put(&id, v(3), Arc::new(3u64));
        c.put(&id, v(2), Arc::new(2u64));
        assert_eq!(
            c.get::<u64>(&id).map(|(v, s)| (v.stream_seq, *s)),
            Some((3, 3))
        );
        assert!(c.get::<String>(&id).is_none());
        c.put(&id, v(4), Arc::new("x".to_owned()));
        assert_eq!(c.get::<u64>(&id).map(|(_, s)| *s), Some(3));
        c.forget(&id);
        assert!(c.get::<u64>(&id).is_none());
        assert!(c.get::<String>(&id).is_none());
    }

    #[test]
    fn a_settled_state_is_one_copy_whoever_folded_first() {
        let c = StateCache::new(64);
        let id = AggregateId::Service(ServiceId::generate());
        // The read model first: the store takes its copy.
        let mut mine = Arc::new(7u64);
        c.settle(&id, v(1), &mut mine);
        let (at, cached) = c.get::<u64>(&id).unwrap();
        assert_eq!(at, v(1));
        assert!(Arc::ptr_eq(&mine, &cached));
        // A command's fold of the same version does not displace it.
        c.put(&id, v(1), Arc::new(7u64));
        assert!(Arc::ptr_eq(&mine, &c.get::<u64>(&id).unwrap().1));
        // The store first: the read model takes the store's copy.
        let theirs = Arc::new(8u64);
        c.put(&id, v(2), Arc::clone(&theirs));
        let mut mine = Arc::new(8u64);
        c.settle(&id, v(2), &mut mine);
        assert!(Arc::ptr_eq(&mine, &theirs));
        assert!(Arc::ptr_eq(&c.get_at::<u64>(&id, v(2)).unwrap(), &theirs));
        assert!(c.get_at::<u64>(&id, v(1)).is_none());
        // An older fold is neither taken nor recorded.
        let mut old = Arc::new(7u64);
        c.settle(&id, v(1), &mut old);
        assert_eq!(*old, 7);
        assert!(Arc::ptr_eq(&c.get::<u64>(&id).unwrap().1, &theirs));
    }

    #[test]
    fn a_full_shard_starts_over() {
        let c = StateCache::new(SHARDS);
        let ids: Vec<_> = (0..200)
            .map(|_| AggregateId::Service(ServiceId::generate()))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            c.put(id, v(i as u64 + 1), Arc::new(i));
        }
        let kept = ids.iter().filter(|id| c.get::<usize>(id).is_some()).count();
        assert!(kept <= SHARDS, "{kept}");
    }
}

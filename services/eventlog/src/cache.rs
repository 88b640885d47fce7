//! The store's memory of aggregates it has loaded or appended to. The log is
//! append-only (the stream denies deletes and purges), so a cached prefix
//! of an aggregate is always true; a load only fetches what came after it.
//!
//! Appends sit on the hot path (every pipelined append records its commit
//! here), so the map is sharded (appends to different aggregates rarely
//! share a lock) and an aggregate is kept as a list of shared commits: an
//! append pushes one pointer instead of growing (and re-copying) one long
//! vector of envelopes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use berth_schemas::{AggregateId, Envelope};

use crate::{Loaded, Version};

/// Shards of the map; a power of two well above the cores of our machines.
const SHARDS: usize = 16;

/// Events one cached aggregate may hold: a longer history (a service with
/// thousands of deploys) leaves the cache instead of growing in memory with
/// every commit. Commands decide on the folded state, so reading such a
/// history again is rare: only a reader without a folded state does.
pub(crate) const MAX_EVENTS: usize = 4096;

/// One cached aggregate: its commits in order and the version after them.
#[derive(Debug, Default)]
struct Entry {
    commits: Vec<Arc<[Envelope]>>,
    version: Version,
    /// Events in `commits`.
    events: usize,
}

impl Entry {
    fn to_loaded(&self) -> Loaded {
        let total = self.commits.iter().map(|c| c.len()).sum();
        let mut events = Vec::with_capacity(total);
        for c in &self.commits {
            events.extend_from_slice(c);
        }
        Loaded {
            events,
            version: self.version,
        }
    }
}

type Shard = Mutex<HashMap<AggregateId, Entry>>;

/// A bounded map of aggregates; a full shard forgets everything it holds
/// (cheap, and a miss only costs direct gets).
#[derive(Debug, Clone)]
pub(crate) struct AggregateCache {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    per_shard: usize,
}

impl AggregateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, id: &AggregateId) -> &Shard {
        let h = self.hasher.hash_one(id) as usize;
        &self.shards[h % SHARDS]
    }

    pub(crate) fn get(&self, id: &AggregateId) -> Option<Loaded> {
        self.shard(id).lock().ok()?.get(id).map(Entry::to_loaded)
    }

    pub(crate) fn put(&self, id: &AggregateId, loaded: &Loaded) {
        if self.per_shard == 0 {
            return;
        }
        if let Ok(mut map) = self.shard(id).lock() {
            if loaded.events.len() > MAX_EVENTS {
                map.remove(id);
                return;
            }
            if map.len() >= self.per_shard && !map.contains_key(id) {
                map.clear();
            }
            map.insert(
                id.clone(),
                Entry {
                    commits: vec![Arc::from(loaded.events.as_slice())],
                    version: loaded.version,
                    events: loaded.events.len(),
                },
            );
        }
    }

    pub(crate) fn forget(&self, id: &AggregateId) {
        if let Ok(mut map) = self.shard(id).lock() {
            map.remove(id);
        }
    }

    /// Records a successful append, when the cache holds exactly the version
    /// the append was made against. Aggregates nobody loaded are not added:
    /// a load reads the last commit anyway, so caching a writer's own
    /// appends would buy nothing until someone loads, and costs a copy of
    /// every event on the append path.
    pub(crate) fn extend(
        &self,
        id: &AggregateId,
        expected: Version,
        version: Version,
        events: &Arc<[Envelope]>,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let Ok(mut map) = self.shard(id).lock() else {
            return;
        };
        // Made against another version: the entry stays a true prefix and
        // the next load fetches what it lacks.
        if let Some(c) = map.get_mut(id).filter(|c| c.version == expected) {
            c.commits.push(Arc::clone(events));
            c.version = version;
            c.events += events.len();
            if c.events > MAX_EVENTS {
                map.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_schemas::events::InstanceCountChanged;
    use berth_schemas::ids::{EventId, ServiceId};
    use berth_schemas::Actor;

    fn env(agg: &AggregateId, sequence: u64) -> Envelope {
        let event: berth_schemas::Event = InstanceCountChanged {
            from: sequence as u32,
            to: sequence as u32 + 1,
        }
        .into();
        Envelope {
            id: EventId::generate(),
            version: event.version(),
            aggregate: agg.clone(),
            sequence,
            time: chrono::Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn v(stream_seq: u64, events: u64) -> Version {
        Version { stream_seq, events }
    }

    #[test]
    fn appends_chain_only_on_the_cached_version() {
        let cache = AggregateCache::new(100);
        let a = AggregateId::Service(ServiceId::generate());
        // Never loaded: appends alone do not fill the cache.
        cache.extend(&a, Version::NEW, v(3, 1), &[env(&a, 1)].into());
        assert!(cache.get(&a).is_none());
        cache.put(
            &a,
            &Loaded {
                events: vec![env(&a, 1)],
                version: v(3, 1),
            },
        );
        cache.extend(&a, v(3, 1), v(9, 3), &[env(&a, 2), env(&a, 3)].into());
        // Made against a stale version: ignored, the cache stays true.
        cache.extend(&a, v(3, 1), v(12, 2), &[env(&a, 2)].into());
        let got = cache.get(&a).unwrap();
        assert_eq!(got.version, v(9, 3));
        let seqs: Vec<u64> = got.events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        cache.forget(&a);
        assert!(cache.get(&a).is_none());
    }

    #[test]
    fn a_long_history_leaves_the_cache() {
        let cache = AggregateCache::new(100);
        let a = AggregateId::Service(ServiceId::generate());
        cache.put(
            &a,
            &Loaded {
                events: vec![env(&a, 1)],
                version: v(1, 1),
            },
        );
        let mut version = v(1, 1);
        for n in 2..=MAX_EVENTS as u64 {
            let next = v(n, n);
            cache.extend(&a, version, next, &[env(&a, n)].into());
            version = next;
        }
        assert_eq!(cache.get(&a).map(|l| l.events.len()), Some(MAX_EVENTS));
        let over = MAX_EVENTS as u64 + 1;
        cache.extend(&a, version, v(over, over), &[env(&a, over)].into());
        assert!(cache.get(&a).is_none(), "grew past the bound");
        let long = Loaded {
            events: (1..=over).map(|n| env(&a, n)).collect(),
            version: v(over, over),
        };
        cache.put(&a, &long);
        assert!(cache.get(&a).is_none(), "a long history was cached");
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = AggregateCache::new(0);
        let a = AggregateId::Service(ServiceId::generate());
        cache.extend(&a, Version::NEW, v(1, 1), &[env(&a, 1)].into());
        cache.put(
            &a,
            &Loaded {
                events: vec![env(&a, 1)],
                version: v(1, 1),
            },
        );
        assert!(cache.get(&a).is_none());
    }
}

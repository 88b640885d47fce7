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
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use berth_schemas::{AggregateId, Envelope};
use foldhash::fast::RandomState;

use crate::{Loaded, Version};

/// Shards of the map; a power of two well above the cores of our machines.
const SHARDS: usize = 16;

/// Events one cached aggregate may hold: a longer history (a service with
/// thousands of deploys) leaves the cache instead of growing in memory with
/// every commit. Commands decide on the folded state, so reading such a
/// history again is rare: only a reader without a folded state does.
pub(crate) const MAX_EVENTS: usize = 4096;

/// Events one shard holds in all, at most: a full shard starts over. Ten
/// thousand services of a hundred events each would otherwise keep a
/// million envelopes (most of a gigabyte) for readers that decide on
/// folded states anyway.
const SHARD_EVENTS: usize = 8192;

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

/// One shard: its aggregates and the events they hold in all.
#[derive(Debug, Default)]
struct ShardMap {
    map: HashMap<AggregateId, Entry, RandomState>,
    events: usize,
}

impl ShardMap {
    fn remove(&mut self, id: &AggregateId) {
        if let Some(e) = self.map.remove(id) {
            self.events -= e.events;
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.events = 0;
    }
}

type Shard = Mutex<ShardMap>;

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
            shards: (0..SHARDS)
                .map(|_| Mutex::new(ShardMap::default()))
                .collect(),
            hasher: RandomState::default(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, id: &AggregateId) -> &Shard {
        let h = self.hasher.hash_one(id) as usize;
        &self.shards[h % SHARDS]
    }

    pub(crate) fn get(&self, id: &AggregateId) -> Option<Loaded> {
        self.shard(id)
            .lock()
            .ok()?
            .map
            .get(id)
            .map(Entry::to_loaded)
    }

    pub(crate) fn put(&self, id: &AggregateId, loaded: &Loaded) {
        if self.per_shard == 0 {
            return;
        }
        if let Ok(mut map) = self.shard(id).lock() {
            map.remove(id);
            if loaded.events.len() > MAX_EVENTS {
                return;
            }
            if map.map.len() >= self.per_shard || map.events + loaded.events.len() > SHARD_EVENTS {
                map.clear();
            }
            map.events += loaded.events.len();
            map.map.insert(
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
        let Some(c) = map.map.get_mut(id).filter(|c| c.version == expected) else {
            return;
        };
        c.commits.push(Arc::clone(events));
        c.version = version;
        c.events += events.len();
        let too_long = c.events > MAX_EVENTS;
        map.events += events.len();
        if too_long {
            map.remove(id);
        } else if map.events > SHARD_EVENTS {
            map.clear();
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
    fn many_aggregates_hold_a_bounded_number_of_events() {
        let cache = AggregateCache::new(10_000);
        for _ in 0..2000 {
            let a = AggregateId::Service(ServiceId::generate());
            let events: Vec<Envelope> = (1..=100).map(|n| env(&a, n)).collect();
            cache.put(
                &a,
                &Loaded {
                    events,
                    version: v(100, 100),
                },
            );
        }
        let shards = cache.shards.iter().map(|s| s.lock().unwrap());
        let (mut held, mut counted) = (0, 0);
        for shard in shards {
            held += shard.events;
            counted += shard.map.values().map(|e| e.events).sum::<usize>();
        }
        assert_eq!(held, counted);
        assert!(
            held > 0 && held <= SHARDS * SHARD_EVENTS,
            "{held} events held"
        );
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

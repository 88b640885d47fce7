//! The store's memory of aggregates it has loaded or appended to. The log is
//! append-only (the stream denies deletes and purges), so a cached prefix
//! of an aggregate is always true; a load only fetches what came after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_schemas::{AggregateId, Envelope};

use crate::{Loaded, Version};

/// A bounded map of aggregates; when full it forgets everything (cheap, and
/// a miss only costs direct gets).
#[derive(Debug, Clone)]
pub(crate) struct AggregateCache {
    inner: Arc<Mutex<HashMap<AggregateId, Loaded>>>,
    capacity: usize,
}

impl AggregateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            capacity,
        }
    }

    pub(crate) fn get(&self, id: &AggregateId) -> Option<Loaded> {
        self.inner.lock().ok()?.get(id).cloned()
    }

    pub(crate) fn put(&self, id: &AggregateId, loaded: &Loaded) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= self.capacity && !map.contains_key(id) {
                map.clear();
            }
            map.insert(id.clone(), loaded.clone());
        }
    }

    pub(crate) fn forget(&self, id: &AggregateId) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(id);
        }
    }

    /// Records a successful append, when the cache holds exactly the version
    /// the append was made against (or the aggregate is new).
    pub(crate) fn extend(
        &self,
        id: &AggregateId,
        expected: Version,
        version: Version,
        events: &[Envelope],
    ) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        match map.get_mut(id) {
            Some(c) if c.version == expected => {
                c.events.extend_from_slice(events);
                c.version = version;
            }
            None if expected == Version::NEW => {
                if map.len() >= self.capacity {
                    map.clear();
                }
                map.insert(
                    id.clone(),
                    Loaded {
                        events: events.to_vec(),
                        version,
                    },
                );
            }
            _ => {}
        }
    }
}

//! The HTTP-01 answers pending, held in memory by every router replica.
//!
//! The issuer (on whichever replica) writes a token's key authorization to
//! the certificate store before it asks the CA to validate;
//! [`CertStore::follow_challenges`] brings it here within milliseconds, so
//! the CA's fetch is answered without a store round trip. A token not held
//! (yet) is looked up in the store, a few lookups at a time: requests for
//! made-up tokens cost the store no more than that, however many arrive.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Semaphore;

use crate::certstore::CertStore;

/// Tokens held at most: far more than the challenges a CA has open.
pub const MAX_HELD: usize = 10_000;
/// Store lookups for tokens not held, in flight at once.
pub const LOOKUPS_AT_ONCE: usize = 8;

/// What a challenge request is answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The key authorization.
    Found(String),
    /// No such challenge pending.
    Unknown,
    /// The store could not be asked now (busy or unreachable).
    Unavailable,
}

#[derive(Debug)]
struct Inner {
    held: RwLock<HashMap<String, String>>,
    lookups: Semaphore,
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Challenges(Arc<Inner>);

impl Default for Challenges {
    fn default() -> Self {
        Challenges(Arc::new(Inner {
            held: RwLock::default(),
            lookups: Semaphore::new(LOOKUPS_AT_ONCE),
        }))
    }
}

impl Challenges {
    /// The answer for `token`: from memory, else from `store`.
    pub async fn answer(&self, store: &CertStore, token: &str) -> Answer {
        if let Some(found) = self.held(token) {
            return Answer::Found(found);
        }
        let Ok(_permit) = self.0.lookups.try_acquire() else {
            metrics::counter!("berth_router_challenge_lookups_refused_total").increment(1);
            return Answer::Unavailable;
        };
        match store.challenge(token).await {
            Ok(Some(found)) => Answer::Found(found),
            Ok(None) => Answer::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "ACME challenge not answerable");
                Answer::Unavailable
            }
        }
    }

    /// The answer held for `token`, if any.
    pub fn held(&self, token: &str) -> Option<String> {
        self.read(|held| held.get(token).cloned())
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.read(HashMap::len)
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, token: &str, answer: &str) {
        self.write(|held| {
            // Past the bound, further tokens are looked up in the store.
            if held.len() < MAX_HELD || held.contains_key(token) {
                held.insert(token.to_owned(), answer.to_owned());
            }
        });
    }

    pub(crate) fn remove(&self, token: &str) {
        self.write(|held| {
            held.remove(token);
        });
    }

    pub(crate) fn clear(&self) {
        self.write(HashMap::clear);
    }

    fn read<T>(&self, f: impl FnOnce(&HashMap<String, String>) -> T) -> T {
        f(&self.0.held.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self, f: impl FnOnce(&mut HashMap<String, String>)) {
        f(&mut self.0.held.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Takes every store lookup permit (tests: the store is "busy").
    #[doc(hidden)]
    pub fn occupy_lookups(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.0.lookups.try_acquire_many(LOOKUPS_AT_ONCE as u32).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_tokens_are_bounded_but_a_held_one_is_always_updated() {
        let c = Challenges::default();
        for i in 0..MAX_HELD + 5 {
            c.insert(&format!("t{i}"), "a");
        }
        assert_eq!(c.len(), MAX_HELD);
        assert_eq!(c.held(&format!("t{}", MAX_HELD)), None);
        c.insert("t0", "b");
        assert_eq!(c.held("t0").as_deref(), Some("b"));
        c.remove("t0");
        assert_eq!(c.held("t0"), None);
        c.clear();
        assert!(c.is_empty());
    }
}

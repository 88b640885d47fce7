//! The commits this store appended lately, by stream sequence, as built:
//! a read model following the log in the same process (the API's index
//! behind the hook desk, every component of `berth up`) takes those
//! envelopes instead of decoding the message it is delivered again. Only
//! appends the server acknowledged as new are kept (a duplicate's sequence
//! names the original commit, not what was built), and only the last
//! [`RECENT_COMMITS`]: a read model that falls further behind decodes, as
//! one in another process always does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_schemas::Envelope;

/// Commits kept: a few seconds of a burst of hooks; ~1 KB each.
pub(crate) const RECENT_COMMITS: usize = 4096;

#[derive(Debug, Default)]
struct Kept {
    by_seq: HashMap<u64, Arc<[Envelope]>>,
    /// Sequences in the order they were kept, oldest first.
    order: VecDeque<u64>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct RecentCommits {
    kept: Mutex<Kept>,
}

impl RecentCommits {
    /// Keeps the envelopes the server stored at `seq`, letting go of the
    /// oldest beyond [`RECENT_COMMITS`].
    pub(crate) fn put(&self, seq: u64, events: &Arc<[Envelope]>) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.by_seq.insert(seq, Arc::clone(events)).is_none() {
            kept.order.push_back(seq);
        }
        while kept.order.len() > RECENT_COMMITS {
            if let Some(old) = kept.order.pop_front() {
                kept.by_seq.remove(&old);
            }
        }
    }

    /// The envelopes stored at `seq`, if this store appended them lately.
    pub(crate) fn get(&self, seq: u64) -> Option<Arc<[Envelope]>> {
        self.kept.lock().ok()?.by_seq.get(&seq).cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_commits_are_kept_and_no_more() {
        let recent = RecentCommits::default();
        let none: Arc<[Envelope]> = Arc::from(Vec::new());
        for seq in 1..=(RECENT_COMMITS as u64 + 10) {
            recent.put(seq, &none);
        }
        assert!(recent.get(10).is_none(), "the oldest were let go");
        assert!(recent.get(11).is_some());
        assert!(recent.get(RECENT_COMMITS as u64 + 10).is_some());
        let kept = recent.kept.lock().unwrap();
        assert_eq!(
            (kept.by_seq.len(), kept.order.len()),
            (RECENT_COMMITS, RECENT_COMMITS)
        );
    }
}

//! The tail of the log the dashboard's live views follow.
//!
//! The API's read model ([`crate::index`]) hands every service event it
//! applies to the [`LiveFeed`] with the stream sequence of its commit. The
//! feed keeps the newest of them in one ring, wakes the subscribers of the
//! service (and of its owner) whose events arrived, and keeps the pull
//! progress nodes report, which no view of the API holds.
//!
//! The ring is filled while the projection holds its write lock for the
//! whole commit, so an event in the ring may belong to a commit not fully
//! applied yet: readers only take events up to the projection's `applied`
//! sequence, which moves once a commit is complete. The ring holds every
//! service event after [`Since::Gap`]'s `complete_after`; a reader asking
//! for older ones is told so and reads them from the log instead.
//!
//! The feed is switched on once the read model has caught up at start-up:
//! a replay of the whole history needs no live tail, and costs nothing here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use berth_schemas::ids::{DeployId, NodeId, OwnerId, ServiceId};
use berth_schemas::{Envelope, Event};
use tokio::sync::watch;

/// Service events held for live views: enough for every subscriber that
/// keeps up; one that falls further behind reads the log.
const RING: usize = 16_384;
/// Deploys whose pull progress is remembered (the newest).
const PULLS_KEPT: usize = 512;

/// One service event the read model applied.
#[derive(Debug)]
pub struct Entry {
    /// The stream sequence of its commit (the live view's event id).
    pub seq: u64,
    pub service: ServiceId,
    /// The service's owner, once created.
    pub owner: Option<OwnerId>,
    /// The commit the event is part of, shared with the log's reader.
    commit: Arc<[Envelope]>,
    /// The event's place in `commit` (always within it).
    index: usize,
}

impl Entry {
    /// The event.
    pub fn envelope(&self) -> &Envelope {
        &self.commit[self.index]
    }
}

/// What a live view follows: one service, or all of an owner's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Service(ServiceId),
    Owner(OwnerId),
}

impl Topic {
    fn matches(&self, e: &Entry) -> bool {
        match self {
            Topic::Service(s) => *s == e.service,
            Topic::Owner(o) => e.owner.as_ref() == Some(o),
        }
    }
}

/// How far one node has pulled a deploy's image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullProgress {
    pub node: NodeId,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The node holds every blob, verified.
    pub done: bool,
}

/// The answer to "what happened after sequence N".
#[derive(Debug)]
pub enum Since {
    /// Every matching event after N, up to the sequence asked for.
    Entries(Vec<Arc<Entry>>),
    /// The ring no longer reaches back to N: it holds everything after
    /// `complete_after` only.
    Gap { complete_after: u64 },
}

#[derive(Debug, Default)]
struct Feed {
    enabled: bool,
    ring: VecDeque<Arc<Entry>>,
    /// Every service event after this sequence is in `ring`.
    complete_after: u64,
    /// The newest sequence of each topic someone follows.
    watchers: HashMap<Topic, watch::Sender<u64>>,
    pulls: HashMap<DeployId, Vec<PullProgress>>,
    pull_order: VecDeque<DeployId>,
}

impl Feed {
    fn newest(&self, topic: &Topic) -> u64 {
        self.ring
            .iter()
            .rev()
            .find(|e| topic.matches(e))
            .map_or(self.complete_after, |e| e.seq)
    }

    fn notify(&mut self, topic: Topic, seq: u64) {
        if let Some(tx) = self.watchers.get(&topic) {
            if tx.receiver_count() == 0 {
                self.watchers.remove(&topic);
            } else {
                tx.send_replace(seq);
            }
        }
    }

    fn record_pull(&mut self, deploy: &DeployId, progress: PullProgress) {
        if !self.pulls.contains_key(deploy) {
            self.pull_order.push_back(deploy.clone());
            if self.pull_order.len() > PULLS_KEPT {
                if let Some(old) = self.pull_order.pop_front() {
                    self.pulls.remove(&old);
                }
            }
        }
        let nodes = self.pulls.entry(deploy.clone()).or_default();
        match nodes.iter_mut().find(|p| p.node == progress.node) {
            // A finished pull stays finished (a late progress report).
            Some(p) if p.done => {}
            Some(p) => *p = progress,
            None => nodes.push(progress),
        }
    }
}

/// The dashboard's tail of the log; see the module doc. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LiveFeed(Arc<Mutex<Feed>>);

impl LiveFeed {
    fn lock(&self) -> MutexGuard<'_, Feed> {
        // The feed is only ever left consistent: a panic elsewhere while it
        // was held changes nothing it holds.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Switches the feed on once the read model has applied the log up to
    /// `applied`: everything after it is held from now on.
    pub fn start(&self, applied: u64) {
        let mut f = self.lock();
        if !f.enabled {
            f.enabled = true;
            f.complete_after = applied;
        }
    }

    /// Takes one service event the read model applied: `commit[index]`.
    /// Out of range, nothing is taken.
    pub fn push(
        &self,
        seq: u64,
        service: &ServiceId,
        owner: Option<&OwnerId>,
        commit: &Arc<[Envelope]>,
        index: usize,
    ) {
        let Some(env) = commit.get(index) else {
            return;
        };
        let mut f = self.lock();
        if !f.enabled {
            return;
        }
        match &env.event {
            Event::ImagePullProgressed(p) => f.record_pull(
                &p.deploy,
                PullProgress {
                    node: p.node.clone(),
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    done: false,
                },
            ),
            Event::ImagePulled(p) => {
                let total = f
                    .pulls
                    .get(&p.deploy)
                    .and_then(|n| n.iter().find(|x| x.node == p.node))
                    .map_or(0, |x| x.bytes_total);
                f.record_pull(
                    &p.deploy,
                    PullProgress {
                        node: p.node.clone(),
                        bytes_done: total,
                        bytes_total: total,
                        done: true,
                    },
                );
            }
            _ => {}
        }
        if f.ring.len() >= RING {
            if let Some(old) = f.ring.pop_front() {
                f.complete_after = f.complete_after.max(old.seq);
            }
        }
        f.ring.push_back(Arc::new(Entry {
            seq,
            service: service.clone(),
            owner: owner.cloned(),
            commit: Arc::clone(commit),
            index,
        }));
        if f.watchers.is_empty() {
            return;
        }
        f.notify(Topic::Service(service.clone()), seq);
        if let Some(o) = owner {
            f.notify(Topic::Owner(o.clone()), seq);
        }
    }

    /// A receiver of the newest sequence of `topic`'s events: it changes
    /// when one arrives (the commit may still be being applied).
    pub fn subscribe(&self, topic: Topic) -> watch::Receiver<u64> {
        let mut f = self.lock();
        let newest = f.newest(&topic);
        f.watchers
            .entry(topic)
            .or_insert_with(|| watch::channel(newest).0)
            .subscribe()
    }

    /// `topic`'s events after `after` and up to `upto`, oldest first.
    pub fn since(&self, topic: &Topic, after: u64, upto: u64) -> Since {
        let f = self.lock();
        if after < f.complete_after {
            return Since::Gap {
                complete_after: f.complete_after,
            };
        }
        let start = f.ring.partition_point(|e| e.seq <= after);
        Since::Entries(
            f.ring
                .range(start..)
                .take_while(|e| e.seq <= upto)
                .filter(|e| topic.matches(e))
                .cloned()
                .collect(),
        )
    }

    /// The pull progress nodes reported for `deploy` since the API started.
    pub fn pulls(&self, deploy: &DeployId) -> Vec<PullProgress> {
        self.lock().pulls.get(deploy).cloned().unwrap_or_default()
    }

    /// Topics followed now (for tests and metrics).
    pub fn followed(&self) -> usize {
        self.lock()
            .watchers
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use berth_schemas::events::{ImagePullProgressed, ImagePulled, ServiceSuspended};
    use berth_schemas::{Actor, AggregateId};

    /// A commit of one event.
    fn one(env: Envelope) -> Arc<[Envelope]> {
        Arc::from(vec![env])
    }

    fn env(service: &ServiceId, event: Event) -> Envelope {
        Envelope {
            id: berth_schemas::ids::EventId::generate(),
            version: event.version(),
            aggregate: AggregateId::Service(service.clone()),
            sequence: 1,
            time: chrono::Utc::now(),
            actor: Actor::system("test"),
            correlation_id: None,
            causation_id: None,
            event,
        }
    }

    fn suspended(s: &ServiceId) -> Envelope {
        env(s, ServiceSuspended {}.into())
    }

    #[test]
    fn holds_nothing_before_it_starts_and_everything_after() {
        let feed = LiveFeed::default();
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        feed.push(3, &a, None, &one(suspended(&a)), 0);
        feed.start(5);
        feed.push(6, &a, None, &one(suspended(&a)), 0);
        feed.push(7, &b, None, &one(suspended(&b)), 0);
        feed.push(7, &b, None, &one(suspended(&b)), 0);
        feed.push(9, &a, None, &one(suspended(&a)), 0);
        let seqs = |s: Since| match s {
            Since::Entries(e) => e.iter().map(|e| e.seq).collect::<Vec<_>>(),
            Since::Gap { complete_after } => vec![0, complete_after],
        };
        let topic = Topic::Service(a.clone());
        assert_eq!(seqs(feed.since(&topic, 5, 100)), vec![6, 9]);
        assert_eq!(seqs(feed.since(&topic, 6, 8)), Vec::<u64>::new());
        assert_eq!(seqs(feed.since(&Topic::Service(b), 6, 8)), vec![7, 7]);
        assert_eq!(seqs(feed.since(&topic, 2, 100)), vec![0, 5], "before start");
    }

    #[test]
    fn the_events_of_a_commit_are_held_by_sharing_it_not_copied() {
        let feed = LiveFeed::default();
        feed.start(0);
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        let commit: Arc<[Envelope]> = Arc::from(vec![suspended(&a), suspended(&b)]);
        feed.push(1, &a, None, &commit, 0);
        feed.push(1, &b, None, &commit, 1);
        // Out of range: nothing held.
        feed.push(1, &b, None, &commit, 2);
        let Since::Entries(held) = feed.since(&Topic::Service(b.clone()), 0, 1) else {
            panic!("a gap");
        };
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].envelope().aggregate, AggregateId::Service(b));
        assert!(std::ptr::eq(held[0].envelope(), &commit[1]));
        assert_eq!(
            Arc::strong_count(&commit),
            3,
            "the test's and the two entries'"
        );
    }

    #[test]
    fn a_full_ring_says_where_it_starts() {
        let feed = LiveFeed::default();
        feed.start(0);
        let a = ServiceId::generate();
        for seq in 1..=(RING as u64 + 10) {
            feed.push(seq, &a, None, &one(suspended(&a)), 0);
        }
        let topic = Topic::Service(a);
        assert!(matches!(
            feed.since(&topic, 3, u64::MAX),
            Since::Gap { complete_after: 10 }
        ));
        match feed.since(&topic, 10, u64::MAX) {
            Since::Entries(e) => assert_eq!(e.len(), RING),
            Since::Gap { .. } => panic!("the ring holds everything after 10"),
        }
    }

    #[test]
    fn subscribers_learn_of_their_topic_only() {
        let feed = LiveFeed::default();
        feed.start(0);
        let (a, b) = (ServiceId::generate(), ServiceId::generate());
        let owner: OwnerId = "usr-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let mut rx = feed.subscribe(Topic::Service(a.clone()));
        let mut all = feed.subscribe(Topic::Owner(owner.clone()));
        feed.push(1, &b, Some(&owner), &one(suspended(&b)), 0);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(*all.borrow_and_update(), 1);
        feed.push(2, &a, Some(&owner), &one(suspended(&a)), 0);
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(feed.followed(), 2);
        drop(rx);
        feed.push(3, &a, None, &one(suspended(&a)), 0);
        assert_eq!(feed.followed(), 1, "a topic nobody follows is let go");
        // A late subscriber starts at the topic's newest event.
        assert_eq!(*feed.subscribe(Topic::Service(a)).borrow(), 3);
    }

    #[test]
    fn pull_progress_per_node_ends_done() {
        let feed = LiveFeed::default();
        feed.start(0);
        let s = ServiceId::generate();
        let d = DeployId::generate();
        let node: NodeId = "nod-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let progress = |done| {
            env(
                &s,
                ImagePullProgressed {
                    deploy: d.clone(),
                    node: node.clone(),
                    bytes_done: done,
                    bytes_total: 100,
                }
                .into(),
            )
        };
        feed.push(1, &s, None, &one(progress(40)), 0);
        assert_eq!(feed.pulls(&d)[0].bytes_done, 40);
        let pulled = env(
            &s,
            ImagePulled {
                deploy: d.clone(),
                node: node.clone(),
                digest: "sha256:1".into(),
            }
            .into(),
        );
        feed.push(2, &s, None, &one(pulled), 0);
        feed.push(3, &s, None, &one(progress(50)), 0);
        let p = &feed.pulls(&d)[0];
        assert!(p.done && p.bytes_done == 100, "{p:?}");
    }
}

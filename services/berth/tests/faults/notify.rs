//! Failure notifications checked against the log: every failure the
//! timeline reports (a failed deploy's `deploy_ended`, `image_pull_failed`,
//! `server_failed`) reaches the webhook receiver under exactly one
//! `webhook-id` (the same id more than once is allowed by the delivery
//! contract, and counted), and nothing else reaches it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_domain::timeline::TimelineEvent;

use crate::model::Log;
use crate::world::World;

/// How long deliveries may trail the log once the installation converged.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Notified {
    /// Failures in the log.
    pub failures: usize,
    /// Of those, the failed deploys.
    pub failed_deploys: usize,
    /// Requests the receiver got.
    pub receipts: usize,
    /// Of those, answered 503 by the receiver (to be retried).
    pub refused: usize,
    /// Distinct `webhook-id`s among them.
    pub ids: usize,
    pub problems: Vec<String>,
}

impl Notified {
    pub fn line(&self) -> String {
        format!(
            "notifications: {} failures in the log ({} failed deploys), {} webhook-ids, {} requests received ({} answered 503 on purpose; {} repeats of a webhook-id)",
            self.failures,
            self.failed_deploys,
            self.ids,
            self.receipts,
            self.refused,
            self.receipts - self.ids
        )
    }
}

/// Waits (at most [`SETTLE`]) until every failure was delivered, then
/// checks the deliveries against the log.
pub async fn settle(world: &World, log: &mut Log) -> Notified {
    let t0 = Instant::now();
    loop {
        let _ = log.refresh(world).await;
        let n = check(world, log);
        if n.problems.is_empty() || t0.elapsed() > SETTLE {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn check(world: &World, log: &Log) -> Notified {
    let mut n = Notified::default();
    let Some(receiver) = &world.receiver else {
        return n;
    };
    // Failure event id -> what it is.
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for env in log.events() {
        let Some(t) = TimelineEvent::from_envelope(env) else {
            continue;
        };
        if t.is_failure() {
            if t.kind == "deploy_ended" {
                n.failed_deploys += 1;
            }
            failures.insert(t.id.clone(), format!("{} {}", t.kind, t.details));
        }
    }
    n.failures = failures.len();
    let got = receiver.received();
    n.receipts = got.len();
    n.refused = got.iter().filter(|r| !r.accepted).count();
    // webhook-id -> the event ids its requests named.
    let mut by_id: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &got {
        let event = r.body["data"]["id"].as_str().unwrap_or_default().to_owned();
        match &r.id {
            Some(id) => {
                by_id.entry(id.clone()).or_default().insert(event);
            }
            None => n
                .problems
                .push(format!("a delivery without a webhook-id: {}", r.body)),
        }
    }
    n.ids = by_id.len();
    let accepted: BTreeSet<&str> = got
        .iter()
        .filter(|r| r.accepted)
        .filter_map(|r| r.id.as_deref())
        .collect();
    // Event id -> the webhook-ids it was delivered under.
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, events) in &by_id {
        if !accepted.contains(id.as_str()) {
            n.problems
                .push(format!("webhook-id {id} was refused and never sent again"));
        }
        if events.len() > 1 {
            n.problems
                .push(format!("webhook-id {id} carried events {events:?}"));
        }
        for e in events {
            if !failures.contains_key(e) {
                n.problems.push(format!(
                    "webhook-id {id} delivered {e:?}, not a failure in the log"
                ));
            }
            *per_event.entry(e.as_str()).or_default() += 1;
        }
    }
    for (event, what) in &failures {
        match per_event.get(event.as_str()).copied().unwrap_or(0) {
            1 => {}
            0 => n
                .problems
                .push(format!("failure {event} ({what}) never notified")),
            k => n.problems.push(format!(
                "failure {event} ({what}) notified under {k} webhook-ids"
            )),
        }
    }
    n
}

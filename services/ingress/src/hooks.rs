//! The deploy hook's write path (SPEC §6), built for CI bursts.
//!
//! Every hook call is a real decision on the service: the key is compared
//! in constant time with the sealed hook key and `imgURL` checked against
//! the service's repository, both against the state the append is
//! conditional on, and the caller hears "deployed" only once its
//! `deploy_created` is appended.
//!
//! Calls for one service are handed to that service's *desk*: one task that
//! takes every call waiting, decides them one after another against the
//! evolving state, and appends all their events as **one commit** (group
//! commit). So N concurrent calls on one service cost one append instead of
//! N load/append rounds racing for the same subject. The desk keeps the
//! state and version it last wrote, so the next batch appends without
//! loading first; if anyone else wrote in between, the append conflicts
//! and the desk reloads and decides again. A call already decided (its
//! deploy id is in the state after a reload) is done and not decided twice,
//! so a lost ack never creates a second deploy.
//!
//! A refusal (wrong key, suspended service) is only answered after deciding
//! against a freshly loaded state, so a regenerated key or a resume written
//! by another path is never missed.
//!
//! Desks end after a few idle seconds; a call for a service id that does
//! not exist costs one load and then is answered "not found".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::reference::Reference;
use berth_domain::service::{self, DeployRequest, ServiceState};
use berth_domain::{Ctx, DomainError};
use berth_eventlog::{EventStore, NewEvent, Version};
use berth_runtime::{Secret, SecretKey};
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::model::{seal_context, DeployTrigger, Sealed};
use berth_schemas::{Actor, AggregateId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most calls decided into one commit (keeps a commit well under NATS's
/// 1 MB message limit).
const MAX_BATCH: usize = 64;
/// Calls waiting per service before callers wait for room.
const QUEUE: usize = 1024;
/// Conflict rounds before a batch is answered "try again".
const MAX_ROUNDS: usize = 50;

/// Why a deploy hook call was refused. The API answers 404 for `NotFound`
/// and `BadImage` alike (SPEC §6: do not reveal which services exist).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    /// Unknown or deleted service, or a wrong key.
    #[error("no such deploy hook")]
    NotFound,
    /// `imgURL` broke SPEC §6's rule (the message is for logs only).
    #[error("invalid imgURL: {0}")]
    BadImage(String),
    /// The service refused the deploy (suspended).
    #[error(transparent)]
    Rejected(DomainError),
    /// Retry later (503).
    #[error("event store unavailable: {0}")]
    Store(String),
}

struct Call {
    deploy: DeployId,
    key: String,
    img_url: Option<String>,
    reply: oneshot::Sender<Result<DeployId, HookError>>,
}

type Desks = Arc<Mutex<HashMap<ServiceId, mpsc::Sender<Call>>>>;

/// Hands hook calls to per-service desks.
#[derive(Clone)]
pub(crate) struct HookDesks {
    store: EventStore,
    key: SecretKey,
    desks: Desks,
    /// A desk with nothing to do for this long ends.
    idle: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for HookDesks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookDesks").finish_non_exhaustive()
    }
}

/// Length of every hook key berth makes: 24 random bytes, unpadded base64url.
pub const HOOK_KEY_LEN: usize = 32;

/// Whether `key` has the shape of a hook key berth makes. Anything else
/// cannot be one, so a caller refuses it before any work on the bus.
pub fn is_hook_key_shaped(key: &str) -> bool {
    key.len() == HOOK_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Constant-time equality of two byte strings (the length is not secret:
/// every hook key has the same length).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HookDesks {
    pub(crate) fn new(
        store: EventStore,
        key: SecretKey,
        idle: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            key,
            desks: Arc::default(),
            idle,
            tracker,
            shutdown,
        }
    }

    /// One hook call: the new deploy's id once it is appended.
    pub(crate) async fn call(
        &self,
        id: &ServiceId,
        key: &str,
        img_url: Option<&str>,
    ) -> Result<DeployId, HookError> {
        let (tx, rx) = oneshot::channel();
        let mut call = Call {
            deploy: DeployId::generate(),
            key: key.to_owned(),
            img_url: img_url.map(str::to_owned),
            reply: tx,
        };
        // A desk that just ended drops the call back to us: open another.
        for _ in 0..3 {
            let desk = self.desk(id)?;
            match desk.send(call).await {
                Ok(()) => {
                    return rx
                        .await
                        .map_err(|_| HookError::Store("shutting down".to_owned()))?
                }
                Err(mpsc::error::SendError(c)) => call = c,
            }
        }
        Err(HookError::Store("deploy hook desk unavailable".to_owned()))
    }

    fn desk(&self, id: &ServiceId) -> Result<mpsc::Sender<Call>, HookError> {
        let mut desks = self
            .desks
            .lock()
            .map_err(|_| HookError::Store("hook desks poisoned".to_owned()))?;
        if let Some(tx) = desks.get(id).filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        desks.insert(id.clone(), tx.clone());
        let desk = Desk {
            id: id.clone(),
            aggregate: AggregateId::Service(id.clone()),
            context: seal_context::hook_key(id),
            store: self.store.clone(),
            key: self.key.clone(),
            cached: None,
            opened: None,
        };
        let (all, shutdown) = (self.desks.clone(), self.shutdown.clone());
        self.tracker.spawn(desk.run(rx, all, self.idle, shutdown));
        Ok(tx)
    }
}

/// One service's desk.
struct Desk {
    id: ServiceId,
    aggregate: AggregateId,
    context: String,
    store: EventStore,
    key: SecretKey,
    /// The state and version as of this desk's last load or append.
    cached: Option<(ServiceState, Version)>,
    /// The hook key last opened and what it was sealed as: opening (an AEAD
    /// decryption) once per key rather than once per call. A regenerated key
    /// has another sealed form, so it is opened afresh.
    opened: Option<(Sealed, Secret)>,
}

impl Desk {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Call>,
        desks: Desks,
        idle: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => None,
                c = tokio::time::timeout(idle, rx.recv()) => match c {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => None,
                    Err(_) => {
                        // Idle: leave, unless a call arrived meanwhile.
                        if let Ok(mut d) = desks.lock() {
                            if rx.is_empty() {
                                d.remove(&self.id);
                                rx.close();
                            }
                        }
                        rx.try_recv().ok()
                    }
                },
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let outcomes = self.decide_batch(&batch).await;
            for (call, outcome) in batch.into_iter().zip(outcomes) {
                let _ = call.reply.send(outcome);
            }
        }
        // The next desk for the service starts from here: the store keeps
        // it as the service's folded state and folds only what comes after.
        if let Some((state, version)) = self.cached.take() {
            self.store.remember(&self.aggregate, version, state);
        }
        // Calls still queued when shutting down hear "try again".
        rx.close();
        while let Ok(c) = rx.try_recv() {
            let _ = c
                .reply
                .send(Err(HookError::Store("shutting down".to_owned())));
        }
    }

    /// The state to decide on, and whether it was just loaded (a cached
    /// one may be behind the log).
    async fn load(&mut self) -> Result<(ServiceState, Version, bool), HookError> {
        if let Some((s, v)) = self.cached.take() {
            return Ok((s, v, false));
        }
        // The store's folded state, taken over (not copied): only what was
        // appended since it was left there is read and folded.
        let (state, version) = self
            .store
            .take_state(&self.aggregate, service::fold)
            .await
            .map_err(|e| HookError::Store(e.to_string()))?;
        Ok((state, version, true))
    }

    /// One call against `s`: the events it appends (none when it was
    /// decided already).
    fn decide(
        &mut self,
        s: &ServiceState,
        call: &Call,
    ) -> Result<Vec<berth_schemas::Event>, HookError> {
        let cfg = match &s.config {
            Some(c) if s.exists() => c,
            _ => return Err(HookError::NotFound),
        };
        let right = match &self.opened {
            Some((sealed, open)) if *sealed == cfg.hook_key => open,
            _ => {
                let open = self
                    .key
                    .open(&cfg.hook_key, &self.context)
                    .map_err(|_| HookError::NotFound)?;
                &self.opened.insert((cfg.hook_key.clone(), open)).1
            }
        };
        if !same_secret(right.expose().as_bytes(), call.key.as_bytes()) {
            return Err(HookError::NotFound);
        }
        let image = match &call.img_url {
            None => None,
            Some(u) => {
                let own =
                    Reference::parse(&cfg.image).map_err(|e| HookError::BadImage(e.to_string()))?;
                let wanted = Reference::hook_override(&own, u)
                    .map_err(|e| HookError::BadImage(e.to_string()))?;
                Some(wanted.to_string())
            }
        };
        let req = DeployRequest {
            deploy: call.deploy.clone(),
            trigger: DeployTrigger::DeployHook,
            image,
            rollback_of: None,
        };
        service::decide(s, service::Command::RequestDeploy(req), &Ctx::default())
            .map_err(HookError::Rejected)
    }

    async fn decide_batch(&mut self, batch: &[Call]) -> Vec<Result<DeployId, HookError>> {
        let store_err = |e: String| vec![Err(HookError::Store(e)); batch.len()];
        // Stable across rounds: a retried commit after a lost ack is
        // recognised as a duplicate by the server.
        let key = format!("hook-{}", batch[0].deploy);
        for _ in 0..MAX_ROUNDS {
            // Decided on the state itself, not a copy: a service with a long
            // history makes copying it the most expensive part of a call. A
            // failed round drops it and reloads.
            let (mut s, version, fresh) = match self.load().await {
                Ok(x) => x,
                Err(e) => return vec![Err(e); batch.len()],
            };
            // The append stamps its own time a moment later; the desk's copy
            // only decides further hook calls, which do not depend on it.
            let now = chrono::Utc::now();
            let mut events = Vec::new();
            let mut outcomes = Vec::with_capacity(batch.len());
            for call in batch {
                match self.decide(&s, call) {
                    Ok(new) => {
                        for e in &new {
                            s = service::apply_at(s, e, Some(now));
                        }
                        events.extend(new.into_iter().map(|e| NewEvent::new(e, Actor::DeployHook)));
                        outcomes.push(Ok(call.deploy.clone()));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            // A refusal is only final against the log's latest state: the
            // key may have been regenerated, or the service resumed, since
            // the cached copy.
            if !fresh && outcomes.iter().any(Result::is_err) {
                continue;
            }
            if events.is_empty() {
                self.cached = Some((s, version));
                return outcomes;
            }
            match self
                .store
                .append(&self.aggregate, version, events, &key)
                .await
            {
                Ok(appended) if !appended.duplicate => {
                    self.cached = Some((s, appended.version));
                    tracing::info!(service.id = %self.id, deploys = outcomes.iter().filter(|o| o.is_ok()).count(), "deploy hook calls appended");
                    return outcomes;
                }
                // A duplicate, a conflict or an unknown outcome: reload; calls
                // whose deploy is there are decided already (no events).
                Ok(_) => {}
                Err(e) if e.is_conflict() || e.is_outcome_unknown() => {
                    tracing::debug!(service.id = %self.id, error = %e, "hook batch retried");
                }
                Err(e) => return store_err(e.to_string()),
            }
            self.cached = None;
        }
        store_err("too contended".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::{is_hook_key_shaped, same_secret};

    #[test]
    fn made_hook_keys_have_the_shape_checked_before_any_io() {
        for _ in 0..100 {
            let key = crate::services::hook_key();
            assert!(is_hook_key_shaped(key.expose()), "{}", key.expose());
        }
        for bad in [
            "",
            "short",
            &"a".repeat(33),
            &format!("{}=", "a".repeat(31)),
        ] {
            assert!(!is_hook_key_shaped(bad), "{bad:?}");
        }
        assert!(!is_hook_key_shaped(&format!("{}é", "a".repeat(30))));
    }

    #[test]
    fn same_secret_compares_whole_strings() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }
}

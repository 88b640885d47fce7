//! The deploy hook's write path (SPEC §6), built for CI bursts.
//!
//! Every hook call is a real decision on the service: the key is compared
//! in constant time with the sealed hook key and `imgURL` checked against
//! the service's repository, both against the state the append is
//! conditional on, and the caller hears "deployed" only once its
//! `deploy_created` is appended.
//!
//! Calls for one service are handed to that service's *desk*: one task that
//! takes every call waiting and runs them as one batch on the store's
//! command path ([`EventStore::execute_batch`]): decided one after another
//! against the evolving state and appended as **one commit** (group
//! commit). So N concurrent calls on one service cost one append instead of
//! N load/append rounds racing for the same subject. The store keeps the
//! service's folded state as of the last commit, so the next batch appends
//! without loading first; if anyone else wrote in between, the append
//! conflicts and the store folds in only what is new and decides again. A
//! call already decided (its deploy id is in the state) is done and not
//! decided twice, so a lost ack never creates a second deploy.
//!
//! A refusal (wrong key, suspended service) is only answered after deciding
//! against the log's latest state, so a regenerated key or a resume written
//! by another path is never missed.
//!
//! Desks end after a few idle seconds; a call for a service id that does
//! not exist costs one load and then is answered "not found".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::reference::Reference;
use berth_domain::service::{self, DeployRequest, Service, ServiceState};
use berth_domain::DomainError;
use berth_eventlog::{EventStore, ExecuteError, Stamp};
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

impl From<DomainError> for HookError {
    fn from(e: DomainError) -> Self {
        HookError::Rejected(e)
    }
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
            store: self.store.clone(),
            keys: HookKey {
                context: seal_context::hook_key(id),
                key: self.key.clone(),
                opened: None,
            },
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
    store: EventStore,
    keys: HookKey,
}

/// A service's hook key, to check calls against.
struct HookKey {
    context: String,
    key: SecretKey,
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
        // Calls still queued when shutting down hear "try again".
        rx.close();
        while let Ok(c) = rx.try_recv() {
            let _ = c
                .reply
                .send(Err(HookError::Store("shutting down".to_owned())));
        }
    }

    async fn decide_batch(&mut self, batch: &[Call]) -> Vec<Result<DeployId, HookError>> {
        // Stable across rounds: a retried commit after a lost ack is
        // recognised as a duplicate by the server.
        let key = format!("hook-{}", batch[0].deploy);
        let keys = &mut self.keys;
        let done = self
            .store
            .execute_batch::<Service, Call, HookError>(
                &self.aggregate,
                &key,
                &Stamp::new(Actor::DeployHook),
                batch,
                |s, call| keys.command(s, call).map(Some),
            )
            .await;
        match done {
            Ok(done) => {
                if done.executed.appended.is_some() {
                    tracing::info!(service.id = %self.id, deploys = done.outcomes.iter().filter(|o| o.is_ok()).count(), "deploy hook calls appended");
                }
                batch
                    .iter()
                    .zip(done.outcomes)
                    .map(|(call, outcome)| outcome.map(|()| call.deploy.clone()))
                    .collect()
            }
            Err(e) => {
                let e = match e {
                    ExecuteError::TooContended { .. } => "too contended".to_owned(),
                    other => other.to_string(),
                };
                vec![Err(HookError::Store(e)); batch.len()]
            }
        }
    }
}

impl HookKey {
    /// What `call` asks of the service in `s`: a deploy, if its key is the
    /// service's hook key and its `imgURL` names the service's repository.
    fn command(&mut self, s: &ServiceState, call: &Call) -> Result<service::Command, HookError> {
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
        Ok(service::Command::RequestDeploy(DeployRequest {
            deploy: call.deploy.clone(),
            trigger: DeployTrigger::DeployHook,
            image,
            rollback_of: None,
        }))
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

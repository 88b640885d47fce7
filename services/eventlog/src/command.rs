//! The one command path: a command for an aggregate type
//! ([`berth_domain::Aggregate`]) is decided on the aggregate's folded state,
//! stamped and appended as one commit at the version it was decided on.
//!
//! - [`EventStore::execute`]: one command; on a conflict the events
//!   appended since are folded in and the command is decided again;
//! - [`EventStore::execute_when`]: the same, with the command chosen on the
//!   state (or none, when there is nothing to do);
//! - [`EventStore::execute_batch`]: several calls decided one after another
//!   on the evolving state and appended as **one** commit (the deploy
//!   hook's group commit), with the same conflict handling;
//! - [`EventStore::execute_on`]: one command on a state the caller planned
//!   on, appended at that state's version or not at all (a reconciler that
//!   plans again on a conflict).
//!
//! The state comes from the store's folded-state cache: a round decides on
//! it as this process last saw it without asking the log (the append's
//! expected version fails if anyone wrote since); a refusal, or a decision
//! that appends nothing, is only trusted against the log's end, so it is
//! made again on that. Every catch-up folds only what is new, never the
//! history again.

use std::sync::Arc;
use std::time::Duration;

use berth_domain::{Aggregate, Ctx, DomainError};
use berth_schemas::ids::DeployId;
use berth_schemas::{Actor, AggregateId, Envelope, Event};

use crate::log::envelope;
use crate::{AppendError, Appended, EventStore, ExecuteError, NewEvent, Version};

/// Who runs a command, stamped on every event it appends.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    /// Who caused the events.
    pub actor: Actor,
    /// The deploy an event belongs to when it names none itself; before
    /// the aggregate's own rule ([`Aggregate::correlation`]).
    pub correlation_id: Option<DeployId>,
    /// The event or command id that caused them.
    pub causation_id: Option<String>,
}

impl Stamp {
    /// Events caused by `actor`, with no causation; those that name no
    /// deploy belong to `deploy`, if given.
    pub fn new(actor: Actor) -> Self {
        Self::of_deploy(actor, None)
    }

    /// Events caused by `actor`; those that name no deploy belong to
    /// `deploy`, if given.
    pub fn of_deploy(actor: Actor, deploy: Option<DeployId>) -> Self {
        Self {
            actor,
            correlation_id: deploy,
            causation_id: None,
        }
    }

    /// Sets the event or command id that caused the events.
    pub fn caused_by(mut self, cause: impl Into<String>) -> Self {
        self.causation_id = Some(cause.into());
        self
    }

    /// `event`, decided on `state` of an `A`, as a new event.
    fn stamp<A: Aggregate>(&self, state: &A::State, event: Event) -> NewEvent {
        let mut new = NewEvent::new(event, self.actor.clone());
        if new.correlation_id.is_none() {
            new.correlation_id = self
                .correlation_id
                .clone()
                .or_else(|| A::correlation(state, &new.event));
        }
        new.causation_id = self.causation_id.clone();
        new
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<S> {
    /// The state after the new events (the state decided on when nothing
    /// was appended), shared with the store's folded state: not copied.
    pub state: Arc<S>,
    /// The append, or `None` when the decision produced no events.
    pub appended: Option<Appended>,
    /// Decide-append rounds it took (1 without contention).
    pub attempts: u32,
}

/// What a batch did: the command's outcome and each call's.
#[derive(Debug)]
pub struct Batch<S, E> {
    /// The append of every accepted call's events (one commit).
    pub executed: Executed<S>,
    /// Per call, in order: accepted (its events, if any, are in the
    /// commit) or refused against the log's latest state.
    pub outcomes: Vec<Result<(), E>>,
}

/// A second copy of an aggregate's folded state for batches, which decide
/// each call on the state their earlier calls left: the copy takes their
/// events while the store's folded state stays as the log has it, so a
/// conflict folds only what is new into the latter instead of reading the
/// history again. Kept next to the state and moved along with it, so a
/// batch does not copy a long history per commit.
#[derive(Debug, Clone)]
pub(crate) struct Spare<S>(S);

impl<S> Spare<S> {
    /// The copy with `events` folded in.
    pub(crate) fn advance<F>(self, events: &[Envelope], fold: F) -> Self
    where
        F: Fn(S, &Envelope) -> S,
    {
        Spare(events.iter().fold(self.0, fold))
    }
}

/// Where a run starts.
enum Start<S> {
    /// The store's folded state; conflicts are decided again.
    Cached,
    /// The caller's state at its version, decided once.
    On(Version, Arc<S>),
}

impl EventStore {
    /// Runs `command` on `aggregate`, an `A`: decided on its folded state,
    /// stamped with `stamp`, appended with `idempotency_key`; on a conflict
    /// the new events are folded in and the command decided again (never a
    /// blind overwrite), up to `max_execute_attempts` rounds. An unknown
    /// outcome is retried as-is with the same key, which is safe.
    pub async fn execute<A: Aggregate>(
        &self,
        aggregate: &AggregateId,
        idempotency_key: &str,
        stamp: &Stamp,
        command: A::Command,
    ) -> Result<Executed<A::State>, ExecuteError<DomainError>> {
        self.execute_when::<A, DomainError>(aggregate, idempotency_key, stamp, |_| {
            Ok(Some(command.clone()))
        })
        .await
    }

    /// [`EventStore::execute`] with the command chosen on the state it is
    /// decided on: `None` when there is nothing to do, or the caller's own
    /// refusal.
    pub async fn execute_when<A, E>(
        &self,
        aggregate: &AggregateId,
        idempotency_key: &str,
        stamp: &Stamp,
        choose: impl Fn(&A::State) -> Result<Option<A::Command>, E>,
    ) -> Result<Executed<A::State>, ExecuteError<E>>
    where
        A: Aggregate,
        E: From<DomainError>,
    {
        let batch = self
            .run::<A, (), E>(
                aggregate,
                idempotency_key,
                stamp,
                Start::Cached,
                &[()],
                |s, ()| choose(s),
            )
            .await?;
        one(batch)
    }

    /// Decides `calls` one after another, each on the state the earlier
    /// ones left (`choose` turns a call into a command, or refuses it), and
    /// appends every accepted call's events as one commit. Refusals are
    /// final only against the log's latest state; a conflict folds the new
    /// events in and decides the whole batch again. A call whose effect is
    /// already in the state (an earlier round's commit that landed) decides
    /// to nothing and counts as accepted.
    pub async fn execute_batch<A, C, E>(
        &self,
        aggregate: &AggregateId,
        idempotency_key: &str,
        stamp: &Stamp,
        calls: &[C],
        choose: impl FnMut(&A::State, &C) -> Result<Option<A::Command>, E>,
    ) -> Result<Batch<A::State, E>, ExecuteError<E>>
    where
        A: Aggregate,
        E: From<DomainError>,
    {
        self.run::<A, C, E>(
            aggregate,
            idempotency_key,
            stamp,
            Start::Cached,
            calls,
            choose,
        )
        .await
    }

    /// Runs `command` on `state`, the aggregate as the caller saw it at
    /// `version` (and planned on), appended at that version or not at all:
    /// [`ExecuteError::Append`] with a conflict when someone moved the
    /// aggregate since, for the caller to plan again.
    pub async fn execute_on<A: Aggregate>(
        &self,
        aggregate: &AggregateId,
        state: (Arc<A::State>, Version),
        idempotency_key: &str,
        stamp: &Stamp,
        command: A::Command,
    ) -> Result<Executed<A::State>, ExecuteError<DomainError>> {
        let batch = self
            .run::<A, (), DomainError>(
                aggregate,
                idempotency_key,
                stamp,
                Start::On(state.1, state.0),
                &[()],
                |_, ()| Ok(Some(command.clone())),
            )
            .await?;
        one(batch)
    }

    /// The command path itself: rounds of decide → stamp → append.
    async fn run<A, C, E>(
        &self,
        aggregate: &AggregateId,
        key: &str,
        stamp: &Stamp,
        start: Start<A::State>,
        calls: &[C],
        mut choose: impl FnMut(&A::State, &C) -> Result<Option<A::Command>, E>,
    ) -> Result<Batch<A::State, E>, ExecuteError<E>>
    where
        A: Aggregate,
        E: From<DomainError>,
    {
        let ctx = Ctx::default();
        let (max, pinned, mut held) = match start {
            Start::Cached => (
                self.cfg.max_execute_attempts.max(1),
                false,
                self.states
                    .get::<A::State>(aggregate)
                    .map(|(v, s)| (v, s, false)),
            ),
            Start::On(version, state) => (1, true, Some((version, state, true))),
        };
        for attempt in 1..=max {
            let (version, state, current) = match held.take() {
                Some(h) => h,
                None => {
                    let (state, version) = self.state(aggregate, A::fold).await?;
                    (version, state, true)
                }
            };
            let time = chrono::Utc::now();
            let mut envelopes: Vec<Envelope> = Vec::new();
            let mut outcomes = Vec::with_capacity(calls.len());
            // The state later calls see: a spare copy, made (or taken)
            // only once a call that is not the last appends something.
            let mut working: Option<A::State> = None;
            let mut folded = 0;
            for (i, call) in calls.iter().enumerate() {
                let view = working.as_ref().unwrap_or(&state);
                let decided = choose(view, call).and_then(|command| match command {
                    Some(c) => A::decide(view, c, &ctx).map_err(E::from),
                    None => Ok(vec![]),
                });
                let events = match decided {
                    Ok(events) => events,
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                };
                outcomes.push(Ok(()));
                for event in events {
                    let new = stamp.stamp::<A>(view, event);
                    let sequence = version.events + 1 + envelopes.len() as u64;
                    envelopes.push(envelope(aggregate, sequence, time, new));
                }
                if envelopes.len() > folded && i + 1 < calls.len() {
                    let w = match working.take() {
                        Some(w) => w,
                        None => self.spare::<A::State>(aggregate, version, &state),
                    };
                    working = Some(envelopes[folded..].iter().fold(w, A::fold));
                    folded = envelopes.len();
                }
            }
            if !current && (envelopes.is_empty() || outcomes.iter().any(Result::is_err)) {
                // Decided on a state that may be behind: decide again on
                // the log's.
                continue;
            }
            if envelopes.is_empty() {
                return Ok(Batch {
                    executed: Executed {
                        state,
                        appended: None,
                        attempts: attempt,
                    },
                    outcomes,
                });
            }
            match self
                .commit_retrying_unknown(aggregate, version, envelopes.into(), key)
                .await
            {
                Ok(appended) => {
                    let state = if appended.duplicate {
                        // Someone (an earlier try of this command) already
                        // appended: the log's state is the truth.
                        self.state(aggregate, A::fold).await?.0
                    } else {
                        let next = appended.version;
                        if let Some(w) = working {
                            let spare = Spare(w).advance(&appended.events[folded..], A::fold);
                            self.states.put(aggregate, next, Arc::new(spare));
                        }
                        self.advance(aggregate, version, state, next, &appended.events, A::fold)
                    };
                    return Ok(Batch {
                        executed: Executed {
                            state,
                            appended: Some(appended),
                            attempts: attempt,
                        },
                        outcomes,
                    });
                }
                Err(e) if e.is_conflict() && !pinned => {
                    tracing::debug!(aggregate = %aggregate, attempt, "append conflict, deciding again");
                }
                Err(e) => return Err(ExecuteError::Append(e)),
            }
        }
        Err(ExecuteError::TooContended {
            aggregate: aggregate.clone(),
            attempts: max,
        })
    }

    /// A copy of `state` (at `version`) for a batch to change: the spare
    /// kept from the last batch when it is at that version, else a copy.
    fn spare<S>(&self, aggregate: &AggregateId, version: Version, state: &S) -> S
    where
        S: Clone + Send + Sync + 'static,
    {
        match self.states.take::<Spare<S>>(aggregate) {
            Some((v, spare)) if v == version => Arc::unwrap_or_clone(spare).0,
            _ => state.clone(),
        }
    }

    async fn commit_retrying_unknown(
        &self,
        aggregate: &AggregateId,
        expected: Version,
        envelopes: Arc<[Envelope]>,
        key: &str,
    ) -> Result<Appended, AppendError> {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match self
                .commit(aggregate, expected, Arc::clone(&envelopes), key)
                .await
            {
                Err(e) if e.is_outcome_unknown() && tries < 3 => {
                    tries += 1;
                    tracing::warn!(aggregate = %aggregate, error = %e, tries, "append outcome unknown, retrying with the same key");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                other => return other,
            }
        }
    }
}

/// The outcome of a batch of one call, its refusal as the command's.
fn one<S, E>(mut batch: Batch<S, E>) -> Result<Executed<S>, ExecuteError<E>> {
    match batch.outcomes.pop() {
        Some(Err(e)) => Err(ExecuteError::Rejected(e)),
        _ => Ok(batch.executed),
    }
}

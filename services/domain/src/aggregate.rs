//! What every aggregate offers the event store: a state folded from its
//! events and a pure decision that turns a command into new events.
//!
//! The store's one command path (services/eventlog `execute::<A>`) runs a
//! command for an aggregate type: it takes the aggregate's folded state
//! (caught up by folding only the events appended since it was last seen),
//! decides, stamps who asked and the deploy each event belongs to, and
//! appends the events as one commit with the expected subject sequence; on
//! a conflict it folds what is new and decides again. Both functions are
//! pure, so a retry against fresh state is always safe.

use berth_schemas::ids::DeployId;
use berth_schemas::{Envelope, Event};

use crate::error::DomainError;

/// Facts from outside that the rules need, passed in so decisions stay
/// deterministic. Fresh ids and secrets travel inside the commands instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The most instances a service may ask for.
    pub max_instances: u32,
}

/// Render's own cap on instances per service.
pub const DEFAULT_MAX_INSTANCES: u32 = 100;

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

/// One kind of aggregate: its state, its commands and its rules.
pub trait Aggregate: 'static {
    /// The state folded from the aggregate's events; `Default` is "no events
    /// yet". Shared between tasks by the store's folded-state cache.
    type State: Default + Clone + Send + Sync + 'static;
    /// What callers ask for; kept until the command is decided for good
    /// (a conflict decides it again).
    type Command: Clone + Send + Sync;

    /// Applies one event. Total and pure: events of other aggregates, and
    /// events that make no sense for the state, leave it unchanged.
    fn apply(state: Self::State, event: &Event) -> Self::State;

    /// Applies one event with its envelope, so timestamps can be recorded.
    /// By default the same as [`Aggregate::apply`].
    fn fold(state: Self::State, envelope: &Envelope) -> Self::State {
        Self::apply(state, &envelope.event)
    }

    /// Decides what a command means given the state: the events to append
    /// (possibly none, for a command that is already satisfied) or why not.
    fn decide(
        state: &Self::State,
        command: Self::Command,
        ctx: &Ctx,
    ) -> Result<Vec<Event>, DomainError>;

    /// The deploy an event that names none itself ([`Event::deploy`])
    /// belongs to, as `state` tells (its envelope's correlation id); the
    /// caller's own correlation comes first. By default none.
    fn correlation(state: &Self::State, event: &Event) -> Option<DeployId> {
        let _ = (state, event);
        None
    }

    /// Folds a sequence of bare events from the empty state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self::State {
        events
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::apply(s, e))
    }

    /// Folds a sequence of envelopes from the empty state.
    fn replay_envelopes<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> Self::State {
        envelopes
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::fold(s, e))
    }

    /// Applies the events of a decision to the state that saw it.
    fn apply_all<'a>(
        state: Self::State,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Self::State {
        events.into_iter().fold(state, |s, e| Self::apply(s, e))
    }
}

//! What every aggregate offers the event store: a state folded from its
//! events and a pure decision that turns a command into new events.
//!
//! The store (services/eventlog `execute`) takes a fold and a decision as
//! plain functions — callers pass each aggregate module's free `fold` and
//! `decide`, which the impls of this trait delegate to. It loads the
//! aggregate's envelopes, folds them, decides and appends the resulting
//! events as one commit with the expected subject sequence; on a conflict it
//! reloads and decides again. Both functions are pure, so a retry against
//! fresh state is always safe.

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
pub trait Aggregate {
    /// The state folded from the aggregate's events; `Default` is "no events yet".
    type State: Default + Clone;
    /// What callers ask for.
    type Command;

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

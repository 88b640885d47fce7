//! A notification delivery: one notable event on one channel (SPEC §9).
//! It is queued once (its id is derived from the event and the channel, so
//! a redelivered event queues nothing new), then records each attempt's
//! outcome until it is delivered or abandoned.

use berth_schemas::events::{
    NotificationAbandoned, NotificationAttemptFailed, NotificationDelivered, NotificationQueued,
};
use berth_schemas::Event;

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;

/// Where a delivery stands, from its own events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// `notification_queued` is recorded.
    pub queued: bool,
    /// Delivered or abandoned: nothing more is sent.
    pub done: bool,
    /// Attempts that failed so far.
    pub failed_attempts: u32,
}

/// What the notifier asks of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Queue it (nothing when it was queued before).
    Queue(NotificationQueued),
    /// Attempt `attempt` reached the receiver.
    RecordDelivered { attempt: u32 },
    /// Attempt `attempt` failed with `error`; `abandon` when it was the last.
    RecordFailed {
        attempt: u32,
        error: String,
        abandon: bool,
    },
}

/// Applies one event; events of other aggregates leave the state unchanged.
pub fn apply(mut state: DeliveryState, event: &Event) -> DeliveryState {
    match event {
        Event::NotificationQueued(_) => state.queued = true,
        Event::NotificationDelivered(_) | Event::NotificationAbandoned(_) => state.done = true,
        Event::NotificationAttemptFailed(_) => state.failed_attempts += 1,
        _ => {}
    }
    state
}

/// The rules: queued once; a delivery that is done records nothing more.
pub fn decide(state: &DeliveryState, command: Command) -> Vec<Event> {
    match command {
        Command::Queue(_) if state.queued => vec![],
        Command::Queue(queued) => vec![queued.into()],
        _ if state.done => vec![],
        Command::RecordDelivered { attempt } => vec![NotificationDelivered { attempt }.into()],
        Command::RecordFailed {
            attempt,
            error,
            abandon,
        } => {
            let mut events = vec![NotificationAttemptFailed { attempt, error }.into()];
            if abandon {
                events.push(NotificationAbandoned { attempts: attempt }.into());
            }
            events
        }
    }
}

/// The delivery aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery;

impl Aggregate for Delivery {
    type State = DeliveryState;
    type Command = Command;

    fn apply(state: DeliveryState, event: &Event) -> DeliveryState {
        apply(state, event)
    }

    fn decide(state: &DeliveryState, command: Command, _: &Ctx) -> Result<Vec<Event>, DomainError> {
        Ok(decide(state, command))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use berth_schemas::ids::{OwnerId, ServiceId, UserId};

    use super::*;

    fn queue() -> Command {
        Command::Queue(NotificationQueued {
            owner: OwnerId::User(UserId::generate()),
            service: ServiceId::generate(),
            channel: "webhook".into(),
            source_event: "evt-aaaaaaaaaaaaaaaaaaaa".into(),
        })
    }

    #[test]
    fn a_delivery_is_queued_once() {
        let s = DeliveryState::default();
        let events = decide(&s, queue());
        assert_eq!(events.len(), 1);
        let s = Delivery::apply_all(s, &events);
        assert!(s.queued);
        assert!(decide(&s, queue()).is_empty());
    }

    #[test]
    fn attempts_are_counted_until_delivered_or_abandoned() {
        let s = Delivery::apply_all(
            DeliveryState::default(),
            &decide(&DeliveryState::default(), queue()),
        );
        let failed = Command::RecordFailed {
            attempt: 1,
            error: "503".into(),
            abandon: false,
        };
        let s = Delivery::apply_all(s, &decide(&s, failed));
        assert_eq!((s.failed_attempts, s.done), (1, false));
        let last = Command::RecordFailed {
            attempt: 2,
            error: "503".into(),
            abandon: true,
        };
        let events = decide(&s, last);
        assert_eq!(events.len(), 2);
        let s = Delivery::apply_all(s, &events);
        assert_eq!((s.failed_attempts, s.done), (2, true));
        assert!(decide(&s, Command::RecordDelivered { attempt: 3 }).is_empty());
    }
}

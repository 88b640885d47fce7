//! The one place commands meet the store: wraps a pure decision into
//! [`EventStore::execute`], stamping the actor on each event (the deploy it
//! belongs to is the event's own, [`berth_schemas::Event::deploy`]) and
//! mapping the store's errors to [`IngressError`].

use berth_domain::DomainError;
use berth_eventlog::{EventStore, ExecuteError, Executed, NewEvent};
use berth_schemas::{Actor, AggregateId, Envelope, Event};

use crate::IngressError;

/// Load → fold → `decide` → append, re-deciding on conflicts.
pub(crate) async fn run<S, F, D>(
    store: &EventStore,
    aggregate: &AggregateId,
    idempotency_key: &str,
    actor: &Actor,
    fold: F,
    decide: D,
) -> Result<Executed<S>, IngressError>
where
    S: Default + Clone + Send + Sync + 'static,
    F: Fn(S, &Envelope) -> S,
    D: Fn(&S) -> Result<Vec<Event>, DomainError>,
{
    store
        .execute(aggregate, idempotency_key, fold, |state: &S| {
            decide(state).map(|events| {
                events
                    .into_iter()
                    .map(|event| NewEvent::new(event, actor.clone()))
                    .collect()
            })
        })
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected(d) => IngressError::Rejected(d),
            other => IngressError::Store(other.to_string()),
        })
}

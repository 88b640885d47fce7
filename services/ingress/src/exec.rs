//! The one place ingress commands meet the store: a command for an
//! aggregate type runs through [`EventStore::execute`] as the caller (the
//! deploy each event belongs to is the event's own,
//! [`berth_schemas::Event::deploy`]), and the store's errors become
//! [`IngressError`].

use berth_domain::{Aggregate, DomainError};
use berth_eventlog::{EventStore, ExecuteError, Executed, Stamp};
use berth_schemas::{Actor, AggregateId};

use crate::IngressError;

/// Runs `command` on `aggregate`, an `A`, as `actor`.
pub(crate) async fn run<A: Aggregate>(
    store: &EventStore,
    aggregate: &AggregateId,
    idempotency_key: &str,
    actor: &Actor,
    command: A::Command,
) -> Result<Executed<A::State>, IngressError> {
    run_when::<A>(store, aggregate, idempotency_key, actor, |_| {
        Ok(Some(command.clone()))
    })
    .await
}

/// Runs the command `choose` picks on the state it is decided on (`None`:
/// nothing to do; an error: the caller's own refusal, such as another
/// owner's aggregate).
pub(crate) async fn run_when<A: Aggregate>(
    store: &EventStore,
    aggregate: &AggregateId,
    idempotency_key: &str,
    actor: &Actor,
    choose: impl Fn(&A::State) -> Result<Option<A::Command>, DomainError>,
) -> Result<Executed<A::State>, IngressError> {
    store
        .execute_when::<A, DomainError>(
            aggregate,
            idempotency_key,
            &Stamp::new(actor.clone()),
            choose,
        )
        .await
        .map_err(|e| match e {
            ExecuteError::Rejected(d) => IngressError::Rejected(d),
            other => IngressError::Store(other.to_string()),
        })
}

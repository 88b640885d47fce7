//! # berth-eventlog: the JetStream event store
//!
//! Every berth binary keeps its state here (SPEC §12). The log is one
//! JetStream stream, one subject per aggregate; this crate owns how it is
//! written and read:
//!
//! - [`EventStore::open`] checks the server and provisions the event, work
//!   and dead-letter streams and the snapshot bucket (idempotently);
//! - [`EventStore::append`] writes one decision as one message with the
//!   expected per-subject sequence and an idempotency key;
//!   [`EventStore::load`] reads an aggregate back; [`EventStore::execute`] is
//!   the load → decide → append loop that re-decides on conflicts;
//! - [`projection`] rebuilds read models from a snapshot plus the tail of the
//!   log and follows it live;
//! - [`worker`] runs durable pull consumers on the work stream (or, filtered,
//!   on any other stream such as the log itself) with explicit acks, progress
//!   acks, bounded redelivery and a dead-letter subject.
//!
//! `berth bench eventlog` (in the `berth` binary) measures all of this
//! against raw async-nats figures.
//!
//! Domain rules are not here: they plug into `execute` and projections as
//! plain functions, so this crate does not depend on `berth-domain`.

mod cache;
mod dead_letter;
mod durable;
mod error;
mod folded;
mod log;
pub mod projection;
mod snapshots;
mod store;
pub mod worker;

pub use error::{AppendError, ExecuteError, StoreError};
pub use log::{Appended, Executed, Loaded, NewEvent, Version};
pub use store::{EventStore, ServerVersion, StoreConfig};

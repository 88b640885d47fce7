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
//!   [`EventStore::load`] reads an aggregate back;
//! - [`EventStore::execute`] is the one command path: a command for an
//!   aggregate type ([`berth_domain::Aggregate`]) decided on its folded
//!   state (only new events folded, never the history again), stamped and
//!   appended, decided again on conflicts; [`EventStore::execute_batch`]
//!   decides many calls into one commit on the same path;
//! - [`logs`] keeps instance output: the logs stream, provisioned by the
//!   control plane ([`EventStore::provision_logs`]) and read one service
//!   at a time ([`EventStore::read_logs`]);
//! - [`projection`] rebuilds read models from a snapshot plus the tail of the
//!   log and follows it live;
//! - [`worker`] runs durable pull consumers on the work stream (or, filtered,
//!   on any other stream such as the log itself) with explicit acks, progress
//!   acks, bounded redelivery and a dead-letter subject;
//! - [`start`] waits, at a component's start, for a log that cannot answer
//!   yet instead of stopping.
//!
//! `berth bench eventlog` (in the `berth` binary) measures all of this
//! against raw async-nats figures.
//!
//! Domain rules are not here: commands run through the aggregate types of
//! `berth-domain` (the pure core, no I/O), and projections take plain
//! functions.

mod cache;
mod command;
mod dead_letter;
mod durable;
mod error;
mod folded;
mod log;
pub mod logs;
pub mod projection;
mod recent;
mod snapshots;
pub mod start;
mod store;
pub mod webhook_sends;
pub mod worker;

pub use command::{Batch, Executed, Stamp};
pub use error::{AppendError, ExecuteError, StoreError};
pub use folded::FoldedStates;
pub use log::{Appended, Loaded, NewEvent, Version};
pub use store::{EventStore, ServerVersion, StoreConfig, STATES_PER_CACHED_AGGREGATE};

//! # berth-domain: the pure core
//!
//! Business rules with no I/O: `decide(&State, Command) -> Result<Vec<Event>, Error>`
//! and `apply(State, &Event) -> State` for each aggregate, and the Docker image
//! reference grammar. Replays are deterministic; workers that talk to the world
//! (registry, runc, SMTP) append what they found as events, and these rules
//! decide what follows.
//!
//! - [`service`]: a service with its deploys (the SPEC §6 state machine),
//!   instance count and cron runs;
//! - [`credential`]: a registry credential and the services attached to it;
//! - [`custom_domain`]: custom domain name rules and the claim that makes a
//!   name one service's across owners;
//! - [`delivery`]: a notification delivery, queued once, then its attempts;
//! - [`node`]: a node's registration and the instance facts nodes report;
//! - [`owner`]: API keys, unique service names, notification defaults;
//! - [`aggregate`]: the [`Aggregate`] trait the event store drives, and
//!   [`Ctx`]; [`error`]: [`DomainError`], every variant the caller's fault;
//! - [`reference`](mod@reference): image references (SPEC §2);
//! - [`scheduler`]: what happens next for a service: a pass's steps (the
//!   deploy pipeline, then reconcile: what runs where), placement, lost nodes;
//! - [`timeline`]: which service facts users see, as Render's service event
//!   types, and the per-service read model the API serves and the notifier
//!   publishes from.

pub mod aggregate;
pub mod credential;
pub mod custom_domain;
pub mod delivery;
pub mod error;
pub mod log_stream;
pub mod node;
pub mod owner;
pub mod reference;
pub mod schedule;
pub mod scheduler;
pub mod service;
pub mod timeline;
pub mod webhook;

pub use aggregate::{Aggregate, Ctx};
pub use error::{DomainError, ErrorKind};

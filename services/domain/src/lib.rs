//! # berth-domain: the pure core
//!
//! Business rules with no I/O: `decide(&State, Command) -> Result<Vec<Event>, Error>`
//! and `apply(State, &Event) -> State` for each aggregate, and the Docker image
//! reference grammar. Replays are deterministic; workers that talk to the world
//! (registry, runc, SMTP) append what they found as events, and these rules
//! decide what follows.

pub mod aggregate;
pub mod credential;
pub mod error;
pub mod owner;
pub mod reference;
pub mod service;

pub use aggregate::{Aggregate, Ctx};
pub use error::{DomainError, ErrorKind};

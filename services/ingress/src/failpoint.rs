//! Crash points, for tests only: with `BERTH_FAILPOINT=<name>` in its
//! environment, the process aborts (no unwinding, no shutdown, nothing
//! flushed) when it reaches the point of that name. The crash tests of the
//! `berth` binary use them to stop an operation between two of its appends
//! and check that [`crate::repair`] finishes or undoes what it started.
//!
//! The points, each right after the named step succeeded:
//! - `service-create:after-name`, `service-create:after-credential`,
//!   `service-create:after-service`;
//! - `service-delete:after-service`, `service-delete:after-name`;
//! - `service-rename:after-claim`, `service-rename:after-update`;
//! - `service-credential:after-attach`, `service-credential:after-update`;
//! - `domain-add:after-claim`, `domain-add:after-add`;
//! - `domain-remove:after-remove`, `domain-remove:after-release`.
//!
//! Unset (the only setting an installation should have), a point costs one
//! comparison with `None`.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const FAILPOINT_VAR: &str = "BERTH_FAILPOINT";

/// Aborts the process if `BERTH_FAILPOINT` names this point.
pub fn failpoint(name: &str) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var(FAILPOINT_VAR).ok());
    if chosen.as_deref() == Some(name) {
        eprintln!("berth: failpoint {name} reached ({FAILPOINT_VAR}): aborting");
        std::process::abort();
    }
}

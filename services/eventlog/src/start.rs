//! Waiting at start for the log. A component starting while the log cannot
//! answer (a NATS node restarting, a partition healing, a cluster electing
//! a stream leader) waits for it, not ready meanwhile, rather than stopping
//! its process: what it needs is a retry away, and a process that exits on
//! a blip leaves its work undone until something restarts it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::projection::ProjectionError;
use crate::{ExecuteError, StoreError};

/// The first wait after a failed step; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// An error that says whether the same step may succeed unchanged later.
pub trait Retryable: Display + Sync {
    /// True when trying again, unchanged, may help.
    fn is_retryable(&self) -> bool;
}

impl Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        StoreError::is_retryable(self)
    }
}

impl Retryable for ProjectionError {
    fn is_retryable(&self) -> bool {
        matches!(self, ProjectionError::Request(_))
    }
}

impl<E: Display + Sync> Retryable for ExecuteError<E> {
    fn is_retryable(&self) -> bool {
        ExecuteError::is_retryable(self)
    }
}

/// Runs `step` (open the store, create a consumer, load a view) until it
/// succeeds or fails for good; a retryable failure is logged with `what`
/// and tried again after a [`Wait`]. `Ok(None)` when `shutdown` comes
/// first.
pub async fn until_available<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut step: F,
) -> Result<Option<T>, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Wait::default();
    loop {
        let failed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            done = step() => match done {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            },
        };
        if !wait.after(&failed, what, shutdown).await {
            return Ok(None);
        }
    }
}

/// The waits between tries of one step: 200 ms, doubling to 5 s.
#[derive(Debug)]
pub struct Wait(Duration);

impl Default for Wait {
    fn default() -> Self {
        Self(FIRST_WAIT)
    }
}

impl Wait {
    /// Logs `error` with `what`, then waits; `false` when `shutdown` comes
    /// first.
    pub async fn after(
        &mut self,
        error: &(dyn Display + Sync),
        what: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::warn!(%error, retry_ms = self.0.as_millis() as u64, "{what}; trying again");
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(self.0) => {}
        }
        self.0 = (self.0 * 2).min(MAX_WAIT);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_tried_again_and_others_end_the_wait() {
        let shutdown = CancellationToken::new();
        let mut tries = 0;
        let got = until_available(&shutdown, "test step", || {
            tries += 1;
            let n = tries;
            async move {
                if n < 4 {
                    Err(StoreError::Request("503".into()))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.ok().flatten(), Some(4));

        let mut tries = 0;
        let got: Result<Option<()>, _> = until_available(&shutdown, "test step", || {
            tries += 1;
            async { Err(StoreError::Config("replicas".into())) }
        })
        .await;
        assert!(matches!(got, Err(StoreError::Config(_))));
        assert_eq!(tries, 1, "a failure for good is not tried again");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.cancel();
        });
        let got: Result<Option<()>, _> = until_available(&shutdown, "test step", || async {
            Err(StoreError::Request("503".into()))
        })
        .await;
        assert!(matches!(got, Ok(None)));
    }

    #[test]
    fn provisioning_failures_say_whether_they_pass() {
        assert!(StoreError::provision("s", true, &"503").is_retryable());
        assert!(!StoreError::provision("s", false, &"subjects overlap").is_retryable());
    }
}

//! The retry loop shared by every registry operation: backoff doubling
//! from `initial_backoff` to `max_backoff`, never sooner than a
//! `Retry-After` (seconds or HTTP date), and never past `max_total` — a
//! `Retry-After` that would end beyond the budget gives up at once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::client::RegistryClient;
use crate::error::{AttemptError, ResolveError};

/// A transient registry failure about to be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNotice {
    /// The attempt that failed (1 is the first).
    pub attempt: u32,
    /// How long until the next one.
    pub wait: Duration,
    /// What was being done and what went wrong (no credentials).
    pub message: String,
}

/// Whoever wants to know of retries while a future runs.
type Watch = Arc<dyn Fn(&RetryNotice) + Send + Sync>;

tokio::task_local! {
    static WATCH: Watch;
}

/// Runs `fut`, telling `watch` of every retry its registry operations
/// make (before each wait): how a deploy shows that its registry is down
/// and when it is tried again, not only the server log.
pub async fn watching_retries<F: Future>(
    watch: impl Fn(&RetryNotice) + Send + Sync + 'static,
    fut: F,
) -> F::Output {
    WATCH.scope(Arc::new(watch), fut).await
}

impl RegistryClient {
    /// Run `attempt` until it succeeds, fails for good, or the retry budget
    /// (backoff doubling, `Retry-After` honoured, bounded total) runs out.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
    ) -> Result<T, ResolveError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let policy = &self.cfg.retry;
        let start = Instant::now();
        let mut backoff = policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Transient {
                    message,
                    retry_after,
                }) => {
                    let wait = backoff.max(retry_after.unwrap_or_default());
                    if start.elapsed() + wait > policy.max_total {
                        return Err(ResolveError::Unavailable(format!(
                            "{what}: {message}; gave up after {attempts} attempt(s) in {:.1}s",
                            start.elapsed().as_secs_f64()
                        )));
                    }
                    tracing::warn!(
                        operation = what,
                        error = %message,
                        attempt = attempts,
                        wait_ms = wait.as_millis() as u64,
                        "transient registry failure, retrying"
                    );
                    let _ = WATCH.try_with(|w| {
                        w(&RetryNotice {
                            attempt: attempts,
                            wait,
                            message: format!("{what}: {message}"),
                        })
                    });
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
            }
        }
    }
}

pub(crate) fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}

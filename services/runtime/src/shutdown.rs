//! The one shutdown story every berth binary follows:
//!
//! 1. SIGINT/SIGTERM (or a component failing) cancels one [`CancellationToken`];
//!    components stop taking work and finish or nak what is in flight.
//! 2. Every task was spawned on one [`TaskTracker`]; we wait for all of them,
//!    at most the grace period (a second signal cuts the wait short).
//! 3. The NATS client is flushed and drained, so nothing published is lost.
//!
//! Nothing is fire-and-forget: [`Shutdown::spawn`] is the only way to start a
//! task. The one exception is the signal listener, which must outlive the
//! tracker wait (a second signal cuts it short); it is owned here and aborted
//! when the wait ends.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Shared handle to the process's shutdown state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    forced: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    signals: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// How the wait for tracked tasks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every tracked task finished.
    Clean,
    /// The grace period ran out (or a second signal came) with tasks still running.
    TimedOut {
        /// Tasks still running when we gave up.
        remaining: usize,
    },
}

impl Shutdown {
    /// A fresh shutdown handle with the given grace period.
    pub fn new(grace: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            forced: CancellationToken::new(),
            tracker: TaskTracker::new(),
            grace,
            signals: Arc::default(),
        }
    }

    /// The token components watch to stop taking work.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tracker every task is spawned on.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Starts shutting down (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a tracked task inside a span naming it.
    pub fn spawn<F>(&self, task: &'static str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker
            .spawn(fut.instrument(tracing::info_span!("task", task)))
    }

    /// Installs SIGINT/SIGTERM handlers: the first signal triggers shutdown,
    /// a second one cuts the grace period short. Fails only if the handlers
    /// cannot be installed.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let token = self.token.clone();
        let forced = self.forced.clone();
        let listener = tokio::spawn(async move {
            let mut seen = 0u32;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal = name, "shutdown requested");
                    token.cancel();
                } else {
                    tracing::warn!(signal = name, "second signal: not waiting any longer");
                    forced.cancel();
                    return;
                }
            }
        });
        if let Ok(mut slot) = self.signals.lock() {
            if let Some(old) = slot.replace(listener) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Waits for every tracked task to end, at most the grace period.
    /// Call after [`Shutdown::trigger`] (or a signal); closes the tracker.
    pub async fn wait_for_tasks(&self) -> Drained {
        self.trigger();
        self.tracker.close();
        let started = Instant::now();
        let result = tokio::select! {
            _ = self.tracker.wait() => Drained::Clean,
            _ = tokio::time::sleep(self.grace) => Drained::TimedOut { remaining: self.tracker.len() },
            _ = self.forced.cancelled() => Drained::TimedOut { remaining: self.tracker.len() },
        };
        if let Some(listener) = self.signals.lock().ok().and_then(|mut s| s.take()) {
            listener.abort();
        }
        match result {
            Drained::Clean => {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "all tasks finished"
                )
            }
            Drained::TimedOut { remaining } => {
                tracing::warn!(
                    remaining,
                    grace_secs = self.grace.as_secs(),
                    "tasks still running after the grace period"
                )
            }
        }
        result
    }
}

/// Flushes and drains a NATS client so buffered publishes reach the server
/// before the process exits. Bounded by `limit`; errors are logged, not returned,
/// because nothing useful can be done about them this late.
pub async fn drain_nats(client: &async_nats::Client, limit: Duration) {
    let work = async {
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "flush before drain failed");
        }
        if let Err(e) = client.drain().await {
            tracing::warn!(error = %e, "drain failed");
            return;
        }
        // drain() only queues the request. The connection state does not
        // change when the drained client closes, but its command channel
        // does: a flush fails once the connection handler has exited.
        while client.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(limit, work).await.is_err() {
        tracing::warn!(
            limit_ms = limit.as_millis() as u64,
            "nats drain did not finish in time"
        );
    } else {
        tracing::info!("nats client drained");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_that_honour_the_token() {
        let s = Shutdown::new(Duration::from_secs(5));
        let token = s.token();
        let done = s.spawn("worker", async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        });
        s.trigger();
        assert_eq!(s.wait_for_tasks().await, Drained::Clean);
        assert!(done.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let s = Shutdown::new(Duration::from_secs(2));
        let _stuck = s.spawn("stuck", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let t0 = tokio::time::Instant::now();
        assert_eq!(s.wait_for_tasks().await, Drained::TimedOut { remaining: 1 });
        assert!(t0.elapsed() >= Duration::from_secs(2));
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
}

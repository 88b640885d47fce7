//! Periodic garbage collection of the node's content store: blobs and
//! unpacked trees no instance here needs are deleted, least recently used
//! first, down to a byte budget (`BERTH_NODE_STORE_BUDGET_MIB`).
//!
//! Protected: the digests of instances placed here and not stopped
//! (their trees are the lower layers of running containers), of one-off
//! runs in progress, and everything an in-flight pull may reuse — pulls
//! and unpacks hold a shared lock that a collection takes exclusively, so
//! a collection waits for them and they wait for it (it never deletes a
//! blob a pull has just decided to reuse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::reference::Digest;
use berth_puller::ContentStore;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use crate::report::Reporter;

/// When and how far the store is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Between collections (`None`: never).
    pub interval: Option<Duration>,
    /// Usage to shrink to; 0 deletes everything unprotected.
    pub budget_bytes: u64,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(600)),
            budget_bytes: 10 << 30,
        }
    }
}

/// The node's collector state, shared with the work handler.
#[derive(Debug, Default)]
pub(crate) struct Gc {
    /// Held shared by pulls and unpacks, exclusively by a collection.
    lock: Arc<RwLock<()>>,
    /// Digests of runs in progress that no placement protects (yet).
    in_use: Mutex<HashMap<String, usize>>,
}

/// Keeps a digest's content while alive.
pub(crate) struct Protected {
    gc: Arc<Gc>,
    digest: String,
}

impl Drop for Protected {
    fn drop(&mut self) {
        let mut m = self.gc.in_use.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}

impl Gc {
    /// Protects `digest` until the guard drops (a run in progress).
    pub(crate) fn protect(self: &Arc<Self>, digest: &str) -> Protected {
        *self
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_owned())
            .or_default() += 1;
        Protected {
            gc: self.clone(),
            digest: digest.to_owned(),
        }
    }

    /// Held while pulling and unpacking.
    pub(crate) async fn pulling(&self) -> OwnedRwLockReadGuard<()> {
        self.lock.clone().read_owned().await
    }

    /// One collection: everything but the protected digests, down to
    /// `budget_bytes`.
    pub(crate) async fn collect(
        &self,
        store: &ContentStore,
        reporter: &Reporter,
        budget_bytes: u64,
    ) -> Result<berth_puller::GcReport, String> {
        let _exclusive = self.lock.clone().write_owned().await;
        let mut keep: Vec<String> = reporter.placed_digests();
        keep.extend(
            self.in_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        let images: Vec<Digest> = keep
            .iter()
            .filter_map(|d| berth_oci::digest::parse(d))
            .collect();
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.gc(&images, budget_bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Collects every `interval` until `shutdown`.
    pub(crate) async fn run(
        self: Arc<Self>,
        opts: GcOptions,
        store: ContentStore,
        reporter: Reporter,
        shutdown: CancellationToken,
    ) {
        let Some(interval) = opts.interval else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.collect(&store, &reporter, opts.budget_bytes).await {
                Ok(r) => tracing::debug!(
                    before = r.before_bytes,
                    after = r.after_bytes,
                    blobs = r.blobs_removed,
                    trees = r.trees_removed,
                    "content store collected"
                ),
                Err(e) => tracing::warn!(error = %e, "content store collection failed"),
            }
        }
    }
}

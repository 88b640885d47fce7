//! # berth-resolver: from image reference to the digest that will run
//!
//! Sits between ingress and the pullers in the event flow (SPEC §4–§6, §9):
//!
//! - [`check`]: answers ingress's image checks (core NATS request/reply,
//!   queue group) before a service is created, so a service whose image
//!   cannot be pulled is never created;
//! - [`deploys`](mod@deploys): follows the event log's service subjects with a durable
//!   pull consumer; every `deploy_started` gets its image resolved (tag →
//!   linux/amd64 manifest digest, size limit) and the outcome appended as
//!   `image_resolved` or `image_pull_failed` with SPEC §9's reason. A
//!   rollback's deploy names `repo@digest` (the target's recorded digest,
//!   never its tag), so it is resolved by a HEAD of that digest and ends
//!   `image_not_found` when the registry lost it;
//! - [`probe`](mod@probe): every `probe_interval`, HEADs of each service's
//!   live digest and last rollback targets; a lost one is recorded as
//!   `rollback_target_missing` (not rollback-eligible any more). The same
//!   view of the services finds deploys that waited for their digest
//!   longer than `stuck_after` and resolves them (a `deploy_started`
//!   dead-lettered after its retries, or lost in a partition, does not
//!   leave its deploy, and those queued behind it, waiting for good).
//!
//! Credentials travel as ids; the resolver opens the sealed token with the
//! operator's key only in memory, for the registry request. The registry
//! work itself (auth flows, retries, classification) is `berth-oci`.

mod access;
pub mod check;
mod config;
mod deploys;
mod probe;

use std::sync::Arc;

use berth_eventlog::start::until_available;
use berth_eventlog::EventStore;
use berth_oci::RegistryClient;
use berth_runtime::{BoxError, Component, ComponentContext, ReadyFlag, SecretKey};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use config::{ResolverArgs, ResolverOptions};

/// Why the resolver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// The registry client could not be built (TLS setup).
    #[error(transparent)]
    Client(#[from] berth_oci::BuildError),
    /// Subscribing or creating the consumer failed.
    #[error("nats: {0}")]
    Nats(String),
}

pub(crate) struct Inner {
    pub(crate) store: EventStore,
    pub(crate) key: SecretKey,
    pub(crate) opts: ResolverOptions,
    pub(crate) deploy_client: RegistryClient,
    pub(crate) check_client: RegistryClient,
    /// Deploys being resolved by this copy now (by its consumer or its
    /// sweep), each with how many resolutions of it run: the sweep leaves
    /// them alone.
    pub(crate) resolving:
        std::sync::Mutex<std::collections::HashMap<berth_schemas::ids::DeployId, usize>>,
}

/// The resolver component.
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver over `store`, opening credentials with `key`.
    pub fn new(
        store: EventStore,
        key: SecretKey,
        opts: ResolverOptions,
    ) -> Result<Self, ResolverError> {
        let deploy_client = RegistryClient::new(opts.deploy_client.clone())?;
        let check_client = RegistryClient::new(opts.check_client.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                key,
                opts,
                deploy_client,
                check_client,
                resolving: Default::default(),
            }),
        })
    }

    /// Answers image checks and resolves deploys until `shutdown`; sets
    /// `ready` once both are subscribed.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), ResolverError> {
        let sub = check::subscribe(&self.inner).await?;
        let Some(worker) = deploys::worker(&self.inner, &shutdown).await? else {
            return Ok(());
        };
        // Make sure the subscription reached the server before saying ready.
        let round_trip = until_available(&shutdown, "server not reached", || {
            self.inner.store.server_round_trip()
        });
        if round_trip
            .await
            .map_err(|e| ResolverError::Nats(e.to_string()))?
            .is_none()
        {
            return Ok(());
        }
        if let Some(r) = &ready {
            r.set(true);
        }
        tracing::info!(consumer = %self.inner.opts.consumer, "resolver running");
        let checks = tokio::spawn(check::serve(Arc::clone(&self.inner), sub, shutdown.clone()));
        let probes = tokio::spawn(probe::run(Arc::clone(&self.inner), shutdown.clone()));
        deploys::serve(Arc::clone(&self.inner), worker, shutdown).await;
        let _ = checks.await;
        let _ = probes.await;
        if let Some(r) = &ready {
            r.set(false);
        }
        tracing::info!("resolver stopped");
        Ok(())
    }
}

impl Component for Resolver {
    fn name(&self) -> &'static str {
        "resolver"
    }

    fn run(self: Box<Self>, ctx: ComponentContext) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move {
            (*self)
                .run(ctx.shutdown.clone(), Some(ctx.ready.clone()))
                .await
                .map_err(|e| Box::new(e) as BoxError)
        })
    }
}

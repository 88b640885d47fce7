//! # berth-ingress: the application layer under the HTTP API
//!
//! Every write an operator (API, CLI) makes goes through here: a command is
//! checked by the pure rules of `berth-domain`, then decided and appended on
//! its aggregate's subject with [`EventStore::execute`] (load → fold →
//! decide → append with the expected version; a conflict re-decides). The
//! HTTP routes of issue 6 sit on top and only map [`IngressError`] to status
//! codes with [`IngressError::http_status`].
//!
//! - [`credentials`]: registry credentials (SPEC §3) — add, list, show,
//!   rotate, remove; tokens sealed with the operator's key, never returned;
//! - [`services`]: service creation with image verification by the resolver
//!   before anything is appended (SPEC §4), and deletion;
//! - [`custom_domains`]: custom domains of web services, each name claimed
//!   across owners before a service gets it;
//! - [`ops`]: operations on a service (scale, restart, deploy, rollback,
//!   cancel, suspend/resume, update, hook keys, cron runs, the deploy hook);
//! - [`owners`]: API keys and notification defaults;
//! - [`check`]: the request/reply client of the resolver's image check;
//! - [`projection`]: the read model behind credential listings;
//! - [`links`] and [`repair`]: name claims and credential attachments kept
//!   in line with the services, finishing or undoing what an operation
//!   interrupted by a crash left half done;
//! - [`failpoint`]: crash points for the tests of that.
//!
//! Everything is owner-scoped: a handler is always called for one
//! [`Caller`], and another owner's credential or service is "not found".

pub mod check;
pub mod credentials;
pub mod custom_domains;
pub mod env_vars;
mod error;
mod exec;
pub mod failpoint;
pub mod hooks;
pub mod integrations;
pub mod links;
pub mod log_streams;
pub mod ops;
pub mod owners;
pub mod projection;
pub mod repair;
pub mod secret_files;
pub mod services;
pub mod shell;
pub mod terminal;
pub mod webhooks;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_domain::owner::{self, OwnerState};
use berth_eventlog::projection::{ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_runtime::SecretKey;
use berth_schemas::ids::{ApiKeyId, OwnerId};
use berth_schemas::{Actor, AggregateId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use check::{CheckError, ImageChecker};
pub use credentials::{CredentialView, NewCredential, Rotation};
pub use env_vars::EnvEdit;
pub use error::IngressError;
pub use hooks::{is_hook_key_shaped, same_secret, HookError};
pub use integrations::IntegrationView;
pub use links::{Links, Repair};
pub use log_streams::{OverrideChange, StreamChange};
pub use ops::Scope;
pub use owners::{api_key_sha256, ApiKeyView, ChannelSecrets, OwnerNotifications, API_KEY_PREFIX};
pub use projection::CredentialIndex;
pub use repair::Repairer;
pub use secret_files::FileEdit;

pub use services::{CreatedService, NewDisk, NewService};
pub use webhooks::{WebhookChange, WebhookView};

/// Who is asking: the owner every command is scoped to, and the actor
/// recorded on the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The owner (user or team) the request acts for.
    pub owner: OwnerId,
    /// Recorded as the events' actor.
    pub actor: Actor,
}

impl Caller {
    /// A caller authenticated by an API key of `owner`.
    pub fn api_key(owner: OwnerId, key: ApiKeyId) -> Self {
        Self {
            owner,
            actor: Actor::ApiKey { key },
        }
    }
}

/// Knobs of the application layer.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// How long service creation waits for the resolver's image check. It
    /// must exceed the resolver's check retry budget.
    pub check_timeout: Duration,
    /// How long a listing waits for its read model to reach the log's end
    /// (read-your-writes).
    pub read_timeout: Duration,
    /// How long a service's deploy hook desk stays with nothing to do
    /// before it ends (parking its state for the next one).
    pub hook_desk_idle: Duration,
    /// How old a name claim or credential attachment the service does not
    /// back must be before [`repair`] gives it back: an operation still in
    /// flight must not be undone under its feet. Far above the time between
    /// two appends of one operation.
    pub repair_grace: Duration,
    /// The installation's base domain (`<service>.<base-domain>` is a web
    /// service's default host): no custom domain may be under it.
    pub base_domain: String,
    /// How long terminals in instances may stay open.
    pub terminal: crate::terminal::TerminalLimits,
}

impl IngressOptions {
    /// How often the repairer looks for disagreements: half the grace
    /// period, between 250 ms and 10 s.
    pub fn repair_every(&self) -> Duration {
        (self.repair_grace / 2).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            check_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(5),
            hook_desk_idle: Duration::from_secs(5),
            repair_grace: Duration::from_secs(30),
            base_domain: "localhost".to_owned(),
            terminal: crate::terminal::TerminalLimits::default(),
        }
    }
}

/// The application layer: the event store, the operator's sealing key, the
/// resolver client and the read models. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub(crate) store: EventStore,
    pub(crate) key: SecretKey,
    pub(crate) checker: ImageChecker,
    pub(crate) opts: IngressOptions,
    pub(crate) read_model: ReadModel,
    pub(crate) hooks: hooks::HookDesks,
}

/// The read model behind credential listings: a lister over a projection
/// that follows the whole log, and how far it has applied the log (for
/// read-your-writes). [`Ingress::start`] runs its own; a caller that
/// already folds the log (the HTTP API) shares its runner instead, so each
/// commit is delivered and decoded once per process.
#[derive(Clone)]
pub struct ReadModel {
    list: Arc<ListFn>,
    applied: watch::Receiver<u64>,
}

type ListFn = dyn Fn(&OwnerId) -> Option<Vec<CredentialView>> + Send + Sync;

impl ReadModel {
    /// `list` answers an owner's credentials (`None`: the model is broken).
    pub fn new(
        list: impl Fn(&OwnerId) -> Option<Vec<CredentialView>> + Send + Sync + 'static,
        applied: watch::Receiver<u64>,
    ) -> Self {
        Self {
            list: Arc::new(list),
            applied,
        }
    }

    /// A read model over a shared [`CredentialIndex`].
    pub fn of_index(index: Arc<RwLock<CredentialIndex>>, applied: watch::Receiver<u64>) -> Self {
        Self::new(move |o| index.read().ok().map(|i| i.list(o)), applied)
    }
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// Builds the read models from the log (snapshot + tail), then keeps
    /// them following the log on a task of `tracker` that ends when
    /// `shutdown` fires.
    pub async fn start(
        store: EventStore,
        key: SecretKey,
        opts: IngressOptions,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, IngressError> {
        let mut runner = ProjectionRunner::new(
            &store,
            CredentialIndex::default(),
            ProjectionOptions {
                // The whole log, not only credential subjects: `applied`
                // must reach the log's last sequence for read-your-writes.
                filter: None,
                ..ProjectionOptions::default()
            },
        );
        // A log that cannot answer yet is waited for.
        runner
            .catch_up_at_start(&shutdown)
            .await
            .map_err(|e| IngressError::Store(e.to_string()))?
            .ok_or_else(|| IngressError::Store("stopped before the log was read".to_owned()))?;
        let read_model = ReadModel::of_index(runner.state(), runner.applied());
        let stop = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = runner.run(stop).await {
                tracing::error!(error = %e, "ingress read model stopped");
            }
        });
        Ok(Self::with_read_model(
            store, key, opts, read_model, shutdown, tracker,
        ))
    }

    /// The application layer over a read model the caller keeps following
    /// the log (it must have caught up already).
    pub fn with_read_model(
        store: EventStore,
        key: SecretKey,
        opts: IngressOptions,
        read_model: ReadModel,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let checker =
            ImageChecker::new(store.client().clone(), store.subjects(), opts.check_timeout);
        let hooks = hooks::HookDesks::new(
            store.clone(),
            key.clone(),
            opts.hook_desk_idle,
            tracker.clone(),
            shutdown,
        );
        Self {
            store,
            key,
            checker,
            opts,
            read_model,
            hooks,
        }
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Creates the owner (user or team) if it does not exist yet.
    pub async fn ensure_owner(&self, owner: &OwnerId, name: &str) -> Result<(), IngressError> {
        let id = AggregateId::Owner(owner.clone());
        let actor = Actor::system("ingress");
        let key = format!("owner-create-{owner}");
        exec::run_when::<owner::Owner>(&self.store, &id, &key, &actor, |state: &OwnerState| {
            Ok(state.owner.is_none().then(|| owner::Command::Create {
                owner: owner.clone(),
                name: name.to_owned(),
            }))
        })
        .await
        .map(|_| ())
    }

    /// Waits until the read models include everything in the log now
    /// (read-your-writes, for this layer and for callers sharing its
    /// [`ReadModel`]).
    pub async fn caught_up(&self) -> Result<(), IngressError> {
        let target = self
            .store
            .last_stream_seq()
            .await
            .map_err(|e| IngressError::Store(e.to_string()))?;
        let mut rx = self.read_model.applied.clone();
        let reached = tokio::time::timeout(self.opts.read_timeout, async {
            rx.wait_for(|s| *s >= target).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(IngressError::Store("read model stopped".to_owned())),
            Err(_) => Err(IngressError::Store(format!(
                "read model did not reach stream sequence {target} within {:?}",
                self.opts.read_timeout
            ))),
        }
    }
}

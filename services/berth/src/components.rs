//! The components berth runs, in start order. `berth up` runs all of them;
//! `berth run <name>` one. Adding a component means one line in [`NAMES`],
//! its validated options in [`Options`] and one arm in [`build`].

use std::sync::Arc;

use anyhow::Context;
use berth_eventlog::start::until_available;
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::secrets::SecretKey;
use berth_runtime::{AddressPolicy, Component, Config};
use tokio_util::sync::CancellationToken;

use crate::projector::Projector;

/// Every component name, in start order.
pub const NAMES: &[&str] = &[
    "projector",
    "resolver",
    "scheduler",
    "cron",
    "notifier",
    "node",
    "router",
    "api",
];

/// The components that seal or open secrets with the installation key
/// (registry tokens, hook keys, env var values, notification secrets).
/// The others never hold it: the node's work comes sealed to the node's own
/// key, and the projector reads nothing secret; nor does the router, unless
/// it serves HTTPS (its certificate store keeps private keys sealed).
pub const HOLD_KEY: &[&str] = &["resolver", "scheduler", "cron", "notifier", "api"];

/// Whether `only` (or `berth up`, `None`) holds the installation key;
/// `https`: the router serves HTTPS.
pub fn holds_key(only: Option<&str>, https: bool) -> bool {
    only.is_none_or(|c| HOLD_KEY.contains(&c) || (c == "router" && https))
}

/// The NATS role whose credentials `only` presents (`BERTH_NATS_CREDS`):
/// the node its own user, bound to its id; every other component, and
/// `berth up` (`None`), the control plane's.
pub fn nats_role(only: Option<&str>) -> &'static str {
    match only {
        Some("node") => "node",
        _ => "control",
    }
}

/// What components are built from: opened once per process and shared.
#[derive(Debug, Clone)]
pub struct ComponentDeps {
    pub store: Arc<EventStore>,
    /// The node's own store (its own NATS user) when it has one; else the
    /// node shares `store`.
    pub node_store: Option<Arc<EventStore>>,
    /// The id the node's NATS credentials are bound to.
    pub node_id: Option<berth_schemas::ids::NodeId>,
    /// Seals and opens secrets (registry tokens, hook keys, env values).
    /// `None` in a process that runs only the node: a node never holds the
    /// installation key; its work items come sealed to its own key.
    pub secret_key: Option<Arc<SecretKey>>,
    /// Every component's validated settings.
    pub options: Options,
}

/// The validated settings of every component.
#[derive(Debug, Clone)]
pub struct Options {
    pub resolver: berth_resolver::ResolverOptions,
    pub node: berth_node::NodeOptions,
    pub node_checks: berth_node::NodeChecks,
    pub node_gc: berth_node::GcOptions,
    pub scheduler: berth_scheduler::SchedulerOptions,
    pub cron: berth_cron::CronOptions,
    pub notifier: berth_notifier::NotifierOptions,
    pub router: berth_router::RouterOptions,
    pub api: berth_api::ApiArgs,
}

impl Options {
    /// Which internal addresses owner-supplied URLs may reach, for every
    /// component that dials them: the resolver (deploys, and the image check
    /// behind the API's 422), the node's puller and the notifier. One
    /// setting for all, so they cannot disagree about a registry.
    pub fn allow_targets(&mut self, policy: AddressPolicy) {
        self.resolver.deploy_client.targets = policy;
        self.resolver.check_client.targets = policy;
        self.node.client.targets = policy;
        self.notifier.targets = policy;
    }
}

/// A service's or owner's fold is stored each time it grew by this many
/// events: a cold read after a restart folds at most this many.
const PERSIST_EVERY_EVENTS: u64 = 512;

impl ComponentDeps {
    /// Opens (and provisions, idempotently) the event store, waiting while
    /// the server cannot answer yet (a node restarting, no quorum); `None`
    /// when `shutdown` comes first.
    pub async fn open(
        client: async_nats::Client,
        config: &Config,
        secret_key: Option<SecretKey>,
        options: Options,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let store_config = StoreConfig {
            replicas: config.replicas,
            ..StoreConfig::default()
        };
        let Some(store) = open_store(client, config, store_config, shutdown)
            .await
            .context("opening the event store")?
        else {
            return Ok(None);
        };
        // Services and owners grow long histories (every deploy, every
        // name): their folds are kept across restarts.
        store.persist_states::<berth_domain::service::ServiceState>(
            berth_domain::service::STATE_SNAPSHOT,
            PERSIST_EVERY_EVENTS,
        );
        store.persist_states::<berth_domain::owner::OwnerState>(
            berth_domain::owner::STATE_SNAPSHOT,
            PERSIST_EVERY_EVENTS,
        );
        Ok(Some(Self {
            store: Arc::new(store),
            node_store: None,
            node_id: None,
            secret_key: secret_key.map(Arc::new),
            options,
        }))
    }

    /// Opens the node's store on its own client (the streams exist: the
    /// control plane's store provisioned them, and a node may not).
    /// `false` when `shutdown` comes first.
    pub async fn open_node_store(
        &mut self,
        client: async_nats::Client,
        config: &Config,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let store_config = StoreConfig {
            replicas: config.replicas,
            // A node may create no consumer on the log but its own.
            stream_long_reads: false,
            ..StoreConfig::default()
        };
        let store = open_store(client, config, store_config, shutdown)
            .await
            .context("opening the node's event store")?;
        self.node_store = store.map(Arc::new);
        Ok(self.node_store.is_some())
    }
}

/// [`EventStore::open`], tried again while the server cannot answer yet.
async fn open_store(
    client: async_nats::Client,
    config: &Config,
    store_config: StoreConfig,
    shutdown: &CancellationToken,
) -> Result<Option<EventStore>, berth_eventlog::StoreError> {
    until_available(shutdown, "event store not opened", || {
        EventStore::open(
            client.clone(),
            config.subjects.clone(),
            store_config.clone(),
        )
    })
    .await
}

/// Builds the named component, or all of them when `only` is `None`.
/// Names were validated against [`NAMES`] with the rest of the config.
pub fn build(deps: &ComponentDeps, only: Option<&str>) -> anyhow::Result<Vec<Box<dyn Component>>> {
    let store = || (*deps.store).clone();
    NAMES
        .iter()
        .filter(|n| only.is_none_or(|o| o == **n))
        .map(|name| -> anyhow::Result<Box<dyn Component>> {
            let key = || {
                deps.secret_key
                    .as_deref()
                    .cloned()
                    .with_context(|| format!("the {name} needs the installation's secret key"))
            };
            match *name {
                "projector" => Ok(Box::new(Projector::new(deps.store.clone()))),
                "resolver" => Ok(Box::new(
                    berth_resolver::Resolver::new(store(), key()?, deps.options.resolver.clone())
                        .context("building the resolver")?,
                )),
                // The node alone gets no key: what its work needs comes
                // sealed to the node's own key pair.
                "node" => Ok(Box::new(
                    berth_node::Node::new(
                        (*deps
                            .node_store
                            .clone()
                            .unwrap_or_else(|| deps.store.clone()))
                        .clone(),
                        deps.options.node.clone(),
                    )
                    .with_checks(deps.options.node_checks.clone())
                    .with_gc(deps.options.node_gc)
                    .with_bound_id(deps.node_id.clone()),
                )),
                "scheduler" => Ok(Box::new(berth_scheduler::component(
                    store(),
                    key()?,
                    deps.options.scheduler.clone(),
                ))),
                "cron" => Ok(Box::new(berth_cron::component(
                    store(),
                    key()?,
                    deps.options.cron.clone(),
                ))),
                "notifier" => Ok(Box::new(berth_notifier::component(
                    store(),
                    key()?,
                    deps.options.notifier.clone(),
                ))),
                // The key seals the certificate store's private keys
                // (HTTPS only; plain HTTP runs without one).
                "router" => Ok(berth_router::component(
                    store(),
                    deps.secret_key.as_deref().cloned(),
                    deps.options.router.clone(),
                )),
                "api" => Ok(berth_api::component(
                    store(),
                    key()?,
                    deps.options.api.clone(),
                )),
                other => Err(anyhow::anyhow!(
                    "component {other:?} is listed but not built"
                )),
            }
        })
        .collect()
}

//! The components berth runs, in start order. `berth up` runs all of them;
//! `berth run <name>` one. Adding a component (ingress, resolver, puller,
//! scheduler, agent, notifier, router arrive with later issues) means one
//! line in [`NAMES`] and one arm in [`build`].

use std::sync::Arc;

use anyhow::Context;
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::secrets::SecretKey;
use berth_runtime::{Component, Config};

use crate::projector::Projector;

/// Every component name, in start order.
pub const NAMES: &[&str] = &["projector", "resolver", "node"];

/// What components are built from: opened once per process and shared.
#[derive(Debug, Clone)]
pub struct ComponentDeps {
    pub store: Arc<EventStore>,
    /// Seals and opens secrets (registry tokens, hook keys).
    pub secret_key: Arc<SecretKey>,
    /// The resolver's validated settings.
    pub resolver: berth_resolver::ResolverOptions,
    /// The node's validated settings.
    pub node: berth_node::NodeOptions,
}

impl ComponentDeps {
    /// Opens (and provisions, idempotently) the event store.
    pub async fn open(
        client: async_nats::Client,
        config: &Config,
        secret_key: SecretKey,
        resolver: berth_resolver::ResolverOptions,
        node: berth_node::NodeOptions,
    ) -> anyhow::Result<Self> {
        let store_config = StoreConfig {
            replicas: config.replicas,
            ..StoreConfig::default()
        };
        let store = EventStore::open(client, config.subjects.clone(), store_config)
            .await
            .context("opening the event store")?;
        Ok(Self {
            store: Arc::new(store),
            secret_key: Arc::new(secret_key),
            resolver,
            node,
        })
    }
}

/// Builds the named component, or all of them when `only` is `None`.
/// Names were validated against [`NAMES`] with the rest of the config.
pub fn build(deps: &ComponentDeps, only: Option<&str>) -> anyhow::Result<Vec<Box<dyn Component>>> {
    NAMES
        .iter()
        .filter(|n| only.is_none_or(|o| o == **n))
        .map(|name| -> anyhow::Result<Box<dyn Component>> {
            match *name {
                "projector" => Ok(Box::new(Projector::new(deps.store.clone()))),
                "resolver" => Ok(Box::new(
                    berth_resolver::Resolver::new(
                        (*deps.store).clone(),
                        (*deps.secret_key).clone(),
                        deps.resolver.clone(),
                    )
                    .context("building the resolver")?,
                )),
                "node" => Ok(Box::new(berth_node::Node::new(
                    (*deps.store).clone(),
                    (*deps.secret_key).clone(),
                    deps.node.clone(),
                ))),
                other => Err(anyhow::anyhow!(
                    "component {other:?} is listed but not built"
                )),
            }
        })
        .collect()
}

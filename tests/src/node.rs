//! Shared setup for the node tests (real runc as root, real nats-server,
//! real registry): an event store under a fresh prefix, a registry holding
//! the agent tests' busybox image, helpers to enqueue [`NodeWork`] and to
//! wait for facts on a service's subject, and cleanup of any container a
//! failed test leaves behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::registry::{Registry, RegistryAuth};
use crate::{NatsServer, NatsVersion};
use berth_domain::node::NodeState;
use berth_domain::service::{Command, CreateService};
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::node_key::NodePublicKey;
use berth_schemas::commands::{NodeRunSpec, NodeWork};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::model::{ResolvedImage, Sealed, ServiceType};
use berth_schemas::{AggregateId, Envelope, Event, Subjects};

use crate::agent::{busybox_image, default_config};

/// Everything but the node: nats, store, registry with one image.
#[derive(Debug)]
pub struct World {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub store: EventStore,
    pub registry: Registry,
    pub digest: String,
    /// The node's subnet (dropped before `dir`: it removes what of the
    /// network is left, reading the node's network state in `dir`).
    pub subnet: crate::net::SubnetLease,
    pub dir: tempfile::TempDir,
}

pub const REPO: &str = "app/svc";

impl World {
    pub async fn start() -> World {
        Self::start_with(RegistryAuth::None).await
    }

    pub async fn start_with(auth: RegistryAuth) -> World {
        crate::agent::require_root_and_runc();
        crate::init_tracing();
        let nats = NatsServer::start(NatsVersion::Legacy).unwrap();
        let client = nats.connect().await.unwrap();
        let store = EventStore::open(
            client.clone(),
            crate::unique_subjects(),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let registry = Registry::start(auth).await.unwrap();
        let image = busybox_image(default_config());
        registry.push_image(REPO, "v1", &image).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut subnet = crate::net::lease_subnet();
        subnet.net_dir = Some(dir.path().join("node").join("agent").join("net"));
        World {
            nats,
            client,
            store,
            registry,
            digest: image.digest,
            subnet,
            dir,
        }
    }

    /// The node's state dir.
    pub fn node_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.node_dir().join("agent").join("runc")
    }

    /// A web service of the pushed image whose first deploy resolved to
    /// its digest (what the scheduler sees before it places instances).
    pub async fn service(&self) -> (ServiceId, DeployId) {
        self.service_of(&OwnerId::User(UserId::generate())).await
    }

    /// [`World::service`] of `owner`.
    pub async fn service_of(&self, owner: &OwnerId) -> (ServiceId, DeployId) {
        let service = ServiceId::generate();
        let deploy = DeployId::generate();
        let create = CreateService::new(
            owner.clone(),
            &format!("svc-{}", &service.as_str()[4..12]),
            ServiceType::WebService,
            &format!("{}/{REPO}:v1", self.registry.host),
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            deploy.clone(),
        );
        self.command(&service, Command::Create(Box::new(create)))
            .await;
        self.command(
            &service,
            Command::RecordResolved {
                deploy: deploy.clone(),
                image: ResolvedImage {
                    digest: self.digest.clone(),
                    index_digest: None,
                    compressed_size: 1,
                },
            },
        )
        .await;
        (service, deploy)
    }

    /// Runs a service command (test setup, as ingress/scheduler would).
    pub async fn command(&self, service: &ServiceId, command: Command) {
        crate::eventlog::service_command(&self.store, service, command)
            .await
            .unwrap();
    }

    /// A run spec for the pushed image, for a fresh service and deploy.
    pub async fn spec(&self, command: &str) -> NodeRunSpec {
        self.spec_of(&OwnerId::User(UserId::generate()), command)
            .await
    }

    /// [`World::spec`] for a service of `owner`.
    pub async fn spec_of(&self, owner: &OwnerId, command: &str) -> NodeRunSpec {
        let (service, deploy) = self.service_of(owner).await;
        NodeRunSpec {
            service,
            deploy,
            instance: InstanceId::generate(),
            image: format!("{}/{REPO}", self.registry.host),
            digest: self.digest.clone(),
            credential: None,
            login: None,
            env: Default::default(),
            files: Default::default(),
            command: Some(command.to_owned()),
            port: Some(10000),
            plan: None,
            shutdown_delay_secs: 2,
            disk_restore: None,
        }
    }

    /// The public key `node` registered: what its work is sealed to.
    pub async fn node_key(&self, node: &NodeId) -> NodePublicKey {
        let state = self
            .store
            .load(&AggregateId::Node(node.clone()))
            .await
            .unwrap()
            .events
            .iter()
            .fold(NodeState::default(), berth_domain::node::fold);
        let key = state.public_key.expect("the node registered a public key");
        NodePublicKey::from_base64(&key).unwrap()
    }

    /// A subscription to `service`'s output lines, in place (flushed)
    /// before anything is run.
    pub async fn subscribe_logs(&self, service: &ServiceId) -> async_nats::Subscriber {
        let logs = self
            .client
            .subscribe(self.store.subjects().logs(service))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        logs
    }

    /// Enqueue `work` for `node` (idempotency key `key`).
    pub async fn enqueue(&self, node: &NodeId, work: &NodeWork, key: &str) {
        let service = match work {
            NodeWork::RunInstance(s) | NodeWork::RunOnce { spec: s, .. } => &s.service,
            NodeWork::StopInstance { service, .. } => service,
        };
        self.store
            .enqueue(
                &Subjects::node_queue(node),
                service.as_str(),
                rmp_serde::to_vec_named(work).unwrap().into(),
                key,
            )
            .await
            .unwrap();
    }

    /// The service's events after `quiet` has passed: for checking that
    /// something did NOT happen (a redelivery started nothing, …).
    pub async fn events_after(&self, service: &ServiceId, quiet: Duration) -> Vec<Envelope> {
        tokio::time::sleep(quiet).await;
        self.store
            .load(&AggregateId::Service(service.clone()))
            .await
            .unwrap()
            .events
    }

    /// The service's events once `pred` holds for them (polls the log).
    pub async fn wait_events(
        &self,
        service: &ServiceId,
        within: Duration,
        pred: impl Fn(&[Envelope]) -> bool,
    ) -> Vec<Envelope> {
        let deadline = Instant::now() + within;
        loop {
            let events = self
                .store
                .load(&AggregateId::Service(service.clone()))
                .await
                .unwrap()
                .events;
            if pred(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "events not as expected within {within:?}: {:?}",
                    types(&events)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A node's options for tests: `name`, `cpu_millis` and `memory_mib` of
/// capacity, fast heartbeats, restarts and registry retries; its state in
/// `$BERTH_DATA_DIR/node` unless `dir` is set.
pub fn test_options(name: &str, cpu_millis: u32, memory_mib: u32) -> berth_node::NodeOptions {
    berth_node::NodeOptions {
        dir: None,
        name: name.into(),
        cpu_millis,
        memory_mib,
        runc: "runc".into(),
        cni_path: "/usr/lib/cni".into(),
        concurrency: 4,
        ack_wait: Duration::from_secs(10),
        max_deliver: 3,
        heartbeat: Duration::from_millis(200),
        usage_interval: Some(Duration::from_secs(1)),
        progress_interval: Duration::from_millis(100),
        restart: crate::agent::fast_restarts(),
        client: berth_oci::ClientConfig {
            retry: berth_oci::RetryPolicy::fast(),
            ..berth_oci::ClientConfig::default()
        },
        min_free_disk: 1 << 30,
        instance_disk_limit: 0,
        disk_snapshot_every: Duration::ZERO,
        done_kept: berth_node::DONE_KEPT,
        services_url: Some("http://services.test".into()),
        log_rate: berth_agent::logs::LogRate::default(),
        user_namespace: test_user_namespace()
            .map_or(berth_node::Userns::Off, berth_node::Userns::On),
    }
}

/// The user namespace test nodes and agents run their instances in: the
/// one `berth up` gives them where the machine allows it (first host id
/// [`berth_node::USERNS_AUTO_HOST`]), so the suite tests what users run;
/// none (the host's root, as on a machine without user namespaces) when
/// `BERTH_TEST_USERNS` is `off`, or the one starting at the first host id
/// it names.
pub fn test_user_namespace() -> Option<berth_agent::bundle::UserNamespace> {
    let host = match std::env::var("BERTH_TEST_USERNS") {
        Err(_) => berth_node::USERNS_AUTO_HOST,
        Ok(v) if v == "off" => return None,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("BERTH_TEST_USERNS={v}: `off` or a first host id")),
    };
    Some(berth_agent::bundle::UserNamespace {
        host,
        size: berth_node::USERNS_IDS,
    })
}

/// Let instances in a user namespace through `dir` (a small disk a test
/// mounts with mode 0700; temp dirs are 0755 already) to the node's state
/// below it, when test nodes use one.
pub fn passable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if test_user_namespace().is_some() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
}

/// Event type names, in order.
pub fn types(events: &[Envelope]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.type_name()).collect()
}

/// How many events of `type_name`.
pub fn count(events: &[Envelope], type_name: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event.type_name() == type_name)
        .count()
}

/// The first event of `type_name`.
pub fn first<'a>(events: &'a [Envelope], type_name: &str) -> Option<&'a Envelope> {
    events.iter().find(|e| e.event.type_name() == type_name)
}

/// Is `e` a fact of this type?
pub fn is(e: &Event, type_name: &str) -> bool {
    e.type_name() == type_name
}

impl Drop for World {
    fn drop(&mut self) {
        crate::runc::remove_leftovers(&self.runc_root(), self.dir.path());
        remove_alias(&self.node_dir());
    }
}

/// Unmounts what the node with its state in `dir` mounted under its
/// state dir's alias, and the alias (made when the instances' root could
/// not pass a directory above `dir`; see `berth_node::userns`).
pub fn remove_alias(dir: &Path) {
    let Some(id) = std::fs::read_to_string(dir.join("node-id"))
        .ok()
        .and_then(|id| id.trim().parse().ok())
    else {
        return;
    };
    let alias = berth_node::userns::alias_of(&id);
    crate::runc::remove_leftovers(&alias.join("agent").join("runc"), &alias);
    let _ = std::fs::remove_dir(&alias);
}

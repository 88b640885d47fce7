//! Shared setup of the credential, create-service and resolver tests: a real
//! nats-server with the event store under a unique prefix, a resolver
//! component and the ingress application layer, plus helpers to read the
//! log.

use std::time::Duration;

use crate::eventlog::open_store;
use crate::image::{small_image, Image};
use crate::registry::{Registry, RegistryAuth};
use crate::{NatsServer, NatsVersion};
use berth_domain::service::ServiceState;
use berth_eventlog::EventStore;
use berth_ingress::{Caller, Ingress, IngressOptions, NewCredential};
use berth_oci::RetryPolicy;
use berth_resolver::{Resolver, ResolverOptions};
use berth_runtime::{Secret, SecretKey};
use berth_schemas::ids::{ApiKeyId, DeployId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{DeployStatus, RegistryKind};
use berth_schemas::{AggregateId, Commit, Envelope};
use tokio_util::sync::CancellationToken;

/// htpasswd auth with one user.
pub fn basic(user: &str, pass: &str) -> RegistryAuth {
    RegistryAuth::Htpasswd {
        user: user.into(),
        pass: pass.into(),
    }
}

/// A registry with `auth` serving `small_image("amd64")` as `team/app:v1`,
/// the fixture most of these tests start from.
pub async fn registry_with_app(auth: RegistryAuth) -> (Registry, Image) {
    let reg = Registry::start(auth).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("team/app", "v1", &img).await.unwrap();
    (reg, img)
}

/// Resolver options for tests: millisecond retries, a small size limit.
pub fn fast_options() -> ResolverOptions {
    let mut o = ResolverOptions::default();
    for c in [&mut o.deploy_client, &mut o.check_client] {
        c.retry = RetryPolicy::fast();
        c.max_image_size = 1_000_000;
    }
    o.ack_wait = Duration::from_secs(5);
    o.retry_delay = Duration::from_millis(100);
    o
}

/// One berth installation for a test: NATS, store, resolver, ingress.
#[derive(Debug)]
pub struct App {
    pub nats: NatsServer,
    pub store: EventStore,
    pub key: SecretKey,
    pub ingress: Ingress,
    pub shutdown: CancellationToken,
    pub resolver: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl App {
    /// Everything running, the resolver with [`fast_options`].
    pub async fn start() -> App {
        Self::start_with(NatsVersion::Modern, Some(fast_options())).await
    }

    /// `resolver: None` starts no resolver (checks then find no responder).
    pub async fn start_with(version: NatsVersion, resolver: Option<ResolverOptions>) -> App {
        let nats = NatsServer::start(version).unwrap();
        let client = nats.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
        let shutdown = CancellationToken::new();
        let resolver = match resolver {
            Some(opts) => {
                let r = Resolver::new(store.clone(), key.clone(), opts).unwrap();
                let ready = berth_runtime::ReadyFlag::default();
                let (sd, rd) = (shutdown.clone(), ready.clone());
                let handle = tokio::spawn(async move {
                    r.run(sd, Some(rd)).await.unwrap();
                });
                let t0 = std::time::Instant::now();
                while !ready.get() {
                    assert!(t0.elapsed() < Duration::from_secs(10), "resolver not ready");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some(handle)
            }
            None => None,
        };
        let ingress = Ingress::start(
            store.clone(),
            key.clone(),
            IngressOptions {
                check_timeout: Duration::from_secs(10),
                ..IngressOptions::default()
            },
            shutdown.clone(),
            &tokio_util::task::TaskTracker::new(),
        )
        .await
        .unwrap();
        App {
            nats,
            store,
            key,
            ingress,
            shutdown,
            resolver,
        }
    }

    /// A new owner (created in the log) and a caller acting for it.
    pub async fn owner(&self) -> Caller {
        let owner = OwnerId::User(UserId::generate());
        self.ingress
            .ensure_owner(&owner, "test owner")
            .await
            .unwrap();
        Caller::api_key(owner, ApiKeyId::generate())
    }

    /// A `GENERIC` credential for `host`.
    pub async fn credential(
        &self,
        caller: &Caller,
        host: &str,
        user: &str,
        token: &str,
    ) -> berth_schemas::ids::CredentialId {
        self.ingress
            .add_credential(
                caller,
                NewCredential {
                    name: format!("{user} at {host}"),
                    registry: RegistryKind::Generic,
                    host: Some(host.to_owned()),
                    username: user.to_owned(),
                    token: Secret::new(token),
                },
            )
            .await
            .unwrap()
            .id
    }

    /// The last sequence of the event stream.
    pub async fn last_seq(&self) -> u64 {
        self.store.last_stream_seq().await.unwrap()
    }

    /// The event stream.
    pub async fn events_stream(&self) -> async_nats::jetstream::stream::Stream {
        self.store
            .jetstream()
            .get_stream(self.store.subjects().events_stream())
            .await
            .unwrap()
    }

    /// Stops the running resolver (its shutdown token is replaced, so
    /// what is started next runs on a fresh one).
    pub async fn stop_resolver(&mut self) {
        std::mem::take(&mut self.shutdown).cancel();
        self.resolver.take().unwrap().await.unwrap();
    }

    /// Starts a resolver with `opts` over `store` (on the same durable
    /// consumer as the one before, unless `opts` names another).
    pub fn start_resolver(&mut self, store: EventStore, opts: ResolverOptions) {
        let r = Resolver::new(store, self.key.clone(), opts).unwrap();
        let shutdown = self.shutdown.clone();
        self.resolver = Some(tokio::spawn(
            async move { r.run(shutdown, None).await.unwrap() },
        ));
    }

    /// Every raw message of the event stream: subject, payload, and the
    /// headers flattened to bytes.
    pub async fn raw_log(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let stream = self.events_stream().await;
        let last = self.last_seq().await;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let mut bytes = Vec::new();
                for (k, vs) in m.headers.iter() {
                    bytes.extend_from_slice(k.to_string().as_bytes());
                    for v in vs {
                        bytes.extend_from_slice(v.as_str().as_bytes());
                    }
                }
                out.push((m.subject.to_string(), m.payload.to_vec(), bytes));
            }
        }
        out
    }

    /// Every envelope in the log, in order.
    pub async fn envelopes(&self) -> Vec<Envelope> {
        self.raw_log()
            .await
            .iter()
            .filter_map(|(_, payload, _)| Commit::decode(payload).ok())
            .flat_map(|c| c.events)
            .collect()
    }

    /// The events of one aggregate.
    pub async fn events_of(&self, id: &AggregateId) -> Vec<Envelope> {
        self.store.load(id).await.unwrap().events
    }

    /// Waits until the deploy is no longer waiting for its digest (resolved
    /// or failed); returns the service state then.
    pub async fn await_deploy(
        &self,
        caller: &Caller,
        service: &ServiceId,
        deploy: &DeployId,
    ) -> ServiceState {
        let t0 = std::time::Instant::now();
        loop {
            let s = self.ingress.show_service(caller, service).await.unwrap();
            let d = s.deploy(deploy).unwrap();
            if d.resolved.is_some() || d.status != DeployStatus::UpdateInProgress {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "deploy {deploy} still waits for its digest: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

//! Shared setup of the API tests: a real nats-server, the event store, a
//! resolver (for create's image check) against a real registry, and the
//! API router called in-process (`oneshot`), plus owners with API keys.

#![allow(dead_code)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use berth_api::AppState;
use berth_eventlog::EventStore;
use berth_ingress::IngressOptions;
use berth_oci::RetryPolicy;
use berth_resolver::{Resolver, ResolverOptions};
use berth_runtime::SecretKey;
use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::{Actor, AggregateId, Commit, Envelope};
use berth_tests::eventlog::open_store;
use berth_tests::image::small_image;
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::{NatsServer, NatsVersion};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// One installation for a test.
pub struct App {
    pub nats: NatsServer,
    pub store: EventStore,
    pub key: SecretKey,
    pub state: AppState,
    pub router: Router,
    pub registry: Option<Registry>,
    pub shutdown: CancellationToken,
    /// Stops only the resolver (a child of `shutdown`).
    pub resolver_stop: CancellationToken,
    resolver_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An owner and its API key.
#[derive(Debug, Clone)]
pub struct Owner {
    pub id: OwnerId,
    pub key: String,
}

fn resolver_options() -> ResolverOptions {
    let mut o = ResolverOptions::default();
    for c in [&mut o.deploy_client, &mut o.check_client] {
        c.retry = RetryPolicy::fast();
        c.max_image_size = 1_000_000;
    }
    o.retry_delay = Duration::from_millis(100);
    o
}

impl App {
    /// NATS, store, API; with `registry`, a registry serving `team/app:v1`
    /// (anonymous) and a resolver.
    pub async fn start(registry: bool) -> App {
        Self::start_with(registry, IngressOptions::default()).await
    }

    /// [`App::start`] with the application layer's options (the image
    /// check timeout is always the tests' 10 s).
    pub async fn start_with(registry: bool, opts: IngressOptions) -> App {
        let nats = NatsServer::start(NatsVersion::Modern).unwrap();
        let client = nats.connect().await.unwrap();
        let store = open_store(&client, 1).await.unwrap();
        // What the API component provisions at start.
        store
            .provision_logs(&berth_eventlog::logs::LogLimits::default())
            .await
            .unwrap();
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).unwrap();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let resolver_stop = shutdown.child_token();
        let mut resolver_task = None;
        let registry = if registry {
            let reg = Registry::start(RegistryAuth::None).await.unwrap();
            let img = small_image("amd64").unwrap();
            reg.push_image("team/app", "v1", &img).await.unwrap();
            reg.push_image("team/app", "v2", &img).await.unwrap();
            let r = Resolver::new(store.clone(), key.clone(), resolver_options()).unwrap();
            let ready = berth_runtime::ReadyFlag::default();
            let (sd, rd) = (resolver_stop.clone(), ready.clone());
            let handle = tokio::spawn(async move {
                let _ = r.run(sd, Some(rd)).await;
            });
            resolver_task = Some(handle);
            let t0 = std::time::Instant::now();
            while !ready.get() {
                assert!(t0.elapsed() < Duration::from_secs(10), "resolver not ready");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some(reg)
        } else {
            None
        };
        let state = AppState::start(
            store.clone(),
            key.clone(),
            IngressOptions {
                check_timeout: Duration::from_secs(10),
                ..opts
            },
            shutdown.clone(),
            &tracker,
        )
        .await
        .unwrap()
        // The tests share one in-process "address" and refuse credentials
        // on purpose; `auth.rs` tests the limits.
        .with_failure_limits(berth_api::FailureLimits {
            burst: 10_000,
            per_minute: 60_000,
        });
        let router = berth_api::router(state.clone());
        App {
            nats,
            store,
            key,
            state,
            router,
            registry,
            shutdown,
            resolver_stop,
            resolver_task: std::sync::Mutex::new(resolver_task),
        }
    }

    /// A second API over the same log, started now: its read model and
    /// the dashboard's feed begin at the log's current end. Stops with
    /// this installation.
    pub async fn second_api(&self) -> Router {
        let state = AppState::start(
            self.store.clone(),
            self.key.clone(),
            IngressOptions {
                check_timeout: Duration::from_secs(10),
                ..IngressOptions::default()
            },
            self.shutdown.clone(),
            &TaskTracker::new(),
        )
        .await
        .unwrap()
        .with_failure_limits(berth_api::FailureLimits {
            burst: 10_000,
            per_minute: 60_000,
        });
        berth_api::router(state)
    }

    /// Stops the resolver and waits until it has ended: nothing it was
    /// doing lands after this returns.
    pub async fn stop_resolver(&self) {
        self.resolver_stop.cancel();
        let task = self.resolver_task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// `host/team/app:tag` on the test registry.
    pub fn image(&self, tag: &str) -> String {
        format!("{}/team/app:{tag}", self.registry.as_ref().unwrap().host)
    }

    /// A new owner with an API key.
    pub async fn owner(&self) -> Owner {
        let id = OwnerId::User(UserId::generate());
        self.state.ingress.ensure_owner(&id, "test").await.unwrap();
        let (_, key) = self
            .state
            .ingress
            .create_api_key(&id, "test", &Actor::system("test"))
            .await
            .unwrap();
        Owner {
            id,
            key: key.expose().to_owned(),
        }
    }

    /// One request; the answer's status and JSON body (`Null` if empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let raw = body.map(|b| b.to_string());
        self.call_raw(method, path, key, raw).await
    }

    /// One request with a raw body.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method.clone()).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or_default())).unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        // In the test suite (not the benchmark sharing this file), every
        // answer is held to the OpenAPI document.
        #[cfg(test)]
        crate::conformance::check(&method, path, status, &json);
        (status, json)
    }

    /// The same installation allowing each address `limits` failures.
    pub fn limit_failures(&mut self, limits: berth_api::FailureLimits) {
        self.state = self.state.clone().with_failure_limits(limits);
        self.router = berth_api::router(self.state.clone());
    }

    /// Messages this installation's NATS client has sent so far: every
    /// request on the bus (store loads, appends, stream info) counts.
    pub fn bus_messages(&self) -> u64 {
        self.store
            .client()
            .statistics()
            .out_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One GET as if from `client` (the peer address the listener records);
    /// status, `Retry-After` in seconds, body.
    pub async fn get_from(
        &self,
        client: Option<std::net::SocketAddr>,
        path: &str,
        key: Option<&str>,
    ) -> (StatusCode, Option<u64>, Value) {
        let mut req = Request::builder().method(Method::GET).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        if let Some(addr) = client {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(addr));
        }
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, retry, json)
    }

    /// GET with a key.
    pub async fn get(&self, path: &str, o: &Owner) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&o.key), None).await
    }

    /// POST with a key.
    pub async fn post(&self, path: &str, o: &Owner, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&o.key), Some(body))
            .await
    }

    /// PATCH with a key.
    pub async fn patch(&self, path: &str, o: &Owner, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(&o.key), Some(body))
            .await
    }

    /// PATCHes each service of `refusals` with `serviceDetails.{field}`
    /// set to its value and asserts a 400 that says its text, and that
    /// nothing was recorded.
    pub async fn details_refused(&self, o: &Owner, field: &str, refusals: &[(&str, Value, &str)]) {
        let before = self.last_seq().await;
        for (svc, value, says) in refusals {
            let (s, v) = self
                .patch(
                    &format!("/v1/services/{svc}"),
                    o,
                    serde_json::json!({"serviceDetails": {field: value}}),
                )
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{value}: {v}");
            assert!(v.to_string().contains(says), "{value}: {v}");
        }
        assert_eq!(self.last_seq().await, before, "a refusal records nothing");
    }

    /// DELETE with a key.
    pub async fn delete(&self, path: &str, o: &Owner) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&o.key), None).await
    }

    /// Every item of a cursor listing (`[{<key>: item, cursor}]`), paging
    /// 100 at a time.
    pub async fn all_pages(&self, path: &str, o: &Owner, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=100&cursor={c}"),
                None => format!("{path}{sep}limit=100"),
            };
            let (s, page) = self.get(&url, o).await;
            assert_eq!(s, StatusCode::OK, "{url}: {page}");
            let items = page.as_array().unwrap().clone();
            if items.is_empty() {
                return out;
            }
            cursor = items.last().unwrap()["cursor"].as_str().map(str::to_owned);
            out.extend(items.into_iter().map(|i| i[key].clone()));
        }
    }

    /// Creates cron job `name` of `team/app:v1` (daily at 03:00); returns
    /// its id.
    pub async fn cron_job(&self, o: &Owner, name: &str) -> String {
        let (s, v) = self
            .post(
                "/v1/services",
                o,
                serde_json::json!({"type": "cron_job", "name": name,
                    "image": {"imagePath": self.image("v1")},
                    "serviceDetails": {"schedule": "0 3 * * *"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["service"]["id"].as_str().unwrap().to_owned()
    }

    /// The id of `svc`'s newest deploy.
    pub async fn latest_deploy(&self, o: &Owner, svc: &str) -> String {
        let (s, list) = self.get(&format!("/v1/services/{svc}/deploys"), o).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        list[0]["deploy"]["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the resolver recorded deploy `dep`'s digest; returns
    /// the deploy.
    pub async fn wait_resolved(&self, o: &Owner, svc: &str, dep: &str) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let (s, d) = self
                .get(&format!("/v1/services/{svc}/deploys/{dep}"), o)
                .await;
            assert_eq!(s, StatusCode::OK, "{d}");
            if !d["image"]["sha"].is_null() {
                return d;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "not resolved: {d}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes `svc`'s newest deploy live once resolved, as the scheduler
    /// would record it; returns (deploy, digest).
    pub async fn go_live(&self, o: &Owner, svc: &str) -> (String, String) {
        use berth_domain::service::{Command, Service};
        let dep = self.latest_deploy(o, svc).await;
        let d = self.wait_resolved(o, svc, &dep).await;
        let digest = d["image"]["sha"].as_str().unwrap().to_owned();
        let deploy: berth_schemas::ids::DeployId = dep.parse().unwrap();
        let id = AggregateId::Service(svc.parse().unwrap());
        let stamp = berth_eventlog::Stamp::new(Actor::system("test"));
        for (step, command) in [
            (
                "update",
                Command::RecordUpdateStarted {
                    deploy: deploy.clone(),
                },
            ),
            (
                "live",
                Command::RecordLive {
                    deploy,
                    digest: digest.clone(),
                },
            ),
        ] {
            self.store
                .execute::<Service>(&id, &format!("{dep}:{step}"), &stamp, command)
                .await
                .unwrap();
        }
        (dep, digest)
    }

    /// Places a new instance of `svc`'s `deploy` (running `digest`) on a
    /// node of its own, as the scheduler would record it; (instance, node).
    pub async fn place(
        &self,
        svc: &str,
        deploy: &str,
        digest: &str,
    ) -> (berth_schemas::ids::InstanceId, berth_schemas::ids::NodeId) {
        use berth_schemas::ids::{InstanceId, NodeId};
        let (instance, node) = (InstanceId::generate(), NodeId::generate());
        self.record(
            svc,
            berth_domain::service::Command::Place {
                scheduled: vec![berth_schemas::events::InstanceScheduled {
                    instance: instance.clone(),
                    deploy: deploy.parse().unwrap(),
                    node: node.clone(),
                    digest: digest.to_owned(),
                }],
                rescheduled: vec![],
            },
        )
        .await;
        (instance, node)
    }

    /// Records that `instance` of `svc` started on `node`, as its node
    /// would report it.
    pub async fn started(
        &self,
        svc: &str,
        instance: &berth_schemas::ids::InstanceId,
        node: &berth_schemas::ids::NodeId,
        digest: &str,
    ) {
        let fact = berth_schemas::events::InstanceStarted {
            instance: instance.clone(),
            node: node.clone(),
            digest: digest.to_owned(),
            addr: None,
            published: None,
        };
        self.record(
            svc,
            berth_domain::service::Command::RecordInstanceFact(Box::new(fact.into())),
        )
        .await;
    }

    /// Runs `command` on service `svc` as a component would.
    async fn record(&self, svc: &str, command: berth_domain::service::Command) {
        let id = AggregateId::Service(svc.parse().unwrap());
        let key = berth_schemas::ids::DeployId::generate().to_string();
        self.store
            .execute::<berth_domain::service::Service>(
                &id,
                &key,
                &berth_eventlog::Stamp::new(Actor::system("test")),
                command,
            )
            .await
            .unwrap();
    }

    /// Creates a background worker of `team/app:v1`; returns (id, hook path).
    pub async fn service(&self, o: &Owner, name: &str) -> (String, String) {
        self.create(o, "background_worker", name).await
    }

    /// Creates a web service of `team/app:v1`; returns its id.
    pub async fn web_service(&self, o: &Owner, name: &str) -> String {
        self.create(o, "web_service", name).await.0
    }

    /// Creates a service of `service_type` running `team/app:v1`; returns
    /// (id, hook path).
    async fn create(&self, o: &Owner, service_type: &str, name: &str) -> (String, String) {
        let (s, v) = self
            .post(
                "/v1/services",
                o,
                serde_json::json!({
                    "type": service_type,
                    "name": name,
                    "image": {"imagePath": self.image("v1")},
                }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["service"]["id"].as_str().unwrap().to_owned(),
            v["deployHookUrl"].as_str().unwrap().to_owned(),
        )
    }

    /// A service's state as the store folds it.
    pub async fn ingress_state(
        &self,
        id: &berth_schemas::ids::ServiceId,
    ) -> berth_domain::service::ServiceState {
        let (state, _) = self
            .store
            .state(
                &AggregateId::Service(id.clone()),
                berth_domain::service::fold,
            )
            .await
            .unwrap();
        (*state).clone()
    }

    /// Keeps one log line of `service`'s `instance` as a node's agent
    /// publishes it (on the service's logs subject; no instance: as the
    /// scheduler publishes a deploy's outcome), waiting until the logs
    /// stream has it; its stream sequence.
    pub async fn log_line<'a>(
        &self,
        service: &str,
        instance: impl Into<Option<&'a berth_schemas::ids::InstanceId>>,
        stream: berth_schemas::logs::Stream,
        text: &str,
    ) -> u64 {
        let service: berth_schemas::ids::ServiceId = service.parse().unwrap();
        let line = berth_schemas::logs::LogLine {
            service: service.clone(),
            instance: instance.into().cloned(),
            stream,
            line: text.to_owned(),
            time: chrono::Utc::now(),
        };
        self.store
            .jetstream()
            .publish(
                self.store.subjects().logs(&service),
                serde_json::to_vec(&line).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// The last sequence of the event stream.
    pub async fn last_seq(&self) -> u64 {
        self.store.last_stream_seq().await.unwrap()
    }

    /// The events of one aggregate.
    pub async fn events_of(&self, id: &AggregateId) -> Vec<Envelope> {
        self.store.load(id).await.unwrap().events
    }

    /// Every envelope in the log.
    pub async fn envelopes(&self) -> Vec<Envelope> {
        let stream = self
            .store
            .jetstream()
            .get_stream(self.store.subjects().events_stream())
            .await
            .unwrap();
        let mut out = Vec::new();
        for seq in 1..=self.last_seq().await {
            if let Ok(m) = stream.get_raw_message(seq).await {
                if let Ok(c) = Commit::decode(&m.payload) {
                    out.extend(c.events);
                }
            }
        }
        out
    }
}

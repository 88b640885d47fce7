//! Setup for the router tests: a real nats-server and event store under a
//! unique prefix, the router on a free loopback port, real HTTP backends
//! (hyper servers on loopback that say which version and instance they
//! are), services driven through the service aggregate's own `decide` plus
//! the instance facts a node would report, and a small HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use berth_domain::service::{self, Command, CreateService, DeployRequest, ServiceState};
use berth_domain::Ctx;
use berth_eventlog::{EventStore, NewEvent, StoreConfig, Version};
pub use berth_router::RouterArgs;
use berth_router::{Router, Routes};
use berth_schemas::events::{InstanceHealthy, InstanceScheduled, InstanceStarted, InstanceStopped};
use berth_schemas::ids::{DeployId, InstanceId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::model::{DeployTrigger, ResolvedImage, Sealed, ServiceType};
use berth_schemas::{Actor, AggregateId, Event};
use berth_tests::{NatsServer, NatsVersion};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// NATS, the store and a running router.
pub struct Env {
    pub nats: NatsServer,
    pub store: EventStore,
    pub routes: Routes,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Env {
    pub async fn start() -> Result<Env> {
        Self::start_on(NatsVersion::Modern).await
    }

    pub async fn start_on(version: NatsVersion) -> Result<Env> {
        Self::start_full(version, test_args()).await
    }

    /// A router with other settings.
    pub async fn start_with(args: RouterArgs) -> Result<Env> {
        Self::start_full(NatsVersion::Modern, args).await
    }

    async fn start_full(version: NatsVersion, args: RouterArgs) -> Result<Env> {
        berth_tests::init_tracing();
        let nats = NatsServer::start(version)?;
        let client = nats.connect().await?;
        let store = EventStore::open(
            client,
            berth_tests::unique_subjects(),
            StoreConfig::default(),
        )
        .await?;
        let (routes, addr, shutdown, task) = spawn_router_with(&store, args).await?;
        Ok(Env {
            nats,
            store,
            routes,
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// Stops the router and starts a fresh one on a new port (it rebuilds
    /// its table from the log).
    pub async fn restart_router(&mut self) -> Result<()> {
        self.stop().await;
        let (routes, addr, shutdown, task) = spawn_router(&self.store).await?;
        self.routes = routes;
        self.addr = addr;
        self.shutdown = shutdown;
        self.task = Some(task);
        Ok(())
    }

    /// Waits until the router's table reflects the log up to `seq`.
    pub async fn synced(&self, seq: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.routes.load().applied_seq < seq {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "router did not reach stream seq {seq}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Stops the router and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The router's settings in these tests.
pub fn test_args() -> RouterArgs {
    RouterArgs {
        router_addr: "127.0.0.1:0".into(),
        router_connect_timeout_ms: 1000,
        router_drain_secs: 5,
        ..RouterArgs::default()
    }
}

pub async fn spawn_router(
    store: &EventStore,
) -> Result<(Routes, SocketAddr, CancellationToken, JoinHandle<()>)> {
    spawn_router_with(store, test_args()).await
}

pub async fn spawn_router_with(
    store: &EventStore,
    args: RouterArgs,
) -> Result<(Routes, SocketAddr, CancellationToken, JoinHandle<()>)> {
    let opts = args.validate().map_err(|p| anyhow!("{p:?}"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // A key of its own, for routers with HTTPS (its certificate store).
    let key = berth_runtime::SecretKey::from_base64(&berth_runtime::SecretKey::generate_base64())?;
    let router = Router::new(store.clone(), opts).with_key(key);
    let routes = router.routes();
    let (shutdown, task) = run_until_ready(router, listener, None).await?;
    Ok((routes, addr, shutdown, task))
}

/// Runs `router` on `listener` and waits (10 s at most) until it says it
/// is ready and `also` (its HTTPS listener, say) takes connections.
pub async fn run_until_ready(
    router: Router,
    listener: TcpListener,
    also: Option<SocketAddr>,
) -> Result<(CancellationToken, JoinHandle<()>)> {
    let shutdown = CancellationToken::new();
    let ready = berth_runtime::ReadyFlag::default();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let ready = ready.clone();
        async move {
            if let Err(e) = router.run_on(listener, shutdown, Some(ready)).await {
                panic!("router failed: {e}");
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let taking = match also {
            Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            None => true,
        };
        if ready.get() && taking {
            return Ok((shutdown, task));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "router not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The size of `/big`'s answer.
pub const BIG: usize = 32 << 20;

/// A real HTTP server standing in for one instance. It answers
/// `<version> <instance>` on every path, except `/echo` (request headers,
/// one `name: value` per line), `/slow` (answers after 300 ms),
/// `/upload` (the number of body bytes it read) and `/big` (32 MiB).
pub struct Backend {
    pub addr: SocketAddr,
    pub label: String,
    pub hits: Arc<AtomicU64>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    pub async fn start(version: &str, instance: usize) -> Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let label = format!("{version} {instance}");
        let hits = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_backend(
            listener,
            label.clone(),
            Arc::clone(&hits),
            stop.clone(),
        ));
        Ok(Backend {
            addr,
            label,
            hits,
            stop,
            task: Some(task),
        })
    }

    /// Stops accepting and waits until every in-flight request is answered
    /// (as an app does on SIGTERM).
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_backend(
    listener: TcpListener,
    label: String,
    hits: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
        };
        let label = label.clone();
        let hits = Arc::clone(&hits);
        let svc = service_fn(move |req: Request<Incoming>| {
            let label = label.clone();
            let hits = Arc::clone(&hits);
            async move {
                hits.fetch_add(1, Ordering::Relaxed);
                let body = match req.uri().path() {
                    "/echo" => req
                        .headers()
                        .iter()
                        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                        .collect::<String>(),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        label
                    }
                    "/upload" => {
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        format!("{n}")
                    }
                    "/big" => "x".repeat(BIG),
                    _ => label,
                };
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An HTTP/1 client with a connection pool, like a browser or load tool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    router: SocketAddr,
}

impl HttpClient {
    pub fn new(router: SocketAddr) -> Self {
        HttpClient {
            client: {
                // Without nodelay, delayed ACKs cap a client at ~25 req/s.
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new()).build(connector)
            },
            router,
        }
    }

    /// GET `path` with `Host: host`: status and body.
    pub async fn get(&self, host: &str, path: &str) -> Result<(StatusCode, String)> {
        self.send("GET", host, path, Bytes::new()).await
    }

    /// GET `/` with `Host: host` and `X-Forwarded-For: forwarded_for`.
    pub async fn get_forwarded(
        &self,
        host: &str,
        forwarded_for: &str,
    ) -> Result<(StatusCode, String)> {
        let req = Request::builder()
            .uri(format!("http://{}/", self.router))
            .header("host", host)
            .header("x-forwarded-for", forwarded_for)
            .body(Full::new(Bytes::new()))?;
        let resp = self.client.request(req).await.context("request")?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, String)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.router))
            .header("host", host)
            .body(Full::new(body))?;
        let resp = self.client.request(req).await.context("request")?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One service on the log: its state as folded so far and where it stands,
/// so commands are decided and appended like the real workers do.
pub struct Svc {
    pub id: ServiceId,
    pub name: String,
    pub state: ServiceState,
    version: Version,
    store: EventStore,
    n: u64,
}

pub fn digest(v: u8) -> String {
    format!("sha256:{}", format!("{v:02x}").repeat(32))
}

impl Svc {
    /// Creates a service (its initial deploy starts with it).
    pub async fn create(store: &EventStore, name: &str, kind: ServiceType) -> Result<Svc> {
        let mut svc = Svc {
            id: ServiceId::generate(),
            name: name.to_owned(),
            state: ServiceState::default(),
            version: Version::NEW,
            store: store.clone(),
            n: 0,
        };
        let create = CreateService::new(
            OwnerId::User(UserId::generate()),
            name,
            kind,
            "registry.test/app/web:1",
            Sealed {
                kid: "k1".into(),
                ciphertext: "AAAA".into(),
            },
            DeployId::generate(),
        );
        svc.cmd(Command::Create(Box::new(create))).await?;
        Ok(svc)
    }

    /// Decides `command` against the state and appends the events.
    /// Catches up with what others appended to the service meanwhile (the
    /// certificate issuer, say).
    pub async fn reload(&mut self) -> Result<()> {
        let (state, version) = self
            .store
            .state(&AggregateId::Service(self.id.clone()), service::fold)
            .await?;
        self.state = ServiceState::clone(&state);
        self.version = version;
        Ok(())
    }

    pub async fn cmd(&mut self, command: Command) -> Result<u64> {
        let events = service::decide(&self.state, command, &Ctx::default())?;
        self.append(events).await
    }

    /// Appends facts as they are (what nodes report).
    pub async fn append(&mut self, events: Vec<Event>) -> Result<u64> {
        if events.is_empty() {
            return Ok(self.version.stream_seq);
        }
        self.n += 1;
        let key = format!("{}-{}", self.id, self.n);
        let new = events
            .into_iter()
            .map(|e| NewEvent::new(e, Actor::system("test")))
            .collect();
        let appended = self
            .store
            .append(
                &AggregateId::Service(self.id.clone()),
                self.version,
                new,
                &key,
            )
            .await?;
        for env in appended.events.iter() {
            self.state = service::fold(std::mem::take(&mut self.state), env);
        }
        self.version = appended.version;
        Ok(appended.version.stream_seq)
    }

    /// The running deploy (started by create or a deploy request).
    pub fn active(&self) -> Result<DeployId> {
        self.state.active.clone().context("no running deploy")
    }

    /// Resolves the running deploy to `digest(v)` and starts its update.
    pub async fn resolve_and_update(&mut self, v: u8) -> Result<DeployId> {
        let deploy = self.active()?;
        self.cmd(Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: digest(v),
                index_digest: None,
                compressed_size: 1000,
            },
        })
        .await?;
        self.cmd(Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        })
        .await?;
        Ok(deploy)
    }

    /// Places one instance per backend for `deploy` and reports each
    /// started at the backend's address: returns the instance ids.
    pub async fn start_instances(
        &mut self,
        deploy: &DeployId,
        v: u8,
        backends: &[SocketAddr],
    ) -> Result<Vec<InstanceId>> {
        let node = NodeId::generate();
        let ids: Vec<InstanceId> = backends.iter().map(|_| InstanceId::generate()).collect();
        self.cmd(Command::Place {
            scheduled: ids
                .iter()
                .map(|i| InstanceScheduled {
                    instance: i.clone(),
                    deploy: deploy.clone(),
                    node: node.clone(),
                    digest: digest(v),
                })
                .collect(),
            rescheduled: vec![],
        })
        .await?;
        let started = ids
            .iter()
            .zip(backends)
            .map(|(i, addr)| {
                InstanceStarted {
                    instance: i.clone(),
                    node: node.clone(),
                    digest: digest(v),
                    addr: Some(addr.to_string()),
                    published: None,
                }
                .into()
            })
            .collect();
        self.append(started).await?;
        Ok(ids)
    }

    pub async fn healthy(&mut self, ids: &[InstanceId]) -> Result<u64> {
        let events = ids
            .iter()
            .map(|i| {
                InstanceHealthy {
                    instance: i.clone(),
                }
                .into()
            })
            .collect();
        self.append(events).await
    }

    pub async fn stopped(&mut self, ids: &[InstanceId]) -> Result<u64> {
        let events = ids
            .iter()
            .map(|i| {
                InstanceStopped {
                    instance: i.clone(),
                }
                .into()
            })
            .collect();
        self.append(events).await
    }

    pub async fn live(&mut self, deploy: &DeployId, v: u8) -> Result<u64> {
        self.cmd(Command::RecordLive {
            deploy: deploy.clone(),
            digest: digest(v),
        })
        .await
    }

    /// The whole first deploy: instances at `backends`, healthy, live.
    pub async fn first_deploy(
        &mut self,
        v: u8,
        backends: &[SocketAddr],
    ) -> Result<Vec<InstanceId>> {
        let deploy = self.resolve_and_update(v).await?;
        let ids = self.start_instances(&deploy, v, backends).await?;
        self.healthy(&ids).await?;
        self.live(&deploy, v).await?;
        Ok(ids)
    }

    /// Requests a new deploy (trigger `api`); it starts at once when none runs.
    pub async fn request_deploy(&mut self) -> Result<DeployId> {
        let deploy = DeployId::generate();
        self.cmd(Command::RequestDeploy(DeployRequest::new(
            deploy.clone(),
            DeployTrigger::Api,
        )))
        .await?;
        Ok(deploy)
    }

    pub fn host(&self) -> String {
        format!("{}.localhost", self.name)
    }
}

/// On the real scheduler's `w`: a web service of `instances` instances
/// running `command`, once its first deploy is live and the router at
/// `router` answers `/version` for it. Its id, `Host` and that answer.
pub async fn live_web_service(
    w: &berth_tests::scheduler::World,
    router: SocketAddr,
    instances: u32,
    command: &str,
) -> (ServiceId, String, String) {
    let (svc, first) = w
        .create(ServiceType::WebService, |c| {
            c.num_instances = Some(instances);
            c.docker_command = Some(command.into());
        })
        .await;
    let host = format!(
        "{}.localhost",
        w.state(&svc).await.config.expect("created").name
    );
    w.wait_live(&svc, &first).await;
    // The router follows the log: wait until it answers.
    let http = HttpClient::new(router);
    let t0 = std::time::Instant::now();
    loop {
        if let Ok((StatusCode::OK, body)) = http.get(&host, "/version").await {
            return (svc, host, body);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the router never served {host}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! # berth-router: `http(s)://<service>.<base-domain>` to healthy instances
//!
//! The router is the public edge of web services (SPEC §6, §10, §14). It
//! reads the event log; the only thing it appends are the certificate facts
//! of its ACME issuer:
//!
//! - [`table`]: a projection of the service subjects into an immutable
//!   routing table — each web service's name → the healthy instances of its
//!   live deploy — replaced whole after every applied commit, so a deploy
//!   going live switches all traffic at once;
//! - [`proxy`]: the HTTP/1 server that forwards by `Host`, round robin, with
//!   connect retries on another instance, streaming bodies, and protocol
//!   upgrades (WebSocket) joined through to the instance on its `101`;
//! - [`https`], [`tls`]: the optional HTTPS listener — TLS with
//!   certificates chosen by SNI (the operator's for `<name>.<base-domain>`,
//!   managed ones for other domains), HTTP/2 or HTTP/1.1 by ALPN;
//! - [`certstore`]: the certificate store every replica shares (a KV bucket;
//!   private keys sealed), followed live, so certificates swap without a
//!   restart;
//! - [`acme`]: the issuer that obtains, renews and removes managed
//!   certificates for the routing table's custom domains (or the domains
//!   fed with [`Router::with_domains`]);
//! - [`Router`]: the `router` component — catch up with the log, then serve;
//!   on shutdown stop accepting and let in-flight requests finish.
//!
//! Private services, workers and cron jobs are never in the table.

mod access;
pub mod acme;
mod body;
pub mod certstore;
pub mod challenges;
mod config;
mod h1;
mod headers;
pub mod https;
pub mod proxy;
pub mod stats;
pub mod table;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use berth_eventlog::projection::{ProjectionError, ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_runtime::{BoxError, Component, ComponentContext, ReadyFlag, SecretKey};
use challenges::Challenges;
use futures::future::BoxFuture;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use stats::HttpStats;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use acme::{Domains, IssuerHandle};
pub use certstore::CertStore;
pub use config::{AcmeOptions, HttpsOptions, RouterArgs, RouterOptions, LETS_ENCRYPT};
pub use proxy::Proxy;
pub use table::{Route, RouteProjection, RouteState, Routes, RoutingTable, Target};
pub use tls::Certificates;

/// Why the router could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listen address could not be bound (in use, no permission).
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Reading the log failed (retryable: the server may be back soon).
    #[error("following the event log: {0}")]
    Log(#[from] ProjectionError),
    /// HTTPS is on but the installation's secret key was not given (the
    /// certificate store seals private keys with it).
    #[error("HTTPS needs the installation's secret key")]
    NeedsKey,
    /// The certificate store could not be opened.
    #[error("{0}")]
    CertStore(#[from] certstore::StoreError),
    /// The TLS settings were refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What serving HTTPS runs on: the side that answers redirects and
/// challenges, the TLS acceptor and its listener.
type HttpsStarted = (https::HttpsSide, tokio_rustls::TlsAcceptor, TcpListener);

/// The router component.
#[derive(Debug)]
pub struct Router {
    store: EventStore,
    opts: RouterOptions,
    routes: Routes,
    key: Option<Arc<SecretKey>>,
    domains: Option<watch::Receiver<Domains>>,
    issuer: IssuerHandle,
    certs: Certificates,
}

/// The router as a component for `berth up` / `berth run router`; `key`
/// (the installation's secret key) is needed for HTTPS.
pub fn component(
    store: EventStore,
    key: Option<SecretKey>,
    opts: RouterOptions,
) -> Box<dyn Component> {
    let mut router = Router::new(store, opts);
    if let Some(key) = key {
        router = router.with_key(key);
    }
    Box::new(router)
}

impl Router {
    /// A router over the log in `store`.
    pub fn new(store: EventStore, opts: RouterOptions) -> Self {
        Router {
            store,
            opts,
            routes: Routes::default(),
            key: None,
            domains: None,
            issuer: IssuerHandle::default(),
            certs: Certificates::default(),
        }
    }

    /// Seals and opens the certificate store's private keys with `key`.
    pub fn with_key(mut self, key: SecretKey) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Runs the ACME issuer for the domains `domains` holds (each with its
    /// owning service): a certificate for each, renewed in time, removed
    /// when the domain leaves. Needs HTTPS on.
    pub fn with_domains(mut self, domains: watch::Receiver<Domains>) -> Self {
        self.domains = Some(domains);
        self
    }

    /// The live routing table (for tests and diagnostics).
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Forces renewals out of turn.
    pub fn issuer(&self) -> IssuerHandle {
        self.issuer.clone()
    }

    /// The managed certificates this router serves now.
    pub fn certificates(&self) -> Certificates {
        self.certs.clone()
    }

    /// Binds the configured address and serves until `shutdown`.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), RouterError> {
        let addr = self.opts.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RouterError::Bind { addr, source })?;
        self.run_on(listener, shutdown, ready).await
    }

    /// Catches up with the log, then serves on `listener` until `shutdown`;
    /// `ready` is set once the table reflects the log as of the start.
    pub async fn run_on(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        ready: Option<ReadyFlag>,
    ) -> Result<(), RouterError> {
        let opts = ProjectionOptions {
            filter: Some(self.store.subjects().aggregate_kind("service")),
            snapshot_key: Some(table::SNAPSHOT_KEY.to_owned()),
            ..ProjectionOptions::default()
        };
        let mut runner = ProjectionRunner::new(&self.store, RouteProjection::default(), opts);
        // A log that cannot answer yet is waited for, not ready meanwhile.
        let Some(caught) = runner.catch_up_at_start(&shutdown).await? else {
            return Ok(());
        };
        let state = runner.state();
        if let Ok(mut s) = state.write() {
            s.caught_up_to(caught.applied_seq);
        }
        publish(&state, &self.routes);
        tracing::info!(
            stream.seq = caught.applied_seq,
            services = self.routes.load().len(),
            "routing table caught up"
        );

        // Our own token, so an early return never cancels the caller's.
        let inner = shutdown.child_token();
        let tasks = TaskTracker::new();
        let mut applied = runner.applied();
        let routes = self.routes.clone();
        let stop = inner.clone();
        // Republish after every applied commit (the runner holds the state's
        // write lock for a whole commit, so a table is never half a commit).
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = applied.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                publish(&state, &routes);
            }
        });
        let follow = tasks.spawn(runner.run(inner.clone()));

        if let Some(r) = &ready {
            r.set(true);
        }
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, base_domain = %self.opts.base_domain, "router listening");
        let stats = Arc::new(HttpStats::new(self.opts.workers));
        if let Some(every) = self.opts.metrics_interval {
            // Unique per router process: each publishes its own samples.
            let router = format!(
                "r{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_millis()
            );
            tasks.spawn(stats.clone().publish(
                self.store.client().clone(),
                self.store.subjects().clone(),
                router,
                every,
                inner.clone(),
            ));
        }
        let mut https_side = None;
        let mut tls = None;
        if let Some(https) = self.opts.https.clone() {
            let started = self.start_https(&https, &tasks, &inner).await;
            let (side, acceptor, tls_listener) = match started {
                Ok(Some(started)) => started,
                // Stopped while waiting for the certificate store, or failed.
                stopped_or_failed => {
                    inner.cancel();
                    tasks.close();
                    tasks.wait().await;
                    return stopped_or_failed.map(|_| ());
                }
            };
            https_side = Some(side);
            tls = Some((acceptor, tls_listener));
        }
        // A proxy per worker (its own pool of instance connections), each
        // knowing the HTTPS side for redirects and challenges.
        let routes = self.routes.clone();
        let opts = self.opts.clone();
        let proxy = move || {
            let p = Proxy::new(routes.clone(), opts.clone(), Arc::clone(&stats));
            match &https_side {
                Some(side) => p.with_https(side.clone()),
                None => p,
            }
        };
        serve(listener, tls, &proxy, &self.opts, &shutdown).await;
        if let Some(r) = &ready {
            r.set(false);
        }
        inner.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("router stopped");
        match follow.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Router {
    /// The routing table's custom domains, republished when a new table
    /// changes them.
    fn follow_custom_domains(
        &self,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> watch::Receiver<Domains> {
        let (tx, rx) = watch::channel(self.routes.load().custom_domains());
        let mut swaps = self.routes.swaps();
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = swaps.changed() => if changed.is_err() { break },
                }
                let next = swaps.borrow_and_update().custom_domains();
                tx.send_if_modified(|held| {
                    let changed = *held != next;
                    if changed {
                        *held = next;
                    }
                    changed
                });
            }
        });
        rx
    }

    /// Opens the certificate store, follows it, starts the issuer (for the
    /// domains fed, else the routing table's custom domains), and binds the
    /// HTTPS listener; `None` when `stop` comes while the store waits for
    /// the log.
    async fn start_https(
        &self,
        https: &HttpsOptions,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Option<HttpsStarted>, RouterError> {
        let key = self.key.clone().ok_or(RouterError::NeedsKey)?;
        // Waits, as the routing table does, for a log that cannot answer.
        let opened =
            berth_eventlog::start::until_available(stop, "certificate store not opened", || {
                CertStore::open(&self.store, key.clone())
            });
        let Some(store) = opened.await? else {
            return Ok(None);
        };
        tasks.spawn(store.clone().follow(self.certs.clone(), stop.clone()));
        let challenges = Challenges::default();
        tasks.spawn(
            store
                .clone()
                .follow_challenges(challenges.clone(), stop.clone()),
        );
        // The domains to hold certificates for: as fed, else every custom
        // domain of the routing table, followed as the table changes.
        let domains = match &self.domains {
            Some(d) => d.clone(),
            None => self.follow_custom_domains(tasks, stop),
        };
        let issuer = acme::Issuer::new(
            self.store.clone(),
            store.clone(),
            self.opts.acme.clone(),
            domains,
            self.issuer.clone(),
        );
        tasks.spawn(issuer.run(stop.clone()));
        let config = tls::server_config(tls::Resolver {
            managed: self.certs.clone(),
            operator: https.operator.clone(),
        })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = https.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RouterError::Bind { addr, source })?;
        tracing::info!(addr = %addr, operator_certificate = https.operator.is_some(), "router listening for HTTPS");
        let side = https::HttpsSide {
            hsts: https
                .hsts_max_age
                .and_then(|age| HeaderValue::from_str(&format!("max-age={age}")).ok()),
            opts: https.clone(),
            certs: self.certs.clone(),
            store,
            challenges,
        };
        Ok(Some((side, acceptor, listener)))
    }
}

fn publish(state: &std::sync::RwLock<RouteProjection>, routes: &Routes) {
    let table = match state.write() {
        Ok(mut p) if p.is_dirty() => p.publish(),
        Ok(_) => return,
        Err(_) => {
            tracing::error!("routing state lock poisoned; table not updated");
            return;
        }
    };
    tracing::debug!(
        stream.seq = table.applied_seq,
        services = table.len(),
        "routing table swapped"
    );
    routes.store(table);
}

/// Accepts connections until `shutdown`, then lets open requests finish for
/// up to `drain`. Each of `opts.workers` threads runs an event loop of its
/// own accepting from the same socket (and from the HTTPS socket, when
/// there is one), with its own proxy (and so its own pool of connections to
/// instances): a request and the instance connection serving it stay on one
/// thread, as in nginx's workers, instead of being handed between threads
/// of a shared runtime.
async fn serve(
    listener: TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, TcpListener)>,
    proxy: &impl Fn() -> Proxy,
    opts: &RouterOptions,
    shutdown: &CancellationToken,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "router listener unusable");
            return;
        }
    };
    let tls = match tls.map(|(a, l)| l.into_std().map(|l| (a, l))).transpose() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "router HTTPS listener unusable");
            return;
        }
    };
    let mut done = Vec::new();
    for n in 0..opts.workers {
        let socket = match listener.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, worker = n, "router worker not started");
                continue;
            }
        };
        // The HTTPS socket too, when there is one: served by the same loop.
        let secure = match tls
            .as_ref()
            .map(|(a, l)| l.try_clone().map(|l| (a.clone(), l)))
        {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                tracing::error!(error = %e, worker = n, "router worker not started");
                continue;
            }
            None => None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let proxy = Arc::new(proxy());
        let shutdown = shutdown.clone();
        let drain = opts.drain;
        let timeouts = https::ClientTimeouts {
            header: opts.header_timeout,
            send: opts.send_timeout,
        };
        let started = std::thread::Builder::new()
            .name(format!("router-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, worker = n, "router worker has no runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let plain = match TcpListener::from_std(socket) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, worker = n, "router worker not listening");
                            return;
                        }
                    };
                    let secure = match secure.map(|(a, l)| TcpListener::from_std(l).map(|l| (a, l))) {
                        Some(Ok(t)) => Some(t),
                        Some(Err(e)) => {
                            tracing::error!(error = %e, worker = n, "router worker not listening for HTTPS");
                            return;
                        }
                        None => None,
                    };
                    let plain_side = worker(plain, Arc::clone(&proxy), &shutdown, drain, timeouts);
                    match secure {
                        Some((acceptor, l)) => {
                            tokio::join!(
                                plain_side,
                                https::serve(l, acceptor, proxy, &shutdown, drain, timeouts),
                            );
                        }
                        None => plain_side.await,
                    }
                });
                drop(tx);
            });
        match started {
            Ok(_) => done.push(rx),
            Err(e) => tracing::error!(error = %e, worker = n, "router worker not started"),
        }
    }
    // Each worker drops its sender when it has drained.
    for rx in done {
        let _ = rx.await;
    }
}

/// One worker's accept loop.
async fn worker(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: &CancellationToken,
    drain: std::time::Duration,
    timeouts: https::ClientTimeouts,
) {
    let sweeper = {
        let proxy = Arc::clone(&proxy);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let every = std::time::Duration::from_secs(5);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        proxy.stop_taking();
                        break;
                    }
                    _ = tokio::time::sleep(every) => proxy.sweep(),
                }
            }
        })
    };
    let http = berth_runtime::http1::builder(timeouts.header);
    berth_runtime::http1::accept_until(
        listener,
        shutdown,
        Some(drain),
        "router",
        |stream, addr| {
            let proxy = Arc::clone(&proxy);
            let stop = shutdown.clone();
            let http = http.clone();
            async move {
                let peer = proxy::Peer::from(addr);
                let client = berth_runtime::http1::WriteStall::new(stream, timeouts.send);
                let Some(rest) = h1::serve(
                    &proxy,
                    client,
                    &peer,
                    proxy::Scheme::Http,
                    timeouts.header,
                    &stop,
                )
                .await
                else {
                    return;
                };
                let service = service_fn(move |req| Arc::clone(&proxy).handle(req, peer.clone()));
                berth_runtime::http1::serve_io(&http, rest, service, stop, "router", addr).await;
            }
        },
    )
    .await;
    sweeper.abort();
}

impl Component for Router {
    fn name(&self) -> &'static str {
        "router"
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

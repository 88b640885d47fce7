//! The router's HTTPS side against real clients: curl (HTTP/2 and
//! HTTP/1.1 by ALPN) and a rustls client, with the operator's wildcard
//! certificate (made here with a throwaway CA) and managed certificates
//! put into the real certificate store (a KV bucket on a real nats-server):
//! certificates chosen by SNI and swapped without a restart, the key sealed
//! at rest, `X-Forwarded-Proto: https`, the HTTP → HTTPS redirect once a
//! certificate exists (never for ACME challenges; a service may turn it
//! off), HSTS when set, and a WebSocket-style upgrade over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use berth_eventlog::{EventStore, StoreConfig};
use berth_router::{CertStore, Certificates, Domains, IssuerHandle, Router, RouterArgs, Routes};
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::model::ServiceType;
use berth_tests::pebble::TestCa;
use berth_tests::{NatsServer, NatsVersion};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{run_until_ready, test_args, Backend, Svc};

/// NATS, the store and a router with HTTPS on (its fields through
/// [`Replica`]).
pub struct HttpsEnv {
    _nats: NatsServer,
    pub store: EventStore,
    /// The router's certificate store, opened on its own (to look at).
    pub cert_store: CertStore,
    key: SecretKey,
    router: Replica,
}

impl std::ops::Deref for HttpsEnv {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.router
    }
}

impl HttpsEnv {
    /// A router on `http_port` (0: any) with `args` (the HTTPS address is
    /// chosen here), its issuer fed from [`HttpsEnv::domains`], `acme`
    /// adjusting the issuer's timing.
    pub async fn start(
        args: RouterArgs,
        http_port: u16,
        acme: impl FnOnce(&mut berth_router::AcmeOptions),
    ) -> Result<HttpsEnv> {
        Self::start_full(args, http_port, acme, true).await
    }

    /// A router with HTTPS whose issuer follows the routing table, as in
    /// production: with no custom domain in the table, certificates come
    /// only from what the test puts in the store.
    pub async fn without_issuer(args: RouterArgs) -> Result<HttpsEnv> {
        Self::start_full(args, 0, |_| {}, false).await
    }

    /// A router on `http_port` whose issuer follows the routing table's
    /// custom domains (nothing fed by the test).
    pub async fn following_the_table(
        args: RouterArgs,
        http_port: u16,
        acme: impl FnOnce(&mut berth_router::AcmeOptions),
    ) -> Result<HttpsEnv> {
        Self::start_full(args, http_port, acme, false).await
    }

    async fn start_full(
        args: RouterArgs,
        http_port: u16,
        acme: impl FnOnce(&mut berth_router::AcmeOptions),
        issuer: bool,
    ) -> Result<HttpsEnv> {
        berth_tests::init_tracing();
        let nats = NatsServer::start(NatsVersion::Modern)?;
        let store = EventStore::open(
            nats.connect().await?,
            berth_tests::unique_subjects(),
            StoreConfig::default(),
        )
        .await?;
        let key = SecretKey::from_base64(&SecretKey::generate_base64())?;
        let r = spawn(&store, &key, args, http_port, acme, issuer).await?;
        let cert_store = CertStore::open(&store, Arc::new(key.clone())).await?;
        Ok(HttpsEnv {
            _nats: nats,
            store,
            cert_store,
            key,
            router: r,
        })
    }

    /// Another router replica on the same log and certificate store, its
    /// issuer fed from its own [`Replica::domains`].
    pub async fn replica(
        &self,
        args: RouterArgs,
        acme: impl FnOnce(&mut berth_router::AcmeOptions),
    ) -> Result<Replica> {
        spawn(&self.store, &self.key, args, 0, acme, true).await
    }

    /// Waits until the router's table reflects the whole log.
    pub async fn synced(&self) -> Result<()> {
        let seq = self.store.last_stream_seq().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.routes.load().applied_seq < seq {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "router behind");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// One running router.
pub struct Replica {
    pub routes: Routes,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub certs: Certificates,
    pub issuer: IssuerHandle,
    pub domains: watch::Sender<Domains>,
    shutdown: CancellationToken,
    _task: JoinHandle<()>,
}

impl Replica {
    /// Waits until the router serves a managed certificate for `domain`
    /// whose serial is not `old`; returns its serial.
    pub async fn served_cert(
        &self,
        domain: &str,
        old: Option<&str>,
        within: Duration,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(held) = self.certs.load().get(domain) {
                if Some(held.facts.serial.as_str()) != old {
                    return Ok(held.facts.serial.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no new certificate for {domain} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a router with HTTPS on `store` (its plain HTTP on `http_port`,
/// 0: any) and waits until it serves.
async fn spawn(
    store: &EventStore,
    key: &SecretKey,
    mut args: RouterArgs,
    http_port: u16,
    acme: impl FnOnce(&mut berth_router::AcmeOptions),
    issuer: bool,
) -> Result<Replica> {
    let listener = TcpListener::bind(("127.0.0.1", http_port)).await?;
    let http = listener.local_addr()?;
    let https: SocketAddr = format!("127.0.0.1:{}", berth_tests::free_port()).parse()?;
    args.router_https_addr = Some(https.to_string());
    let mut opts = args.validate().map_err(|p| anyhow!("{p:?}"))?;
    acme(&mut opts.acme);
    let (domains, feed) = watch::channel(Domains::new());
    let mut router = Router::new(store.clone(), opts).with_key(key.clone());
    if issuer {
        router = router.with_domains(feed);
    }
    let routes = router.routes();
    let certs = router.certificates();
    let issuer = router.issuer();
    let (shutdown, task) = run_until_ready(router, listener, Some(https)).await?;
    Ok(Replica {
        routes,
        http,
        https,
        certs,
        issuer,
        domains,
        shutdown,
        _task: task,
    })
}

/// What curl said: exit success, stdout, stderr.
pub async fn curl(args: &[String]) -> Result<(bool, String, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .context("running curl")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `curl --resolve host:port:127.0.0.1 --cacert ca <extra> https://host:port<path>`.
pub async fn curl_https(
    host: &str,
    port: u16,
    ca: &std::path::Path,
    path: &str,
    extra: &[&str],
) -> Result<(bool, String, String)> {
    let mut args = vec![
        "--resolve".to_owned(),
        format!("{host}:{port}:127.0.0.1"),
        "--cacert".to_owned(),
        ca.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("https://{host}:{port}{path}"));
    curl(&args).await
}

/// A plain HTTP GET of `path` on `host` at the router: status line and
/// headers, and body.
pub async fn http_get(router: SocketAddr, host: &str, path: &str) -> Result<(String, String)> {
    let (ok, out, err) = curl(&[
        "-i".to_owned(),
        "-H".to_owned(),
        format!("Host: {host}"),
        format!("http://{router}{path}"),
    ])
    .await?;
    anyhow::ensure!(ok, "curl: {err}");
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no head in {out}"))?;
    Ok((head.to_ascii_lowercase(), body.to_owned()))
}

/// A TLS connection to the router as `sni`, trusting `root_pem`, offering
/// `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    Ok(connector
        .connect(ServerName::try_from(sni.to_owned())?, tcp)
        .await?)
}

/// The serial (hex) of the certificate the router presents for `sni`.
pub async fn presented_serial(addr: SocketAddr, sni: &str, root_pem: &str) -> Result<String> {
    let tls = tls_connect(addr, sni, root_pem, &[b"http/1.1"]).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no certificate presented")?;
    let facts = berth_router::tls::leaf_facts(leaf).context("unreadable leaf")?;
    Ok(facts.serial)
}

/// Base domain of these tests: the operator's wildcard covers it.
const BASE: &str = "apps.test";

fn write_pair(
    dir: &std::path::Path,
    name: &str,
    pair: &(String, String),
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pair.0)?;
    std::fs::write(&key, &pair.1)?;
    Ok((cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_wildcard_serves_default_hosts_over_http2_and_http1() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let (cert, key) = write_pair(dir.path(), "wildcard", &ca.leaf(&[&format!("*.{BASE}")])?)?;
    let args = RouterArgs {
        router_base_domain: BASE.to_owned(),
        router_tls_cert: Some(cert),
        router_tls_key: Some(key),
        router_hsts_max_age: 31_536_000,
        ..test_args()
    };
    let env = HttpsEnv::without_issuer(args).await?;
    let backend = Backend::start("v1", 1).await?;
    let mut svc = Svc::create(&env.store, "web", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    env.synced().await?;
    let host = format!("web.{BASE}");
    let port = env.https.port();

    // HTTP/2 by ALPN, to the instance, which learns the request was HTTPS.
    let (ok, out, err) = curl_https(
        &host,
        port,
        &ca_file,
        "/echo",
        &["--http2", "-D", "-", "-w", "\nversion=%{http_version}"],
    )
    .await?;
    assert!(ok, "curl over HTTP/2 failed: {err}");
    assert!(out.ends_with("version=2"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-forwarded-proto: https"), "{out}");
    assert!(
        lower.contains(&format!("host: {host}:{port}")),
        "the instance got no Host: {out}"
    );
    assert!(
        lower.contains("strict-transport-security: max-age=31536000"),
        "no HSTS header: {out}"
    );

    // HTTP/1.1 when the client offers only that.
    let (ok, out, err) = curl_https(
        &host,
        port,
        &ca_file,
        "/",
        &["--http1.1", "-w", "\nversion=%{http_version}"],
    )
    .await?;
    assert!(ok, "{err}");
    assert_eq!(out, "v1 1\nversion=1.1");

    // A request body streams through HTTP/2 to the instance.
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![7u8; 3 << 20])?;
    let (ok, out, err) = curl_https(
        &host,
        port,
        &ca_file,
        "/upload",
        &[
            "--http2",
            "--data-binary",
            &format!("@{}", upload.display()),
        ],
    )
    .await?;
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}", 3 << 20));

    // Plain HTTP to a host the certificate covers goes to HTTPS, path,
    // query and the listener's port kept; GET gets 301, POST 308.
    let (head, _) = http_get(env.http, &host, "/a/b?c=d").await?;
    assert!(head.starts_with("http/1.1 301"), "{head}");
    assert!(
        head.contains(&format!("location: https://{host}:{port}/a/b?c=d")),
        "{head}"
    );
    let (ok, out, _) = curl(&[
        "-i".to_owned(),
        "-X".to_owned(),
        "POST".to_owned(),
        "-H".to_owned(),
        format!("Host: {host}"),
        format!("http://{}/form", env.http),
    ])
    .await?;
    assert!(ok && out.starts_with("HTTP/1.1 308"), "{out}");
    // ACME challenges are never redirected (an unknown token: 404).
    let (head, _) = http_get(env.http, &host, "/.well-known/acme-challenge/nothing-here").await?;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    // A host no certificate covers stays on plain HTTP.
    let (head, _) = http_get(env.http, "web.other.test", "/").await?;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // The service turns its redirect off: plain HTTP is served as asked,
    // HTTPS still serves, without HSTS; turned on again, it redirects.
    let redirect = |on: bool| berth_domain::service::Command::Update {
        settings: Box::new(berth_schemas::events::ServiceSettings {
            https_redirect: Some(on),
            ..Default::default()
        }),
        deploy: berth_schemas::ids::DeployId::generate(),
    };
    svc.cmd(redirect(false)).await?;
    env.synced().await?;
    let (head, body) = http_get(env.http, &host, "/a/b?c=d").await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "v1 1");
    let (ok, out, err) = curl_https(&host, port, &ca_file, "/echo", &["-D", "-"]).await?;
    assert!(ok, "{err}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-forwarded-proto: https"), "{out}");
    assert!(!lower.contains("strict-transport-security"), "{out}");
    svc.cmd(redirect(true)).await?;
    env.synced().await?;
    let (head, _) = http_get(env.http, &host, "/").await?;
    assert!(head.starts_with("http/1.1 301"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_certificates_are_chosen_by_sni_sealed_at_rest_and_swapped_live() -> Result<()> {
    let ca = TestCa::new()?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    // No operator certificate: default hosts stay plain HTTP.
    let args = RouterArgs {
        router_base_domain: BASE.to_owned(),
        ..test_args()
    };
    let env = HttpsEnv::without_issuer(args).await?;
    let backend = Backend::start("v1", 1).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    env.synced().await?;
    let host = format!("shop.{BASE}");

    // Before any certificate: served on plain HTTP, no redirect, and no
    // TLS handshake succeeds for the name.
    let (head, body) = http_get(env.http, &host, "/").await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "v1 1");
    assert!(presented_serial(env.https, &host, &ca.pem()).await.is_err());

    let (chain, key) = ca.leaf(&[&host])?;
    let first = leaf_serial(&chain)?;
    let not_after = chrono::Utc::now() + chrono::Duration::days(30);
    env.cert_store
        .put_cert(
            &host,
            &chain,
            &Secret::new(key.clone()),
            Some(svc.id.clone()),
            not_after,
        )
        .await?;
    assert_eq!(
        env.served_cert(&host, None, Duration::from_secs(10))
            .await?,
        first
    );
    assert_eq!(presented_serial(env.https, &host, &ca.pem()).await?, first);
    let (ok, out, err) = curl_https(&host, env.https.port(), &ca_file, "/", &[]).await?;
    assert!(ok, "{err}");
    assert_eq!(out, "v1 1");
    // Now plain HTTP redirects.
    let (head, _) = http_get(env.http, &host, "/").await?;
    assert!(head.starts_with("http/1.1 301"), "{head}");

    // At rest the key is sealed: no PEM, no key bytes.
    let raw = env.cert_store.raw_cert(&host).await?.context("stored")?;
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("PRIVATE KEY"), "key in clear at rest");
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!raw.contains(&key_body[..40]), "key bytes at rest");

    // A new certificate in the store is served without a restart.
    let (chain2, key2) = ca.leaf(&[&host])?;
    let second = leaf_serial(&chain2)?;
    env.cert_store
        .put_cert(
            &host,
            &chain2,
            &Secret::new(key2),
            Some(svc.id.clone()),
            not_after,
        )
        .await?;
    env.served_cert(&host, Some(&first), Duration::from_secs(10))
        .await?;
    assert_eq!(presented_serial(env.https, &host, &ca.pem()).await?, second);

    // Removed: no longer served, plain HTTP again.
    env.cert_store.remove_cert(&host).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.certs.load().contains_key(&host) {
        assert!(tokio::time::Instant::now() < deadline, "still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (head, _) = http_get(env.http, &host, "/").await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_joined_through_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    let (cert, key) = write_pair(dir.path(), "wildcard", &ca.leaf(&[&format!("*.{BASE}")])?)?;
    let args = RouterArgs {
        router_base_domain: BASE.to_owned(),
        router_tls_cert: Some(cert),
        router_tls_key: Some(key),
        ..test_args()
    };
    let env = HttpsEnv::without_issuer(args).await?;
    let (instance, _heads) = crate::streams::echo_instance().await;
    let mut svc = Svc::create(&env.store, "ws", ServiceType::WebService).await?;
    svc.first_deploy(1, &[instance]).await?;
    env.synced().await?;
    let host = format!("ws.{BASE}");
    let tls = tls_connect(env.https, &host, &ca.pem(), &[b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut client = BufReader::new(tls);
    client
        .get_mut()
        .write_all(
            format!("GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    // TLS writes are buffered until flushed.
    client.get_mut().flush().await?;
    let answer = crate::streams::head(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    for i in 0..3 {
        let msg = format!("over tls {i}\n");
        client.get_mut().write_all(msg.as_bytes()).await?;
        client.get_mut().flush().await?;
        let mut back = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut back)).await??;
        assert_eq!(back, msg);
    }
    Ok(())
}

/// The serial of the first certificate in `chain_pem`.
pub fn leaf_serial(chain_pem: &str) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .context("no certificate")??;
    Ok(berth_router::tls::leaf_facts(&leaf)
        .context("unreadable")?
        .serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_answers_come_from_memory_and_store_lookups_for_unknown_tokens_are_bounded(
) -> Result<()> {
    use berth_router::challenges::{Answer, Challenges};

    let env = HttpsEnv::without_issuer(test_args()).await?;
    let store = &env.cert_store;
    // Through the router: a stored answer is served, a removed one is 404.
    store.put_challenge("tok-a", "tok-a.thumb").await?;
    let (head, body) = http_get(
        env.http,
        "any.host.test",
        "/.well-known/acme-challenge/tok-a",
    )
    .await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "tok-a.thumb");

    // A replica's memory follows the store: puts arrive, removals leave.
    let held = Challenges::default();
    let stop = CancellationToken::new();
    let follow = tokio::spawn(store.clone().follow_challenges(held.clone(), stop.clone()));
    let until = |want: Option<&'static str>, token: &'static str| {
        let held = held.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while held.held(token).as_deref() != want {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{token} not {want:?} in memory"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        }
    };
    until(Some("tok-a.thumb"), "tok-a").await?;
    store.put_challenge("tok-b", "tok-b.thumb").await?;
    until(Some("tok-b.thumb"), "tok-b").await?;
    store.remove_challenge("tok-a").await?;
    until(None, "tok-a").await?;
    assert_eq!(held.len(), 1);

    // With every store lookup taken, a held token is still answered and an
    // unknown one is not looked up: "unavailable", not a store round trip.
    {
        let _busy = held.occupy_lookups().context("lookups free")?;
        assert_eq!(
            held.answer(store, "tok-b").await,
            Answer::Found("tok-b.thumb".to_owned())
        );
        assert_eq!(held.answer(store, "made-up").await, Answer::Unavailable);
    }
    // Free again: a token not (yet) in memory is looked up in the store.
    let cold = Challenges::default();
    assert_eq!(
        cold.answer(store, "tok-b").await,
        Answer::Found("tok-b.thumb".to_owned())
    );
    assert_eq!(cold.answer(store, "made-up").await, Answer::Unknown);
    let (head, _) = http_get(
        env.http,
        "any.host.test",
        "/.well-known/acme-challenge/tok-a",
    )
    .await?;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    stop.cancel();
    follow.await?;
    Ok(())
}

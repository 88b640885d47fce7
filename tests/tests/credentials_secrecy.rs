//! SPEC §3: a registry token never appears in clear — not in logs (captured
//! here at TRACE, every crate), not in the event stream's bytes (payloads
//! and headers of every message), not on the bus at all (every core NATS
//! message the test's server carries, including image check requests and
//! replies), and not in what the application layer returns (credential
//! list/show, errors). The flows exercised: basic auth, the bearer-token
//! challenge flow, creation checks, deploy resolution, the node opening the
//! token to pull (and run) each image, a rotation to a wrong token and the
//! failures it causes, the node's pull with it included.
//!
//! The same holds for the API's secrets on the HTTP path: an API key in
//! the `Authorization` header and a deploy hook key in the URL (and a
//! wrong one of each, offered and refused) are never logged, stored or
//! published, through the real listener and router.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_domain::credential::CredentialState;
use berth_domain::node::NodeState;
use berth_ingress::{IngressOptions, NewService, Rotation};
use berth_node::{Node, NodeChecks};
use berth_runtime::node_key::{ForNode, NodePublicKey};
use berth_runtime::Secret;
use berth_schemas::commands::{NodeRunSpec, NodeWork};
use berth_schemas::ids::{CredentialId, DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::model::{DeployStatus, OverlapPolicy, Sealed, ServiceType};
use berth_schemas::{Actor, AggregateId, Envelope, Subjects};
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::resolver::{contains, fast_options, App};
use berth_tests::NatsVersion;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use berth_tests::Captured;

fn random_token(tag: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("tok{tag}{n:032x}")
}

/// The secret with its last character changed: the same shape, refused.
fn altered(secret: &str) -> String {
    let mut s = secret.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == 'a' { 'b' } else { 'a' });
    s
}

/// One HTTP/1.1 request on a connection of its own; the status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: api\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The API component's listener and router on this installation's log.
async fn start_api(app: &App) -> (berth_api::AppState, SocketAddr) {
    let state = berth_api::AppState::start(
        app.store.clone(),
        app.key.clone(),
        IngressOptions {
            check_timeout: Duration::from_secs(10),
            ..IngressOptions::default()
        },
        app.shutdown.clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(berth_api::serve(
        listener,
        state.clone(),
        app.shutdown.clone(),
        Duration::from_secs(10),
    ));
    (state, addr)
}

/// The node component (real runc) on this installation's log.
struct TestNode {
    id: NodeId,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), berth_node::NodeError>>>,
    runc_root: PathBuf,
    /// Dropped before `dir`: it removes what of the network is left,
    /// reading the node's network state in `dir`.
    _subnet: berth_tests::net::SubnetLease,
    dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(app: &App) -> TestNode {
        berth_tests::agent::require_root_and_runc();
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let mut subnet = berth_tests::net::lease_subnet();
        subnet.net_dir = Some(node_dir.join("agent").join("net"));
        let opts = berth_tests::node::test_options("secrecy-node", 2000, 2048);
        let id = berth_node::load_or_create_id(&node_dir).unwrap();
        let node = Node::new(app.store.clone(), opts).with_checks(NodeChecks {
            subnet: subnet.parsed(),
            ports: berth_tests::node_ports(),
            ..NodeChecks::default()
        });
        let stop = CancellationToken::new();
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(node.serve(
            app.store.client().clone(),
            node_dir.clone(),
            stop.clone(),
            move |r| {
                let _ = ready_tx.send(r);
            },
        ));
        tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|r| *r))
            .await
            .expect("node ready within 20 s")
            .unwrap();
        TestNode {
            id,
            stop,
            task: Some(task),
            runc_root: node_dir.join("agent").join("runc"),
            _subnet: subnet,
            dir,
        }
    }

    /// Enqueues `work` as the scheduler would: a run's registry login
    /// sealed to this node's key (with the credential's token as it is now).
    async fn enqueue(&self, app: &App, service: &ServiceId, work: &NodeWork, key: &str) {
        let mut work = work.clone();
        if let NodeWork::RunInstance(spec) = &mut work {
            if let Some(cred) = spec.credential.clone() {
                spec.login = Some(self.seal_login(app, spec, &cred).await);
            }
        }
        let work = &work;
        app.store
            .enqueue(
                &Subjects::node_queue(&self.id),
                service.as_str(),
                rmp_serde::to_vec_named(work).unwrap().into(),
                key,
            )
            .await
            .unwrap();
    }

    async fn seal_login(&self, app: &App, spec: &NodeRunSpec, cred: &CredentialId) -> Sealed {
        let node = app
            .events_of(&AggregateId::Node(self.id.clone()))
            .await
            .iter()
            .fold(NodeState::default(), berth_domain::node::fold);
        let to = NodePublicKey::from_base64(&node.public_key.expect("the node registered a key"))
            .unwrap();
        let state = app
            .events_of(&AggregateId::Credential(cred.clone()))
            .await
            .iter()
            .fold(CredentialState::default(), berth_domain::credential::fold);
        let c = state.active().expect("the credential exists");
        ForNode {
            key: &app.key,
            node: &self.id,
            to: &to,
        }
        .seal_login(&spec.service, &spec.instance, cred, &c.username, &c.token)
        .unwrap()
    }

    /// Runs `spec` until it has started, then stops it.
    async fn run_and_stop(&self, app: &App, spec: &NodeRunSpec) {
        let work = NodeWork::RunInstance(spec.clone());
        self.enqueue(app, &spec.service, &work, spec.instance.as_str())
            .await;
        wait_for(app, &spec.service, "instance_started").await;
        let stop = NodeWork::StopInstance {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
        };
        let key = format!("stop-{}", spec.instance);
        self.enqueue(app, &spec.service, &stop, &key).await;
        wait_for(app, &spec.service, "instance_stopped").await;
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("node stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
        berth_tests::runc::remove_leftovers(&self.runc_root, self.dir.path());
    }
}

/// What the node runs for `deploy` of `service`: the image on `reg`,
/// pulled with `cred`.
fn run_spec(
    service: &ServiceId,
    deploy: &DeployId,
    reg: &Registry,
    digest: &str,
    cred: &CredentialId,
) -> NodeRunSpec {
    NodeRunSpec {
        service: service.clone(),
        deploy: deploy.clone(),
        instance: InstanceId::generate(),
        image: format!("{}/team/app", reg.host),
        digest: digest.to_owned(),
        credential: Some(cred.clone()),
        login: None,
        env: Default::default(),
        files: Default::default(),
        command: Some("sleep 60".into()),
        port: None,
        plan: None,
        shutdown_delay_secs: 1,
        disk_restore: None,
    }
}

/// The service's events once one of `type_name` is among them.
async fn wait_for(app: &App, service: &ServiceId, type_name: &str) -> Vec<Envelope> {
    let t0 = Instant::now();
    loop {
        let events = app.events_of(&AggregateId::Service(service.clone())).await;
        if events.iter().any(|e| e.event.type_name() == type_name) {
            return events;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no {type_name} for {service}: {:?}",
            events
                .iter()
                .map(|e| e.event.type_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Captures every log line at TRACE with a global subscriber, so it runs in
/// a process of its own.
#[test]
fn tokens_never_appear_in_logs_the_log_the_bus_or_api_output() {
    berth_tests::run_alone("credentials_secrecy::secrecy_child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by tokens_never_appear_in_logs_the_log_the_bus_or_api_output in its own process"]
async fn secrecy_child() {
    assert!(berth_tests::is_alone(), "needs a process of its own");
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let basic_token = random_token("basic");
    let bearer_token = random_token("bearer");
    let wrong_token = random_token("wrong");
    let basic = Registry::start(RegistryAuth::Htpasswd {
        user: "ci".into(),
        pass: basic_token.clone(),
    })
    .await
    .unwrap();
    let bearer = Registry::start(RegistryAuth::Token {
        user: "bot".into(),
        pass: bearer_token.clone(),
    })
    .await
    .unwrap();
    // An image the node can run.
    let img = berth_tests::agent::busybox_image(berth_tests::agent::default_config());
    basic.push_image("team/app", "v1", &img).await.unwrap();
    bearer.push_image("team/app", "v1", &img).await.unwrap();

    let mut resolver = fast_options();
    for c in [&mut resolver.deploy_client, &mut resolver.check_client] {
        c.max_image_size = 64 << 20;
    }
    let app = App::start_with(NatsVersion::Modern, Some(resolver)).await;
    // Everything on the bus, from the moment the installation exists.
    let mut bus = app.store.client().subscribe(">").await.unwrap();
    let bus_bytes = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&bus_bytes);
    let tap = tokio::spawn(async move {
        while let Some(m) = bus.next().await {
            let mut b = sink.lock().unwrap();
            b.extend_from_slice(&m.payload);
            if let Some(h) = &m.headers {
                for (k, vs) in h.iter() {
                    b.extend_from_slice(k.to_string().as_bytes());
                    for v in vs {
                        b.extend_from_slice(v.as_str().as_bytes());
                    }
                }
            }
        }
    });
    app.store.client().flush().await.unwrap();

    let alice = app.owner().await;
    let basic_cred = app
        .credential(&alice, &basic.host, "ci", &basic_token)
        .await;
    let bearer_cred = app
        .credential(&alice, &bearer.host, "bot", &bearer_token)
        .await;

    let mut outputs = String::new();
    let mut ids = Vec::new();
    let mut deploys = Vec::new();
    for (name, reg, cred) in [("b", &basic, &basic_cred), ("t", &bearer, &bearer_cred)] {
        let mut s = NewService::new(
            name,
            ServiceType::BackgroundWorker,
            &format!("{}/team/app:v1", reg.host),
        );
        s.credential = Some(cred.clone());
        s.overlap_policy = Some(OverlapPolicy::Cancel);
        let created = app.ingress.create_service(&alice, s).await.unwrap();
        let state = app.await_deploy(&alice, &created.id, &created.deploy).await;
        assert_eq!(
            state.deploy(&created.deploy).unwrap().digest(),
            Some(img.digest.as_str())
        );
        outputs.push_str(&format!("{created:?}{state:?}"));
        ids.push(created.id);
        deploys.push(created.deploy);
    }

    // The node opens each token from the log to pull, and runs the image.
    let node = TestNode::start(&app).await;
    for (i, (reg, cred)) in [(&basic, &basic_cred), (&bearer, &bearer_cred)]
        .into_iter()
        .enumerate()
    {
        let spec = run_spec(&ids[i], &deploys[i], reg, &img.digest, cred);
        node.run_and_stop(&app, &spec).await;
    }

    // The API over HTTP: an API key in the header, the hook key in the URL;
    // a wrong one of each refused.
    let (api, addr) = start_api(&app).await;
    let (_, api_key) = api
        .ingress
        .create_api_key(&alice.owner, "ci", &Actor::system("test"))
        .await
        .unwrap();
    let api_key = api_key.expose().to_owned();
    let wrong_api_key = altered(&api_key);
    let (status, body) = http(addr, "GET", "/v1/services", Some(&wrong_api_key)).await;
    assert_eq!(status, 401, "{body}");
    outputs.push_str(&body);
    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/services/{}/deploy-hook", ids[0]),
        Some(&api_key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = serde_json::from_str::<serde_json::Value>(&body).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let hook_key = url.split_once("key=").unwrap().1.to_owned();
    let wrong_hook_key = altered(&hook_key);
    let (status, body) = http(addr, "POST", &url, None).await;
    assert_eq!(status, 200, "{body}");
    outputs.push_str(&body);
    let hooked: DeployId = serde_json::from_str::<serde_json::Value>(&body).unwrap()["deploy"]
        ["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    app.await_deploy(&alice, &ids[0], &hooked).await;
    let (status, body) = http(
        addr,
        "GET",
        &format!("/deploy/{}?key={wrong_hook_key}", ids[0]),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    outputs.push_str(&body);

    // Rotate to a wrong token: the creation check and the deploy both fail,
    // and their messages must not carry the token either.
    let rotated = app
        .ingress
        .rotate_credential(
            &alice,
            &basic_cred,
            Rotation {
                token: Secret::new(wrong_token.clone()),
                username: None,
                name: None,
            },
        )
        .await
        .unwrap();
    let mut s = NewService::new(
        "c",
        ServiceType::BackgroundWorker,
        &format!("{}/team/app:v1", basic.host),
    );
    s.credential = Some(basic_cred.clone());
    let err = app.ingress.create_service(&alice, s).await.unwrap_err();
    outputs.push_str(&format!("{err:?}{err}"));
    let deploy = app
        .ingress
        .request_deploy(&alice, &ids[0], None)
        .await
        .unwrap();
    let state = app.await_deploy(&alice, &ids[0], &deploy).await;
    assert_eq!(
        state.deploy(&deploy).unwrap().status,
        DeployStatus::UpdateFailed
    );
    outputs.push_str(&format!("{state:?}"));

    // The node's pull with the wrong token: refused by the registry, and
    // recorded without it (the image of the other service, still running).
    let spec = run_spec(&ids[1], &deploys[1], &basic, &img.digest, &basic_cred);
    let key = spec.instance.to_string();
    node.enqueue(&app, &ids[1], &NodeWork::RunInstance(spec), &key)
        .await;
    let events = wait_for(&app, &ids[1], "image_pull_failed").await;
    outputs.push_str(&format!("{events:?}"));
    node.stop().await;

    let list = app.ingress.list_credentials(&alice).await.unwrap();
    assert_eq!(list.len(), 2);
    outputs.push_str(&format!("{list:?}{rotated:?}"));
    outputs.push_str(&serde_json::to_string(&list).unwrap());
    for id in [&basic_cred, &bearer_cred] {
        let shown = app.ingress.show_credential(&alice, id).await.unwrap();
        outputs.push_str(&format!("{shown:?}"));
        outputs.push_str(&serde_json::to_string(&shown).unwrap());
    }

    let mut log_bytes = Vec::new();
    for (_, payload, headers) in app.raw_log().await {
        log_bytes.extend_from_slice(&payload);
        log_bytes.extend_from_slice(&headers);
    }
    app.store.client().flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tap.abort();
    let bus_bytes = bus_bytes.lock().unwrap().clone();
    let captured = logs.bytes();

    // The captures really hold what happened (so an empty capture cannot pass).
    assert!(
        contains(&captured, "image resolved"),
        "log capture is empty?"
    );
    assert!(contains(&captured, "TRACE"), "not capturing at TRACE");
    // The node's pulls, the hook call and the refused API key were logged.
    assert!(contains(&captured, "downloaded_blobs"), "no pull logged");
    assert!(
        contains(&captured, "image pull failed"),
        "no failed pull logged"
    );
    assert!(
        contains(&captured, "deploy hook called"),
        "no hook call logged"
    );
    assert!(contains(&log_bytes, "credential_rotated"));
    assert!(contains(&bus_bytes, "resolver.check") || contains(&bus_bytes, "credential_created"));
    assert!(outputs.contains(basic_cred.as_str()));

    let b64 = |user: &str, token: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    };
    for (what, secret) in [
        ("the basic token", basic_token.clone()),
        ("the bearer token", bearer_token.clone()),
        ("the wrong token", wrong_token.clone()),
        ("the basic login", b64("ci", &basic_token)),
        ("the bearer login", b64("bot", &bearer_token)),
        ("the wrong login", b64("ci", &wrong_token)),
        ("the API key", api_key.clone()),
        ("the refused API key", wrong_api_key.clone()),
        ("the hook key", hook_key.clone()),
        ("the refused hook key", wrong_hook_key.clone()),
    ] {
        assert!(!contains(&captured, &secret), "{what} is in the logs");
        assert!(
            !contains(&log_bytes, &secret),
            "{what} is in the event stream"
        );
        assert!(!contains(&bus_bytes, &secret), "{what} is on the bus");
        assert!(!outputs.contains(&secret), "{what} is in API output");
    }
}

//! Operations interrupted by a crash between their steps: the real `berth
//! run api` is aborted at a failpoint (`BERTH_FAILPOINT`) after each step of
//! service creation, deletion, rename, credential change and the adding and
//! removing of a custom domain, started again without it, and the log must
//! converge: no name or custom domain held and no credential attached
//! without a service that uses it, and no service using a name, domain or
//! credential it does not hold. The operation can then be retried, the name
//! or domain reused, the credential removed.
//!
//! Each test has its own nats-server, registry (anonymous, serving
//! `team/app:v1`), an in-process resolver for create's image check, and a
//! 1 s repair grace period. Needs no root.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_domain::credential::{self, CredentialState};
use berth_domain::custom_domain::{self, DomainClaimState};
use berth_domain::owner::{self, OwnerState};
use berth_domain::service::{self, ServiceState};
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::SecretKey;
use berth_schemas::ids::{CredentialId, OwnerId, ServiceId};
use berth_schemas::{AggregateId, Commit, Envelope, Event, Subjects};
use berth_tests::free_port;
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::{NatsServer, NatsVersion};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// One installation whose API process the test crashes and restarts.
struct Installation {
    store: EventStore,
    registry: Registry,
    http: reqwest::Client,
    data: PathBuf,
    prefix: String,
    nats_url: String,
    secret_key: String,
    api_port: u16,
    api: Option<Child>,
    api_key: String,
    resolver_stop: CancellationToken,
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

impl Drop for Installation {
    fn drop(&mut self) {
        self.resolver_stop.cancel();
    }
}

impl Installation {
    async fn start() -> Self {
        let nats = NatsServer::start(NatsVersion::Modern).unwrap();
        let prefix = berth_tests::unique_prefix();
        let client = nats.connect().await.unwrap();
        let store = EventStore::open(
            client,
            Subjects::new(&prefix).unwrap(),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let registry = Registry::start(RegistryAuth::None).await.unwrap();
        let img = berth_tests::image::small_image("amd64").unwrap();
        registry.push_image("team/app", "v1", &img).await.unwrap();
        let secret_key = SecretKey::generate_base64();
        let key = SecretKey::from_base64(&secret_key).unwrap();
        let resolver = berth_resolver::Resolver::new(
            store.clone(),
            key,
            berth_resolver::ResolverOptions::default(),
        )
        .unwrap();
        let resolver_stop = CancellationToken::new();
        let ready = berth_runtime::ReadyFlag::default();
        let (stop, r) = (resolver_stop.clone(), ready.clone());
        tokio::spawn(async move {
            let _ = resolver.run(stop, Some(r)).await;
        });
        let t0 = Instant::now();
        while !ready.get() {
            assert!(t0.elapsed() < Duration::from_secs(10), "resolver not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut me = Self {
            store,
            registry,
            http: http_client(),
            data: dir.path().join("data"),
            prefix,
            nats_url: nats.url(),
            secret_key,
            api_port: free_port(),
            api: None,
            api_key: String::new(),
            resolver_stop,
            _nats: nats,
            _dir: dir,
        };
        me.start_api(None).await;
        let creds: Value =
            serde_json::from_slice(&std::fs::read(me.data.join("credentials.json")).unwrap())
                .unwrap();
        me.api_key = creds["apiKey"].as_str().unwrap().to_owned();
        me
    }

    /// (Re)starts `berth run api`, crashing at `failpoint` if given; the
    /// running one, if any, is killed first.
    async fn start_api(&mut self, failpoint: Option<&str>) {
        if let Some(mut old) = self.api.take() {
            let _ = old.kill().await;
        }
        // No core file from the abort, wherever this runs.
        let mut c = Command::new("sh");
        c.args(["-c", "ulimit -c 0; exec \"$0\" run api", BERTH])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BERTH_DATA_DIR", &self.data)
            // Where it records itself for the CLI: the test's own.
            .env(
                "XDG_RUNTIME_DIR",
                crate::cli_support::runtime_dir(&self.data),
            )
            .env("BERTH_NATS_URL", &self.nats_url)
            .env("BERTH_SUBJECT_PREFIX", &self.prefix)
            .env("BERTH_SECRET_KEY", &self.secret_key)
            .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
            .env("BERTH_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            .env("BERTH_API_REPAIR_GRACE_SECS", "1")
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(f) = failpoint {
            c.env("BERTH_FAILPOINT", f);
        }
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.api_port))
            .await
            .is_err()
        {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("berth run api exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "the API did not listen in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.api = Some(child);
    }

    /// Waits for the API to abort at its failpoint.
    async fn crashed(&mut self) {
        let mut child = self.api.take().expect("an API running");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the API did not crash")
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "the API ended otherwise than at its failpoint: {status}"
        );
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}{path}", self.api_port);
        let timeout = Duration::from_secs(30);
        berth_tests::api::call(
            &self.http,
            &url,
            &self.api_key,
            method,
            body.as_ref(),
            timeout,
        )
        .await
    }

    /// One request that must be answered.
    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let what = format!("{method} {path}");
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// One request during which the API crashes: no answer.
    async fn crashing(&mut self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let what = format!("{method} {path}");
        if let Ok(answer) = self.call(method, path, body).await {
            panic!("{what} was answered {answer:?} instead of crashing the API");
        }
        self.crashed().await;
    }

    async fn credential(&self, name: &str) -> String {
        let (s, v) = self
            .ok(
                reqwest::Method::POST,
                "/v1/registrycredentials",
                Some(json!({"name": name, "registry": "GENERIC", "host": self.registry.host, "username": "ci", "authToken": "tok"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    fn create_body(&self, name: &str, cred: Option<&str>) -> Value {
        let mut image = json!({"imagePath": format!("{}/team/app:v1", self.registry.host)});
        if let Some(c) = cred {
            image["registryCredentialId"] = json!(c);
        }
        json!({"type": "background_worker", "name": name, "image": image})
    }

    /// Creates a web service; its id.
    async fn web_service(&self, name: &str) -> String {
        let mut body = self.create_body(name, None);
        body["type"] = json!("web_service");
        let (s, v) = self
            .ok(reqwest::Method::POST, "/v1/services", Some(body))
            .await;
        assert_eq!(s, 201, "create {name}: {v}");
        v["service"]["id"].as_str().unwrap().to_owned()
    }

    /// Adds a custom domain; the status and answer.
    async fn add_domain(&self, svc: &str, name: &str) -> (u16, Value) {
        let path = format!("/v1/services/{svc}/custom-domains");
        self.ok(reqwest::Method::POST, &path, Some(json!({ "name": name })))
            .await
    }

    /// The names of a service's custom domains.
    async fn domains(&self, svc: &str) -> Vec<String> {
        let path = format!("/v1/services/{svc}/custom-domains");
        let (s, v) = self.ok(reqwest::Method::GET, &path, None).await;
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["customDomain"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Creates a service; its id.
    async fn service(&self, name: &str, cred: Option<&str>) -> String {
        let (s, v) = self.create(name, cred).await;
        assert_eq!(s, 201, "create {name}: {v}");
        v["service"]["id"].as_str().unwrap().to_owned()
    }

    async fn create(&self, name: &str, cred: Option<&str>) -> (u16, Value) {
        let body = self.create_body(name, cred);
        self.ok(reqwest::Method::POST, "/v1/services", Some(body))
            .await
    }

    async fn remove_credential(&self, id: &str) -> u16 {
        let path = format!("/v1/registrycredentials/{id}");
        self.ok(reqwest::Method::DELETE, &path, None).await.0
    }

    async fn patch(&self, svc: &str, body: Value) -> (u16, Value) {
        let path = format!("/v1/services/{svc}");
        self.ok(reqwest::Method::PATCH, &path, Some(body)).await
    }

    async fn show(&self, svc: &str) -> Value {
        let path = format!("/v1/services/{svc}");
        let (s, v) = self.ok(reqwest::Method::GET, &path, None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Every commit in the log.
    async fn log(&self) -> Vec<Envelope> {
        let stream = self
            .store
            .jetstream()
            .get_stream(self.store.subjects().events_stream())
            .await
            .unwrap();
        let last = self.store.last_stream_seq().await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=last {
            let msg = stream.get_raw_message(seq).await.unwrap();
            out.extend(Commit::decode(&msg.payload).unwrap().events);
        }
        out
    }

    /// Where names, attachments and services disagree, folded from the
    /// whole log with the domain's own rules.
    async fn disagreements(&self) -> Vec<String> {
        let mut owners: HashMap<OwnerId, OwnerState> = HashMap::new();
        let mut creds: HashMap<CredentialId, CredentialState> = HashMap::new();
        let mut services: HashMap<ServiceId, ServiceState> = HashMap::new();
        let mut domains: HashMap<String, DomainClaimState> = HashMap::new();
        for env in self.log().await {
            match &env.aggregate {
                AggregateId::Domain(d) => {
                    let s = domains.remove(d.as_str()).unwrap_or_default();
                    domains.insert(d.to_string(), custom_domain::fold(s, &env));
                }
                AggregateId::Owner(o) => {
                    let s = owners.remove(o).unwrap_or_default();
                    owners.insert(o.clone(), owner::fold(s, &env));
                }
                AggregateId::Credential(c) => {
                    let s = creds.remove(c).unwrap_or_default();
                    creds.insert(c.clone(), credential::fold(s, &env));
                }
                AggregateId::Service(id) => {
                    let s = services.remove(id).unwrap_or_default();
                    services.insert(id.clone(), service::fold(s, &env));
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (o, state) in &owners {
            for (name, s) in &state.service_names {
                let backed = services.get(s).is_some_and(|st| {
                    st.exists()
                        && st
                            .config
                            .as_ref()
                            .is_some_and(|c| c.owner == *o && c.name == *name)
                });
                if !backed {
                    out.push(format!("name {name:?} held for {s}, which does not use it"));
                }
            }
        }
        for (c, state) in &creds {
            for s in state.active().map(|a| &a.attached).into_iter().flatten() {
                let backed = services.get(s).is_some_and(|st| {
                    st.exists()
                        && st
                            .config
                            .as_ref()
                            .is_some_and(|cfg| cfg.credential.as_ref() == Some(c))
                });
                if !backed {
                    out.push(format!("{c} attached to {s}, which does not use it"));
                }
            }
        }
        for claim in domains.values() {
            let Some(holder) = &claim.holder else {
                continue;
            };
            let backed = services
                .get(&holder.service)
                .is_some_and(|st| st.exists() && st.custom_domains.contains_key(&claim.name));
            if !backed {
                out.push(format!(
                    "domain {} held for {}, which does not have it",
                    claim.name, holder.service
                ));
            }
        }
        for (id, st) in &services {
            let Some(cfg) = st.config.as_ref().filter(|_| st.exists()) else {
                continue;
            };
            for name in st.custom_domains.keys() {
                let claim = berth_schemas::ids::DomainId::of_name(name);
                let held = domains
                    .get(claim.as_str())
                    .and_then(|c| c.holder.as_ref())
                    .is_some_and(|h| h.service == *id);
                if !held {
                    out.push(format!("{id} has domain {name} without holding it"));
                }
            }
            let held = owners
                .get(&cfg.owner)
                .and_then(|o| o.service_named(&cfg.name))
                == Some(id);
            if !held {
                out.push(format!("{id} is named {:?} without holding it", cfg.name));
            }
            if let Some(c) = &cfg.credential {
                let attached = creds
                    .get(c)
                    .and_then(CredentialState::active)
                    .is_some_and(|a| a.attached.contains(id));
                if !attached {
                    out.push(format!("{id} uses {c} without being attached"));
                }
            }
        }
        out.sort();
        out
    }

    /// Asserts the crash left something to repair, then waits for the
    /// restarted API to repair it.
    async fn converges(&mut self, after: &str) {
        let left = self.disagreements().await;
        assert!(
            !left.is_empty(),
            "{after}: the crash left nothing to repair (wrong failpoint?)"
        );
        self.start_api(None).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.disagreements().await;
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{after}: not repaired in 20 s: {left:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many creations were given up.
    async fn abandoned(&self) -> usize {
        self.log()
            .await
            .iter()
            .filter(|e| matches!(e.event, Event::ServiceCreationAbandoned(_)))
            .count()
    }
}

/// A client that never reuses a connection: the API behind the port is
/// killed and started again between requests.
fn http_client() -> reqwest::Client {
    // Installs rustls' crypto provider, which any reqwest client needs.
    berth_tests::registry::http_client().unwrap();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn path(svc: &str) -> String {
    format!("/v1/services/{svc}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_interrupted_after_any_step_converges() {
    let mut i = Installation::start().await;

    // After the name: the name is given back, the creation fenced off.
    i.start_api(Some("service-create:after-name")).await;
    let c1 = i.credential("one").await;
    let body = i.create_body("web", Some(&c1));
    i.crashing(reqwest::Method::POST, "/v1/services", Some(body))
        .await;
    i.converges("create after the name").await;
    assert_eq!(i.abandoned().await, 1);
    assert_eq!(i.remove_credential(&c1).await, 204);

    // After the credential: both given back.
    i.start_api(Some("service-create:after-credential")).await;
    let c2 = i.credential("two").await;
    let body = i.create_body("web", Some(&c2));
    i.crashing(reqwest::Method::POST, "/v1/services", Some(body))
        .await;
    i.converges("create after the credential").await;
    assert_eq!(i.abandoned().await, 2);
    assert_eq!(i.remove_credential(&c2).await, 204, "c2 still attached");
    // The name is free: the retry succeeds.
    let c3 = i.credential("three").await;
    let web = i.service("web", Some(&c3)).await;
    assert_eq!(i.show(&web).await["name"], "web");

    // After the service: only the answer was lost; nothing to repair.
    i.start_api(Some("service-create:after-service")).await;
    let body = i.create_body("api", Some(&c3));
    i.crashing(reqwest::Method::POST, "/v1/services", Some(body))
        .await;
    i.start_api(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(i.disagreements().await, Vec::<String>::new());
    assert_eq!(i.abandoned().await, 2);
    let (s, v) = i.create("api", None).await;
    assert_eq!(s, 409, "the created service holds its name: {v}");
    assert_eq!(i.remove_credential(&c3).await, 409, "c3 is in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_interrupted_after_any_step_is_finished() {
    let mut i = Installation::start().await;

    // After the service: the name and the credential are given back.
    i.start_api(Some("service-delete:after-service")).await;
    let c1 = i.credential("one").await;
    let web = i.service("web", Some(&c1)).await;
    i.crashing(reqwest::Method::DELETE, &path(&web), None).await;
    i.converges("delete after the service").await;
    assert_eq!(i.remove_credential(&c1).await, 204, "c1 still attached");
    i.service("web", None).await;

    // After the name: the credential is detached.
    i.start_api(Some("service-delete:after-name")).await;
    let c2 = i.credential("two").await;
    let api = i.service("api", Some(&c2)).await;
    i.crashing(reqwest::Method::DELETE, &path(&api), None).await;
    i.converges("delete after the name").await;
    assert_eq!(i.remove_credential(&c2).await, 204, "c2 still attached");
    i.service("api", None).await;
    // Nothing was a creation to give up.
    assert_eq!(i.abandoned().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_interrupted_after_any_step_converges() {
    let mut i = Installation::start().await;

    // After the claim: the service keeps its name, the new one is free.
    i.start_api(Some("service-rename:after-claim")).await;
    let svc = i.service("one", None).await;
    i.crashing(
        reqwest::Method::PATCH,
        &path(&svc),
        Some(json!({"name": "two"})),
    )
    .await;
    i.converges("rename after the claim").await;
    assert_eq!(i.show(&svc).await["name"], "one");
    // Retried, it renames.
    let (s, v) = i.patch(&svc, json!({"name": "two"})).await;
    assert_eq!(s, 200, "{v}");
    i.service("one", None).await;

    // After the update: the old name is given back.
    i.start_api(Some("service-rename:after-update")).await;
    i.crashing(
        reqwest::Method::PATCH,
        &path(&svc),
        Some(json!({"name": "three"})),
    )
    .await;
    i.converges("rename after the update").await;
    assert_eq!(i.show(&svc).await["name"], "three");
    i.service("two", None).await;
    let (s, v) = i.create("three", None).await;
    assert_eq!(s, 409, "three is the renamed service's: {v}");
    assert_eq!(i.abandoned().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_change_interrupted_after_any_step_converges() {
    let mut i = Installation::start().await;
    let credential_of = |v: &Value| v["image"]["registryCredentialId"].clone();

    // After the new one is attached: it is detached, the old one kept.
    i.start_api(Some("service-credential:after-attach")).await;
    let (c1, c2) = (i.credential("one").await, i.credential("two").await);
    let svc = i.service("web", Some(&c1)).await;
    let change = |c: &str| json!({"image": {"registryCredentialId": c}});
    i.crashing(reqwest::Method::PATCH, &path(&svc), Some(change(&c2)))
        .await;
    i.converges("credential change after the attach").await;
    assert_eq!(credential_of(&i.show(&svc).await), json!(c1));
    assert_eq!(i.remove_credential(&c2).await, 204, "c2 still attached");
    assert_eq!(i.remove_credential(&c1).await, 409, "c1 is in use");
    // Retried, it changes.
    let c3 = i.credential("three").await;
    let (s, v) = i.patch(&svc, change(&c3)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(i.remove_credential(&c1).await, 204, "c1 still attached");

    // After the update: the old one is detached.
    i.start_api(Some("service-credential:after-update")).await;
    let c4 = i.credential("four").await;
    i.crashing(reqwest::Method::PATCH, &path(&svc), Some(change(&c4)))
        .await;
    i.converges("credential change after the update").await;
    assert_eq!(credential_of(&i.show(&svc).await), json!(c4));
    assert_eq!(i.remove_credential(&c3).await, 204, "c3 still attached");
    assert_eq!(i.remove_credential(&c4).await, 409, "c4 is in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_change_interrupted_after_any_step_converges() {
    let mut i = Installation::start().await;
    let one = i.web_service("one").await;
    let two = i.web_service("two").await;
    let domains = |svc: &str| format!("/v1/services/{svc}/custom-domains");
    let add = |name: &str| Some(json!({ "name": name }));

    // Add, after the claim: the claim is given back; retried, it adds.
    i.start_api(Some("domain-add:after-claim")).await;
    i.crashing(reqwest::Method::POST, &domains(&one), add("a.example.test"))
        .await;
    i.converges("add after the claim").await;
    assert!(i.domains(&one).await.is_empty());
    let (s, v) = i.add_domain(&two, "a.example.test").await;
    assert_eq!(s, 201, "the name is free again: {v}");

    // Add, after the service got it: only the answer was lost.
    i.start_api(Some("domain-add:after-add")).await;
    i.crashing(reqwest::Method::POST, &domains(&one), add("b.example.test"))
        .await;
    i.start_api(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(i.disagreements().await, Vec::<String>::new());
    assert_eq!(i.domains(&one).await, ["b.example.test"]);
    let (s, v) = i.add_domain(&two, "b.example.test").await;
    assert_eq!(s, 409, "b is one's: {v}");

    // Remove, after the service let it go: the claim is given back.
    i.start_api(Some("domain-remove:after-remove")).await;
    let gone = format!("{}/b.example.test", domains(&one));
    i.crashing(reqwest::Method::DELETE, &gone, None).await;
    i.converges("remove after the service").await;
    assert!(i.domains(&one).await.is_empty());
    let (s, v) = i.add_domain(&two, "b.example.test").await;
    assert_eq!(s, 201, "the name is free again: {v}");

    // Remove, after the release: only the answer was lost.
    let (s, v) = i.add_domain(&one, "d.example.test").await;
    assert_eq!(s, 201, "{v}");
    i.start_api(Some("domain-remove:after-release")).await;
    let gone = format!("{}/d.example.test", domains(&one));
    i.crashing(reqwest::Method::DELETE, &gone, None).await;
    i.start_api(None).await;
    assert_eq!(i.disagreements().await, Vec::<String>::new());
    assert!(i.domains(&one).await.is_empty());

    // Deleting a service, interrupted after its name: its domains are
    // given back too.
    let (s, v) = i.add_domain(&one, "c.example.test").await;
    assert_eq!(s, 201, "{v}");
    i.start_api(Some("service-delete:after-name")).await;
    i.crashing(reqwest::Method::DELETE, &path(&one), None).await;
    i.converges("delete after the name").await;
    let (s, v) = i.add_domain(&two, "c.example.test").await;
    assert_eq!(s, 201, "the deleted service's domain is free: {v}");
    assert_eq!(
        i.domains(&two).await,
        ["a.example.test", "b.example.test", "c.example.test"]
    );
}

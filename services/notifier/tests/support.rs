//! Shared set-up of the notifier tests: a store on a real nats-server, an
//! owner and services written as events, and real sinks (aiosmtpd for SMTP,
//! a Python HTTP server recording posts) run as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_eventlog::{EventStore, NewEvent, Version};
use berth_runtime::{Secret, SecretKey};
use berth_schemas::events::{NotificationSettingsChanged, OwnerCreated, ServiceCreated};
use berth_schemas::ids::{OwnerId, ServiceId, UserId};
use berth_schemas::model::{seal_context, NotifySetting, OverlapPolicy, Plan, ServiceType};
use berth_schemas::{Actor, AggregateId, Event};
use berth_tests::eventlog::open_store;
use berth_tests::{free_port, init_tracing, NatsServer, NatsVersion};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One test's own world: a nats-server (killed on drop), a client, an event
/// store under a unique prefix and a fresh sealing key.
pub struct World {
    /// Held so the server lives as long as the test.
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub store: EventStore,
    pub key: SecretKey,
}

impl World {
    /// Starts the server and opens the store.
    pub async fn start() -> Result<Self> {
        init_tracing();
        let nats = NatsServer::start(NatsVersion::Legacy)?;
        let client = nats.connect().await?;
        let store = open_store(&client, 1).await?;
        let key = SecretKey::from_base64(&SecretKey::generate_base64())?;
        Ok(World {
            nats,
            client,
            store,
            key,
        })
    }

    /// The notifier component with `opts` over this world, running in a task.
    pub fn notifier(&self, opts: berth_notifier::NotifierOptions) -> Running {
        Running::spawn(&self.store, &self.key, opts)
    }
}

/// A notifier running in a task until [`Running::stop`].
pub struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), berth_notifier::NotifierError>>,
}

impl Running {
    /// Runs the notifier component over `store` with `opts`.
    pub fn spawn(
        store: &EventStore,
        key: &SecretKey,
        opts: berth_notifier::NotifierOptions,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            berth_notifier::component(store.clone(), key.clone(), opts).run(shutdown.clone(), None),
        );
        Running { shutdown, task }
    }

    /// Stops it and fails if it ended with an error.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sinks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sinks")
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("sink on port {port} did not come up")
}

/// The Python HTTP sink: records every post as a JSON line.
#[derive(Debug)]
pub struct HttpSink {
    pub port: u16,
    pub out: PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl HttpSink {
    /// Starts a sink whose `/slow/…` paths answer after `delay_secs`.
    pub fn start(delay_secs: f64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("posts.jsonl");
        let port = free_port();
        let child = Command::new("python3")
            .arg(sinks_dir().join("http_sink.py"))
            .arg(port.to_string())
            .arg(&out)
            .arg(delay_secs.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("start the HTTP sink")?;
        let proc = Proc(child);
        wait_port(port)?;
        Ok(Self {
            port,
            out,
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every post so far.
    pub fn posts(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until at least `n` posts match `pred`.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<_> = self.posts().into_iter().filter(|p| pred(p)).collect();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} posts after {timeout:?}: {:?}",
                    got.len(),
                    self.posts()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// aiosmtpd with its Mailbox handler: every accepted email is a file.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    maildir: PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let maildir = dir.path().join("mail");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .spawn()
            .context("start aiosmtpd (pip install aiosmtpd)")?;
        let proc = Proc(child);
        wait_port(port)?;
        Ok(Self {
            port,
            maildir,
            _proc: proc,
            _dir: dir,
        })
    }

    /// Every email received, raw.
    pub fn mails(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    if let Ok(s) = std::fs::read_to_string(e.path()) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.mails();
            if m.len() >= n {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!("{} of {n} emails after {timeout:?}", m.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies a captured webhook post with PyPI's `standardwebhooks`.
pub fn verify_webhook(secret: &str, post: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg(sinks_dir().join("verify_webhook.py"))
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(post.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "standardwebhooks rejected the signature: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A fresh `whsec_…` secret (32 random bytes, base64).
pub fn webhook_secret() -> String {
    format!("whsec_{}", SecretKey::generate_base64())
}

/// The channels an owner configures, in plain text.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    pub email: Option<String>,
    pub slack: Option<String>,
    pub webhook: Option<String>,
    pub webhook_secret: Option<String>,
}

/// Writes an owner with `notify` and `channels` (secrets sealed); returns its id.
pub async fn owner(
    store: &EventStore,
    key: &SecretKey,
    notify: NotifySetting,
    ch: &Channels,
) -> Result<OwnerId> {
    let owner = OwnerId::User(UserId::generate());
    let seal = |v: &Option<String>, field: &str| -> Result<_> {
        v.as_ref()
            .map(|v| {
                key.seal(
                    &Secret::new(v.clone()),
                    &seal_context::notification(&owner, field),
                )
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let events = vec![
        NewEvent::new(
            OwnerCreated {
                owner: owner.clone(),
                name: "acme".to_owned(),
            },
            Actor::system("test"),
        ),
        NewEvent::new(
            NotificationSettingsChanged {
                notify,
                email: ch.email.clone(),
                slack_webhook_url: seal(&ch.slack, "slack_webhook_url")?,
                webhook_url: seal(&ch.webhook, "webhook_url")?,
                webhook_secret: seal(&ch.webhook_secret, "webhook_secret")?,
            },
            Actor::system("test"),
        ),
    ];
    store
        .append(
            &AggregateId::Owner(owner.clone()),
            Version::NEW,
            events,
            &format!("owner:{owner}"),
        )
        .await?;
    Ok(owner)
}

/// Writes a web service of `owner` with an optional override; returns it
/// with its version for further appends.
pub async fn service(
    store: &EventStore,
    key: &SecretKey,
    owner: &OwnerId,
    notify: Option<NotifySetting>,
) -> Result<(ServiceId, Version)> {
    let id = ServiceId::generate();
    let hook_key = key
        .seal(
            &Secret::new("hook-secret-value"),
            &seal_context::hook_key(&id),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let created = ServiceCreated {
        owner: owner.clone(),
        name: format!("svc-{}", &id.as_str()[4..10]),
        service_type: ServiceType::WebService,
        image: "registry.example/app:1".to_owned(),
        credential: None,
        region: "local".to_owned(),
        plan: Plan {
            name: "starter".to_owned(),
            cpu_millis: 500,
            memory_mib: 512,
        },
        num_instances: 1,
        docker_command: None,
        env_vars: Default::default(),
        secret_files: Default::default(),
        pre_deploy_command: None,
        health_check_path: None,
        schedule: None,
        notify,
        overlap_policy: OverlapPolicy::default(),
        shutdown_delay_secs: 30,
        https_redirect: true,
        hook_key,
        disk: None,
        maintenance_mode: None,
        ip_allow_list: None,
    };
    let a = store
        .append(
            &AggregateId::Service(id.clone()),
            Version::NEW,
            vec![NewEvent::new(created, Actor::system("test"))],
            &format!("create:{id}"),
        )
        .await?;
    Ok((id, a.version))
}

/// Appends `events` (one commit each) to the service; returns the new version.
pub async fn append(
    store: &EventStore,
    service: &ServiceId,
    mut version: Version,
    events: Vec<Event>,
) -> Result<Version> {
    for e in events {
        let a = store
            .append(
                &AggregateId::Service(service.clone()),
                version,
                vec![NewEvent::new(e, Actor::system("test"))],
                &format!("e:{}", berth_schemas::ids::EventId::generate()),
            )
            .await?;
        version = a.version;
    }
    Ok(version)
}

/// Every event of a delivery aggregate, by type name.
pub async fn delivery_events(
    store: &EventStore,
    delivery: &berth_schemas::ids::DeliveryId,
) -> Result<Vec<&'static str>> {
    let loaded = store.load(&AggregateId::Delivery(delivery.clone())).await?;
    Ok(loaded.events.iter().map(|e| e.event.type_name()).collect())
}

/// Polls the delivery's events until `done` holds for them (every
/// `poll`); fails with the last seen events after `timeout`.
pub async fn wait_delivery(
    store: &EventStore,
    delivery: &berth_schemas::ids::DeliveryId,
    timeout: Duration,
    poll: Duration,
    done: impl Fn(&[&'static str]) -> bool,
) -> Result<Vec<&'static str>> {
    let deadline = Instant::now() + timeout;
    loop {
        let evs = delivery_events(store, delivery).await?;
        if done(&evs) {
            return Ok(evs);
        }
        if Instant::now() > deadline {
            bail!("delivery {delivery} after {timeout:?}: {evs:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Every message of the whole event stream, raw, for secret searches.
pub async fn all_log_bytes(store: &EventStore) -> Result<Vec<u8>> {
    let last = store.last_stream_seq().await?;
    let stream = store
        .jetstream()
        .get_stream(store.subjects().events_stream())
        .await?;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.extend_from_slice(&m.payload);
        }
    }
    Ok(out)
}

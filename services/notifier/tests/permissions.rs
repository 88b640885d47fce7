//! deploy/nats/permissions.conf on a real nats-server: each role can do what
//! docs/integration.md says and is refused the rest. Each refusal is checked
//! twice: the message never arrives, and the server reports a permissions
//! violation to the client.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use berth_tests::{free_port, nats_binary, NatsVersion};
use futures::StreamExt;

use crate::support::Proc;

struct Conn {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    async fn open(port: u16, user: &str) -> Result<Self> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        let client = async_nats::ConnectOptions::new()
            .user_and_password(user.to_owned(), format!("pw-{user}"))
            .event_callback(move |ev| {
                let sink = Arc::clone(&sink);
                async move {
                    if let async_nats::Event::ServerError(e) = ev {
                        sink.lock().unwrap().push(format!("{e:?}"));
                    }
                }
            })
            .connect(format!("nats://127.0.0.1:{port}"))
            .await?;
        Ok(Self { client, errors })
    }

    /// Waits for a violation naming `subject` (the server reports it asynchronously).
    async fn violation(&self, subject: &str) -> bool {
        for _ in 0..40 {
            if self
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Permissions Violation") && e.contains(subject))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Whether a message arrives: allowed ones get 5 s (loaded CI), refused
/// ones 1 s (backed by the server's violation report).
async fn receives(sub: &mut async_nats::Subscriber) -> bool {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .is_ok()
}

/// Publishes on `subject` from `from` every 100 ms until `sub` (another
/// connection's) gets a message, for up to 5 s. async-nats' `flush` only
/// writes the socket; it does not wait for the server, so the first
/// publish may be routed before that other connection's SUB is in place
/// (seen here under load: PUB processed 1 ms before the SUB).
async fn delivered(
    from: &async_nats::Client,
    subject: &'static str,
    sub: &mut async_nats::Subscriber,
) -> Result<bool> {
    for _ in 0..50 {
        from.publish(subject, "{}".into()).await?;
        from.flush().await?;
        if tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn stays_silent(sub: &mut async_nats::Subscriber) -> bool {
    tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .is_err()
}

fn start_server(port: u16, dir: &Path) -> Result<Proc> {
    let perms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/permissions.conf");
    std::fs::copy(perms, dir.join("permissions.conf"))?;
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\ninclude ./permissions.conf\n",
            dir.join("js")
        ),
    )?;
    let mut cmd = Command::new(nats_binary(NatsVersion::Legacy)?);
    cmd.arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for role in ["control", "node", "bridge", "internal"] {
        cmd.env(
            format!("BERTH_NATS_{}_PASSWORD", role.to_uppercase()),
            format!("pw-{role}"),
        );
    }
    let proc = Proc(cmd.spawn()?);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(proc);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nats-server with permissions.conf did not come up")
}

#[tokio::test]
async fn each_role_is_allowed_its_subjects_and_refused_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let _server = start_server(port, dir.path())?;
    let control = Conn::open(port, "control").await?;
    let bridge = Conn::open(port, "bridge").await?;
    let internal = Conn::open(port, "internal").await?;
    let node = Conn::open(port, "node").await?;
    // A wrong password is refused outright.
    let wrong = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .user_and_password("bridge".into(), "nope".into())
            .connect(format!("nats://127.0.0.1:{port}")),
    )
    .await?;
    assert!(wrong.is_err(), "a wrong password was accepted");

    // Bridge: reads the integration stream.
    let mut bridge_events = bridge.client.subscribe("berth.events.>").await?;
    bridge.client.flush().await?;
    assert!(
        delivered(
            &control.client,
            "berth.events.srv-abcdefghijklmnopqrst",
            &mut bridge_events
        )
        .await?,
        "bridge must read events"
    );

    // The control plane (standing in for the API) answers commands.
    let mut cmds = control.client.subscribe("berth.cmd.>").await?;
    let mut log = control.client.subscribe("berth.evt.>").await?;
    let mut beats = control.client.subscribe("berth.heartbeat").await?;
    control.client.flush().await?;

    // Bridge may not send commands, nor read them, nor touch the log.
    bridge.client.publish("berth.cmd.scale", "x".into()).await?;
    bridge.client.flush().await?;
    assert!(
        stays_silent(&mut cmds).await,
        "a bridge's command got through"
    );
    assert!(bridge.violation("berth.cmd.scale").await);
    let _denied = bridge.client.subscribe("berth.cmd.>").await?;
    assert!(bridge.violation("berth.cmd.>").await);
    let _denied = bridge.client.subscribe("berth.evt.>").await?;
    assert!(bridge.violation("berth.evt.>").await);

    // Internal service: sends commands as requests and gets the reply.
    let responder = control.client.clone();
    let answer = tokio::spawn(async move {
        if let Some(m) = cmds.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "ok".into()).await;
                let _ = responder.flush().await;
            }
            return Some(m.subject.to_string());
        }
        None
    });
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        internal.client.request("berth.cmd.deploy", "x".into()),
    )
    .await??;
    assert_eq!(&reply.payload[..], b"ok");
    assert_eq!(answer.await?.as_deref(), Some("berth.cmd.deploy"));
    // … but may not write the log nor read the integration stream.
    internal
        .client
        .publish("berth.evt.service.srv-abcdefghijklmnopqrst", "x".into())
        .await?;
    internal.client.flush().await?;
    assert!(
        stays_silent(&mut log).await,
        "an internal service wrote the log"
    );
    assert!(internal.violation("berth.evt.service").await);
    let _denied = internal.client.subscribe("berth.events.>").await?;
    assert!(internal.violation("berth.events.>").await);

    // Node: heart-beats, writes the log, uses JetStream; no commands.
    node.client.publish("berth.heartbeat", "hb".into()).await?;
    node.client
        .publish("berth.evt.node.nod-abcdefghijklmnopqrst", "fact".into())
        .await?;
    node.client.flush().await?;
    assert!(receives(&mut beats).await, "node heartbeat");
    assert!(receives(&mut log).await, "node fact");
    let js = async_nats::jetstream::new(node.client.clone());
    js.query_account().await.map(|_| ()).or_else(|e| {
        // 2.9 answers in a shape async-nats 0.51 cannot parse (NOTES.md):
        // an answer at all shows the request was allowed.
        if e.to_string().contains("did not match") {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    node.client.publish("berth.cmd.scale", "x".into()).await?;
    node.client.flush().await?;
    assert!(node.violation("berth.cmd.scale").await);
    let _denied = node.client.subscribe("berth.events.>").await?;
    assert!(node.violation("berth.events.>").await);

    // Nobody here was refused anything they were meant to do.
    assert!(
        control.errors.lock().unwrap().is_empty(),
        "{:?}",
        control.errors
    );
    Ok(())
}

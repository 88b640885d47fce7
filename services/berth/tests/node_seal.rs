//! A node holds only what its work needs. Real processes throughout: a
//! `berth run node` started without `BERTH_SECRET_KEY` (as root, real runc,
//! nats-server and a docker-registry with htpasswd), and the control plane
//! as `berth run resolver` and `berth run scheduler` holding the key. The
//! test writes a registry credential and a service with an env var into
//! the log as ingress would (sealed with the installation key); the
//! scheduler reseals both to the node's public key, and the node pulls the
//! private image and starts the instance, which sees the env var. Then:
//! nothing of the installation key is in the node's environment or
//! anywhere under its data dir, and a work item sealed to another node is
//! refused (dead-lettered) without anything pulled or started.

use std::path::Path;
use std::time::Duration;

use berth_domain::credential;
use berth_domain::service::{self, CreateService};
use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::node_key::{ForNode, NodeKeyPair};
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::commands::{NodeRunSpec, NodeWork};
use berth_schemas::ids::{CredentialId, DeployId, InstanceId, NodeId, ServiceId};
use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::model::{seal_context, EnvVars, RegistryKind, ServiceType};
use berth_schemas::{Actor, AggregateId, Event, Subjects};
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::{NatsServer, NatsVersion};
use futures::StreamExt;
use tokio::process::Child;

use crate::cli_support::{
    berth, busybox_image, events_of, node_id, require_root_and_runc, runc_root, spawn_server,
    wait_for, Cleanup,
};

const USER: &str = "puller";
const PASS: &str = "s3cret-registry-pass";

/// `berth run <component>` with the installation key (`key`) or without.
fn spawn(component: &str, data: &Path, nats: &str, prefix: &str, key: Option<&str>) -> Child {
    let mut c = berth(data, nats, prefix);
    c.args(["run", component])
        .env("BERTH_HTTP_ADDR", "127.0.0.1:0")
        // The test registry is on loopback, which `berth run` refuses by default.
        .env("BERTH_ALLOW_TARGETS", "loopback")
        .env("BERTH_LOG", "info");
    if component == "node" {
        c.env("BERTH_NODE_NAME", "sealed-node")
            .env("BERTH_NODE_CPU_MILLIS", "2000")
            .env("BERTH_NODE_MEMORY_MIB", "1024")
            .env("BERTH_NODE_HEARTBEAT_MS", "200");
    }
    if let Some(k) = key {
        c.env("BERTH_SECRET_KEY", k);
    }
    let (child, mut out) = spawn_server(c);
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    child
}

/// Every regular file under `dir` (symlinks not followed).
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A credential of `owner` for `host`, its token sealed with `key`, as
/// ingress records it.
async fn create_credential(
    store: &EventStore,
    key: &SecretKey,
    owner: &OwnerId,
    host: &str,
) -> CredentialId {
    let id = CredentialId::generate();
    let create = credential::Command::Create {
        owner: owner.clone(),
        name: "private".into(),
        registry: RegistryKind::Generic,
        host: Some(host.to_owned()),
        username: USER.into(),
        token: key
            .seal(&Secret::new(PASS), &seal_context::credential_token(&id))
            .unwrap(),
    };
    store
        .execute::<credential::CredentialAggregate>(
            &AggregateId::Credential(id.clone()),
            "create",
            &berth_eventlog::Stamp::new(Actor::system("test")),
            create,
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_node_without_the_installation_key_runs_private_images_with_sealed_env() {
    require_root_and_runc();
    let nats = NatsServer::start(NatsVersion::Legacy).unwrap();
    let client = nats.connect().await.unwrap();
    let prefix = berth_tests::unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let store = EventStore::open(client.clone(), subjects.clone(), StoreConfig::default())
        .await
        .unwrap();
    let registry = Registry::start(RegistryAuth::Htpasswd {
        user: USER.into(),
        pass: PASS.into(),
    })
    .await
    .unwrap();
    let image = busybox_image("sealed");
    registry
        .push_image("app/sealed", "v1", &image)
        .await
        .unwrap();

    let key_text = SecretKey::generate_base64();
    let key = SecretKey::from_base64(&key_text).unwrap();
    let key_bytes = data_encoding::BASE64.decode(key_text.as_bytes()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (control, data) = (dir.path().join("control"), dir.path().join("node-data"));
    let mut cleanup = Cleanup {
        child: None,
        data: data.clone(),
    };
    let _resolver = spawn("resolver", &control, &nats.url(), &prefix, Some(&key_text));
    let _scheduler = spawn("scheduler", &control, &nats.url(), &prefix, Some(&key_text));
    cleanup.child = Some(spawn("node", &data, &nats.url(), &prefix, None));
    let pid = cleanup.child.as_ref().and_then(Child::id).unwrap();

    // The node registers its public key.
    let node: NodeId = node_id(&data).await;
    let mut registered = None;
    wait_for("node registered", Duration::from_secs(30), async || {
        let events = events_of(&store, AggregateId::Node(node.clone())).await;
        registered = events.iter().find_map(|e| match &e.event {
            Event::NodeRegistered(r) => r.public_key.clone(),
            _ => None,
        });
        registered.is_some()
    })
    .await;

    // A private image, a credential and an env var, as ingress records them.
    let owner = OwnerId::User(UserId::generate());
    let cred = create_credential(&store, &key, &owner, &registry.host).await;
    let (svc, deploy) = (ServiceId::generate(), DeployId::generate());
    let mut create = CreateService::new(
        owner.clone(),
        "sealed",
        ServiceType::BackgroundWorker,
        &format!("{}/app/sealed:v1", registry.host),
        key.seal(&Secret::new("hook-key"), &seal_context::hook_key(&svc))
            .unwrap(),
        deploy.clone(),
    );
    create.credential = Some(cred.clone());
    create.env_vars.insert(
        "GREETING".into(),
        key.seal(
            &Secret::new("sealed-hello"),
            &seal_context::env_var(&svc, "GREETING"),
        )
        .unwrap(),
    );
    create.docker_command =
        Some("sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'".into());
    create.shutdown_delay_secs = Some(1);
    berth_tests::eventlog::service_command(
        &store,
        &svc,
        service::Command::Create(Box::new(create)),
    )
    .await
    .unwrap();

    // Resolved (the resolver opened the credential), placed and sealed to
    // the node (the scheduler), pulled with the login and started (the node).
    let service = AggregateId::Service(svc.clone());
    let mut started = None;
    wait_for("instance started", Duration::from_secs(120), async || {
        let events = events_of(&store, service.clone()).await;
        if let Some(f) = events.iter().find_map(|e| match &e.event {
            Event::ImagePullFailed(f) => Some(f.clone()),
            _ => None,
        }) {
            panic!("pull failed: {f:?}");
        }
        started = events.iter().find_map(|e| match &e.event {
            Event::InstanceStarted(s) => Some(s.instance.clone()),
            _ => None,
        });
        started.is_some()
    })
    .await;
    let instance = started.unwrap();

    // The instance sees its env var.
    let out = berth_tests::agent::exec_in(
        &runc_root(&data),
        instance.as_str(),
        &["/bin/busybox", "env"],
    );
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        env.lines().any(|l| l == "GREETING=sealed-hello"),
        "{env}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Neither in the node's environment nor on its disk: the installation
    // key (bytes or base64), or the registry token.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!contains(&environ, b"BERTH_SECRET_KEY"));
    assert!(!contains(&environ, key_text.as_bytes()));
    assert!(!contains(&environ, &key_bytes));
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(files.len() > 10, "{files:?}");
    for f in &files {
        assert_ne!(f.file_name().unwrap(), "secret.key", "{}", f.display());
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        for (what, needle) in [
            ("installation key (base64)", key_text.as_bytes()),
            ("installation key", &key_bytes[..]),
            ("registry token", PASS.as_bytes()),
        ] {
            assert!(!contains(&bytes, needle), "{what} in {}", f.display());
        }
    }
    // The node's own key: private, beside its id, its public part the one
    // registered.
    use std::os::unix::fs::PermissionsExt;
    let key_file = data.join("node/node.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pair = NodeKeyPair::load_or_create(&key_file).unwrap();
    assert_eq!(registered, Some(pair.public().to_base64()));

    // An item sealed to another node (a stolen or misrouted one) does not
    // open here: refused before any pull, dead-lettered, nothing started.
    let (other, other_keys) = (NodeId::generate(), NodeKeyPair::generate());
    let seal = ForNode {
        key: &key,
        node: &other,
        to: other_keys.public(),
    };
    let foreign = InstanceId::generate();
    let mut env = EnvVars::new();
    env.insert(
        "GREETING".into(),
        key.seal(
            &Secret::new("sealed-hello"),
            &seal_context::env_var(&svc, "GREETING"),
        )
        .unwrap(),
    );
    let token = key
        .seal(&Secret::new(PASS), &seal_context::credential_token(&cred))
        .unwrap();
    let spec = NodeRunSpec {
        service: svc.clone(),
        deploy,
        instance: foreign.clone(),
        image: format!("{}/app/sealed", registry.host),
        digest: image.digest.clone(),
        credential: Some(cred.clone()),
        login: Some(
            seal.seal_login(&svc, &foreign, &cred, USER, &token)
                .unwrap(),
        ),
        env: seal.seal_env(&svc, &foreign, &env).unwrap(),
        files: Default::default(),
        command: Some("sh -c 'sleep 60'".into()),
        port: None,
        plan: None,
        shutdown_delay_secs: 1,
        disk_restore: None,
    };
    let mut dead = client
        .subscribe(subjects.dead_letter(&format!("node-{node}")))
        .await
        .unwrap();
    client.flush().await.unwrap();
    store
        .enqueue(
            &Subjects::node_queue(&node),
            svc.as_str(),
            rmp_serde::to_vec_named(&NodeWork::RunInstance(spec))
                .unwrap()
                .into(),
            "foreign",
        )
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .expect("dead-lettered within 30 s")
        .unwrap();
    let reason = m
        .headers
        .as_ref()
        .and_then(|h| h.get("Berth-Dead-Reason"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(
        reason.contains("env GREETING cannot be opened on this node"),
        "{reason}"
    );
    assert!(!reason.contains("sealed-hello"), "{reason}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = events_of(&store, service.clone()).await;
    let about_foreign = events.iter().any(|e| match &e.event {
        Event::InstanceStarted(s) => s.instance == foreign,
        Event::ImagePullFailed(_) => true,
        _ => false,
    });
    assert!(
        !about_foreign,
        "{:?}",
        events
            .iter()
            .map(|e| e.event.type_name())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        berth_tests::runc::runc_list(&runc_root(&data)),
        vec![instance.to_string()]
    );
}

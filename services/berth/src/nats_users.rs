//! The NATS users of a nats-server `berth up` starts: credentials per role
//! (control, operator, the local node) generated once under
//! `<data dir>/nats-creds/` (mode 0600), the server's `authorization` block
//! written from them, and the integrations owners create through the API
//! followed from the event log and reloaded into the running server.
//!
//! Integrations are also saved beside the credentials
//! (`integrations.json`: users and bcrypt hashes only), so a restarted
//! server knows them before the log can be read. What the log says wins:
//! the file is rewritten from it as soon as it is read.
//!
//! Bounds: an owner has at most [`berth_domain::owner::MAX_INTEGRATIONS`];
//! each user is one entry in the server's config. At 10,000 owners with a
//! few integrations each the config is a few MB and a reload takes the
//! server well under a second; past that, operators run their own server
//! with an auth callout (docs/integration.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_runtime::nats_auth::{
    authorization_block, creds_path, inbox_prefix, load_or_create, write_private, Creds,
    Permissions, Role, ServerUser, CREDS_DIR,
};
use berth_runtime::{Config, LocalNats};
use berth_schemas::ids::{IntegrationId, NodeId, OwnerId};
use berth_schemas::{AggregateId, Envelope, Event, Subjects};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// An integration's NATS user, as the server needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationUser {
    pub owner: OwnerId,
    pub user: String,
    pub password_bcrypt: String,
}

type Integrations = BTreeMap<IntegrationId, IntegrationUser>;

/// The users of a server berth starts.
#[derive(Debug)]
pub struct LocalUsers {
    dir: PathBuf,
    subjects: Subjects,
    /// The control plane's credentials.
    pub control: Creds,
    /// The local node's credentials (when the node runs here).
    pub node: Option<Creds>,
    /// The role users (control, operator, node), hashed once per start.
    fixed: Vec<ServerUser>,
}

impl LocalUsers {
    /// Loads or creates the credentials of each role under `config`'s data
    /// dir; `node` is the local node's id when the node runs in this process.
    pub fn prepare(config: &Config, node: Option<NodeId>) -> anyhow::Result<Self> {
        let data = &config.data_dir;
        let subjects = &config.subjects;
        let load = |role: &Role| -> anyhow::Result<Creds> {
            let path = creds_path(data, role);
            load_or_create(&path, role, subjects)
                .with_context(|| format!("NATS credentials for {}", role.kind()))
        };
        let control = load(&Role::Control)?;
        let operator = load(&Role::Operator)?;
        let node = node.map(|n| load(&Role::Node(n))).transpose()?;
        let mut fixed = Vec::new();
        for creds in [Some(&control), Some(&operator), node.as_ref()]
            .into_iter()
            .flatten()
        {
            fixed.push(
                creds
                    .server_user(subjects)
                    .map_err(|e| anyhow::anyhow!("hashing a NATS password: {e}"))?,
            );
        }
        Ok(Self {
            dir: data.join(CREDS_DIR),
            subjects: subjects.clone(),
            control,
            node,
            fixed,
        })
    }

    fn saved_path(&self) -> PathBuf {
        self.dir.join("integrations.json")
    }

    /// The integrations saved at the last change (none when unreadable: the
    /// log brings them back once it is read).
    pub fn saved_integrations(&self) -> Integrations {
        std::fs::read(self.saved_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, integrations: &Integrations) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(integrations)?;
        write_private(&self.saved_path(), &bytes)
            .with_context(|| format!("writing {}", self.saved_path().display()))
    }

    /// The server's `authorization` block: the role users and `integrations`.
    pub fn authorization(&self, integrations: &Integrations) -> String {
        let mut users = self.fixed.clone();
        users.extend(integration_users(integrations, &self.subjects));
        authorization_block(&users)
    }
}

/// The server users of `integrations`.
fn integration_users<'a>(
    integrations: &'a Integrations,
    subjects: &'a Subjects,
) -> impl Iterator<Item = ServerUser> + 'a {
    integrations.iter().map(|(id, i)| ServerUser {
        user: i.user.clone(),
        password_hash: i.password_bcrypt.clone(),
        permissions: Permissions::for_role(
            &Role::Integration {
                id: id.clone(),
                owner: i.owner.clone(),
            },
            subjects,
            &inbox_prefix(&i.user),
        ),
    })
}

/// The active integrations in the log.
#[derive(Debug, Default)]
struct IntegrationsInLog(Integrations);

impl Projection for IntegrationsInLog {
    type Snapshot = ();

    fn apply(&mut self, _seq: u64, env: &Envelope) {
        let AggregateId::Owner(owner) = &env.aggregate else {
            return;
        };
        match &env.event {
            Event::IntegrationCreated(e) => {
                self.0.insert(
                    e.integration.clone(),
                    IntegrationUser {
                        owner: owner.clone(),
                        user: e.user.clone(),
                        password_bcrypt: e.password_bcrypt.clone(),
                    },
                );
            }
            Event::IntegrationRevoked(e) => {
                self.0.remove(&e.integration);
            }
            _ => {}
        }
    }

    fn snapshot(&self) {}

    fn restore(&mut self, (): ()) {}
}

/// A runner over the owners' part of the log, collecting integrations.
fn integrations_in_log(store: &EventStore) -> ProjectionRunner<IntegrationsInLog> {
    let opts = ProjectionOptions {
        filter: Some(store.subjects().aggregate_kind("owner")),
        ..ProjectionOptions::default()
    };
    ProjectionRunner::new(store, IntegrationsInLog::default(), opts)
}

/// Follows the owners' integrations in the log until `shutdown` and gives
/// the running server every change (users added, revoked ones removed).
pub async fn follow_integrations(
    store: EventStore,
    users: Arc<LocalUsers>,
    server: Arc<Mutex<Option<LocalNats>>>,
    shutdown: CancellationToken,
) {
    let runner = integrations_in_log(&store);
    let state = runner.state();
    let mut applied = runner.applied();
    let run = tokio::spawn(runner.run(shutdown.clone()));
    let mut current = users.saved_integrations();
    loop {
        let now = match state.read() {
            Ok(s) => s.0.clone(),
            Err(_) => break,
        };
        if now != current {
            if let Err(e) = apply(&users, &server, &now) {
                tracing::error!(error = %format!("{e:#}"), "integration users not given to nats-server");
            } else {
                tracing::info!(
                    integrations = now.len(),
                    "nats-server integration users updated"
                );
                current = now;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = applied.changed() => if changed.is_err() { break },
        }
    }
    match run.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "following integrations stopped"),
        Err(e) => tracing::warn!(error = %e, "following integrations panicked"),
        Ok(Ok(())) => {}
    }
}

fn apply(
    users: &LocalUsers,
    server: &Mutex<Option<LocalNats>>,
    integrations: &Integrations,
) -> anyhow::Result<()> {
    users.save(integrations)?;
    let mut server = server.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = server.as_mut() {
        s.reload_authorization(users.authorization(integrations))?;
    }
    Ok(())
}

/// `berth nats creds ROLE --out FILE`: credentials for a server berth does
/// not start (a cluster, `docker-compose.yml`). A file already holding
/// credentials of that role is kept, so the command can run at every start.
pub fn write_creds(
    role: &str,
    node: Option<NodeId>,
    prefix: &str,
    out: &Path,
) -> anyhow::Result<Creds> {
    let subjects = Subjects::new(prefix).map_err(|e| anyhow::anyhow!("--subject-prefix: {e}"))?;
    let role = match role {
        "control" => Role::Control,
        "operator" => Role::Operator,
        "node" => {
            // A node file that exists keeps its id.
            let existing = Creds::read(out).ok().and_then(|c| c.node_id);
            Role::Node(node.or(existing).unwrap_or_else(NodeId::generate))
        }
        other => anyhow::bail!("{other:?} is not a role berth generates: control, operator, node"),
    };
    Ok(load_or_create(out, &role, &subjects)?)
}

/// `berth nats auth --out FILE CREDS...`: the server's `authorization`
/// block for these credentials files, and with `integrations` the
/// integrations the log holds (read with `control`'s credentials at
/// `servers`). Written with mode 0600; include it from every server's
/// config and reload the servers after each change.
pub async fn write_auth(
    files: &[PathBuf],
    prefix: &str,
    integrations: Option<(Vec<async_nats::ServerAddr>, PathBuf)>,
    out: &Path,
) -> anyhow::Result<usize> {
    let subjects = Subjects::new(prefix).map_err(|e| anyhow::anyhow!("--subject-prefix: {e}"))?;
    let mut users = Vec::new();
    for file in files {
        let creds = Creds::read(file)?;
        users.push(
            creds
                .server_user(&subjects)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        );
    }
    if let Some((servers, control)) = integrations {
        let creds = Creds::read(&control)?;
        let client = berth_runtime::nats_auth::connect(servers, "berth nats auth", Some(&creds))
            .await
            .context("connecting to read integrations from the log")?;
        let store = EventStore::open(client, subjects.clone(), Default::default())
            .await
            .context("opening the event log")?;
        let mut runner = integrations_in_log(&store);
        runner.catch_up().await.context("reading integrations")?;
        let state = runner.state();
        let found = state
            .read()
            .map_err(|_| anyhow::anyhow!("integrations state poisoned"))?
            .0
            .clone();
        users.extend(integration_users(&found, &subjects));
    }
    write_private(out, authorization_block(&users).as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(users.len())
}

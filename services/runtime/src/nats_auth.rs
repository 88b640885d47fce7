//! Who may do what on the bus: NATS users per role, their permissions, and
//! the credentials files components present.
//!
//! Roles (see docs/integration.md, "Roles and permissions"):
//! - **control**: the control-plane components (api, resolver, scheduler,
//!   cron, notifier, router, projector). The event log, work, dead-letter
//!   and logs streams, the snapshot bucket and the router's certificate
//!   bucket of its prefix, by name; never deletes or purges a stream.
//! - **node** (one user per node): appends facts to service aggregates and
//!   its own node aggregate, reads the log, takes work from its own queue
//!   through its own durable consumer only, heart-beats, publishes its
//!   instances' log lines (core NATS), answers commands to run in its own
//!   instances (`<prefix>.exec.<node>`) and terminals opened in them
//!   (`<prefix>.shell.<node>`, typed into on `….<session>.in`, their
//!   output to `….<session>.out`). Cannot append owner, API key or
//!   credential events, read another node's work, read the kept logs,
//!   create, delete or purge streams.
//! - **operator** (the CLI): reads service events (a deploy's pull
//!   progress). Instance logs are read through the API, owner-scoped.
//! - **integration** (one user per integration, bound to one owner): sends
//!   `scale`, `restart` and `deploy` commands for that owner and reads that
//!   owner's service events; nothing else.
//!
//! Passwords are random (256 bits) and reach the server only as bcrypt
//! hashes; each role's replies come back on its own inbox prefix
//! (`_INBOX_<user>`), so no role can read another's replies.
//!
//! NATS subject permissions match whole tokens only, so streams and
//! consumers are listed by name (derived from the subject prefix).

use std::fmt;
use std::path::{Path, PathBuf};

use berth_schemas::ids::{IntegrationId, NodeId, OwnerId};
use berth_schemas::subjects::CommandKind;
use berth_schemas::Subjects;
use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::secrets::Secret;

/// bcrypt cost of the hashes in the server config. The passwords are 256
/// random bits, so the cost protects nothing a guess could find; it is kept
/// low because the server pays it on every connect.
const BCRYPT_COST: u32 = 6;

/// The file names `berth up` keeps its generated credentials under, in
/// `<data dir>/nats-creds/`.
pub const CREDS_DIR: &str = "nats-creds";

/// What a NATS user is allowed to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The control-plane components.
    Control,
    /// One node.
    Node(NodeId),
    /// The CLI on an operator's machine.
    Operator,
    /// An integration bound to one owner.
    Integration {
        /// The integration.
        id: IntegrationId,
        /// The owner it acts for.
        owner: OwnerId,
    },
}

impl Role {
    /// The NATS user name of this role.
    pub fn user(&self) -> String {
        match self {
            Role::Control => "control".to_owned(),
            Role::Node(n) => format!("node-{n}"),
            Role::Operator => "operator".to_owned(),
            Role::Integration { id, .. } => format!("int-{id}"),
        }
    }

    /// The kind, as the credentials file says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Node(_) => "node",
            Role::Operator => "operator",
            Role::Integration { .. } => "integration",
        }
    }
}

/// Why credentials could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// Reading or writing the file failed.
    #[error("NATS credentials file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error("NATS credentials file {0} must not be readable by group or others (chmod 600)")]
    Mode(String),
    /// Not a credentials file.
    #[error("NATS credentials file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why (never the file's content).
        reason: String,
    },
}

/// A credentials file: who to connect as. JSON, so any language reads it:
/// `{"role", "user", "password", "inboxPrefix", "nodeId"?, "ownerId"?,
/// "integrationId"?}`.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Creds {
    /// `control`, `node`, `operator` or `integration`.
    pub role: String,
    /// The NATS user.
    pub user: String,
    /// The password, in clear: this file is the secret.
    pub password: String,
    /// The inbox prefix replies must come back on (the role may subscribe
    /// to nothing else for replies).
    pub inbox_prefix: String,
    /// The node these credentials are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The owner an integration acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<OwnerId>,
    /// The integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_id: Option<IntegrationId>,
    /// The subject prefix of the installation (for integrators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Creds")
            .field("role", &self.role)
            .field("user", &self.user)
            .field("password", &"***")
            .finish_non_exhaustive()
    }
}

/// The inbox prefix of a user.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// A fresh random password (256 bits, URL-safe base64).
pub fn random_password() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(BASE64URL_NOPAD.encode(&bytes))
}

/// The bcrypt hash the server config holds for `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    bcrypt::hash(password, BCRYPT_COST).map_err(|e| e.to_string())
}

impl Creds {
    /// New credentials for `role` with a random password.
    pub fn generate(role: &Role, subjects: &Subjects) -> Self {
        let user = role.user();
        let (node_id, owner_id, integration_id) = match role {
            Role::Node(n) => (Some(n.clone()), None, None),
            Role::Integration { id, owner } => (None, Some(owner.clone()), Some(id.clone())),
            Role::Control | Role::Operator => (None, None, None),
        };
        Creds {
            role: role.kind().to_owned(),
            inbox_prefix: inbox_prefix(&user),
            user,
            password: random_password().expose().to_owned(),
            node_id,
            owner_id,
            integration_id,
            subject_prefix: Some(subjects.prefix().to_owned()),
        }
    }

    /// The role these credentials claim (what the server grants is decided
    /// by the server's config, not by this file).
    pub fn role(&self) -> Option<Role> {
        match (
            self.role.as_str(),
            &self.node_id,
            &self.integration_id,
            &self.owner_id,
        ) {
            ("control", ..) => Some(Role::Control),
            ("operator", ..) => Some(Role::Operator),
            ("node", Some(n), ..) => Some(Role::Node(n.clone())),
            ("integration", _, Some(id), Some(owner)) => Some(Role::Integration {
                id: id.clone(),
                owner: owner.clone(),
            }),
            _ => None,
        }
    }

    /// Reads a credentials file, refusing one others may read.
    pub fn read(path: &Path) -> Result<Self, CredsError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let io = |source| CredsError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CredsError::Mode(shown));
        }
        let text = std::fs::read(path).map_err(io)?;
        let creds: Creds = serde_json::from_slice(&text).map_err(|e| CredsError::Invalid {
            path: shown.clone(),
            // serde's message names a position, never the content.
            reason: format!(
                "not a credentials object (line {}, column {})",
                e.line(),
                e.column()
            ),
        })?;
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if !token_ok(&creds.user) || !token_ok(&creds.inbox_prefix) || creds.password.is_empty() {
            return Err(CredsError::Invalid {
                path: shown,
                reason: "user, password and inboxPrefix must be set (user and inbox prefix: letters, digits, - and _)".to_owned(),
            });
        }
        Ok(creds)
    }

    /// Writes the file with mode 0600 (replacing any file there atomically).
    pub fn write(&self, path: &Path) -> Result<(), CredsError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| CredsError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_private(path, &text).map_err(|source| CredsError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Connect options presenting these credentials.
    pub fn connect_options(
        &self,
        options: async_nats::ConnectOptions,
    ) -> async_nats::ConnectOptions {
        options
            .user_and_password(self.user.clone(), self.password.clone())
            .custom_inbox_prefix(self.inbox_prefix.clone())
    }

    /// The server-side entry for these credentials.
    pub fn server_user(&self, subjects: &Subjects) -> Result<ServerUser, String> {
        let role = self
            .role()
            .ok_or_else(|| format!("credentials of user {} name no known role", self.user))?;
        Ok(ServerUser {
            user: self.user.clone(),
            password_hash: hash_password(&self.password)?,
            permissions: Permissions::for_role(&role, subjects, &self.inbox_prefix),
        })
    }
}

/// How often a client pings its server. A server that stops answering (a
/// network cut, a paused process) is given up after two unanswered pings,
/// so within about three intervals the client moves to another server of
/// the cluster; the client's own default (two minutes between pings) left
/// every component stuck on a cut-off server for minutes.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to `servers` as `creds` (anonymously when `None`), failing
/// rather than retrying when no server answers at first.
pub async fn connect(
    servers: Vec<async_nats::ServerAddr>,
    name: &str,
    creds: Option<&Creds>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .ping_interval(PING_INTERVAL)
        .connection_timeout(std::time::Duration::from_secs(5));
    if let Some(c) = creds {
        options = c.connect_options(options);
    }
    options.connect(servers).await
}

/// Writes `bytes` to `path` with mode 0600 (its directory, when made,
/// 0700) through a temporary file and a rename, so a reader never sees
/// half a file and the mode is never wider.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::write_whole(path, bytes, 0o600, 0o700)
}

/// What one user may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (nothing else).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (nothing else).
    pub subscribe: Vec<String>,
    /// May answer requests sent to it (publish once to a received reply subject).
    pub allow_responses: bool,
}

/// The JetStream API subjects (`$JS.API.<op>.<stream>`) for each stream.
fn per_stream(ops: &[&str], streams: &[String]) -> Vec<String> {
    ops.iter()
        .flat_map(|op| streams.iter().map(move |s| format!("$JS.API.{op}.{s}")))
        .collect()
}

impl Permissions {
    /// The permissions of `role` under `subjects`, replies on `inbox`.
    pub fn for_role(role: &Role, subjects: &Subjects, inbox: &str) -> Self {
        let p = subjects.prefix();
        let inbox_sub = format!("{inbox}.>");
        let events = subjects.events_stream();
        let work = subjects.work_stream();
        match role {
            Role::Control => {
                let streams = [
                    events.clone(),
                    work.clone(),
                    subjects.dead_letter_stream(),
                    subjects.work_advisory_stream(),
                    subjects.snapshot_stream(),
                    // The router's certificate store.
                    subjects.certificate_stream(),
                    subjects.logs_stream(),
                    subjects.metrics_stream(),
                    subjects.webhook_sends_stream(),
                ];
                let mut publish = vec![
                    format!("{p}.evt.>"),
                    format!("{p}.work.>"),
                    // The router's request samples.
                    format!("{p}.metrics.http.>"),
                    // The scheduler's lines about a deploy in the
                    // service's logs.
                    subjects.logs_all(),
                    format!("{p}.dlq.>"),
                    format!("{p}.events.>"),
                    // What sending to each webhook gave.
                    subjects.webhook_sends_all(),
                    subjects.resolver_check(),
                    // Commands run in instances, through their nodes.
                    subjects.exec_all(),
                    // Terminals in instances: opened, then typed into.
                    subjects.shell_all(),
                    subjects.shell_inputs_all(),
                    format!("$KV.{}.>", subjects.snapshot_bucket()),
                    format!("$KV.{}.>", subjects.certificate_bucket()),
                    "$JS.API.INFO".to_owned(),
                    "$JS.FC.>".to_owned(),
                ];
                publish.extend(per_stream(
                    &[
                        "STREAM.INFO",
                        "STREAM.CREATE",
                        "STREAM.UPDATE",
                        "STREAM.MSG.GET",
                        "DIRECT.GET",
                        "CONSUMER.CREATE",
                        "CONSUMER.NAMES",
                    ],
                    &streams,
                ));
                publish.extend(
                    per_stream(
                        &[
                            "DIRECT.GET",
                            "CONSUMER.CREATE",
                            "CONSUMER.DURABLE.CREATE",
                            "CONSUMER.INFO",
                            "CONSUMER.DELETE",
                            "CONSUMER.MSG.NEXT",
                        ],
                        &streams,
                    )
                    .into_iter()
                    .map(|s| format!("{s}.>")),
                );
                // Parking a dead letter removes it from the work queue.
                publish.push(format!("$JS.API.STREAM.MSG.DELETE.{work}"));
                publish.push(format!(
                    "$JS.API.STREAM.MSG.DELETE.{}",
                    subjects.work_advisory_stream()
                ));
                publish.extend(streams.iter().map(|s| format!("$JS.ACK.{s}.>")));
                Permissions {
                    publish,
                    subscribe: vec![
                        format!("{p}.>"),
                        inbox_sub,
                        // The advisories the dead-letter road captures are
                        // read from their stream, not subscribed to.
                    ],
                    allow_responses: true,
                }
            }
            Role::Node(node) => {
                let queue = subjects.work(&Subjects::node_queue(node));
                let consumer = Subjects::node_consumer(node);
                let mut publish = vec![
                    format!("{p}.evt.service.*"),
                    format!("{p}.evt.node.{node}"),
                    subjects.heartbeat(),
                    subjects.logs_all(),
                    // The output of terminals in its own instances.
                    subjects.shell_outputs(node),
                    // Its own resource samples, of any service it runs.
                    format!("{p}.metrics.usage.*.{node}"),
                    subjects.dead_letter(&consumer),
                    "$JS.API.INFO".to_owned(),
                    // Loading aggregates (direct gets from 2.10, message
                    // gets before).
                    format!("$JS.API.DIRECT.GET.{events}"),
                    format!("$JS.API.DIRECT.GET.{events}.>"),
                    format!("$JS.API.STREAM.MSG.GET.{events}"),
                    // Following the nodes and the services (where other
                    // nodes' private instances are) through ordered
                    // consumers: ephemeral ones, made without a name (the
                    // server refuses a durable one made so; a durable
                    // needs its name in the subject, which is not
                    // allowed). It may read the log anyway, by direct gets.
                    format!("$JS.API.CONSUMER.CREATE.{events}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{events}.*"),
                    // Its own queue, through its own durable consumer.
                    format!("$JS.API.CONSUMER.CREATE.{work}.{consumer}.{queue}"),
                    format!("$JS.API.CONSUMER.INFO.{work}.{consumer}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{work}.{consumer}"),
                    format!("$JS.ACK.{work}.{consumer}.>"),
                ];
                // Opening the store checks that every stream exists.
                publish.extend(per_stream(
                    &["STREAM.INFO"],
                    &[
                        events.clone(),
                        work.clone(),
                        subjects.dead_letter_stream(),
                        subjects.work_advisory_stream(),
                        subjects.snapshot_stream(),
                    ],
                ));
                Permissions {
                    publish,
                    // Commands for its own instances, answered once each;
                    // terminals opened in them, and what is typed there.
                    subscribe: vec![
                        inbox_sub,
                        subjects.exec(node),
                        subjects.shell(node),
                        subjects.shell_inputs(node),
                    ],
                    allow_responses: true,
                }
            }
            Role::Operator => Permissions {
                publish: vec![],
                subscribe: vec![format!("{p}.evt.service.*"), inbox_sub],
                allow_responses: false,
            },
            Role::Integration { owner, .. } => Permissions {
                publish: CommandKind::ALL
                    .iter()
                    .map(|k| subjects.command(owner, *k))
                    .collect(),
                subscribe: vec![subjects.owner_events(owner), inbox_sub],
                allow_responses: false,
            },
        }
    }
}

/// One user in the server's `authorization` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    /// User name.
    pub user: String,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// What it may do.
    pub permissions: Permissions,
}

fn quote(s: &str) -> String {
    // Every value is ours (subjects from a validated prefix and ids, bcrypt
    // hashes); quoting keeps `$` from being read as a variable.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// The server config's `authorization` block: only these users, each with
/// its permissions; anonymous clients are refused.
pub fn authorization_block(users: &[ServerUser]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for u in users {
        let p = &u.permissions;
        // An empty allow list means "allow all" to nats-server: deny
        // everything explicitly instead.
        let publish = if p.publish.is_empty() {
            "{ deny: [\">\"] }".to_owned()
        } else {
            format!("{{ allow: {} }}", list(&p.publish))
        };
        let subscribe = if p.subscribe.is_empty() {
            "{ deny: [\">\"] }".to_owned()
        } else {
            format!("{{ allow: {} }}", list(&p.subscribe))
        };
        let responses = if p.allow_responses {
            "\n        allow_responses: true"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {{\n      user: {}\n      password: {}\n      permissions: {{\n        publish: {publish}\n        subscribe: {subscribe}{responses}\n      }}\n    }}\n",
            quote(&u.user),
            quote(&u.password_hash),
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// The credentials `berth up` keeps for a role, under `<data>/nats-creds/`.
pub fn creds_path(data_dir: &Path, role: &Role) -> PathBuf {
    let name = match role {
        Role::Control => "control.json".to_owned(),
        Role::Operator => "operator.json".to_owned(),
        Role::Node(_) => "node.json".to_owned(),
        Role::Integration { id, .. } => format!("integration-{id}.json"),
    };
    data_dir.join(CREDS_DIR).join(name)
}

/// Reads the credentials at `path`, or creates them for `role` (mode 0600)
/// when there are none or they are for another node.
pub fn load_or_create(path: &Path, role: &Role, subjects: &Subjects) -> Result<Creds, CredsError> {
    if path.exists() {
        let creds = Creds::read(path)?;
        if creds.role().as_ref() == Some(role) {
            return Ok(creds);
        }
    }
    let creds = Creds::generate(role, subjects);
    creds.write(path)?;
    Ok(creds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn creds_round_trip_with_mode_0600_and_never_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("node.json");
        let node = NodeId::generate();
        let creds = Creds::generate(&Role::Node(node.clone()), &Subjects::default());
        creds.write(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Creds::read(&path).unwrap();
        assert_eq!(back.role(), Some(Role::Node(node)));
        assert_eq!(back.password, creds.password);
        assert!(!format!("{back:?}").contains(&creds.password));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Creds::read(&path), Err(CredsError::Mode(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"{\"password\": \"hunter2\"").unwrap();
        let err = Creds::read(&path).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn nodes_get_only_their_own_queue_and_integrations_their_owner() {
        let s = Subjects::default();
        let node = NodeId::generate();
        let p = Permissions::for_role(&Role::Node(node.clone()), &s, "_INBOX_n");
        assert!(p
            .publish
            .contains(&format!("$JS.API.CONSUMER.MSG.NEXT.BERTH_WORK.node-{node}")));
        assert!(!p.publish.iter().any(|s| s.contains("STREAM.DELETE")
            || s.contains("STREAM.PURGE")
            || s.contains("STREAM.CREATE")
            || s.contains("evt.owner")
            || s.contains("evt.credential")
            || s.contains("webhooks")
            || s.contains("WEBHOOK")
            || s == "berth.evt.>"));
        // The control plane records webhook sends and reads them back.
        let c = Permissions::for_role(&Role::Control, &s, "_INBOX_c");
        assert!(c.publish.contains(&s.webhook_sends_all()));
        assert!(c.publish.contains(&format!(
            "$JS.API.STREAM.CREATE.{}",
            s.webhook_sends_stream()
        )));
        let owner: OwnerId = "usr-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        let p = Permissions::for_role(
            &Role::Integration {
                id: IntegrationId::generate(),
                owner: owner.clone(),
            },
            &s,
            "_INBOX_i",
        );
        assert_eq!(
            p.publish,
            vec![
                format!("berth.cmd.{owner}.scale"),
                format!("berth.cmd.{owner}.restart"),
                format!("berth.cmd.{owner}.deploy"),
            ]
        );
        assert_eq!(
            p.subscribe,
            vec![format!("berth.events.{owner}.>"), "_INBOX_i.>".to_owned()]
        );
    }

    #[test]
    fn the_block_denies_what_an_empty_list_would_allow() {
        let block = authorization_block(&[ServerUser {
            user: "operator".into(),
            password_hash: "$2b$06$abc".into(),
            permissions: Permissions::default(),
        }]);
        assert!(block.contains("publish: { deny: [\">\"] }"), "{block}");
        assert!(block.contains("password: \"$2b$06$abc\""), "{block}");
        let hash = hash_password("pw").unwrap();
        assert!(bcrypt::verify("pw", &hash).unwrap());
    }
}

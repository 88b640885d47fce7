//! Commands internal services publish on the bus (`…cmd.scale`, `…cmd.restart`,
//! `…cmd.deploy`), MessagePack with named fields. Each carries a request id
//! that becomes the idempotency key of the resulting append, so a command
//! published twice acts once.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CredentialId, CronRunId, DeployId, InstanceId, JobId, OwnerId, ServiceId};
use crate::model::{EnvVars, Plan, PullFailureReason, ResolvedImage, Sealed, SecretFiles};

/// Scale a service to a number of instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleCommand {
    pub request_id: String,
    pub service: ServiceId,
    pub num_instances: u32,
}

/// Restart every instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartCommand {
    pub request_id: String,
    pub service: ServiceId,
}

/// Deploy a service: its configured image, or a tag/digest of the same repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployCommand {
    pub request_id: String,
    pub service: ServiceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

/// Request/reply on `…resolver.check` (core NATS, queue group `resolver`):
/// can `owner` pull `image` with `credential`? Asked by ingress before a
/// service is created (SPEC §4). The credential travels as its id; the
/// resolver opens the sealed token itself, so no secret is on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCheckRequest {
    pub owner: OwnerId,
    /// Normalised image reference.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialId>,
}

/// The resolver's answer to an [`ImageCheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ImageCheckReply {
    /// The image is accessible and meets SPEC §5.
    Accessible { image: ResolvedImage },
    /// It is not: SPEC §9's reason and a message that names no secret.
    Failed {
        reason: PullFailureReason,
        message: String,
    },
}

/// What a node needs to run one container of a service: the exact digest
/// to pull, how to reach it, and the service's process settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRunSpec {
    pub service: ServiceId,
    /// The deploy this run belongs to (the events' correlation id).
    pub deploy: DeployId,
    /// The instance (also the container id).
    pub instance: InstanceId,
    /// The image's normalised name without tag or digest, e.g.
    /// `registry.example.com/team/app` or `docker.io/library/alpine`; the
    /// node pulls from that registry's API host.
    pub image: String,
    /// The resolved linux/amd64 manifest digest: exactly what runs.
    pub digest: String,
    /// The registry credential the pull uses. The node checks it is live,
    /// the service owner's and made for the image's registry, as the
    /// resolver does, and pulls with `login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialId>,
    /// The credential's username and token, sealed to the node's public key
    /// with `seal_context::node_login(node, service, instance, credential)`.
    /// Absent when the composer could not open the credential; the pull is
    /// then `unauthorized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Sealed>,
    /// Each value sealed to the node's public key with
    /// `seal_context::node_env_var(node, service, instance, name)`: only
    /// the node the item is for opens them, and only for this instance.
    #[serde(default)]
    pub env: EnvVars,
    /// Each secret file's content sealed to the node's public key with
    /// `seal_context::node_secret_file(node, service, instance, name)`.
    /// Absent when there are none, so a node from before secret files
    /// takes every item of a service without them.
    #[serde(default, skip_serializing_if = "SecretFiles::is_empty")]
    pub files: SecretFiles,
    /// Replaces the image's Cmd (shell words), Entrypoint kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Set: the instance listens (web and private services), on this
    /// port in its own network namespace unless the service's env sets
    /// `PORT` or the image exposes exactly one TCP port. The node
    /// publishes a web instance's port on a host port and reports
    /// `<advertise addr>:<host port>` as `instance_started.addr` (a
    /// private instance: its own address); the service's type and health
    /// check path, which choose the node's health check, are read from
    /// the service's own log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// SIGTERM → SIGKILL delay on stop, seconds (SPEC §6: 1–300).
    pub shutdown_delay_secs: u32,
    /// The service's disk's latest restore: the node copies its snapshot
    /// over the disk before the instance mounts it, unless it did so for
    /// this restore already. Absent when the disk was never restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_restore: Option<crate::model::DiskRestore>,
}

/// Work for one node, on the durable queue `work.node.<node id>`
/// (MessagePack). Redelivery is expected: a node acts on each at most once.
/// The secrets an item carries are sealed to that node's key, never to the
/// installation's: a node holds only what its work needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeWork {
    /// Pull the digest (manifest always fetched) and start a service instance.
    RunInstance(NodeRunSpec),
    /// Stop an instance (SIGTERM, then SIGKILL after its shutdown delay).
    StopInstance {
        service: ServiceId,
        instance: InstanceId,
    },
    /// Pull and run a one-off container (pre-deploy command, cron run).
    RunOnce {
        spec: NodeRunSpec,
        timeout_secs: u32,
        /// What the run's outcome is recorded as; `None`: only logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        purpose: Option<OneOffPurpose>,
        /// The stream sequence of the commit the run was dispatched for:
        /// the node reads the service at least that far before deciding
        /// the run is still wanted (0: as far as the log answers).
        #[serde(default, skip_serializing_if = "is_zero")]
        seen: u64,
    },
}

/// Why a one-off container runs, which decides the fact its end becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OneOffPurpose {
    /// The deploy's pre-deploy command → `pre_deploy_ended`.
    PreDeploy,
    /// A cron job run → `cron_job_run_ended`.
    CronRun { run: CronRunId },
    /// A one-off job → `job_started`, then `job_ended`.
    Job { job: JobId },
}

/// Bytes kept of each of a command's output streams: both, base64, fit a
/// NATS message of the default 1 MiB with room to spare.
pub const EXEC_OUTPUT_LIMIT: usize = 256 * 1024;
/// Bytes of standard input a command may be given (with the command, it
/// fits the API's 64 KiB request body).
pub const EXEC_STDIN_LIMIT: usize = 32 * 1024;
/// The longest a command may run, in seconds.
pub const EXEC_TIMEOUT_MAX_SECS: u32 = 600;

/// Why `command` with `timeout_secs` is not one a node may be asked to
/// run (`"command"` or `"timeoutSeconds"`, and what is wrong): the rules
/// the API checks before sending and the node again on receipt.
pub fn exec_refusal(command: &[String], timeout_secs: u32) -> Option<(&'static str, String)> {
    let bad = |why: &str| Some(("command", why.to_owned()));
    match command.first() {
        None => return bad("must name a program"),
        Some(p) if p.is_empty() || p.starts_with('-') => {
            return bad("must start with a program name")
        }
        Some(_) => {}
    }
    if command.iter().any(|a| a.contains('\0')) {
        return bad("contains a NUL byte");
    }
    if !(1..=EXEC_TIMEOUT_MAX_SECS).contains(&timeout_secs) {
        return Some((
            "timeoutSeconds",
            format!("must be 1 to {EXEC_TIMEOUT_MAX_SECS}"),
        ));
    }
    None
}

/// A command to run in one running instance, as its own process runs
/// (core NATS request to the instance's node, `<prefix>.exec.<node>`;
/// only the control plane may send one). The node answers with an
/// [`ExecReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// The service the instance belongs to (the node checks it does).
    pub service: ServiceId,
    pub instance: InstanceId,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Standard input, base64; empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdin: String,
    /// Killed after this many seconds (1 to [`EXEC_TIMEOUT_MAX_SECS`]).
    pub timeout_secs: u32,
}

/// Why a node did not run an [`ExecRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecFailure {
    /// The instance is not on this node, or not the service's.
    NotFound,
    /// The instance is here but its process is not running now.
    NotRunning,
    /// The request itself is not valid (no program, bad base64, limits).
    Invalid,
    /// The runtime could not start the command (no such program, …).
    Failed,
}

/// A node's answer to an [`ExecRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ExecReply {
    /// It ran.
    #[serde(rename_all = "camelCase")]
    Ran {
        /// Its exit code (128 + the signal for one killed by a signal);
        /// none when it timed out.
        exit_code: Option<i32>,
        /// Killed at its timeout.
        timed_out: bool,
        /// Standard output, base64, the first [`EXEC_OUTPUT_LIMIT`] bytes.
        stdout: String,
        /// Standard error, likewise.
        stderr: String,
        /// Whether either said more than was kept.
        truncated: bool,
    },
    /// It did not run.
    Failed {
        reason: ExecFailure,
        /// What went wrong; never the command's input.
        message: String,
    },
}

/// Bytes of terminal output one [`ShellOutput`] carries at most.
pub const SHELL_CHUNK: usize = 16 * 1024;
/// Bytes of terminal input one [`ShellInput`] carries at most.
pub const SHELL_INPUT_LIMIT: usize = 64 * 1024;
/// Output messages a node sends ahead of the control plane's
/// [`ShellInputEvent::Ack`] (flow control: a slow reader slows the
/// command, nothing is dropped).
pub const SHELL_WINDOW: u64 = 64;
/// Each side sends [`ShellInputEvent::Ping`] / [`ShellOutputEvent::Ping`]
/// after this long without sending anything else, in seconds.
pub const SHELL_PING_SECS: u64 = 10;
/// A side that hears nothing from the other for this long ends the
/// session, in seconds.
pub const SHELL_IDLE_SECS: u64 = 30;

/// Whether `session` is a valid session name: 32 lower-case hex digits
/// (a random 128-bit number, one subject token).
pub fn valid_session(session: &str) -> bool {
    session.len() == 32
        && session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Opening a terminal in one running instance (`berth shell`, the
/// dashboard's terminal): a core NATS request to the instance's node,
/// `<prefix>.shell.<node>`, sent by the control plane only. The node
/// answers with a [`ShellReply`]; the session's input then comes on
/// `<prefix>.shell.<node>.<session>.in` ([`ShellInput`]) and its output
/// goes to `<prefix>.shell.<node>.<session>.out` ([`ShellOutput`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShellRequest {
    /// The service the instance belongs to (the node checks it does).
    pub service: ServiceId,
    pub instance: InstanceId,
    /// The program and its arguments (`sh` when a user names none).
    pub command: Vec<String>,
    /// The session's name ([`valid_session`]).
    pub session: String,
    /// The terminal's size.
    pub cols: u16,
    pub rows: u16,
}

/// A node's answer to a [`ShellRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ShellReply {
    /// The command runs on a terminal; its output follows.
    Started,
    /// It did not start.
    Failed {
        reason: ExecFailure,
        /// What went wrong.
        message: String,
    },
}

/// One message of a session's input, numbered from 1 without gaps (a gap
/// means one was lost: the node ends the session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShellInput {
    pub seq: u64,
    pub event: ShellInputEvent,
}

/// What one [`ShellInput`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShellInputEvent {
    /// Bytes typed (base64, at most [`SHELL_INPUT_LIMIT`] decoded).
    Data { data: String },
    /// The terminal's new size.
    Resize { cols: u16, rows: u16 },
    /// Output up to this sequence number was delivered.
    Ack { upto: u64 },
    /// Still there.
    Ping,
    /// The user left: the command is hung up on (SIGHUP), then killed.
    Close,
}

/// One message of a session's output, numbered from 1 without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShellOutput {
    pub seq: u64,
    pub event: ShellOutputEvent,
}

/// What one [`ShellOutput`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShellOutputEvent {
    /// Bytes the terminal showed (base64, at most [`SHELL_CHUNK`]).
    Data { data: String },
    /// Still there.
    Ping,
    /// The command ended: its exit code (128 + the signal for one
    /// killed by a signal). The last message of the session.
    #[serde(rename_all = "camelCase")]
    Exited { exit_code: i32 },
    /// The session ended for another reason (input lost, nothing heard
    /// from the control plane); the command was hung up on and killed.
    /// The last message of the session.
    Ended { message: String },
}

/// Name and JSON Schema of every command.
pub fn command_types() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("scale", schemars::schema_for!(ScaleCommand)),
        ("restart", schemars::schema_for!(RestartCommand)),
        ("deploy", schemars::schema_for!(DeployCommand)),
        (
            "image_check_request",
            schemars::schema_for!(ImageCheckRequest),
        ),
        ("image_check_reply", schemars::schema_for!(ImageCheckReply)),
        ("node_work", schemars::schema_for!(NodeWork)),
        ("exec_request", schemars::schema_for!(ExecRequest)),
        ("exec_reply", schemars::schema_for!(ExecReply)),
        ("shell_request", schemars::schema_for!(ShellRequest)),
        ("shell_reply", schemars::schema_for!(ShellReply)),
        ("shell_input", schemars::schema_for!(ShellInput)),
        ("shell_output", schemars::schema_for!(ShellOutput)),
    ]
}

/// Whether a sequence is 0, the default left out of encodings.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

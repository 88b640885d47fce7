//! The vocabulary shared by events, commands and the API: Render's enum
//! values and field names (snake_case values, camelCase fields).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The four kinds of service (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    /// Public HTTP, routed at `<name>.<base-domain>`.
    WebService,
    /// Reachable only by the owner's other services.
    PrivateService,
    /// No inbound traffic.
    BackgroundWorker,
    /// Runs its command on a schedule.
    CronJob,
}

/// Why obtaining a custom domain's certificate failed, in terms an owner
/// can act on (no internal connection errors are ever echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateFailure {
    /// The certificate authority could not be reached or answered with a
    /// server error.
    CaUnavailable,
    /// The certificate authority fetched the HTTP-01 challenge and did not
    /// get the expected answer (DNS not pointing at berth, or a proxy in
    /// front answering instead).
    ChallengeFailed,
    /// The certificate authority refused the name (policy, CAA, rate limit).
    Rejected,
    /// The certificate authority took too long to validate or issue.
    TimedOut,
    /// The certificate store (NATS) could not be read or written.
    StoreUnavailable,
}

impl CertificateFailure {
    /// The value as the API and events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateFailure::CaUnavailable => "ca_unavailable",
            CertificateFailure::ChallengeFailed => "challenge_failed",
            CertificateFailure::Rejected => "rejected",
            CertificateFailure::TimedOut => "timed_out",
            CertificateFailure::StoreUnavailable => "store_unavailable",
        }
    }
}

/// Deploy statuses, Render's values (SPEC §6, §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Recorded, not yet admitted.
    Created,
    /// Waiting for the service's running deploy to end.
    Queued,
    /// Resolving and pulling, then starting new instances and health checks.
    UpdateInProgress,
    /// Serving.
    Live,
    /// Was live; replaced by a newer live deploy.
    Deactivated,
    /// Failed to resolve, pull, start or pass health checks.
    UpdateFailed,
    /// Canceled explicitly, by the `cancel` overlap policy, or superseded.
    Canceled,
    /// The pre-deploy command is running.
    PreDeployInProgress,
    /// The pre-deploy command failed or timed out.
    PreDeployFailed,
}

impl DeployStatus {
    /// A deploy in this status will not change again (except live → deactivated).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeployStatus::Deactivated
                | DeployStatus::UpdateFailed
                | DeployStatus::Canceled
                | DeployStatus::PreDeployFailed
        )
    }
}

/// The finer phase of a deploy in progress (berth's own, beside Render's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    /// Tag → digest, platform, size.
    Resolving,
    /// Fetching layers onto nodes.
    Pulling,
    /// Running the pre-deploy command.
    PreDeploy,
    /// Starting new instances and waiting for health checks.
    Updating,
}

/// What started a deploy: Render's trigger names, plus `service_created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployTrigger {
    /// The initial deploy of a new service.
    ServiceCreated,
    /// A CI pipeline called the deploy hook.
    DeployHook,
    /// "Deploy latest reference" from the CLI.
    Manual,
    /// `POST /v1/services/{id}/deploys` or a bus `deploy` command.
    Api,
    /// A rollback to an earlier deploy's digest.
    Rollback,
    /// The service's settings changed.
    ServiceUpdated,
    /// The service was resumed.
    ServiceResumed,
}

/// What to do with a deploy request while another deploy runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Queue it; when the running deploy ends only the newest queued one runs.
    #[default]
    Wait,
    /// Cancel the running deploy at once and start the new one.
    Cancel,
}

/// Which deploy notifications a service sends (Render's values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifySetting {
    /// Every deploy outcome.
    All,
    /// Failures only.
    #[default]
    Failure,
    /// Nothing.
    None,
}

/// Why an image could not be resolved or pulled (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullFailureReason {
    /// Deleted, or unknown tag or digest.
    ImageNotFound,
    /// Credential missing, invalid or revoked.
    Unauthorized,
    /// Unreachable, timeout or 5xx after bounded retries.
    RegistryUnavailable,
    /// No linux/amd64 variant.
    UnsupportedPlatform,
    /// Compressed size over the limit.
    ImageTooLarge,
    /// A blob's bytes do not match its digest or size.
    DigestMismatch,
    /// A layer or the config refused as unsafe or malformed (path escape,
    /// device node, oversized header, expansion bomb, unreadable archive).
    InvalidImage,
}

impl fmt::Display for PullFailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PullFailureReason::ImageNotFound => "image_not_found",
            PullFailureReason::Unauthorized => "unauthorized",
            PullFailureReason::RegistryUnavailable => "registry_unavailable",
            PullFailureReason::UnsupportedPlatform => "unsupported_platform",
            PullFailureReason::ImageTooLarge => "image_too_large",
            PullFailureReason::DigestMismatch => "digest_mismatch",
            PullFailureReason::InvalidImage => "invalid_image",
        };
        f.write_str(s)
    }
}

/// Registries a credential can be for (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegistryKind {
    /// Docker Hub (token or account password).
    Docker,
    /// GitHub Container Registry.
    Github,
    /// GitLab Container Registry.
    Gitlab,
    /// Google Artifact Registry.
    GoogleArtifact,
    /// Any other registry host, e.g. a self-hosted one.
    Generic,
}

/// A secret sealed with the operator's key, or to one node's public key
/// (AEAD either way; `kid` says which key). Only the ciphertext ever
/// travels; the `Debug` form shows nothing of it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    /// Key id, so keys can be rotated.
    pub kid: String,
    /// Nonce ‖ ciphertext ‖ tag, base64.
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(kid={}, …)", self.kid)
    }
}

/// The associated data each kind of sealed value is bound to (see
/// `berth_runtime::secrets`): a ciphertext copied into another aggregate or
/// field does not open. Writers and readers of a sealed field must agree on
/// these, so they live in the contract.
pub mod seal_context {
    use crate::ids::{CredentialId, InstanceId, NodeId, ServiceId};

    /// A registry credential's token.
    pub fn credential_token(id: &CredentialId) -> String {
        format!("credential:{id}:token")
    }

    /// A service's deploy hook key.
    pub fn hook_key(service: &ServiceId) -> String {
        format!("service:{service}:hook_key")
    }

    /// The value of one of a service's environment variables.
    pub fn env_var(service: &ServiceId, name: &str) -> String {
        format!("service:{service}:env:{name}")
    }

    /// The content of one of a service's secret files.
    pub fn secret_file(service: &ServiceId, name: &str) -> String {
        format!("service:{service}:secret_file:{name}")
    }

    /// A secret file's content in a work item for `node`, sealed to that
    /// node's key: it opens on that node, for that instance only.
    pub fn node_secret_file(
        node: &NodeId,
        service: &ServiceId,
        instance: &InstanceId,
        name: &str,
    ) -> String {
        format!("node:{node}:service:{service}:instance:{instance}:secret_file:{name}")
    }

    /// One of an owner's notification channel secrets (`slack_webhook_url`,
    /// `webhook_url`, `webhook_secret`).
    pub fn notification(owner: &crate::ids::OwnerId, field: &str) -> String {
        format!("owner:{owner}:notify:{field}")
    }

    /// A field (`url`, `secret`) of one of an owner's webhooks.
    pub fn webhook(
        owner: &crate::ids::OwnerId,
        webhook: &crate::ids::WebhookId,
        field: &str,
    ) -> String {
        format!("owner:{owner}:webhook:{webhook}:{field}")
    }

    /// An owner's log stream token.
    pub fn owner_log_stream_token(owner: &crate::ids::OwnerId) -> String {
        format!("owner:{owner}:log_stream:token")
    }

    /// A service's log stream override token.
    pub fn service_log_stream_token(service: &ServiceId) -> String {
        format!("service:{service}:log_stream:token")
    }

    /// An environment variable's value in a work item for `node`, sealed
    /// to that node's key: it opens on that node, for that instance only.
    pub fn node_env_var(
        node: &NodeId,
        service: &ServiceId,
        instance: &InstanceId,
        name: &str,
    ) -> String {
        format!("node:{node}:service:{service}:instance:{instance}:env:{name}")
    }

    /// The registry login (username and token) of `credential` in a work
    /// item for `node`, sealed to that node's key.
    pub fn node_login(
        node: &NodeId,
        service: &ServiceId,
        instance: &InstanceId,
        credential: &CredentialId,
    ) -> String {
        format!("node:{node}:service:{service}:instance:{instance}:login:{credential}")
    }
}

/// An instance type: CPU and memory limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Render's plan name (`starter`, `standard`, …).
    pub name: String,
    /// CPU limit in millicores.
    pub cpu_millis: u32,
    /// Memory limit in MiB.
    pub memory_mib: u32,
}

/// A service's persistent disk (Render's `disk`): a filesystem of its own
/// size on one node, mounted in the service's instance at `mount_path`,
/// kept across restarts and deploys until the service is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub id: crate::ids::DiskId,
    pub name: String,
    /// An absolute path in the instance (not `/`, nor below `/proc`,
    /// `/sys` or `/dev`).
    pub mount_path: String,
    /// Its size in GB (GiB: 2^30 bytes).
    pub size_gb: u32,
}

/// A service's disk set back to one of its snapshots: the node the disk is
/// on copies the snapshot over the disk before the next instance mounts
/// it, once per `number` (the restores of a disk are counted, so the same
/// snapshot restored twice is copied twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskRestore {
    pub disk: crate::ids::DiskId,
    pub key: crate::ids::DiskSnapshotKey,
    /// 1 for the disk's first restore, then one more for each.
    pub number: u32,
}

/// Whether log lines are sent to a log stream or dropped (Render's
/// `LogStreamSetting` and `LogStreamPreviewSetting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStreamSetting {
    /// Forward the lines.
    Send,
    /// Do not forward them.
    Drop,
}

/// An owner's log stream: every line its services write is sent to a
/// TLS syslog endpoint (RFC 5424 over TCP), as Render's log streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStream {
    /// `HOST:PORT` (an IPv6 address in brackets).
    pub endpoint: String,
    /// Written before each line when set (providers that share one
    /// endpoint among accounts tell theirs apart by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Sealed>,
    /// Render's setting for preview environments; berth has none, so it
    /// is kept and shown and changes nothing.
    pub preview: LogStreamSetting,
}

/// A service's override of its owner's log stream: `drop` sends none of
/// its lines, `send` sends them to an endpoint of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStreamOverride {
    pub setting: LogStreamSetting,
    /// Present exactly when `setting` is `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Sealed>,
}

/// A service's autoscaling (Render's `AutoscalingConfig`): berth keeps its
/// instance count between `min` and `max`, adding instances when their
/// average use of their plan's CPU or memory is well above a criterion's
/// percentage and removing them when it has stayed well below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingConfig {
    /// Off: the service keeps the count it has.
    #[serde(default)]
    pub enabled: bool,
    pub min: u32,
    pub max: u32,
    pub criteria: AutoscalingCriteria,
}

impl AutoscalingConfig {
    /// On, between `min` and `max`, on each criterion given a target
    /// (percent); one not given is off (kept at 70 %, Render's default).
    pub fn on(min: u32, max: u32, cpu: Option<u32>, memory: Option<u32>) -> Self {
        let criterion = |target: Option<u32>| AutoscalingCriterion {
            enabled: target.is_some(),
            percentage: target.unwrap_or(70),
        };
        AutoscalingConfig {
            enabled: true,
            min,
            max,
            criteria: AutoscalingCriteria {
                cpu: criterion(cpu),
                memory: criterion(memory),
            },
        }
    }
}

impl std::fmt::Display for AutoscalingConfig {
    /// In words: `autoscaling between 1 and 4 instances, keeping CPU at
    /// 70 %` (or `autoscaling off`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.enabled {
            return f.write_str("autoscaling off");
        }
        let mut on = Vec::new();
        for (name, c) in [
            ("CPU", &self.criteria.cpu),
            ("memory", &self.criteria.memory),
        ] {
            if c.enabled {
                on.push(format!("{name} at {} %", c.percentage));
            }
        }
        write!(
            f,
            "autoscaling between {} and {} instances, keeping {}",
            self.min,
            self.max,
            on.join(" and ")
        )
    }
}

/// A web service's maintenance mode (Render's `maintenanceMode`): while
/// on, the router answers its requests with a 503 maintenance page (which
/// sends browsers to `uri` when one is set) instead of passing them on;
/// its instances keep running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceMode {
    #[serde(default)]
    pub enabled: bool,
    /// An absolute `http(s)://` address of the page to show, or `""` for
    /// berth's own.
    #[serde(default)]
    pub uri: String,
}

/// One entry of a web service's IP allow list (Render's
/// `CidrBlockAndDescription`): a block of client addresses the router lets
/// through ([`crate::cidr::Cidr`]), and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CidrBlock {
    pub cidr_block: String,
    #[serde(default)]
    pub description: String,
}

/// What an autoscaled service is scaled on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingCriteria {
    pub cpu: AutoscalingCriterion,
    pub memory: AutoscalingCriterion,
}

/// One resource's target: the average share of the plan's limit (percent)
/// the instances should use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingCriterion {
    #[serde(default)]
    pub enabled: bool,
    pub percentage: u32,
}

/// Environment variables; values may be secrets, so they are sealed.
pub type EnvVars = BTreeMap<String, Sealed>;

/// Secret files (Render's): each file's name and its content, sealed. An
/// instance finds them read-only in `/etc/secrets/<name>`.
pub type SecretFiles = BTreeMap<String, Sealed>;

/// An image as resolved: what will actually run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedImage {
    /// The linux/amd64 manifest digest (`sha256:…`): what instances run.
    pub digest: String,
    /// The index digest when the reference named a multi-platform index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Config plus layers, compressed, as listed in the manifest.
    pub compressed_size: u64,
}

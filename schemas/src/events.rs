//! Every event of the lifecycle (SPEC §3–§11), past tense, each with a type
//! name and a schema version declared once, in the table below. The type name
//! is the serde tag; `berth-gen-schemas` writes one JSON Schema file per entry.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{
    ApiKeyId, CredentialId, CronRunId, CustomDomainId, DeployId, DiskId, DiskSnapshotKey,
    InstanceId, IntegrationId, JobId, NodeId, OwnerId, ServiceId, WebhookId,
};
use crate::model::{
    AutoscalingConfig, CertificateFailure, CidrBlock, DeployStatus, DeployTrigger, Disk, EnvVars,
    LogStream, LogStreamOverride, MaintenanceMode, NotifySetting, OverlapPolicy, Plan,
    PullFailureReason, RegistryKind, ResolvedImage, Sealed, SecretFiles, ServiceType,
};

/// Declares the event structs, the `Event` enum and the table of types and
/// versions, all from one list.
macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal v $ver:literal { $($body:tt)* } )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
            #[serde(rename_all = "camelCase")]
            pub struct $variant { $($body)* }

            impl From<$variant> for Event {
                fn from(e: $variant) -> Event {
                    Event::$variant(e)
                }
            }
        )*

        /// Any event; `type` is the tag, `data` the body.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", content = "data")]
        pub enum Event {
            $( #[serde(rename = $name)] $variant($variant), )*
        }

        impl InstanceExited {
    /// An exit of `instance` that says nothing else (no status known, no
    /// kill by its node): the base the other fields are set on.
    pub fn of(instance: InstanceId) -> Self {
        Self {
            instance,
            exit_code: None,
            signal: None,
            oom_killed: false,
            memory_limit_mib: None,
            restarted: false,
            disk_written_mib: None,
            disk_limit_mib: None,
            cannot_run: None,
        }
    }
}

impl Event {
            /// The type name on the wire.
            pub fn type_name(&self) -> &'static str {
                match self { $( Event::$variant(_) => $name, )* }
            }

            /// The current schema version of this event's type.
            pub fn version(&self) -> u16 {
                match self { $( Event::$variant(_) => $ver, )* }
            }
        }

        /// Type name, version and JSON Schema of every event type.
        pub fn event_types() -> Vec<(&'static str, u16, schemars::Schema)> {
            vec![ $( ($name, $ver, schemars::schema_for!($variant)), )* ]
        }
    };
}

impl Event {
    /// The deploy this event belongs to: its envelope's correlation id.
    pub fn deploy(&self) -> Option<&DeployId> {
        match self {
            Event::DeployCreated(e) => Some(&e.deploy),
            Event::DeployQueued(e) => Some(&e.deploy),
            Event::DeployStarted(e) => Some(&e.deploy),
            Event::ImageResolved(e) => Some(&e.deploy),
            Event::ImagePullFailed(e) => e.deploy.as_ref(),
            Event::ImagePullProgressed(e) => Some(&e.deploy),
            Event::ImagePulled(e) => Some(&e.deploy),
            Event::PreDeployStarted(e) => Some(&e.deploy),
            Event::PreDeployEnded(e) => Some(&e.deploy),
            Event::UpdateStarted(e) => Some(&e.deploy),
            Event::DeployLive(e) => Some(&e.deploy),
            Event::DeployFailed(e) => Some(&e.deploy),
            Event::DeployCanceled(e) => Some(&e.deploy),
            Event::DeployDeactivated(e) => Some(&e.deploy),
            Event::RollbackTargetMissing(e) => Some(&e.deploy),
            Event::InstanceScheduled(e) => Some(&e.deploy),
            Event::PlacementBlocked(e) => Some(&e.deploy),
            _ => None,
        }
    }
}

/// Why a deploy ended `canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Someone canceled it.
    Explicit,
    /// A newer queued deploy replaced it (overlap policy `wait`).
    Superseded,
    /// A newer deploy request canceled it (overlap policy `cancel`).
    OverlapCancel,
    /// The service was suspended or deleted while it ran.
    ServiceStopped,
}

/// Reads a setting that can be cleared: `null` is `Some(None)` (clear
/// it), an absent field `None` (through `default`). Plain `Option` reads
/// `null` as absent, so a clearing written to the log would read back as
/// no change.
fn cleared<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Settings of a service that an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// New name (unique per owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New image reference, normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// New credential; `Some(None)` detaches the credential.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub credential: Option<Option<CredentialId>>,
    /// New instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// New custom command; `Some(None)` returns to the image's CMD.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub docker_command: Option<Option<String>>,
    /// Replaces all environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<EnvVars>,
    /// Replaces all secret files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_files: Option<SecretFiles>,
    /// New pre-deploy command; `Some(None)` removes it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub pre_deploy_command: Option<Option<String>>,
    /// New health check path (web services); `Some(None)` removes it
    /// (readiness is then the instance's port accepting connections).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub health_check_path: Option<Option<String>>,
    /// New cron schedule (cron jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// New per-service notification override; `Some(None)` uses the owner default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub notify: Option<Option<NotifySetting>>,
    /// New overlap policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_policy: Option<OverlapPolicy>,
    /// New shutdown delay in seconds (1–300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_delay_secs: Option<u16>,
    /// Whether plain HTTP is redirected to HTTPS (web services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// Its maintenance mode, as asked (web services). A change is recorded
    /// as `maintenance_mode_uri_updated` and `maintenance_mode_enabled`,
    /// never in `service_updated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_mode: Option<MaintenanceMode>,
    /// Replaces its IP allow list (web services): an empty list lets no
    /// one through; `Some(None)` removes it (every client again).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cleared"
    )]
    pub ip_allow_list: Option<Option<Vec<CidrBlock>>>,
}

/// Serde's default for a setting that is on unless turned off.
fn on() -> bool {
    true
}

events! {
    // ---- owner: API keys, service names, notification defaults ----

    /// An owner (user or team) was created.
    OwnerCreated = "owner_created" v 1 {
        pub owner: OwnerId,
        pub name: String,
    }
    /// An API key was issued; only its SHA-256 is kept.
    ApiKeyCreated = "api_key_created" v 1 {
        pub key: ApiKeyId,
        pub label: String,
        pub sha256: String,
    }
    /// An API key was revoked.
    ApiKeyRevoked = "api_key_revoked" v 1 {
        pub key: ApiKeyId,
    }
    /// A service name was taken within the owner (names are unique per owner).
    ServiceNameClaimed = "service_name_claimed" v 1 {
        pub name: String,
        pub service: ServiceId,
    }
    /// A service name was given back (rename or delete).
    ServiceNameReleased = "service_name_released" v 1 {
        pub name: String,
        pub service: ServiceId,
    }
    /// The owner's default notification setting and channels changed.
    NotificationSettingsChanged = "notification_settings_changed" v 1 {
        pub notify: NotifySetting,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub slack_webhook_url: Option<Sealed>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub webhook_url: Option<Sealed>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub webhook_secret: Option<Sealed>,
    }
    /// The owner's log stream was set, changed or (`stream` absent) removed.
    LogStreamChanged = "log_stream_changed" v 1 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stream: Option<LogStream>,
    }

    /// Lines could not be delivered to a log stream endpoint of the
    /// owner's (its own or a service's): the notifier could not connect,
    /// write, or open the token. Recorded once until it delivers again.
    LogStreamDeliveryFailed = "log_stream_delivery_failed" v 1 {
        pub endpoint: String,
        /// Why, in words (no token in it).
        pub error: String,
        pub failed_at: DateTime<Utc>,
    }
    /// Lines reach a log stream endpoint that was failing again.
    LogStreamDeliveryRecovered = "log_stream_delivery_recovered" v 1 {
        pub endpoint: String,
    }

    /// An integration was created: NATS credentials bound to this owner.
    /// Only the bcrypt hash of its password is kept.
    IntegrationCreated = "integration_created" v 1 {
        pub integration: IntegrationId,
        pub name: String,
        /// The NATS user.
        pub user: String,
        pub password_bcrypt: String,
    }
    /// An integration was revoked: its NATS user is removed.
    IntegrationRevoked = "integration_revoked" v 1 {
        pub integration: IntegrationId,
    }

    /// A webhook was created (Render's webhooks): the owner's service
    /// events of the types in `event_filter` (all when empty) are posted
    /// to `url`, signed with `secret`. Both are sealed.
    WebhookCreated = "webhook_created" v 1 {
        pub webhook: WebhookId,
        pub name: String,
        pub url: Sealed,
        pub secret: Sealed,
        pub enabled: bool,
        #[serde(default)]
        pub event_filter: Vec<String>,
    }
    /// A webhook's settings changed (its secret stays).
    WebhookUpdated = "webhook_updated" v 1 {
        pub webhook: WebhookId,
        pub name: String,
        pub url: Sealed,
        pub enabled: bool,
        #[serde(default)]
        pub event_filter: Vec<String>,
    }
    /// A webhook was deleted: nothing more is sent to it.
    WebhookDeleted = "webhook_deleted" v 1 {
        pub webhook: WebhookId,
    }

    // ---- registry credential ----

    /// A registry credential was added.
    CredentialCreated = "credential_created" v 1 {
        pub owner: OwnerId,
        pub name: String,
        pub registry: RegistryKind,
        /// Registry host, for `GENERIC` credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub host: Option<String>,
        pub username: String,
        pub token: Sealed,
    }
    /// The credential's token (and maybe username or name) was replaced.
    CredentialRotated = "credential_rotated" v 1 {
        pub token: Sealed,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
    }
    /// A service started using the credential.
    CredentialAttached = "credential_attached" v 1 {
        pub service: ServiceId,
    }
    /// A service stopped using the credential.
    CredentialDetached = "credential_detached" v 1 {
        pub service: ServiceId,
    }
    /// The credential was removed (only possible while no service uses it).
    CredentialRemoved = "credential_removed" v 1 {}

    // ---- service settings ----

    /// A service was created (after its image was verified accessible).
    ServiceCreated = "service_created" v 1 {
        pub owner: OwnerId,
        pub name: String,
        pub service_type: ServiceType,
        /// Normalised image reference as configured.
        pub image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub credential: Option<CredentialId>,
        pub region: String,
        pub plan: Plan,
        pub num_instances: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub docker_command: Option<String>,
        #[serde(default)]
        pub env_vars: EnvVars,
        /// Its secret files, in `/etc/secrets` of each instance.
        #[serde(default, skip_serializing_if = "SecretFiles::is_empty")]
        pub secret_files: SecretFiles,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pre_deploy_command: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub health_check_path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub schedule: Option<String>,
        /// Per-service override of the owner's notification default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub notify: Option<NotifySetting>,
        #[serde(default)]
        pub overlap_policy: OverlapPolicy,
        pub shutdown_delay_secs: u16,
        /// Web services: plain HTTP to a host the router holds a
        /// certificate for is redirected to HTTPS, and HTTPS answers carry
        /// HSTS when the router sends it. On unless turned off (and for
        /// services created before the setting existed).
        #[serde(default = "on")]
        pub https_redirect: bool,
        /// The deploy hook's secret key.
        pub hook_key: Sealed,
        /// Its persistent disk: the service then runs one instance, on the
        /// disk's node, and a deploy stops the old instance before the new
        /// one starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub disk: Option<Disk>,
        /// Web services: its maintenance mode, when set at create or since
        /// (`maintenance_mode_enabled`, `maintenance_mode_uri_updated`).
        /// Boxed, as few services have one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub maintenance_mode: Option<Box<MaintenanceMode>>,
        /// Web services: the client addresses the router lets through
        /// (absent: every one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ip_allow_list: Option<Vec<CidrBlock>>,
    }
    /// Some settings of a service changed.
    ServiceUpdated = "service_updated" v 1 {
        pub settings: ServiceSettings,
    }
    /// The deploy hook key was replaced; the old URL stops working.
    DeployHookKeyRegenerated = "deploy_hook_key_regenerated" v 1 {
        pub hook_key: Sealed,
    }
    /// The service was suspended: instances stop, deploys are refused.
    ServiceSuspended = "service_suspended" v 1 {}
    /// The service was resumed.
    ServiceResumed = "service_resumed" v 1 {}
    /// The service was deleted.
    ServiceDeleted = "service_deleted" v 1 {}
    /// A creation that claimed a name (and maybe attached a credential) but
    /// never appended `service_created` was given up, by the process that
    /// finishes or undoes interrupted operations: the service id can never
    /// be created any more, so what the creation took can be given back.
    ServiceCreationAbandoned = "service_creation_abandoned" v 1 {}
    /// The desired number of instances changed.
    InstanceCountChanged = "instance_count_changed" v 1 {
        pub from: u32,
        pub to: u32,
    }
    /// A restart of all instances was requested.
    RestartRequested = "restart_requested" v 1 {}

    // ---- custom domains: the claim on the domain's own subject, the
    // ---- attachment and its certificate on the service's ----

    /// A custom domain name was taken for a service (on the domain's
    /// subject, `…evt.domain.dom-…`: a name belongs to one service of one
    /// owner across the installation).
    DomainClaimed = "domain_claimed" v 1 {
        /// The normalised name.
        pub name: String,
        pub owner: OwnerId,
        pub service: ServiceId,
    }
    /// A custom domain name was given back (removed from its service, or
    /// the service deleted).
    DomainReleased = "domain_released" v 1 {
        pub name: String,
        pub service: ServiceId,
    }
    /// A claimed custom domain was attached to the (web) service: the
    /// router serves the service at it from now on.
    CustomDomainAdded = "custom_domain_added" v 1 {
        pub domain: CustomDomainId,
        /// The normalised name.
        pub name: String,
    }
    /// A custom domain was detached from the service: no longer routed.
    CustomDomainRemoved = "custom_domain_removed" v 1 {
        pub domain: CustomDomainId,
        pub name: String,
    }
    // ---- deploys (on the service's subject: one deploy at a time is a rule of the service) ----

    /// A deploy was requested (status `created`).
    DeployCreated = "deploy_created" v 1 {
        pub deploy: DeployId,
        pub trigger: DeployTrigger,
        /// The image reference as requested (tag or digest).
        pub image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub credential: Option<CredentialId>,
        /// For rollbacks: the deploy whose recorded digest is redeployed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rollback_of: Option<DeployId>,
    }
    /// The deploy waits for the running one to end.
    DeployQueued = "deploy_queued" v 1 {
        pub deploy: DeployId,
    }
    /// The deploy began (status `update_in_progress`, resolving first).
    DeployStarted = "deploy_started" v 1 {
        pub deploy: DeployId,
        /// What asked for it, as its `deploy_created` says (absent in
        /// events recorded before it was carried here).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub trigger: Option<DeployTrigger>,
    }
    /// Resolving met a transient registry failure (unreachable, 5xx,
    /// 429): the resolver tries again at `retry_at`. Progress, not a
    /// failure: the deploy fails only when the retry budget runs out.
    DeployRetrying = "deploy_retrying" v 1 {
        pub deploy: DeployId,
        /// The attempt that failed (1 is the first).
        pub attempt: u32,
        pub retry_at: DateTime<Utc>,
        /// What the registry or the network said (no credentials).
        pub message: String,
    }
    /// The image reference was resolved to the digest that will run.
    ImageResolved = "image_resolved" v 1 {
        pub deploy: DeployId,
        pub image: ResolvedImage,
    }
    /// An image could not be resolved or pulled.
    ImagePullFailed = "image_pull_failed" v 1 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub deploy: Option<DeployId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<NodeId>,
        pub image: String,
        pub reason: PullFailureReason,
        pub message: String,
    }
    /// Progress of a pull on a node (rate-limited by the puller).
    ImagePullProgressed = "image_pull_progressed" v 1 {
        pub deploy: DeployId,
        pub node: NodeId,
        pub bytes_done: u64,
        pub bytes_total: u64,
    }
    /// A node holds every blob of the digest, verified.
    ImagePulled = "image_pulled" v 1 {
        pub deploy: DeployId,
        pub node: NodeId,
        pub digest: String,
    }
    /// The pre-deploy command started (status `pre_deploy_in_progress`).
    PreDeployStarted = "pre_deploy_started" v 1 {
        pub deploy: DeployId,
    }
    /// The pre-deploy command ended; a failure ends the deploy `pre_deploy_failed`.
    PreDeployEnded = "pre_deploy_ended" v 1 {
        pub deploy: DeployId,
        pub success: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }
    /// New instances are being started and health-checked.
    UpdateStarted = "update_started" v 1 {
        pub deploy: DeployId,
    }
    /// The deploy is live: traffic moved, the digest verified on every instance.
    DeployLive = "deploy_live" v 1 {
        pub deploy: DeployId,
        pub digest: String,
    }
    /// The deploy failed; the previous live deploy keeps serving.
    DeployFailed = "deploy_failed" v 1 {
        pub deploy: DeployId,
        /// `update_failed` or `pre_deploy_failed`.
        pub status: DeployStatus,
        pub reason: String,
    }
    /// The deploy was canceled.
    DeployCanceled = "deploy_canceled" v 1 {
        pub deploy: DeployId,
        pub reason: CancelReason,
        /// The deploy that superseded or canceled it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub by: Option<DeployId>,
    }
    /// A once-live deploy was replaced by a newer live one.
    DeployDeactivated = "deploy_deactivated" v 1 {
        pub deploy: DeployId,
        pub by: DeployId,
    }
    /// A rollback target's digest is gone from the registry (warning).
    RollbackTargetMissing = "rollback_target_missing" v 1 {
        pub deploy: DeployId,
        pub digest: String,
    }

    // ---- instances ----

    /// A service's disk was renamed, grown or given another mount path;
    /// its instance sees the change at its next start.
    DiskUpdated = "disk_updated" v 1 {
        pub disk: Disk,
    }
    /// A disk was added to a service that had none; its instance gets it
    /// at the deploy that comes with it.
    DiskAdded = "disk_added" v 1 {
        pub disk: Disk,
    }
    /// A service's disk was removed, and what was on it with it; the
    /// deploy that comes with it starts an instance without it.
    DiskRemoved = "disk_removed" v 1 {
        pub disk: DiskId,
    }
    /// A service's disk was placed on a node (with its first instance):
    /// its instances run there from now on.
    DiskPlaced = "disk_placed" v 1 {
        pub disk: DiskId,
        pub node: NodeId,
    }
    /// A snapshot of a service's disk was asked for (berth's); the disk's
    /// node takes one at its next look.
    DiskSnapshotRequested = "disk_snapshot_requested" v 1 {
        pub disk: DiskId,
    }
    /// The disk's node took a snapshot of it: a copy of its filesystem
    /// made while the filesystem was frozen, kept on that node.
    DiskSnapshotTaken = "disk_snapshot_taken" v 1 {
        pub disk: DiskId,
        pub key: DiskSnapshotKey,
        pub node: NodeId,
        /// What the copy takes on the node's disk.
        pub bytes: u64,
    }
    /// A service's disk was set back to one of its snapshots; the deploy
    /// that comes with it starts the instance on the restored disk.
    DiskSnapshotRestored = "disk_snapshot_restored" v 1 {
        pub disk: DiskId,
        pub key: DiskSnapshotKey,
        pub snapshot_created_at: DateTime<Utc>,
    }
    /// A service's disk filled past the high-usage threshold (Render's).
    ServiceDiskUsageHigh = "service_disk_usage_high" v 1 {
        pub disk: DiskId,
        pub disk_name: String,
        pub mount_path: String,
        pub used_bytes: u64,
        pub size_bytes: u64,
        pub threshold_percent: u8,
    }
    /// A service's disk whose use was high is back below the threshold
    /// (Render's).
    ServiceDiskUsageRecovered = "service_disk_usage_recovered" v 1 {
        pub disk: DiskId,
        pub disk_name: String,
        pub mount_path: String,
        pub used_bytes: u64,
        pub size_bytes: u64,
        pub threshold_percent: u8,
    }
    /// A web service's maintenance mode was turned on or off (Render's).
    MaintenanceModeEnabled = "maintenance_mode_enabled" v 1 {
        pub enabled: bool,
    }
    /// The page a web service's maintenance mode shows changed (Render's;
    /// `""`: berth's own).
    MaintenanceModeUriUpdated = "maintenance_mode_uri_updated" v 1 {
        pub from_uri: String,
        pub to_uri: String,
    }
    /// A service's autoscaling was set, changed or (`to` absent) removed
    /// (Render's `autoscaling_config_changed`).
    AutoscalingConfigChanged = "autoscaling_config_changed" v 1 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from: Option<AutoscalingConfig>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to: Option<AutoscalingConfig>,
    }
    /// The autoscaler changed an autoscaled service's instance count
    /// (Render's `autoscaling_started`; an `instance_count_changed` comes
    /// with it). The figures are the instances' average use of their
    /// plan's limits (percent) that it decided on, and the criteria's
    /// targets; a criterion not enabled has none.
    AutoscalingStarted = "autoscaling_started" v 1 {
        pub from_instances: u32,
        pub to_instances: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub current_cpu: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target_cpu: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub current_memory: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target_memory: Option<u32>,
    }
    /// The instance count the autoscaler asked for is reached: that many
    /// of the live deploy's instances are healthy (Render's
    /// `autoscaling_ended`).
    AutoscalingEnded = "autoscaling_ended" v 1 {
        pub from_instances: u32,
        pub to_instances: u32,
    }
    /// A service's override of its owner's log stream was set, changed or
    /// (`stream` absent) removed: its lines follow the owner's again.
    LogStreamOverrideChanged = "log_stream_override_changed" v 1 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub stream: Option<LogStreamOverride>,
    }
    /// An instance was placed on a node.
    InstanceScheduled = "instance_scheduled" v 1 {
        pub instance: InstanceId,
        pub deploy: DeployId,
        pub node: NodeId,
        pub digest: String,
    }
    /// The instance's process is running.
    InstanceStarted = "instance_started" v 1 {
        pub instance: InstanceId,
        pub node: NodeId,
        pub digest: String,
        /// `ip:port` where the instance listens (web and private services),
        /// for health checks and the router.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub addr: Option<String>,
        /// `<node address>:<host port>` where other nodes reach a private
        /// service's instance (its owner's instances elsewhere, through
        /// their own node); absent for other kinds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub published: Option<String>,
    }
    /// The instance passes its health check.
    InstanceHealthy = "instance_healthy" v 1 {
        pub instance: InstanceId,
    }
    /// The instance fails its health check.
    InstanceUnhealthy = "instance_unhealthy" v 1 {
        pub instance: InstanceId,
        pub reason: String,
    }
    /// A starting instance of a service that sets no `PORT` was found
    /// serving on `port`, not where berth expected it (as Render detects a
    /// service's port): that port is served, and the service's later
    /// instances are checked and published there.
    InstancePortDetected = "instance_port_detected" v 1 {
        pub instance: InstanceId,
        pub port: u16,
        /// The port berth expected it on.
        pub expected: u16,
    }
    /// The instance's process exited.
    InstanceExited = "instance_exited" v 1 {
        pub instance: InstanceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub signal: Option<i32>,
        /// The kernel killed a process of it for going over its memory
        /// limit (out of memory) while it ran.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub oom_killed: bool,
        /// The memory limit it went over (with `oom_killed`), in MiB.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub memory_limit_mib: Option<u32>,
        /// Stopped by its node to be started again at once (it failed its
        /// health checks while live), not ended by itself.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub restarted: bool,
        /// Killed by its node when the node's disk ran low, as the instance
        /// there that had written the most to its filesystem: how much, in
        /// MiB. What it wrote is gone; it starts again from the image's
        /// files after the crash backoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub disk_written_mib: Option<u64>,
        /// With `disk_written_mib`: the node's limit on what an instance
        /// may write, in MiB, which it went over (it was killed for that,
        /// not for the node's disk running low).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub disk_limit_mib: Option<u64>,
        /// Why its program could not be run at all, as its node found it
        /// in the image before the start (not there, a script with
        /// Windows line endings or an interpreter the image lacks, a
        /// program for another machine or without its loader): set when
        /// it then exited with a failing status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cannot_run: Option<String>,
    }
    /// The instance was restarted in place by the agent.
    ServerRestarted = "server_restarted" v 1 {
        pub instance: InstanceId,
        pub attempt: u32,
    }
    /// The instance leaves routing before it is stopped (scale-down,
    /// restart, replacement): the router sends it no new requests, and the
    /// scheduler sends the stop once the drain delay has passed.
    InstanceDraining = "instance_draining" v 1 {
        pub instance: InstanceId,
    }
    /// The instance was stopped on purpose.
    InstanceStopped = "instance_stopped" v 1 {
        pub instance: InstanceId,
    }
    /// The node under some instances was lost.
    ServerFailed = "server_failed" v 1 {
        pub node: NodeId,
        pub instances: Vec<InstanceId>,
    }
    /// A lost instance was replaced on another node.
    InstanceRescheduled = "instance_rescheduled" v 1 {
        pub instance: InstanceId,
        pub replacement: InstanceId,
        pub from_node: NodeId,
        pub to_node: NodeId,
    }
    /// Some instances of a deploy (or its pre-deploy run) found no node
    /// with room for them (CPU and memory reserved by instances on it,
    /// stopping ones included until their stop is reported). Placement is
    /// retried; recorded again only when the shortfall changes.
    PlacementBlocked = "placement_blocked" v 1 {
        pub deploy: DeployId,
        /// Instances (or runs) still without a node.
        pub unplaced: u32,
        /// CPU one instance reserves, in millicores.
        pub cpu_millis: u32,
        /// Memory one instance reserves, in MiB.
        pub memory_mib: u32,
        /// The up node that comes closest to fitting one; absent when no
        /// node is up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<NodeId>,
        /// That node's free CPU in millicores (0 without a node).
        pub free_cpu_millis: u32,
        /// That node's free memory in MiB (0 without a node).
        pub free_memory_mib: u32,
        /// The same in words, e.g. `no node has room: needs 0.5 CPU /
        /// 512 MiB, largest free 0.2 CPU / 300 MiB on nod-…`.
        pub reason: String,
    }

    // ---- cron runs ----

    /// A cron run started.
    CronJobRunStarted = "cron_job_run_started" v 1 {
        pub run: CronRunId,
        pub digest: String,
        /// Whether a person triggered it rather than the schedule.
        pub manual: bool,
    }
    /// A cron run ended.
    CronJobRunEnded = "cron_job_run_ended" v 1 {
        pub run: CronRunId,
        /// `succeeded`, `failed`, `canceled` or `timed_out`.
        pub status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
        /// Why it failed or timed out, when its exit code does not say (its
        /// program cannot run, out of memory, killed by a signal, no node
        /// had room, its node was lost, the image was not pulled).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }
    /// The active cron run was given to a node to run: if that node is
    /// lost, the run ends `failed` instead of holding every later due time
    /// until its cap.
    CronJobRunPlaced = "cron_job_run_placed" v 1 {
        pub run: CronRunId,
        pub node: NodeId,
    }
    /// A scheduled run was skipped because one was still active.
    CronJobRunSkipped = "cron_job_run_skipped" v 1 {
        pub scheduled_for: DateTime<Utc>,
        pub active_run: CronRunId,
    }

    // ---- one-off jobs ----

    /// A one-off job was asked for: `start_command` run once in a container
    /// of the live deploy's image (`digest`) with the service's env and the
    /// given instance type.
    JobCreated = "job_created" v 1 {
        pub job: JobId,
        pub start_command: String,
        /// The instance type it runs on.
        pub plan: Plan,
        pub digest: String,
    }
    /// A job's container started on a node.
    JobStarted = "job_started" v 1 {
        pub job: JobId,
    }
    /// The job was given to a node to run: if that node is lost, the job
    /// ends `failed` instead of staying pending or running for good.
    JobPlaced = "job_placed" v 1 {
        pub job: JobId,
        pub node: NodeId,
    }
    /// A command was sent to run in a running instance (`berth exec`, the
    /// dashboard's shell), or a terminal opened there with that program
    /// (`berth shell`, the dashboard's terminal), by the envelope's actor:
    /// recorded before it is sent, so a command that ran is never missing
    /// here. Its arguments are not recorded (they may hold secrets); how
    /// it ended is `instance_command_ended`.
    InstanceCommandRequested = "instance_command_requested" v 1 {
        pub instance: InstanceId,
        pub node: NodeId,
        /// The program (the command's first word).
        pub program: String,
        /// A terminal session, not one command.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub terminal: bool,
    }
    /// How a command sent to an instance (or a terminal opened there)
    /// ended, as the API heard it, by the same actor: recorded after the
    /// answer, so one whose API stopped meanwhile has its
    /// `instance_command_requested` only.
    InstanceCommandEnded = "instance_command_ended" v 1 {
        pub instance: InstanceId,
        pub program: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub terminal: bool,
        /// Its exit code (128 + the signal for one killed by a signal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
        /// Killed at its timeout.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub timed_out: bool,
        /// Why it ended without an exit code (the node refused it, a
        /// terminal's session was lost).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// From the request to the answer, in milliseconds.
        pub duration_ms: u64,
    }
    /// A job ended.
    JobEnded = "job_ended" v 1 {
        pub job: JobId,
        /// `succeeded`, `failed` or `canceled`.
        pub status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub exit_code: Option<i32>,
        /// Why it failed, when its exit code does not say (out of memory,
        /// timed out, no node had room, the image was not pulled).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    // ---- nodes ----

    /// A node joined with its capacity (and again when its name, capacity
    /// or public key changed).
    NodeRegistered = "node_registered" v 1 {
        pub name: String,
        pub cpu_millis: u32,
        pub memory_mib: u32,
        /// The node's X25519 public key (base64 of 32 bytes): what its work
        /// items' secrets are sealed to. Its private part never leaves the
        /// node. Absent in registrations by nodes that held no key pair.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub public_key: Option<String>,
        /// The address other nodes reach it at (its advertised IP), where
        /// it publishes instances. Absent in registrations by nodes that
        /// said none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub addr: Option<String>,
        /// The host ports it publishes instances on, `low-high`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ports: Option<String>,
    }
    /// A node stopped heart-beating and was declared lost.
    NodeLost = "node_lost" v 1 {
        pub last_heartbeat: DateTime<Utc>,
    }
    /// A lost node came back.
    NodeRecovered = "node_recovered" v 1 {}

    // ---- notification deliveries ----

    /// A notification is to be delivered once to one channel.
    NotificationQueued = "notification_queued" v 1 {
        pub owner: OwnerId,
        pub service: ServiceId,
        /// `email`, `slack` or `webhook`.
        pub channel: String,
        /// The event that caused it.
        pub source_event: String,
    }
    /// One delivery attempt failed; it will be retried with the same id.
    NotificationAttemptFailed = "notification_attempt_failed" v 1 {
        pub attempt: u32,
        pub error: String,
    }
    /// The notification was delivered.
    NotificationDelivered = "notification_delivered" v 1 {
        pub attempt: u32,
    }
    /// Retries ran out.
    NotificationAbandoned = "notification_abandoned" v 1 {
        pub attempts: u32,
    }

    // ---- certificates (the router's managed certificates, on the owning service's subject) ----

    /// A certificate for one of the service's domains was obtained over
    /// ACME (first issue or renewal) and is being served.
    CertificateIssued = "certificate_issued" v 1 {
        /// The domain name it is for (lower case).
        pub domain: String,
        /// When it expires.
        pub not_after: DateTime<Utc>,
        /// Its serial number, hex.
        pub serial: String,
        /// Whether it replaced an earlier certificate for the domain.
        pub renewal: bool,
    }
    /// Obtaining or renewing a domain's certificate failed; it is retried
    /// after `retry_in_secs` (any certificate already held keeps serving).
    CertificateFailed = "certificate_failed" v 1 {
        pub domain: String,
        pub reason: CertificateFailure,
        /// Attempts so far for this domain, this one included.
        pub attempt: u32,
        /// Seconds until the next attempt.
        pub retry_in_secs: u64,
    }
    /// The domain left the service, and its certificate was removed from
    /// the certificate store.
    CertificateRemoved = "certificate_removed" v 1 {
        pub domain: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_setting_survives_the_log() {
        let cleared = [
            ServiceSettings {
                notify: Some(None),
                ..ServiceSettings::default()
            },
            ServiceSettings {
                credential: Some(None),
                ..ServiceSettings::default()
            },
            ServiceSettings {
                docker_command: Some(None),
                ..ServiceSettings::default()
            },
            ServiceSettings {
                pre_deploy_command: Some(None),
                ..ServiceSettings::default()
            },
            ServiceSettings {
                https_redirect: Some(false),
                ..ServiceSettings::default()
            },
            ServiceSettings::default(),
        ];
        for s in cleared {
            let packed = rmp_serde::to_vec_named(&s).unwrap_or_default();
            let back: Option<ServiceSettings> = rmp_serde::from_slice(&packed).ok();
            assert_eq!(back.as_ref(), Some(&s), "MessagePack");
            let json = serde_json::to_value(&s).unwrap_or_default();
            let back: Option<ServiceSettings> = serde_json::from_value(json).ok();
            assert_eq!(back.as_ref(), Some(&s), "JSON");
        }
    }
}

//! The JSON the API answers with, in Render's shapes: camelCase fields,
//! Render's enum values, listings as `[{cursor, <item>}]`, and every field
//! Render's OpenAPI document marks required present with a truthful value
//! for an image-backed service. berth's own information rides along as
//! extra fields, which Render's generated clients keep aside. Hook keys are
//! never part of a view; env var values only in the env-var routes.

use berth_domain::service::{Deploy, ServiceState, ServiceStatus};
use berth_schemas::ids::ServiceId;
use berth_schemas::model::{
    DeployPhase, DeployStatus, DeployTrigger, NotifySetting, OverlapPolicy, Plan, ServiceType,
};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Render's instance types (name, millicores, MiB).
pub const PLANS: &[(&str, u32, u32)] = &[
    ("free", 100, 512),
    ("starter", 500, 512),
    ("standard", 1000, 2048),
    ("pro", 2000, 4096),
    ("pro_plus", 4000, 8192),
    ("pro_max", 4000, 16384),
    ("pro_ultra", 8000, 32768),
];

/// The plan called `name`.
pub fn plan(name: &str) -> Option<Plan> {
    PLANS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(n, cpu, mem)| Plan {
            name: n.to_owned(),
            cpu_millis: cpu,
            memory_mib: mem,
        })
}

/// Where the links in views point: the dashboard (the API's public URL)
/// and web services (the router's base domain).
#[derive(Debug, Clone)]
pub struct Links {
    /// The API's public URL, without a trailing slash; the dashboard is
    /// served at its root.
    pub dashboard: String,
    /// `http://<base-domain>[:port]`: a web service answers at the same
    /// URL with its name in front of the host.
    pub services: String,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            dashboard: "http://127.0.0.1:7000".to_owned(),
            services: "http://localhost".to_owned(),
        }
    }
}

impl Links {
    /// The dashboard page of service `id`.
    pub fn dashboard_of(&self, id: &ServiceId) -> String {
        format!("{}/services/{id}", self.dashboard.trim_end_matches('/'))
    }

    /// The public URL of web service `name`.
    pub fn web_url(&self, name: &str) -> String {
        berth_domain::service::platform_env::web_url(&self.services, name)
    }
}

/// Whether a service redeploys by itself when its source changes: never
/// for a prebuilt image (a new image comes by hook, API or bus command).
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoDeploy {
    No,
}

/// How the service runs: berth deploys prebuilt images only.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Image,
}

/// Render's build pipeline tier: berth builds nothing; Render's default.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildPlan {
    Starter,
}

/// Render's legacy per-service failure notification setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOnFail {
    /// The owner's default applies.
    Default,
    /// Failures are sent (`all` or `failure`).
    Notify,
    /// Nothing is sent (`none`).
    Ignore,
}

impl NotifyOnFail {
    pub fn of(setting: Option<NotifySetting>) -> Self {
        match setting {
            None => NotifyOnFail::Default,
            Some(NotifySetting::None) => NotifyOnFail::Ignore,
            Some(NotifySetting::All | NotifySetting::Failure) => NotifyOnFail::Notify,
        }
    }
}

/// A service's notification override (Render's `notificationsToSend` of
/// an override): one of the owner's settings, or `default` to follow the
/// owner (berth then stores no override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOverride {
    Default,
    All,
    Failure,
    None,
}

impl NotifyOverride {
    pub fn of(setting: Option<NotifySetting>) -> Self {
        match setting {
            None => NotifyOverride::Default,
            Some(NotifySetting::All) => NotifyOverride::All,
            Some(NotifySetting::Failure) => NotifyOverride::Failure,
            Some(NotifySetting::None) => NotifyOverride::None,
        }
    }

    /// The override stored (`None`: follow the owner).
    pub fn setting(self) -> Option<NotifySetting> {
        match self {
            NotifyOverride::Default => None,
            NotifyOverride::All => Some(NotifySetting::All),
            NotifyOverride::Failure => Some(NotifySetting::Failure),
            NotifyOverride::None => Some(NotifySetting::None),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuspendedState {
    Suspended,
    NotSuspended,
}

/// Who suspended a service: on berth, always its owner.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Suspender {
    User,
}

/// A registry credential as a service names it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CredentialSummary {
    pub id: String,
    pub name: String,
}

/// berth's own view of a service's image (kept beside Render's
/// `imagePath` and `registryCredential`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image_path: String,
    pub registry_credential_id: Option<String>,
}

/// Render's `envSpecificDetails` for a Docker/image runtime.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DockerDetails {
    /// The command run instead of the image's CMD; `""` runs the CMD.
    pub docker_command: String,
    /// Always `""`: nothing is built.
    pub docker_context: String,
    /// Always `""`: nothing is built.
    pub dockerfile_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_deploy_command: Option<String>,
}

/// A port an instance listens on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ServerPort {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
}

/// The `serviceDetails` fields every service type has.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonDetails {
    /// Render's older name for `runtime`.
    pub env: Runtime,
    pub runtime: Runtime,
    pub region: String,
    /// Instance type: one of Render's plans.
    pub plan: String,
    pub build_plan: BuildPlan,
    pub env_specific_details: DockerDetails,
    /// berth: the pre-deploy command (also in `envSpecificDetails`).
    pub pre_deploy_command: Option<String>,
    /// berth: what a deploy request does while another deploy runs.
    pub overlap_policy: OverlapPolicy,
    /// berth: seconds an instance gets between SIGTERM and SIGKILL.
    pub shutdown_delay_seconds: u16,
    /// Render's name for the same shutdown delay.
    pub max_shutdown_delay_seconds: u16,
    /// Its persistent disk, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskView>,
    /// Its autoscaling (Render's), when set: `numInstances` is then the
    /// count the autoscaler last asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<berth_schemas::model::AutoscalingConfig>,
}

/// A service's disk: Render's `{id, name}`, and berth's `mountPath`,
/// `sizeGB` and the node it is on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskView {
    pub id: String,
    pub name: String,
    pub mount_path: String,
    #[serde(rename = "sizeGB")]
    pub size_gb: u32,
    /// Absent until its first instance was placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// berth: true while the disk is at least 90 % full (since
    /// `service_disk_usage_high`, until `service_disk_usage_recovered`);
    /// absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub usage_high: bool,
}

/// `serviceDetails` of a web service.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebDetails {
    #[serde(flatten)]
    pub common: CommonDetails,
    /// `""` when the service has none (TCP readiness only).
    pub health_check_path: String,
    pub num_instances: u32,
    /// The port its instances were detected serving on (`instance_port_detected`,
    /// when the service sets no `PORT` and they did not listen where berth
    /// expected them); empty when none was, as the port served is then
    /// `PORT`, else the image's own `ENV PORT`, else the one port it
    /// exposes, else 10000.
    pub open_ports: Vec<ServerPort>,
    /// Where the router serves it.
    pub url: String,
    /// berth: plain HTTP to a host the router holds a certificate for is
    /// redirected to HTTPS (and HTTPS answers carry HSTS when the router
    /// sends it).
    pub https_redirect: bool,
    /// Render's maintenance mode, when set (`enabled`, `uri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_mode: Option<berth_schemas::model::MaintenanceMode>,
    /// Render's IP allow list, when set: only these client addresses are
    /// let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_allow_list: Option<Vec<berth_schemas::model::CidrBlock>>,
}

/// `serviceDetails` of a private service.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateDetails {
    #[serde(flatten)]
    pub common: CommonDetails,
    pub num_instances: u32,
    /// See [`WebDetails::open_ports`].
    pub open_ports: Vec<ServerPort>,
    /// Where the owner's other instances reach it: `<name>:<port>`, the
    /// port its live instances serve on (`db:5432`); its name alone while
    /// none is healthy (the port is then the one it will serve: `openPorts`,
    /// else its `PORT`, else the image's, else 10000).
    pub url: String,
}

/// `serviceDetails` of a background worker.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerDetails {
    #[serde(flatten)]
    pub common: CommonDetails,
    pub num_instances: u32,
}

/// `serviceDetails` of a cron job (one instance per run, so no count).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronDetails {
    #[serde(flatten)]
    pub common: CommonDetails,
    pub schedule: String,
}

/// A service's type-specific settings: Render's clients tell the types
/// apart by their required fields, so each carries exactly its own.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ServiceDetails {
    Web(WebDetails),
    Private(PrivateDetails),
    Worker(WorkerDetails),
    Cron(CronDetails),
}

/// A service as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub auto_deploy: AutoDeploy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The service's page in berth's dashboard.
    pub dashboard_url: String,
    pub image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_credential: Option<CredentialSummary>,
    pub notify_on_fail: NotifyOnFail,
    /// berth: the service's notification override (`default` follows the
    /// owner).
    pub notifications_to_send: NotifyOverride,
    /// Always `""`: nothing is built from a repository.
    pub root_dir: String,
    /// The name the router serves it under.
    pub slug: String,
    pub suspended: SuspendedState,
    pub suspenders: Vec<Suspender>,
    pub service_details: ServiceDetails,
    /// berth: the image and credential as set.
    pub image: ImageView,
    /// berth: the names of its env vars (values: `/env-vars`).
    pub env_var_keys: Vec<String>,
    /// berth: the deploy serving now.
    pub live_deploy_id: Option<String>,
}

/// A service view for `id` in `s` (`None` if it has no config);
/// `credential_name` names a credential by id.
pub fn service(
    id: &ServiceId,
    s: &ServiceState,
    links: &Links,
    credential_name: impl Fn(&berth_schemas::ids::CredentialId) -> Option<String>,
) -> Option<ServiceView> {
    let c = s.config.as_ref()?;
    let suspended = s.status == ServiceStatus::Suspended;
    let common = CommonDetails {
        env: Runtime::Image,
        runtime: Runtime::Image,
        region: c.region.clone(),
        plan: c.plan.name.clone(),
        build_plan: BuildPlan::Starter,
        env_specific_details: DockerDetails {
            docker_command: c.docker_command.clone().unwrap_or_default(),
            docker_context: String::new(),
            dockerfile_path: String::new(),
            pre_deploy_command: c.pre_deploy_command.clone(),
        },
        pre_deploy_command: c.pre_deploy_command.clone(),
        overlap_policy: c.overlap_policy,
        shutdown_delay_seconds: c.shutdown_delay_secs,
        max_shutdown_delay_seconds: c.shutdown_delay_secs,
        disk: c.disk.as_ref().map(|d| DiskView {
            id: d.id.to_string(),
            name: d.name.clone(),
            mount_path: d.mount_path.clone(),
            size_gb: d.size_gb,
            node_id: s.disk_node.as_ref().map(ToString::to_string),
            usage_high: s.disk_usage_high,
        }),
        autoscaling: s.autoscaling.config.clone(),
    };
    let open_ports = || -> Vec<ServerPort> {
        s.detected_port
            .filter(|_| !c.env_vars.contains_key("PORT"))
            .map(|port| ServerPort {
                port,
                protocol: Protocol::Tcp,
            })
            .into_iter()
            .collect()
    };
    let service_details = match c.service_type {
        ServiceType::WebService => ServiceDetails::Web(WebDetails {
            common,
            health_check_path: c.health_check_path.clone().unwrap_or_default(),
            num_instances: c.num_instances,
            open_ports: open_ports(),
            url: links.web_url(&c.name),
            https_redirect: c.https_redirect,
            maintenance_mode: c.maintenance_mode.as_deref().cloned(),
            ip_allow_list: c.ip_allow_list.clone(),
        }),
        ServiceType::PrivateService => ServiceDetails::Private(PrivateDetails {
            common,
            num_instances: c.num_instances,
            open_ports: open_ports(),
            url: s
                .serving_port()
                .map_or_else(|| c.name.clone(), |port| format!("{}:{port}", c.name)),
        }),
        ServiceType::BackgroundWorker => ServiceDetails::Worker(WorkerDetails {
            common,
            num_instances: c.num_instances,
        }),
        ServiceType::CronJob => ServiceDetails::Cron(CronDetails {
            common,
            schedule: c.schedule.clone().unwrap_or_default(),
        }),
    };
    let created = s.created_at.unwrap_or_default();
    Some(ServiceView {
        id: id.to_string(),
        name: c.name.clone(),
        owner_id: c.owner.to_string(),
        service_type: c.service_type,
        auto_deploy: AutoDeploy::No,
        created_at: created,
        updated_at: s.updated_at.unwrap_or(created),
        dashboard_url: links.dashboard_of(id),
        image_path: c.image.clone(),
        registry_credential: c.credential.as_ref().map(|cred| CredentialSummary {
            id: cred.to_string(),
            name: credential_name(cred).unwrap_or_else(|| cred.to_string()),
        }),
        notify_on_fail: NotifyOnFail::of(c.notify),
        notifications_to_send: NotifyOverride::of(c.notify),
        root_dir: String::new(),
        slug: c.name.clone(),
        suspended: if suspended {
            SuspendedState::Suspended
        } else {
            SuspendedState::NotSuspended
        },
        suspenders: if suspended {
            vec![Suspender::User]
        } else {
            Vec::new()
        },
        service_details,
        image: ImageView {
            image_path: c.image.clone(),
            registry_credential_id: c.credential.as_ref().map(ToString::to_string),
        },
        env_var_keys: c.env_vars.keys().cloned().collect(),
        live_deploy_id: s.live.as_ref().map(ToString::to_string),
    })
}

/// Render's deploy triggers. berth's first deploy of a new service is
/// `api` (services are created through the API), marked `firstDeploy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RenderTrigger {
    Api,
    DeployHook,
    Manual,
    Rollback,
    ServiceUpdated,
    ServiceResumed,
}

impl RenderTrigger {
    pub fn of(t: DeployTrigger) -> Self {
        match t {
            DeployTrigger::ServiceCreated | DeployTrigger::Api => RenderTrigger::Api,
            DeployTrigger::DeployHook => RenderTrigger::DeployHook,
            DeployTrigger::Manual => RenderTrigger::Manual,
            DeployTrigger::Rollback => RenderTrigger::Rollback,
            DeployTrigger::ServiceUpdated => RenderTrigger::ServiceUpdated,
            DeployTrigger::ServiceResumed => RenderTrigger::ServiceResumed,
        }
    }
}

/// The image a deploy runs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployImage {
    /// The reference asked for (tag or digest).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The digest it resolved to, once resolved.
    pub sha: Option<String>,
    /// The credential id it is pulled with.
    pub registry_credential: Option<String>,
}

/// A transient registry failure a resolving deploy waits out.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    /// The attempt that failed (1 is the first).
    pub attempt: u32,
    /// When the next attempt is made.
    pub retry_at: DateTime<Utc>,
    /// What the registry or the network said.
    pub message: String,
}

/// A deploy as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployView {
    pub id: String,
    pub status: DeployStatus,
    pub trigger: RenderTrigger,
    /// berth: the service's first deploy (made when it was created).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first_deploy: bool,
    pub image: DeployImage,
    /// berth: the deploy this one rolls back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// berth: why it failed or was canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// berth: whether its digest can still be rolled back to.
    pub rollback_eligible: bool,
    /// berth: while it resolves, the registry failed for now and is tried
    /// again (e.g. "registry unavailable, retry 3 at …").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    /// berth: its finer phase while it runs (resolving, pulling,
    /// pre_deploy, updating).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeployPhase>,
    /// berth: the nodes that hold its digest, verified.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pulled_on: Vec<String>,
    // Times not reached yet are left out (Render's clients read a present
    // time as a time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl DeployView {
    pub fn of(d: &Deploy) -> Self {
        let updated = [
            d.finished_at,
            d.update_started_at,
            d.pre_deploy_started_at,
            d.started_at,
        ]
        .into_iter()
        .flatten()
        .max()
        .or(d.created_at);
        Self {
            id: d.id.to_string(),
            status: d.status,
            trigger: RenderTrigger::of(d.trigger),
            first_deploy: d.trigger == DeployTrigger::ServiceCreated,
            image: DeployImage {
                reference: d.image.clone(),
                sha: d.digest().map(str::to_owned),
                registry_credential: d.credential.as_ref().map(ToString::to_string),
            },
            rollback_of: d.rollback_of.as_ref().map(ToString::to_string),
            reason: d.reason.clone(),
            rollback_eligible: d.rollback_eligible,
            retrying: d.retrying.as_ref().map(|r| Retrying {
                attempt: r.attempt,
                retry_at: r.retry_at,
                message: r.message.clone(),
            }),
            phase: d.phase,
            pulled_on: d.pulled_on.iter().map(ToString::to_string).collect(),
            created_at: d.created_at,
            updated_at: updated,
            started_at: d.started_at,
            finished_at: d.finished_at,
        }
    }
}

/// `/deploy/srv-…?key=…`, the path of a service's deploy hook.
pub fn hook_path(id: &ServiceId, key: &str) -> String {
    format!("/deploy/{id}?key={key}")
}

//! `/v1/services…`: create (image verified first), list, get, update,
//! delete, the service actions (scale, restart, suspend, resume, deploy
//! hook key) and its instances. Cron runs are in [`super::cron`].

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::service::{ServiceState, ServiceStatus};
use berth_ingress::{Caller, NewService, Scope};
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{CredentialId, ServiceId};
use berth_schemas::model::{NotifySetting, OverlapPolicy, ServiceType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{field, nullable, owner_matches};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::{ApiError, FieldError};
use crate::query::{self, Between, Listing};
use crate::views;

/// Most env vars a service may have, and their sizes.
const MAX_ENV_VARS: usize = berth_domain::service::validate::ENV_VARS_MAX;
const MAX_ENV_KEY: usize = 128;
const MAX_ENV_VALUE: usize = 16 * 1024;

/// A service id from a path; anything unparsable does not exist.
pub fn service_id(s: &str) -> Result<ServiceId, ApiError> {
    s.parse().map_err(|_| ApiError::not_found("service"))
}

/// Render's fields for what berth does not have (builds from a repository,
/// autoscaling, disks, previews, …): accepted when they ask for nothing
/// (absent, `null`, `false`, `""`, `"no"`, `"off"`, empty), refused with
/// `why` otherwise, so a request is never half-honoured in silence.
fn unsupported(fields: &mut Vec<FieldError>, name: &str, value: &Option<Value>, why: &str) {
    let asks = match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !matches!(s.as_str(), "" | "no" | "off"),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => o.values().any(|v| {
            !matches!(v, Value::Null | Value::Bool(false))
                && v.as_str().is_none_or(|s| !matches!(s, "" | "no" | "off"))
        }),
        Some(_) => true,
    };
    if asks {
        field(fields, name, why);
    }
}

const NO_BUILDS: &str = "berth deploys prebuilt images and builds nothing";

/// `runtime` (and Render's older `env`): berth runs images only.
fn runtime(fields: &mut Vec<FieldError>, name: &str, value: &Option<String>) {
    if value.as_deref().is_some_and(|r| r != "image") {
        field(fields, name, "must be image: berth deploys prebuilt images");
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageBody {
    pub image_path: Option<String>,
    /// On update, `null` (or `""`) removes the credential.
    #[serde(default, deserialize_with = "nullable")]
    pub registry_credential_id: Option<Option<String>>,
    /// Render sends the owner here too; it must be the caller's.
    pub owner_id: Option<String>,
}

/// One env var of a create or update: a value, or Render's
/// `generateValue: true` for a random one.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarBody {
    pub key: String,
    pub value: Option<String>,
    pub generate_value: Option<bool>,
}

/// The value an env var body asks for: given, or generated (256 random
/// bits, base64).
pub(crate) fn env_value(
    fields: &mut Vec<FieldError>,
    name: &str,
    value: Option<String>,
    generate: Option<bool>,
) -> Option<String> {
    match (value, generate) {
        (Some(v), None | Some(false)) => Some(v),
        (None, Some(true)) => Some(berth_runtime::SecretKey::generate_base64()),
        (Some(_), Some(true)) => {
            field(
                fields,
                name,
                "give a value or generateValue: true, not both",
            );
            None
        }
        (None, _) => {
            field(fields, name, "needs a value (or generateValue: true)");
            None
        }
    }
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSpecific {
    #[serde(default, deserialize_with = "nullable")]
    pub docker_command: Option<Option<String>>,
    /// Render's build settings: nothing is built, so they must ask for nothing.
    #[schemars(with = "Option<String>")]
    pub docker_context: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub dockerfile_path: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub registry_credential_id: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub build_command: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub start_command: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub pre_deploy_command: Option<Option<String>>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetailsBody {
    pub region: Option<String>,
    pub plan: Option<String>,
    pub num_instances: Option<u32>,
    /// `null` removes it (readiness is then the port accepting connections).
    #[serde(default, deserialize_with = "nullable")]
    pub health_check_path: Option<Option<String>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    pub pre_deploy_command: Option<Option<String>>,
    pub schedule: Option<String>,
    pub env_specific_details: Option<EnvSpecific>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub shutdown_delay_seconds: Option<u16>,
    /// Render's name for the shutdown delay.
    pub max_shutdown_delay_seconds: Option<u16>,
    /// berth, web services: plain HTTP to a host with a certificate is
    /// redirected to HTTPS (default `true`).
    pub https_redirect: Option<bool>,
    /// Render's, web services: while `enabled`, the router answers with a
    /// 503 maintenance page (sending browsers to `uri` when set).
    pub maintenance_mode: Option<berth_schemas::model::MaintenanceMode>,
    /// Render's, web services: only clients in these blocks are let
    /// through (`[]`: none; absent at create, or `null` in an update:
    /// every one).
    #[serde(default, deserialize_with = "nullable")]
    pub ip_allow_list: Option<Option<Vec<berth_schemas::model::CidrBlock>>>,
    /// Render's clients send the runtime always: it must be `image`.
    pub runtime: Option<String>,
    pub env: Option<String>,
    /// Render's `AutoscalingConfig` (create only; then
    /// `PUT /v1/services/{id}/autoscaling`).
    #[schemars(with = "Option<berth_schemas::model::AutoscalingConfig>")]
    pub autoscaling: Option<Value>,
    // Render's settings berth has no counterpart for.
    /// A persistent disk (create only): web services, private services
    /// and workers with one instance.
    pub disk: Option<DiskBody>,
    #[schemars(with = "Option<String>")]
    pub build_source_id: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub pull_request_previews_enabled: Option<Value>,
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub previews: Option<Value>,
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub cache: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub build_plan: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub build_command: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub publish_path: Option<Value>,
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub internal_routing: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub render_subdomain_policy: Option<Value>,
}

/// Render's `serviceDetails.disk` at create (name and path required), and
/// its `DiskPATCH` (`PATCH /v1/disks/{id}`: what is given changes).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskBody {
    /// 1–64 letters, digits, spaces, `-`, `_`, `.`.
    pub name: Option<String>,
    /// An absolute path in the instance (not `/`, nor below `/proc`,
    /// `/sys` or `/dev`).
    pub mount_path: Option<String>,
    /// GB, 1–1024 (default 1 at create; a disk only grows).
    #[serde(rename = "sizeGB")]
    pub size_gb: Option<u32>,
}

impl DiskBody {
    /// The disk asked for; what is missing is said in `fields`.
    fn disk(self, fields: &mut Vec<FieldError>) -> Option<berth_ingress::NewDisk> {
        let d = "serviceDetails.disk.";
        if self.name.is_none() {
            field(fields, &format!("{d}name"), "is required");
        }
        if self.mount_path.is_none() {
            field(fields, &format!("{d}mountPath"), "is required");
        }
        Some(berth_ingress::NewDisk {
            name: self.name?,
            mount_path: self.mount_path?,
            size_gb: self.size_gb.unwrap_or(1),
        })
    }
}

impl DetailsBody {
    /// Refuses what berth cannot do; returns the shutdown delay asked for
    /// (either name).
    fn check(&self, fields: &mut Vec<FieldError>) -> Option<u16> {
        runtime(fields, "serviceDetails.runtime", &self.runtime);
        runtime(fields, "serviceDetails.env", &self.env);
        let d = "serviceDetails.";
        for (name, value, why) in [
            ("buildSourceId", &self.build_source_id, NO_BUILDS),
            (
                "pullRequestPreviewsEnabled",
                &self.pull_request_previews_enabled,
                "berth has no preview environments",
            ),
            (
                "previews",
                &self.previews,
                "berth has no preview environments",
            ),
            ("buildCommand", &self.build_command, NO_BUILDS),
            (
                "publishPath",
                &self.publish_path,
                "berth has no static sites",
            ),
            (
                "renderSubdomainPolicy",
                &self.render_subdomain_policy,
                "a web service is always served at <name>.<base-domain>",
            ),
        ] {
            unsupported(fields, &format!("{d}{name}"), value, why);
        }
        // Build tiers, edge caching and internal routing change nothing
        // for an image that is served as is.
        let _ = (&self.build_plan, &self.cache, &self.internal_routing);
        if let Some(e) = &self.env_specific_details {
            let d = "serviceDetails.envSpecificDetails.";
            for (name, value) in [
                ("dockerContext", &e.docker_context),
                ("dockerfilePath", &e.dockerfile_path),
                ("registryCredentialId", &e.registry_credential_id),
                ("buildCommand", &e.build_command),
                ("startCommand", &e.start_command),
            ] {
                unsupported(fields, &format!("{d}{name}"), value, NO_BUILDS);
            }
        }
        match (self.shutdown_delay_seconds, self.max_shutdown_delay_seconds) {
            (Some(a), Some(b)) if a != b => {
                field(
                    fields,
                    "serviceDetails.maxShutdownDelaySeconds",
                    "differs from shutdownDelaySeconds (the same setting)",
                );
                None
            }
            (a, b) => a.or(b),
        }
    }

    /// The pre-deploy command, from `serviceDetails` or (as Render shows
    /// it) `envSpecificDetails`.
    fn pre_deploy(&self) -> Option<Option<String>> {
        self.pre_deploy_command.clone().or_else(|| {
            self.env_specific_details
                .as_ref()
                .and_then(|e| e.pre_deploy_command.clone())
        })
    }

    fn docker_command(&self) -> Option<Option<String>> {
        self.env_specific_details
            .as_ref()
            .and_then(|e| e.docker_command.clone())
    }
}

/// A notification setting as a body gives it: berth's values (`all`,
/// `failure`, `none`) or Render's service values (`default` follows the
/// owner, `notify` sends failures, `ignore` sends nothing).
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyBody {
    All,
    Failure,
    None,
    Default,
    Notify,
    Ignore,
}

impl NotifyBody {
    /// The service's override (`None`: the owner's default).
    pub(crate) fn setting(self) -> Option<NotifySetting> {
        match self {
            NotifyBody::All => Some(NotifySetting::All),
            NotifyBody::Failure | NotifyBody::Notify => Some(NotifySetting::Failure),
            NotifyBody::None | NotifyBody::Ignore => Some(NotifySetting::None),
            NotifyBody::Default => None,
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "ServicePOST")]
pub struct CreateBody {
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub name: Option<String>,
    pub owner_id: Option<String>,
    pub image: Option<ImageBody>,
    pub env_vars: Option<Vec<EnvVarBody>>,
    pub service_details: Option<DetailsBody>,
    pub notify_on_fail: Option<NotifyBody>,
    #[serde(flatten)]
    pub render: RenderSource,
}

/// Render's fields for services built from a repository; for an image
/// they must ask for nothing.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RenderSource {
    #[schemars(with = "Option<String>")]
    pub auto_deploy: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub auto_deploy_trigger: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub repo: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub branch: Option<Value>,
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub build_filter: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub root_dir: Option<Value>,
    #[schemars(with = "Option<Vec<serde_json::Map<String, Value>>>")]
    pub secret_files: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub environment_id: Option<Value>,
    #[schemars(with = "Option<String>")]
    pub build_source_id: Option<Value>,
}

impl RenderSource {
    fn check(&self, fields: &mut Vec<FieldError>) {
        for (name, value, why) in [
            ("autoDeploy", &self.auto_deploy, "an image service has nothing to deploy by itself: deploy by hook, API or bus command"),
            ("autoDeployTrigger", &self.auto_deploy_trigger, "an image service has nothing to deploy by itself: deploy by hook, API or bus command"),
            ("repo", &self.repo, NO_BUILDS),
            ("branch", &self.branch, NO_BUILDS),
            ("buildFilter", &self.build_filter, NO_BUILDS),
            ("rootDir", &self.root_dir, NO_BUILDS),
            ("buildSourceId", &self.build_source_id, NO_BUILDS),
            ("environmentId", &self.environment_id, "berth has no environments"),
        ] {
            unsupported(fields, name, value, why);
        }
    }
}

pub(crate) fn env_vars(
    vars: Vec<EnvVarBody>,
    fields: &mut Vec<FieldError>,
) -> BTreeMap<String, Secret> {
    if vars.len() > MAX_ENV_VARS {
        field(fields, "envVars", "too many variables (at most 200)");
    }
    let mut out = BTreeMap::new();
    for v in vars.into_iter().take(MAX_ENV_VARS) {
        if !env_key_ok(&v.key) {
            field(fields, "envVars.key", ENV_KEY_RULE);
            continue;
        }
        let Some(value) = env_value(fields, "envVars.value", v.value, v.generate_value) else {
            continue;
        };
        if value.len() > MAX_ENV_VALUE {
            field(fields, "envVars.value", "must be at most 16 KiB");
        } else if out.insert(v.key, Secret::new(value)).is_some() {
            field(fields, "envVars.key", "each key may appear once");
        }
    }
    out
}

/// Render's `secretFiles` (`[{name, content}]`) in clear, by name; what
/// is wrong with it said in `fields` (a content is never echoed).
pub(crate) fn secret_files(
    files: Vec<SecretFileBody>,
    fields: &mut Vec<FieldError>,
) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    for f in files {
        if out.insert(f.name, Secret::new(f.content)).is_some() {
            field(fields, "secretFiles.name", "each name may appear once");
        }
    }
    out
}

/// Render's `SecretFileInput`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretFileBody {
    /// A file name in `/etc/secrets` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    pub content: String,
}

pub(crate) const ENV_KEY_RULE: &str =
    "must be 1-128 characters of A-Z, a-z, 0-9 and _, not starting with a digit";

/// Whether `key` may name an env var.
pub(crate) fn env_key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_ENV_KEY
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `value` fits in an env var.
pub(crate) fn env_value_ok(value: &str) -> bool {
    value.len() <= MAX_ENV_VALUE
}

/// A service view of `state`, or 404.
pub(crate) fn view_of(
    st: &AppState,
    id: &ServiceId,
    state: &ServiceState,
) -> Result<views::ServiceView, ApiError> {
    st.service_view(id, state)?
        .ok_or_else(|| ApiError::not_found("service"))
}

/// The answer to a create: Render's `ServiceAndDeploy`, plus berth's
/// deploy hook URL.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub service: views::ServiceView,
    /// The initial deploy.
    pub deploy_id: String,
    /// berth: the deploy hook's path with its key (also at
    /// `/deploy-hook`).
    pub deploy_hook_url: String,
}

/// A service in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ServiceItem {
    pub service: views::ServiceView,
    pub cursor: String,
}

/// A deploy hook URL (its path, with the key).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HookUrl {
    pub url: String,
}

/// POST /v1/services: Render's `{service, deployId}` (201), plus berth's
/// deploy hook URL, shown here once.
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(mut body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let owner = caller.owner.to_string();
    owner_matches(body.owner_id.as_deref(), &owner)?;
    let mut fields = Vec::new();
    body.render.check(&mut fields);
    let service_type = match body.service_type.as_deref() {
        None => {
            field(&mut fields, "type", "is required");
            None
        }
        Some(t) => match serde_json::from_value::<ServiceType>(Value::String(t.to_owned())) {
            Ok(t) => Some(t),
            Err(_) => {
                field(
                    &mut fields,
                    "type",
                    "must be web_service, private_service, background_worker or cron_job",
                );
                None
            }
        },
    };
    if body.name.as_deref().is_none_or(str::is_empty) {
        field(&mut fields, "name", "is required");
    }
    let image = body.image.unwrap_or_default();
    owner_matches(image.owner_id.as_deref(), &owner)?;
    if image.image_path.as_deref().is_none_or(str::is_empty) {
        field(&mut fields, "image.imagePath", "is required");
    }
    let credential = match image.registry_credential_id.clone().flatten().as_deref() {
        None => None,
        Some(c) => match c.parse::<CredentialId>() {
            Ok(c) => Some(c),
            Err(_) => {
                field(
                    &mut fields,
                    "image.registryCredentialId",
                    "is not a registry credential id (rgc-…)",
                );
                None
            }
        },
    };
    let details = body.service_details.unwrap_or_default();
    let shutdown_delay = details.check(&mut fields);
    let plan = match details.plan.as_deref() {
        None => None,
        Some(p) => {
            let found = views::plan(p);
            if found.is_none() {
                field(&mut fields, "serviceDetails.plan", "is not a known plan");
            }
            found
        }
    };
    let env = env_vars(body.env_vars.unwrap_or_default(), &mut fields);
    let files = match body.render.secret_files.take().filter(|v| !v.is_null()) {
        None => BTreeMap::new(),
        Some(v) => match serde_json::from_value::<Vec<SecretFileBody>>(v) {
            Ok(given) => secret_files(given, &mut fields),
            Err(_) => {
                field(
                    &mut fields,
                    "secretFiles",
                    "must be a list of {name, content}",
                );
                BTreeMap::new()
            }
        },
    };
    let disk = details.disk.clone().and_then(|d| d.disk(&mut fields));
    let autoscaling = match details.autoscaling.clone().filter(|v| !v.is_null()) {
        None => None,
        Some(v) => serde_json::from_value(v)
            .map_err(|_| {
                field(
                    &mut fields,
                    "serviceDetails.autoscaling",
                    "must be {enabled, min, max, criteria: {cpu: {enabled, percentage}, memory: {enabled, percentage}}}",
                )
            })
            .ok(),
    };
    let (Some(service_type), Some(name), Some(image_path), true) =
        (service_type, body.name, image.image_path, fields.is_empty())
    else {
        return Err(ApiError::fields(fields));
    };
    let mut new = NewService::new(&name, service_type, &image_path);
    new.credential = credential;
    new.pre_deploy_command = details.pre_deploy().flatten();
    new.docker_command = details.docker_command().flatten();
    new.region = details.region;
    new.plan = plan;
    new.num_instances = details.num_instances;
    new.env_vars = env;
    new.secret_files = files;
    new.health_check_path = details.health_check_path.flatten();
    new.schedule = details.schedule;
    new.notify = body.notify_on_fail.and_then(NotifyBody::setting);
    new.overlap_policy = details.overlap_policy;
    new.shutdown_delay_secs = shutdown_delay;
    new.https_redirect = details.https_redirect;
    new.disk = disk;
    new.autoscaling = autoscaling;
    new.maintenance_mode = details.maintenance_mode;
    new.ip_allow_list = details.ip_allow_list.flatten();
    let created = st.ingress.create_service(&caller, new).await?;
    let view = view_of(&st, &created.id, &created.state)?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            service: view,
            deploy_id: created.deploy.to_string(),
            deploy_hook_url: views::hook_path(&created.id, created.hook_key.expose()),
        }),
    ))
}

/// Query of `GET /v1/services`: Render's filters, honoured: `name`,
/// `type`, `env` (every service's is `image`), `region`, `suspended`,
/// `ownerId` (only the caller's has services), `environmentId` (berth has
/// no environments, so nothing is in one) and the creation and update
/// times; `includePreviews` changes nothing (berth has no previews).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub name: Vec<String>,
    #[serde(default, deserialize_with = "query::many", rename = "type")]
    pub types: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub region: Vec<String>,
    /// `suspended`, `not_suspended`.
    #[serde(default, deserialize_with = "query::many")]
    pub suspended: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    /// The creation and update bounds.
    #[serde(flatten)]
    pub changed: query::Changed,
    /// Accepted; berth has no preview services.
    #[serde(default, deserialize_with = "query::one")]
    pub include_previews: Option<String>,
    /// berth has no environments: no service is in one.
    #[serde(default, deserialize_with = "query::many")]
    pub environment_id: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// `ServicesQuery` checked: what a listed service must match.
struct ServiceFilter {
    names: Vec<String>,
    types: Vec<ServiceType>,
    regions: Vec<String>,
    suspended: Option<bool>,
    created: Between,
    updated: Between,
    /// A filter nothing can match (another owner, another runtime).
    none: bool,
}

impl ServiceFilter {
    fn of(q: &ServicesQuery, caller_owner: &str) -> Result<Self, ApiError> {
        let mut types = Vec::new();
        for t in &q.types {
            match serde_json::from_value::<ServiceType>(Value::String(t.clone())) {
                Ok(t) => types.push(t),
                // Render's static sites: berth has none.
                Err(_) if t == "static_site" => {}
                Err(_) => return Err(ApiError::field("type", "is not a service type")),
            }
        }
        let static_only = !q.types.is_empty() && types.is_empty();
        if q.suspended
            .iter()
            .any(|s| s != "suspended" && s != "not_suspended")
        {
            return Err(ApiError::field(
                "suspended",
                "must be suspended or not_suspended",
            ));
        }
        let asked = |v: &str| q.suspended.iter().any(|s| s == v);
        // Both values, or neither: no filter.
        let suspended = match (asked("suspended"), asked("not_suspended")) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        };
        let (created, updated) = q.changed.bounds()?;
        Ok(ServiceFilter {
            names: q.name.clone(),
            types,
            regions: q.region.clone(),
            suspended,
            created,
            updated,
            none: static_only
                || !q.environment_id.is_empty()
                || !query::owner_selected(&q.owner_id, caller_owner)
                || (!q.env.is_empty() && !q.env.iter().any(|e| e == "image")),
        })
    }

    fn keeps(&self, s: &ServiceState) -> bool {
        let Some(c) = s.config.as_ref() else {
            return false;
        };
        !self.none
            && (self.names.is_empty() || self.names.contains(&c.name))
            && (self.types.is_empty() || self.types.contains(&c.service_type))
            && (self.regions.is_empty() || self.regions.contains(&c.region))
            && self
                .suspended
                .is_none_or(|w| w == (s.status == ServiceStatus::Suspended))
            && self.created.holds(s.created_at)
            && self.updated.holds(s.updated_at)
    }
}

/// GET /v1/services
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<ServicesQuery>,
) -> Result<Json<Vec<ServiceItem>>, ApiError> {
    page_of(&st, &caller, &q, |id, _, service| ServiceItem {
        service,
        cursor: id.to_string(),
    })
    .await
    .map(Json)
}

/// One page of the caller's services as `GET /v1/services` lists them
/// (its filters, cursor and limit), each made into a `T` by `item` from
/// the service's id, state and view: the listing and the dashboard's
/// services page are the same page.
pub(crate) async fn page_of<T>(
    st: &AppState,
    caller: &Caller,
    q: &ServicesQuery,
    item: impl Fn(&ServiceId, &ServiceState, views::ServiceView) -> T,
) -> Result<Vec<T>, ApiError> {
    let filter = ServiceFilter::of(q, caller.owner.as_str())?;
    query::flag("includePreviews", q.include_previews.as_deref())?;
    let limit = app::limit(q.limit.as_deref())?.unwrap_or(20);
    st.caught_up().await?;
    // The page is cut from references into the index; only its services
    // are rendered.
    st.read(|i| {
        i.services_page(&caller.owner, q.cursor.as_deref(), limit, |_, s| {
            filter.keeps(s)
        })
        .map(|items| {
            items
                .into_iter()
                .filter_map(|(id, state)| {
                    views::service(id, state, &st.links, |c| i.credential_name(c))
                        .map(|service| item(id, state, service))
                })
                .collect::<Vec<_>>()
        })
        .map_err(|e| ApiError::field("cursor", e.to_string()))
    })?
}

/// GET /v1/services/{id}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<views::ServiceView>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    view_of(&st, &id, &state).map(Json)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "ServicePATCH")]
pub struct UpdateBody {
    pub name: Option<String>,
    pub image: Option<ImageBody>,
    pub env_vars: Option<Vec<EnvVarBody>>,
    pub service_details: Option<DetailsBody>,
    #[serde(default, deserialize_with = "nullable")]
    pub notify_on_fail: Option<Option<NotifyBody>>,
    #[serde(flatten)]
    pub render: RenderSource,
}

/// PATCH /v1/services/{id}
pub async fn update(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<views::ServiceView>, ApiError> {
    let id = service_id(&id)?;
    let mut fields = Vec::new();
    body.render.check(&mut fields);
    unsupported(
        &mut fields,
        "secretFiles",
        &body.render.secret_files,
        "secret files are changed with PUT /v1/services/{id}/secret-files",
    );
    let mut settings = ServiceSettings {
        name: body.name,
        notify: body.notify_on_fail.map(|n| n.and_then(NotifyBody::setting)),
        ..ServiceSettings::default()
    };
    if let Some(image) = body.image {
        owner_matches(image.owner_id.as_deref(), caller.owner.as_str())?;
        // A credential id replaces the service's credential; "" removes it
        // (the image must then be public).
        settings.credential = match image.registry_credential_id.as_ref().map(|c| c.as_deref()) {
            None => None,
            Some(None | Some("")) => Some(None),
            Some(Some(c)) => match c.parse::<CredentialId>() {
                Ok(c) => Some(Some(c)),
                Err(_) => {
                    field(
                        &mut fields,
                        "image.registryCredentialId",
                        "is not a registry credential id (rgc-…), or \"\" to remove it",
                    );
                    None
                }
            },
        };
        settings.image = image.image_path;
    }
    if let Some(d) = body.service_details {
        settings.shutdown_delay_secs = d.check(&mut fields);
        if d.region.is_some() {
            field(&mut fields, "serviceDetails.region", "cannot be changed");
        }
        if d.num_instances.is_some() {
            field(
                &mut fields,
                "serviceDetails.numInstances",
                "use POST /v1/services/{id}/scale",
            );
        }
        if d.autoscaling.as_ref().is_some_and(|v| !v.is_null()) {
            field(
                &mut fields,
                "serviceDetails.autoscaling",
                "use PUT /v1/services/{id}/autoscaling (DELETE to remove it)",
            );
        }
        if d.disk.is_some() {
            field(
                &mut fields,
                "serviceDetails.disk",
                "a service's disk is given when it is created; it cannot be added, changed or removed later",
            );
        }
        if let Some(p) = d.plan.as_deref() {
            settings.plan = views::plan(p);
            if settings.plan.is_none() {
                field(&mut fields, "serviceDetails.plan", "is not a known plan");
            }
        }
        settings.pre_deploy_command = d.pre_deploy();
        settings.docker_command = d.docker_command();
        settings.health_check_path = d.health_check_path;
        settings.schedule = d.schedule;
        settings.overlap_policy = d.overlap_policy;
        settings.https_redirect = d.https_redirect;
        settings.maintenance_mode = d.maintenance_mode;
        settings.ip_allow_list = d.ip_allow_list;
    }
    let env = body.env_vars.map(|v| env_vars(v, &mut fields));
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let state = st
        .ingress
        .update_service(&caller, &id, settings, env)
        .await?;
    view_of(&st, &id, &state).map(Json)
}

/// DELETE /v1/services/{id}
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.delete_service(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleBody {
    pub num_instances: Option<u32>,
}

/// POST /v1/services/{id}/scale
pub async fn scale(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    let n = body
        .num_instances
        .ok_or_else(|| ApiError::field("numInstances", "is required"))?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    st.ingress
        .scale(Scope::Owner(&caller), &id, n, &request)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// PUT /v1/services/{id}/autoscaling: Render's `AutoscalingConfig`, as
/// set (the instance count moves into `min..=max` at once when on).
pub async fn set_autoscaling(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<berth_schemas::model::AutoscalingConfig>,
) -> Result<Json<berth_schemas::model::AutoscalingConfig>, ApiError> {
    let id = service_id(&id)?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    let state = st
        .ingress
        .set_autoscaling(Scope::Owner(&caller), &id, Some(body.clone()), &request)
        .await?;
    Ok(Json(state.autoscaling.config.unwrap_or(body)))
}

/// DELETE /v1/services/{id}/autoscaling: the service keeps the count it
/// has, and is scaled by hand again.
pub async fn delete_autoscaling(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    st.ingress
        .set_autoscaling(Scope::Owner(&caller), &id, None, &request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// POST /v1/services/{id}/restart (200, as Render answers)
pub async fn restart(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    let request = berth_schemas::ids::DeployId::generate().to_string();
    st.ingress
        .restart(Scope::Owner(&caller), &id, &request)
        .await?;
    Ok(StatusCode::OK)
}

/// POST /v1/services/{id}/suspend
pub async fn suspend(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.suspend(&caller, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// POST /v1/services/{id}/resume
pub async fn resume(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.resume(&caller, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// A service's instance, as Render lists them.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// berth: the deploy it runs, its node and where it is in its life.
    pub deploy_id: String,
    pub node_id: String,
    pub phase: berth_domain::service::InstancePhase,
    pub healthy: bool,
    /// berth: where the router reaches it (`host:port`; web services),
    /// once started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// berth: what last went wrong with it since it last passed its health
    /// check (the failed check, or how its process ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// GET /v1/services/{id}/instances: the service's instances (a plain
/// array, as Render answers).
pub async fn instances(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    let id = service_id(&id)?;
    let state = st.ingress.show_service(&caller, &id).await?;
    Ok(Json(
        state
            .instances
            .iter()
            .map(|i| InstanceView {
                id: i.id.to_string(),
                created_at: i.scheduled_at.unwrap_or_default(),
                deploy_id: i.deploy.to_string(),
                node_id: i.node.to_string(),
                phase: i.phase,
                healthy: i.is_healthy(),
                addr: i.addr.clone(),
                problem: i.problem.clone(),
            })
            .collect(),
    ))
}

/// GET /v1/services/{id}/deploy-hook: the hook URL (path) with its key.
pub async fn hook(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<HookUrl>, ApiError> {
    let id = service_id(&id)?;
    let key = st.ingress.hook_key(&caller, &id).await?;
    Ok(Json(HookUrl {
        url: views::hook_path(&id, key.expose()),
    }))
}

/// POST /v1/services/{id}/deploy-hook/regenerate: a new key; the old URL
/// stops working.
pub async fn regenerate_hook(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(_): JsonBody<Empty>,
) -> Result<Json<HookUrl>, ApiError> {
    let id = service_id(&id)?;
    let key = st.ingress.regenerate_hook_key(&caller, &id).await?;
    Ok(Json(HookUrl {
        url: views::hook_path(&id, key.expose()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_fields_are_known_and_anything_else_is_refused() {
        let ok = serde_json::from_value::<CreateBody>(json!({
            "type": "web_service", "name": "a", "autoDeploy": "no", "rootDir": "",
        }));
        assert!(ok.is_ok(), "{ok:?}");
        let typo =
            serde_json::from_value::<CreateBody>(json!({"type": "web_service", "nmae": "a"}));
        assert!(typo.is_err(), "an unknown field is refused: {typo:?}");
        let typo = serde_json::from_value::<UpdateBody>(json!({"imagePath": "x"}));
        assert!(typo.is_err(), "an unknown field is refused: {typo:?}");
    }
}

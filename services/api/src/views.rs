//! The JSON the API answers with, in Render's shapes: camelCase fields,
//! snake_case enum values, listings as `[{cursor, <item>}]`. Env var values
//! and hook keys are never part of a view.

use berth_domain::service::{Deploy, ServiceState};
use berth_schemas::ids::ServiceId;
use berth_schemas::model::{DeployStatus, DeployTrigger, Plan, ServiceType};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

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

/// A deploy as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployView {
    pub id: String,
    pub status: DeployStatus,
    pub trigger: DeployTrigger,
    pub image: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rollback_eligible: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl DeployView {
    pub fn of(d: &Deploy) -> Self {
        Self {
            id: d.id.to_string(),
            status: d.status,
            trigger: d.trigger,
            image: json!({
                "ref": d.image,
                "sha": d.digest(),
                "registryCredential": d.credential.as_ref().map(ToString::to_string),
            }),
            rollback_of: d.rollback_of.as_ref().map(ToString::to_string),
            reason: d.reason.clone(),
            rollback_eligible: d.rollback_eligible,
            created_at: d.created_at,
            started_at: d.started_at,
            finished_at: d.finished_at,
        }
    }
}

fn type_name(t: ServiceType) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// A service as the API shows it (`None` if it has no config).
pub fn service(id: &ServiceId, s: &ServiceState) -> Option<Value> {
    let c = s.config.as_ref()?;
    let suspended = if s.status == berth_domain::service::ServiceStatus::Suspended {
        "suspended"
    } else {
        "not_suspended"
    };
    Some(json!({
        "id": id.to_string(),
        "name": c.name,
        "ownerId": c.owner.to_string(),
        "type": type_name(c.service_type),
        "imagePath": c.image,
        "image": {
            "imagePath": c.image,
            "registryCredentialId": c.credential.as_ref().map(ToString::to_string),
        },
        "suspended": suspended,
        "notifyOnFail": c.notify,
        "envVarKeys": c.env_vars.keys().collect::<Vec<_>>(),
        "createdAt": s.created_at,
        "updatedAt": s.updated_at,
        "liveDeployId": s.live.as_ref().map(ToString::to_string),
        "serviceDetails": {
            "region": c.region,
            "plan": c.plan.name,
            "numInstances": c.num_instances,
            "healthCheckPath": c.health_check_path,
            "preDeployCommand": c.pre_deploy_command,
            "schedule": c.schedule,
            "overlapPolicy": c.overlap_policy,
            "shutdownDelaySeconds": c.shutdown_delay_secs,
            "envSpecificDetails": { "dockerCommand": c.docker_command },
        },
    }))
}

/// `/deploy/srv-…?key=…`, the path of a service's deploy hook.
pub fn hook_path(id: &ServiceId, key: &str) -> String {
    format!("/deploy/{id}?key={key}")
}

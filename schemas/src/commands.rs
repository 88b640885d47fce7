//! Commands internal services publish on the bus (`…cmd.scale`, `…cmd.restart`,
//! `…cmd.deploy`), MessagePack with named fields. Each carries a request id
//! that becomes the idempotency key of the resulting append, so a command
//! published twice acts once.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::ServiceId;

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

/// Name and JSON Schema of every command.
pub fn command_types() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("scale", schemars::schema_for!(ScaleCommand)),
        ("restart", schemars::schema_for!(RestartCommand)),
        ("deploy", schemars::schema_for!(DeployCommand)),
    ]
}

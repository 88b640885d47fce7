//! Commands internal services publish on the bus (`…cmd.scale`, `…cmd.restart`,
//! `…cmd.deploy`), MessagePack with named fields. Each carries a request id
//! that becomes the idempotency key of the resulting append, so a command
//! published twice acts once.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CredentialId, OwnerId, ServiceId};
use crate::model::{PullFailureReason, ResolvedImage};

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
    ]
}

//! The OpenAPI 3.1 document of the API, served at `/v1/openapi.json` and
//! committed as `services/api/openapi.json` (a test fails when they drift).
//! Hand-built from one route table, because the handlers' bodies are
//! validated by hand (field errors) rather than by derived schemas.

use axum::Json;
use serde_json::{json, Map, Value};

/// (method, path, summary, request body fields, success status)
type Route = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    u16,
);

/// Every route.
pub const ROUTES: &[Route] = &[
    ("get", "/v1/services", "List services", &[], 200),
    (
        "post",
        "/v1/services",
        "Create a service (image verified first)",
        &[
            "type",
            "name",
            "ownerId",
            "image",
            "envVars",
            "serviceDetails",
            "notifyOnFail",
        ],
        201,
    ),
    (
        "get",
        "/v1/services/{serviceId}",
        "Retrieve a service",
        &[],
        200,
    ),
    (
        "patch",
        "/v1/services/{serviceId}",
        "Update a service",
        &["image", "envVars", "serviceDetails", "notifyOnFail"],
        200,
    ),
    (
        "delete",
        "/v1/services/{serviceId}",
        "Delete a service",
        &[],
        204,
    ),
    (
        "get",
        "/v1/services/{serviceId}/deploys",
        "List deploys",
        &[],
        200,
    ),
    (
        "post",
        "/v1/services/{serviceId}/deploys",
        "Trigger a deploy",
        &["imageUrl", "clearCache"],
        201,
    ),
    (
        "get",
        "/v1/services/{serviceId}/deploys/{deployId}",
        "Retrieve a deploy",
        &[],
        200,
    ),
    (
        "post",
        "/v1/services/{serviceId}/deploys/{deployId}/cancel",
        "Cancel a deploy",
        &[],
        200,
    ),
    (
        "post",
        "/v1/services/{serviceId}/rollback",
        "Roll back to a deploy",
        &["deployId"],
        201,
    ),
    (
        "post",
        "/v1/services/{serviceId}/scale",
        "Scale a service",
        &["numInstances"],
        202,
    ),
    (
        "post",
        "/v1/services/{serviceId}/restart",
        "Restart a service",
        &[],
        202,
    ),
    (
        "post",
        "/v1/services/{serviceId}/suspend",
        "Suspend a service",
        &[],
        202,
    ),
    (
        "post",
        "/v1/services/{serviceId}/resume",
        "Resume a service",
        &[],
        202,
    ),
    (
        "get",
        "/v1/services/{serviceId}/deploy-hook",
        "The deploy hook URL",
        &[],
        200,
    ),
    (
        "post",
        "/v1/services/{serviceId}/deploy-hook/regenerate",
        "Regenerate the deploy hook key",
        &[],
        200,
    ),
    (
        "post",
        "/v1/cron-jobs/{serviceId}/runs",
        "Trigger a cron job run",
        &[],
        201,
    ),
    (
        "delete",
        "/v1/cron-jobs/{serviceId}/runs",
        "Cancel the active cron job run",
        &[],
        204,
    ),
    (
        "get",
        "/v1/registrycredentials",
        "List registry credentials",
        &[],
        200,
    ),
    (
        "post",
        "/v1/registrycredentials",
        "Create a registry credential",
        &[
            "name",
            "registry",
            "host",
            "username",
            "authToken",
            "ownerId",
        ],
        201,
    ),
    (
        "get",
        "/v1/registrycredentials/{registryCredentialId}",
        "Retrieve a registry credential",
        &[],
        200,
    ),
    (
        "patch",
        "/v1/registrycredentials/{registryCredentialId}",
        "Rotate a registry credential",
        &["name", "username", "authToken"],
        200,
    ),
    (
        "delete",
        "/v1/registrycredentials/{registryCredentialId}",
        "Delete a registry credential",
        &[],
        204,
    ),
    ("get", "/v1/api-keys", "List API keys", &[], 200),
    (
        "post",
        "/v1/api-keys",
        "Create an API key (shown once)",
        &["label"],
        201,
    ),
    (
        "delete",
        "/v1/api-keys/{apiKeyId}",
        "Revoke an API key",
        &[],
        204,
    ),
    ("get", "/v1/integrations", "List integrations", &[], 200),
    (
        "post",
        "/v1/integrations",
        "Create an integration: NATS credentials bound to your owner (shown once)",
        &["name"],
        201,
    ),
    (
        "delete",
        "/v1/integrations/{integrationId}",
        "Revoke an integration",
        &[],
        204,
    ),
    (
        "get",
        "/v1/notification-settings/owners/{ownerId}",
        "Owner notification settings",
        &[],
        200,
    ),
    (
        "patch",
        "/v1/notification-settings/owners/{ownerId}",
        "Update owner notification settings",
        &[
            "notificationsToSend",
            "email",
            "slackWebhookUrl",
            "webhookUrl",
            "webhookSecret",
        ],
        200,
    ),
    (
        "get",
        "/v1/notification-settings/overrides/services/{serviceId}",
        "Service notification override",
        &[],
        200,
    ),
    (
        "patch",
        "/v1/notification-settings/overrides/services/{serviceId}",
        "Update the service notification override",
        &["notifyOnFail"],
        200,
    ),
    (
        "get",
        "/deploy/{serviceId}",
        "Deploy hook (query: key, imgURL)",
        &[],
        200,
    ),
    (
        "post",
        "/deploy/{serviceId}",
        "Deploy hook (query: key, imgURL)",
        &[],
        200,
    ),
    ("get", "/v1/openapi.json", "This document", &[], 200),
];

fn operation(path: &str, summary: &str, body: &[&str], status: u16) -> Value {
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut op = json!({
        "summary": summary,
        "parameters": params,
        "responses": {
            status.to_string(): {"description": "success"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"},
            "429": {"$ref": "#/components/responses/TooManyFailures"},
            "503": {"$ref": "#/components/responses/Error"},
        },
    });
    if path.starts_with("/deploy/") || path == "/v1/openapi.json" {
        op["security"] = json!([]);
    }
    if !body.is_empty() {
        let props: Map<String, Value> = body.iter().map(|f| ((*f).to_owned(), json!({}))).collect();
        op["requestBody"] = json!({
            "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "properties": props,
            }}}
        });
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body, status) in ROUTES {
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = operation(path, summary, body, *status);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "berth API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {
                "description": "an error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }, "TooManyFailures": {
                "description": "too many failed authentications from this client address",
                "headers": {"Retry-After": {
                    "description": "seconds until the next attempt is counted",
                    "schema": {"type": "integer"},
                }},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }},
            "schemas": {"Error": {
                "type": "object",
                "required": ["id", "message"],
                "properties": {
                    "id": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}}}},
                },
            }},
        },
        "paths": paths,
    })
}

/// GET /v1/openapi.json
pub async fn serve() -> Json<Value> {
    Json(document())
}

//! The route table of the API: what [`crate::router`] serves and what the
//! OpenAPI 3.1 document says, from one list ([`ROUTES`]), so a route cannot
//! be served without being documented. The document is served at
//! `/v1/openapi.json` and committed as `services/api/openapi.json` (a test
//! fails when they drift). Hand-built rather than derived from the
//! handlers' types, because their bodies are validated by hand (field
//! errors) rather than by derived schemas.

use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::app::AppState;
use crate::hooks;
use crate::routes::{deploys, env_vars, events, notifications, owner, services};

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Lowercase HTTP method, as OpenAPI spells it.
    pub method: &'static str,
    /// The path template, `{name}` for each parameter: axum's syntax and
    /// OpenAPI's, so the router and the document read the same string.
    pub path: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// The JSON body's fields (none: no body).
    pub body: &'static [&'static str],
    /// The status of a success.
    pub status: u16,
}

/// Each row names its method, path and handler once: the macro makes both
/// the public table and the router's registrations from it.
macro_rules! routes {
    ($(
        $method:ident $path:literal => $handler:path,
        $summary:literal, [$($field:literal),* $(,)?], $status:literal;
    )*) => {
        /// Every route of the API, in the order they are registered.
        pub const ROUTES: &[Route] = &[$(Route {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            body: &[$($field),*],
            status: $status,
        }),*];

        /// Registers every route of [`ROUTES`] on `router`: the only place
        /// the API's routes are added (a test checks that no other code
        /// adds any).
        pub(crate) fn add_routes(router: Router<AppState>) -> Router<AppState> {
            router $(.route($path, axum::routing::$method($handler)))*
        }
    };
}

routes! {
    get "/v1/services" => services::list,
        "List services", [], 200;
    post "/v1/services" => services::create,
        "Create a service (image verified first)",
        ["type", "name", "ownerId", "image", "envVars", "serviceDetails", "notifyOnFail"], 201;
    get "/v1/services/{serviceId}" => services::get,
        "Retrieve a service", [], 200;
    patch "/v1/services/{serviceId}" => services::update,
        "Update a service", ["image", "envVars", "serviceDetails", "notifyOnFail"], 200;
    delete "/v1/services/{serviceId}" => services::delete,
        "Delete a service", [], 204;
    get "/v1/services/{serviceId}/deploys" => deploys::list,
        "List deploys", [], 200;
    post "/v1/services/{serviceId}/deploys" => deploys::create,
        "Trigger a deploy", ["imageUrl", "clearCache"], 201;
    get "/v1/services/{serviceId}/deploys/{deployId}" => deploys::get,
        "Retrieve a deploy", [], 200;
    post "/v1/services/{serviceId}/deploys/{deployId}/cancel" => deploys::cancel,
        "Cancel a deploy", [], 200;
    post "/v1/services/{serviceId}/rollback" => deploys::rollback,
        "Roll back to a deploy", ["deployId"], 201;
    get "/v1/services/{serviceId}/events" => events::list,
        "The service's events, newest first (query: type, allTypes, startTime, endTime, cursor, limit)",
        [], 200;
    get "/v1/events/{eventId}" => events::get,
        "Retrieve an event", [], 200;
    get "/v1/services/{serviceId}/instances" => services::instances,
        "List the service's instances", [], 200;
    get "/v1/services/{serviceId}/env-vars" => env_vars::list,
        "List env vars, with values", [], 200;
    put "/v1/services/{serviceId}/env-vars" => env_vars::replace,
        "Replace every env var", [], 200;
    get "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::get,
        "Retrieve an env var", [], 200;
    put "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::set,
        "Add or update an env var", ["value", "generateValue"], 200;
    delete "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::delete,
        "Delete an env var", [], 204;
    post "/v1/services/{serviceId}/scale" => services::scale,
        "Scale a service", ["numInstances"], 202;
    post "/v1/services/{serviceId}/restart" => services::restart,
        "Restart a service", [], 200;
    post "/v1/services/{serviceId}/suspend" => services::suspend,
        "Suspend a service", [], 202;
    post "/v1/services/{serviceId}/resume" => services::resume,
        "Resume a service", [], 202;
    get "/v1/services/{serviceId}/deploy-hook" => services::hook,
        "The deploy hook URL", [], 200;
    post "/v1/services/{serviceId}/deploy-hook/regenerate" => services::regenerate_hook,
        "Regenerate the deploy hook key", [], 200;
    post "/v1/cron-jobs/{serviceId}/runs" => services::trigger_cron,
        "Trigger a cron job run", [], 200;
    delete "/v1/cron-jobs/{serviceId}/runs" => services::cancel_cron,
        "Cancel the active cron job run", [], 204;
    get "/v1/registrycredentials" => owner::list_credentials,
        "List registry credentials (query: name, username, type, updatedAfter, updatedBefore, \
         ownerId, cursor, limit; createdAfter and createdBefore are accepted and not applied)",
        [], 200;
    post "/v1/registrycredentials" => owner::create_credential,
        "Create a registry credential",
        ["name", "registry", "host", "username", "authToken", "ownerId"], 200;
    get "/v1/registrycredentials/{registryCredentialId}" => owner::get_credential,
        "Retrieve a registry credential", [], 200;
    patch "/v1/registrycredentials/{registryCredentialId}" => owner::update_credential,
        "Rotate a registry credential's token (registry and host cannot change)",
        ["registry", "host", "name", "username", "authToken"], 200;
    delete "/v1/registrycredentials/{registryCredentialId}" => owner::delete_credential,
        "Delete a registry credential", [], 204;
    get "/v1/api-keys" => owner::list_api_keys,
        "List API keys", [], 200;
    post "/v1/api-keys" => owner::create_api_key,
        "Create an API key (shown once)", ["label"], 201;
    delete "/v1/api-keys/{apiKeyId}" => owner::revoke_api_key,
        "Revoke an API key", [], 204;
    get "/v1/integrations" => owner::list_integrations,
        "List integrations", [], 200;
    post "/v1/integrations" => owner::create_integration,
        "Create an integration: NATS credentials bound to your owner (shown once)", ["name"], 201;
    delete "/v1/integrations/{integrationId}" => owner::revoke_integration,
        "Revoke an integration", [], 204;
    get "/v1/notification-settings/owners/{ownerId}" => notifications::get_owner,
        "Owner notification settings", [], 200;
    patch "/v1/notification-settings/owners/{ownerId}" => notifications::patch_owner,
        "Update owner notification settings",
        ["notificationsToSend", "emailEnabled", "previewNotificationsEnabled", "email",
         "slackWebhookUrl", "webhookUrl", "webhookSecret"], 200;
    get "/v1/notification-settings/overrides" => notifications::list_overrides,
        "List the services' notification overrides (query: serviceId, ownerId, cursor, limit)",
        [], 200;
    get "/v1/notification-settings/overrides/services/{serviceId}" => notifications::get_override,
        "Service notification override", [], 200;
    patch "/v1/notification-settings/overrides/services/{serviceId}" => notifications::patch_override,
        "Update the service notification override",
        ["notificationsToSend", "previewNotificationsEnabled", "notifyOnFail"], 200;
    get "/deploy/{serviceId}" => hooks::deploy_hook,
        "Deploy hook (query: key, imgURL)", [], 200;
    post "/deploy/{serviceId}" => hooks::deploy_hook,
        "Deploy hook (query: key, imgURL)", [], 200;
    get "/v1/openapi.json" => serve,
        "This document", [], 200;
}

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
    for r in ROUTES {
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = operation(r.path, r.summary, r.body, r.status);
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

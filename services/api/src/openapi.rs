//! The route table of the API: what [`crate::router`] serves and what the
//! OpenAPI 3.1 document says, from one list ([`ROUTES`]), so a route cannot
//! be served without being documented. Each operation is derived from its
//! handler's own signature: the request body from its `JsonBody<T>`, the
//! query parameters from its `Listing<T>`, whether it needs an API key
//! from its `Authed`, the answer from its return type; the schemas come
//! from those types (`schemars`). A handler whose types say nothing about
//! a part does not compile into the table (see [`Part`] and [`Answer`]).
//! The document is served at `/v1/openapi.json` and committed as
//! `services/api/openapi.json` (a test fails when they drift).
//!
//! The dashboard's pages, forms and streams are a second table,
//! [`PAGES`], registered beside the API's and kept out of the document,
//! which describes the JSON API only. These two tables are the only place
//! routes are added (a test checks it).

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::{Json, Router};
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::app::{AppState, Authed, ClientAddr, JsonBody};
use crate::dashboard;
use crate::error::ApiError;
use crate::hooks;
use crate::query::Listing;
use crate::routes::{
    cron, custom_domains, deploys, disks, env_vars, events, exec, jobs, log_streams, logs, metrics,
    nodes, notifications, owner, owners, secret_files, services, terminal, webhooks,
};

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Lowercase HTTP method, as OpenAPI spells it.
    pub method: &'static str,
    /// The path template, `{name}` for each parameter: axum's syntax and
    /// OpenAPI's, so the router and the document read the same string.
    pub path: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// The status of a success.
    pub status: u16,
    /// Describes the handler's parts with the given schema generators.
    describe: fn(&mut Generators) -> Operation,
}

impl Route {
    /// The operation the handler's types describe.
    pub fn operation(&self) -> Operation {
        (self.describe)(&mut Generators::new())
    }

    /// The top-level fields of the request body's schema (none without a
    /// body).
    pub fn body_fields(&self) -> Vec<String> {
        let mut g = Generators::new();
        let op = (self.describe)(&mut g);
        let Some(body) = op.body else {
            return Vec::new();
        };
        let defs = g.request.take_definitions(true);
        let resolved = match body.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .rsplit('/')
                .next()
                .and_then(|name| defs.get(name))
                .cloned()
                .unwrap_or(Value::Null),
            None => body,
        };
        resolved
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Schema generators: requests are described as they are read, answers
/// as they are written (a field skipped when empty is not required).
#[derive(Debug)]
pub struct Generators {
    request: SchemaGenerator,
    response: SchemaGenerator,
}

impl Generators {
    fn new() -> Self {
        let settings = |contract| {
            SchemaSettings::draft2020_12()
                .with(|s| {
                    s.definitions_path = "/components/schemas".into();
                    s.contract = contract;
                    s.meta_schema = None;
                })
                .into_generator()
        };
        Generators {
            request: settings(Contract::Deserialize),
            response: settings(Contract::Serialize),
        }
    }
}

/// What a handler's types say about its operation.
#[derive(Debug, Default, Clone)]
pub struct Operation {
    /// The API key is required (the handler takes [`Authed`]).
    pub authed: bool,
    /// Query parameters, OpenAPI parameter objects.
    pub query: Vec<Value>,
    /// The request body's schema.
    pub body: Option<Value>,
    /// The success answer's schema (`None`: no body).
    pub answer: Option<Value>,
}

/// A handler argument's share of the operation.
pub trait Part {
    fn describe(_op: &mut Operation, _g: &mut Generators) {}
}

impl<S> Part for State<S> {}
impl<T> Part for Path<T> {}
impl Part for Uri {}
impl Part for axum::http::HeaderMap {}
impl Part for ClientAddr {}
impl Part for axum::extract::ws::WebSocketUpgrade {}
impl Part
    for Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >
{
}

impl Part for Authed {
    fn describe(op: &mut Operation, _: &mut Generators) {
        op.authed = true;
    }
}

impl<T: JsonSchema> Part for JsonBody<T> {
    fn describe(op: &mut Operation, g: &mut Generators) {
        op.body = Some(g.request.subschema_for::<T>().to_value());
    }
}

/// Query parameters from the properties of `T`'s schema.
fn query_params<T: JsonSchema>(op: &mut Operation, g: &mut Generators) {
    let schema = g.request.root_schema_for::<T>().to_value();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let mut prop = prop.clone();
        let description = prop
            .as_object_mut()
            .and_then(|p| p.remove("description"))
            .unwrap_or(Value::Null);
        let mut param = json!({ "name": name, "in": "query", "required": false, "schema": prop });
        if !description.is_null() {
            param["description"] = description;
        }
        if param["schema"]["type"] == "array" {
            // Render's clients repeat the key: `type=a&type=b`.
            param["style"] = json!("form");
            param["explode"] = json!(true);
        }
        op.query.push(param);
    }
}

impl<T: JsonSchema> Part for Listing<T> {
    fn describe(op: &mut Operation, g: &mut Generators) {
        query_params::<T>(op, g);
    }
}

impl<T: JsonSchema> Part for hooks::HookParams<T> {
    fn describe(op: &mut Operation, g: &mut Generators) {
        query_params::<T>(op, g);
    }
}

/// A handler's return type's share of the operation.
pub trait Answer {
    fn describe(_op: &mut Operation, _g: &mut Generators) {}
}

impl<T: JsonSchema> Answer for Json<T> {
    fn describe(op: &mut Operation, g: &mut Generators) {
        op.answer = Some(g.response.subschema_for::<T>().to_value());
    }
}

impl<T: JsonSchema> Answer for (StatusCode, Json<T>) {
    fn describe(op: &mut Operation, g: &mut Generators) {
        <Json<T> as Answer>::describe(op, g);
    }
}

impl Answer for StatusCode {}

impl<A: Answer> Answer for Result<A, ApiError> {
    fn describe(op: &mut Operation, g: &mut Generators) {
        A::describe(op, g);
    }
}

/// The deploy hook answers its own small bodies (see [`hooks`]).
impl Answer for Response {}

/// A handler, described by its arguments and its answer. Implemented for
/// every `async fn` whose arguments are [`Part`]s and whose output is an
/// [`Answer`].
pub trait Handler<M> {
    fn describe(g: &mut Generators) -> Operation;
}

macro_rules! handler {
    ($($a:ident),*) => {
        impl<F, Fut, $($a,)*> Handler<($($a,)*)> for F
        where
            F: Fn($($a),*) -> Fut,
            Fut: Future,
            Fut::Output: Answer,
            $($a: Part,)*
        {
            fn describe(g: &mut Generators) -> Operation {
                let mut op = Operation::default();
                $(<$a as Part>::describe(&mut op, g);)*
                <Fut::Output as Answer>::describe(&mut op, g);
                op
            }
        }
    };
}

handler!();
handler!(A);
handler!(A, B);
handler!(A, B, C);
handler!(A, B, C, D);
handler!(A, B, C, D, E);

/// The operation `handler`'s types describe.
fn describe<M, H: Handler<M>>(_handler: &H, g: &mut Generators) -> Operation {
    H::describe(g)
}

/// Each row names its method, path, handler, summary and success status
/// once: the macro makes both the public table and the router's
/// registrations from it.
macro_rules! routes {
    ($(
        $method:ident $path:literal => $handler:path,
        $summary:literal, $status:literal;
    )*) => {
        /// Every route of the API, in the order they are registered.
        pub const ROUTES: &[Route] = &[$(Route {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            status: $status,
            describe: |g| describe(&$handler, g),
        }),*];

        /// Registers every route of [`ROUTES`] and of [`PAGES`] on
        /// `router`: the only place routes are added (a test checks that no
        /// other code adds any).
        pub(crate) fn add_routes(router: Router<AppState>) -> Router<AppState> {
            add_pages(router $(.route($path, axum::routing::$method($handler)))*)
        }
    };
}

routes! {
    get "/v1/services" => services::list,
        "List services", 200;
    post "/v1/services" => services::create,
        "Create a service (image verified first)", 201;
    get "/v1/services/{serviceId}" => services::get,
        "Retrieve a service", 200;
    patch "/v1/services/{serviceId}" => services::update,
        "Update a service", 200;
    delete "/v1/services/{serviceId}" => services::delete,
        "Delete a service", 204;
    get "/v1/services/{serviceId}/deploys" => deploys::list,
        "List deploys", 200;
    post "/v1/services/{serviceId}/deploys" => deploys::create,
        "Trigger a deploy", 201;
    get "/v1/services/{serviceId}/deploys/{deployId}" => deploys::get,
        "Retrieve a deploy", 200;
    post "/v1/services/{serviceId}/deploys/{deployId}/cancel" => deploys::cancel,
        "Cancel a deploy", 200;
    post "/v1/services/{serviceId}/rollback" => deploys::rollback,
        "Roll back to a deploy", 201;
    get "/v1/services/{serviceId}/events" => events::list,
        "The service's events, newest first", 200;
    get "/v1/events/{eventId}" => events::get,
        "Retrieve an event", 200;
    get "/v1/metrics/cpu" => metrics::cpu,
        "CPU per instance (cores)", 200;
    get "/v1/metrics/memory" => metrics::memory,
        "Memory per instance (bytes)", 200;
    get "/v1/metrics/cpu-limit" => metrics::cpu_limit,
        "CPU limit per instance (cores)", 200;
    get "/v1/metrics/memory-limit" => metrics::memory_limit,
        "Memory limit per instance (bytes)", 200;
    get "/v1/metrics/filters/application" => metrics::application_filters,
        "The instances that reported over the window", 200;
    get "/v1/metrics/filters/http" => metrics::http_filters,
        "The status classes of the service's requests over the window", 200;
    get "/v1/metrics/disk-usage" => metrics::disk_usage,
        "The service's disk in use (bytes)", 200;
    get "/v1/metrics/disk-capacity" => metrics::disk_capacity,
        "The size of the service's disk (bytes)", 200;
    get "/v1/metrics/instance-count" => metrics::instance_count,
        "Instances per point", 200;
    get "/v1/metrics/http-requests" => metrics::http_requests,
        "Requests per point, by status class", 200;
    get "/v1/metrics/http-latency" => metrics::http_latency,
        "Request latency quantile (ms)", 200;
    get "/v1/disks" => disks::list,
        "List the disks of your services", 200;
    post "/v1/disks" => disks::add,
        "Add a disk to a service that has none (the service is deployed with it)", 201;
    get "/v1/disks/{diskId}" => disks::get,
        "Retrieve a disk", 200;
    delete "/v1/disks/{diskId}" => disks::delete,
        "Delete a disk and what is on it (the service is deployed without it)", 204;
    patch "/v1/disks/{diskId}" => disks::update,
        "Rename a disk, grow it or mount it elsewhere (its instance sees the change at its next \
         start)", 200;
    get "/v1/disks/{diskId}/snapshots" => disks::snapshots,
        "List a disk's snapshots, newest first (201, as Render answers it)", 201;
    post "/v1/disks/{diskId}/snapshots" => disks::take_snapshot,
        "Ask the disk's node for a snapshot now (berth's; listed once taken)", 202;
    post "/v1/disks/{diskId}/snapshots/restore" => disks::restore,
        "Set a disk back to one of its snapshots (the service is deployed on it)", 200;
    get "/v1/logs" => logs::list,
        "List the kept log lines of your services, paged by time (Render's request-log filters \
         host, statusCode, method, path, task, taskRun and sandbox are accepted and not applied)", 200;
    get "/v1/logs/values" => logs::values,
        "The values a label (instance, level, type) takes on the lines GET /v1/logs would list \
         for the same query, each once (host, method and statusCode have none: berth keeps no \
         request logs)", 200;
    get "/v1/logs/subscribe" => logs::subscribe,
        "New log lines of your services as they are stored, over a WebSocket (one text message \
         per line, in the shape of GET /v1/logs's lines)", 101;
    get "/v1/logs/streams/owner/{ownerId}" => log_streams::get_owner,
        "The owner's log stream: the TLS syslog endpoint its services' lines are sent to (no \
         endpoint: none is set)", 200;
    put "/v1/logs/streams/owner/{ownerId}" => log_streams::put_owner,
        "Set or change the owner's log stream (HOST:PORT, an optional token written before each \
         line)", 200;
    delete "/v1/logs/streams/owner/{ownerId}" => log_streams::delete_owner,
        "Remove the owner's log stream", 204;
    get "/v1/logs/streams/resource" => log_streams::list_resources,
        "List the services that override their owner's log stream (query: ownerId, resourceId, \
         setting, cursor, limit)", 200;
    get "/v1/logs/streams/resource/{resourceId}" => log_streams::get_resource,
        "A service's log stream override (no setting: it follows its owner's)", 200;
    put "/v1/logs/streams/resource/{resourceId}" => log_streams::put_resource,
        "Set a service's override: drop its lines, or send them to an endpoint of its own", 200;
    delete "/v1/logs/streams/resource/{resourceId}" => log_streams::delete_resource,
        "Remove a service's override: it follows its owner's log stream again", 204;
    get "/v1/services/{serviceId}/instances" => services::instances,
        "List the service's instances", 200;
    post "/v1/services/{serviceId}/exec" => exec::run,
        "Run a command in a running instance (no terminal): its exit code and output", 200;
    get "/v1/services/{serviceId}/shell" => terminal::open,
        "A terminal in a running instance, over a WebSocket (binary: typed and shown bytes; \
         text: resize, then started, exited or ended)", 101;
    get "/v1/services/{serviceId}/env-vars" => env_vars::list,
        "List env vars, with values", 200;
    put "/v1/services/{serviceId}/env-vars" => env_vars::replace,
        "Replace every env var", 200;
    patch "/v1/services/{serviceId}/env-vars" => env_vars::merge,
        "Set and remove some env vars, keep the others (one deploy)", 200;
    get "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::get,
        "Retrieve an env var", 200;
    put "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::set,
        "Add or update an env var", 200;
    delete "/v1/services/{serviceId}/env-vars/{envVarKey}" => env_vars::delete,
        "Delete an env var", 204;
    get "/v1/services/{serviceId}/secret-files" => secret_files::list,
        "List the service's secret files, with their contents (each instance reads them in \
         /etc/secrets)", 200;
    put "/v1/services/{serviceId}/secret-files" => secret_files::replace,
        "Replace every secret file (the service deploys)", 200;
    get "/v1/services/{serviceId}/secret-files/{secretFileName}" => secret_files::get,
        "Retrieve a secret file", 200;
    put "/v1/services/{serviceId}/secret-files/{secretFileName}" => secret_files::set,
        "Add or replace a secret file (the service deploys)", 201;
    delete "/v1/services/{serviceId}/secret-files/{secretFileName}" => secret_files::delete,
        "Delete a secret file (the service deploys)", 204;
    get "/v1/services/{serviceId}/custom-domains" => custom_domains::list,
        "List custom domains (query: name, domainType, verificationStatus, createdBefore, \
         createdAfter, cursor, limit)", 200;
    post "/v1/services/{serviceId}/custom-domains" => custom_domains::create,
        "Add a custom domain to a web service (no www/apex pair is created)", 201;
    get "/v1/services/{serviceId}/custom-domains/{customDomainIdOrName}" => custom_domains::get,
        "Retrieve a custom domain", 200;
    delete "/v1/services/{serviceId}/custom-domains/{customDomainIdOrName}" => custom_domains::delete,
        "Remove a custom domain (stops routing it; the name is released)", 204;
    post "/v1/services/{serviceId}/custom-domains/{customDomainIdOrName}/verify" => custom_domains::verify,
        "Ask for verification (verified once a certificate was issued for it)", 202;
    post "/v1/services/{serviceId}/scale" => services::scale,
        "Scale a service", 202;
    put "/v1/services/{serviceId}/autoscaling" => services::set_autoscaling,
        "Autoscale a service between min and max instances on its CPU and/or memory use \
         (web and private services, workers; not with a disk); the count moves into the \
         range at once", 200;
    delete "/v1/services/{serviceId}/autoscaling" => services::delete_autoscaling,
        "Remove a service's autoscaling (it keeps its current instance count)", 204;
    post "/v1/services/{serviceId}/restart" => services::restart,
        "Restart a service", 200;
    post "/v1/services/{serviceId}/suspend" => services::suspend,
        "Suspend a service", 202;
    post "/v1/services/{serviceId}/resume" => services::resume,
        "Resume a service", 202;
    get "/v1/services/{serviceId}/deploy-hook" => services::hook,
        "The deploy hook URL", 200;
    post "/v1/services/{serviceId}/deploy-hook/regenerate" => services::regenerate_hook,
        "Regenerate the deploy hook key", 200;
    get "/v1/services/{serviceId}/jobs" => jobs::list,
        "List the service's recent one-off jobs, newest first", 200;
    post "/v1/services/{serviceId}/jobs" => jobs::create,
        "Run a one-off job: a command once in a container of the live image", 201;
    get "/v1/services/{serviceId}/jobs/{jobId}" => jobs::get,
        "Retrieve a job", 200;
    post "/v1/services/{serviceId}/jobs/{jobId}/cancel" => jobs::cancel,
        "Cancel a pending or running job", 200;
    get "/v1/cron-jobs/{serviceId}/runs" => cron::list,
        "List the cron job's runs, newest first", 200;
    post "/v1/cron-jobs/{serviceId}/runs" => cron::trigger,
        "Trigger a cron job run", 200;
    delete "/v1/cron-jobs/{serviceId}/runs" => cron::cancel,
        "Cancel the active cron job run", 204;
    get "/v1/nodes" => nodes::list,
        "List the installation's nodes (with your instances on each)", 200;
    get "/v1/registrycredentials" => owner::list_credentials,
        "List registry credentials (query: name, username, type, updatedAfter, updatedBefore, \
         ownerId, cursor, limit; createdAfter and createdBefore are accepted and not applied)", 200;
    post "/v1/registrycredentials" => owner::create_credential,
        "Create a registry credential", 200;
    get "/v1/registrycredentials/{registryCredentialId}" => owner::get_credential,
        "Retrieve a registry credential", 200;
    patch "/v1/registrycredentials/{registryCredentialId}" => owner::update_credential,
        "Rotate a registry credential's token (registry and host cannot change)", 200;
    delete "/v1/registrycredentials/{registryCredentialId}" => owner::delete_credential,
        "Delete a registry credential", 204;
    get "/v1/api-keys" => owner::list_api_keys,
        "List API keys", 200;
    post "/v1/api-keys" => owner::create_api_key,
        "Create an API key (shown once)", 201;
    delete "/v1/api-keys/{apiKeyId}" => owner::revoke_api_key,
        "Revoke an API key", 204;
    get "/v1/integrations" => owner::list_integrations,
        "List integrations", 200;
    post "/v1/integrations" => owner::create_integration,
        "Create an integration: NATS credentials bound to your owner (shown once)", 201;
    delete "/v1/integrations/{integrationId}" => owner::revoke_integration,
        "Revoke an integration", 204;
    get "/v1/owners" => owners::list,
        "The owner your API key acts for, as Render's workspaces list (query: name, email, cursor, \
         limit)", 200;
    get "/v1/owners/{ownerId}" => owners::get,
        "Retrieve your owner", 200;
    get "/v1/users" => owners::user,
        "The owner your API key acts for, as Render's user", 200;
    get "/v1/webhooks" => webhooks::list,
        "List webhooks (query: ownerId, cursor, limit)", 200;
    post "/v1/webhooks" => webhooks::create,
        "Create a webhook: your services' events posted to a URL, signed with the secret it is \
         given", 201;
    get "/v1/webhooks/{webhookId}" => webhooks::get,
        "Retrieve a webhook", 200;
    patch "/v1/webhooks/{webhookId}" => webhooks::update,
        "Update a webhook (what is given changes; its secret stays)", 200;
    delete "/v1/webhooks/{webhookId}" => webhooks::delete,
        "Delete a webhook", 204;
    get "/v1/webhooks/{webhookId}/events" => webhooks::events,
        "The webhook's sends, newest first: each attempt with the receiver's status (query: \
         sentBefore, sentAfter, cursor, limit)", 200;
    get "/v1/notification-settings/owners/{ownerId}" => notifications::get_owner,
        "Owner notification settings", 200;
    patch "/v1/notification-settings/owners/{ownerId}" => notifications::patch_owner,
        "Update owner notification settings", 200;
    get "/v1/notification-settings/overrides" => notifications::list_overrides,
        "List the services' notification overrides (query: serviceId, ownerId, cursor, limit)", 200;
    get "/v1/notification-settings/overrides/services/{serviceId}" => notifications::get_override,
        "Service notification override", 200;
    patch "/v1/notification-settings/overrides/services/{serviceId}" => notifications::patch_override,
        "Update the service notification override", 200;
    get "/deploy/{serviceId}" => hooks::deploy_hook,
        "Deploy hook (query: key, imgURL)", 200;
    post "/deploy/{serviceId}" => hooks::deploy_hook,
        "Deploy hook (query: key, imgURL)", 200;
    get "/v1/openapi.json" => serve,
        "This document", 200;
}

/// One page, form or stream of the dashboard: served on the API's
/// listener, never part of the OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub struct PageRoute {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// The path template, `{name}` for each parameter.
    pub path: &'static str,
    /// What it is.
    pub summary: &'static str,
}

/// Each row names its method, path, handler and summary once: the macro
/// makes the public table and the registrations from it.
macro_rules! pages {
    ($(
        $method:ident $path:literal => $handler:path, $summary:literal;
    )*) => {
        /// Every route of the dashboard ([`crate::dashboard`]).
        pub const PAGES: &[PageRoute] = &[$(PageRoute {
            method: stringify!($method),
            path: $path,
            summary: $summary,
        }),*];

        /// Registers every route of [`PAGES`] (called by [`add_routes`]).
        fn add_pages(router: Router<AppState>) -> Router<AppState> {
            router $(.route($path, axum::routing::$method($handler)))*
        }
    };
}

pages! {
    get "/" => dashboard::pages::index, "The services list (the API's filters)";
    get "/login" => dashboard::login::login_page, "Sign in";
    post "/login" => dashboard::login::login, "Sign in with an API key";
    post "/logout" => dashboard::login::logout, "Sign out";
    get "/live" => dashboard::live::owner, "SSE: commits of all the owner's services";
    get "/assets/dashboard.js" => dashboard::assets::js, "The dashboard's script";
    get "/assets/dashboard.css" => dashboard::assets::css, "The dashboard's style sheet";
    get "/assets/terminal.js" => dashboard::assets::terminal_js, "The terminal page's script";
    get "/assets/xterm.js" => dashboard::assets::xterm_js, "xterm.js (vendored)";
    get "/assets/xterm.css" => dashboard::assets::xterm_css, "xterm.js's style sheet";
    get "/assets/xterm-fit.js" => dashboard::assets::xterm_fit, "xterm.js's fit add-on";
    get "/services/new" => dashboard::pages::new_service, "The new-service form";
    post "/services" => dashboard::pages::create, "Create a service";
    get "/services/{serviceId}" => dashboard::service::page, "A service";
    get "/services/{serviceId}/live" => dashboard::live::service, "SSE: the service's commits";
    post "/services/{serviceId}/deploys" => dashboard::actions::deploy, "Deploy (latest reference or an image)";
    post "/services/{serviceId}/deploys/{deployId}/cancel" => dashboard::actions::cancel, "Cancel a deploy";
    post "/services/{serviceId}/rollback" => dashboard::actions::rollback, "Roll back to a deploy";
    post "/services/{serviceId}/scale" => dashboard::actions::scale, "Scale";
    post "/services/{serviceId}/autoscaling" => dashboard::actions::autoscale, "Autoscale";
    post "/services/{serviceId}/autoscaling/delete" => dashboard::actions::stop_autoscaling, "Stop autoscaling";
    post "/services/{serviceId}/restart" => dashboard::actions::restart, "Restart";
    post "/services/{serviceId}/suspend" => dashboard::actions::suspend, "Suspend";
    post "/services/{serviceId}/resume" => dashboard::actions::resume, "Resume";
    post "/services/{serviceId}/cron-runs" => dashboard::actions::run_cron, "Trigger a cron run";
    post "/services/{serviceId}/cron-runs/cancel" => dashboard::actions::cancel_cron, "Cancel the active cron run";
    post "/services/{serviceId}/jobs" => dashboard::actions::run_job, "Run a one-off job";
    post "/services/{serviceId}/disk-snapshots" => dashboard::actions::take_snapshot, "Take a snapshot of the disk";
    post "/services/{serviceId}/disk-snapshots/restore" => dashboard::actions::restore_snapshot, "Restore the disk to a snapshot";
    post "/services/{serviceId}/exec" => dashboard::shell::run, "Run a command line in an instance; its output";
    get "/services/{serviceId}/terminal" => dashboard::terminal::page, "A terminal in an instance (xterm.js)";
    get "/services/{serviceId}/terminal/socket" => dashboard::terminal::socket, "The terminal page's WebSocket";
    post "/services/{serviceId}/jobs/{jobId}/cancel" => dashboard::actions::cancel_job, "Cancel a job";
    get "/services/{serviceId}/logs" => dashboard::observe::logs_page, "A service's kept log lines (paged, filtered, followed)";
    get "/services/{serviceId}/logs/live" => dashboard::observe::logs_live, "SSE: the service's new log lines, each its row on the logs page";
    get "/services/{serviceId}/metrics" => dashboard::observe::metrics_page, "A service's last hour of metrics (charts)";
    get "/services/{serviceId}/settings" => dashboard::settings::page, "A service's settings, env vars, hook";
    post "/services/{serviceId}/settings" => dashboard::settings::update, "Save a service's settings";
    post "/services/{serviceId}/env-vars" => dashboard::settings::set_env, "Set an env var";
    post "/services/{serviceId}/env-vars/{envVarKey}/delete" => dashboard::settings::delete_env, "Delete an env var";
    post "/services/{serviceId}/secret-files" => dashboard::secret_files::set, "Set a secret file";
    post "/services/{serviceId}/secret-files/{secretFileName}/delete" => dashboard::secret_files::delete, "Delete a secret file";
    post "/services/{serviceId}/log-stream" => dashboard::service_log_stream::save, "Set a service's log stream setting";
    post "/services/{serviceId}/deploy-hook/regenerate" => dashboard::settings::regenerate_hook, "Regenerate the hook key";
    post "/services/{serviceId}/delete" => dashboard::settings::delete, "Delete a service (its name typed)";
    get "/credentials" => dashboard::owner::credentials_page, "Registry credentials";
    post "/credentials" => dashboard::owner::add, "Add a registry credential";
    post "/credentials/{registryCredentialId}/rotate" => dashboard::owner::rotate, "Rotate a credential's token";
    post "/credentials/{registryCredentialId}/delete" => dashboard::owner::delete, "Delete a credential";
    get "/notifications" => dashboard::owner::notifications_page, "Notification settings";
    post "/notifications" => dashboard::owner::save_notifications, "Save notification settings";
    get "/log-stream" => dashboard::owner::log_stream_page, "The owner's log stream";
    post "/log-stream" => dashboard::owner::save_log_stream, "Set the owner's log stream";
    post "/log-stream/remove" => dashboard::owner::remove_log_stream, "Remove the owner's log stream";
    get "/webhooks" => dashboard::webhooks::page, "The owner's webhooks";
    post "/webhooks" => dashboard::webhooks::add, "Add a webhook";
    get "/webhooks/{webhookId}" => dashboard::webhooks::one, "A webhook: its secret, settings and last posts";
    post "/webhooks/{webhookId}" => dashboard::webhooks::update, "Change a webhook (or turn it on or off)";
    post "/webhooks/{webhookId}/delete" => dashboard::webhooks::delete, "Delete a webhook";
    get "/api-keys" => dashboard::owner::api_keys_page, "API keys";
    post "/api-keys" => dashboard::owner::create_key, "Create an API key (shown once)";
    post "/api-keys/{apiKeyId}/revoke" => dashboard::owner::revoke_key, "Revoke an API key";
}

/// The OpenAPI operation of `r`, its schemas added to `g`.
fn operation(r: &Route, g: &mut Generators) -> Value {
    let op = (r.describe)(g);
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(op.query);
    let success = match op.answer {
        Some(schema) => json!({
            "description": "success",
            "content": {"application/json": {"schema": schema}},
        }),
        None => json!({"description": "success, no body"}),
    };
    let mut responses = Map::new();
    responses.insert(r.status.to_string(), success);
    for code in ["400", "401", "404", "409", "503"] {
        responses.insert(
            code.to_owned(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    responses.insert(
        "429".to_owned(),
        json!({"$ref": "#/components/responses/TooManyFailures"}),
    );
    let mut out = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '-'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if !op.authed {
        out["security"] = json!([]);
    }
    if let Some(body) = op.body {
        out["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": body}},
        });
    }
    out
}

/// The document.
pub fn document() -> Value {
    let mut g = Generators::new();
    let error = g.response.subschema_for::<ApiError>().to_value();
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = operation(r, &mut g);
    }
    let mut schemas = g.request.take_definitions(true);
    for (name, schema) in g.response.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "berth API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {
                "description": "an error",
                "content": {"application/json": {"schema": error}},
            }, "TooManyFailures": {
                "description": "too many failed authentications from this client address",
                "headers": {"Retry-After": {
                    "description": "seconds until the next attempt is counted",
                    "schema": {"type": "integer"},
                }},
                "content": {"application/json": {"schema": error}},
            }},
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// GET /v1/openapi.json
pub async fn serve() -> Json<Value> {
    Json(document())
}

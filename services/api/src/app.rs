//! The shared state of every handler and the extractors that turn a
//! request into typed input or a 400/401 — never a 500 on bad input.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use berth_eventlog::projection::{ProjectionOptions, ProjectionRunner};
use berth_eventlog::EventStore;
use berth_ingress::{
    api_key_sha256, Caller, Ingress, IngressError, IngressOptions, ReadModel, Repairer,
};
use berth_runtime::SecretKey;
use berth_schemas::heartbeat::Heartbeat;
use berth_schemas::ids::NodeId;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dashboard::feed::LiveFeed;
use crate::dashboard::Dashboard;
use crate::error::ApiError;
use crate::guard::{AuthGuard, FailureLimits, Fingerprint};
use crate::hooks::OpenedHookKeys;
use crate::index::{ApiIndex, SharedIndex};
use crate::views::{self, Links, ServiceView};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a handler needs. Cheap to clone (axum clones it per request):
/// six reference counts.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ingress: Arc<Ingress>,
    pub index: SharedIndex,
    /// Refused credentials and failing addresses ([`crate::guard`]).
    pub guard: Arc<AuthGuard>,
    /// Deploy-hook keys opened from the read model ([`crate::hooks`]).
    pub hook_keys: Arc<OpenedHookKeys>,
    /// Where views link to (dashboard, web service URLs).
    pub links: Arc<Links>,
    /// The dashboard's sessions and live feed ([`crate::dashboard`]).
    pub dashboard: Arc<Dashboard>,
    /// When each node was last heard.
    pub heard: Arc<Heard>,
    /// The live lines log subscriptions follow ([`crate::logtap`]).
    pub log_tap: Arc<crate::logtap::LogTap>,
}

/// When each node was last heard, by this process: heartbeats are core
/// NATS messages, not facts in the log, so what a fresh API process knows
/// starts with the first heartbeat it receives.
#[derive(Debug, Default)]
pub struct Heard(std::sync::Mutex<HashMap<NodeId, DateTime<Utc>>>);

impl Heard {
    /// When `node` was last heard.
    pub fn last(&self, node: &NodeId) -> Option<DateTime<Utc>> {
        self.0.lock().ok()?.get(node).copied()
    }

    /// Follows the heartbeats on `sub` until `shutdown`.
    async fn follow(self: Arc<Self>, mut sub: async_nats::Subscriber, shutdown: CancellationToken) {
        use futures::StreamExt;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                // Received now: the node's clock may be off.
                Ok(hb) => {
                    if let Ok(mut heard) = self.0.lock() {
                        heard.insert(hb.node, Utc::now());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "not a heartbeat"),
            }
        }
    }
}

impl AppState {
    /// Builds the read model from the log, then the application layer on
    /// it; the read model keeps following the log, and the repairer
    /// (`berth_ingress::repair`) works from it, on tasks of `tracker` until
    /// `shutdown`.
    pub async fn start(
        store: EventStore,
        key: SecretKey,
        opts: IngressOptions,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, IngressError> {
        let feed = LiveFeed::default();
        let mut runner = ProjectionRunner::new(
            &store,
            ApiIndex::with_feed(feed.clone()).sharing(store.folded_states()),
            ProjectionOptions {
                snapshot_key: Some(crate::index::SNAPSHOT_KEY.to_owned()),
                ..ProjectionOptions::default()
            },
        );
        // A log that cannot answer yet is waited for.
        runner
            .catch_up_at_start(&shutdown)
            .await
            .map_err(|e| IngressError::Store(e.to_string()))?
            .ok_or_else(|| IngressError::Store("stopped before the log was read".to_owned()))?;
        let index = runner.state();
        let applied = runner.applied();
        // The history is read: from here on the dashboard's feed keeps the
        // tail live views follow.
        feed.start(*applied.borrow());
        let dashboard = Dashboard::new(feed, applied.clone(), shutdown.clone(), false);
        let stop = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = runner.run(stop).await {
                tracing::error!(error = %e, "API read model stopped");
            }
        });
        let shared = index.clone();
        let read_model = ReadModel::new(
            move |o| shared.read().ok().map(|i| i.credentials(o)),
            applied,
        );
        let heard = Arc::new(Heard::default());
        let heartbeats = store
            .client()
            .subscribe(store.subjects().heartbeat())
            .await
            .map_err(|e| IngressError::Store(format!("subscribing to heartbeats: {e}")))?;
        tracker.spawn(heard.clone().follow(heartbeats, shutdown.clone()));
        let ingress =
            Ingress::with_read_model(store, key, opts, read_model, shutdown.clone(), tracker);
        let links = index.clone();
        let repairer = Repairer::new(ingress.clone(), move |now, grace| {
            links.read().ok().map(|i| i.repairs(now, grace))
        });
        tracker.spawn(repairer.run(shutdown));
        Ok(Self {
            ingress: Arc::new(ingress),
            index,
            guard: Arc::default(),
            hook_keys: Arc::default(),
            links: Arc::default(),
            dashboard: Arc::new(dashboard),
            heard,
            log_tap: Arc::default(),
        })
    }

    /// The same state, linking views to `links` (the dashboard's cookies
    /// are `Secure` when it is served over https).
    pub fn with_links(mut self, links: Links) -> Self {
        let secure = links.dashboard.starts_with("https://");
        let d = &self.dashboard;
        self.dashboard = Arc::new(Dashboard::new(
            d.feed.clone(),
            d.applied.clone(),
            d.shutdown.clone(),
            secure,
        ));
        self.links = Arc::new(links);
        self
    }

    /// `state` of service `id` as the API shows it (`None` without a
    /// config), credentials named from the read model.
    pub fn service_view(
        &self,
        id: &berth_schemas::ids::ServiceId,
        state: &berth_domain::service::ServiceState,
    ) -> Result<Option<ServiceView>, ApiError> {
        self.read(|i| views::service(id, state, &self.links, |c| i.credential_name(c)))
    }

    /// The same state, allowing each client address `limits` failed
    /// authentications (a fresh guard: nothing refused yet).
    pub fn with_failure_limits(mut self, limits: FailureLimits) -> Self {
        self.guard = Arc::new(AuthGuard::new(limits));
        self
    }

    /// `refusal`, or a 429 when `client` has used up its failures; either
    /// way the failure is counted.
    pub fn refuse(&self, client: Option<IpAddr>, refusal: ApiError) -> ApiError {
        match self.guard.failed(client) {
            Ok(()) => refusal,
            Err(wait) => ApiError::too_many_failures(wait),
        }
    }

    /// Waits until the read model includes everything in the log now
    /// (read-your-writes for listings and fresh API keys); the application
    /// layer shares this read model, so it knows how far it has applied.
    pub async fn caught_up(&self) -> Result<(), ApiError> {
        Ok(self.ingress.caught_up().await?)
    }

    /// Reads the index.
    pub fn read<T>(&self, f: impl FnOnce(&ApiIndex) -> T) -> Result<T, ApiError> {
        let guard = self
            .index
            .read()
            .map_err(|_| ApiError::from(IngressError::Store("read model poisoned".to_owned())))?;
        Ok(f(&guard))
    }
}

/// The address the request came from: the peer of its connection, which
/// the API's listener records ([`crate::serve`]); `None` for a router
/// served otherwise (in-process tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The caller an `Authorization: Bearer <key>` header authenticates.
///
/// A token the read model does not hold is checked once more after the read
/// model has caught up with the log (a key created a moment ago), unless it
/// was refused in the last seconds or its address has used up its failures:
/// then it is refused with no bus work ([`crate::guard`]).
#[derive(Debug, Clone)]
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientAddr(client) = ClientAddr::from_request_parts(parts, state)
            .await
            .unwrap_or(ClientAddr(None));
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        authenticate(state, client, token).await.map(Authed)
    }
}

/// The caller API key `token` authenticates, as [`Authed`] checks a bearer
/// token and the dashboard a key to sign in with: the same refusals, the
/// same limits on failures per client address.
pub async fn authenticate(
    state: &AppState,
    client: Option<IpAddr>,
    token: Option<&str>,
) -> Result<Caller, ApiError> {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256);
    let Some(token) = token else {
        return Err(state.refuse(client, ApiError::unauthorized()));
    };
    let sha = api_key_sha256(token);
    if let Some((owner, key)) = state.read(|i| i.key(&sha))? {
        return Ok(Caller::api_key(owner, key));
    }
    let print = Fingerprint::bearer(token);
    if !state.guard.recently_refused(&print) {
        if let Some(wait) = state.guard.blocked(client) {
            return Err(ApiError::too_many_failures(wait));
        }
        state.caught_up().await?;
        if let Some((owner, key)) = state.read(|i| i.key(&sha))? {
            return Ok(Caller::api_key(owner, key));
        }
        state.guard.remember_refused(print);
    }
    Err(state.refuse(client, ApiError::unauthorized()))
}

/// The SHA-256 of the bearer token in `headers` (what the read model
/// knows keys by), to check later that the key [`authenticate`] took is
/// still valid.
pub fn bearer_sha256(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| api_key_sha256(t.trim()))
}

/// Whether the key whose SHA-256 is `sha` still authenticates `caller`:
/// revoking a key ends what was opened with it.
pub fn still_valid(state: &AppState, caller: &Caller, sha: &str) -> bool {
    let key = match &caller.actor {
        berth_schemas::Actor::ApiKey { key } => key,
        _ => return false,
    };
    state
        .read(|i| i.key(sha))
        .ok()
        .flatten()
        .is_some_and(|(o, k)| o == caller.owner && k == *key)
}

/// Removes quoted values from a parser message, so a secret put in the
/// wrong field is never echoed back.
pub(crate) fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(300));
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
        if out.len() > 300 {
            break;
        }
    }
    out
}

/// A JSON body (unknown fields refused by the types), at most
/// [`MAX_BODY_BYTES`]; any problem is a 400 saying what.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("unreadable body: {e}")))?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(ApiError::bad_request(format!(
                "body larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body).map(JsonBody).map_err(|e| {
            ApiError::bad_request(format!("invalid JSON body: {}", scrub(&e.to_string())))
        })
    }
}

/// A listing's `limit` parameter: 1 to 100 (`None` when absent).
pub fn limit(given: Option<&str>) -> Result<Option<usize>, ApiError> {
    given
        .map(|l| match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ApiError::field("limit", "must be an integer from 1 to 100")),
        })
        .transpose()
}

/// `limit` and `cursor` of a listing (Render's pagination): the query of
/// a listing with no filters ([`crate::query::Listing`]).
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct Page {
    /// 1 to 100 (default 20).
    #[serde(default, deserialize_with = "crate::query::one")]
    pub limit: Option<String>,
    /// The last item's cursor on the previous page.
    #[serde(default, deserialize_with = "crate::query::one")]
    pub cursor: Option<String>,
}

impl Page {
    /// The page's size: `limit`, 20 when absent.
    pub fn limit(&self) -> Result<usize, ApiError> {
        Ok(limit(self.limit.as_deref())?.unwrap_or(20))
    }

    /// Whether a listing of `cursors` (in listing order) holds this whole
    /// page: the cursor among them and `limit` items after it.
    pub fn served_by<'a>(&self, cursors: impl Iterator<Item = &'a str>) -> Result<bool, ApiError> {
        let limit = limit(self.limit.as_deref())?.unwrap_or(20);
        let mut cursors = cursors;
        if let Some(c) = &self.cursor {
            if !cursors.by_ref().any(|id| id == c) {
                return Ok(false);
            }
        }
        Ok(cursors.count() >= limit)
    }

    /// Applies the page to `items` (already in listing order), each with
    /// its cursor (its id). An unknown cursor is a 400.
    pub fn apply<T>(&self, items: Vec<(String, T)>) -> Result<Vec<(String, T)>, ApiError> {
        self.apply_filtered(items, |_| true)
    }

    /// [`Page::apply`] to the items `keep` accepts. The cursor is looked
    /// for among all items, so the next page of a filtered listing may
    /// start after an item the filter drops.
    pub fn apply_filtered<T>(
        &self,
        items: Vec<(String, T)>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<(String, T)>, ApiError> {
        let limit = self.limit()?;
        let start =
            match &self.cursor {
                None => 0,
                Some(c) => {
                    items.iter().position(|(id, _)| id == c).ok_or_else(|| {
                        ApiError::field("cursor", "is not a cursor of this listing")
                    })? + 1
                }
            };
        Ok(items
            .into_iter()
            .skip(start)
            .filter(|(_, item)| keep(item))
            .take(limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn scrub_drops_quoted_values() {
        assert_eq!(
            scrub("invalid type: string \"hunter2\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
        assert!(!scrub("unknown field `a`, value \"s3cret").contains("s3cret"));
    }
}

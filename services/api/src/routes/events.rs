//! A service's events timeline (`/v1/services/{id}/events`) and one event
//! by id (`/v1/events/{eventId}`), in Render's shapes. Render's clients know
//! Render's event types only, so berth's own (`placement_blocked`,
//! `cron_job_run_skipped`, `rollback_target_missing`) are listed when asked
//! for by name in `type`, or with `allTypes=true`.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, State};
use axum::Json;
use berth_domain::timeline::{Answer, Entry, History, Query, TimelineEvent, UnknownCursor};
use berth_domain::timeline::{RENDER_TYPES, TYPES};
use berth_schemas::ids::ServiceId;
use berth_schemas::{AggregateId, Commit};
use serde::{Deserialize, Serialize};

use super::services::service_id;
use crate::app::{self, AppState, Authed};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// Query of `GET /v1/services/{id}/events`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    /// Event types (repeated or comma-separated); default Render's types.
    #[serde(default, deserialize_with = "query::many", rename = "type")]
    pub types: Vec<String>,
    /// berth: `true` lists berth's own event types too.
    #[serde(default, deserialize_with = "query::one")]
    pub all_types: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub start_time: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub end_time: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

/// GET /v1/services/{id}/events: the service's timeline, newest first, as
/// `[{cursor, event}]`.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<EventsQuery>,
) -> Result<Json<Vec<EventItem>>, ApiError> {
    let id = service_id(&id)?;
    let limit = app::limit(q.limit.as_deref())?;
    let mut types = BTreeSet::new();
    for t in &q.types {
        if !TYPES.contains(&t.as_str()) {
            return Err(ApiError::field("type", "is not a service event type"));
        }
        types.insert(t.clone());
    }
    if types.is_empty() && query::flag("allTypes", q.all_types.as_deref())? != Some(true) {
        types = RENDER_TYPES.iter().map(|t| (*t).to_owned()).collect();
    }
    let query = Query {
        types,
        start_time: query::time("startTime", q.start_time.as_deref())?,
        end_time: query::time("endTime", q.end_time.as_deref())?,
        cursor: q.cursor,
        limit,
    };
    st.caught_up().await?;
    let answer = st.read(|i| i.owns(&caller.owner, &id).then(|| i.timeline(&id, &query)))?;
    let cursor = |e: UnknownCursor| ApiError::field("cursor", e.to_string());
    let events = match answer
        .ok_or_else(|| ApiError::not_found("service"))?
        .map_err(cursor)?
    {
        Answer::Page(page) => shown(&st, &page.entries).await?,
        Answer::NeedsHistory => {
            whole_timeline(&st, &id)
                .await?
                .query(&query)
                .map_err(cursor)?
                .events
        }
    };
    Ok(Json(
        events
            .into_iter()
            .map(|event| EventItem {
                cursor: event.id.clone(),
                event,
            })
            .collect(),
    ))
}

/// The timeline of `service`'s whole history, from the log: for a page
/// older than the entries the read model holds.
pub(crate) async fn whole_timeline(
    st: &AppState,
    service: &ServiceId,
) -> Result<History, ApiError> {
    let history = st
        .ingress
        .store()
        .load(&AggregateId::Service(service.clone()))
        .await
        .map_err(store_error)?;
    Ok(History::of(&history.events))
}

fn store_error(e: berth_eventlog::StoreError) -> ApiError {
    ApiError::from(berth_ingress::IngressError::Store(e.to_string()))
}

/// Held entries with their details, from the commits holding their events
/// (one read of the log per commit, all at once), in the entries' order.
/// An entry whose commit does not hold its event is left out.
pub(crate) async fn shown(
    st: &AppState,
    entries: &[Entry],
) -> Result<Vec<TimelineEvent>, ApiError> {
    let store = st.ingress.store();
    let mut seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let commits = futures::future::try_join_all(seqs.iter().map(|&seq| store.get_commit(seq)))
        .await
        .map_err(store_error)?;
    let by_seq: HashMap<u64, Commit> = seqs.into_iter().zip(commits).collect();
    Ok(entries
        .iter()
        .filter_map(|e| {
            let shown = by_seq.get(&e.seq).and_then(|c| e.event(&c.events));
            if shown.is_none() {
                tracing::warn!(event.id = %e.id, stream.seq = e.seq, "timeline entry not found in the log");
            }
            shown
        })
        .collect())
}

/// An event in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventItem {
    pub event: TimelineEvent,
    pub cursor: String,
}

/// GET /v1/events/{eventId}: one event of the caller's services, among the
/// newest each service's timeline holds (older ones: page the service's
/// `/events`).
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<TimelineEvent>, ApiError> {
    st.caught_up().await?;
    let entry = st
        .read(|i| i.event(&caller.owner, &id))?
        .ok_or_else(|| ApiError::not_found("event"))?;
    shown(&st, std::slice::from_ref(&entry))
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("event"))
}

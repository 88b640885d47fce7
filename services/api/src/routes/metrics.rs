//! `/v1/metrics/…`: a service's CPU, memory, instance count, requests and
//! latency over the last day, in Render's shape (`[{labels, values,
//! unit}]`, the query Render's clients send: `resource`, `startTime`,
//! `endTime`, `resolutionSeconds`, `instance`, `aggregationMethod`,
//! `quantile`). Only the caller's services: another owner's is not found.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use berth_schemas::ids::ServiceId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::services::service_id;
use crate::app::{AppState, Authed};
use crate::error::ApiError;
use crate::metrics::{self, Aggregation, Http, Resource, Series, Window};
use crate::query::{self, Listing};

/// The query of every metrics route.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsQuery {
    /// The service (`srv-…`).
    #[serde(default, deserialize_with = "query::one")]
    pub resource: Option<String>,
    /// Render's older name for `resource`.
    #[serde(default, deserialize_with = "query::one")]
    pub service: Option<String>,
    /// Default: an hour before `endTime`; samples are kept a day.
    #[serde(default, deserialize_with = "query::one")]
    pub start_time: Option<String>,
    /// Default: now.
    #[serde(default, deserialize_with = "query::one")]
    pub end_time: Option<String>,
    /// Seconds per point, 10 to 86400 (default 60).
    #[serde(default, deserialize_with = "query::one")]
    pub resolution_seconds: Option<String>,
    /// One instance only (CPU, memory).
    #[serde(default, deserialize_with = "query::one")]
    pub instance: Option<String>,
    /// `AVG` (default), `MAX` or `MIN` of the samples in a point (CPU,
    /// memory).
    #[serde(default, deserialize_with = "query::one")]
    pub aggregation_method: Option<String>,
    /// Requests are always grouped by status class (`statusCode`); berth
    /// keeps no per-host counts.
    #[serde(default, deserialize_with = "query::one")]
    pub aggregate_by: Option<String>,
    /// Latency quantile, 0 to 1 (default 0.95).
    #[serde(default, deserialize_with = "query::one")]
    pub quantile: Option<String>,
}

/// A label of a series.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Label {
    pub field: String,
    pub value: String,
}

/// A point of a series.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Point {
    /// The start of the point's interval.
    pub timestamp: DateTime<Utc>,
    pub value: f64,
}

/// One series, as Render's `TimeSeries`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TimeSeries {
    pub labels: Vec<Label>,
    pub values: Vec<Point>,
    /// `cpu` (cores), `bytes`, `count` or `ms`.
    pub unit: String,
}

fn answer(series: Vec<Series>, unit: &str) -> Json<Vec<TimeSeries>> {
    Json(
        series
            .into_iter()
            .map(|s| TimeSeries {
                labels: s
                    .labels
                    .into_iter()
                    .map(|(field, value)| Label { field, value })
                    .collect(),
                values: s
                    .points
                    .into_iter()
                    .map(|(timestamp, value)| Point { timestamp, value })
                    .collect(),
                unit: unit.to_owned(),
            })
            .collect(),
    )
}

/// The caller's service the query names, and the window it asks for.
async fn scope(
    st: &AppState,
    caller_owner: &berth_schemas::ids::OwnerId,
    q: &MetricsQuery,
) -> Result<(ServiceId, Window), ApiError> {
    let Some(resource) = q.resource.as_deref().or(q.service.as_deref()) else {
        return Err(ApiError::field("resource", "is required (a service id)"));
    };
    let id = service_id(resource)?;
    st.caught_up().await?;
    if !st.read(|i| i.owns(caller_owner, &id))? {
        return Err(ApiError::not_found("service"));
    }
    let end = query::time("endTime", q.end_time.as_deref())?.unwrap_or_else(Utc::now);
    let start = query::time("startTime", q.start_time.as_deref())?
        .unwrap_or(end - chrono::Duration::hours(1));
    if start >= end {
        return Err(ApiError::field("startTime", "must be before endTime"));
    }
    let resolution = match q.resolution_seconds.as_deref() {
        None => 60.0,
        Some(r) => match r.parse::<f64>() {
            Ok(r) if (10.0..=86_400.0).contains(&r) => r,
            _ => {
                return Err(ApiError::field(
                    "resolutionSeconds",
                    "must be a number from 10 to 86400",
                ))
            }
        },
    };
    Ok((
        id,
        Window {
            start,
            end,
            resolution: Duration::from_secs_f64(resolution),
        },
    ))
}

fn aggregation(q: &MetricsQuery) -> Result<Aggregation, ApiError> {
    match q.aggregation_method.as_deref() {
        None | Some("AVG") => Ok(Aggregation::Avg),
        Some("MAX") => Ok(Aggregation::Max),
        Some("MIN") => Ok(Aggregation::Min),
        Some(_) => Err(ApiError::field(
            "aggregationMethod",
            "must be AVG, MAX or MIN",
        )),
    }
}

fn unavailable(e: metrics::MetricsError) -> ApiError {
    ApiError::from(berth_ingress::IngressError::Store(e.to_string()))
}

async fn resource_series(
    st: AppState,
    caller: berth_ingress::Caller,
    q: MetricsQuery,
    what: Resource,
    unit: &str,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    let (id, window) = scope(&st, &caller.owner, &q).await?;
    let how = aggregation(&q)?;
    let series = metrics::resources(
        st.ingress.store(),
        &id,
        q.instance.as_deref(),
        what,
        how,
        &window,
    )
    .await
    .map_err(unavailable)?;
    Ok(answer(series, unit))
}

/// GET /v1/metrics/cpu: CPU in use per instance, in cores.
pub async fn cpu(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::Cpu, "cpu").await
}

/// GET /v1/metrics/memory: memory in use per instance, bytes.
pub async fn memory(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::Memory, "bytes").await
}

/// GET /v1/metrics/cpu-limit: each instance's CPU limit, in cores.
pub async fn cpu_limit(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::CpuLimit, "cpu").await
}

/// GET /v1/metrics/memory-limit: each instance's memory limit, bytes.
pub async fn memory_limit(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::MemoryLimit, "bytes").await
}

/// One filter's values (Render's `FilterApplicationValuesCollectionItem`
/// and `FilterHttpValuesCollectionItem`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FilterValues {
    /// `instance`, or `statusCode`.
    pub filter: &'static str,
    pub values: Vec<String>,
}

async fn filter_values(
    st: AppState,
    caller: berth_ingress::Caller,
    q: MetricsQuery,
    http: bool,
) -> Result<Json<Vec<FilterValues>>, ApiError> {
    let (id, window) = scope(&st, &caller.owner, &q).await?;
    let values = metrics::filter_values(st.ingress.store(), &id, http, &window)
        .await
        .map_err(unavailable)?;
    let filter = if http { "statusCode" } else { "instance" };
    Ok(Json(vec![FilterValues { filter, values }]))
}

/// GET /v1/metrics/filters/application: the instances that reported over
/// the window (what `instance` may name).
pub async fn application_filters(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<FilterValues>>, ApiError> {
    filter_values(st, caller, q, false).await
}

/// GET /v1/metrics/filters/http: the status classes the router answered
/// the service's requests with over the window (berth counts by class:
/// `2xx`, …; it keeps no per-host counts).
pub async fn http_filters(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<FilterValues>>, ApiError> {
    filter_values(st, caller, q, true).await
}

/// GET /v1/metrics/disk-usage: the service's disk in use, bytes (per
/// instance; none without a disk).
pub async fn disk_usage(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::DiskUsage, "bytes").await
}

/// GET /v1/metrics/disk-capacity: the size of the service's disk's
/// filesystem, bytes.
pub async fn disk_capacity(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::DiskCapacity, "bytes").await
}

/// GET /v1/metrics/instance-count: instances that ran, per point.
pub async fn instance_count(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    resource_series(st, caller, q, Resource::Instances, "count").await
}

/// GET /v1/metrics/http-requests: requests through the router per point,
/// one series per status class.
pub async fn http_requests(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    if q.aggregate_by
        .as_deref()
        .is_some_and(|a| a != "statusCode" && a != "host")
    {
        return Err(ApiError::field("aggregateBy", "must be statusCode or host"));
    }
    let (id, window) = scope(&st, &caller.owner, &q).await?;
    let series = metrics::http(st.ingress.store(), &id, Http::Requests, &window)
        .await
        .map_err(unavailable)?;
    Ok(answer(series, "count"))
}

/// GET /v1/metrics/http-latency: the latency (ms) `quantile` of the
/// requests of each point were answered within.
pub async fn http_latency(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<MetricsQuery>,
) -> Result<Json<Vec<TimeSeries>>, ApiError> {
    let quantile = match q.quantile.as_deref() {
        None => 0.95,
        Some(s) => match s.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => v,
            _ => return Err(ApiError::field("quantile", "must be a number from 0 to 1")),
        },
    };
    let (id, window) = scope(&st, &caller.owner, &q).await?;
    let series = metrics::http(st.ingress.store(), &id, Http::Latency { quantile }, &window)
        .await
        .map_err(unavailable)?;
    Ok(answer(series, "ms"))
}

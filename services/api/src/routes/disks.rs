//! `/v1/disks` (Render's disks API): list, retrieve, add one to a service
//! that has none, update — rename, grow, or mount elsewhere — and delete.
//! A change reaches the instance at its next start (a deploy or restart);
//! a disk only grows. Adding or deleting one deploys the service (a
//! suspended one at its resume), as on Render; a disk is also given at
//! create (`serviceDetails.disk`) and removed with its service.
//!
//! Snapshots (Render's): the disk's node copies the disk once a day
//! (`BERTH_NODE_DISK_SNAPSHOT_HOURS`) and when asked (berth's `POST
//! /v1/disks/{id}/snapshots`); the 7 newest are kept and listed; a restore
//! sets the disk back to one and deploys. Another owner's disk is not
//! found, as one that does not exist.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::service::ServiceState;
use berth_ingress::Scope;
use berth_schemas::ids::{DiskId, ServiceId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// Render's `DiskDetails`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskDetails {
    pub id: String,
    pub name: String,
    #[serde(rename = "sizeGB")]
    pub size_gb: u32,
    pub mount_path: String,
    /// When its service was created (a disk is made with it).
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    pub service_id: String,
    /// berth: the node it is on (absent until its first instance was
    /// placed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// One item of `GET /v1/disks`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DiskItem {
    pub disk: DiskDetails,
    pub cursor: String,
}

/// The disk of `service`, if it has one.
fn details(id: &ServiceId, s: &ServiceState) -> Option<DiskDetails> {
    let d = s.config.as_ref()?.disk.as_ref()?;
    let created = s.disk_added_at.or(s.created_at)?;
    Some(DiskDetails {
        id: d.id.to_string(),
        name: d.name.clone(),
        size_gb: d.size_gb,
        mount_path: d.mount_path.clone(),
        created_at: created,
        updated_at: s.disk_updated_at.unwrap_or(created),
        service_id: id.to_string(),
        node_id: s.disk_node.as_ref().map(ToString::to_string),
    })
}

/// Query of `GET /v1/disks`: Render's filters `ownerId`, `name`, `diskId`
/// and `serviceId` (each repeated or comma-separated), the creation and
/// update bounds, and paging.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisksQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub owner_id: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub name: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub disk_id: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub service_id: Vec<String>,
    /// The creation and update bounds.
    #[serde(flatten)]
    pub changed: query::Changed,
    #[serde(flatten)]
    pub page: app::Page,
}

/// GET /v1/disks: the caller's services' disks, newest service first.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<DisksQuery>,
) -> Result<Json<Vec<DiskItem>>, ApiError> {
    let (created, updated) = q.changed.bounds()?;
    let limit = q.page.limit()?;
    // Another owner named alone: nothing of theirs is listed.
    if !query::owner_selected(&q.owner_id, caller.owner.as_str()) {
        return Ok(Json(Vec::new()));
    }
    st.caught_up().await?;
    let wanted = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    st.read(|i| {
        i.services_page(&caller.owner, q.page.cursor.as_deref(), limit, |id, s| {
            details(id, s).is_some_and(|d| {
                wanted(&q.name, &d.name)
                    && wanted(&q.disk_id, &d.id)
                    && wanted(&q.service_id, &d.service_id)
                    && created.holds(Some(d.created_at))
                    && updated.holds(Some(d.updated_at))
            })
        })
        .map(|page| {
            page.into_iter()
                .filter_map(|(id, s)| {
                    Some(DiskItem {
                        disk: details(id, s)?,
                        cursor: id.to_string(),
                    })
                })
                .collect()
        })
        .map_err(|e| ApiError::field("cursor", e.to_string()))
    })?
    .map(Json)
}

/// The caller's service whose disk is `id`, and that disk.
async fn find(
    st: &AppState,
    caller: &berth_ingress::Caller,
    id: &str,
) -> Result<(ServiceId, DiskDetails), ApiError> {
    find_with(st, caller, id, |svc, s| {
        Some((svc.clone(), details(svc, s)?))
    })
    .await
}

/// What `read` takes of the caller's service whose disk is `id`, from
/// the API's index (one read).
async fn find_with<T>(
    st: &AppState,
    caller: &berth_ingress::Caller,
    id: &str,
    read: impl Fn(&ServiceId, &ServiceState) -> Option<T>,
) -> Result<T, ApiError> {
    let id = id
        .parse::<DiskId>()
        .map_err(|_| ApiError::not_found("disk"))?;
    st.caught_up().await?;
    st.read(|i| {
        let found = i
            .services_page(&caller.owner, None, 1, |_, s| {
                s.disk().is_some_and(|d| d.id == id)
            })
            .ok()?;
        let (svc, s) = found.into_iter().next()?;
        read(svc, s)
    })?
    .ok_or_else(|| ApiError::not_found("disk"))
}

/// The caller's service whose disk is `id`, and a new request id for a
/// change to it (a retry of the same request changes it once).
async fn changing(
    st: &AppState,
    caller: &berth_ingress::Caller,
    id: &str,
) -> Result<(ServiceId, String), ApiError> {
    let (svc, _) = find(st, caller, id).await?;
    Ok((svc, berth_schemas::ids::DeployId::generate().to_string()))
}

/// Render's `DiskPOST`: the service, and the disk.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskPost {
    /// Required: the service to give the disk (one without a disk).
    pub service_id: Option<String>,
    /// Required: 1–64 letters, digits, spaces, `-`, `_`, `.`.
    pub name: Option<String>,
    /// Required: an absolute path in the instance (not `/`, nor below
    /// `/proc`, `/sys` or `/dev`).
    pub mount_path: Option<String>,
    /// GB, 1–1024 (default 1).
    #[serde(rename = "sizeGB")]
    pub size_gb: Option<u32>,
}

/// POST /v1/disks: gives a service without a disk one, and deploys it
/// (the instance is stopped before the one with the disk starts). 201
/// with the disk.
pub async fn add(
    State(st): State<AppState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<DiskPost>,
) -> Result<(StatusCode, Json<DiskDetails>), ApiError> {
    let Some(svc) = body.service_id.as_deref() else {
        return Err(ApiError::field("serviceId", "is required"));
    };
    let svc = super::services::service_id(svc)?;
    st.ingress.show_service(&caller, &svc).await?;
    let (Some(name), Some(mount_path)) = (body.name, body.mount_path) else {
        return Err(ApiError::field("name, mountPath", "are required"));
    };
    let disk = berth_ingress::NewDisk {
        name,
        mount_path,
        size_gb: body.size_gb.unwrap_or(1),
    };
    let request = berth_schemas::ids::DeployId::generate().to_string();
    let state = st
        .ingress
        .add_disk(Scope::Owner(&caller), &svc, disk, &request)
        .await?;
    details(&svc, &state)
        .map(|d| (StatusCode::CREATED, Json(d)))
        .ok_or_else(|| ApiError::not_found("disk"))
}

/// DELETE /v1/disks/{diskId}: removes the disk and what is on it, and
/// deploys its service without it. 204.
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (svc, request) = changing(&st, &caller, &id).await?;
    st.ingress
        .remove_disk(Scope::Owner(&caller), &svc, &request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /v1/disks/{diskId}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<DiskDetails>, ApiError> {
    Ok(Json(find(&st, &caller, &id).await?.1))
}

/// PATCH /v1/disks/{diskId}: the disk as it is now; its instance sees the
/// change at its next start.
pub async fn update(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<super::services::DiskBody>,
) -> Result<Json<DiskDetails>, ApiError> {
    let (svc, request) = changing(&st, &caller, &id).await?;
    let state = st
        .ingress
        .update_disk(
            Scope::Owner(&caller),
            &svc,
            (body.name, body.mount_path, body.size_gb),
            &request,
        )
        .await?;
    details(&svc, &state)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("disk"))
}

/// Render's `DiskSnapshot`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskSnapshotView {
    /// When it was taken.
    pub created_at: DateTime<Utc>,
    /// What names it to a restore.
    pub snapshot_key: String,
    /// berth: what the copy takes on its node's disk.
    pub size_bytes: u64,
}

/// GET /v1/disks/{diskId}/snapshots: the disk's kept snapshots, newest
/// first. 201, as Render's API answers it (Render's clients read no
/// other).
pub async fn snapshots(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Vec<DiskSnapshotView>>), ApiError> {
    let list = find_with(&st, &caller, &id, |_, s| {
        let kept = s.disk_snapshots.kept.iter().rev();
        Some(
            kept.map(|s| DiskSnapshotView {
                created_at: s.created_at,
                snapshot_key: s.key.to_string(),
                size_bytes: s.bytes,
            })
            .collect(),
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(list)))
}

/// POST /v1/disks/{diskId}/snapshots (berth's): asks the disk's node for
/// a snapshot now; it is listed once taken (seconds, more for a full
/// disk). 202.
pub async fn take_snapshot(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (svc, request) = changing(&st, &caller, &id).await?;
    st.ingress
        .request_disk_snapshot(Scope::Owner(&caller), &svc, &request)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Render's `SnapshotRestorePOST`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "SnapshotRestorePOST")]
pub struct RestoreBody {
    /// Required: a `snapshotKey` from the disk's snapshots.
    pub snapshot_key: Option<String>,
    /// The instance whose disk to restore: a service with a disk has one
    /// instance, so only the service's id (Render's name for its one
    /// disk) is taken.
    pub instance_id: Option<String>,
}

/// POST /v1/disks/{diskId}/snapshots/restore: sets the disk back to the
/// snapshot and deploys the service (its instance is stopped before the
/// disk is restored; a suspended service's at its resume). 200 with the
/// disk.
pub async fn restore(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RestoreBody>,
) -> Result<Json<DiskDetails>, ApiError> {
    let (svc, request) = changing(&st, &caller, &id).await?;
    let Some(key) = body.snapshot_key else {
        return Err(ApiError::field("snapshotKey", "is required"));
    };
    if body
        .instance_id
        .as_deref()
        .is_some_and(|i| i != svc.as_str())
    {
        return Err(ApiError::not_found("instance"));
    }
    let key = key
        .parse::<berth_schemas::ids::DiskSnapshotKey>()
        .map_err(|_| ApiError::not_found("snapshot"))?;
    let state = st
        .ingress
        .restore_disk_snapshot(Scope::Owner(&caller), &svc, key, &request)
        .await?;
    details(&svc, &state)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("disk"))
}

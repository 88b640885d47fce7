//! Render's workspace and user routes, for the clients that start there
//! (Render's CLI and Terraform provider look up the workspace first): an
//! API key acts for one owner, so `GET /v1/owners` lists that one owner,
//! `GET /v1/owners/{id}` shows it (another is not found), and `GET
//! /v1/users` answers the owner the key acts for. berth's owners have API
//! keys, not members: the member routes are not served.

use axum::extract::{Path, State};
use axum::Json;
use berth_ingress::Caller;
use berth_schemas::ids::OwnerId;
use serde::{Deserialize, Serialize};

use super::notifications::own;
use crate::app::{self, AppState, Authed};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// Render's `Owner`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnerView {
    pub id: String,
    pub name: String,
    /// The owner's notification email (`""` when none is set: berth keeps
    /// no account email).
    pub email: String,
    /// `user` or `team`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

async fn view(st: &AppState, caller: &Caller) -> Result<OwnerView, ApiError> {
    let (name, email) = st.ingress.owner_profile(&caller.owner).await?;
    Ok(OwnerView {
        id: caller.owner.to_string(),
        name,
        email: email.unwrap_or_default(),
        kind: match caller.owner {
            OwnerId::User(_) => "user",
            OwnerId::Team(_) => "team",
        },
    })
}

/// One item of `GET /v1/owners` (Render's `OwnerWithCursor`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct OwnerItem {
    pub owner: OwnerView,
    pub cursor: String,
}

/// Query of `GET /v1/owners`: Render's `name` and `email` filters (each
/// repeated or comma-separated) and paging.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnersQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub name: Vec<String>,
    #[serde(default, deserialize_with = "query::many")]
    pub email: Vec<String>,
    #[serde(flatten)]
    pub page: app::Page,
}

/// GET /v1/owners: the owner the key acts for, if the filters keep it.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Listing(q): Listing<OwnersQuery>,
) -> Result<Json<Vec<OwnerItem>>, ApiError> {
    q.page.limit()?;
    let o = view(&st, &caller).await?;
    let wanted = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    let items = vec![(o.id.clone(), o)];
    Ok(Json(
        q.page
            .apply_filtered(items, |o| {
                wanted(&q.name, &o.name) && wanted(&q.email, &o.email)
            })?
            .into_iter()
            .map(|(cursor, owner)| OwnerItem { owner, cursor })
            .collect(),
    ))
}

/// GET /v1/owners/{ownerId}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(owner): Path<String>,
) -> Result<Json<OwnerView>, ApiError> {
    own(&caller, &owner)?;
    Ok(Json(view(&st, &caller).await?))
}

/// Render's `User`: the owner the key acts for.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// GET /v1/users
pub async fn user(
    State(st): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<UserView>, ApiError> {
    let o = view(&st, &caller).await?;
    Ok(Json(UserView {
        id: o.id,
        email: o.email,
        name: o.name,
    }))
}

//! `/v1/services/{id}/env-vars…`: a service's environment variables as
//! Render serves them: list (with values, for the owner), get one, set one,
//! delete one, replace all. Values are sealed at rest and shown only here;
//! a change redeploys the service, as any change of its env vars does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_ingress::EnvEdit;
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use serde::{Deserialize, Serialize};

use super::services::{env_key_ok, env_value, env_value_ok, service_id, EnvVarBody, ENV_KEY_RULE};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Listing};

/// One env var, with its value.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EnvVarView {
    pub key: String,
    pub value: String,
}

/// An env var in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarItem {
    pub env_var: EnvVarView,
    pub cursor: String,
}

/// Query of the env var listing.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct EnvVarsQuery {
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

fn items(vars: impl IntoIterator<Item = (String, Secret)>) -> Vec<(String, EnvVarItem)> {
    vars.into_iter()
        .map(|(key, value)| {
            (
                key.clone(),
                EnvVarItem {
                    env_var: EnvVarView {
                        key: key.clone(),
                        value: value.expose().to_owned(),
                    },
                    cursor: key,
                },
            )
        })
        .collect()
}

/// A listing page of `items` (by key), Render's pagination.
fn page(
    items: Vec<(String, EnvVarItem)>,
    cursor: Option<String>,
    limit: Option<String>,
) -> Result<Vec<EnvVarItem>, ApiError> {
    let page = app::Page { limit, cursor };
    Ok(page.apply(items)?.into_iter().map(|(_, i)| i).collect())
}

/// A key from the path, or 400.
fn key(k: &str) -> Result<String, ApiError> {
    if env_key_ok(k) {
        Ok(k.to_owned())
    } else {
        Err(ApiError::field("envVarKey", ENV_KEY_RULE))
    }
}

/// GET /v1/services/{id}/env-vars, by key.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<EnvVarsQuery>,
) -> Result<Json<Vec<EnvVarItem>>, ApiError> {
    let id = service_id(&id)?;
    let vars = st.ingress.env_vars(&caller, &id).await?;
    page(items(vars), q.cursor, q.limit).map(Json)
}

/// GET /v1/services/{id}/env-vars/{key}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, k)): Path<(String, String)>,
) -> Result<Json<EnvVarView>, ApiError> {
    let id = service_id(&id)?;
    let mut vars = st.ingress.env_vars(&caller, &id).await?;
    let value = vars
        .remove(&k)
        .ok_or_else(|| ApiError::not_found("env var"))?;
    Ok(Json(EnvVarView {
        key: k,
        value: value.expose().to_owned(),
    }))
}

/// Body of setting one env var: Render's `{value}` or `{generateValue: true}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetBody {
    pub value: Option<String>,
    pub generate_value: Option<bool>,
}

/// One env var just set, and the deploy that brings it to the instances.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSet {
    pub key: String,
    pub value: String,
    /// berth: the deploy the change started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
}

/// PUT /v1/services/{id}/env-vars/{key}: adds or replaces it.
pub async fn set(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, k)): Path<(String, String)>,
    JsonBody(body): JsonBody<SetBody>,
) -> Result<Json<EnvVarSet>, ApiError> {
    let id = service_id(&id)?;
    let k = key(&k)?;
    let mut fields = Vec::new();
    let value = env_value(&mut fields, "value", body.value, body.generate_value);
    let Some(value) = value.filter(|_| fields.is_empty()) else {
        return Err(ApiError::fields(fields));
    };
    if !env_value_ok(&value) {
        return Err(ApiError::field("value", "must be at most 16 KiB"));
    }
    // The count (at most 200) is the service's rule, decided with the
    // change on the variables the service holds then.
    let (_, deploy) = st
        .ingress
        .edit_env_var(
            &caller,
            &id,
            EnvEdit::Set(k.clone(), Secret::new(value.clone())),
        )
        .await?;
    Ok(Json(EnvVarSet {
        key: k,
        value,
        deploy_id: deploy.map(|d| d.to_string()),
    }))
}

/// One change of a merge: a value (or `generateValue: true`) sets the
/// key, `value: null` removes it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeBody {
    pub key: String,
    #[serde(default, deserialize_with = "super::nullable")]
    pub value: Option<Option<String>>,
    pub generate_value: Option<bool>,
}

/// The env vars after a merge, and the deploy it started.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Merged {
    pub env_vars: Vec<EnvVarItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
}

/// PATCH /v1/services/{id}/env-vars (berth): sets and removes the keys
/// given, keeps every other, in one change (one deploy); answers the
/// whole list.
pub async fn merge(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Vec<ChangeBody>>,
) -> Result<Json<Merged>, ApiError> {
    let id = service_id(&id)?;
    let mut fields = Vec::new();
    let mut changes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in body {
        if !env_key_ok(&c.key) {
            super::field(&mut fields, "key", ENV_KEY_RULE);
            continue;
        }
        if !seen.insert(c.key.clone()) {
            super::field(&mut fields, "key", "each key may appear once");
            continue;
        }
        let value = match (c.value, c.generate_value) {
            (Some(None), Some(true)) => {
                super::field(
                    &mut fields,
                    "value",
                    "null removes the key; it cannot also be generated",
                );
                continue;
            }
            (Some(None), _) => None,
            (given, generate) => match env_value(&mut fields, "value", given.flatten(), generate) {
                Some(v) => Some(v),
                None => continue,
            },
        };
        if value.as_ref().is_some_and(|v| !env_value_ok(v)) {
            super::field(&mut fields, "value", "must be at most 16 KiB");
        }
        changes.push((c.key, value.map(Secret::new)));
    }
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let (_, deploy) = st
        .ingress
        .edit_env_var(&caller, &id, EnvEdit::Merge(changes))
        .await?;
    let vars = st.ingress.env_vars(&caller, &id).await?;
    Ok(Json(Merged {
        env_vars: items(vars).into_iter().map(|(_, i)| i).collect(),
        deploy_id: deploy.map(|d| d.to_string()),
    }))
}

/// DELETE /v1/services/{id}/env-vars/{key}
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, k)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress
        .edit_env_var(&caller, &id, EnvEdit::Remove(k))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// PUT /v1/services/{id}/env-vars: replaces every env var with the list
/// given (Render's `[{key, value}]` or `[{key, generateValue: true}]`);
/// answers the new list.
pub async fn replace(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Vec<EnvVarBody>>,
) -> Result<Json<Vec<EnvVarItem>>, ApiError> {
    let id = service_id(&id)?;
    let mut fields = Vec::new();
    let vars = super::services::env_vars(body, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let answer = items(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    st.ingress
        .update_service(&caller, &id, ServiceSettings::default(), Some(vars))
        .await?;
    Ok(Json(answer.into_iter().map(|(_, i)| i).collect()))
}

//! `/v1/services/{id}/secret-files…`: a service's secret files as Render
//! serves them — list (with contents, for the owner), get one, set one,
//! delete one, replace all. Each instance finds them read-only in
//! `/etc/secrets/<name>`. Contents are sealed at rest and shown only here;
//! a change deploys the service, as a change of its env vars does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_ingress::FileEdit;
use berth_runtime::Secret;
use serde::{Deserialize, Serialize};

use super::services::{service_id, SecretFileBody};
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::Listing;

/// Render's `SecretFile`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SecretFileView {
    pub name: String,
    pub content: String,
}

/// Render's `SecretFileWithCursor`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretFileItem {
    pub secret_file: SecretFileView,
    pub cursor: String,
}

fn items(files: impl IntoIterator<Item = (String, Secret)>) -> Vec<(String, SecretFileItem)> {
    files
        .into_iter()
        .map(|(name, content)| {
            let item = SecretFileItem {
                secret_file: SecretFileView {
                    name: name.clone(),
                    content: content.expose().to_owned(),
                },
                cursor: name.clone(),
            };
            (name, item)
        })
        .collect()
}

/// GET /v1/services/{id}/secret-files, by name.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(page): Listing<app::Page>,
) -> Result<Json<Vec<SecretFileItem>>, ApiError> {
    let id = service_id(&id)?;
    let files = st.ingress.secret_files(&caller, &id).await?;
    Ok(Json(
        page.apply(items(files))?
            .into_iter()
            .map(|(_, i)| i)
            .collect(),
    ))
}

/// GET /v1/services/{id}/secret-files/{name}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<SecretFileView>, ApiError> {
    let id = service_id(&id)?;
    let mut files = st.ingress.secret_files(&caller, &id).await?;
    let content = files
        .remove(&name)
        .ok_or_else(|| ApiError::not_found("secret file"))?;
    Ok(Json(SecretFileView {
        name,
        content: content.expose().to_owned(),
    }))
}

/// Render's body of setting one file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentBody {
    /// Required (optional in Render's schema).
    pub content: Option<String>,
}

/// PUT /v1/services/{id}/secret-files/{name}: adds or replaces it (201).
pub async fn set(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<ContentBody>,
) -> Result<(StatusCode, Json<SecretFileView>), ApiError> {
    let id = service_id(&id)?;
    let Some(content) = body.content else {
        // Another owner's service is not found before the body is judged.
        st.ingress.show_service(&caller, &id).await?;
        return Err(ApiError::field("content", "is required"));
    };
    let edit = FileEdit::Set(name.clone(), Secret::new(content.clone()));
    st.ingress.edit_secret_files(&caller, &id, edit).await?;
    Ok((StatusCode::CREATED, Json(SecretFileView { name, content })))
}

/// DELETE /v1/services/{id}/secret-files/{name}
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress
        .edit_secret_files(&caller, &id, FileEdit::Remove(name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// PUT /v1/services/{id}/secret-files: replaces every file with the list
/// given (Render's `[{name, content}]`); answers the new list.
pub async fn replace(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Vec<SecretFileBody>>,
) -> Result<Json<Vec<SecretFileItem>>, ApiError> {
    let id = service_id(&id)?;
    let mut fields = Vec::new();
    let files = super::services::secret_files(body, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::fields(fields));
    }
    let answer = items(files.iter().map(|(k, v)| (k.clone(), v.clone())));
    st.ingress
        .edit_secret_files(&caller, &id, FileEdit::Replace(files.into_iter().collect()))
        .await?;
    Ok(Json(answer.into_iter().map(|(_, i)| i).collect()))
}

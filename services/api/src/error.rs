//! The API's error answer: Render's `{"id", "message"}` with the right
//! status, plus `fields` listing each invalid field on a 400. Built from
//! [`IngressError`] by its own status mapping, so no message is parsed.
//! Nothing here ever carries a secret: domain and ingress messages name
//! fields and ids only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_domain::DomainError;
use berth_ingress::IngressError;
use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    /// The field, in the API's camelCase (`serviceDetails.numInstances`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Error")]
pub struct ApiError {
    #[serde(skip)]
    #[schemars(skip)]
    pub status: StatusCode,
    /// Stable machine-readable kind (`invalid_input`, `not_found`, …).
    pub id: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
    /// Sent as `Retry-After` (whole seconds, rounded up) with a 429.
    #[serde(skip)]
    #[schemars(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 naming one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let (field, message) = (field.into(), message.into());
        Self::fields(vec![FieldError { field, message }])
    }

    /// 400 naming every invalid field.
    pub fn fields(fields: Vec<FieldError>) -> Self {
        let message = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            fields,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
        }
    }

    /// 400 for a body or query that does not parse.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    /// 429: too many refused credentials from this address lately; `wait`
    /// until the next attempt is counted.
    pub fn too_many_failures(wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many failed authentications from this address; retry later",
            )
        }
    }

    /// 429: the caller has as many of something open as it may.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }

    /// 405: the route exists, not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take this method",
        )
    }

    /// 404 with a generic message (also for other owners' resources).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl From<IngressError> for ApiError {
    fn from(e: IngressError) -> Self {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        match &e {
            IngressError::Rejected(DomainError::Invalid { field, reason }) => {
                Self::field(*field, reason.clone())
            }
            IngressError::Rejected(DomainError::NotFound { what, .. }) => Self::not_found(what),
            IngressError::Rejected(_) => Self::new(status, "conflict", e.to_string()),
            IngressError::ImageInaccessible { .. } => {
                Self::new(status, "image_not_accessible", e.to_string())
            }
            IngressError::CheckUnavailable(_)
            | IngressError::Store(_)
            | IngressError::NodeUnavailable(_) => {
                tracing::warn!(error = %e, "request failed, retryable");
                Self::new(status, "unavailable", e.to_string())
            }
            IngressError::Secret(_) => {
                tracing::error!(error = %e, "sealing failed");
                Self::new(status, "internal", "the server cannot seal secrets")
            }
        }
    }
}

/// Turns the framework's own plain-text rejections (a path segment that
/// is not UTF-8, a wrong content type, …) into the `{id, message}` shape.
/// The dashboard's HTML pages pass as they are.
pub fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let typed = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if typed || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (id, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_input", "request body too large"),
        s if s.is_client_error() => ("invalid_input", "the request is malformed"),
        _ => ("internal", "internal error"),
    };
    ApiError::new(status, id, message).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(&self)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        resp
    }
}

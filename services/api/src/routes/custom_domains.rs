//! `/v1/services/{id}/custom-domains…`: a web service's custom domains as
//! Render serves them: add (answers the list of domains created: berth
//! creates the one asked for, never a `www` ↔ apex pair), list with
//! Render's filters, retrieve and delete by id or name, and verify.
//!
//! Render's fields as berth fills them: `domainType` and `publicSuffix`
//! from the name (a short list of two-label suffixes such as `co.uk`,
//! otherwise the last label), `redirectForName` always `""` (no pair, no
//! redirect), `verificationStatus` `verified` once a certificate was
//! issued for the name (berth controls no DNS: an ACME server issuing one
//! is the proof the name points here), `server` the service. berth adds
//! `certificateStatus` (`pending`, `issued`, `failed`) with
//! `certificateError` and `certificateNotAfter` when known.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_domain::custom_domain::{self, DomainType};
use berth_domain::service::{Certificate, CustomDomain, ServiceState};
use berth_schemas::ids::ServiceId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::services::service_id;
use crate::app::{self, AppState, Authed, JsonBody};
use crate::error::ApiError;
use crate::query::{self, Between, Listing};

/// Render's `apex` / `subdomain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainTypeView {
    Apex,
    Subdomain,
}

impl DomainTypeView {
    /// The value as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainTypeView::Apex => "apex",
            DomainTypeView::Subdomain => "subdomain",
        }
    }
}

/// Render's verification status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Verified,
    Unverified,
}

impl VerificationStatus {
    /// The value as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Verified => "verified",
            VerificationStatus::Unverified => "unverified",
        }
    }
}

/// berth: where the domain's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateStatus {
    /// None issued yet.
    Pending,
    /// Issued and held.
    Issued,
    /// The last attempt failed (see `certificateError`); retried.
    Failed,
}

/// The service a domain points at.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ServerRef {
    pub id: String,
    pub name: String,
}

/// Render's `CustomDomain`, with berth's certificate fields.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomainView {
    /// `cdm-…`
    pub id: String,
    pub name: String,
    pub domain_type: DomainTypeView,
    pub public_suffix: String,
    /// Always `""`: berth creates no `www` ↔ apex pair, so nothing redirects.
    pub redirect_for_name: String,
    pub verification_status: VerificationStatus,
    pub created_at: DateTime<Utc>,
    pub server: ServerRef,
    /// berth: the certificate's status.
    pub certificate_status: CertificateStatus,
    /// berth: why the last attempt failed (`ca_unavailable`,
    /// `challenge_failed`, `rejected`, `timed_out`, `store_unavailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_error: Option<String>,
    /// berth: until when the certificate held is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<DateTime<Utc>>,
}

/// A custom domain in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomainItem {
    pub custom_domain: CustomDomainView,
    pub cursor: String,
}

/// `domain` of service `id` as the API shows it.
pub fn view(
    id: &ServiceId,
    state: &ServiceState,
    name: &str,
    d: &CustomDomain,
) -> CustomDomainView {
    let (status, error, not_after) = match &d.certificate {
        Certificate::Pending => (CertificateStatus::Pending, None, None),
        Certificate::Issued { not_after } => (CertificateStatus::Issued, None, Some(*not_after)),
        Certificate::Failed {
            reason, not_after, ..
        } => (
            CertificateStatus::Failed,
            Some(reason.as_str().to_owned()),
            *not_after,
        ),
    };
    CustomDomainView {
        id: d.id.to_string(),
        name: name.to_owned(),
        domain_type: match custom_domain::domain_type(name) {
            DomainType::Apex => DomainTypeView::Apex,
            DomainType::Subdomain => DomainTypeView::Subdomain,
        },
        public_suffix: custom_domain::public_suffix(name).to_owned(),
        redirect_for_name: String::new(),
        verification_status: if d.certificate.verified() {
            VerificationStatus::Verified
        } else {
            VerificationStatus::Unverified
        },
        created_at: d
            .created_at
            .or(state.created_at)
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        server: ServerRef {
            id: id.to_string(),
            name: state
                .config
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
        },
        certificate_status: status,
        certificate_error: error,
        certificate_not_after: not_after,
    }
}

/// Body of adding a custom domain.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    /// The host name, e.g. `www.example.com` (punycode for
    /// internationalised names).
    pub name: String,
}

/// Query of the custom domain listing (Render's filters).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomainsQuery {
    #[serde(default, deserialize_with = "query::many")]
    pub name: Vec<String>,
    /// `apex` or `subdomain`.
    #[serde(default, deserialize_with = "query::many")]
    pub domain_type: Vec<String>,
    /// `verified` or `unverified`.
    #[serde(default, deserialize_with = "query::many")]
    pub verification_status: Vec<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub created_before: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub created_after: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub cursor: Option<String>,
    #[serde(default, deserialize_with = "query::one")]
    pub limit: Option<String>,
}

fn one_of(field: &str, given: &[String], allowed: &[&str]) -> Result<(), ApiError> {
    match given.iter().find(|g| !allowed.contains(&g.as_str())) {
        Some(_) => Err(ApiError::field(
            field,
            format!("must be one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// GET /v1/services/{id}/custom-domains, by name.
pub async fn list(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Listing(q): Listing<CustomDomainsQuery>,
) -> Result<Json<Vec<CustomDomainItem>>, ApiError> {
    let id = service_id(&id)?;
    one_of("domainType", &q.domain_type, &["apex", "subdomain"])?;
    one_of(
        "verificationStatus",
        &q.verification_status,
        &["verified", "unverified"],
    )?;
    let created = Between::of(
        ("createdAfter", q.created_after.as_deref()),
        ("createdBefore", q.created_before.as_deref()),
    )?;
    let names: Vec<String> = q.name.iter().map(|n| n.to_ascii_lowercase()).collect();
    let state = st.ingress.show_service(&caller, &id).await?;
    let items: Vec<(String, CustomDomainItem)> = state
        .custom_domains
        .iter()
        .map(|(name, d)| {
            let custom_domain = view(&id, &state, name, d);
            let cursor = custom_domain.id.clone();
            (
                cursor.clone(),
                CustomDomainItem {
                    custom_domain,
                    cursor,
                },
            )
        })
        .collect();
    let page = app::Page {
        limit: q.limit,
        cursor: q.cursor,
    };
    let kept = page.apply_filtered(items, |item| {
        let d = &item.custom_domain;
        (names.is_empty() || names.contains(&d.name))
            && (q.domain_type.is_empty()
                || q.domain_type.iter().any(|t| t == d.domain_type.as_str()))
            && (q.verification_status.is_empty()
                || q.verification_status
                    .iter()
                    .any(|v| v == d.verification_status.as_str()))
            && created.holds(Some(d.created_at))
    })?;
    Ok(Json(kept.into_iter().map(|(_, i)| i).collect()))
}

/// POST /v1/services/{id}/custom-domains: answers the domains created
/// (one: berth adds no `www` ↔ apex pair).
pub async fn create(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Vec<CustomDomainView>>), ApiError> {
    let id = service_id(&id)?;
    let (name, state) = st
        .ingress
        .add_custom_domain(&caller, &id, &body.name)
        .await?;
    let created = state
        .custom_domains
        .get(&name)
        .map(|d| view(&id, &state, &name, d))
        .ok_or_else(|| ApiError::not_found("custom domain"))?;
    Ok((StatusCode::CREATED, Json(vec![created])))
}

/// The caller's service and its custom domain `key` (id or name).
async fn found(
    st: &AppState,
    caller: &berth_ingress::Caller,
    id: &str,
    key: &str,
) -> Result<CustomDomainView, ApiError> {
    let id = service_id(id)?;
    let state = st.ingress.show_service(caller, &id).await?;
    berth_ingress::custom_domains::find(&state, key)
        .map(|(name, d)| view(&id, &state, name, d))
        .ok_or_else(|| ApiError::not_found("custom domain"))
}

/// GET /v1/services/{id}/custom-domains/{customDomainIdOrName}
pub async fn get(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<CustomDomainView>, ApiError> {
    found(&st, &caller, &id, &key).await.map(Json)
}

/// DELETE /v1/services/{id}/custom-domains/{customDomainIdOrName}: stops
/// routing it at once and gives the name back.
pub async fn delete(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = service_id(&id)?;
    st.ingress.remove_custom_domain(&caller, &id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/services/{id}/custom-domains/{customDomainIdOrName}/verify:
/// accepted. Verification is the certificate issuer's (it retries on its
/// own schedule); this only checks the domain exists.
pub async fn verify(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    found(&st, &caller, &id, &key).await?;
    Ok(StatusCode::ACCEPTED)
}

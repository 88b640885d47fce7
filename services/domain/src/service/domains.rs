//! A web service's custom domains: attaching and detaching them (after
//! the name was claimed on its own subject, see [`crate::custom_domain`]),
//! and what the certificate issuer found for each: the decisions, and the
//! `apply` of the events they produce.
//!
//! A domain counts as verified once a certificate was issued for it: berth
//! controls no DNS, and an ACME server issuing a certificate is the proof
//! that the name points at this installation.

use std::collections::BTreeMap;

use berth_schemas::events::{
    CertificateFailed, CertificateIssued, CustomDomainAdded, CustomDomainRemoved,
};
use berth_schemas::ids::CustomDomainId;
use berth_schemas::model::{CertificateFailure, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deploys::config;
use super::state::ServiceState;
use crate::custom_domain::MAX_CUSTOM_DOMAINS;
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// Where a custom domain's certificate stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Certificate {
    /// None issued yet (the issuer has not reported, or there is none).
    #[default]
    Pending,
    /// Issued (or renewed); valid until `not_after`.
    Issued { not_after: DateTime<Utc> },
    /// The last attempt failed; the issuer tries again later.
    Failed {
        reason: CertificateFailure,
        attempt: u32,
        /// When the failure was recorded, if known.
        at: Option<DateTime<Utc>>,
        retry_in_secs: u64,
        /// A certificate issued before and still held, if any.
        not_after: Option<DateTime<Utc>>,
    },
}

impl Certificate {
    /// Render's `verificationStatus`: verified once a certificate was issued.
    pub fn verified(&self) -> bool {
        matches!(
            self,
            Certificate::Issued { .. }
                | Certificate::Failed {
                    not_after: Some(_),
                    ..
                }
        )
    }
}

/// One custom domain of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomain {
    pub id: CustomDomainId,
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub certificate: Certificate,
}

/// A service's custom domains by (normalised) name.
pub type CustomDomains = BTreeMap<String, CustomDomain>;

/// Attaches `name` (normalised and claimed for this service by the caller).
pub(super) fn add(state: &ServiceState, domain: CustomDomainId, name: String) -> Decision {
    let cfg = config(state)?;
    if cfg.service_type != ServiceType::WebService {
        return Err(DomainError::invalid(
            "serviceId",
            "custom domains can be added to web services only",
        ));
    }
    if let Some(held) = state.custom_domains.get(&name) {
        return if held.id == domain {
            Ok(vec![])
        } else {
            Err(DomainError::conflict(format!(
                "custom domain {name} is already added to this service"
            )))
        };
    }
    if state.custom_domains.len() >= MAX_CUSTOM_DOMAINS {
        return Err(DomainError::conflict(format!(
            "a service may have at most {MAX_CUSTOM_DOMAINS} custom domains; remove one first"
        )));
    }
    Ok(vec![CustomDomainAdded { domain, name }.into()])
}

/// Detaches `name`; a name the service does not have is not found.
pub(super) fn remove(state: &ServiceState, name: &str) -> Decision {
    match state.custom_domains.get(name) {
        Some(d) => Ok(vec![CustomDomainRemoved {
            domain: d.id.clone(),
            name: name.to_owned(),
        }
        .into()]),
        None => Err(DomainError::not_found("custom domain", name)),
    }
}

/// Records what the issuer found; a domain removed meanwhile records nothing.
pub(super) fn certificate(state: &ServiceState, fact: Event) -> Decision {
    let name = match &fact {
        Event::CertificateIssued(e) => &e.domain,
        Event::CertificateFailed(e) => &e.domain,
        _ => {
            return Err(DomainError::invalid(
                "event",
                "not a certificate fact of a custom domain",
            ))
        }
    };
    if state.custom_domains.contains_key(name) {
        Ok(vec![fact])
    } else {
        Ok(vec![])
    }
}

/// Applies the custom domain events.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    match event {
        Event::CustomDomainAdded(CustomDomainAdded { domain, name }) => {
            s.custom_domains
                .entry(name.clone())
                .or_insert_with(|| CustomDomain {
                    id: domain.clone(),
                    created_at: time,
                    certificate: Certificate::Pending,
                });
        }
        Event::CustomDomainRemoved(CustomDomainRemoved { domain, name })
            if s.custom_domains.get(name).is_some_and(|d| d.id == *domain) =>
        {
            s.custom_domains.remove(name);
        }
        Event::CertificateIssued(CertificateIssued {
            domain, not_after, ..
        }) => {
            if let Some(d) = s.custom_domains.get_mut(domain) {
                d.certificate = Certificate::Issued {
                    not_after: *not_after,
                };
            }
        }
        Event::CertificateFailed(CertificateFailed {
            domain,
            reason,
            attempt,
            retry_in_secs,
        }) => {
            if let Some(d) = s.custom_domains.get_mut(domain) {
                let held = match &d.certificate {
                    Certificate::Issued { not_after } => Some(*not_after),
                    Certificate::Failed { not_after, .. } => *not_after,
                    Certificate::Pending => None,
                };
                d.certificate = Certificate::Failed {
                    reason: *reason,
                    attempt: *attempt,
                    at: time,
                    retry_in_secs: *retry_in_secs,
                    not_after: held,
                };
            }
        }
        _ => {}
    }
}

//! Custom domains of web services: adding, removing, and giving back a
//! deleted service's.
//!
//! A name belongs to one service of one owner across the installation, so
//! it is claimed on its own subject before the service gets it, and given
//! back after the service let it go:
//!
//! - adding: 1. claim the name (`domain_claimed` on `…evt.domain.dom-…`; a
//!   name another service holds is a 409 that does not say whose),
//!   2. attach it to the service (`custom_domain_added`); a refusal of 2
//!   gives the claim back;
//! - removing: 1. detach it from the service (`custom_domain_removed`: it
//!   stops routing), 2. release the claim (`domain_released`).
//!
//! A crash between two steps leaves a claim no service backs (released by
//! [`crate::repair`] after the grace period) or, only after a stalled add,
//! a service using a name it does not hold (claimed again, or taken off
//! the service when someone else holds it by then).

use berth_domain::custom_domain::{self, DomainClaim, MAX_CUSTOM_DOMAINS};
use berth_domain::service::{self, CustomDomain, ServiceState};
use berth_domain::DomainError;
use berth_schemas::ids::{CustomDomainId, DomainId, OwnerId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_schemas::{Actor, AggregateId};

use crate::failpoint::failpoint;
use crate::{exec, Caller, Ingress, IngressError, Scope};

/// The claim's aggregate of a normalised name.
pub fn claim_of(name: &str) -> AggregateId {
    AggregateId::Domain(DomainId::of_name(name))
}

/// The custom domain of `state` named `name_or_id` (its name in any case,
/// or its `cdm-…` id).
pub fn find<'s>(
    state: &'s ServiceState,
    name_or_id: &str,
) -> Option<(&'s String, &'s CustomDomain)> {
    let lower = name_or_id.to_ascii_lowercase();
    state.custom_domains.get_key_value(&lower).or_else(|| {
        state
            .custom_domains
            .iter()
            .find(|(_, d)| d.id.as_str() == name_or_id)
    })
}

impl Ingress {
    /// Claims `name` for `service` of `owner` on the name's own subject, or
    /// gives it back (`claim_for` `None`). True when something was appended.
    pub(crate) async fn set_domain_claim(
        &self,
        name: &str,
        service: &ServiceId,
        claim_for: Option<&OwnerId>,
        key: &str,
        actor: &Actor,
    ) -> Result<bool, IngressError> {
        let (name, service) = (name.to_owned(), service.clone());
        let aggregate = claim_of(&name);
        let command = match claim_for {
            Some(owner) => custom_domain::Command::Claim {
                name,
                owner: owner.clone(),
                service,
            },
            None => custom_domain::Command::Release { name, service },
        };
        let done = exec::run::<DomainClaim>(&self.store, &aggregate, key, actor, command).await?;
        Ok(done.appended.is_some())
    }

    /// Adds custom domain `name` to the caller's web service; returns the
    /// normalised name and the service after it.
    pub async fn add_custom_domain(
        &self,
        caller: &Caller,
        service: &ServiceId,
        name: &str,
    ) -> Result<(String, ServiceState), IngressError> {
        let name = custom_domain::normalise(name, &self.opts.base_domain)?;
        // Cheap refusals before anything is claimed.
        let state = self.show_service(caller, service).await?;
        if state
            .config
            .as_ref()
            .is_some_and(|c| c.service_type != ServiceType::WebService)
        {
            return Err(DomainError::Invalid {
                field: "serviceId",
                reason: "custom domains can be added to web services only".to_owned(),
            }
            .into());
        }
        if state.custom_domains.contains_key(&name) {
            return Err(DomainError::Conflict(format!(
                "custom domain {name} is already added to this service"
            ))
            .into());
        }
        if state.custom_domains.len() >= MAX_CUSTOM_DOMAINS {
            return Err(DomainError::Conflict(format!(
                "a service may have at most {MAX_CUSTOM_DOMAINS} custom domains; remove one first"
            ))
            .into());
        }
        let id = CustomDomainId::generate();
        let key = format!("domain-add-{service}-{id}");

        // 1. The claim.
        self.set_domain_claim(
            &name,
            service,
            Some(&caller.owner),
            &format!("{key}-claim"),
            &caller.actor,
        )
        .await?;
        failpoint("domain-add:after-claim");

        // 2. The service.
        let command = service::Command::AddCustomDomain {
            domain: id.clone(),
            name: name.clone(),
        };
        match self
            .service_command(Scope::Owner(caller), service, &key, command)
            .await
        {
            Ok(state) => {
                failpoint("domain-add:after-add");
                tracing::info!(service.id = %service, domain = %name, "custom domain added");
                Ok((name, state))
            }
            Err(e) => {
                // Best effort; a leftover is given back by the repairer.
                let undo = self
                    .set_domain_claim(&name, service, None, &format!("{key}-undo"), &caller.actor)
                    .await;
                if let Err(u) = undo {
                    tracing::error!(service.id = %service, domain = %name, error = %u, "could not release a domain after a failed add");
                }
                Err(e)
            }
        }
    }

    /// Removes the custom domain `name_or_id` from the caller's service,
    /// then gives its name back.
    pub async fn remove_custom_domain(
        &self,
        caller: &Caller,
        service: &ServiceId,
        name_or_id: &str,
    ) -> Result<(), IngressError> {
        let state = self.show_service(caller, service).await?;
        let Some((name, domain)) = find(&state, name_or_id) else {
            return Err(IngressError::not_found("custom domain", name_or_id));
        };
        let (name, id) = (name.clone(), domain.id.clone());
        let key = format!("domain-remove-{service}-{id}");
        let command = service::Command::RemoveCustomDomain { name: name.clone() };
        self.service_command(Scope::Owner(caller), service, &key, command)
            .await?;
        failpoint("domain-remove:after-remove");
        self.set_domain_claim(
            &name,
            service,
            None,
            &format!("{key}-release"),
            &caller.actor,
        )
        .await?;
        failpoint("domain-remove:after-release");
        tracing::info!(service.id = %service, domain = %name, "custom domain removed");
        Ok(())
    }

    /// Gives back every custom domain of a deleted service (`state` as it
    /// was deleted).
    pub(crate) async fn release_domains(
        &self,
        caller: &Caller,
        service: &ServiceId,
        state: &ServiceState,
    ) -> Result<(), IngressError> {
        for name in state.custom_domains.keys() {
            let key = format!(
                "service-delete-{service}-release-{}",
                DomainId::of_name(name)
            );
            self.set_domain_claim(name, service, None, &key, &caller.actor)
                .await?;
        }
        Ok(())
    }
}

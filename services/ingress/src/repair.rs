//! The process manager behind multi-step operations: it finishes or undoes
//! what a process that died half-way through left behind.
//!
//! Creating a service (claim the name, attach the credential, create),
//! deleting it (delete, release the name, detach, release its custom
//! domains), renaming it (claim the new name, update, release the old),
//! changing its credential (attach the new, update, detach the old) and
//! adding or removing a custom domain (claim, add; remove, release) each
//! append on two or three aggregates in turn. A failure the process sees
//! is undone in-process; a crash (or a lost connection) between two
//! appends is not. The service's own state is
//! the truth, and [`Links`](crate::links::Links) (folded from the log by the caller's read
//! model) says where the owner's names and the credentials' attachments
//! disagree with it; a [`Repairer`] turns each disagreement into the append
//! that ends it ([`Repair`]): give back a name or detach a credential the
//! service does not use (the undo of an unfinished create, rename or
//! credential change; the end of an unfinished delete, rename or
//! credential change), or claim / attach what a service uses but does not
//! hold.
//!
//! Each repair decides again on the aggregates as they are at append time
//! (optimistic concurrency: a conflict re-decides), so a read model that is
//! behind can only make it do nothing. An unfinished creation is fenced
//! first: `service_creation_abandoned` on the service's subject (appended
//! only if it is still empty) means its `service_created` can never land,
//! so the name and credential can be given back without a late create
//! ending up with neither. Renames and credential changes have no such
//! fence: if one stalls past the grace period and its update lands after
//! the repair gave the new name back, the service then names something it
//! does not hold, and the next pass claims it again (or, if another service
//! took the name or the credential was removed in between, logs an error
//! for an operator: the two services must be told apart by hand).
//!
//! **Cost.** A pass reads only memory: [`crate::links::Links::repairs`] walks the claims,
//! attachments and services once (tens of thousands of map lookups at
//! 10,000 services: well under a millisecond to a few milliseconds), with
//! no aggregate loaded. Only a disagreement costs I/O: one load of the
//! service, at most one fencing append, one load and one append on the
//! owner or credential. Keeping the links up to date costs one map update
//! per relevant event, in the read model that already follows the log.
//!
//! **Replicas.** Every API replica runs a repairer over the same log. They
//! find the same disagreements and derive the same idempotency key for
//! each ([`Repair::key`]: the link's commit position), so two replicas
//! repairing at once append once (the event store's duplicate window); a
//! replica that comes later decides on the repaired state and appends
//! nothing. The cost of the passes themselves grows with the replicas, not
//! the appends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use berth_domain::service::{self, ServiceState};
use berth_domain::DomainError;
use berth_schemas::ids::{CredentialId, OwnerId, ServiceId};
use berth_schemas::{Actor, AggregateId};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::links::Repair;
use crate::{exec, Ingress, IngressError};

/// At most this many repairs per pass; the rest wait for the next one (a
/// large backlog, e.g. after a long outage, is worked off at a steady pace).
pub const MAX_REPAIRS_PER_PASS: usize = 256;

/// What a repair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repaired {
    /// It appended (a name given back or claimed, a credential detached or
    /// attached).
    Appended,
    /// The aggregates agree already (another replica repaired it, or the
    /// read model was behind).
    Nothing,
}

/// The repairs due now, given the grace period; `None` when the read model
/// is unreadable.
pub type DueFn = dyn Fn(DateTime<Utc>, Duration) -> Option<Vec<Repair>> + Send + Sync;

fn actor() -> Actor {
    Actor::system("repair")
}

fn uses_name(s: &ServiceState, owner: &OwnerId, name: &str) -> bool {
    s.exists()
        && s.config
            .as_ref()
            .is_some_and(|c| c.owner == *owner && c.name == name)
}

fn uses_domain(s: &ServiceState, name: &str) -> bool {
    s.exists() && s.custom_domains.contains_key(name)
}

fn uses_credential(s: &ServiceState, credential: &CredentialId) -> bool {
    s.exists()
        && s.config
            .as_ref()
            .is_some_and(|c| c.credential.as_ref() == Some(credential))
}

impl Ingress {
    /// The service as it is now; a service whose creation never appended
    /// `service_created` is fenced off first, so it never will.
    async fn settle(&self, service: &ServiceId) -> Result<ServiceState, IngressError> {
        let done = exec::run::<service::Service>(
            &self.store,
            &AggregateId::Service(service.clone()),
            &format!("repair-abandon-{service}"),
            &actor(),
            service::Command::AbandonCreation,
        )
        .await?;
        if done.appended.is_some() {
            tracing::info!(service.id = %service, "unfinished service creation given up");
        }
        Ok(Arc::unwrap_or_clone(done.state))
    }

    /// Carries out one repair against the aggregates as they are now. A
    /// refusal ([`IngressError::Rejected`]) means it cannot be done (the
    /// name is another service's, the credential was removed).
    pub async fn repair(&self, r: &Repair) -> Result<Repaired, IngressError> {
        let state = self.settle(r.service()).await?;
        let key = r.key();
        let actor = actor();
        let appended = match r {
            Repair::Release {
                owner,
                name,
                service,
                ..
            }
            | Repair::Claim {
                owner,
                name,
                service,
                ..
            } => {
                // A claim is wanted while the service uses the name, a
                // release once it does not.
                let claim = matches!(r, Repair::Claim { .. });
                if uses_name(&state, owner, name) != claim {
                    return Ok(Repaired::Nothing);
                }
                self.set_name(owner, name, service, claim, &key, &actor)
                    .await?
            }
            Repair::Detach {
                credential,
                service,
                ..
            } => {
                if uses_credential(&state, credential) {
                    return Ok(Repaired::Nothing);
                }
                self.set_attachment(credential, service, None, &key, &actor)
                    .await?
            }
            Repair::Attach {
                credential,
                owner,
                service,
                ..
            } => {
                if !uses_credential(&state, credential) {
                    return Ok(Repaired::Nothing);
                }
                self.set_attachment(credential, service, Some(owner), &key, &actor)
                    .await?
            }
            Repair::ReleaseDomain { name, service, .. } => {
                if uses_domain(&state, name) {
                    return Ok(Repaired::Nothing);
                }
                self.set_domain_claim(name, service, None, &key, &actor)
                    .await?
            }
            Repair::ClaimDomain {
                owner,
                name,
                service,
                ..
            } => {
                if !uses_domain(&state, name) {
                    return Ok(Repaired::Nothing);
                }
                match self
                    .set_domain_claim(name, service, Some(owner), &key, &actor)
                    .await
                {
                    Ok(appended) => appended,
                    // Someone else holds it by now: the service lets it go.
                    Err(IngressError::Rejected(DomainError::DomainTaken { .. })) => {
                        let command = service::Command::RemoveCustomDomain { name: name.clone() };
                        let done = exec::run::<service::Service>(
                            &self.store,
                            &AggregateId::Service(service.clone()),
                            &format!("{key}-remove"),
                            &actor,
                            command,
                        )
                        .await?;
                        tracing::warn!(service.id = %service, domain = %name, "custom domain held by another service; taken off this one");
                        done.appended.is_some()
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(if appended {
            Repaired::Appended
        } else {
            Repaired::Nothing
        })
    }
}

/// Runs passes of repairs: one at start, then every
/// [`crate::IngressOptions::repair_every`]. One pass at a time; repairs
/// within a pass one after the other.
pub struct Repairer {
    ingress: Ingress,
    due: Arc<DueFn>,
    /// Repairs refused for good, by key: reported once, not retried.
    refused: HashSet<String>,
}

impl std::fmt::Debug for Repairer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repairer")
            .field("grace", &self.ingress.opts.repair_grace)
            .field("refused", &self.refused.len())
            .finish_non_exhaustive()
    }
}

impl Repairer {
    /// A repairer reading the repairs due from `due` (the [`crate::links::Links`]
    /// of a read model the caller keeps following the log).
    pub fn new(
        ingress: Ingress,
        due: impl Fn(DateTime<Utc>, Duration) -> Option<Vec<Repair>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            ingress,
            due: Arc::new(due),
            refused: HashSet::new(),
        }
    }

    /// One pass: every repair due now (up to [`MAX_REPAIRS_PER_PASS`]).
    /// Returns how many appended.
    pub async fn pass(&mut self) -> usize {
        let grace = self.ingress.opts.repair_grace;
        let Some(mut due) = (self.due)(Utc::now(), grace) else {
            tracing::error!("repairs skipped: the read model is unreadable");
            return 0;
        };
        due.retain(|r| !self.refused.contains(&r.key()));
        if due.len() > MAX_REPAIRS_PER_PASS {
            tracing::info!(
                due = due.len(),
                now = MAX_REPAIRS_PER_PASS,
                "many repairs due; the rest wait for the next pass"
            );
            due.truncate(MAX_REPAIRS_PER_PASS);
        }
        let mut appended = 0;
        for r in &due {
            match self.ingress.repair(r).await {
                Ok(Repaired::Appended) => {
                    appended += 1;
                    tracing::info!(repair = ?r, "repaired what an interrupted operation left");
                }
                Ok(Repaired::Nothing) => {}
                Err(IngressError::Rejected(e)) => {
                    tracing::error!(repair = ?r, error = %e, "cannot repair: needs an operator");
                    self.refused.insert(r.key());
                }
                Err(e) => {
                    tracing::warn!(repair = ?r, error = %e, "repair failed; retrying at the next pass");
                }
            }
        }
        appended
    }

    /// Passes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ingress.opts.repair_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Stopping mid-pass loses nothing: each repair is one append
            // with its own key, and the next start finds what is left.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pass() => {}
            }
        }
    }
}

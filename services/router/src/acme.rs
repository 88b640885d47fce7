//! Managed certificates over ACME (RFC 8555, HTTP-01): a reconciler from
//! the set of domains that should have a certificate ([`Domains`], each
//! with the service it belongs to) to the certificate store.
//!
//! - a domain without a certificate gets one; one past two thirds of its
//!   lifetime (or forced through [`IssuerHandle::renew`]) is renewed; one
//!   that left the set has its certificate removed;
//! - HTTP-01 answers go to the store, so whichever replica the CA reaches
//!   answers the challenge;
//! - one issuance at a time across every replica: a lock entry in the
//!   store, taken create-only or by a compare-and-set on its revision, with
//!   a lease so a dead replica's lock expires;
//! - a failure is retried with exponential backoff (capped), the attempt
//!   count kept in the store so every replica honours it; issues, failures
//!   (with a typed reason, never the CA's or the network's own words) and
//!   removals are appended to the owning service's log through the command
//!   path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::service::{self, ServiceState, ServiceStatus};
use berth_domain::{Aggregate, Ctx, DomainError};
use berth_eventlog::{EventStore, Stamp};
use berth_runtime::secrets::Secret;
use berth_schemas::events::{CertificateFailed, CertificateIssued, CertificateRemoved};
use berth_schemas::ids::ServiceId;
use berth_schemas::model::CertificateFailure;
use berth_schemas::{Actor, AggregateId, Envelope, Event};
use chrono::{DateTime, Utc};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::certstore::{valid_domain, CertStore, Failures, StoredCert};
use crate::config::AcmeOptions;
use crate::tls::{leaf_facts, LeafFacts};

/// The domains that should have a managed certificate, each with the
/// service it belongs to (its events go to that service's log).
pub type Domains = BTreeMap<String, ServiceId>;

/// Asks the issuer for things out of turn.
#[derive(Debug, Clone, Default)]
pub struct IssuerHandle {
    forced: Arc<Mutex<BTreeSet<String>>>,
    wake: Arc<Notify>,
}

impl IssuerHandle {
    /// Renews `domain`'s certificate now, however young it is.
    pub fn renew(&self, domain: &str) {
        if let Ok(mut f) = self.forced.lock() {
            f.insert(domain.to_ascii_lowercase());
        }
        self.wake.notify_one();
    }

    fn is_forced(&self, domain: &str) -> bool {
        self.forced.lock().is_ok_and(|f| f.contains(domain))
    }

    fn done(&self, domain: &str) {
        if let Ok(mut f) = self.forced.lock() {
            f.remove(domain);
        }
    }
}

/// What a domain needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing (held and young enough, or waiting out a backoff).
    Nothing,
    /// A first certificate.
    Issue,
    /// A new certificate in place of the one held.
    Renew,
}

/// When a certificate is renewed: two thirds into its lifetime.
pub fn renew_at(facts: &LeafFacts) -> DateTime<Utc> {
    facts.not_before + (facts.not_after - facts.not_before) * 2 / 3
}

/// The pure rule: what `held` (and past `failures`) mean for a wanted
/// domain at `now`.
pub fn need(
    held: Option<&LeafFacts>,
    failures: Option<&Failures>,
    forced: bool,
    now: DateTime<Utc>,
) -> Need {
    if failures.is_some_and(|f| f.next_at > now) {
        return Need::Nothing;
    }
    match held {
        None => Need::Issue,
        Some(facts) if forced || now >= renew_at(facts) => Need::Renew,
        Some(_) => Need::Nothing,
    }
}

/// Wait before attempt `attempt + 1`: `min` doubling per attempt, at most `max`.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    min.saturating_mul(factor).min(max)
}

/// The certificate facts recorded on a service's log. Folds like the
/// service (so it shares the store's folded states); decides to append the
/// fact as it is, or nothing when the service is gone.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertificateFacts;

impl Aggregate for CertificateFacts {
    type State = ServiceState;
    type Command = Event;

    fn apply(state: ServiceState, event: &Event) -> ServiceState {
        service::apply(state, event)
    }

    fn fold(state: ServiceState, envelope: &Envelope) -> ServiceState {
        service::fold(state, envelope)
    }

    fn decide(state: &ServiceState, fact: Event, _: &Ctx) -> Result<Vec<Event>, DomainError> {
        Ok(match state.status {
            ServiceStatus::NotCreated | ServiceStatus::Deleted => Vec::new(),
            ServiceStatus::Active | ServiceStatus::Suspended => vec![fact],
        })
    }
}

/// The issuer of one router replica.
pub struct Issuer {
    events: EventStore,
    store: CertStore,
    opts: AcmeOptions,
    domains: watch::Receiver<Domains>,
    handle: IssuerHandle,
    /// This replica's name in the lock.
    holder: String,
    account: Option<Account>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("directory", &self.opts.directory)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// Why one domain's issuance failed: its reason for the log.
struct Failed(CertificateFailure);

impl Issuer {
    /// An issuer of the certificates `domains` asks for.
    pub fn new(
        events: EventStore,
        store: CertStore,
        opts: AcmeOptions,
        domains: watch::Receiver<Domains>,
        handle: IssuerHandle,
    ) -> Self {
        let holder = format!(
            "router-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        Issuer {
            events,
            store,
            opts,
            domains,
            handle,
            holder,
            account: None,
        }
    }

    /// Reconciles until `stop`: on every change of the domains, every
    /// forced renewal, when a backoff ends and at least every check period.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let wait = match self.pass(&stop).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(error = %e, "certificate pass failed; retrying");
                    self.opts.retry_min
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = self.domains.changed() => {
                    if changed.is_err() {
                        // No feed any more: keep renewing what is held.
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                _ = self.handle.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let _ = self.store.unlock(&self.holder).await;
    }

    /// One pass: what needs doing, done under the lock. Returns how long
    /// to wait before the next pass when nothing wakes the issuer earlier.
    async fn pass(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<Duration, crate::certstore::StoreError> {
        let wanted = self.domains.borrow().clone();
        let now = Utc::now();
        let mut wait = self.opts.check_every;
        let mut todo = Vec::new();
        for (domain, service) in &wanted {
            if !valid_domain(domain) {
                continue;
            }
            let (need, next) = self.need_of(domain, now).await?;
            if let Some(next) = next {
                wait = wait.min(next);
            }
            if need != Need::Nothing {
                todo.push((domain.clone(), service.clone()));
            }
        }
        let stale: Vec<String> = self
            .store
            .cert_domains()
            .await?
            .into_iter()
            .filter(|d| !wanted.contains_key(d))
            .collect();
        if todo.is_empty() && stale.is_empty() {
            return Ok(wait);
        }
        if !self.store.lock(&self.holder, self.opts.lock_lease).await? {
            tracing::debug!("another router is issuing; waiting");
            return Ok(wait.min(Duration::from_secs(5)));
        }
        for domain in stale {
            self.remove(&domain).await?;
        }
        for (domain, service) in todo {
            if stop.is_cancelled() {
                break;
            }
            // Decided again under the lock: another replica may have just
            // issued it.
            let (need, _) = self.need_of(&domain, Utc::now()).await?;
            if need == Need::Nothing {
                continue;
            }
            if !self.store.lock(&self.holder, self.opts.lock_lease).await? {
                break;
            }
            let next = self.issue(&domain, &service, need == Need::Renew).await?;
            wait = wait.min(next);
        }
        self.store.unlock(&self.holder).await?;
        Ok(wait)
    }

    /// What `domain` needs at `now`, and when to look again if it is
    /// waiting (a backoff or a renewal date).
    async fn need_of(
        &self,
        domain: &str,
        now: DateTime<Utc>,
    ) -> Result<(Need, Option<Duration>), crate::certstore::StoreError> {
        let held = self.store.cert(domain).await?;
        let facts = held.as_ref().and_then(stored_facts);
        let failures = self.store.failures(domain).await?;
        let forced = self.handle.is_forced(domain);
        let need = need(facts.as_ref(), failures.as_ref(), forced, now);
        let until = |t: DateTime<Utc>| (t - now).to_std().ok();
        let next = match (&need, failures, &facts) {
            (Need::Nothing, Some(f), _) if f.next_at > now => until(f.next_at),
            (Need::Nothing, _, Some(facts)) => until(renew_at(facts)),
            _ => None,
        };
        Ok((need, next))
    }

    async fn remove(&self, domain: &str) -> Result<(), crate::certstore::StoreError> {
        let service = self.store.cert(domain).await?.and_then(|c| c.service);
        self.store.remove_cert(domain).await?;
        self.store.set_failures(domain, None).await?;
        tracing::info!(domain = %domain, "certificate removed: the domain left");
        if let Some(service) = service {
            let fact = CertificateRemoved {
                domain: domain.to_owned(),
            };
            self.record(
                &service,
                &format!(
                    "certificate-removed-{domain}-{}",
                    Utc::now().timestamp_millis()
                ),
                fact.into(),
            )
            .await;
        }
        Ok(())
    }

    /// Obtains a certificate for `domain`; records the outcome. Returns
    /// when to look at the domain again.
    async fn issue(
        &mut self,
        domain: &str,
        service: &ServiceId,
        renewal: bool,
    ) -> Result<Duration, crate::certstore::StoreError> {
        tracing::info!(domain = %domain, renewal, "obtaining a certificate");
        let obtained = self.obtain(domain).await;
        self.handle.done(domain);
        let failure = match obtained {
            Ok((chain, key)) => {
                match first_leaf(&chain) {
                    Some(facts) => {
                        self.store
                            .put_cert(domain, &chain, &key, Some(service.clone()), facts.not_after)
                            .await?;
                        self.store.set_failures(domain, None).await?;
                        tracing::info!(domain = %domain, serial = %facts.serial, not_after = %facts.not_after, "certificate issued");
                        let fact = CertificateIssued {
                            domain: domain.to_owned(),
                            not_after: facts.not_after,
                            serial: facts.serial.clone(),
                            renewal,
                        };
                        self.record(
                            service,
                            &format!("certificate-issued-{domain}-{}", facts.serial),
                            fact.into(),
                        )
                        .await;
                        return Ok((renew_at(&facts) - Utc::now())
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(self.opts.check_every));
                    }
                    // The CA sent something that is not a certificate.
                    None => CertificateFailure::Rejected,
                }
            }
            Err(Failed(reason)) => reason,
        };
        let attempt = self
            .store
            .failures(domain)
            .await?
            .map_or(1, |f| f.attempt.saturating_add(1));
        let delay = backoff(attempt, self.opts.retry_min, self.opts.retry_max);
        let next_at =
            Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        self.store
            .set_failures(domain, Some(Failures { attempt, next_at }))
            .await?;
        tracing::warn!(domain = %domain, reason = ?failure, attempt, retry_in = ?delay, "certificate not obtained");
        let fact = CertificateFailed {
            domain: domain.to_owned(),
            reason: failure,
            attempt,
            retry_in_secs: delay.as_secs().max(1),
        };
        self.record(
            service,
            &format!(
                "certificate-failed-{domain}-{attempt}-{}",
                next_at.timestamp_millis()
            ),
            fact.into(),
        )
        .await;
        Ok(delay)
    }

    /// Appends `fact` to `service`'s log. A failure to record is logged,
    /// not fatal: the certificate store already holds the truth.
    async fn record(&self, service: &ServiceId, key: &str, fact: Event) {
        let stamp = Stamp::new(Actor::system("router"));
        let aggregate = AggregateId::Service(service.clone());
        if let Err(e) = self
            .events
            .execute::<CertificateFacts>(&aggregate, key, &stamp, fact)
            .await
        {
            tracing::warn!(service.id = %service, error = %e, "certificate event not recorded");
        }
    }

    /// The ACME account: from the store, else created (under the lock, so
    /// replicas do not make one each) and stored sealed.
    async fn account(&mut self) -> Result<Account, Failed> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let dir = self.opts.directory.clone();
        let builder = || match &self.opts.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let stored = self
            .store
            .account(&dir)
            .await
            .map_err(|_| Failed(CertificateFailure::StoreUnavailable))?;
        let account = match stored {
            Some(creds) => {
                let creds: AccountCredentials = serde_json::from_str(creds.expose())
                    .map_err(|_| Failed(CertificateFailure::StoreUnavailable))?;
                builder()
                    .map_err(|e| classify(&e))?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| classify(&e))?
            }
            None => {
                let contact: Vec<String> = self
                    .opts
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()
                    .map_err(|e| classify(&e))?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        dir.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| classify(&e))?;
                let json = serde_json::to_string(&creds)
                    .map_err(|_| Failed(CertificateFailure::StoreUnavailable))?;
                self.store
                    .put_account(&dir, &Secret::new(json))
                    .await
                    .map_err(|_| Failed(CertificateFailure::StoreUnavailable))?;
                tracing::info!(acme.directory = %dir, "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// One order for `domain`: challenges answered through the store,
    /// validated, finalized. The chain PEM and the new key's PEM.
    async fn obtain(&mut self, domain: &str) -> Result<(String, Secret), Failed> {
        let account = self.account().await?;
        let store = self.store.clone();
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(self.opts.order_timeout);
        let ids = [Identifier::Dns(domain.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| classify(&e))?;
        let mut tokens = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| classify(&e))?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    _ => return Err(Failed(CertificateFailure::ChallengeFailed)),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or(Failed(CertificateFailure::Rejected))?;
                let token = challenge.token.clone();
                let answer = challenge.key_authorization().as_str().to_owned();
                store
                    .put_challenge(&token, &answer)
                    .await
                    .map_err(|_| Failed(CertificateFailure::StoreUnavailable))?;
                tokens.push(token);
                challenge.set_ready().await.map_err(|e| classify(&e))?;
            }
            let status = order.poll_ready(&retry).await.map_err(|e| classify(&e))?;
            if status != OrderStatus::Ready {
                return Err(Failed(CertificateFailure::ChallengeFailed));
            }
            let key = order.finalize().await.map_err(|e| classify(&e))?;
            let chain = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| classify(&e))?;
            Ok((chain, Secret::new(key)))
        }
        .await;
        for token in tokens {
            let _ = store.remove_challenge(&token).await;
        }
        result
    }
}

/// The facts of a stored certificate's leaf.
fn stored_facts(stored: &StoredCert) -> Option<LeafFacts> {
    first_leaf(&stored.chain_pem)
}

fn first_leaf(chain_pem: &str) -> Option<LeafFacts> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    leaf_facts(&leaf)
}

/// The owner-facing reason for an ACME error. The error itself (which may
/// name internal addresses) goes to the router's log only.
fn classify(e: &instant_acme::Error) -> Failed {
    use instant_acme::Error as E;
    tracing::warn!(error = %e, "ACME request failed");
    let reason = match e {
        E::Api(problem) => {
            let kind = problem
                .r#type
                .as_deref()
                .and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:"));
            match kind {
                Some("connection" | "dns" | "incorrectResponse" | "unauthorized" | "tls") => {
                    CertificateFailure::ChallengeFailed
                }
                Some("serverInternal") => CertificateFailure::CaUnavailable,
                _ if problem.status.is_some_and(|s| s >= 500) => CertificateFailure::CaUnavailable,
                _ => CertificateFailure::Rejected,
            }
        }
        E::Timeout(_) => CertificateFailure::TimedOut,
        _ => CertificateFailure::CaUnavailable,
    };
    Failed(reason)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn facts(days_old: i64, lifetime_days: i64) -> LeafFacts {
        let not_before = Utc::now() - chrono::Duration::days(days_old);
        LeafFacts {
            not_before,
            not_after: not_before + chrono::Duration::days(lifetime_days),
            serial: "01".into(),
            names: vec![],
        }
    }

    #[test]
    fn renews_two_thirds_into_the_lifetime_or_when_forced() {
        let now = Utc::now();
        assert_eq!(need(None, None, false, now), Need::Issue);
        assert_eq!(need(Some(&facts(10, 90)), None, false, now), Need::Nothing);
        assert_eq!(need(Some(&facts(10, 90)), None, true, now), Need::Renew);
        assert_eq!(need(Some(&facts(61, 90)), None, false, now), Need::Renew);
        let waiting = Failures {
            attempt: 2,
            next_at: now + chrono::Duration::seconds(30),
        };
        assert_eq!(need(None, Some(&waiting), false, now), Need::Nothing);
        let due = Failures {
            attempt: 2,
            next_at: now - chrono::Duration::seconds(1),
        };
        assert_eq!(need(None, Some(&due), false, now), Need::Issue);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=8).map(|a| backoff(a, min, max).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }
}

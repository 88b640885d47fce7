//! Rollback-eligibility probes (SPEC §7): every `probe_interval`, HEAD the
//! live digest and the last `probe_targets` rollback targets of every
//! service; a digest the registry no longer holds is recorded with
//! `MarkRollbackTargetMissing` (event `rollback_target_missing`: the deploy
//! is no longer rollback-eligible), before a restart, scale-out, cron run or
//! rollback trips over it.
//!
//! Only HEAD requests by digest: registries do not count them against pull
//! limits. A deploy already marked is not probed again, and the rules
//! append nothing for a second mark, so the warning is raised once per
//! deploy. A probe that cannot tell (registry down, credential revoked) marks
//! nothing; the next pass tries again.
//!
//! The services come from a projection of the log's service subjects kept
//! by this loop (each resolver copy probes on its own; the marks are
//! idempotent).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_domain::reference::Reference;
use berth_domain::service::{self, ServiceState};
use berth_eventlog::projection::{Projection, ProjectionOptions, ProjectionRunner};
use berth_eventlog::Stamp;
use berth_oci::Credential;
use berth_schemas::ids::{CredentialId, DeployId, OwnerId, ServiceId};
use berth_schemas::model::DeployStatus;
use berth_schemas::{Actor, AggregateId, Envelope};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::access::{self, AccessError};
use crate::Inner;

/// Every service's state, folded from the service subjects, holding of its
/// ended deploys only the rollback targets a pass may probe (the newest
/// `targets` deactivated ones): a fraction of what the service's rules
/// hold, for a view that decides nothing.
#[derive(Debug)]
pub(crate) struct Services {
    states: BTreeMap<ServiceId, ServiceState>,
    targets: usize,
}

impl Services {
    /// A view for passes probing `targets` earlier deploys per service.
    pub(crate) fn new(targets: usize) -> Self {
        Services {
            states: BTreeMap::new(),
            targets,
        }
    }
}

impl Projection for Services {
    type Snapshot = BTreeMap<ServiceId, ServiceState>;

    fn apply(&mut self, _stream_seq: u64, env: &Envelope) {
        if let AggregateId::Service(id) = &env.aggregate {
            let s = self
                .states
                .entry(id.clone())
                .or_insert_with(|| ServiceState::keeping_served(self.targets));
            *s = service::fold(std::mem::take(s), env);
            if !s.exists() {
                // Deleted (or never created): nothing to probe.
                self.states.remove(id);
            }
        }
    }

    fn snapshot(&self) -> Self::Snapshot {
        self.states.clone()
    }

    fn snapshot_ref(&self) -> Option<&Self::Snapshot> {
        Some(&self.states)
    }

    fn restore(&mut self, mut snapshot: Self::Snapshot) {
        // Read back holding every recent deploy (or more than this copy
        // probes): down to what a pass needs.
        for s in snapshot.values_mut() {
            s.keep_only_served(self.targets);
        }
        self.states = snapshot;
    }
}

/// One digest to check for one deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub service: ServiceId,
    pub deploy: DeployId,
    pub image: String,
    pub digest: String,
}

/// What a pass checks for `state`: the live deploy, then the newest
/// `limit` earlier deploys that served (deactivated), each only while it is
/// still rollback-eligible.
pub(crate) fn targets(id: &ServiceId, state: &ServiceState, limit: usize) -> Vec<Target> {
    let live = state.live_deploy().into_iter();
    let earlier = state
        .deploys
        .iter()
        .map(|d| &**d)
        .rev()
        .filter(|d| d.status == DeployStatus::Deactivated)
        .take(limit);
    live.chain(earlier)
        .filter(|d| d.rollback_eligible)
        .filter_map(|d| {
            d.digest().map(|digest| Target {
                service: id.clone(),
                deploy: d.id.clone(),
                image: d.image.clone(),
                digest: digest.to_owned(),
            })
        })
        .collect()
}

/// A target with what its HEAD needs: the service's current credential
/// (what a rollback would pull with) and owner.
type Due = (Target, Option<CredentialId>, OwnerId);

/// The registry key a HEAD is made for: (API host, repository, digest).
type Head = (String, String, String);

/// A credential as one pass uses it: (owner, credential, registry domain).
type Login = (OwnerId, CredentialId, String);

/// Follows the services until `shutdown`: probes every interval, and
/// sweeps for deploys waiting too long for their digest.
pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let every = inner.opts.probe_interval;
    let stuck_after = inner.opts.stuck_after;
    if every.is_none() && stuck_after.is_none() {
        return;
    }
    let runner = ProjectionRunner::new(
        &inner.store,
        Services::new(inner.opts.probe_targets),
        ProjectionOptions {
            filter: Some(inner.store.subjects().aggregate_kind("service")),
            snapshot_key: Some("resolver-probe-v1".to_owned()),
            ..ProjectionOptions::default()
        },
    );
    let view: Arc<RwLock<Services>> = runner.state();
    let follow = tokio::spawn(runner.run(shutdown.clone()));
    let ticker = |period: Duration| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    // The first ticks come a period in: the view has caught up by then.
    let mut probes = every.map(ticker);
    let mut sweeps = stuck_after.map(|d| ticker(berth_eventlog::worker::sweep_period(d)));
    let after = stuck_after.unwrap_or(Duration::MAX);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick(&mut probes) => {
                let due: Vec<Due> = {
                    let v = view.read().unwrap_or_else(|p| p.into_inner());
                    v.states
                        .iter()
                        .filter_map(|(id, s)| s.config.as_ref().map(|c| (id, s, c)))
                        .flat_map(|(id, s, c)| {
                            targets(id, s, inner.opts.probe_targets)
                                .into_iter()
                                .map(move |t| (t, c.credential.clone(), c.owner.clone()))
                        })
                        .collect()
                };
                probe_pass(&inner, due).await;
            }
            _ = tick(&mut sweeps) => {
                let stuck = {
                    let v = view.read().unwrap_or_else(|p| p.into_inner());
                    stuck_deploys(&v.states, after, chrono::Utc::now())
                };
                for (service, deploy) in stuck {
                    if crate::deploys::in_flight(&inner, &deploy) {
                        continue;
                    }
                    tracing::warn!(service.id = %service, deploy.id = %deploy, "deploy waited too long for its digest; resolving it again");
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        let done = crate::deploys::resolve_deploy(&inner, &service, &deploy, None, 0)
                            .await;
                        if let Err(e) = done {
                            tracing::warn!(service.id = %service, deploy.id = %deploy, error = %e, "deploy not resolved by the sweep; tried again at the next");
                        }
                    });
                }
            }
        }
    }
    match follow.await {
        Ok(Err(e)) => tracing::error!(error = %e, "probe view stopped with an error"),
        Err(e) => tracing::error!(error = %e, "probe view task failed"),
        Ok(Ok(())) => {}
    }
}

/// Waits for `t`'s next tick; for ever when there is none.
async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The deploys of `states` that have waited for their digest since
/// longer than `after` at `now`.
fn stuck_deploys(
    states: &BTreeMap<ServiceId, ServiceState>,
    after: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(ServiceId, DeployId)> {
    let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    states
        .iter()
        .flat_map(|(id, s)| {
            s.deploys
                .iter()
                .filter(|d| crate::deploys::awaits_digest(d))
                .filter(|d| d.started_at.is_some_and(|t| now - t >= after))
                .map(move |d| (id.clone(), d.id.clone()))
        })
        .collect()
}

/// HEADs each distinct digest once, then marks the deploys whose digest
/// the registry no longer holds.
async fn probe_pass(inner: &Inner, due: Vec<Due>) {
    let started = std::time::Instant::now();
    let mut planned: Vec<(Target, Head)> = Vec::new();
    // Each distinct digest, with the login its HEAD needs (if any).
    let mut distinct: BTreeMap<Head, Option<Login>> = BTreeMap::new();
    for (t, cred, owner) in due {
        let Ok(r) = Reference::parse(&t.image) else {
            tracing::warn!(service.id = %t.service, deploy.id = %t.deploy, image = %t.image, "probe: unparsable image");
            continue;
        };
        let key = (
            r.registry_host().to_owned(),
            r.path().to_owned(),
            t.digest.clone(),
        );
        distinct
            .entry(key.clone())
            .or_insert_with(|| cred.map(|id| (owner, id, r.domain().to_owned())));
        planned.push((t, key));
    }
    let heads = distinct.len();
    // Each credential is loaded and opened once per pass, however many
    // digests it is used for; a digest whose credential is unusable is not
    // probed.
    let mut logins: HashMap<Login, Option<Credential>> = HashMap::new();
    let mut probes: Vec<(Head, Option<Credential>)> = Vec::with_capacity(heads);
    for (key, login) in distinct {
        let opened = match login {
            None => None,
            Some(l) => {
                let opened = match logins.entry(l) {
                    Entry::Occupied(o) => o.get().clone(),
                    Entry::Vacant(slot) => {
                        let opened = open_login(inner, slot.key()).await;
                        slot.insert(opened).clone()
                    }
                };
                let Some(c) = opened else { continue };
                Some(c)
            }
        };
        probes.push((key, opened));
    }
    let answers: HashMap<Head, bool> = futures::stream::iter(probes)
        .map(|(key, login)| async move {
            let present = head(inner, &key, login.as_ref()).await;
            (key, present)
        })
        .buffer_unordered(8)
        .filter_map(|(key, present)| async move { present.map(|p| (key, p)) })
        .collect()
        .await;
    let mut missing = 0usize;
    for (t, key) in &planned {
        if answers.get(key) == Some(&false) {
            missing += 1;
            mark_missing(inner, t).await;
        }
    }
    tracing::debug!(
        targets = planned.len(),
        heads,
        missing,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "probe pass done"
    );
}

/// The login of credential `id` of `owner` for registry `domain`; `None`
/// when it cannot be used (its digests are then not probed this pass).
async fn open_login(inner: &Inner, (owner, id, domain): &Login) -> Option<Credential> {
    match access::credential(&inner.store, &inner.key, owner, id, domain).await {
        Ok(c) => Some(c),
        Err(AccessError::Failed { message, .. }) => {
            tracing::warn!(credential.id = %id, domain, message = %message, "probe: credential unusable; not probed");
            None
        }
        Err(AccessError::Store(e)) => {
            tracing::warn!(credential.id = %id, error = %e, "probe: credential not loaded");
            None
        }
    }
}

/// `Some(present)` when the registry answered; `None` when it could not tell.
async fn head(
    inner: &Inner,
    (host, repo, digest): &Head,
    login: Option<&Credential>,
) -> Option<bool> {
    match inner
        .check_client
        .head_digest_exists(host, repo, digest, login)
        .await
    {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(host, repo, digest, error = %e, "probe: registry did not answer; not marked");
            None
        }
    }
}

async fn mark_missing(inner: &Inner, t: &Target) {
    let command = service::Command::MarkRollbackTargetMissing {
        deploy: t.deploy.clone(),
        digest: t.digest.clone(),
    };
    let stamp = Stamp::of_deploy(Actor::system("resolver"), Some(t.deploy.clone()))
        .caused_by("rollback-probe");
    let done = inner
        .store
        .execute::<service::Service>(
            &AggregateId::Service(t.service.clone()),
            &format!("probe-missing-{}", t.deploy),
            &stamp,
            command,
        )
        .await;
    match done {
        Ok(_) => {
            tracing::warn!(service.id = %t.service, deploy.id = %t.deploy, digest = %t.digest, "registry no longer holds the digest: deploy is not rollback-eligible")
        }
        Err(e) => {
            tracing::warn!(service.id = %t.service, deploy.id = %t.deploy, error = %e, "probe: marking the missing digest failed")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_domain::service::{apply, decide, Command, CreateService, DeployRequest};
    use berth_domain::Ctx;
    use berth_schemas::ids::EventId;
    use berth_schemas::ids::{NodeId, UserId};
    use berth_schemas::model::{DeployTrigger, OverlapPolicy, ResolvedImage, Sealed, ServiceType};
    use berth_schemas::Event;

    fn run(s: ServiceState, c: Command) -> ServiceState {
        step(s, c, &mut Vec::new())
    }

    /// Decides `c` on `s` and applies it, the events added to `log`.
    fn step(s: ServiceState, c: Command, log: &mut Vec<Event>) -> ServiceState {
        let events = decide(&s, c, &Ctx::default()).unwrap();
        log.extend(events.iter().cloned());
        events.iter().fold(s, apply)
    }

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:x}").repeat(64))
    }

    fn live(s: ServiceState, d: &DeployId, n: u8) -> ServiceState {
        live_logged(s, d, n, &mut Vec::new())
    }

    fn live_logged(mut s: ServiceState, d: &DeployId, n: u8, log: &mut Vec<Event>) -> ServiceState {
        let mut run = |s, c| step(s, c, log);
        s = run(
            s,
            Command::RecordResolved {
                deploy: d.clone(),
                image: ResolvedImage {
                    digest: digest(n),
                    index_digest: None,
                    compressed_size: 1,
                },
            },
        );
        s = run(
            s,
            Command::RecordPulled {
                deploy: d.clone(),
                node: NodeId::generate(),
                digest: digest(n),
            },
        );
        s = run(s, Command::RecordUpdateStarted { deploy: d.clone() });
        run(
            s,
            Command::RecordLive {
                deploy: d.clone(),
                digest: digest(n),
            },
        )
    }

    #[test]
    fn the_live_deploy_then_the_newest_eligible_earlier_ones() {
        let ds: Vec<DeployId> = (0..4).map(|_| DeployId::generate()).collect();
        let mut c = CreateService::new(
            OwnerId::User(UserId::generate()),
            "app",
            ServiceType::BackgroundWorker,
            "registry.example.com/team/app:v1",
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            ds[0].clone(),
        );
        c.overlap_policy = Some(OverlapPolicy::Cancel);
        let mut s = run(ServiceState::default(), Command::Create(Box::new(c)));
        s = live(s, &ds[0], 1);
        for (i, d) in ds.iter().enumerate().skip(1) {
            s = run(
                s,
                Command::RequestDeploy(DeployRequest::new(d.clone(), DeployTrigger::Api)),
            );
            s = live(s, d, i as u8 + 1);
        }
        // A deploy that never went live is no rollback target.
        s = run(
            s,
            Command::RequestDeploy(DeployRequest::new(DeployId::generate(), DeployTrigger::Api)),
        );
        let id = ServiceId::generate();
        let ids = |limit| -> Vec<DeployId> {
            targets(&id, &s, limit)
                .into_iter()
                .map(|t| t.deploy)
                .collect()
        };
        assert_eq!(ids(1), vec![ds[3].clone(), ds[2].clone()]);
        assert_eq!(
            ids(5),
            vec![ds[3].clone(), ds[2].clone(), ds[1].clone(), ds[0].clone()]
        );
        assert_eq!(targets(&id, &s, 1)[1].digest, digest(3));
        // Marked missing: not probed again.
        s = run(
            s,
            Command::MarkRollbackTargetMissing {
                deploy: ds[2].clone(),
                digest: digest(3),
            },
        );
        let ids = |limit| -> Vec<DeployId> {
            targets(&id, &s, limit)
                .into_iter()
                .map(|t| t.deploy)
                .collect()
        };
        assert_eq!(ids(2), vec![ds[3].clone(), ds[1].clone()]);
    }

    /// A web service (overlap policy `cancel`) with `deploys` deploys gone
    /// live one after another, the history and the state of the usual fold.
    fn long_history(deploys: usize) -> (Vec<Event>, ServiceState) {
        let ds: Vec<DeployId> = (0..deploys).map(|_| DeployId::generate()).collect();
        let mut c = CreateService::new(
            OwnerId::User(UserId::generate()),
            "app",
            ServiceType::WebService,
            "registry.example.com/team/app:v1",
            Sealed {
                kid: "k".into(),
                ciphertext: "x".into(),
            },
            ds[0].clone(),
        );
        c.overlap_policy = Some(OverlapPolicy::Cancel);
        let mut log = Vec::new();
        let mut s = step(
            ServiceState::default(),
            Command::Create(Box::new(c)),
            &mut log,
        );
        s = live_logged(s, &ds[0], 1, &mut log);
        for (i, d) in ds.iter().enumerate().skip(1) {
            let request = DeployRequest::new(d.clone(), DeployTrigger::DeployHook);
            s = step(s, Command::RequestDeploy(request), &mut log);
            s = live_logged(s, d, (i % 15) as u8 + 1, &mut log);
        }
        // The third newest served deploy's digest is gone from the registry.
        let gone = s.deploys[s.deploys.len() - 3].clone();
        s = step(
            s,
            Command::MarkRollbackTargetMissing {
                deploy: gone.id.clone(),
                digest: gone.digest().unwrap_or_default().to_owned(),
            },
            &mut log,
        );
        (log, s)
    }

    fn envelopes(id: &ServiceId, events: Vec<Event>) -> Vec<Envelope> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                id: EventId::generate(),
                version: 1,
                aggregate: AggregateId::Service(id.clone()),
                sequence: i as u64 + 1,
                time: chrono::Utc::now(),
                actor: Actor::system("test"),
                correlation_id: None,
                causation_id: None,
                event,
            })
            .collect()
    }

    #[test]
    fn the_view_holds_few_deploys_and_finds_what_the_full_fold_finds() {
        let id = ServiceId::generate();
        let (log, full) = long_history(60);
        assert_eq!(full.deploys.len(), 60);
        let mut view = Services::new(5);
        for (seq, env) in envelopes(&id, log).iter().enumerate() {
            view.apply(seq as u64 + 1, env);
        }
        let held = &view.states[&id];
        // The live deploy and the newest five served, a few more at most
        // between two looks.
        assert!(
            held.deploys.len() <= 1 + 5 + 5,
            "{} held",
            held.deploys.len()
        );
        let expected = targets(&id, &full, 5);
        assert_eq!(
            expected.len(),
            5,
            "the live one and four eligible earlier ones"
        );
        assert_eq!(targets(&id, held, 5), expected);

        // A snapshot holding every recent deploy is brought down when read back.
        let mut restored = Services::new(5);
        restored.restore(BTreeMap::from([(id.clone(), full.clone())]));
        assert_eq!(restored.states[&id].deploys.len(), 1 + 5);
        assert_eq!(targets(&id, &restored.states[&id], 5), expected);
    }
}

//! A log with a history as berth writes it, written fast: each service's
//! commands are decided by the domain's own rules on its folded state (so
//! every event is one berth could have appended, in an order it could have
//! appended them), and each decision becomes one commit, published
//! pipelined straight to JetStream with its idempotency key as the message
//! id. What the store's `append` adds on top, the expected-sequence check,
//! only guards against concurrent writers; the seed is the only writer.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{bail, Context};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use berth_domain::service::{self, Command, CreateService, DeployRequest, ServiceState};
use berth_domain::{owner, Ctx};
use berth_eventlog::EventStore;
use berth_runtime::secrets::{Secret, SecretKey};
use berth_schemas::ids::{DeployId, EventId, NodeId, OwnerId, ServiceId};
use berth_schemas::model::{seal_context, DeployTrigger, ResolvedImage, ServiceType};
use berth_schemas::{Actor, AggregateId, Commit, Envelope, Event};

/// Acks awaited at once.
const WINDOW: usize = 4096;
/// Runs nothing during the bench (yearly, on January 1st).
const SCHEDULE: &str = "0 0 1 1 *";

/// What to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Services, the big one and the fresh one included.
    pub services: u64,
    /// Events in the log, about.
    pub events: u64,
    /// Deploys in the big service's history.
    pub big_deploys: u64,
}

/// What was written, and where to aim.
#[derive(Debug)]
pub struct Seeded {
    pub events: u64,
    pub commits: u64,
    pub seconds: f64,
    /// The service with `big_deploys` deploys.
    pub big: (ServiceId, Secret),
    /// A service with only its first deploy.
    pub fresh: (ServiceId, Secret),
}

/// One aggregate being written: its folded state and version.
struct Writer<S> {
    id: AggregateId,
    subject: String,
    state: S,
    events: u64,
}

/// Commits queued before they are published: memory stays flat.
const BATCH: usize = 50_000;

/// The commits to publish, in order.
#[derive(Default)]
struct Out {
    commits: Vec<(String, String, Vec<u8>)>,
    events: u64,
}

impl Out {
    /// What is queued, once a batch is full, leaving this empty.
    fn full_batch(&mut self) -> Option<Out> {
        (self.commits.len() >= BATCH).then(|| std::mem::take(self))
    }
}

impl<S> Writer<S> {
    fn new(store: &EventStore, id: AggregateId, state: S, events: u64) -> Self {
        Writer {
            subject: store.subjects().aggregate(&id),
            id,
            state,
            events,
        }
    }

    /// Decides `command` on the state with `decide`, folds what it decided
    /// with `apply` and queues it as one commit. A refused command is a
    /// bug in the plan.
    fn run<C: std::fmt::Debug + Clone>(
        &mut self,
        out: &mut Out,
        command: C,
        decide: impl Fn(&S, C) -> Result<Vec<Event>, berth_domain::DomainError>,
        apply: impl Fn(S, &Event) -> S,
    ) -> anyhow::Result<()>
    where
        S: Default,
    {
        let events = decide(&self.state, command.clone())
            .map_err(|e| anyhow::anyhow!("{} refused {command:?}: {e}", self.id))?;
        if events.is_empty() {
            return Ok(());
        }
        let time = chrono::Utc::now();
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            self.events += 1;
            self.state = apply(std::mem::take(&mut self.state), &event);
            envelopes.push(Envelope {
                id: EventId::generate(),
                version: event.version(),
                aggregate: self.id.clone(),
                sequence: self.events,
                time,
                actor: Actor::system("bench"),
                correlation_id: event.deploy().cloned(),
                causation_id: None,
                event,
            });
        }
        out.events += envelopes.len() as u64;
        let bytes = Commit { events: envelopes }
            .encode()
            .context("encoding a commit")?;
        out.commits.push((
            self.subject.clone(),
            format!("seed-{}-{}", self.id, self.events),
            bytes,
        ));
        Ok(())
    }
}

fn decide_service(s: &ServiceState, c: Command) -> Result<Vec<Event>, berth_domain::DomainError> {
    service::decide(s, c, &Ctx::default())
}

/// One deploy of a cron job, from request to live, as the resolver, the
/// node and the scheduler report it.
fn deploy(w: &mut Writer<ServiceState>, out: &mut Out, id: DeployId, n: u64) -> anyhow::Result<()> {
    let node: NodeId = "nod-aaaaaaaaaaaaaaaaaaaa".parse().context("node id")?;
    let digest = format!("sha256:{n:064x}");
    let apply = service::apply;
    w.run(
        out,
        Command::RecordResolved {
            deploy: id.clone(),
            image: ResolvedImage {
                digest: digest.clone(),
                index_digest: None,
                compressed_size: 3_000_000,
            },
        },
        decide_service,
        apply,
    )?;
    w.run(
        out,
        Command::RecordPulled {
            deploy: id.clone(),
            node,
            digest: digest.clone(),
        },
        decide_service,
        apply,
    )?;
    w.run(
        out,
        Command::RecordUpdateStarted { deploy: id.clone() },
        decide_service,
        apply,
    )?;
    w.run(
        out,
        Command::RecordLive { deploy: id, digest },
        decide_service,
        apply,
    )
}

/// Claims the name, creates the cron job and deploys it `deploys` times
/// in all; returns its hook key.
fn service(
    store: &EventStore,
    key: &SecretKey,
    owner: &mut Writer<owner::OwnerState>,
    owner_id: &OwnerId,
    out: &mut Out,
    name: &str,
) -> anyhow::Result<(Writer<ServiceState>, Secret)> {
    let id = ServiceId::generate();
    owner.run(
        out,
        owner::Command::ClaimServiceName {
            name: name.to_owned(),
            service: id.clone(),
        },
        |s, c| owner::decide(s, c, &Ctx::default()),
        owner::apply,
    )?;
    // A hook key's shape (32 URL-safe characters), unique per service.
    let hook = Secret::new(format!(
        "benchhookkey{}",
        id.to_string().trim_start_matches("srv-")
    ));
    let sealed = key
        .seal(&hook, &seal_context::hook_key(&id))
        .context("sealing a hook key")?;
    let first = DeployId::generate();
    let mut create = CreateService::new(
        owner_id.clone(),
        name,
        ServiceType::CronJob,
        // Nothing listens there: a deploy the bench triggers fails fast.
        "127.0.0.1:1/bench/app:v1",
        sealed,
        first.clone(),
    );
    create.schedule = Some(SCHEDULE.to_owned());
    let mut w = Writer::new(store, AggregateId::Service(id), ServiceState::default(), 0);
    w.run(
        out,
        Command::Create(Box::new(create)),
        decide_service,
        service::apply,
    )?;
    deploy(&mut w, out, first, 0)?;
    Ok((w, hook))
}

/// A later deploy, triggered by a hook.
fn redeploy(w: &mut Writer<ServiceState>, out: &mut Out, n: u64) -> anyhow::Result<()> {
    let id = DeployId::generate();
    w.run(
        out,
        Command::RequestDeploy(DeployRequest::new(id.clone(), DeployTrigger::DeployHook)),
        decide_service,
        service::apply,
    )?;
    deploy(w, out, id, n)
}

/// Publishes `out`'s commits in order, `WINDOW` acks in flight.
async fn publish(store: &EventStore, out: Out) -> anyhow::Result<u64> {
    let js = store.jetstream();
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    let count = out.commits.len() as u64;
    for (subject, key, bytes) in out.commits {
        if acks.len() >= WINDOW {
            if let Some(ack) = acks.pop_front() {
                ack.await.context("a seed commit was not stored")?;
            }
        }
        let msg = PublishMessage::build()
            .payload(bytes.into())
            .message_id(key);
        acks.push_back(js.send_publish(subject, msg).await.context("publishing")?);
    }
    for ack in acks {
        ack.await.context("a seed commit was not stored")?;
    }
    Ok(count)
}

/// Writes the plan's history for `owner_id` (which must exist), with hook
/// keys sealed by `key`.
pub async fn seed(
    store: &EventStore,
    key: &SecretKey,
    owner_id: &OwnerId,
    plan: &Plan,
) -> anyhow::Result<Seeded> {
    if plan.services < 2 {
        bail!("--services must be at least 2 (the big service and a fresh one)");
    }
    let started = Instant::now();
    let owner_agg = AggregateId::Owner(owner_id.clone());
    let loaded = store.load(&owner_agg).await.context("loading the owner")?;
    let state = loaded
        .events
        .iter()
        .fold(owner::OwnerState::default(), owner::fold);
    let mut owner = Writer::new(store, owner_agg, state, loaded.version.events);
    let (mut events, mut commits) = (0, 0);
    let mut flush = |out: Out| {
        events += out.events;
        publish(store, out)
    };

    // The big service first.
    let mut out = Out::default();
    let (mut big, big_key) = service(store, key, &mut owner, owner_id, &mut out, "big")?;
    let (fresh, fresh_key) = service(store, key, &mut owner, owner_id, &mut out, "fresh")?;
    for n in 1..plan.big_deploys {
        redeploy(&mut big, &mut out, n)?;
        if let Some(batch) = out.full_batch() {
            commits += flush(batch).await?;
        }
    }
    let big_events = big.events;
    commits += flush(out).await?;

    // The others share what is left of the event budget.
    let others = plan.services - 2;
    let left = plan.events.saturating_sub(big_events + fresh.events);
    // What a creation (its name claim included) and a later deploy cost,
    // as the two services above came out.
    let creation = fresh.events + 1;
    let per_deploy = match plan.big_deploys {
        0 | 1 => creation,
        n => (big_events - fresh.events) / (n - 1),
    }
    .max(1);
    let per_service = left.checked_div(others).unwrap_or(0);
    let deploys_each = per_service.saturating_sub(creation) / per_deploy + 1;
    let mut out = Out::default();
    for i in 0..others {
        let (mut w, _) = service(
            store,
            key,
            &mut owner,
            owner_id,
            &mut out,
            &format!("svc-{i:05}"),
        )?;
        for n in 1..deploys_each {
            redeploy(&mut w, &mut out, n)?;
        }
        if let Some(batch) = out.full_batch() {
            commits += flush(batch).await?;
        }
    }
    commits += flush(out).await?;
    let (AggregateId::Service(big_id), AggregateId::Service(fresh_id)) = (big.id, fresh.id) else {
        bail!("seeded services are services");
    };
    Ok(Seeded {
        events,
        commits,
        seconds: started.elapsed().as_secs_f64(),
        big: (big_id, big_key),
        fresh: (fresh_id, fresh_key),
    })
}

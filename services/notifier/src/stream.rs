//! The integration stream (SPEC §14, docs/integration.md): every timeline
//! event published as JSON on `<prefix>.events.<owner id>.<service id>`
//! for integrations and notification bridges (the owner in the subject is
//! what an integration's NATS permissions bind it to). A durable consumer on the log's service subjects
//! drives it, one commit at a time in log order, acknowledged only after the
//! server has the publications, so a crash republishes rather than skips: at
//! least once, with `Nats-Msg-Id` = the event id for dedupe. The publications
//! and the job's acknowledgement go out on the store's one connection, which
//! the server reads in order, so it has every publication of a commit before
//! that commit's acknowledgement; the worker runs in order and does not wait
//! for acknowledgements to be confirmed (`WorkerConfig::in_order`): a
//! commit costs no round trip of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use berth_domain::service::{self, ServiceState};
use berth_eventlog::worker::{Job, WorkError, WorkHandler, Worker};
use berth_eventlog::EventStore;
use berth_schemas::ids::{OwnerId, ServiceId};
use berth_schemas::{AggregateId, Commit, Event};
use tokio_util::sync::CancellationToken;

use berth_domain::timeline::TimelineEvent;

/// Publishes the timeline events of each commit it is handed.
#[derive(Debug, Clone)]
pub struct Publisher {
    store: EventStore,
    /// Each service's owner (it never changes), bounded.
    owners: Arc<Mutex<HashMap<ServiceId, OwnerId>>>,
}

/// Services whose owner is remembered; beyond it the map starts over.
const OWNERS_CACHED: usize = 10_000;

impl Publisher {
    /// A publisher on `store`'s connection and prefix.
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            owners: Arc::default(),
        }
    }

    /// The owner of `service`: from the commit (at stream sequence `seen`)
    /// when it creates the service, else remembered, else from the
    /// service's aggregate as of that commit or later (a copy of the log
    /// that is behind it is read again later: it might not have the
    /// service yet, and its events would go unpublished).
    async fn owner(
        &self,
        service: &ServiceId,
        commit: &Commit,
        seen: u64,
    ) -> Result<Option<OwnerId>, WorkError> {
        let created = commit.events.iter().find_map(|e| match &e.event {
            Event::ServiceCreated(c) => Some(c.owner.clone()),
            _ => None,
        });
        let known = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned();
        let owner = match created.or(known) {
            Some(o) => Some(o),
            None => {
                let (state, _) = self
                    .store
                    .state_holding::<ServiceState, _>(
                        &AggregateId::Service(service.clone()),
                        service::fold,
                        seen,
                    )
                    .await
                    .map_err(|e| WorkError::Retry(e.to_string()))?;
                state.config.as_ref().map(|c| c.owner.clone())
            }
        };
        if let Some(o) = &owner {
            let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
            if owners.len() >= OWNERS_CACHED {
                owners.clear();
            }
            owners.insert(service.clone(), o.clone());
        }
        Ok(owner)
    }

    /// The durable consumer (`consumer`) on the log's service subjects; one
    /// at a time so each service's events go out in log order.
    pub async fn worker(
        &self,
        consumer: &str,
        ack_wait: std::time::Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Worker>, crate::NotifierError> {
        let mut cfg =
            crate::on_service_facts(&self.store, consumer, "berth notifier: integration stream");
        cfg.in_order = true;
        cfg.ack_wait = ack_wait;
        cfg.max_deliver = -1;
        crate::start_worker(&self.store, cfg, shutdown).await
    }

    /// Publishes the timeline events of one encoded commit, at stream
    /// sequence `seen` of the log, and waits until the server has them.
    pub async fn publish_commit(&self, payload: &[u8], seen: u64) -> Result<usize, WorkError> {
        let commit = match Commit::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                // Not ours to repair; the projections report it too.
                tracing::warn!(error = %e, "skipping an undecodable commit");
                return Ok(0);
            }
        };
        let client = self.store.client();
        let mut sent = 0;
        for env in &commit.events {
            let Some(t) = TimelineEvent::from_envelope(env) else {
                continue;
            };
            let Ok(service) = t.service_id.parse::<ServiceId>() else {
                continue;
            };
            let Some(owner) = self.owner(&service, &commit, seen).await? else {
                tracing::warn!(service.id = %service, "service has no owner in the log; its event is not published");
                continue;
            };
            let subject = self.store.subjects().service_events(&owner, &service);
            let body = serde_json::to_vec(&t).map_err(|e| WorkError::Fatal(e.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", t.id.as_str());
            client
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            sent += 1;
        }
        // No flush here: the job's acknowledgement follows them on the same
        // connection (see the module's note).
        Ok(sent)
    }
}

impl WorkHandler for Publisher {
    async fn handle(&self, job: Job) -> Result<(), WorkError> {
        let n = self.publish_commit(&job.payload, job.stream_seq).await?;
        tracing::debug!(
            stream_seq = job.stream_seq,
            published = n,
            "integration stream"
        );
        Ok(())
    }
}

/// Runs the publisher until `shutdown`.
pub async fn run(
    publisher: Arc<Publisher>,
    worker: Worker,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if let Err(e) = worker.run(publisher, shutdown).await {
        tracing::error!(error = %e, "integration stream publisher stopped");
    }
}

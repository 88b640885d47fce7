//! The model the histories are checked against: the log read back (every
//! commit with the idempotency key it was appended with), folded afresh
//! with the domain's own rules, and what must then hold: the read models
//! (the API's answers) equal to that fold, every deploy ended exactly once,
//! at most one live deploy per service, and runc running exactly the
//! instances the fold wants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_domain::service::{self, ServiceState};
use berth_schemas::model::DeployStatus;
use berth_schemas::{AggregateId, Commit, Envelope, Event};

use crate::world::World;

/// One commit of the log and the `Nats-Msg-Id` it was appended with.
pub struct Logged {
    pub key: Option<String>,
    pub events: Vec<Envelope>,
}

/// The log as read so far, and the services folded from it.
#[derive(Default)]
pub struct Log {
    next_seq: u64,
    pub commits: Vec<Logged>,
    /// Every service, folded from its events with every deploy kept.
    pub services: BTreeMap<String, ServiceState>,
}

impl Log {
    /// Reads what was appended since the last call. `Err` while the
    /// servers cannot answer (a cluster electing a leader).
    pub async fn refresh(&mut self, world: &World) -> Result<(), String> {
        let js = async_nats::jetstream::new(world.bus.clone());
        let timeout = Duration::from_secs(5);
        let mut stream =
            tokio::time::timeout(timeout, js.get_stream(world.subjects.events_stream()))
                .await
                .map_err(|_| "stream lookup timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        let last = tokio::time::timeout(timeout, stream.info())
            .await
            .map_err(|_| "stream info timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        let first = self.next_seq.max(1);
        for seq in first..=last {
            let msg = tokio::time::timeout(timeout, stream.get_raw_message(seq))
                .await
                .map_err(|_| format!("reading {seq} timed out"))?
                .map_err(|e| format!("reading {seq}: {e}"))?;
            let key = msg
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned());
            let commit = Commit::decode(&msg.payload)
                .map_err(|e| format!("commit {seq} does not decode: {e}"))?;
            for env in &commit.events {
                if let AggregateId::Service(id) = &env.aggregate {
                    let s = self
                        .services
                        .remove(id.as_str())
                        .unwrap_or_else(ServiceState::keeping_every_deploy);
                    self.services.insert(id.to_string(), service::fold(s, env));
                }
            }
            self.commits.push(Logged {
                key,
                events: commit.events,
            });
            self.next_seq = seq + 1;
        }
        Ok(())
    }

    /// Every event, in log order.
    pub fn events(&self) -> impl Iterator<Item = &Envelope> {
        self.commits.iter().flat_map(|c| c.events.iter())
    }

    /// The commits appended with idempotency key `key`.
    pub fn with_key<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Logged> {
        self.commits
            .iter()
            .filter(move |c| c.key.as_deref() == Some(key))
    }

    /// How many `deploy_created` name `deploy`.
    pub fn created(&self, deploy: &str) -> usize {
        self.events()
            .filter(|e| matches!(&e.event, Event::DeployCreated(d) if d.deploy.as_str() == deploy))
            .count()
    }
}

/// The deploy an event ends (live, failed or canceled), if it ends one.
pub fn ended(event: &Event) -> Option<&str> {
    match event {
        Event::DeployLive(e) => Some(e.deploy.as_str()),
        Event::DeployFailed(e) => Some(e.deploy.as_str()),
        Event::DeployCanceled(e) => Some(e.deploy.as_str()),
        _ => None,
    }
}

/// What disagrees with the model now; empty once the installation has
/// converged.
pub async fn disagreements(world: &World, log: &Log) -> Vec<String> {
    let mut out = Vec::new();
    // Every deploy ended exactly once (live, failed or canceled).
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    let mut deactivated: BTreeMap<&str, usize> = BTreeMap::new();
    for e in log.events() {
        match &e.event {
            Event::DeployCreated(d) => {
                ends.entry(d.deploy.as_str()).or_default();
            }
            Event::DeployDeactivated(d) => *deactivated.entry(d.deploy.as_str()).or_default() += 1,
            other => {
                if let Some(d) = ended(other) {
                    *ends.entry(d).or_default() += 1;
                }
            }
        }
    }
    for (d, n) in &ends {
        if *n != 1 {
            out.push(format!("{d} ended {n} times"));
        }
    }
    for (d, n) in &deactivated {
        if *n > 1 {
            out.push(format!("{d} deactivated {n} times"));
        }
    }
    // Instances the log wants, by the node they are placed on.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for svc in &world.services {
        let Some(s) = log.services.get(&svc.id) else {
            out.push(format!("{} not in the log", svc.name));
            continue;
        };
        let live: Vec<_> = s
            .deploys
            .iter()
            .filter(|d| d.status == DeployStatus::Live)
            .collect();
        if live.len() > 1 {
            out.push(format!("{}: {} live deploys", svc.name, live.len()));
        }
        if s.active.is_some() || !s.queue.is_empty() {
            out.push(format!("{}: a deploy still runs or waits", svc.name));
        }
        let config = s.config.as_ref().expect("created");
        let desired = if s.live.is_some() {
            config.num_instances as usize
        } else {
            0
        };
        let on_live: Vec<_> = s
            .instances
            .iter()
            .filter(|i| Some(&i.deploy) == s.live.as_ref() && i.is_healthy())
            .collect();
        if s.instances.len() != desired || on_live.len() != desired {
            out.push(format!(
                "{}: {} instances ({} healthy of the live deploy), {desired} desired",
                svc.name,
                s.instances.len(),
                on_live.len()
            ));
        }
        for i in s.instances.iter() {
            wanted
                .entry(i.node.to_string())
                .or_default()
                .insert(i.id.to_string());
        }
        out.extend(read_model_disagrees(world, svc, s).await);
    }
    // On each live node runc runs exactly the instances the log places
    // there (no orphan, none missing); a lost node holds none any more.
    let mut known = BTreeSet::new();
    for node in world.nodes() {
        let Some(id) = world.node_id(node) else {
            out.push(format!("{node} has no id yet"));
            continue;
        };
        let here = wanted.get(&id).cloned().unwrap_or_default();
        known.insert(id.clone());
        if world.is_lost(node) {
            for i in &here {
                out.push(format!("instance {i} is still placed on the lost {node}"));
            }
            continue;
        }
        let root = world.runc_root(node);
        let listed = if root.exists() {
            berth_tests::runc::try_runc_list(&root)
        } else {
            Ok(Vec::new())
        };
        let running: BTreeSet<String> = match listed {
            Ok(r) => r.into_iter().collect(),
            Err(e) => {
                // A container removed while runc lists: ask again.
                out.push(format!("runc list on {node}: {e}"));
                continue;
            }
        };
        for orphan in running.difference(&here) {
            out.push(format!(
                "container {orphan} runs on {node}, the log wants no such instance there"
            ));
        }
        for missing in here.difference(&running) {
            out.push(format!(
                "instance {missing} is in the log on {node}, no container runs it"
            ));
        }
    }
    for (node, instances) in &wanted {
        if !known.contains(node) {
            out.push(format!("instances {instances:?} on unknown node {node}"));
        }
    }
    out
}

/// Where the API's answers about `svc` differ from the fresh fold `s`.
async fn read_model_disagrees(
    world: &World,
    svc: &crate::world::Svc,
    s: &ServiceState,
) -> Vec<String> {
    let mut out = Vec::new();
    let config = s.config.as_ref().expect("created");
    let shown = world.get(&format!("/v1/services/{}", svc.id)).await;
    let fields = [
        (
            "numInstances",
            shown["serviceDetails"]["numInstances"].clone(),
            serde_json::json!(config.num_instances),
        ),
        (
            "liveDeployId",
            shown["liveDeployId"].clone(),
            serde_json::json!(s.live.as_ref().map(ToString::to_string)),
        ),
        (
            "imagePath",
            shown["imagePath"].clone(),
            serde_json::json!(config.image),
        ),
    ];
    for (field, api, fold) in fields {
        if api != fold {
            out.push(format!(
                "{}: the API shows {field} {api}, the log {fold}",
                svc.name
            ));
        }
    }
    // Every deploy, newest first, as the API would render the fold's.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/services/{}/deploys?limit=100", svc.id);
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = world.get(&path).await;
        let items = page.as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        cursor = items
            .last()
            .and_then(|i| i["cursor"].as_str())
            .map(str::to_owned);
        listed.extend(items.into_iter().map(|i| i["deploy"].clone()));
    }
    let folded: Vec<serde_json::Value> = s
        .deploys
        .iter()
        .rev()
        .map(|d| serde_json::to_value(berth_api::views::DeployView::of(d)).expect("json"))
        .collect();
    if listed.len() != folded.len() {
        out.push(format!(
            "{}: the API lists {} deploys, the log has {}",
            svc.name,
            listed.len(),
            folded.len()
        ));
    }
    for (api, fold) in listed.iter().zip(&folded) {
        if api != fold {
            out.push(format!(
                "{}: the API shows deploy {api}, the log {fold}",
                svc.name
            ));
        }
    }
    out
}

/// The last `n` events of a service, one line each, for a failure message.
pub fn history(log: &Log, service: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = log
        .events()
        .filter(|e| matches!(&e.aggregate, AggregateId::Service(id) if id.to_string() == service))
        .map(|e| {
            let mut json = serde_json::to_string(&e.event).unwrap_or_default();
            json.truncate(160);
            format!("{} {:?} {json}", e.time.format("%H:%M:%S%.3f"), e.actor)
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Every event naming an instance or deploy that `disagreements` name,
/// one line each, for a failure message.
pub fn events_naming(log: &Log, disagreements: &[String]) -> Vec<String> {
    let ids: BTreeSet<&str> = disagreements
        .iter()
        .flat_map(|d| d.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
        .filter(|w| (w.starts_with("ins-") || w.starts_with("dep-")) && w.len() == 24)
        .collect();
    log.events()
        .filter_map(|e| {
            let json = serde_json::to_string(&e.event).unwrap_or_default();
            ids.iter()
                .any(|id| json.contains(id))
                .then(|| format!("{} {:?} {json}", e.time.format("%H:%M:%S%.3f"), e.actor))
        })
        .collect()
}

/// What became of each lost node's instances, one line per node.
pub fn lost_nodes(world: &World, log: &Log) -> Vec<String> {
    let mut out = Vec::new();
    for node in world.nodes() {
        let Some(id) = world.node_id(node).filter(|_| world.is_lost(node)) else {
            continue;
        };
        let (mut recorded, mut failed, mut moved) = (false, 0, 0);
        for e in log.events() {
            match &e.event {
                Event::NodeLost(_) => {
                    recorded |= matches!(&e.aggregate, AggregateId::Node(n) if n.to_string() == id);
                }
                Event::ServerFailed(f) if f.node.to_string() == id => failed += f.instances.len(),
                Event::InstanceRescheduled(r) if r.from_node.to_string() == id => moved += 1,
                _ => {}
            }
        }
        out.push(format!(
            "{node} lost for good: node_lost {}, {failed} instances reported failed there, {moved} replaced on another node",
            if recorded { "recorded" } else { "NOT recorded" }
        ));
    }
    out
}

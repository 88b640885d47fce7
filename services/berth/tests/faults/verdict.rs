//! Every recorded command classified against the log, Jepsen's way: an
//! acknowledged command either took effect exactly once (ok), or not at all
//! (lost), or more than once (duplicated), or the answer named something
//! else than what the command did (misattributed). Unanswered tries are
//! outcomes unknown: they may or may not have taken effect; the deploys
//! they made are counted, and there may be no more of those than tries.

use std::collections::BTreeMap;

use berth_schemas::model::DeployTrigger;
use berth_schemas::{Actor, Event};

use crate::model::Log;
use crate::workload::{Kind, Record};
use crate::world::World;

#[derive(Debug, Default)]
pub struct Tally {
    pub acked: usize,
    pub ok: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub misattributed: Vec<String>,
    pub refused: usize,
    /// Commands never answered yes within the client's patience.
    pub abandoned: usize,
    /// Tries that got no answer.
    pub unanswered: u32,
    /// Deploys in the log no answered command names, made over HTTP
    /// (unanswered tries that landed); first deploys are not counted.
    pub unknown_landed: usize,
    /// Unanswered or abandoned tries of deploys without an idempotency
    /// key: how many such deploys may have landed unacknowledged.
    pub unknown_budget: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
}

impl Tally {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.lost.iter().map(|l| format!("lost: {l}")));
        out.extend(self.duplicated.iter().map(|l| format!("duplicated: {l}")));
        out.extend(
            self.misattributed
                .iter()
                .map(|l| format!("misattributed: {l}")),
        );
        if self.unknown_landed > self.unknown_budget {
            out.push(format!(
                "{} deploys no answered command asked for, {} unanswered tries to explain them",
                self.unknown_landed, self.unknown_budget
            ));
        }
        out
    }
}

fn trigger_of(kind: Kind) -> Option<DeployTrigger> {
    match kind {
        Kind::ApiDeploy | Kind::BusDeploy => Some(DeployTrigger::Api),
        Kind::Hook => Some(DeployTrigger::DeployHook),
        Kind::Rollback => Some(DeployTrigger::Rollback),
        _ => None,
    }
}

pub fn tally(world: &World, log: &Log, records: &[Record]) -> Tally {
    let mut t = Tally::default();
    let mut named = std::collections::BTreeSet::new();
    // Bus deploys carry a request id: a retry may not make a second one,
    // so only one that was never answered may have landed unacknowledged.
    let mut bus_budget = 0;
    for r in records {
        t.unanswered += r.unanswered;
        if matches!(r.kind, Kind::ApiDeploy | Kind::Hook | Kind::Rollback) {
            t.unknown_budget += r.unanswered as usize + usize::from(r.acked.is_none());
        }
        if r.kind == Kind::BusDeploy && r.acked.is_none() {
            bus_budget += 1;
        }
        if r.refused.is_some() {
            t.refused += 1;
            continue;
        }
        if r.acked.is_none() {
            t.abandoned += 1;
            continue;
        }
        t.acked += 1;
        *t.by_kind.entry(r.kind.name()).or_default() += 1;
        let svc = &world.services[r.service];
        let what = format!("{} on {} ({:?})", r.kind.name(), svc.name, r.request);
        let before = (t.lost.len(), t.duplicated.len(), t.misattributed.len());
        // Idempotent commands: exactly one append with their key.
        if let Some(key) = r.log_key(svc) {
            let commits: Vec<_> = log.with_key(&key).collect();
            match commits.len() {
                0 => t.lost.push(format!("{what}: no append with key {key}")),
                1 => {
                    let events = &commits[0].events;
                    let right = match r.kind {
                        Kind::BusDeploy => events.iter().any(|e| {
                            matches!(&e.event, Event::DeployCreated(d)
                                if Some(d.deploy.as_str()) == r.deploy.as_deref())
                        }),
                        Kind::BusScale => events.iter().any(|e| {
                            matches!(&e.event, Event::InstanceCountChanged(c)
                                if Some(c.to) == r.num_instances)
                        }),
                        _ => events
                            .iter()
                            .any(|e| matches!(e.event, Event::RestartRequested(_))),
                    };
                    if !right {
                        t.misattributed.push(format!(
                            "{what}: answered {:?}, its append holds {:?}",
                            r.deploy,
                            events
                                .iter()
                                .map(|e| e.event.type_name())
                                .collect::<Vec<_>>()
                        ));
                    }
                }
                n => t
                    .duplicated
                    .push(format!("{what}: {n} appends with key {key}")),
            }
        }
        // Every answered deploy exists exactly once, made the way asked.
        if r.kind.makes_deploy() {
            let Some(d) = &r.deploy else {
                t.misattributed
                    .push(format!("{what}: answered without a deploy id"));
                continue;
            };
            named.insert(d.clone());
            match log.created(d) {
                0 => t.lost.push(format!("{what}: {d} is not in the log")),
                1 => {
                    let made = log.events().find_map(|e| match &e.event {
                        Event::DeployCreated(c) if c.deploy.as_str() == d => Some(c),
                        _ => None,
                    });
                    let made = made.expect("counted once");
                    let aggregate_ok = log
                        .services
                        .get(&svc.id)
                        .is_some_and(|s| s.deploy(&made.deploy).is_some());
                    if Some(made.trigger) != trigger_of(r.kind)
                        || made.rollback_of.as_ref().map(ToString::to_string) != r.rollback_of
                        || !aggregate_ok
                    {
                        t.misattributed.push(format!(
                            "{what}: {d} was made as {:?} (rollback of {:?})",
                            made.trigger, made.rollback_of
                        ));
                    }
                }
                n => t.duplicated.push(format!("{what}: {d} created {n} times")),
            }
        }
        if (t.lost.len(), t.duplicated.len(), t.misattributed.len()) == before {
            t.ok += 1;
        }
    }
    let mut bus_extra = Vec::new();
    for e in log.events() {
        let Event::DeployCreated(c) = &e.event else {
            continue;
        };
        if c.trigger == DeployTrigger::ServiceCreated || named.contains(c.deploy.as_str()) {
            continue;
        }
        if e.actor == Actor::Bus {
            bus_extra.push(c.deploy.to_string());
        } else {
            t.unknown_landed += 1;
        }
    }
    if bus_extra.len() > bus_budget {
        t.duplicated.push(format!(
            "bus deploys no answer named: {bus_extra:?} ({bus_budget} never answered)"
        ));
    }
    t
}

/// The last acknowledged scale of each service must be what its fold
/// wants (scales of a service are sent in order, by one lane).
pub fn scale_disagreements(world: &World, log: &Log, records: &[Record]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, svc) in world.services.iter().enumerate() {
        let scales: Vec<&Record> = records
            .iter()
            .filter(|r| r.service == i && matches!(r.kind, Kind::BusScale | Kind::ApiScale))
            .collect();
        // A scale never answered may land after a later one: no claim then.
        if scales
            .iter()
            .any(|r| r.acked.is_none() && r.refused.is_none())
        {
            continue;
        }
        let Some(last) = scales.iter().rev().find(|r| r.acked.is_some()) else {
            continue;
        };
        let now = log
            .services
            .get(&svc.id)
            .and_then(|s| s.config.as_ref())
            .map(|c| c.num_instances);
        if now != last.num_instances {
            out.push(format!(
                "{}: scaled last to {:?}, the log says {now:?}",
                svc.name, last.num_instances
            ));
        }
    }
    out
}

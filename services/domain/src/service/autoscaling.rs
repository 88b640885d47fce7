//! Autoscaling (Render's `PUT /services/{id}/autoscaling`): a web or
//! private service or a worker keeps its instance count between `min` and
//! `max`, sized to the instances' average use of their plan's CPU and
//! memory against the targets its criteria set.
//!
//! The rule is the one Kubernetes' horizontal autoscaler follows, which
//! Render's users know from it: with `n` instances measured using on
//! average `u` % of the plan and a target of `t` %, the service wants
//! `ceil(n × u / t)` instances (the largest over the criteria enabled),
//! unless `u / t` is within [`TOLERANCE`] of 1. More instances are added
//! at the first look that wants them; fewer only when every look of the
//! last [`Timings::scale_down_after`] wanted fewer (the most of them is
//! kept), so a short lull does not take instances a burst will need back.
//! Looks from before the count last changed, and from the
//! [`Timings::settle`] after it, are not counted: new instances start
//! cold, and old ones were carrying the load alone.
//!
//! The scheduler's autoscaler looks ([`desired`]) and asks
//! ([`Command::Autoscale`](super::Command::Autoscale)); the service
//! records the change (`autoscaling_started` with an
//! `instance_count_changed`) only if it was decided on the autoscaling
//! and the count it has now, so a copy of the scheduler looking at an
//! older state changes nothing. `autoscaling_ended` follows once that
//! many of the live deploy's instances are healthy.

use std::time::Duration;

use berth_schemas::events::{
    AutoscalingConfigChanged, AutoscalingEnded, AutoscalingStarted, InstanceCountChanged,
};
use berth_schemas::model::{AutoscalingConfig, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::deploys::config;
use super::state::{ServiceState, ServiceStatus};
use super::validate;
use crate::error::DomainError;

type Decision = Result<Vec<Event>, DomainError>;

/// How far from its target a criterion's use may be before the count
/// changes (a tenth either way, as Kubernetes').
pub const TOLERANCE: f64 = 0.1;

/// A service's autoscaling as its events left it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Its settings (`None`: never set, or removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AutoscalingConfig>,
    /// The change under way (from, to) until `autoscaling_ended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<(u32, u32)>,
    /// When its instance count last changed (by anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_changed_at: Option<DateTime<Utc>>,
}

impl Autoscaling {
    /// Its settings when they are on.
    pub fn enabled(&self) -> Option<&AutoscalingConfig> {
        self.config.as_ref().filter(|c| c.enabled)
    }
}

/// How long the autoscaler waits, after a change and before removing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Looks taken this soon after the count changed are not counted.
    pub settle: Duration,
    /// Instances are removed only when every look this long wanted fewer.
    pub scale_down_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            settle: Duration::from_secs(30),
            scale_down_after: Duration::from_secs(300),
        }
    }
}

/// One look at an autoscaled service's instances: how many were measured,
/// and the sum of their use in percent of their plan's CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub at: DateTime<Utc>,
    pub instances: u32,
    pub cpu_percent: f64,
    pub memory_percent: f64,
}

impl Reading {
    fn average(&self, sum: f64) -> f64 {
        sum / f64::from(self.instances.max(1))
    }
}

/// A change of count the autoscaler asks for, with what it saw: the
/// average use (percent) of each criterion enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub to: u32,
    pub cpu: Option<u32>,
    pub memory: Option<u32>,
}

/// The instances a reading wants by one criterion's `target` percent.
fn wanted(r: &Reading, sum: f64, target: u32, current: u32) -> u32 {
    let target = f64::from(target.max(1));
    let ratio = r.average(sum) / target;
    if (ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    // Float noise must not add an instance: 2 × 50 % / 50 % is 2.
    let n = (sum / target - 1e-9).ceil();
    n.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The instances a reading wants by every criterion enabled (the most).
fn wanted_by_all(c: &AutoscalingConfig, r: &Reading, current: u32) -> u32 {
    let mut want = None::<u32>;
    if c.criteria.cpu.enabled {
        want = Some(wanted(r, r.cpu_percent, c.criteria.cpu.percentage, current));
    }
    if c.criteria.memory.enabled {
        let m = wanted(r, r.memory_percent, c.criteria.memory.percentage, current);
        want = Some(want.map_or(m, |w| w.max(m)));
    }
    want.unwrap_or(current)
}

/// What the autoscaler asks of a service with autoscaling `c` and
/// `current` instances (its count last changed at `since`), given its
/// `readings` (oldest first): a change, or nothing.
pub fn desired(
    c: &AutoscalingConfig,
    current: u32,
    since: Option<DateTime<Utc>>,
    readings: &[Reading],
    now: DateTime<Utc>,
    t: &Timings,
) -> Option<Change> {
    if !c.enabled {
        return None;
    }
    let (min, max) = (c.min.max(1), c.max.max(c.min.max(1)));
    let clamp = |n: u32| n.clamp(min, max);
    let settled = since.map(|s| s + chrono::Duration::from_std(t.settle).unwrap_or_default());
    let counted: Vec<&Reading> = readings
        .iter()
        .filter(|r| r.instances > 0 && settled.is_none_or(|s| r.at >= s))
        .collect();
    let figures = |to: u32, r: Option<&Reading>| Change {
        to,
        cpu: r
            .filter(|_| c.criteria.cpu.enabled)
            .map(|r| r.average(r.cpu_percent).round() as u32),
        memory: r
            .filter(|_| c.criteria.memory.enabled)
            .map(|r| r.average(r.memory_percent).round() as u32),
    };
    if clamp(current) != current {
        return Some(figures(clamp(current), counted.last().copied()));
    }
    let latest = *counted.last()?;
    let up = clamp(wanted_by_all(c, latest, current));
    if up > current {
        return Some(figures(up, Some(latest)));
    }
    // Fewer only when every look of the whole window wanted fewer.
    let window = chrono::Duration::from_std(t.scale_down_after).unwrap_or_default();
    let from = now - window;
    if counted.first().is_none_or(|r| r.at > from) {
        return None;
    }
    let down = counted
        .iter()
        .filter(|r| r.at >= from)
        .map(|r| clamp(wanted_by_all(c, r, current)))
        .max()?;
    (down < current).then(|| figures(down, Some(latest)))
}

/// Whether `c` is settings a service of `state` may have.
fn check(
    state: &ServiceState,
    c: &AutoscalingConfig,
    max_instances: u32,
) -> Result<(), DomainError> {
    let cfg = config(state)?;
    check_for(cfg.service_type, cfg.disk.is_some(), c, max_instances)
}

/// Whether `c` is settings a service of `service_type` (with a disk or
/// not) may have.
pub(super) fn check_for(
    service_type: ServiceType,
    has_disk: bool,
    c: &AutoscalingConfig,
    max_instances: u32,
) -> Result<(), DomainError> {
    if service_type == ServiceType::CronJob {
        return Err(DomainError::invalid(
            "autoscaling",
            "cron jobs have no instances to scale",
        ));
    }
    if has_disk {
        return Err(DomainError::invalid(
            "autoscaling",
            "a service with a disk runs one instance, so it cannot be autoscaled",
        ));
    }
    if c.min < 1 {
        return Err(DomainError::invalid("min", "must be at least 1"));
    }
    validate::num_instances(c.max, max_instances)
        .map_err(|_| DomainError::invalid("max", format!("must be at most {max_instances}")))?;
    if c.max < c.min {
        return Err(DomainError::invalid(
            "max",
            format!("must be at least min ({})", c.min),
        ));
    }
    let criteria = [
        ("criteria.cpu.percentage", &c.criteria.cpu),
        ("criteria.memory.percentage", &c.criteria.memory),
    ];
    for (field, k) in criteria {
        if k.enabled && !(1..=100).contains(&k.percentage) {
            return Err(DomainError::invalid(field, "must be between 1 and 100"));
        }
    }
    if c.enabled && !c.criteria.cpu.enabled && !c.criteria.memory.enabled {
        return Err(DomainError::invalid(
            "criteria",
            "enable cpu or memory (or both): what the service is scaled on",
        ));
    }
    Ok(())
}

/// Sets (`Some`) or removes (`None`) the service's autoscaling. Turned on
/// with a count outside `min..=max`, an active service is scaled into it
/// at once.
pub(super) fn set(
    state: &ServiceState,
    to: Option<AutoscalingConfig>,
    max_instances: u32,
) -> Decision {
    let cfg = config(state)?;
    let from = state.autoscaling.config.clone();
    let Some(c) = to else {
        return Ok(match from {
            None => vec![],
            Some(from) => vec![AutoscalingConfigChanged {
                from: Some(from),
                to: None,
            }
            .into()],
        });
    };
    check(state, &c, max_instances)?;
    if from.as_ref() == Some(&c) {
        return Ok(vec![]);
    }
    let mut out: Vec<Event> = vec![AutoscalingConfigChanged {
        from,
        to: Some(c.clone()),
    }
    .into()];
    let n = cfg.num_instances;
    let into = n.clamp(c.min, c.max);
    if c.enabled && state.status == ServiceStatus::Active && into != n {
        out.push(InstanceCountChanged { from: n, to: into }.into());
    }
    Ok(out)
}

/// The autoscaler asks for `change` from `from` instances, decided on the
/// autoscaling `on`: recorded only when that is still the service's
/// autoscaling (on) and count, else nothing.
pub(super) fn autoscale(
    state: &ServiceState,
    from: u32,
    on: &AutoscalingConfig,
    change: Change,
) -> Decision {
    let cfg = config(state)?;
    let current = state.autoscaling.enabled();
    if current != Some(on) || state.status != ServiceStatus::Active || cfg.num_instances != from {
        return Ok(vec![]);
    }
    if change.to == from || change.to < on.min || change.to > on.max {
        return Err(DomainError::invalid(
            "toInstances",
            format!(
                "must differ from {from} and be between {} and {}",
                on.min, on.max
            ),
        ));
    }
    let criteria = &on.criteria;
    Ok(vec![
        AutoscalingStarted {
            from_instances: from,
            to_instances: change.to,
            current_cpu: change.cpu.filter(|_| criteria.cpu.enabled),
            target_cpu: criteria.cpu.enabled.then_some(criteria.cpu.percentage),
            current_memory: change.memory.filter(|_| criteria.memory.enabled),
            target_memory: criteria
                .memory
                .enabled
                .then_some(criteria.memory.percentage),
        }
        .into(),
        InstanceCountChanged {
            from,
            to: change.to,
        }
        .into(),
    ])
}

/// Whether the change under way is done: `healthy` of the live deploy's
/// instances are.
pub fn reached(state: &ServiceState) -> Option<(u32, u32)> {
    let (from, to) = state.autoscaling.scaling?;
    let live = state.live.as_ref()?;
    let healthy = state.instances.healthy_count(live);
    (healthy == to as usize).then_some((from, to))
}

/// Records that the change to `to` instances is done (nothing when no
/// such change is under way, or it is not done).
pub(super) fn ended(state: &ServiceState, to: u32) -> Decision {
    Ok(match reached(state) {
        Some((from, t)) if t == to => vec![AutoscalingEnded {
            from_instances: from,
            to_instances: to,
        }
        .into()],
        _ => vec![],
    })
}

/// Applies the autoscaling's events, and when the count last changed.
pub(super) fn apply(s: &mut ServiceState, event: &Event, time: Option<DateTime<Utc>>) {
    let a = &mut s.autoscaling;
    match event {
        Event::AutoscalingConfigChanged(e) => {
            a.config = e.to.clone();
            if a.enabled().is_none() {
                a.scaling = None;
            }
        }
        Event::AutoscalingStarted(e) => a.scaling = Some((e.from_instances, e.to_instances)),
        Event::AutoscalingEnded(_) => a.scaling = None,
        Event::InstanceCountChanged(_) if time.is_some() => a.count_changed_at = time,
        Event::ServiceSuspended(_) => a.scaling = None,
        _ => {}
    }
}

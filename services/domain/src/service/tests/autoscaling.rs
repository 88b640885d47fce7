//! Autoscaling: what settings a service may have, how a change of count
//! is recorded (only on the settings and count it was decided on), and the
//! rule that sizes the count from the instances' use.

use std::time::Duration;

use berth_schemas::events::{
    AutoscalingConfigChanged, AutoscalingEnded, AutoscalingStarted, InstanceCountChanged,
    InstanceHealthy, InstanceScheduled, InstanceStarted,
};
use berth_schemas::ids::{DeployId, InstanceId};
use berth_schemas::model::{AutoscalingConfig, ServiceType};
use berth_schemas::Event;
use chrono::{DateTime, TimeZone, Utc};

use super::{digest, node, Scenario};
use crate::error::ErrorKind;
use crate::service::autoscaling::{desired, Change, Reading, Timings};
use crate::service::Command;

fn config(min: u32, max: u32, cpu: Option<u32>, memory: Option<u32>) -> AutoscalingConfig {
    AutoscalingConfig::on(min, max, cpu, memory)
}

fn count(s: &Scenario) -> u32 {
    s.state.config.as_ref().unwrap().num_instances
}

#[test]
fn settings_are_refused_where_they_cannot_apply_or_do_not_add_up() {
    let live = Scenario::live_web(&DeployId::generate());
    let refused = |s: &Scenario, c: AutoscalingConfig| s.refused(Command::SetAutoscaling(Some(c)));
    assert_eq!(
        refused(&live, config(0, 3, Some(50), None)),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(&live, config(3, 2, Some(50), None)),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(&live, config(1, 101, Some(50), None)),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(&live, config(1, 3, Some(0), None)),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(&live, config(1, 3, None, Some(101))),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(&live, config(1, 3, None, None)),
        ErrorKind::Invalid,
        "on, with nothing to scale on"
    );
    let cron = Scenario::created(ServiceType::CronJob, &DeployId::generate());
    assert_eq!(
        refused(&cron, config(1, 3, Some(50), None)),
        ErrorKind::Invalid
    );
    let mut disk = Scenario::live_web(&DeployId::generate());
    disk.run(Command::AddDisk {
        disk: berth_schemas::model::Disk {
            id: berth_schemas::ids::DiskId::generate(),
            name: "data".into(),
            mount_path: "/var/data".into(),
            size_gb: 1,
        },
        deploy: DeployId::generate(),
    });
    assert_eq!(
        refused(&disk, config(1, 3, Some(50), None)),
        ErrorKind::Invalid
    );
    // Off, a criterion need not be on.
    let mut off = config(1, 3, None, None);
    off.enabled = false;
    assert!(live.when(Command::SetAutoscaling(Some(off))).is_ok());
}

#[test]
fn turned_on_the_count_moves_into_range_and_is_no_longer_set_by_hand() {
    let mut s = Scenario::live_web(&DeployId::generate());
    let c = config(2, 4, Some(60), None);
    assert_eq!(
        s.run(Command::SetAutoscaling(Some(c.clone()))),
        vec![
            AutoscalingConfigChanged {
                from: None,
                to: Some(c.clone())
            }
            .into(),
            InstanceCountChanged { from: 1, to: 2 }.into()
        ]
    );
    assert_eq!(count(&s), 2);
    assert_eq!(s.state.autoscaling.enabled(), Some(&c));
    assert_eq!(
        s.run(Command::SetAutoscaling(Some(c.clone()))),
        vec![],
        "the same again"
    );
    assert_eq!(
        s.refused(Command::Scale { num_instances: 3 }),
        ErrorKind::Conflict,
        "scaling by hand while autoscaled"
    );
    assert_eq!(
        s.refused(Command::AddDisk {
            disk: berth_schemas::model::Disk {
                id: berth_schemas::ids::DiskId::generate(),
                name: "data".into(),
                mount_path: "/var/data".into(),
                size_gb: 1,
            },
            deploy: DeployId::generate(),
        }),
        ErrorKind::Invalid
    );
    // Removed: the count stays, and is set by hand again.
    assert_eq!(
        s.run(Command::SetAutoscaling(None)),
        vec![AutoscalingConfigChanged {
            from: Some(c),
            to: None
        }
        .into()]
    );
    assert_eq!(count(&s), 2);
    assert_eq!(
        s.run(Command::SetAutoscaling(None)),
        vec![],
        "nothing to remove"
    );
    assert_eq!(
        s.run(Command::Scale { num_instances: 3 }),
        vec![InstanceCountChanged { from: 2, to: 3 }.into()]
    );
}

#[test]
fn a_change_is_recorded_only_on_the_settings_and_count_it_was_decided_on() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let c = config(1, 3, Some(50), Some(70));
    s.run(Command::SetAutoscaling(Some(c.clone())));
    let up = Change {
        to: 3,
        cpu: Some(140),
        memory: Some(20),
    };
    let ask = |from: u32, on: &AutoscalingConfig, change: Change| Command::Autoscale {
        from,
        on: on.clone(),
        change,
    };
    // Decided on another count, or other settings: nothing.
    assert_eq!(s.run(ask(2, &c, up)), vec![]);
    assert_eq!(s.run(ask(1, &config(1, 3, Some(40), Some(70)), up)), vec![]);
    // Beyond the range: a rule broken, refused.
    assert_eq!(
        s.refused(ask(1, &c, Change { to: 4, ..up })),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.run(ask(1, &c, up)),
        vec![
            AutoscalingStarted {
                from_instances: 1,
                to_instances: 3,
                current_cpu: Some(140),
                target_cpu: Some(50),
                current_memory: Some(20),
                target_memory: Some(70),
            }
            .into(),
            InstanceCountChanged { from: 1, to: 3 }.into()
        ]
    );
    assert_eq!(count(&s), 3);
    assert_eq!(s.state.autoscaling.scaling, Some((1, 3)));
    // Ended only once three of the live deploy's instances are healthy.
    assert_eq!(s.run(Command::RecordAutoscalingEnded { to: 3 }), vec![]);
    for _ in 0..3 {
        let i = InstanceId::generate();
        s.append(&[
            Event::InstanceScheduled(InstanceScheduled {
                instance: i.clone(),
                deploy: d.clone(),
                node: node(),
                digest: digest(1),
            }),
            Event::InstanceStarted(InstanceStarted {
                instance: i.clone(),
                node: node(),
                digest: digest(1),
                addr: Some("10.0.0.2:10000".into()),
                published: None,
            }),
            Event::InstanceHealthy(InstanceHealthy { instance: i }),
        ]);
    }
    assert_eq!(s.run(Command::RecordAutoscalingEnded { to: 2 }), vec![]);
    assert_eq!(
        s.run(Command::RecordAutoscalingEnded { to: 3 }),
        vec![AutoscalingEnded {
            from_instances: 1,
            to_instances: 3
        }
        .into()]
    );
    assert_eq!(s.state.autoscaling.scaling, None);
    // Off: the autoscaler's decisions made on it change nothing.
    let mut off = c.clone();
    off.enabled = false;
    s.run(Command::SetAutoscaling(Some(off)));
    assert_eq!(s.run(ask(3, &c, Change { to: 1, ..up })), vec![]);
    assert_eq!(count(&s), 3);
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

/// `n` instances using `cpu` and `memory` percent each, at `secs`.
fn look(secs: i64, n: u32, cpu: f64, memory: f64) -> Reading {
    Reading {
        at: at(secs),
        instances: n,
        cpu_percent: cpu * f64::from(n),
        memory_percent: memory * f64::from(n),
    }
}

const T: Timings = Timings {
    settle: Duration::from_secs(30),
    scale_down_after: Duration::from_secs(300),
};

#[test]
fn more_instances_at_the_first_look_that_wants_them_within_the_range() {
    let c = config(1, 5, Some(50), None);
    // One instance at 120 % of a 50 % target wants three.
    let r = [look(100, 1, 120.0, 10.0)];
    assert_eq!(
        desired(&c, 1, None, &r, at(100), &T),
        Some(Change {
            to: 3,
            cpu: Some(120),
            memory: None
        })
    );
    // Never beyond max.
    let r = [look(100, 2, 400.0, 10.0)];
    assert_eq!(desired(&c, 2, None, &r, at(100), &T).map(|c| c.to), Some(5));
    // Within a tenth of the target: as it is.
    let r = [look(100, 2, 54.0, 10.0)];
    assert_eq!(desired(&c, 2, None, &r, at(100), &T), None);
    // Exactly twice the target on two instances: four, not five.
    let r = [look(100, 2, 100.0, 10.0)];
    assert_eq!(desired(&c, 2, None, &r, at(100), &T).map(|c| c.to), Some(4));
    // No look yet: nothing.
    assert_eq!(desired(&c, 2, None, &[], at(100), &T), None);
    // Off: nothing, whatever the use.
    let mut off = c.clone();
    off.enabled = false;
    let r = [look(100, 1, 400.0, 10.0)];
    assert_eq!(desired(&off, 1, None, &r, at(100), &T), None);
}

#[test]
fn memory_counts_too_and_the_criterion_that_wants_more_wins() {
    let c = config(1, 10, Some(50), Some(50));
    // CPU wants 2 (2 × 45 / 50 → within tolerance: 2), memory wants 4.
    let r = [look(100, 2, 45.0, 100.0)];
    assert_eq!(
        desired(&c, 2, None, &r, at(100), &T),
        Some(Change {
            to: 4,
            cpu: Some(45),
            memory: Some(100)
        })
    );
    let memory_only = config(1, 10, None, Some(50));
    let r = [look(100, 2, 400.0, 50.0)];
    assert_eq!(
        desired(&memory_only, 2, None, &r, at(100), &T),
        None,
        "CPU is not a criterion"
    );
}

#[test]
fn fewer_instances_only_when_every_look_of_the_window_wanted_fewer() {
    let c = config(1, 5, Some(50), None);
    // Four instances idling at 10 % for five minutes and more: one (they
    // want ceil(4 × 10 / 50) = 1).
    let quiet: Vec<Reading> = (0..=31).map(|i| look(i * 10, 4, 10.0, 5.0)).collect();
    assert_eq!(
        desired(&c, 4, None, &quiet, at(310), &T).map(|c| c.to),
        Some(1)
    );
    // Looks covering less than the window: not yet.
    let short: Vec<Reading> = (0..20).map(|i| look(i * 10, 4, 10.0, 5.0)).collect();
    assert_eq!(desired(&c, 4, None, &short, at(190), &T), None);
    // One busier look within the window keeps what it wanted.
    let mut burst = quiet.clone();
    burst[25] = look(250, 4, 30.0, 5.0);
    assert_eq!(
        desired(&c, 4, None, &burst, at(310), &T).map(|c| c.to),
        Some(3),
        "ceil(4 × 30 / 50) = 3 at the busiest look"
    );
    // Never below min.
    let floor = config(2, 5, Some(50), None);
    assert_eq!(
        desired(&floor, 4, None, &quiet, at(310), &T).map(|c| c.to),
        Some(2)
    );
}

#[test]
fn looks_before_the_count_changed_and_settled_are_not_counted() {
    let c = config(1, 5, Some(50), None);
    // Busy before a change at 100; after it, nothing settled yet.
    let r = [look(90, 1, 200.0, 5.0), look(120, 2, 200.0, 5.0)];
    assert_eq!(desired(&c, 2, Some(at(100)), &r, at(120), &T), None);
    // Settled (30 s after): counted.
    let r = [look(90, 1, 200.0, 5.0), look(130, 2, 200.0, 5.0)];
    assert_eq!(
        desired(&c, 2, Some(at(100)), &r, at(130), &T).map(|c| c.to),
        Some(5)
    );
    // A quiet window that began before the change does not scale down.
    let quiet: Vec<Reading> = (0..=31).map(|i| look(i * 10, 4, 10.0, 5.0)).collect();
    assert_eq!(desired(&c, 4, Some(at(200)), &quiet, at(310), &T), None);
}

#[test]
fn a_count_outside_the_range_is_moved_into_it_at_once() {
    let c = config(3, 5, Some(50), None);
    assert_eq!(desired(&c, 1, None, &[], at(0), &T).map(|c| c.to), Some(3));
    assert_eq!(desired(&c, 9, None, &[], at(0), &T).map(|c| c.to), Some(5));
}

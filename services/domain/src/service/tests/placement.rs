//! Placement decisions: instances of the running or live digest only, moves
//! off lost nodes, lost nodes' instances marked and let go, repeats no-ops.

use berth_schemas::events::{
    InstanceRescheduled, InstanceScheduled, InstanceStarted, PlacementBlocked,
};
use berth_schemas::ids::{DeployId, InstanceId, NodeId};
use berth_schemas::model::DeployTrigger;
use berth_schemas::Event;

use super::{digest, node, Command, Scenario};
use crate::error::ErrorKind;
use crate::service::InstancePhase;

fn other_node() -> NodeId {
    "nod-bbbbbbbbbbbbbbbbbbbb".parse().unwrap()
}

fn sched(i: &InstanceId, d: &DeployId, n: NodeId, dg: &str) -> InstanceScheduled {
    InstanceScheduled {
        instance: i.clone(),
        deploy: d.clone(),
        node: n,
        digest: dg.to_owned(),
    }
}

fn place(s: Vec<InstanceScheduled>) -> Command {
    Command::Place {
        scheduled: s,
        rescheduled: vec![],
    }
}

/// Places `a` and `b` of `d` on [`node`]; only `a` starts.
fn place_two_start_first(s: &mut Scenario, d: &DeployId, a: &InstanceId, b: &InstanceId) {
    s.run(place(vec![
        sched(a, d, node(), &digest(1)),
        sched(b, d, node(), &digest(1)),
    ]));
    s.append(&[Event::InstanceStarted(InstanceStarted {
        instance: a.clone(),
        node: node(),
        digest: digest(1),
        addr: Some("127.0.0.1:1".into()),
        published: None,
    })]);
}

#[test]
fn instances_of_the_live_digest_are_placed_once() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let i = InstanceId::generate();
    let out = s.run(place(vec![sched(&i, &d, node(), &digest(1))]));
    assert_eq!(out.len(), 1);
    assert!(s.state.instances.get(&i).is_some());
    // The same decision again appends nothing.
    assert!(s
        .run(place(vec![sched(&i, &d, node(), &digest(1))]))
        .is_empty());
    // Another digest, or a deploy that is neither running nor live: refused.
    let j = InstanceId::generate();
    assert_eq!(
        s.refused(place(vec![sched(&j, &d, node(), &digest(2))])),
        ErrorKind::Conflict
    );
    assert_eq!(
        s.refused(place(vec![sched(
            &j,
            &DeployId::generate(),
            node(),
            &digest(1)
        )])),
        ErrorKind::NotFound
    );
}

#[test]
fn a_lost_node_marks_instances_lost_once_then_they_move_or_are_released() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    place_two_start_first(&mut s, &d, &a, &b);
    // Releasing a started instance whose node is up is the node's business.
    assert_eq!(
        s.refused(Command::Release {
            instances: vec![a.clone()]
        }),
        ErrorKind::Conflict
    );
    // Not recorded lost yet: it stays where it is.
    let early = InstanceRescheduled {
        instance: a.clone(),
        replacement: InstanceId::generate(),
        from_node: node(),
        to_node: other_node(),
    };
    assert_eq!(
        s.refused(Command::Place {
            scheduled: vec![],
            rescheduled: vec![early],
        }),
        ErrorKind::Conflict
    );
    let failed = s.run(Command::RecordServerFailed { node: node() });
    assert!(matches!(&failed[..], [Event::ServerFailed(f)] if f.instances.len() == 2));
    assert!(s
        .run(Command::RecordServerFailed { node: node() })
        .is_empty());
    assert_eq!(
        s.state.instances.get(&a).unwrap().phase,
        InstancePhase::Lost
    );
    let r = InstanceId::generate();
    let moved = InstanceRescheduled {
        instance: a.clone(),
        replacement: r.clone(),
        from_node: node(),
        to_node: other_node(),
    };
    s.run(Command::Place {
        scheduled: vec![],
        rescheduled: vec![moved.clone()],
    });
    assert_eq!(s.state.instances.get(&r).unwrap().node, other_node());
    assert!(s
        .run(Command::Place {
            scheduled: vec![],
            rescheduled: vec![moved],
        })
        .is_empty());
    let released = s.run(Command::Release {
        instances: vec![b.clone()],
    });
    assert_eq!(released.len(), 1);
    assert!(s.state.instances.get(&b).is_none());
    assert_eq!(s.state.instances.len(), 1);
}

#[test]
fn nothing_is_placed_on_a_suspended_service() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    s.run(Command::Suspend);
    assert_eq!(
        s.refused(place(vec![sched(
            &InstanceId::generate(),
            &d,
            node(),
            &digest(1)
        )])),
        ErrorKind::Conflict
    );
}

#[test]
fn a_never_started_instance_may_be_released() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let a = InstanceId::generate();
    s.run(place(vec![sched(&a, &d, node(), &digest(1))]));
    let out = s.run(Command::Release {
        instances: vec![a.clone()],
    });
    assert_eq!(out.len(), 1);
    assert!(s.state.instances.is_empty());
    // Gone already: a repeat appends nothing.
    assert!(s.run(Command::Release { instances: vec![a] }).is_empty());
}

#[test]
fn only_started_instances_drain_and_only_once() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    place_two_start_first(&mut s, &d, &a, &b);
    // `b` never started: nothing to take out of routing.
    let out = s.run(Command::Drain {
        instances: vec![a.clone(), b.clone(), InstanceId::generate()],
    });
    assert!(matches!(&out[..], [Event::InstanceDraining(e)] if e.instance == a));
    assert!(s.state.instances.get(&a).unwrap().draining_since.is_some());
    assert!(s.state.instances.get(&b).unwrap().draining_since.is_none());
    assert!(s.run(Command::Drain { instances: vec![a] }).is_empty());
}

#[test]
fn a_deleted_services_instances_are_still_drained_and_let_go() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    place_two_start_first(&mut s, &d, &a, &b);
    s.run(Command::Delete);
    // Everything else about it is gone...
    assert_eq!(s.refused(Command::Restart), ErrorKind::NotFound);
    // ...but its instances must still stop, or they hold their node's room
    // for good: the running one leaves routing first, the one that never
    // started is let go.
    let out = s.run(Command::Drain {
        instances: vec![a.clone()],
    });
    assert!(matches!(&out[..], [Event::InstanceDraining(e)] if e.instance == a));
    let out = s.run(Command::Release {
        instances: vec![b.clone()],
    });
    assert!(matches!(&out[..], [Event::InstanceStopped(e)] if e.instance == b));
    assert_eq!(
        s.state.instances.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&a]
    );
}

fn blocked(d: &DeployId, unplaced: u32) -> PlacementBlocked {
    PlacementBlocked {
        deploy: d.clone(),
        unplaced,
        cpu_millis: 500,
        memory_mib: 512,
        node: Some(node()),
        free_cpu_millis: 200,
        free_memory_mib: 300,
        reason: format!(
            "no node has room: needs 0.5 CPU / 512 MiB, largest free 0.2 CPU / 300 MiB on {}",
            node()
        ),
    }
}

#[test]
fn a_shortfall_is_recorded_once_until_room_is_found_or_it_changes() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let out = s.run(Command::RecordPlacementBlocked(blocked(&d, 2)));
    assert!(matches!(&out[..], [Event::PlacementBlocked(b)] if b.unplaced == 2));
    // The retry finds the same shortfall: nothing new to say.
    assert!(s
        .run(Command::RecordPlacementBlocked(blocked(&d, 2)))
        .is_empty());
    // One instance found room: what is left is news.
    s.run(place(vec![sched(
        &InstanceId::generate(),
        &d,
        node(),
        &digest(1),
    )]));
    assert!(s.deploy(&d).placement_blocked.is_none());
    assert_eq!(
        s.run(Command::RecordPlacementBlocked(blocked(&d, 1))).len(),
        1
    );
    assert_eq!(
        s.deploy(&d).placement_blocked.as_deref(),
        Some(&blocked(&d, 1))
    );
    // About a deploy that has ended (a stale plan): nothing.
    let (next, _) = s.request(DeployTrigger::Api);
    s.go_live(&next, &digest(2));
    assert!(s
        .run(Command::RecordPlacementBlocked(blocked(&d, 3)))
        .is_empty());
    assert_eq!(
        s.refused(Command::RecordPlacementBlocked(blocked(
            &DeployId::generate(),
            1
        ))),
        ErrorKind::NotFound
    );
}

#[test]
fn a_started_instance_records_where_it_is_reached() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    place_two_start_first(&mut s, &d, &a, &b);
    let at = |i: &InstanceId| s.state.instances.get(i).and_then(|i| i.addr.clone());
    assert_eq!(at(&a).as_deref(), Some("127.0.0.1:1"));
    assert_eq!(at(&b), None, "not started: no address yet");
}

#[test]
fn a_start_recorded_after_the_instance_was_found_healthy_keeps_it_healthy() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    place_two_start_first(&mut s, &d, &a, &b);
    // `b`'s node was killed before it recorded the start; its next
    // process probed the adopted instance (healthy), then recorded the
    // start when the work item came again.
    s.append(&[Event::InstanceHealthy(
        berth_schemas::events::InstanceHealthy {
            instance: b.clone(),
        },
    )]);
    let late = |addr: &str| {
        Event::InstanceStarted(InstanceStarted {
            instance: b.clone(),
            node: node(),
            digest: digest(1),
            addr: Some(addr.into()),
            published: None,
        })
    };
    s.append(&[late("127.0.0.1:2")]);
    let i = s.state.instances.get(&b).unwrap();
    assert_eq!(i.phase, InstancePhase::Healthy);
    assert_eq!(i.addr.as_deref(), Some("127.0.0.1:2"));
    // A first start recorded in order still makes it running.
    assert_eq!(
        s.state.instances.get(&a).unwrap().phase,
        InstancePhase::Running
    );
}

/// A private instance is reached at its own address: once its port is
/// found elsewhere than expected, its address says the port found, and
/// the service serves (to its owner's instances) where its healthy live
/// instances do. A web instance's published address stays as it is.
#[test]
fn a_private_instance_found_on_another_port_is_reached_there() {
    use berth_schemas::events::{InstanceHealthy, InstancePortDetected};
    use berth_schemas::model::ServiceType;
    let started = |i: &InstanceId, addr: &str| {
        Event::InstanceStarted(InstanceStarted {
            instance: i.clone(),
            node: node(),
            digest: digest(1),
            addr: Some(addr.into()),
            published: None,
        })
    };
    let detected = |i: &InstanceId| {
        Event::InstancePortDetected(InstancePortDetected {
            instance: i.clone(),
            port: 5432,
            expected: 10000,
        })
    };
    let healthy = |i: &InstanceId| {
        Event::InstanceHealthy(InstanceHealthy {
            instance: i.clone(),
        })
    };
    for (kind, addr, after) in [
        (
            ServiceType::PrivateService,
            "10.1.0.2:10000",
            "10.1.0.2:5432",
        ),
        (
            ServiceType::WebService,
            "127.0.0.1:20001",
            "127.0.0.1:20001",
        ),
    ] {
        let d = DeployId::generate();
        let mut s = super::Scenario::created(kind, &d);
        s.go_live(&d, &digest(1));
        let i = InstanceId::generate();
        s.run(place(vec![sched(&i, &d, node(), &digest(1))]));
        s.append(&[started(&i, addr)]);
        assert_eq!(s.state.serving_port(), None, "not healthy yet");
        s.append(&[healthy(&i)]);
        let port = |a: &str| a.rsplit_once(':').unwrap().1.parse::<u16>().ok();
        assert_eq!(s.state.serving_port(), port(addr));
        s.append(&[detected(&i)]);
        let now = s.state.instances.get(&i).unwrap();
        assert_eq!(now.addr.as_deref(), Some(after), "{kind:?}");
        assert_eq!(s.state.serving_port(), port(after), "{kind:?}");
    }
}

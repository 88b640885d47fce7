//! A node keeps what its instances write from filling its disk: with the
//! instances' files on a small tmpfs, a worker writing without bound is
//! killed once the free space falls below the node's reserve, the kill is
//! in the service's log as `instance_exited` with what it wrote (and its
//! logs say why), and it starts again from the image's files; one
//! writing past the node's per-instance limit is killed the same way.

use std::time::Duration;

use berth_schemas::commands::NodeRunSpec;
use berth_schemas::events::InstanceExited;
use berth_schemas::ids::{InstanceId, NodeId};
use berth_schemas::model::ServiceType;
use berth_schemas::{Envelope, Event};
use berth_tests::agent::collect_logs;
use berth_tests::node::World;
use berth_tests::tmpfs::{Tmpfs, WRITER};

use crate::support::{self, count_of, fast_checks, run, service, spec, start_node_opts, stop};

/// The `instance_exited` fact of `instance`.
fn exit_of(events: &[Envelope], instance: &InstanceId) -> InstanceExited {
    events
        .iter()
        .find_map(|e| match &e.event {
            Event::InstanceExited(x) if x.instance == *instance => Some(x.clone()),
            _ => None,
        })
        .unwrap()
}

/// Waits for `s`'s logs to say `said`, then stops it on `node`.
async fn said_then_stopped(
    w: &World,
    node: &NodeId,
    s: &NodeRunSpec,
    logs: &mut async_nats::Subscriber,
    said: &str,
) {
    let lines = collect_logs(logs, Duration::from_secs(10), |l| l.line.starts_with(said)).await;
    assert!(
        support::lines_of(&lines, &s.instance)
            .iter()
            .any(|l| l.starts_with(said)),
        "{lines:?}"
    );
    stop(w, node, &s.service, &s.instance).await;
    w.wait_events(&s.service, Duration::from_secs(30), |ev| {
        count_of(ev, &s.instance, "instance_stopped") == 1
    })
    .await;
}

#[tokio::test]
async fn a_worker_filling_the_disk_is_killed_and_started_again() {
    let w = World::start().await;
    // Dropped before the world: no instance is left on it by then.
    let disk = Tmpfs::mount(&w.node_dir().join("agent").join("instances"), 96).unwrap();
    let mut opts = support::options();
    opts.min_free_disk = 16 << 20;
    let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
    let (worker, deploy) = service(&w, ServiceType::BackgroundWorker, None).await;
    let s = spec(&w, &worker, &deploy, WRITER, None);
    let mut logs = w.subscribe_logs(&worker).await;
    run(&w, &node.id, &s).await;
    let events = w
        .wait_events(&worker, Duration::from_secs(60), |ev| {
            count_of(ev, &s.instance, "instance_exited") >= 1
                && count_of(ev, &s.instance, "server_restarted") >= 1
        })
        .await;
    let exit = exit_of(&events, &s.instance);
    let mib = exit.disk_written_mib.expect("killed for what it wrote");
    assert!((60..=96).contains(&mib), "{mib} MiB written");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    said_then_stopped(
        &w,
        &node.id,
        &s,
        &mut logs,
        "==> Killed for filling the node's disk: it had written",
    )
    .await;
    node.stop().await;
    drop(disk);
}

/// With `BERTH_NODE_INSTANCE_DISK_MIB`, a worker writing past the limit is
/// killed whatever the node's free space (measured every 10 s), and its
/// timeline and logs say it went over the limit.
#[tokio::test]
async fn a_worker_writing_past_the_nodes_limit_is_killed_saying_so() {
    let w = World::start().await;
    let mut opts = support::options();
    opts.instance_disk_limit = 4 << 20;
    let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
    let (worker, deploy) = service(&w, ServiceType::BackgroundWorker, None).await;
    let s = spec(
        &w,
        &worker,
        &deploy,
        "sh -c 'dd if=/dev/zero of=/big bs=1M count=16 2>/dev/null; sleep 600'",
        None,
    );
    let mut logs = w.subscribe_logs(&worker).await;
    run(&w, &node.id, &s).await;
    let events = w
        .wait_events(&worker, Duration::from_secs(60), |ev| {
            count_of(ev, &s.instance, "instance_exited") >= 1
        })
        .await;
    let exit = exit_of(&events, &s.instance);
    assert_eq!(exit.disk_limit_mib, Some(4), "{exit:?}");
    assert!(exit.disk_written_mib.is_some_and(|m| m >= 16), "{exit:?}");
    said_then_stopped(
        &w,
        &node.id,
        &s,
        &mut logs,
        "==> Killed for writing more than an instance may here: it had written",
    )
    .await;
    node.stop().await;
}

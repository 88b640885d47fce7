//! A node keeps what its instances write from filling its disk: with the
//! instances' files on a small tmpfs, a worker writing without bound is
//! killed once the free space falls below the node's reserve, the kill is
//! in the service's log as `instance_exited` with what it wrote (and its
//! logs say why), and it starts again from the image's files.

use std::time::Duration;

use berth_schemas::model::ServiceType;
use berth_schemas::Event;
use berth_tests::agent::collect_logs;
use berth_tests::node::World;
use berth_tests::tmpfs::{Tmpfs, WRITER};

use crate::support::{self, count_of, fast_checks, run, service, spec, start_node_opts, stop};

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
    let exit = events
        .iter()
        .find_map(|e| match &e.event {
            Event::InstanceExited(x) if x.instance == s.instance => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    let mib = exit.disk_written_mib.expect("killed for what it wrote");
    assert!((60..=96).contains(&mib), "{mib} MiB written");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    let said = "==> Killed for filling the node's disk: it had written";
    let lines = collect_logs(&mut logs, Duration::from_secs(10), |l| {
        l.line.starts_with(said)
    })
    .await;
    assert!(
        support::lines_of(&lines, &s.instance)
            .iter()
            .any(|l| l.starts_with(said)),
        "{lines:?}"
    );
    stop(&w, &node.id, &worker, &s.instance).await;
    w.wait_events(&worker, Duration::from_secs(30), |ev| {
        count_of(ev, &s.instance, "instance_stopped") == 1
    })
    .await;
    node.stop().await;
    drop(disk);
}

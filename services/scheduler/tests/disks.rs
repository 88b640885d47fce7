//! A service with a disk, carried out on two real nodes: its instance
//! stays on the disk's node, a deploy and a restart stop the old instance
//! before the new one is placed (never two programs on one disk), and
//! what each instance wrote on the disk is there for the next.

use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::ids::DiskId;
use berth_schemas::model::{Disk, ServiceType};
use berth_schemas::{Envelope, Event};

use berth_tests::scheduler::World;

/// The service's instances in the order they were placed, each with its
/// node and the positions of its `instance_scheduled` and
/// `instance_stopped` in the log.
fn lifetimes(ev: &[Envelope]) -> Vec<(String, String, usize, Option<usize>)> {
    let mut out: Vec<(String, String, usize, Option<usize>)> = Vec::new();
    for (at, e) in ev.iter().enumerate() {
        match &e.event {
            Event::InstanceScheduled(s) => {
                out.push((s.instance.to_string(), s.node.to_string(), at, None))
            }
            Event::InstanceStopped(s) => {
                if let Some(l) = out.iter_mut().find(|l| l.0 == s.instance.as_str()) {
                    l.3 = Some(at);
                }
            }
            _ => {}
        }
    }
    out
}

/// A live worker with a 1 GB disk at `/data`, on which each of its
/// instances writes a line to `starts` as it starts.
async fn live_worker_with_disk(w: &World) -> (berth_schemas::ids::ServiceId, DiskId) {
    let disk = DiskId::generate();
    let id = disk.clone();
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| {
            c.docker_command = Some("sh -c 'echo started >> /data/starts; exec sleep 600'".into());
            c.disk = Some(Disk {
                id,
                name: "data".into(),
                mount_path: "/data".into(),
                size_gb: 1,
            });
        })
        .await;
    w.wait_live(&svc, &d1).await;
    (svc, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_keeps_its_instance_on_its_node_and_one_at_a_time_across_deploys() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, disk) = live_worker_with_disk(&w).await;
    let d2 = w.deploy(&svc, "v2").await;
    w.wait_live(&svc, &d2).await;
    w.command(&svc, Command::Restart).await;
    let ev = w
        .wait_events(
            &svc,
            Duration::from_secs(60),
            "the restarted instance healthy",
            |ev| {
                ev.iter()
                    .filter(|e| matches!(e.event, Event::InstanceHealthy(_)))
                    .count()
                    >= 3
            },
        )
        .await;

    let state = w.state(&svc).await;
    let at = state.disk_node.clone().expect("disk_placed");
    let lives = lifetimes(&ev);
    assert_eq!(lives.len(), 3, "{lives:?}");
    for (i, (instance, node, placed, _)) in lives.iter().enumerate() {
        assert_eq!(node, at.as_str(), "{instance} off the disk's node");
        if i > 0 {
            // The one before had stopped before this one was placed.
            let before = lives[i - 1].3.expect("the old instance stopped");
            assert!(before < *placed, "{lives:?}");
        }
    }
    let dir = if n1.id == at { &n1.dir } else { &n2.dir };
    let written = dir.join("agent/disks").join(disk.as_str()).join("starts");
    let mut starts = String::new();
    for _ in 0..50 {
        starts = std::fs::read_to_string(&written).unwrap_or_default();
        if starts.lines().count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        starts,
        "started\nstarted\nstarted\n",
        "{}",
        written.display()
    );
    w.command(&svc, Command::Suspend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_added_to_a_running_service_comes_with_a_deploy_and_goes_with_one() {
    let w = World::start().await;
    let node = w.start_node("n1").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, d1) = w
        .create(ServiceType::BackgroundWorker, |c| {
            c.docker_command = Some("sh -c 'echo started >> /extra/starts; exec sleep 600'".into());
        })
        .await;
    w.wait_live(&svc, &d1).await;

    // Added: the deploy that comes with it stops the instance without the
    // disk before it places the one with it, which writes on the disk.
    let disk = DiskId::generate();
    let d2 = berth_schemas::ids::DeployId::generate();
    w.command(
        &svc,
        Command::AddDisk {
            disk: Disk {
                id: disk.clone(),
                name: "extra".into(),
                mount_path: "/extra".into(),
                size_gb: 1,
            },
            deploy: d2.clone(),
        },
    )
    .await;
    let ev = w.wait_live(&svc, &d2).await;
    let lives = lifetimes(&ev);
    assert_eq!(lives.len(), 2, "{lives:?}");
    let before = lives[0].3.expect("the instance without the disk stopped");
    assert!(before < lives[1].2, "{lives:?}");
    let disks = node.dir.join("agent/disks");
    let written = disks.join(disk.as_str()).join("starts");
    let mut starts = String::new();
    for _ in 0..50 {
        starts = std::fs::read_to_string(&written).unwrap_or_default();
        if !starts.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(starts, "started\n", "{}", written.display());

    // Removed: the deploy that comes with it runs an instance without it,
    // and the node removes the disk and its data once no instance mounts
    // it any more.
    let d3 = berth_schemas::ids::DeployId::generate();
    w.command(&svc, Command::RemoveDisk { deploy: d3.clone() })
        .await;
    w.wait_live(&svc, &d3).await;
    let owner_file = disks.join(format!("{disk}.service"));
    let mut gone = false;
    for _ in 0..300 {
        if !owner_file.exists() && !disks.join(format!("{disk}.img")).exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the removed disk is still on the node: {}",
        owner_file.display()
    );
    assert!(w.state(&svc).await.config.unwrap().disk.is_none());
    w.command(&svc, Command::Suspend).await;
}

/// The lines of `file` on the disk once it has `n` of them.
async fn lines_on(path: &std::path::Path, n: usize) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_snapshot_asked_for_is_taken_and_a_restore_sets_the_disk_back_once() {
    let w = World::start().await;
    let node = w.start_node("n1").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, disk) = live_worker_with_disk(&w).await;
    let disks = node.dir.join("agent/disks");
    let starts = disks.join(disk.as_str()).join("starts");
    assert_eq!(lines_on(&starts, 1).await, "started\n");

    // Asked for, taken by the disk's node while the instance runs (its
    // filesystem frozen for the copy), recorded once.
    w.command(&svc, Command::RequestDiskSnapshot).await;
    let ev = w
        .wait_events(&svc, Duration::from_secs(30), "the snapshot taken", |ev| {
            ev.iter()
                .any(|e| matches!(e.event, Event::DiskSnapshotTaken(_)))
        })
        .await;
    let taken: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.event {
            Event::DiskSnapshotTaken(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let snap = &taken[0];
    assert_eq!(
        (snap.disk.clone(), snap.node.clone()),
        (disk.clone(), node.id.clone())
    );
    assert!(snap.bytes > 0, "{snap:?}");
    let copy = disks
        .join("snapshots")
        .join(disk.as_str())
        .join(format!("{}.img", snap.key));
    assert!(copy.is_file(), "{}", copy.display());
    // Sparse: the copy takes what the filesystem holds, not its 1 GiB.
    assert!(snap.bytes < 256 << 20, "{snap:?}");
    // The instance still writes: its disk was thawed.
    w.command(&svc, Command::Restart).await;
    assert_eq!(lines_on(&starts, 2).await, "started\nstarted\n");

    // Restored: the deploy that comes with it starts its instance on the
    // disk as it was (one start), which adds its own.
    let d2 = berth_schemas::ids::DeployId::generate();
    w.command(
        &svc,
        Command::RestoreDiskSnapshot {
            key: snap.key.clone(),
            deploy: d2.clone(),
        },
    )
    .await;
    w.wait_live(&svc, &d2).await;
    assert_eq!(
        lines_on(&starts, 2).await,
        "started\nstarted\n",
        "the snapshot's one start and the restored instance's"
    );
    // A restart after it keeps what was written since: the restore is
    // done once.
    w.command(&svc, Command::Restart).await;
    assert_eq!(lines_on(&starts, 3).await, "started\nstarted\nstarted\n");

    // A restore whose snapshot the node has lost does not keep the
    // service from starting: the disk starts as it is.
    std::fs::remove_file(&copy).unwrap();
    let d3 = berth_schemas::ids::DeployId::generate();
    w.command(
        &svc,
        Command::RestoreDiskSnapshot {
            key: snap.key.clone(),
            deploy: d3.clone(),
        },
    )
    .await;
    w.wait_live(&svc, &d3).await;
    assert_eq!(lines_on(&starts, 4).await.lines().count(), 4);
    w.command(&svc, Command::Suspend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_snapshots_its_disks_on_its_own_every_interval() {
    let w = World::start().await;
    let mut opts = berth_tests::scheduler::node_options("n1", &w.dir.path().join("n1"));
    opts.disk_snapshot_every = Duration::from_secs(1);
    let _node = w.start_node_with(opts).await;
    let _scheduler = w.start_scheduler().await;
    let (svc, disk) = live_worker_with_disk(&w).await;
    // Unasked: one at the first look a second after the disk was made,
    // another at a later look.
    let ev = w
        .wait_events(&svc, Duration::from_secs(30), "two snapshots", |ev| {
            ev.iter()
                .filter(|e| matches!(e.event, Event::DiskSnapshotTaken(_)))
                .count()
                >= 2
        })
        .await;
    assert!(!ev
        .iter()
        .any(|e| matches!(e.event, Event::DiskSnapshotRequested(_))));
    let state = w.state(&svc).await;
    let kept = &state.disk_snapshots.kept;
    assert!(kept.len() >= 2, "{kept:?}");
    assert!(kept.windows(2).all(|p| p[0].created_at < p[1].created_at));
    assert_eq!(state.config.unwrap().disk.unwrap().id, disk);
    w.command(&svc, Command::Suspend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filling_up_and_freed_is_said_on_the_timeline_once_each_way() {
    let w = World::start().await;
    let _node = w.start_node("n1").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, _) = w
        .create(ServiceType::BackgroundWorker, |c| {
            c.docker_command = Some(
                "sh -c 'dd if=/dev/zero of=/data/fill bs=1M count=940 2>/dev/null; sleep 12; rm /data/fill; exec sleep 600'"
                    .into(),
            );
            c.disk = Some(Disk {
                id: DiskId::generate(),
                name: "data".into(),
                mount_path: "/data".into(),
                size_gb: 1,
            });
        })
        .await;
    let ev = w
        .wait_events(
            &svc,
            Duration::from_secs(60),
            "high, then recovered",
            |ev| {
                ev.iter()
                    .any(|e| matches!(e.event, Event::ServiceDiskUsageRecovered(_)))
            },
        )
        .await;
    let high: Vec<_> = ev
        .iter()
        .filter_map(|e| match &e.event {
            Event::ServiceDiskUsageHigh(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(high.len(), 1, "{high:?}");
    let h = high[0];
    assert!(h.used_bytes * 100 >= h.size_bytes * 90, "{h:?}");
    assert_eq!((h.mount_path.as_str(), h.threshold_percent), ("/data", 90));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e.event, Event::ServiceDiskUsageRecovered(_)))
            .count(),
        1
    );
    assert!(!w.state(&svc).await.disk_usage_high);
    w.command(&svc, Command::Suspend).await;
}

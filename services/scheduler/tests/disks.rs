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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_keeps_its_instance_on_its_node_and_one_at_a_time_across_deploys() {
    let w = World::start().await;
    let n1 = w.start_node("n1").await;
    let n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
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

//! What instances write cannot fill the node's disk (as root, real runc):
//! with the agent's files on a small tmpfs, an instance writing without
//! bound is killed once the free space falls below the reserve, what it
//! wrote is removed (the space is free again), and it starts again from
//! the image's files; an instance that wrote little runs on untouched.

use std::path::Path;
use std::time::Duration;

use berth_agent::disk;
use berth_agent::{AgentEvent, OneOffOutcome};
use berth_tests::agent::{busybox_image, collect_logs, default_config, nth_line, spec, Node};
use berth_tests::tmpfs::{Tmpfs, WRITER};

fn free_mib(p: &Path) -> u64 {
    disk::free(p).unwrap() >> 20
}

const RESERVE_MIB: u64 = 16;

/// A node whose agent keeps its files on a 96 MiB tmpfs and keeps 16 MiB
/// of it free.
struct SmallDisk {
    /// Dropped first: it removes its containers and mounts.
    node: Node,
    disk: Tmpfs,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    async fn start() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let disk = Tmpfs::mount(&dir.path().join("disk"), 96).unwrap();
        berth_tests::node::passable(disk.path());
        let state = disk.path().join("agent");
        let node = Node::start_tuned(|c| {
            c.state_dir = state.clone();
            c.disk_reserve = RESERVE_MIB << 20;
            c.disk_check = Duration::from_millis(100);
        })
        .await;
        SmallDisk {
            node,
            disk,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn an_instance_filling_the_disk_is_killed_and_its_writes_removed() {
    let mut small = SmallDisk::start().await;
    let disk_dir = small.disk.path().to_path_buf();
    let node = &mut small.node;
    let image = node.image(&busybox_image(default_config())).await;
    let empty = free_mib(&disk_dir);

    let quiet = spec(&image, "sh -c 'echo small > /small; sleep 600'");
    node.agent.run_instance(quiet.clone()).await.unwrap();
    let writer = spec(&image, WRITER);
    let mut logs = node.logs(&writer).await;
    node.agent.run_instance(writer.clone()).await.unwrap();

    let exited = node
        .event(Duration::from_secs(30), |e| {
            matches!(e, AgentEvent::Exited { .. })
        })
        .await;
    let AgentEvent::Exited {
        instance,
        disk_written,
        restarted,
        ..
    } = exited
    else {
        unreachable!()
    };
    assert_eq!(
        instance, writer.instance,
        "the writer goes, not the quiet one"
    );
    assert!(!restarted);
    let written = disk_written.expect("killed for what it wrote");
    assert!(
        written >= (empty - RESERVE_MIB - 8) << 20,
        "it had written what took the disk below the reserve: {} MiB of {empty} MiB",
        written >> 20
    );
    println!(
        "killed having written {} MiB ({empty} MiB free before it)",
        written >> 20
    );
    // Its writes are gone as it is reported: the disk is as it was.
    let after = free_mib(&disk_dir);
    assert!(
        after + 4 >= empty,
        "{after} MiB free after the kill, {empty} MiB before the writer"
    );
    // It starts again (after the crash backoff), from the image's files.
    node.event(Duration::from_secs(10), |e| {
        matches!(e, AgentEvent::Started { instance, restarts: 1, .. } if *instance == writer.instance)
    })
    .await;
    let said = collect_logs(&mut logs, Duration::from_secs(10), nth_line("writing", 2)).await;
    assert_eq!(
        said.iter().filter(|l| l.line == "writing").count(),
        2,
        "{:?}",
        said.iter().map(|l| &l.line).collect::<Vec<_>>()
    );
    node.agent.stop_instance(&writer.instance).await.unwrap();
    // The quiet one ran on all along.
    assert_eq!(node.agent.instances(), vec![quiet.instance.clone()]);
    while let Ok(e) = node.events.try_recv() {
        if let AgentEvent::Exited { instance, .. } | AgentEvent::Started { instance, .. } = &e {
            assert_ne!(*instance, quiet.instance, "{e:?}");
        }
    }
    node.agent.stop_instance(&quiet.instance).await.unwrap();
}

/// A one-off run (a cron run dumping a database before its upload) that
/// fills the disk fails, its writes gone.
#[tokio::test]
async fn a_run_filling_the_disk_is_killed_and_fails() {
    let small = SmallDisk::start().await;
    let image = small.node.image(&busybox_image(default_config())).await;
    let empty = free_mib(small.disk.path());
    let out = small
        .node
        .agent
        .run_once(spec(&image, WRITER), Duration::from_secs(30))
        .await
        .unwrap();
    let OneOffOutcome::FilledDisk { written } = out else {
        panic!("{out:?}");
    };
    assert!(written >= (empty - RESERVE_MIB - 8) << 20, "{written}");
    let after = free_mib(small.disk.path());
    assert!(after + 4 >= empty, "{after} MiB free after, {empty} before");
}

//! What instances write cannot fill the node's disk (as root, real runc):
//! with the agent's files on a small tmpfs, an instance writing without
//! bound is killed once the free space falls below the reserve, what it
//! wrote is removed (the space is free again), and it starts again from
//! the image's files; an instance that wrote little runs on untouched.
//! With a per-instance limit, an instance writing past it is killed the
//! same way, whatever the node's free space.

use std::path::Path;
use std::time::Duration;

use berth_agent::disk;
use berth_agent::{AgentEvent, InstanceSpec, OneOffOutcome};
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

/// Starts `quiet`, then `writer` (its logs followed); the first exit.
async fn quiet_and_writer(
    node: &mut Node,
    quiet: InstanceSpec,
    writer: InstanceSpec,
) -> (
    InstanceSpec,
    InstanceSpec,
    async_nats::Subscriber,
    AgentEvent,
) {
    node.agent.run_instance(quiet.clone()).await.unwrap();
    let logs = node.logs(&writer).await;
    node.agent.run_instance(writer.clone()).await.unwrap();
    let exited = node
        .event(Duration::from_secs(30), |e| {
            matches!(e, AgentEvent::Exited { .. })
        })
        .await;
    (quiet, writer, logs, exited)
}

#[tokio::test]
async fn an_instance_filling_the_disk_is_killed_and_its_writes_removed() {
    let mut small = SmallDisk::start().await;
    let disk_dir = small.disk.path().to_path_buf();
    let node = &mut small.node;
    let image = node.image(&busybox_image(default_config())).await;
    let empty = free_mib(&disk_dir);

    let (quiet, writer, mut logs, exited) = quiet_and_writer(
        node,
        spec(&image, "sh -c 'echo small > /small; sleep 600'"),
        spec(&image, WRITER),
    )
    .await;
    let AgentEvent::Exited {
        instance,
        disk_written,
        disk_limit,
        restarted,
        ..
    } = exited
    else {
        unreachable!()
    };
    assert_eq!(disk_limit, None, "killed for the node's disk, not a limit");
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
    let OneOffOutcome::FilledDisk {
        written,
        limit: None,
    } = out
    else {
        panic!("{out:?}");
    };
    assert!(written >= (empty - RESERVE_MIB - 8) << 20, "{written}");
    let after = free_mib(small.disk.path());
    assert!(after + 4 >= empty, "{after} MiB free after, {empty} before");
}

const LIMIT_MIB: u64 = 8;

/// A node whose instances may each write 8 MiB, measured every 100 ms,
/// on a disk with room to spare.
async fn limited() -> Node {
    Node::start_tuned(|c| {
        c.instance_disk_limit = LIMIT_MIB << 20;
        c.disk_limit_check = Duration::from_millis(100);
    })
    .await
}

/// Writes 16 MiB (twice the limit), says so, and waits.
const OVER: &str =
    "sh -c 'echo writing; dd if=/dev/zero of=/big bs=1M count=16 2>/dev/null; echo written; sleep 600'";

#[tokio::test]
async fn an_instance_writing_past_the_limit_is_killed_and_starts_again_from_its_image() {
    let mut node = limited().await;
    let image = node.image(&busybox_image(default_config())).await;
    // Under the limit: untouched.
    let (quiet, writer, mut logs, exited) = quiet_and_writer(
        &mut node,
        spec(
            &image,
            "sh -c 'dd if=/dev/zero of=/some bs=1M count=2 2>/dev/null; sleep 600'",
        ),
        spec(&image, OVER),
    )
    .await;
    let AgentEvent::Exited {
        instance,
        disk_written,
        disk_limit,
        ..
    } = exited
    else {
        unreachable!()
    };
    assert_eq!(instance, writer.instance);
    assert_eq!(disk_limit, Some(LIMIT_MIB << 20));
    let written = disk_written.expect("killed for what it wrote");
    assert!(written > LIMIT_MIB << 20, "{} MiB", written >> 20);
    // It starts again, from the image's files: it writes again.
    node.event(Duration::from_secs(20), |e| {
        matches!(e, AgentEvent::Started { instance, restarts: 1, .. } if *instance == writer.instance)
    })
    .await;
    let said = collect_logs(&mut logs, Duration::from_secs(20), nth_line("writing", 2)).await;
    assert_eq!(
        said.iter().filter(|l| l.line == "writing").count(),
        2,
        "{:?}",
        said.iter().map(|l| &l.line).collect::<Vec<_>>()
    );
    node.agent.stop_instance(&writer.instance).await.unwrap();
    while let Ok(e) = node.events.try_recv() {
        if let AgentEvent::Exited { instance, .. } = &e {
            assert_ne!(*instance, quiet.instance, "{e:?}");
        }
    }
    assert_eq!(node.agent.instances(), vec![quiet.instance.clone()]);
    node.agent.stop_instance(&quiet.instance).await.unwrap();
}

/// A run (a cron run, a job) writing past the limit fails saying so.
#[tokio::test]
async fn a_run_writing_past_the_limit_fails() {
    let node = limited().await;
    let image = node.image(&busybox_image(default_config())).await;
    let out = node
        .agent
        .run_once(spec(&image, OVER), Duration::from_secs(30))
        .await
        .unwrap();
    let OneOffOutcome::FilledDisk { written, limit } = out else {
        panic!("{out:?}");
    };
    assert_eq!(limit, Some(LIMIT_MIB << 20));
    assert!(written > LIMIT_MIB << 20, "{written}");
}

//! A service's disk on a node: what its instance writes there is found
//! again by the next instance (a restart or a deploy), the filesystem is
//! the disk's size (a write past it fails, as on a full disk), its root is
//! the instance's root user's, an image's `VOLUME` on it is not said to be
//! lost, and the disk goes once its service is deleted — as the host's
//! root and in a user namespace.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use berth_domain::service::Command;
use berth_schemas::commands::NodeRunSpec;
use berth_schemas::ids::{DeployId, DiskId, NodeId, OwnerId, ServiceId, UserId};
use berth_schemas::metrics::UsageSample;
use berth_schemas::model::{Disk, ServiceType};
use berth_tests::agent::collect_logs;
use berth_tests::image::Image;
use berth_tests::node::{World, REPO};
use futures::StreamExt;
use serde_json::json;

use crate::images::{modes, on_busybox};
use crate::support::{
    count_of, exec, fast_checks, lines_of, run, service_with, spec, start_node_opts, stop,
};

/// A worker of `image` named `name` with a disk of `size_gb` at `/data`.
async fn worker_with_disk(
    w: &World,
    name: &str,
    image: &Image,
    size_gb: u32,
) -> (ServiceId, DeployId, Disk) {
    let disk = Disk {
        id: DiskId::generate(),
        name: name.into(),
        mount_path: "/data".into(),
        size_gb,
    };
    let d = disk.clone();
    let owner = OwnerId::User(UserId::generate());
    let ty = ServiceType::BackgroundWorker;
    let (svc, dep) = service_with(w, &owner, name, ty, &image.digest, |c| c.disk = Some(d)).await;
    (svc, dep, disk)
}

/// Starts a new instance of `svc` running `image`'s own command on `node`.
async fn start(
    w: &World,
    node: &NodeId,
    svc: &ServiceId,
    dep: &DeployId,
    image: &Image,
) -> NodeRunSpec {
    let mut s = spec(w, svc, dep, "", None);
    s.command = None;
    s.digest = image.digest.clone();
    run(w, node, &s).await;
    s
}

#[tokio::test]
async fn a_disk_keeps_what_its_instance_wrote_until_the_service_is_deleted() {
    // Counts its starts on the disk; declares the disk's path a volume.
    let image = on_busybox(
        &[],
        json!({
            "Cmd": ["/bin/sh", "-c", "n=$(cat /data/starts 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/starts; echo start $n; exec sleep 600"],
            "Volumes": { "/data": {} },
        }),
    );
    for opts in modes() {
        let in_userns = matches!(opts.user_namespace, berth_node::Userns::On(_));
        let w = World::start().await;
        let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
        w.registry.push_image(REPO, "disk", &image).await.unwrap();
        let (svc, dep, disk) = worker_with_disk(&w, "disk", &image, 1).await;
        let mut logs = w.subscribe_logs(&svc).await;
        let write_1100_mib = |instance: &berth_schemas::ids::InstanceId| {
            exec(
                &w,
                instance,
                &[
                    "/bin/busybox",
                    "dd",
                    "if=/dev/zero",
                    "of=/data/big",
                    "bs=1M",
                    "count=1100",
                ],
            )
        };

        // Three instances one after the other, each finding what the one
        // before wrote; the disk grown to 2 GB before the third.
        let mut last = None;
        for n in 1..=3 {
            if n == 3 {
                w.command(
                    &svc,
                    Command::UpdateDisk {
                        name: None,
                        mount_path: None,
                        size_gb: Some(2),
                    },
                )
                .await;
            }
            let s = start(&w, &node.id, &svc, &dep, &image).await;
            let said = format!("start {n}");
            let seen = collect_logs(&mut logs, Duration::from_secs(30), |l| {
                l.line == said || l.line.starts_with("==> Exited")
            })
            .await;
            let lines = lines_of(&seen, &s.instance);
            assert!(lines.contains(&said), "{lines:?}");
            assert!(
                !lines.iter().any(|l| l.contains("no disk is kept")),
                "the volume is on the disk: {lines:?}"
            );
            if n == 1 {
                // New, it held nothing (no `lost+found`, as a volume).
                let (code, out) = exec(&w, &s.instance, &["/bin/busybox", "ls", "-A", "/data"]);
                assert_eq!((code, out.trim()), (0, "starts"), "{out}");
                // Its root is the instance's root user's, and it holds
                // what its size says.
                let (code, out) = exec(
                    &w,
                    &s.instance,
                    &["/bin/busybox", "stat", "-c", "%u", "/data"],
                );
                assert_eq!((code, out.trim()), (0, "0"), "{out}");
                let (code, out) = write_1100_mib(&s.instance);
                assert_ne!(code, 0, "1,100 MiB fit on a 1 GB disk: {out}");
                assert!(out.contains("No space left on device"), "{out}");
                let (code, out) = exec(&w, &s.instance, &["/bin/busybox", "rm", "/data/big"]);
                assert_eq!(code, 0, "{out}");
            }
            if n == 3 {
                // Grown: 1,100 MiB fit now, and the node's usage samples
                // say so.
                let mut usage = w
                    .client
                    .subscribe(w.store.subjects().usage(&svc, &node.id))
                    .await
                    .unwrap();
                let (code, out) = write_1100_mib(&s.instance);
                assert_eq!(code, 0, "{out}");
                let seen = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(m) = usage.next().await {
                        let sample: UsageSample = serde_json::from_slice(&m.payload).unwrap();
                        let disk = sample
                            .instances
                            .iter()
                            .find(|u| u.instance == s.instance)
                            .and_then(|u| u.disk_used_bytes.zip(u.disk_capacity_bytes));
                        if let Some((used, size)) = disk {
                            if used >= 1100 << 20 {
                                return (used, size);
                            }
                        }
                    }
                    panic!("the usage samples ended")
                })
                .await
                .expect("a usage sample with the disk's use within 10 s");
                assert!(seen.1 > 3 << 29 && seen.1 <= 2 << 30, "{seen:?}");
            } else {
                stop(&w, &node.id, &svc, &s.instance).await;
                w.wait_events(&svc, Duration::from_secs(30), |ev| {
                    count_of(ev, &s.instance, "instance_stopped") == 1
                })
                .await;
            }
            last = Some(s);
        }
        let disks = w.node_dir().join("agent").join("disks");
        let mount = disks.join(disk.id.as_str());
        let root_owner = std::fs::metadata(&mount).unwrap().uid();
        assert_eq!(
            root_owner,
            if in_userns {
                berth_node::USERNS_AUTO_HOST
            } else {
                0
            },
            "the disk's root on the host"
        );

        // Deleted: once its instance stops, the node removes the disk.
        w.command(&svc, Command::Delete).await;
        let s = last.unwrap();
        stop(&w, &node.id, &svc, &s.instance).await;
        let image_file = disks.join(format!("{}.img", disk.id));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while image_file.exists() || mount.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the deleted service's disk is still at {}",
                image_file.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            std::fs::read_dir(&disks).unwrap().count(),
            0,
            "nothing of the disk is left"
        );
        node.stop().await;
    }
}

/// A disk larger than the node can give (keeping its reserve free) is
/// refused at the start, saying so, and nothing of it is left behind.
#[tokio::test]
async fn a_disk_the_node_has_no_room_for_is_refused_saying_why() {
    let w = World::start().await;
    let mut opts = crate::support::options();
    std::fs::create_dir_all(w.node_dir()).unwrap();
    let free = berth_agent::disk::free(&w.node_dir()).unwrap();
    // More than is free, within what a disk may be (else a reserve that
    // leaves less than it free).
    let size_gb = match (free >> 30) + 2 {
        gb if gb <= 1024 => gb as u32,
        _ => {
            opts.min_free_disk = free - (512 << 30);
            1024
        }
    };
    let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
    let image = on_busybox(&[], json!({"Cmd": ["/bin/sh", "-c", "exec sleep 600"]}));
    w.registry.push_image(REPO, "big", &image).await.unwrap();
    let (svc, dep, disk) = worker_with_disk(&w, "big", &image, size_gb).await;
    let mut logs = w.subscribe_logs(&svc).await;
    let s = start(&w, &node.id, &svc, &dep, &image).await;
    let seen = collect_logs(&mut logs, Duration::from_secs(30), |l| {
        l.line.starts_with("==> Could not start")
    })
    .await;
    let lines = lines_of(&seen, &s.instance);
    let want = format!("==> Could not start: disk {}: this node has ", disk.id);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&want) && l.contains("GB more do not fit")),
        "{lines:?}"
    );
    let disks = w.node_dir().join("agent").join("disks");
    let left: Vec<_> = std::fs::read_dir(&disks)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    stop(&w, &node.id, &svc, &s.instance).await;
    node.stop().await;
}

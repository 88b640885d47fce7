//! A service disk's snapshots on the node's side (as root, real loop
//! mounts, no containers): a snapshot of a mounted disk is a sparse copy
//! of what was written; a disk a dead node left frozen mid-copy is thawed
//! at the next start; a restore sets the disk back once per restore (a
//! later start with the same restore keeps what was written since), and a
//! restore whose snapshot is gone is given up, said, with the disk as it
//! was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_agent::persistent::{self, Attached};
use berth_schemas::ids::{DiskId, DiskSnapshotKey};
use berth_schemas::model::{Disk, DiskRestore};

/// A disk on a node of its own; removed (unmounted, its files deleted)
/// when dropped.
struct OnNode {
    disks: PathBuf,
    disk: Disk,
    _dir: tempfile::TempDir,
}

impl Drop for OnNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .args(["-u"])
            .arg(self.disks.join(self.disk.id.as_str()))
            .status();
        let _ = persistent::remove(&self.disks, self.disk.id.as_str());
    }
}

impl OnNode {
    fn new() -> OnNode {
        berth_tests::agent::require_root_and_runc();
        let dir = tempfile::tempdir().unwrap();
        OnNode {
            disks: persistent::dir(dir.path()),
            disk: Disk {
                id: DiskId::generate(),
                name: "data".into(),
                mount_path: "/data".into(),
                size_gb: 1,
            },
            _dir: dir,
        }
    }

    fn attach(&self, restore: Option<&DiskRestore>) -> Attached {
        persistent::attach(&self.disks, "srv-test", &self.disk, restore, None, 0).unwrap()
    }

    fn restore(&self, key: &DiskSnapshotKey, number: u32) -> DiskRestore {
        DiskRestore {
            disk: self.disk.id.clone(),
            key: key.clone(),
            number,
        }
    }
}

fn read(mount: &Path) -> String {
    std::fs::read_to_string(mount.join("state")).unwrap()
}

/// Writes `text` in a thread of its own: whether it was done within 5 s
/// (a frozen filesystem holds it).
fn writes(mount: &Path, text: &str) -> bool {
    let (path, text) = (mount.join("state"), text.to_owned());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let done =
            std::fs::write(&path, text).and_then(|()| std::fs::File::open(&path)?.sync_all());
        let _ = tx.send(done.is_ok());
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
}

#[test]
fn a_snapshot_is_a_sparse_copy_a_restore_sets_the_disk_back_once_and_a_frozen_disk_thaws() {
    let node = OnNode::new();
    let first = node.attach(None);
    assert_eq!(first.said, None);
    let mount = first.mount;
    assert!(writes(&mount, "one"));

    let key = DiskSnapshotKey::generate();
    let bytes = persistent::snapshot(&node.disks, node.disk.id.as_str(), &key, 0).unwrap();
    assert!(
        bytes > 0 && bytes < 256 << 20,
        "{bytes} bytes for a 1 GiB disk"
    );
    // The disk was thawed after the copy.
    assert!(writes(&mount, "two"));

    // A node that died mid-copy left it frozen: the next start thaws it.
    let frozen = std::process::Command::new("fsfreeze")
        .arg("-f")
        .arg(&mount)
        .status()
        .unwrap();
    assert!(frozen.success());
    assert!(!writes(&mount, "held"), "a frozen disk took a write");
    persistent::thaw_all(&node.disks);
    // The held write goes through once thawed; then another.
    std::thread::sleep(Duration::from_millis(200));
    assert!(writes(&mount, "three"));
    assert_eq!(read(&mount), "three");

    // Restore 1: the disk as it was at the snapshot, said.
    let back = node.attach(Some(&node.restore(&key, 1)));
    assert_eq!(read(&back.mount), "one");
    assert!(back
        .said
        .unwrap()
        .contains(&format!("set back to its snapshot {key}")));
    // Written since; a later start with the same restore keeps it.
    assert!(writes(&back.mount, "four"));
    let again = node.attach(Some(&node.restore(&key, 1)));
    assert_eq!((read(&again.mount), again.said), ("four".to_owned(), None));

    // Restore 2 of a snapshot no longer on the node: given up and said;
    // the disk is as it was, and starts.
    let gone = DiskSnapshotKey::generate();
    let lost = node.attach(Some(&node.restore(&gone, 2)));
    assert_eq!(read(&lost.mount), "four");
    assert!(lost.said.unwrap().contains("NOT set back"));
}

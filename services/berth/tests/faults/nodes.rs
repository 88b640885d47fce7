//! The installation's nodes: where each keeps its state (dir, id, runc
//! root, subnet), one lost for good as a dead machine is, and the first
//! node's disk, a tmpfs of the test's, filled and freed.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use crate::world::World;

/// The size of the node's disk when it is a tmpfs of the test's: the
/// 1 GiB the node keeps free when it unpacks (it refuses to unpack on a
/// disk with less) and 160 MiB of room.
const NODE_DISK: &str = "1184m";

impl World {
    /// The nodes the installation has (lost ones included).
    pub fn nodes(&self) -> Vec<&'static str> {
        let mut nodes = vec!["node"];
        if self.setup.second_node {
            nodes.push("node2");
        }
        nodes
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.data.join(node)
    }

    pub fn runc_root(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent/runc")
    }

    /// The node's id, once it has started.
    pub fn node_id(&self, node: &str) -> Option<String> {
        std::fs::read_to_string(self.node_dir(node).join("node-id"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    pub(crate) fn subnet(&self, node: &str) -> String {
        // The first node's lease is keyed by the data dir, as it always was.
        let key = if node == "node" {
            self.data.clone()
        } else {
            self.node_dir(node)
        };
        berth_tests::net::subnet_for(&key)
    }

    pub fn is_lost(&self, node: &str) -> bool {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }

    /// A machine dies: its node `kill -9`ed, its containers and network
    /// gone with it; nothing of it starts again.
    pub async fn lose_node(&self, node: &'static str) {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(node);
        self.kill9(node).await;
        let root = self.runc_root(node);
        let dir = self.node_dir(node);
        let subnet = self.subnet(node);
        tokio::task::spawn_blocking(move || {
            berth_tests::net::remove_network(&subnet, Some(&dir.join("agent/net")));
            berth_tests::runc::remove_leftovers(&root, &dir);
        })
        .await
        .unwrap();
    }

    /// The node's dir on a tmpfs of `NODE_DISK`, removed with the rest of
    /// the mounts under the data dir on drop.
    pub(crate) fn mount_small_disk(&self) {
        let dir = self.node_dir("node");
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={NODE_DISK}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
    }

    fn filler(&self) -> PathBuf {
        self.node_dir("node").join("filler")
    }

    /// Fills the node's disk to the last byte.
    pub async fn fill_node_disk(&self) {
        let of = format!("of={}", self.filler().display());
        // dd stops at ENOSPC, with an error status: that is the point.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &of, "bs=1M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    pub fn free_node_disk(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

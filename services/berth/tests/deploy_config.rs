//! The cluster configs in `deploy/nats/`: every node fsyncs before it
//! acknowledges, and a current nats-server accepts each file as written.

use std::path::Path;
use std::process::Command;

#[test]
fn cluster_nodes_fsync_every_write_and_the_server_accepts_their_configs() {
    let modern = berth_tests::nats_binary(berth_tests::NatsVersion::Modern).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    for node in ["nats-1.conf", "nats-2.conf", "nats-3.conf"] {
        let path = dir.join(node);
        let text = std::fs::read_to_string(&path).unwrap();
        let settings: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("sync_interval:"))
            .collect();
        assert_eq!(settings, ["sync_interval: always"], "{node}");
        let out = Command::new(&modern)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

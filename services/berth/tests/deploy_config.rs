//! The cluster configs in `deploy/nats/` and `docker-compose.yml`: every
//! node fsyncs before it acknowledges, keeps its monitoring port to itself,
//! takes its users from `berth nats auth`; a current nats-server accepts each
//! file as written; every berth process in the compose file presents its
//! role's credentials.

use std::path::Path;
use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(args: &[&str]) {
    let out = Command::new(BERTH).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "berth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cluster_nodes_fsync_every_write_and_the_server_accepts_their_configs() {
    let modern = berth_tests::nats_binary(berth_tests::NatsVersion::Modern).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    // What compose's nats-init writes into the creds volume.
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    let files: Vec<String> = ["control", "operator", "node"]
        .iter()
        .map(|role| {
            let file = creds.join(format!("{role}.json"));
            berth(&["nats", "creds", role, "--out", file.to_str().unwrap()]);
            file.to_str().unwrap().to_owned()
        })
        .collect();
    let node_before = std::fs::read(&files[2]).unwrap();
    // Kept when run again (compose runs it at every start).
    berth(&["nats", "creds", "node", "--out", &files[2]]);
    assert_eq!(std::fs::read(&files[2]).unwrap(), node_before);
    let auth = creds.join("auth.conf");
    let mut args = vec!["nats", "auth", "--out", auth.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    berth(&args);
    let block = std::fs::read_to_string(&auth).unwrap();
    assert!(block.contains("user: \"control\""), "{block}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let password = serde_json::from_str::<serde_json::Value>(&text).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !block.contains(&password),
            "a password in clear in auth.conf"
        );
    }

    for node in ["nats-1.conf", "nats-2.conf", "nats-3.conf"] {
        let text = std::fs::read_to_string(dir.join(node)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let settings: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("sync_interval:"))
            .collect();
        assert_eq!(settings, [&"sync_interval: always"], "{node}");
        assert!(lines.contains(&"include ./creds/auth.conf"), "{node}");
        for l in lines
            .iter()
            .filter(|l| l.starts_with("http:") || l.starts_with("http_port"))
        {
            assert!(l.contains("127.0.0.1"), "{node}: monitoring published: {l}");
        }
        // As mounted: the config beside the creds volume.
        let path = tmp.path().join(node);
        std::fs::write(&path, &text).unwrap();
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

#[test]
fn every_berth_process_in_the_compose_file_presents_its_roles_credentials() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml");
    let text = std::fs::read_to_string(path).unwrap();
    // The shared environment names the control credentials; the node's own
    // environment its own.
    assert!(
        text.contains("BERTH_NATS_CREDS: /creds/control.json"),
        "{text}"
    );
    assert!(
        text.contains("BERTH_NATS_CREDS: /creds/node.json"),
        "{text}"
    );
    assert!(!text.contains("8222:"), "the monitoring port is published");
    assert!(!text.contains("4222:"), "the client port is published");
    for service in ["projector", "resolver", "node"] {
        let body: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != format!("  {service}:"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect();
        assert!(
            body.iter().any(|l| l.trim() == "<<: *berth"),
            "{service} is not a berth process: {body:?}"
        );
    }
}

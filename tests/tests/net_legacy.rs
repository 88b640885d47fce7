//! Instances an earlier berth attached through the CNI `bridge` plugin
//! (`host-local` addresses) live on next to the ones berth attaches itself:
//! their addresses are never handed out twice, an adopted one whose
//! container died is attached again with its address, and the others are
//! removed through the plugin.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_agent::net::{Cni, NetworkConfig, NetworkSpec};
use berth_agent::netns::Namespace;
use berth_schemas::ids::InstanceId;
use serde_json::{json, Value};

const CNI_PATH: &str = "/usr/lib/cni";

/// What an earlier berth did to attach `id`: the `bridge` plugin's ADD
/// (host-local addresses under the state dir), then its state file.
fn attach_as_before(
    cfg: &NetworkConfig,
    bridge: &str,
    id: &InstanceId,
    ns: &Namespace,
) -> Ipv4Addr {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": bridge,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": cfg.subnet.to_string() }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": cfg.state_dir.join("ipam"),
        },
    });
    let mut child = Command::new(Path::new(CNI_PATH).join("bridge"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id.as_str())
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = json!({ "spec": { "group": "g" }, "result": result, "plugins": ["bridge"] });
    std::fs::write(cfg.state_dir.join(format!("{id}.json")), state.to_string()).unwrap();
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap()
}

/// The ports of `bridge` (veth ends on the host).
fn ports(bridge: &str) -> usize {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits for `bridge` to have `n` ports (a namespace let go takes its
/// veth with it a moment later).
fn ports_become(bridge: &str, n: usize) {
    let ok = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        ports(bridge) == n
    });
    assert!(ok, "{bridge} has {} ports, not {n}", ports(bridge));
}

/// The addresses held in the lease directory.
fn held(cfg: &NetworkConfig, bridge: &str) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = std::fs::read_dir(cfg.state_dir.join("ipam").join(bridge))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn instances_the_bridge_plugin_attached_keep_their_addresses_and_leave_through_it() {
    berth_tests::runc::require_root_and_runc();
    let dir = tempfile::tempdir().unwrap();
    let mut lease = berth_tests::net::lease_subnet();
    let net_dir = dir.path().join("net");
    lease.net_dir = Some(net_dir.clone());
    let cfg = NetworkConfig {
        subnet: lease.parsed(),
        cni_path: CNI_PATH.into(),
        state_dir: net_dir,
        closed: Vec::new(),
        services: berth_agent::net::DEFAULT_SERVICES,
        user_namespace: None,
    };
    let cni = Cni::open(cfg.clone()).await.unwrap();
    let bridge = cni.bridge().to_owned();
    // Its address set (NET_ADDR_SET), so it does not follow its ports'.
    let assigned =
        std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type")).unwrap();
    assert_eq!(assigned.trim(), "3", "the bridge's address is its own");
    let mac = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address")).unwrap();

    // Two instances attached the old way; `kept` will be adopted with its
    // container gone, `gone` will not be adopted.
    let (kept, gone) = (InstanceId::generate(), InstanceId::generate());
    let (kept_ns, gone_ns) = (Namespace::create().unwrap(), Namespace::create().unwrap());
    let kept_ip = attach_as_before(&cfg, &bridge, &kept, &kept_ns);
    let gone_ip = attach_as_before(&cfg, &bridge, &gone, &gone_ns);

    // Instances berth attaches itself never get those addresses.
    let spec = NetworkSpec {
        group: "g".into(),
        name: None,
        publish: None,
    };
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let id = InstanceId::generate();
        let a = cni.attach(&id, &spec).await.unwrap();
        assert!(cfg.subnet.contains(a.ip));
        assert!(
            a.ip != kept_ip && a.ip != gone_ip,
            "{} handed out twice",
            a.ip
        );
        fresh.push((id, a.ip));
    }
    assert_eq!(ports(&bridge), 5, "two plugin veths, three of berth's");
    let now = std::fs::read_to_string(format!("/sys/class/net/{bridge}/address")).unwrap();
    assert_eq!(now, mac, "the bridge kept its address as ports joined");
    let mut all = vec![kept_ip, gone_ip];
    all.extend(fresh.iter().map(|(_, ip)| *ip));
    all.sort();
    assert_eq!(held(&cfg, &bridge), all);

    // An address taken by an attach that crashed before its state file
    // was written: no state names its holder.
    let orphan = Ipv4Addr::from(u32::from(cfg.subnet.addr) + 200);
    std::fs::write(
        cfg.state_dir
            .join("ipam")
            .join(&bridge)
            .join(orphan.to_string()),
        "ins-crashedbeforesaving\r\neth0",
    )
    .unwrap();

    // As after a node restart: a new process, only `kept` adopted (its
    // container gone, so its namespace too).
    drop(cni);
    drop((kept_ns, gone_ns));
    let cni = Cni::open(cfg.clone()).await.unwrap();
    cni.recover(&HashMap::from([(kept.clone(), None)]))
        .await
        .unwrap();
    let a = cni.attachment(&kept).expect("attached again");
    assert_eq!(a.ip, kept_ip, "the same address");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", a.netns.display()))
        .args(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(addrs.contains(&format!("inet {kept_ip}/")), "{addrs}");
    // Everything else is gone: their ports, and their addresses given back
    // (berth's own, the plugin's through its DEL, and the one no state
    // names).
    assert_eq!(held(&cfg, &bridge), vec![kept_ip]);
    ports_become(&bridge, 1);

    cni.detach(&kept).await.unwrap();
    assert_eq!(held(&cfg, &bridge), Vec::<Ipv4Addr>::new());
    ports_become(&bridge, 0);
    cni.close().await.unwrap();
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
}

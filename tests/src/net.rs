//! Instance networks in tests: a subnet no other test (in any process)
//! holds, and a count of what berth's network leaves on the machine.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// A subnet (a /24, or a /21 of 10.96.0.0/16) held for as long as this lease lives (an exclusive `flock` on a
/// file per subnet, released when the process ends, however it ends), so
/// parallel tests' nodes never share a subnet or a bridge.
#[derive(Debug)]
pub struct SubnetLease {
    /// `10.a.b.0/24` (or `/21`).
    pub subnet: String,
    /// The node's network state dir (`<node dir>/agent/net`): on drop,
    /// whatever of the network is left is removed.
    pub net_dir: Option<std::path::PathBuf>,
    _lock: Flock<File>,
}

impl SubnetLease {
    /// The subnet, parsed.
    pub fn parsed<T: std::str::FromStr>(&self) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.subnet.parse().expect("a valid subnet")
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        remove_network(&self.subnet, self.net_dir.as_deref());
    }
}

/// The subnet for a node whose state lives under `key` (a `berth up` data
/// dir), leased on first use and held until the test process ends.
pub fn subnet_for(key: &Path) -> String {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static LEASES: OnceLock<Mutex<HashMap<std::path::PathBuf, SubnetLease>>> = OnceLock::new();
    let mut leases = LEASES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    leases
        .entry(key.to_path_buf())
        .or_insert_with(lease_subnet)
        .subnet
        .clone()
}

/// A failed test must not leak networks onto the machine: namespaces of
/// the instances recorded under `net_dir`, iptables rules and per-instance
/// chains of the subnet, the bridge. Never panics.
pub fn remove_network(subnet: &str, net_dir: Option<&Path>) {
    let mut instances = Vec::new();
    if let Some(dir) = net_dir {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                instances.push(id.to_owned());
            }
        }
    }
    for i in &instances {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", i])
            .output();
    }
    remove_rules(subnet);
    let bridge = names(subnet).0;
    if Path::new("/sys/class/net").join(&bridge).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .output();
    }
}

/// `(bridge, chain prefix, "a.b.c.")` of a subnet, as berth names them.
fn names(subnet: &str) -> (String, String, String) {
    let base: std::net::Ipv4Addr = subnet
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("a.b.c.d/n");
    let hex = format!("{:08x}", u32::from(base));
    let prefix = subnet
        .rsplit_once('.')
        .map(|(p, _)| format!("{p}."))
        .unwrap_or_default();
    (format!("bth{hex}"), format!("BTH-{hex}"), prefix)
}

fn marked(line: &str, subnet: &str) -> bool {
    let (bridge, tag, prefix) = names(subnet);
    line.contains(&prefix) || line.contains(&bridge) || line.contains(&tag)
}

/// Deletes every rule of every table that names the subnet, its bridge or
/// its chains, then the chains such rules jumped to (berth's and the CNI
/// plugins' per-instance chains), which are left empty.
fn remove_rules(subnet: &str) {
    let Ok(out) = std::process::Command::new("iptables-save").output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut table = String::new();
    let mut chains: Vec<(String, String)> = Vec::new();
    let (_, tag, _) = names(subnet);
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_owned();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            if marked(line, subnet) {
                // iptables-save quotes comments as a shell would.
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("iptables -w -t {table} -D {rule}"))
                    .output();
                if let Some(j) = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1) {
                    let shared =
                        matches!(j, "CNI-FORWARD" | "CNI-ADMIN") || j.starts_with("CNI-HOSTPORT");
                    if (j.starts_with("CNI-") && !shared) || j.starts_with(&tag) {
                        chains.push((table.clone(), j.to_owned()));
                    }
                }
            }
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&tag) {
                chains.push((table.clone(), name.to_owned()));
            }
        }
    }
    for (t, c) in chains {
        for op in ["-F", "-X"] {
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-t", &t, op, &c])
                .output();
        }
    }
}

/// Leases a free test subnet from 10.200.0.0/16 … 10.215.255.0/24.
pub fn lease_subnet() -> SubnetLease {
    lease_from("", 4096, |n| {
        format!("10.{}.{}.0/24", 200 + n / 256, n % 256)
    })
}

/// Leases a free /21 (2,045 instance addresses) from 10.96.0.0/16, for a
/// node that runs more instances than a /24 holds (the deploy bench).
pub fn lease_wide_subnet() -> SubnetLease {
    lease_from("wide-", 32, |n| format!("10.96.{}.0/21", n * 8))
}

fn lease_from(tag: &str, count: usize, subnet: impl Fn(usize) -> String) -> SubnetLease {
    let dir = Path::new("/tmp/berth-test-subnets");
    std::fs::create_dir_all(dir).expect("subnet lock dir");
    let start = (std::process::id() as usize * 7919) % count;
    for i in 0..count {
        let n = (start + i) % count;
        let file = File::create(dir.join(format!("{tag}{n}.lock"))).expect("subnet lock file");
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            let lease = SubnetLease {
                subnet: subnet(n),
                net_dir: None,
                _lock: lock,
            };
            // What an earlier, killed run left with this subnet goes first.
            remove_rules(&lease.subnet);
            return lease;
        }
    }
    panic!("all {count} test subnets {tag}* are in use");
}

/// What of one node network is on the machine: iptables rules (any table)
/// naming its subnet, bridge or chains, veths on its bridge, namespaces of
/// `instances`. Empty once everything is removed.
pub fn leftovers(subnet: &str, instances: &[String]) -> Vec<String> {
    let bridge = names(subnet).0;
    let mut left = Vec::new();
    let out = std::process::Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("-A ") && marked(line, subnet) {
            left.push(format!("rule: {line}"));
        }
    }
    if let Ok(ports) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) {
        for p in ports.flatten() {
            left.push(format!("veth: {}", p.file_name().to_string_lossy()));
        }
    }
    for i in instances {
        if Path::new("/run/netns").join(i).exists() {
            left.push(format!("netns: {i}"));
        }
    }
    left
}

/// The network namespace (its inode number) process `pid` is in.
pub fn namespace_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// What keeps network namespace `inode` alive: processes in it, open
/// files of any process (compared by inode on the namespace filesystem,
/// whatever path they were opened by), mounts of this process's mount
/// table. Meant for a namespace known to be alive: a freed namespace's
/// inode number is soon given to a new one.
pub fn namespace_holders(inode: u64) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let nsfs = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.dev())
        .unwrap_or_default();
    let is_it = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode && m.dev() == nsfs);
    let mut held = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        if is_it(&p.path().join("ns/net")) {
            held.push(format!("process {pid}"));
        }
        for fd in std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if is_it(&fd.path()) {
                held.push(format!("open file {}", fd.path().display()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts
        .lines()
        .filter(|l| l.contains(&format!("net:[{inode}]")))
    {
        held.push(format!("mount {line}"));
    }
    held
}

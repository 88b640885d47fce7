//! Instance network namespaces held by an open file, never by a mount.
//!
//! `ip netns add` pins a namespace with a bind mount under `/run/netns`:
//! one more entry in the host's mount table per instance, which every
//! container start then copies into its own mount namespace and walks (runc
//! reads and re-propagates the whole table), so each start costs more the
//! more instances run. Here a short-lived thread unshares a fresh network
//! namespace, sets its loopback up over netlink and opens
//! `/proc/thread-self/ns/net`; the open file keeps the namespace alive (as
//! the bind mount did) for as long as the agent holds it, crash restarts of
//! the container included. Other processes (CNI plugins, runc) open it as
//! `/proc/<agent pid>/fd/<n>`. When the agent process ends, a namespace
//! lives on only while a container is in it; a restarted agent holds it
//! again from the container's `/proc/<pid>/ns/net`.
//!
//! For instances in a user namespace the network namespace is made inside
//! one of their own ([`Namespace::create_owned`]), which the container
//! then joins: its root may then mount a sysfs of its own network (its
//! `/sys/class/net` lists its own interfaces, not the host's), and `runc
//! exec` can enter it (runc joins the user namespace first, and could not
//! enter a network namespace the host's user namespace owns from there).
//! A multi-threaded process cannot enter a new user namespace itself, so
//! a short-lived `unshare --user --net` child makes both; this process
//! writes the child's id map, opens both namespaces and lets it go.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::netlink::{context, Route};

/// A namespace file this process holds open, and the path other
/// processes open it by (`/proc/<pid>/fd/<n>`).
#[derive(Debug)]
struct Held {
    file: File,
    path: PathBuf,
}

impl Held {
    fn new(file: File) -> Held {
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        ));
        Held { file, path }
    }

    /// The namespace at `path`; refused when it is this process's own
    /// namespace of that kind (`kind`: `net`, `user`).
    fn open_other(path: &Path, kind: &str) -> io::Result<Held> {
        let file = File::open(path)?;
        let own = std::fs::metadata(format!("/proc/self/ns/{kind}"))?;
        let meta = file.metadata()?;
        if meta.ino() == own.ino() && meta.dev() == own.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is the host's {kind} namespace", path.display()),
            ));
        }
        Ok(Held::new(file))
    }
}

/// A network namespace this process holds open, and the user namespace
/// that owns it when it is not the host's.
#[derive(Debug)]
pub struct Namespace {
    net: Held,
    owner: Option<Held>,
}

/// The ids a user namespace maps: its `0..size` are the host's
/// `host..host + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The host id of id 0 inside.
    pub host: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl Namespace {
    /// A new, empty network namespace with `lo` up.
    pub fn create() -> io::Result<Namespace> {
        Self::in_thread(None, None)
    }

    /// A new network namespace with `lo` up and `link` made: on failure
    /// the namespace goes, and the veth pair with it.
    pub fn create_attached(link: Link) -> io::Result<Namespace> {
        Self::in_thread(Some(link), None)
    }

    /// [`Namespace::create_attached`] inside a new user namespace mapping
    /// `ids` (or [`Namespace::create`] without `link`), which owns the
    /// network namespace and is held with it.
    pub fn create_owned(link: Option<Link>, ids: IdMap) -> io::Result<Namespace> {
        let (user, net) = user_and_net(ids)?;
        Self::in_thread(link, Some((user, net)))
    }

    fn in_thread(link: Option<Link>, made: Option<(File, File)>) -> io::Result<Namespace> {
        // A thread of its own: unshare and setns move the calling thread,
        // which then ends (a pooled thread would run later work inside the
        // namespace).
        let (owner, net) = match made {
            Some((user, net)) => (Some(Held::new(user)), Some(net)),
            None => (None, None),
        };
        let net = std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || enter_and_attach(net, link.as_ref()))?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        Ok(Namespace {
            net: Held::new(net),
            owner,
        })
    }

    /// The network namespace process `pid` is in (an adopted instance's),
    /// with the process's user namespace as its owner when `owned` (the
    /// namespace was made inside it) and the process is in one (an
    /// instance running as the host's root joined it without); refused
    /// when the network namespace is this process's own (the host's).
    pub fn of_process(pid: u32, owned: bool) -> io::Result<Namespace> {
        let net = Held::open_other(Path::new(&format!("/proc/{pid}/ns/net")), "net")?;
        let owner = if owned {
            match Held::open_other(Path::new(&format!("/proc/{pid}/ns/user")), "user") {
                Ok(user) => Some(user),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(Namespace { net, owner })
    }

    /// The network namespace at `path` (a `/proc/…/ns/net` or a bind
    /// mount of one), owned by the host's user namespace; refused when it
    /// is this process's own.
    pub fn open(path: &Path) -> io::Result<Namespace> {
        Ok(Namespace {
            net: Held::open_other(path, "net")?,
            owner: None,
        })
    }

    /// Where another process opens it while this one holds it.
    pub fn path(&self) -> &Path {
        &self.net.path
    }

    /// Where another process opens the user namespace that owns it, when
    /// that is not the host's.
    pub fn owner_path(&self) -> Option<&Path> {
        self.owner.as_ref().map(|o| o.path.as_path())
    }

    /// The namespace's inode number (`net:[<inode>]`).
    pub fn inode(&self) -> io::Result<u64> {
        Ok(self.net.file.metadata()?.ino())
    }
}

/// Loopback is always index 1 in a new namespace.
const LOOPBACK_INDEX: u32 = 1;

/// What Docker sets in every container's own network namespace, so an
/// image that works under `docker run` works here: any user may listen on
/// a port below 1024 (an image running as a non-root user on port 80;
/// file capabilities such as `setcap cap_net_bind_service` do nothing
/// under no-new-privileges) and any group may open ICMP datagram sockets
/// (`ping` without `CAP_NET_RAW`). Both are the namespace's own: the host's
/// settings are not touched, and nothing outside the namespace listens in
/// it. `ping_groups`: the first and last group allowed, as the writer's
/// user namespace numbers them.
pub fn sysctls(ping_groups: (u32, u32)) -> [(&'static str, String); 2] {
    let (first, last) = ping_groups;
    [
        ("net/ipv4/ip_unprivileged_port_start", "0".to_owned()),
        ("net/ipv4/ping_group_range", format!("{first} {last}")),
    ]
}

/// Every group may open ping sockets: Docker's range. Instances in a user
/// namespace have their own ids' range instead (the kernel refuses, or
/// shows as unmapped, groups the namespace does not map).
pub const ALL_GROUPS: (u32, u32) = (0, 2_147_483_647);
/// Writes `value` to `/proc/sys/<name>` for the calling thread's network
/// namespace. A kernel without the setting (older than 4.11 for the
/// unprivileged port start) is left as it is; a setting that cannot be
/// written (a node whose `/proc/sys` is read-only) is said in the log and
/// the instance starts without it, as it would have before.
fn set_sysctl(name: &str, value: &str) {
    let path = Path::new("/proc/sys").join(name);
    match std::fs::write(&path, value) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(setting = %path.display(), error = %e, "instance network setting not applied")
        }
    }
}

/// How a new namespace joins the node's bridge: a veth pair named `near`
/// on the host (on the bridge `bridge`) and `far` inside, the address
/// `ip/prefix` on `far`, the default route through `gateway`.
#[derive(Debug, Clone)]
pub struct Link {
    /// The host's end.
    pub near: String,
    /// The bridge it is a port of.
    pub bridge: String,
    /// The instance's end (`eth0`).
    pub far: String,
    /// The instance's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The bridge's address.
    pub gateway: Ipv4Addr,
    /// The host's groups that may open ping sockets in it.
    pub ping_groups: (u32, u32),
}

/// A new user namespace mapping `ids` and a network namespace it owns,
/// made by an `unshare --user --net` child: once the child's `cat` echoes
/// a byte both exist; the parent writes the maps (as the host's root it
/// may map any ids, `setgroups` left allowed), opens both, and closes the
/// child's input, which ends it.
fn user_and_net(ids: IdMap) -> io::Result<(File, File)> {
    let mut child = std::process::Command::new("unshare")
        .args(["--user", "--net", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| context(e, "unshare --user --net"))?;
    let made = (|| {
        let (Some(input), Some(output)) = (child.stdin.as_mut(), child.stdout.as_mut()) else {
            return Err(io::Error::other("unshare's pipes"));
        };
        input.write_all(b"x")?;
        let mut byte = [0u8; 1];
        if output.read(&mut byte)? != 1 {
            return Err(io::Error::other(
                "unshare --user --net ended without making the namespaces",
            ));
        }
        let proc = PathBuf::from(format!("/proc/{}", child.id()));
        let map = format!("0 {} {}\n", ids.host, ids.size);
        for file in ["uid_map", "gid_map"] {
            std::fs::write(proc.join(file), &map).map_err(|e| context(e, file))?;
        }
        let user = Held::open_other(&proc.join("ns/user"), "user")?.file;
        let net = Held::open_other(&proc.join("ns/net"), "net")?.file;
        Ok((user, net))
    })();
    drop(child.stdin.take());
    if made.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    match made {
        Err(e) => {
            let mut why = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut why);
            }
            let why = why.trim();
            Err(if why.is_empty() {
                context(e, "unshare --user --net")
            } else {
                context(e, &format!("unshare --user --net ({why})"))
            })
        }
        Ok(_) if !status.success() => {
            Err(io::Error::other(format!("unshare --user --net: {status}")))
        }
        Ok(both) => Ok(both),
    }
}

/// In a thread of its own: one route socket in the host's namespace,
/// opened before the thread leaves it (for the near end), then the new
/// namespace (`made`, entered, or one unshared here) with loopback up and,
/// when asked, the veth pair, address and route in it (netns-aware
/// sockets keep the namespace they were opened in).
fn enter_and_attach(made: Option<File>, link: Option<&Link>) -> io::Result<File> {
    let mut host = link.map(|_| Route::open()).transpose()?;
    let file = match made {
        Some(file) => {
            nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
            file
        }
        None => {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            File::open("/proc/thread-self/ns/net")?
        }
    };
    let mut inside = Route::open()?;
    inside.set_up(LOOPBACK_INDEX)?;
    for (name, value) in sysctls(link.map_or(ALL_GROUPS, |l| l.ping_groups)) {
        set_sysctl(name, &value);
    }
    if let (Some(link), Some(host)) = (link, host.as_mut()) {
        let bridge = host
            .link_index(&link.bridge)
            .map_err(|e| context(e, &format!("bridge {}", link.bridge)))?;
        host.add_veth(&link.near, bridge, &link.far, file.as_fd())
            .map_err(|e| context(e, &format!("veth {}", link.near)))?;
        let eth = inside.link_index(&link.far)?;
        inside.set_up(eth)?;
        inside.add_address(eth, link.ip, link.prefix)?;
        inside.add_default_route(eth, link.gateway)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    const HOST_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

    #[test]
    fn a_new_namespace_is_not_the_hosts_and_has_loopback_up_without_a_mount() {
        // As root, as the node runs.
        let host_port_start = std::fs::read_to_string(HOST_PORT_START).expect("the host's");
        let ns = Namespace::create().expect("namespace");
        let host = std::fs::metadata("/proc/self/ns/net").expect("own").ino();
        let ino = ns.inode().expect("inode");
        assert_ne!(ino, host);
        // Another process reaches it by the path, and sees lo up.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .expect("nsenter");
        assert!(out.status.success(), "{out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(line.contains(",UP"), "lo is up: {line}");
        // Docker's settings inside, the host's own untouched.
        for (name, value) in sysctls(ALL_GROUPS) {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={}", ns.path().display()))
                .args(["cat", &format!("/proc/sys/{name}")])
                .output()
                .expect("nsenter");
            assert!(out.status.success(), "{out:?}");
            let inside = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(inside, value, "{name} inside");
        }
        let host = std::fs::read_to_string(HOST_PORT_START).expect("the host's");
        assert_eq!(
            host, host_port_start,
            "the host's own setting is left alone"
        );
        // Nothing on the mount table names it.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&format!("net:[{ino}]")), "{mounts}");
        // Reopened by path: the same namespace; the host's own is refused.
        let again = Namespace::open(ns.path()).expect("reopen");
        assert_eq!(again.inode().expect("inode"), ino);
        let own = Namespace::of_process(std::process::id(), false).expect_err("the host's");
        assert_eq!(own.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_owned_namespace_belongs_to_a_user_namespace_of_its_own_mapping_the_ids() {
        let ids = IdMap {
            host: 1_000_000_000,
            size: 65_536,
        };
        let ns = Namespace::create_owned(None, ids).expect("owned namespace");
        let user = ns.owner_path().expect("its owner").to_path_buf();
        let host_user = std::fs::metadata("/proc/self/ns/user").expect("own").ino();
        assert_ne!(std::fs::metadata(&user).expect("owner").ino(), host_user);
        let enter = |net: &Path, cmd: &str| {
            std::process::Command::new("nsenter")
                .arg(format!("--user={}", user.display()))
                .arg(format!("--net={}", net.display()))
                .args(["sh", "-c", cmd])
                .output()
                .expect("nsenter")
        };
        let map = enter(
            ns.path(),
            "cat /proc/self/uid_map; cat /proc/self/gid_map; ip -o link show lo",
        );
        assert!(map.status.success(), "{map:?}");
        let text = String::from_utf8_lossy(&map.stdout);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["0", "1000000000", "65536"], "{text}");
        assert_eq!(lines[1], ["0", "1000000000", "65536"], "{text}");
        assert!(
            lines[2].iter().any(|w| w.contains(",UP")),
            "lo is up: {text}"
        );
        // Root of that user namespace administers this network (it owns
        // it), not one the host's user namespace owns.
        let write = "echo 5 > /proc/sys/net/ipv4/ip_unprivileged_port_start";
        let own = enter(ns.path(), write);
        assert!(own.status.success(), "{own:?}");
        let hosts = Namespace::create().expect("a host-owned namespace");
        assert!(hosts.owner_path().is_none());
        let refused = enter(hosts.path(), write);
        assert!(!refused.status.success(), "{refused:?}");
        // Adopted from a process `nsenter` (with `entered`) put in it.
        let adopt = |entered: &[String]| {
            let mut child = std::process::Command::new("nsenter")
                .args(entered)
                .args(["sleep", "30"])
                .spawn()
                .expect("a process inside");
            let pid = child.id();
            let adopted = (0..100)
                .find_map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    Namespace::of_process(pid, true).ok()
                })
                .expect("adopted");
            let _ = child.kill();
            let _ = child.wait();
            adopted
        };
        let net = format!("--net={}", ns.path().display());
        // From a process in both: both again.
        let adopted = adopt(&[format!("--user={}", user.display()), net.clone()]);
        assert_eq!(adopted.inode().expect("inode"), ns.inode().expect("inode"));
        let owner = |n: &Namespace| {
            std::fs::metadata(n.owner_path().expect("owner"))
                .expect("owner")
                .ino()
        };
        assert_eq!(owner(&adopted), owner(&ns));
        // A process of the host's user namespace in it (an instance run
        // as the host's root): the network namespace, no owner.
        let adopted = adopt(&[net]);
        assert_eq!(adopted.inode().expect("inode"), ns.inode().expect("inode"));
        assert!(adopted.owner_path().is_none());
    }

    /// Runs `cmd` and returns its output; panics when it fails.
    fn sh(cmd: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .expect("sh");
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bridge of the test's own, removed on drop.
    struct Bridge(String);

    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }

    #[test]
    fn an_attached_namespace_has_its_address_route_and_a_hairpin_port_on_the_bridge() {
        let tag = format!("{:06x}", std::process::id() & 0xff_ffff);
        let bridge = Bridge(format!("tbr{tag}"));
        sh(&format!(
            "ip link add {0} type bridge && ip addr add 10.231.7.1/24 dev {0} && ip link set {0} up",
            bridge.0
        ));
        let near = format!("tvn{tag}");
        let link = Link {
            near: near.clone(),
            bridge: bridge.0.clone(),
            far: "eth0".into(),
            ip: "10.231.7.9".parse().expect("ip"),
            prefix: 24,
            gateway: "10.231.7.1".parse().expect("gw"),
            ping_groups: ALL_GROUPS,
        };
        let ns = Namespace::create_attached(link.clone()).expect("attached");
        let enter = format!("nsenter --net={}", ns.path().display());
        let addrs = sh(&format!("{enter} ip -o -4 addr show dev eth0"));
        assert!(
            addrs.contains("inet 10.231.7.9/24 brd 10.231.7.255"),
            "{addrs}"
        );
        let routes = sh(&format!("{enter} ip -4 route show default"));
        assert!(
            routes.contains("default via 10.231.7.1 dev eth0"),
            "{routes}"
        );
        let lo = sh(&format!("{enter} ip -o link show lo"));
        assert!(lo.contains(",UP"), "{lo}");
        // The host's end: up, a port of the bridge, hairpin on; the
        // gateway answers from inside.
        let host = sh(&format!("ip -o link show {near}"));
        assert!(host.contains(&format!("master {}", bridge.0)), "{host}");
        assert!(host.contains(",UP"), "{host}");
        let mut route = Route::open().expect("route socket");
        let port = route
            .find_link(&near)
            .expect("lookup")
            .expect("the near end");
        let br = route
            .find_link(&bridge.0)
            .expect("lookup")
            .expect("the bridge");
        assert_eq!(
            port.master,
            Some(br.index),
            "read back as a port of the bridge"
        );
        assert_eq!(port.mac.len(), 6);
        assert!(route.find_link("nosuchlink0").expect("lookup").is_none());
        let hairpin = sh(&format!("cat /sys/class/net/{near}/brport/hairpin_mode"));
        assert_eq!(hairpin.trim(), "1");
        let listener = std::net::TcpListener::bind("10.231.7.1:0").expect("listen on the bridge");
        let port = listener.local_addr().expect("addr").port();
        sh(&format!(
            "{enter} timeout 5 bash -c 'exec 3<>/dev/tcp/10.231.7.1/{port}'"
        ));
        listener.accept().expect("the instance's connection");
        // The same name again is refused and leaves no namespace behind.
        let again = Namespace::create_attached(link).expect_err("taken");
        assert!(again.to_string().contains(&near), "{again}");
        // Dropping the namespace takes the pair with it.
        drop(ns);
        let gone = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            !Path::new("/sys/class/net").join(&near).exists()
        });
        assert!(gone, "{near} outlived its namespace");
    }
}

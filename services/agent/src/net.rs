//! Instance networks: every instance in a network namespace of its own,
//! attached to the node's bridge by a veth pair with an address from the
//! node's subnet — the network the CNI `bridge` plugin makes, made here
//! over netlink by the thread that creates the namespace ([`crate::netns`],
//! [`crate::netlink`]), with leases in `host-local`'s layout
//! ([`crate::lease`]). The plugin cost two processes per instance start
//! (`bridge`, then `host-local`), 17–24 ms of CPU each start. Instances
//! an earlier berth attached through the plugins are still checked and
//! deleted through them, as the CNI spec says (CHECK when a restarted agent
//! adopts one, DEL when it is gone).
//!
//! The rest is berth's own iptables rules, in chains named after the
//! bridge, written in one `iptables-restore` batch for all the instances
//! that start together (the `portmap` and `firewall` plugins made a dozen
//! iptables calls per instance, each serialised on the xtables lock and
//! each re-reading a ruleset that grows with the instances; one batch per
//! instance still read it once per instance):
//!
//! - `<tag>-IN`, jumped from `INPUT` for packets from the bridge: only
//!   replies reach the host, so an instance cannot open a connection to any
//!   listener of the node (NATS, the API, metrics, the node's health port),
//!   whichever host address it tries.
//! - `<tag>-FWD`, jumped first from `FORWARD` for packets from the bridge:
//!   replies pass; link-local addresses (cloud metadata) are dropped; a
//!   connection into the subnet passes only to an instance of the same
//!   group (owner): one rule per instance sends its traffic to its group's
//!   chain `<tag>-<hash>`, which accepts the group's addresses; anything
//!   else into the subnet is dropped, and anything else from the subnet
//!   goes out (masqueraded with the node's address). Replies into the
//!   bridge pass `FORWARD` too. Bridged traffic passes `FORWARD` only with
//!   `br_netfilter`, which [`Cni::open`] turns on.
//! - `<tag>-DNAT` (nat), jumped from `PREROUTING` and `OUTPUT` for local
//!   addresses: one DNAT rule per published port (a web instance's), as
//!   the `portmap` plugin made; connections to it from the host itself or
//!   from an instance are masqueraded so the reply comes back the same way.
//!
//! - `<tag>-PRIV`, `<tag>-PEERS`, `<tag>-OUT` and `<tag>-SVC` (nat): the
//!   roads to private services on other nodes and from other nodes into
//!   this one's ([`directory`]).
//!
//! Names: each instance's `/etc/hosts` lists the addresses of its group's
//! instances that carry a name (private services), rewritten in place as
//! instances come and go, and the service addresses of its group's private
//! services on other nodes only; `/etc/resolv.conf` is the host's without loopback
//! resolvers, which an instance cannot reach (on systemd-resolved's stub,
//! the servers it forwards to).
//!
//! State per instance is a file under the network's state dir, written
//! before anything is created, so whatever a crash leaves is found and
//! deleted at the next start.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use berth_schemas::ids::InstanceId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::lease::Leases;
use crate::netlink::Route;
use crate::netns::{IdMap, Link, Namespace};

mod directory;
pub use directory::{Directory, Peer, Remote};

/// How an instance joins the node's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Instances of one group (an owner) reach each other, no one else's.
    pub group: String,
    /// The name the group's other instances reach this one by (a private
    /// service's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port the instance listens on, published on a host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
}

/// A published port: `host_port` on the node's addresses reaches
/// `container_port` in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The port the instance listens on.
    pub container_port: u16,
    /// The node's port.
    pub host_port: u16,
}

/// An attached instance: its namespace and address, and the files mounted
/// as its `/etc/hosts` and `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network namespace, as other processes open it while the agent
    /// holds it (`/proc/<agent pid>/fd/<n>`; see [`crate::netns`]).
    pub netns: PathBuf,
    /// The user namespace that owns the network namespace, when it was
    /// made inside one for the instance to join (as `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<PathBuf>,
    /// Mounted as `/etc/hosts`.
    pub hosts: PathBuf,
    /// Mounted as `/etc/resolv.conf`.
    pub resolv: PathBuf,
    /// The instance's address on the bridge.
    pub ip: Ipv4Addr,
}

/// An IPv4 subnet (`10.77.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 8–28.
    pub prefix: u8,
}

impl Subnet {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.addr)
    }

    /// The bridge named after the subnet, so two nodes on one machine (with
    /// different subnets) never share one.
    pub fn bridge_name(&self) -> String {
        format!("bth{:08x}", u32::from(self.addr))
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a.b.c.d/prefix"))?;
        let addr: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .trim()
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be /8 to /28"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s} has host bits set"));
        }
        if addr.is_loopback() || addr.is_link_local() || addr.is_multicast() {
            return Err(format!("{s} is a loopback, link-local or multicast range"));
        }
        Ok(Subnet { addr, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where and how the node's instance network is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Instance addresses come from here; the bridge is its first address.
    pub subnet: Subnet,
    /// The CNI plugin binaries.
    pub cni_path: PathBuf,
    /// Per-instance state, hosts and resolv files, address leases.
    pub state_dir: PathBuf,
    /// TCP endpoints no instance may open a connection to, wherever they
    /// are: the control plane on other machines (the node's own listeners
    /// are closed to instances anyway).
    pub closed: Vec<std::net::SocketAddrV4>,
    /// Where the node's service addresses come from: one per private
    /// service of another node that its owner's instances here use
    /// ([`Directory`]). Never routed anywhere; only instances' connections
    /// to them are translated.
    pub services: Subnet,
    /// The user namespace instances run in (set by the agent from its
    /// own settings): their groups are the ones allowed ping sockets.
    pub user_namespace: Option<crate::bundle::UserNamespace>,
}

/// The host's groups allowed ping sockets in an instance's namespace:
/// all, or the instances' own in a user namespace.
pub fn ping_groups(ns: Option<crate::bundle::UserNamespace>) -> (u32, u32) {
    match ns {
        None => crate::netns::ALL_GROUPS,
        Some(u) => (u.host, u.host.saturating_add(u.size.saturating_sub(1))),
    }
}

/// The default range of service addresses.
pub const DEFAULT_SERVICES: Subnet = Subnet {
    addr: Ipv4Addr::new(10, 254, 0, 0),
    prefix: 16,
};

/// A network operation failed (the node's fault: retried, not the image's).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A CNI plugin refused or could not run.
    #[error("CNI {plugin} {op}: {message}")]
    Plugin {
        /// `bridge`, `portmap`, `firewall`.
        plugin: &'static str,
        /// `ADD`, `CHECK`, `DEL`.
        op: &'static str,
        /// The plugin's message.
        message: String,
    },
    /// `ip` or `iptables` failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        message: String,
    },
    /// Files of the network state.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The instance is not attached here.
    #[error("instance {0} has no network here")]
    Unknown(String),
    /// The instance has no port berth's own rule publishes.
    #[error("instance {0} has no port published by berth's own rule")]
    NotPublished(String),
    /// The veth pair, address or route could not be made or removed.
    #[error("instance link: {0}")]
    Link(std::io::Error),
    /// Every address of the subnet is held.
    #[error("no free address in {0}")]
    Full(String),
}

fn net_io(path: &Path) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is kept per instance (`<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    spec: NetworkSpec,
    /// The chain's result once ADD succeeded (DEL and CHECK need it).
    #[serde(default)]
    result: Option<Value>,
    /// The plugins it was attached with (DEL and CHECK run the same);
    /// `None`: attached before berth made its own port and forwarding
    /// rules ([`LEGACY_CHAIN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plugins: Option<Vec<String>>,
    /// The host's end of the veth pair berth made itself (no plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    veth: Option<String>,
    /// Whether its namespace was made inside a user namespace of its own
    /// (which an adopted instance's container process is in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    owned: bool,
}

impl State {
    fn plugins(&self) -> Vec<&'static str> {
        match &self.plugins {
            Some(p) => p
                .iter()
                .filter_map(|name| LEGACY_CHAIN.iter().copied().find(|k| k == name))
                .collect(),
            None if self.spec.publish.is_some() => LEGACY_CHAIN.to_vec(),
            None => LEGACY_CHAIN
                .iter()
                .copied()
                .filter(|p| *p != "portmap")
                .collect(),
        }
    }

    /// Whether berth's own rule publishes its port (not `portmap`).
    fn own_publish(&self) -> Option<Publish> {
        self.spec
            .publish
            .filter(|_| !self.plugins().contains(&"portmap"))
    }
}

/// An attached instance as the rules and hosts files see it.
#[derive(Debug, Clone)]
struct Member {
    group: String,
    name: Option<String>,
    ip: Ipv4Addr,
    /// Its port published by berth's own rule.
    publish: Option<Publish>,
}

impl Member {
    /// The member an instance with `state` is, at `ip`.
    fn of(state: &State, ip: Ipv4Addr) -> Member {
        Member {
            group: state.spec.group.clone(),
            name: state.spec.name.clone(),
            ip,
            publish: state.own_publish(),
        }
    }
}

/// A join waiting for its rules: whoever next holds the rules lock applies
/// every waiting join in one `iptables-restore`.
#[derive(Debug)]
struct Waiting {
    id: InstanceId,
    member: Member,
    done: tokio::sync::oneshot::Sender<Result<(), NetError>>,
}

/// Rule changes by table, as one `iptables-restore` input.
#[derive(Debug, Default)]
struct Rules {
    /// Chains created (declared before any rule, as the format wants).
    chains: String,
    filter: String,
    nat: String,
}

impl Rules {
    fn text(&self) -> String {
        let mut text = String::new();
        let filter = format!("{}{}", self.chains, self.filter);
        for (table, lines) in [("filter", &filter), ("nat", &self.nat)] {
            if !lines.is_empty() {
                text.push_str(&format!("*{table}\n{lines}COMMIT\n"));
            }
        }
        text
    }
}

/// Which way a member's rules change.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Added; `fresh`: the first of its group (its chain is created).
    Join { fresh: bool },
    /// Removed; `last`: the last of its group (its chain goes too).
    Leave { last: bool },
}

/// The chain instances were attached with before berth made their veth
/// pairs, addresses and rules itself (still deleted and checked through
/// it): `bridge` (veth, `host-local` address), then `portmap` and
/// `firewall`, which berth's own `iptables-restore` batches replaced
/// first.
const LEGACY_CHAIN: [&str; 3] = ["bridge", "portmap", "firewall"];
const CNI_VERSION: &str = "1.0.0";
const IFNAME: &str = "eth0";

/// The node's instance network.
#[derive(Debug)]
pub struct Cni {
    cfg: NetworkConfig,
    bridge: String,
    /// Prefix of berth's own chains (`BTH-<subnet hex>`).
    tag: String,
    /// The subnet as iptables takes it.
    subnet: String,
    members: Mutex<HashMap<InstanceId, Member>>,
    /// The instances' network namespaces, held open.
    spaces: Mutex<HashMap<InstanceId, Namespace>>,
    /// Instance addresses.
    leases: Leases,
    /// Serialises rule changes: a group chain is created by its first
    /// member and removed with its last.
    rules: tokio::sync::Mutex<()>,
    /// Joins queued for the next holder of `rules`.
    waiting: Mutex<Vec<Waiting>>,
    /// What the node knows of the others, as applied.
    directory: Mutex<directory::Applied>,
}

impl Cni {
    /// Prepare the node's network: state dirs, `br_netfilter` on, berth's
    /// base chains (rebuilt empty; [`Cni::recover`] adds the instances
    /// that are kept).
    pub async fn open(cfg: NetworkConfig) -> Result<Cni, NetError> {
        // Each instance's hosts and resolv files are in the state dir: an
        // instance's root in a user namespace must pass through it.
        let searcher = cfg.user_namespace.map(|u| u.host);
        for (d, searcher) in [
            (cfg.state_dir.clone(), searcher),
            (cfg.state_dir.join("ipam"), None),
        ] {
            crate::bundle::private_dir(&d, searcher).map_err(net_io(&d))?;
        }
        bridge_netfilter().await?;
        let bridge = cfg.subnet.bridge_name();
        let tag = format!("BTH-{:08x}", u32::from(cfg.subnet.addr));
        // host-local's directory for this network (its `name`, the
        // bridge's): addresses it handed out stay held.
        let dir = cfg.state_dir.join("ipam").join(&bridge);
        let leases =
            Leases::open(dir.clone(), cfg.subnet.addr, cfg.subnet.prefix).map_err(net_io(&dir))?;
        let cni = Cni {
            bridge,
            tag,
            subnet: cfg.subnet.to_string(),
            cfg,
            members: Mutex::default(),
            spaces: Mutex::default(),
            leases,
            rules: tokio::sync::Mutex::new(()),
            waiting: Mutex::default(),
            directory: Mutex::default(),
        };
        cni.ensure_bridge().await?;
        cni.base_rules().await?;
        Ok(cni)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The prefix of berth's iptables chains for this network.
    pub fn chain_prefix(&self) -> &str {
        &self.tag
    }

    fn members(&self) -> MutexGuard<'_, HashMap<InstanceId, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spaces(&self) -> MutexGuard<'_, HashMap<InstanceId, Namespace>> {
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_file(&self, id: &InstanceId) -> PathBuf {
        self.cfg.state_dir.join(format!("{id}.json"))
    }

    /// The hosts and resolv files.
    fn paths(&self, id: &InstanceId) -> (PathBuf, PathBuf) {
        (
            self.cfg.state_dir.join(format!("{id}.hosts")),
            self.cfg.state_dir.join(format!("{id}.resolv")),
        )
    }

    /// Where an earlier berth pinned the namespace with `ip netns add`.
    fn mounted_netns(id: &InstanceId) -> PathBuf {
        PathBuf::from(format!("/run/netns/{id}"))
    }

    /// The attachment of an attached instance.
    pub fn attachment(&self, id: &InstanceId) -> Option<Attachment> {
        let ip = self.members().get(id)?.ip;
        let (netns, userns) = {
            let spaces = self.spaces();
            let ns = spaces.get(id)?;
            (
                ns.path().to_path_buf(),
                ns.owner_path().map(Path::to_path_buf),
            )
        };
        let (hosts, resolv) = self.paths(id);
        Some(Attachment {
            netns,
            userns,
            hosts,
            resolv,
            ip,
        })
    }

    /// Give `id` its namespace, address, published port, rules and name
    /// files. On failure nothing of it is left.
    pub async fn attach(
        &self,
        id: &InstanceId,
        spec: &NetworkSpec,
    ) -> Result<Attachment, NetError> {
        let owner = id.to_string();
        let ip = self
            .leases
            .take(&owner)
            .map_err(net_io(Path::new("ipam")))?
            .ok_or_else(|| NetError::Full(self.subnet.clone()))?;
        let state = State {
            spec: spec.clone(),
            result: Some(self.result_of(ip)),
            plugins: Some(Vec::new()),
            veth: Some(veth_name(ip)),
            owned: self.cfg.user_namespace.is_some(),
        };
        // First: a crash from here on leaves a file the next start finds,
        // naming the address and the veth (a crash just before leaves a
        // lease no state names, which [`Cni::recover`] gives back).
        if let Err(e) = self.save(id, &state) {
            if let Err(undo) = self.leases.release(&owner, ip) {
                tracing::warn!(instance = %id, error = %undo, "giving back an unused address");
            }
            return Err(e);
        }
        match self.try_attach(id, &state, ip).await {
            Ok(a) => Ok(a),
            Err(e) => {
                if let Err(undo) = self.detach(id).await {
                    tracing::warn!(instance = %id, error = %undo, "undoing a failed attach");
                }
                Err(e)
            }
        }
    }

    /// Points `id`'s published host port at `container_port` in the
    /// instance (the port it turned out to listen on). The state file is
    /// written first: the node rebuilds every rule from the state files
    /// at start, so a crash in between leaves the new port. Refused for
    /// an instance published by the `portmap` plugin (an earlier berth's)
    /// or not published at all; a no-op when it is published there
    /// already.
    pub async fn republish(&self, id: &InstanceId, container_port: u16) -> Result<(), NetError> {
        let _rules = self.rules.lock().await;
        let mut state = self
            .load(id)
            .ok_or_else(|| NetError::Unknown(id.to_string()))?;
        let Some(old) = state.own_publish() else {
            return Err(NetError::NotPublished(id.to_string()));
        };
        if old.container_port == container_port {
            return Ok(());
        }
        let new = Publish {
            container_port,
            host_port: old.host_port,
        };
        state.spec.publish = Some(new);
        self.save(id, &state)?;
        let Some(mut member) = self.members().get(id).cloned() else {
            // Not joined yet (or any more): its rules come from the state.
            return Ok(());
        };
        let mut rules = Rules::default();
        rules
            .nat
            .push_str(&format!("-D {}", self.dnat_rule(member.ip, old)));
        rules
            .nat
            .push_str(&format!("-A {}", self.dnat_rule(member.ip, new)));
        if let Err(e) = iptables_restore(&rules.text()).await {
            state.spec.publish = Some(old);
            if let Err(undo) = self.save(id, &state) {
                tracing::warn!(instance = %id, error = %undo, "restoring the published port's state");
            }
            return Err(e);
        }
        member.publish = Some(new);
        self.members().insert(id.clone(), member);
        Ok(())
    }

    /// The DNAT rule (after `-A`/`-D`) publishing `p` to `ip`.
    fn dnat_rule(&self, ip: Ipv4Addr, p: Publish) -> String {
        format!(
            "{} -p tcp -m tcp --dport {} -j DNAT --to-destination {ip}:{}\n",
            self.dnat(),
            p.host_port,
            p.container_port
        )
    }

    async fn try_attach(
        &self,
        id: &InstanceId,
        state: &State,
        ip: Ipv4Addr,
    ) -> Result<Attachment, NetError> {
        let (hosts, resolv) = self.paths(id);
        let t0 = std::time::Instant::now();
        let ns = self.linked_namespace(state, ip).await?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "veth");
        let netns = ns.path().to_path_buf();
        let userns = ns.owner_path().map(Path::to_path_buf);
        self.spaces().insert(id.clone(), ns);
        write_in_place(&resolv, &resolv_conf())?;
        let t0 = std::time::Instant::now();
        self.join(id, state, ip).await?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "rules");
        Ok(Attachment {
            netns,
            userns,
            hosts,
            resolv,
            ip,
        })
    }

    /// What the state records of an address berth gave (shaped as a CNI
    /// result, as instances attached through the plugins record theirs).
    fn result_of(&self, ip: Ipv4Addr) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "ips": [{
                "address": format!("{ip}/{}", self.cfg.subnet.prefix),
                "gateway": self.gateway().to_string(),
            }],
        })
    }

    /// The bridge's address: the subnet's first.
    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.subnet.addr) + 1)
    }

    /// A new namespace joined to the bridge by the veth pair `state`
    /// names, with `ip`; made off the async threads.
    async fn linked_namespace(&self, state: &State, ip: Ipv4Addr) -> Result<Namespace, NetError> {
        let near = state
            .veth
            .clone()
            .ok_or_else(|| NetError::Link(std::io::Error::other("no veth name recorded")))?;
        let link = Link {
            near,
            bridge: self.bridge.clone(),
            far: IFNAME.to_owned(),
            ip,
            prefix: self.cfg.subnet.prefix,
            gateway: self.gateway(),
            ping_groups: ping_groups(self.cfg.user_namespace),
        };
        match self.cfg.user_namespace.filter(|_| state.owned) {
            Some(u) => {
                let ids = IdMap {
                    host: u.host,
                    size: u.size,
                };
                blocking(move || Namespace::create_owned(Some(link), ids)).await
            }
            None => blocking(move || Namespace::create_attached(link)).await,
        }
    }

    /// The node's bridge, with the gateway address, up; forwarding on.
    /// Made once per node start (the CNI `bridge` plugin made it at the
    /// first instance's ADD). Over netlink, not sysfs: `/sys/class/net`
    /// shows the namespace `/sys` was mounted in, which is not the node's
    /// when it runs in a network namespace of its own.
    async fn ensure_bridge(&self) -> Result<(), NetError> {
        let (name, gateway, prefix) = (self.bridge.clone(), self.gateway(), self.cfg.subnet.prefix);
        blocking(move || {
            let mut route = Route::open()?;
            let bridge = match route.find_link(&name)? {
                Some(b) => b,
                None => {
                    match route.add_bridge(&name) {
                        // Another node of the same subnet made it meanwhile.
                        Err(e) if e.raw_os_error() != Some(nix::libc::EEXIST) => return Err(e),
                        _ => {}
                    }
                    route.link(&name)?
                }
            };
            // Its own address set as its address: a bridge otherwise takes
            // the lowest address of its ports, which changes as instances
            // come and go and leaves their ARP caches naming a gateway
            // that moved.
            route.set_address(bridge.index, &bridge.mac)?;
            route.replace_address(bridge.index, gateway, prefix)?;
            route.set_up(bridge.index)
        })
        .await?;
        let knob = Path::new("/proc/sys/net/ipv4/ip_forward");
        std::fs::write(knob, b"1").map_err(net_io(knob))
    }

    /// Registers a member, adds its rules (its group's accept, the jump to
    /// its group's chain, its published port: one `iptables-restore` batch
    /// with those of every instance joining meanwhile) and rewrites its
    /// group's hosts files.
    async fn join(&self, id: &InstanceId, state: &State, ip: Ipv4Addr) -> Result<(), NetError> {
        let member = Member::of(state, ip);
        if member.publish.is_some() {
            // A published port answers on 127.0.0.1 too: the host's own
            // connections are sent over the bridge with a loopback source
            // (then masqueraded), which the kernel drops unless told.
            let knob = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge);
            std::fs::write(&knob, b"1").map_err(net_io(Path::new(&knob)))?;
        }
        let (done, applied) = tokio::sync::oneshot::channel();
        self.queued().push(Waiting {
            id: id.clone(),
            member: member.clone(),
            done,
        });
        {
            // Instances starting together wait here while one batch runs;
            // the next holder applies all their rules in one batch.
            let _rules = self.rules.lock().await;
            let waiting = std::mem::take(&mut *self.queued());
            let groups: HashSet<String> = waiting.iter().map(|w| w.member.group.clone()).collect();
            // Logged there; each join learns its own outcome below.
            let _ = self.apply_joins(waiting).await;
            if let Err(e) = self.refresh_groups(groups.iter()).await {
                tracing::warn!(error = %e, "rules into other nodes' private services");
            }
        }
        // Sent by whichever holder took this join, this one or an earlier.
        applied.await.unwrap_or_else(|_| {
            Err(NetError::Command {
                command: "iptables-restore".to_owned(),
                message: "the batch holding this instance's rules was abandoned".to_owned(),
            })
        })?;
        self.update_hosts(id, &member, true)
    }

    fn queued(&self) -> MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the rules of every waiting join in one `iptables-restore`
    /// (one process and one read of the ruleset, which grows with the
    /// instances, for all of them); when that batch fails, each join is
    /// tried alone, so one bad join fails only itself. Called holding
    /// `rules`; the batch's own outcome: how many `iptables-restore` runs
    /// it took (1 when it went as one), or the batch's error.
    async fn apply_joins(&self, waiting: Vec<Waiting>) -> Result<usize, NetError> {
        let mut failed = None;
        if waiting.len() > 1 {
            let members: Vec<&Member> = waiting.iter().map(|w| &w.member).collect();
            match self.add_rules(&members).await {
                Ok(()) => {
                    for w in waiting {
                        self.members().insert(w.id, w.member);
                        let _ = w.done.send(Ok(()));
                    }
                    return Ok(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, joins = waiting.len(), "a batch of instance rules failed; adding them one by one");
                    failed = Some(e);
                }
            }
        }
        let runs = waiting.len();
        for w in waiting {
            let result = self.add_rules(&[&w.member]).await;
            if result.is_ok() {
                self.members().insert(w.id, w.member);
            }
            let _ = w.done.send(result);
        }
        failed.map_or(Ok(runs), Err)
    }

    /// Adds `joining`'s rules in one `iptables-restore`. A batch commits
    /// table by table, so a failure may leave part of it (the filter rules
    /// of a batch whose nat rules failed): that part is taken out again.
    async fn add_rules(&self, joining: &[&Member]) -> Result<(), NetError> {
        let mut rules = Rules::default();
        let mut created = HashSet::new();
        let mut fresh = Vec::with_capacity(joining.len());
        for m in joining {
            let first = !self.members().values().any(|x| x.group == m.group)
                && created.insert(m.group.clone());
            self.member_rules(m, Change::Join { fresh: first }, &mut rules);
            fresh.push(first);
        }
        let Err(e) = iptables_restore(&rules.text()).await else {
            return Ok(());
        };
        // In reverse, so a group's new chain goes after its rules.
        let mut undo = Rules::default();
        for (m, first) in joining.iter().zip(&fresh).rev() {
            self.member_rules(m, Change::Leave { last: *first }, &mut undo);
        }
        if let Err(e) = remove_rules(&undo.text()).await {
            tracing::warn!(error = %e, "taking out the rules of a failed batch");
        }
        Err(e)
    }

    /// Appends to `rules` what adds (or removes) `m`'s rules.
    fn member_rules(&self, m: &Member, change: Change, rules: &mut Rules) {
        let chain = self.group_chain(&m.group);
        let (ip, subnet, fwd) = (m.ip, &self.subnet, self.fwd());
        let dnat = m.publish.map(|p| self.dnat_rule(ip, p));
        // A private instance's published port: for other nodes only.
        let private = (m.publish.is_some() && m.name.is_some()).then(|| {
            format!(
                "{} -d {ip}/32 -j {}\n",
                self.priv_chain(),
                self.peers_chain()
            )
        });
        let filter = &mut rules.filter;
        match change {
            Change::Join { fresh } => {
                if fresh {
                    rules.chains.push_str(&format!(":{chain} - [0:0]\n"));
                }
                filter.push_str(&format!("-A {chain} -d {ip}/32 -j ACCEPT\n"));
                // Before the closing rules of the subnet (rules 1-2 are
                // fixed).
                filter.push_str(&format!("-I {fwd} 3 -s {ip}/32 -d {subnet} -j {chain}\n"));
                if let Some(p) = &private {
                    filter.push_str(&format!("-A {p}"));
                }
                if let Some(d) = dnat {
                    rules.nat.push_str(&format!("-A {d}"));
                }
            }
            Change::Leave { last } => {
                filter.push_str(&format!("-D {fwd} -s {ip}/32 -d {subnet} -j {chain}\n"));
                filter.push_str(&format!("-D {chain} -d {ip}/32 -j ACCEPT\n"));
                if let Some(p) = &private {
                    filter.push_str(&format!("-D {p}"));
                }
                if last {
                    filter.push_str(&format!("-F {chain}\n-X {chain}\n"));
                }
                if let Some(d) = dnat {
                    rules.nat.push_str(&format!("-D {d}"));
                }
            }
        }
    }

    /// Remove `id`'s network: rules, DEL through the chain in reverse, the
    /// namespace and files. Idempotent; what it cannot remove is reported.
    pub async fn detach(&self, id: &InstanceId) -> Result<(), NetError> {
        let path = self.state_file(id);
        let state = self.load(id);
        let mut first_err: Option<NetError> = None;
        let mut keep = |r: Result<(), NetError>| {
            if let Err(e) = r {
                tracing::warn!(instance = %id, error = %e, "network cleanup");
                first_err.get_or_insert(e);
            }
        };
        let left = {
            let _rules = self.rules.lock().await;
            let m = self.members().remove(id);
            match m {
                Some(m) => {
                    keep(self.leave_rules(&m).await);
                    keep(self.refresh_groups(std::iter::once(&m.group)).await);
                    Some(m)
                }
                None => None,
            }
        };
        let (hosts, resolv) = self.paths(id);
        // Held until DEL is through (it removes the veth inside); a
        // namespace no longer held is passed as none, which DEL allows.
        let ns = self.spaces().remove(id);
        let mounted = Self::mounted_netns(id);
        let netns = match &ns {
            Some(ns) => ns.path().to_path_buf(),
            None if mounted.exists() => mounted.clone(),
            None => PathBuf::new(),
        };
        if let Some(state) = &state {
            for plugin in state.plugins().into_iter().rev() {
                let conf = self.conf(plugin, &state.spec, state.result.as_ref());
                keep(
                    self.plugin(plugin, "DEL", id, &netns, &conf)
                        .await
                        .map(|_| ()),
                );
            }
            // One of berth's own: its veth, then its address (the plugin's
            // DEL gave back its own) — only once the veth, named after the
            // address, is gone; otherwise the next start retries both.
            if let Some(veth) = &state.veth {
                match delete_link(veth.clone()).await {
                    Ok(()) => {
                        if let Some(ip) = state.result.as_ref().and_then(result_ip) {
                            let given = self.leases.release(&id.to_string(), ip);
                            keep(given.map_err(net_io(Path::new("ipam"))));
                        }
                    }
                    Err(e) => keep(Err(e)),
                }
            }
        }
        drop(ns);
        if mounted.exists() {
            keep(run("ip", &["netns", "del", &id.to_string()]).await);
        }
        for f in [&hosts, &resolv] {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    keep(Err(NetError::Io {
                        path: f.clone(),
                        source: e,
                    }));
                }
            }
        }
        if let Some(m) = left {
            keep(self.update_hosts(id, &m, false));
        }
        // Last: while anything above failed, the next start retries it.
        match first_err {
            Some(e) => Err(e),
            None => {
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(NetError::Io { path, source: e });
                    }
                }
                Ok(())
            }
        }
    }

    async fn leave_rules(&self, m: &Member) -> Result<(), NetError> {
        let last = !self.members().values().any(|x| x.group == m.group);
        let mut rules = Rules::default();
        self.member_rules(m, Change::Leave { last }, &mut rules);
        remove_rules(&rules.text()).await
    }

    /// After an agent restart: `keep` are the instances adopted, with the
    /// pid of their running container when it runs (their networks are
    /// held again, checked and their rules restored); every other network
    /// state left here is deleted, and every address no state names is
    /// given back.
    pub async fn recover(&self, keep: &HashMap<InstanceId, Option<u32>>) -> Result<(), NetError> {
        let dir = &self.cfg.state_dir;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(net_io(dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                found.push(id);
            }
        }
        // The instances whose state files stay: their addresses stay held.
        let mut named = HashSet::new();
        for id in found {
            let adopted = match keep.get(&id) {
                Some(pid) => self.readopt(&id, *pid).await,
                None => false,
            };
            if !adopted {
                tracing::info!(instance = %id, "removing a network left behind");
                // What cannot be removed now keeps its state file and is
                // tried again at the next start: one stuck leftover must
                // not keep the node from starting.
                if let Err(e) = self.detach(&id).await {
                    tracing::warn!(instance = %id, error = %e, "network left behind not fully removed");
                } else {
                    continue;
                }
            }
            named.insert(id.to_string());
        }
        // An address taken by an attach that crashed before its state
        // file was written.
        if let Err(e) = self.leases.keep_only(&named) {
            tracing::warn!(error = %e, "addresses no instance names not given back");
        }
        self.restore_directory().await;
        Ok(())
    }

    /// Hold an adopted instance's namespace again (its container's, or an
    /// earlier berth's `/run/netns` mount, which is then taken off the
    /// host's mount table), CHECK its network and restore its rules;
    /// `false` when it has no usable network (it is then deleted, and a
    /// container that restarts gets a new one).
    async fn readopt(&self, id: &InstanceId, pid: Option<u32>) -> bool {
        let Some(state) = self.load(id) else {
            return false;
        };
        let Some(ip) = state.result.as_ref().and_then(result_ip) else {
            return false;
        };
        let mounted = Self::mounted_netns(id);
        let ns = if mounted.exists() {
            Namespace::open(&mounted)
        } else if let Some(pid) = pid {
            Namespace::of_process(pid, state.owned)
        } else {
            return self.reattach(id, state, ip).await;
        };
        let Some(netns) = self.hold(id, ns.map_err(|e| e.to_string())) else {
            return false;
        };
        if mounted.exists() {
            if let Err(e) = run("ip", &["netns", "del", &id.to_string()]).await {
                tracing::warn!(instance = %id, error = %e, "namespace mount not removed");
            }
        }
        // One of berth's own: its CHECK is that its veth is still a port
        // of the bridge.
        if let Some(veth) = &state.veth {
            if !self.is_port(veth).await {
                tracing::warn!(instance = %id, veth, "adopted instance's veth is not on the bridge");
                return false;
            }
        }
        // The result names the namespace by the path it had at ADD; this
        // process reaches the same namespace by another.
        let result = state.result.as_ref().map(|r| in_sandbox(r, &netns));
        for plugin in state.plugins() {
            let conf = self.conf(plugin, &state.spec, result.as_ref());
            // portmap's CHECK also looks for the instance's chain in
            // ip6tables, where an IPv4-only instance never has one, so it
            // fails for every published instance; its ADD is idempotent
            // (present rules kept, missing ones restored), so it is applied
            // again instead.
            let op = if plugin == "portmap" { "ADD" } else { "CHECK" };
            if let Err(e) = self.plugin(plugin, op, id, &netns, &conf).await {
                tracing::warn!(instance = %id, error = %e, "adopted instance's network fails CHECK");
                return false;
            }
        }
        self.rejoin(id, &state, ip).await
    }

    /// Holds `ns` as an adopted instance's namespace; its path, or `None`
    /// (logged) when there is none.
    fn hold(&self, id: &InstanceId, ns: Result<Namespace, String>) -> Option<PathBuf> {
        match ns {
            Ok(ns) => {
                let path = ns.path().to_path_buf();
                self.spaces().insert(id.clone(), ns);
                Some(path)
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "no namespace for an adopted instance");
                None
            }
        }
    }

    /// [`Cni::join`] for an adopted instance; `false` when its rules could
    /// not be restored.
    async fn rejoin(&self, id: &InstanceId, state: &State, ip: Ipv4Addr) -> bool {
        match self.join(id, state, ip).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "adopted instance's rules not restored");
                false
            }
        }
    }

    /// An adopted instance whose container is not running (it crashed
    /// while no agent ran): its namespace went with the processes that
    /// held it. A new one (and a new veth pair) gets the same address —
    /// its lease is still held — and the node's record of the instance
    /// (its health check's address) stays true when it restarts. One
    /// attached through the `bridge` plugin becomes one of berth's own.
    /// `false` when that cannot be done (it is then deleted).
    async fn reattach(&self, id: &InstanceId, mut state: State, ip: Ipv4Addr) -> bool {
        let legacy_bridge = state.plugins() == ["bridge"];
        if !(state.veth.is_some() || legacy_bridge) || !self.leases.holds(&id.to_string(), ip) {
            return false;
        }
        // Its new namespace is made as this node makes them now.
        let owned = self.cfg.user_namespace.is_some();
        if legacy_bridge || state.owned != owned {
            if legacy_bridge {
                // Attached again by berth itself: from now on it is one of
                // its own (its host-local lease, same layout, is given back
                // by it).
                state.plugins = Some(Vec::new());
                state.veth = Some(veth_name(ip));
                state.result = Some(self.result_of(ip));
            }
            state.owned = owned;
            if let Err(e) = self.save(id, &state) {
                tracing::warn!(instance = %id, error = %e, "adopted instance's network state not saved");
                return false;
            }
        }
        let ns = self.linked_namespace(&state, ip).await;
        if self.hold(id, ns.map_err(|e| e.to_string())).is_none() {
            return false;
        }
        self.rejoin(id, &state, ip).await
    }

    /// Whether `veth` is a port of the node's bridge.
    async fn is_port(&self, veth: &str) -> bool {
        let (veth, bridge) = (veth.to_owned(), self.bridge.clone());
        let port = blocking(move || {
            let mut route = Route::open()?;
            let (Some(port), Some(bridge)) = (route.find_link(&veth)?, route.find_link(&bridge)?)
            else {
                return Ok(false);
            };
            Ok(port.master == Some(bridge.index))
        });
        port.await.unwrap_or(false)
    }

    /// Remove berth's chains and the bridge when no instance is attached
    /// (the node stops with nothing running): nothing of berth's is left
    /// on the machine. With instances left, everything stays for the next
    /// agent to adopt.
    pub async fn close(&self) -> Result<(), NetError> {
        let dir = &self.cfg.state_dir;
        let left = std::fs::read_dir(dir)
            .map_err(net_io(dir))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".json"));
        if left || !self.members().is_empty() {
            return Ok(());
        }
        let _rules = self.rules.lock().await;
        let (fwd, input) = (self.fwd(), format!("{}-IN", self.tag));
        // Where an earlier berth jumped to its forward chain from.
        let _ = iptables(&["-D", "CNI-ADMIN", "-i", &self.bridge, "-j", &fwd]).await;
        for (table, rule, _) in self.fixed_rules() {
            let mut del = vec!["-t", table, "-D"];
            del.extend(rule.iter().map(String::as_str));
            let _ = iptables(&del).await;
        }
        let mut chains = vec![
            ("filter", fwd),
            ("filter", input),
            ("filter", self.priv_chain()),
            ("filter", self.out_chain()),
            ("filter", self.peers_chain()),
            ("nat", self.dnat()),
            ("nat", self.svc_chain()),
        ];
        let groups = self.left_group_svc_chains().await.unwrap_or_default();
        chains.extend(groups.into_iter().map(|c| ("nat", c)));
        // Emptied first: one may jump to another.
        for (table, chain) in &chains {
            let _ = iptables(&["-t", table, "-F", chain]).await;
        }
        for (table, chain) in &chains {
            let _ = iptables(&["-t", table, "-X", chain]).await;
        }
        delete_link(self.bridge.clone()).await
    }

    fn fwd(&self) -> String {
        format!("{}-FWD", self.tag)
    }

    /// The nat chain holding every published port's DNAT rule.
    fn dnat(&self) -> String {
        format!("{}-DNAT", self.tag)
    }

    fn group_chain(&self, group: &str) -> String {
        format!("{}-{:08x}", self.tag, fnv1a(group))
    }

    /// The rules outside berth's chains, each `(table, rule, at the top)`:
    /// the jumps into them, replies into instances, and the address
    /// translation of the subnet and its published ports.
    fn fixed_rules(&self) -> Vec<(&'static str, Vec<String>, bool)> {
        let (b, subnet) = (self.bridge.as_str(), self.subnet.as_str());
        let (fwd, input, dnat) = (self.fwd(), format!("{}-IN", self.tag), self.dnat());
        let established = "-m conntrack --ctstate RELATED,ESTABLISHED";
        let rules = [
            // Everything instances send passes berth's chain first.
            ("filter", format!("FORWARD -i {b} -j {fwd}"), true),
            // Replies to what instances opened get in (what the CNI
            // firewall plugin allowed per instance).
            (
                "filter",
                format!("FORWARD -o {b} {established} -j ACCEPT"),
                true,
            ),
            ("filter", format!("INPUT -i {b} -j {input}"), true),
            // Connections from elsewhere into private instances: from
            // other nodes only.
            (
                "filter",
                format!("FORWARD ! -i {b} -o {b} -j {}", self.priv_chain()),
                true,
            ),
            // Instances' connections to their owner's services on other
            // nodes.
            (
                "nat",
                format!(
                    "PREROUTING -i {b} -d {} -j {}",
                    self.cfg.services,
                    self.svc_chain()
                ),
                false,
            ),
            // Published ports, on every local address.
            (
                "nat",
                format!("PREROUTING -m addrtype --dst-type LOCAL -j {dnat}"),
                false,
            ),
            (
                "nat",
                format!("OUTPUT -m addrtype --dst-type LOCAL -j {dnat}"),
                false,
            ),
            // Outbound traffic leaves with the node's address.
            (
                "nat",
                format!("POSTROUTING -s {subnet} ! -d {subnet} -j MASQUERADE"),
                false,
            ),
            // A published port reached from the host itself (loopback
            // source) or from an instance (hairpin): the reply must come
            // back through this host, so the source becomes the bridge's.
            (
                "nat",
                format!("POSTROUTING -o {b} -s 127.0.0.0/8 -j MASQUERADE"),
                false,
            ),
            (
                "nat",
                format!("POSTROUTING -o {b} -s {subnet} -m conntrack --ctstate DNAT -j MASQUERADE"),
                false,
            ),
        ];
        rules
            .into_iter()
            .map(|(t, r, first)| (t, r.split(' ').map(str::to_owned).collect(), first))
            .collect()
    }

    /// Base chains, rebuilt empty: replies only into the host; into the
    /// subnet only what a group chain accepts; never link-local; out of
    /// the subnet anything else from it.
    async fn base_rules(&self) -> Result<(), NetError> {
        let _rules = self.rules.lock().await;
        let (fwd, input, dnat) = (self.fwd(), format!("{}-IN", self.tag), self.dnat());
        let subnet = self.cfg.subnet.to_string();
        // Group chains a previous process left (their members are re-added
        // by recover).
        let listed = run_output("iptables", &["-w", "-S"]).await?;
        let prefix = format!("-N {}-", self.tag);
        let groups: Vec<String> = listed
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| format!("{}-{rest}", self.tag))
            .filter(|c| *c != fwd && *c != input && !self.is_directory_chain(c))
            .collect();
        let left_svc = self.left_group_svc_chains().await?;
        let (private, peers, out, svc) = (
            self.priv_chain(),
            self.peers_chain(),
            self.out_chain(),
            self.svc_chain(),
        );
        // An earlier berth jumped to the forward chain from the firewall
        // plugin's CNI-ADMIN chain.
        let _ = iptables(&["-D", "CNI-ADMIN", "-i", &self.bridge, "-j", &fwd]).await;
        // One batch: the base chains declared (so created, or flushed when
        // they exist), the group chains flushed and deleted — the base
        // chains jump to them, so only once those are flushed too.
        let mut batch = format!(
            "*filter\n:{fwd} - [0:0]\n:{input} - [0:0]\n:{private} - [0:0]\n:{peers} - [0:0]\n:{out} - [0:0]\n"
        );
        for chain in &groups {
            batch.push_str(&format!("-F {chain}\n"));
        }
        for chain in &groups {
            batch.push_str(&format!("-X {chain}\n"));
        }
        let established = "-m conntrack --ctstate RELATED,ESTABLISHED";
        batch.push_str(&format!(
            "-A {input} {established} -j RETURN\n\
             -A {input} -j DROP\n\
             -A {fwd} {established} -j ACCEPT\n\
             -A {fwd} -d 169.254.0.0/16 -j DROP\n\
             -A {private} {established} -j RETURN\n"
        ));
        // The peers as last saved, at once: instances kept from the last
        // process must not reach other nodes' host ports meanwhile.
        let saved = self.saved_directory().map(|d| d.peers).unwrap_or_default();
        batch.push_str(&self.peer_rules(&saved));
        // The control plane elsewhere (each instance's own rules go in
        // before these: they only reach into the subnet).
        for e in &self.cfg.closed {
            batch.push_str(&format!(
                "-A {fwd} -d {}/32 -p tcp -m tcp --dport {} -j DROP\n",
                e.ip(),
                e.port()
            ));
        }
        // Service addresses are only ever translated (an instance of
        // another owner has no rule to, nor a port the service does not
        // serve on: refused at once rather than left to time out); other
        // nodes' host ports only through them.
        let services = self.cfg.services;
        batch.push_str(&format!(
            "-A {fwd} -d {services} -p tcp -j REJECT --reject-with tcp-reset\n\
             -A {fwd} -d {services} -j DROP\n\
             -A {fwd} -j {out}\n\
             -A {fwd} -d {subnet} -j DROP\n\
             -A {fwd} -s {subnet} -j ACCEPT\n\
             COMMIT\n*nat\n:{dnat} - [0:0]\n:{svc} - [0:0]\n"
        ));
        for chain in &left_svc {
            batch.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        batch.push_str("COMMIT\n");
        iptables_restore(&batch).await?;
        for (table, rule, first) in self.fixed_rules() {
            ensure_rule(table, &rule, first).await?;
        }
        Ok(())
    }

    /// One plugin's network configuration, with the previous result and
    /// the published port.
    fn conf(&self, plugin: &str, spec: &NetworkSpec, prev: Option<&Value>) -> Value {
        let mut conf = match plugin {
            "bridge" => json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                // One masquerade rule for the subnet (base rules) instead
                // of the plugin's chain of three per instance: iptables
                // calls serialise on the xtables lock, so each one saved
                // counts when many instances start at once.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.cfg.subnet.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.cfg.state_dir.join("ipam"),
                },
            }),
            "portmap" => {
                let maps: Vec<Value> = spec
                    .publish
                    .iter()
                    .map(|p| json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": "tcp"}))
                    .collect();
                json!({
                    "type": "portmap",
                    "snat": true,
                    "capabilities": { "portMappings": true },
                    "runtimeConfig": { "portMappings": maps },
                })
            }
            _ => json!({ "type": "firewall", "backend": "iptables" }),
        };
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(self.bridge);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// Run one plugin (`CNI_COMMAND=op`); its result on ADD.
    async fn plugin(
        &self,
        plugin: &'static str,
        op: &'static str,
        id: &InstanceId,
        netns: &Path,
        conf: &Value,
    ) -> Result<Option<Value>, NetError> {
        let fail = |message: String| NetError::Plugin {
            plugin,
            op,
            message,
        };
        let mut cmd = tokio::process::Command::new(self.cfg.cni_path.join(plugin));
        cmd.env("CNI_COMMAND", op)
            .env("CNI_CONTAINERID", id.to_string())
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cfg.cni_path);
        let bytes = serde_json::to_vec(conf).map_err(|e| fail(e.to_string()))?;
        let out = feed(cmd, &bytes).await.map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            // The plugin's error is JSON on stdout ({code, msg, details}).
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let m = v["msg"].as_str()?.to_owned();
                    Some(match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{m}: {d}"),
                        _ => m,
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned());
            return Err(fail(msg));
        }
        if op != "ADD" {
            return Ok(None);
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| fail(format!("result is not JSON: {e}")))
    }

    /// The hosts files a member's coming or going changes: a named
    /// member is listed in every file of its group, so all are rewritten;
    /// an unnamed one (most: only private services carry a name) only in
    /// its own, written when it joins. Rewriting the whole group for every
    /// instance made each start cost a file write per instance of its owner
    /// on the node.
    fn update_hosts(&self, id: &InstanceId, m: &Member, joined: bool) -> Result<(), NetError> {
        if m.name.as_deref().is_some_and(is_label) {
            return self.write_hosts(&m.group);
        }
        if joined {
            let named = self.named(&m.group);
            write_in_place(&self.paths(id).0, &hosts_text(id, m.ip, &named))?;
        }
        Ok(())
    }

    /// The named members of `group`, as its hosts files list them.
    fn named(&self, group: &str) -> Vec<(String, Ipv4Addr)> {
        let mut named: Vec<(String, Ipv4Addr)> = self
            .members()
            .values()
            .filter(|m| m.group == group)
            .filter_map(|m| Some((m.name.as_deref().filter(|n| is_label(n))?.to_owned(), m.ip)))
            .collect();
        // Its services elsewhere, by their service addresses, unless an
        // instance here answers to the name.
        let local: HashSet<String> = named.iter().map(|(n, _)| n.clone()).collect();
        named.extend(
            self.applied()
                .named(group)
                .into_iter()
                .filter(|(n, _)| !local.contains(n)),
        );
        named.sort();
        named
    }

    /// Rewrite the hosts file of every member of `group` (in place: the
    /// file is bind-mounted, a rename would not be seen).
    fn write_hosts(&self, group: &str) -> Result<(), NetError> {
        let members: Vec<(InstanceId, Ipv4Addr)> = self
            .members()
            .iter()
            .filter(|(_, m)| m.group == group)
            .map(|(i, m)| (i.clone(), m.ip))
            .collect();
        let named = self.named(group);
        for (id, ip) in &members {
            write_in_place(&self.paths(id).0, &hosts_text(id, *ip, &named))?;
        }
        Ok(())
    }

    /// `id`'s state as [`Cni::save`] wrote it (`None`: none, or not
    /// readable).
    fn load(&self, id: &InstanceId) -> Option<State> {
        let bytes = std::fs::read(self.state_file(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Save the state file (atomically).
    fn save(&self, id: &InstanceId, state: &State) -> Result<(), NetError> {
        save_json(&self.state_file(id), state)
    }
}

/// The first IPv4 address of a CNI result.
/// `result` with its interfaces inside a namespace (those with a
/// `sandbox`) placed at `netns`.
fn in_sandbox(result: &Value, netns: &Path) -> Value {
    let mut r = result.clone();
    if let Some(ifaces) = r.get_mut("interfaces").and_then(Value::as_array_mut) {
        for i in ifaces {
            if let Some(s) = i.get_mut("sandbox").filter(|s| s.is_string()) {
                *s = json!(netns);
            }
        }
    }
    r
}

/// The host's end of the veth pair of the instance holding `ip`: named
/// by its address, so unique on the host by construction (an address is
/// leased to one instance at a time, nodes on one host have subnets of
/// their own, and a veth goes before its address is given back). Fits an
/// interface name (15 bytes); earlier names (`vb` + 13 hex digits of a
/// hash of the instance id) are kept by the instances that recorded them.
fn veth_name(ip: Ipv4Addr) -> String {
    format!("vb{:08x}", u32::from(ip))
}

/// `ip link del <name>` off the async threads (the kernel waits for its
/// readers to leave the device); none left is fine.
async fn delete_link(name: String) -> Result<(), NetError> {
    blocking(move || Route::open()?.delete_link(&name).map(|_| ())).await
}

/// Netlink work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(NetError::Link)
}

fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        a.split('/').next()?.parse().ok()
    })
}

/// Where systemd-resolved lists the servers it forwards to: the host's
/// `/etc/resolv.conf` names only its stub (`127.0.0.53`) then.
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

/// An instance's `/etc/resolv.conf`: the host's without loopback
/// nameservers (unreachable from an instance's namespace). When none is
/// left — a host on systemd-resolved's stub, as Ubuntu's are — the servers
/// systemd-resolved forwards to, as Docker does; when there are none
/// either, Docker's public fallback.
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = std::fs::read_to_string(RESOLVED_UPSTREAMS).ok();
    instance_resolv_conf(&host, upstreams.as_deref())
}

/// [`resolv_conf`] from the host's file and systemd-resolved's.
fn instance_resolv_conf(host: &str, resolved: Option<&str>) -> String {
    match reachable_resolvers(host) {
        Some(conf) => conf,
        None => resolved
            .and_then(reachable_resolvers)
            .unwrap_or_else(|| "nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_owned()),
    }
}

/// `conf`'s `nameserver` lines but loopback ones, and its `search`,
/// `options` and `domain` lines; `None` when no nameserver is left.
fn reachable_resolvers(conf: &str) -> Option<String> {
    let mut out = String::new();
    let mut servers = 0;
    for line in conf.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(ip)) => {
                let local = ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
                if !local {
                    servers += 1;
                    out.push_str(line);
                    out.push('\n');
                }
            }
            (Some("search" | "options" | "domain"), _) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    (servers > 0).then_some(out)
}

/// Names are DNS labels by the service's rules; anything else (a line
/// break, a space) would forge hosts entries, so it is left out.
fn is_label(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An instance's `/etc/hosts`: loopback, its own id, its group's names.
fn hosts_text(id: &InstanceId, ip: Ipv4Addr, named: &[(String, Ipv4Addr)]) -> String {
    let mut text =
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{id}\n");
    for (name, ip) in named {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    text
}

/// Writes `value` as JSON to `path` atomically (a file beside it, then
/// renamed over it).
fn save_json(path: &Path, value: &impl Serialize) -> Result<(), NetError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(value).map_err(|e| NetError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, bytes).map_err(net_io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(net_io(path))
}

fn write_in_place(path: &Path, text: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(net_io(path))?;
    f.write_all(text.as_bytes()).map_err(net_io(path))
}

/// Bridged traffic must pass iptables, or instances on one bridge would
/// reach each other whatever the rules say.
async fn bridge_netfilter() -> Result<(), NetError> {
    let knob = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !knob.exists() {
        // Loaded on demand where it is a module.
        let _ = run("modprobe", &["br_netfilter"]).await;
    }
    std::fs::write(knob, b"1").map_err(net_io(knob))
}

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

async fn run(cmd: &str, args: &[&str]) -> Result<(), NetError> {
    run_output(cmd, args).await.map(|_| ())
}

async fn run_output(cmd: &str, args: &[&str]) -> Result<String, NetError> {
    let command = || format!("{cmd} {}", args.join(" "));
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| NetError::Command {
            command: command(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: command(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn iptables(args: &[&str]) -> Result<(), NetError> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all).await
}

/// Add `rule` (`chain, spec…`) to `table` unless present; `first`: at
/// the top.
async fn ensure_rule(table: &str, rule: &[String], first: bool) -> Result<(), NetError> {
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    let mut check = vec!["-t", table, "-C"];
    check.extend_from_slice(&rule);
    if iptables(&check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if first { "-I" } else { "-A" }, rule[0]];
    if first {
        add.push("1");
    }
    add.extend_from_slice(&rule[1..]);
    iptables(&add).await
}

/// Apply a batch of rule changes in one `iptables-restore` (one process,
/// one lock, one read of the ruleset; all or nothing), leaving every other
/// rule as it is.
async fn iptables_restore(batch: &str) -> Result<(), NetError> {
    let fail = |message: String| NetError::Command {
        command: format!("iptables-restore --noflush <<< {batch:?}"),
        message,
    };
    let mut cmd = tokio::process::Command::new("iptables-restore");
    cmd.args(["-w", "--noflush"]);
    let out = feed(cmd, batch.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// Removes the rules and chains `batch` deletes. One already gone fails a
/// whole batch: then the rest is removed one by one, and only what is still
/// there and cannot be removed counts.
async fn remove_rules(batch: &str) -> Result<(), NetError> {
    if iptables_restore(batch).await.is_ok() {
        return Ok(());
    }
    let mut first_err = None;
    let mut table = "filter";
    for line in batch.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t == "nat" { "nat" } else { "filter" };
            continue;
        }
        if line == "COMMIT" {
            continue;
        }
        let one = format!("*{table}\n{line}\nCOMMIT\n");
        match iptables_restore(&one).await {
            Err(NetError::Command { message, .. })
                if message.contains("does not exist")
                    || message.contains("Bad rule")
                    || message.contains("No chain/target/match") => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
            Ok(()) => {}
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Run `cmd` with `input` on its stdin; its output once it exits.
async fn feed(
    mut cmd: tokio::process::Command,
    input: &[u8],
) -> std::io::Result<std::process::Output> {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await?;
    }
    child.wait_with_output().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn instances_resolve_through_what_the_host_resolves_through() {
        // Loopback resolvers are left out; the rest is kept.
        let host = "# comment\nnameserver 127.0.0.1\nnameserver 10.0.0.2\nsearch corp.example\noptions ndots:2\n";
        assert_eq!(
            instance_resolv_conf(host, None),
            "nameserver 10.0.0.2\nsearch corp.example\noptions ndots:2\n"
        );
        // systemd-resolved's stub: the servers it forwards to.
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n";
        let upstreams = "nameserver 10.0.0.2\nnameserver ::1\nsearch corp.example\n";
        assert_eq!(
            instance_resolv_conf(stub, Some(upstreams)),
            "nameserver 10.0.0.2\nsearch corp.example\n"
        );
        // Nothing reachable anywhere: Docker's public resolvers.
        let fallback = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";
        assert_eq!(instance_resolv_conf(stub, None), fallback);
        assert_eq!(
            instance_resolv_conf(stub, Some("nameserver 127.0.0.1\n")),
            fallback
        );
        assert_eq!(instance_resolv_conf("", None), fallback);
    }

    #[test]
    fn subnets_parse_and_name_their_bridge() {
        let s: Subnet = "10.77.0.0/16".parse().unwrap();
        assert!(s.contains(Ipv4Addr::new(10, 77, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 78, 0, 1)));
        assert_eq!(s.bridge_name(), "bth0a4d0000");
        assert!(s.bridge_name().len() <= 15, "interface names are 15 bytes");
        assert_eq!(s.to_string(), "10.77.0.0/16");
        for bad in [
            "10.77.0.1/16",
            "10.77.0.0",
            "10.77.0.0/30",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "x/16",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instances_attached_with_the_plugins_keep_them_for_check_and_del() {
        let publish = r#"{"spec":{"group":"g","publish":{"container_port":80,"host_port":20001}}}"#;
        let old: State = serde_json::from_str(publish).unwrap();
        assert_eq!(old.plugins(), ["bridge", "portmap", "firewall"]);
        assert_eq!(old.own_publish(), None, "portmap publishes it");
        let old: State = serde_json::from_str(r#"{"spec":{"group":"g"}}"#).unwrap();
        assert_eq!(old.plugins(), ["bridge", "firewall"]);
        let mut bridged: State = serde_json::from_str(publish).unwrap();
        bridged.plugins = Some(vec!["bridge".to_owned()]);
        let bridged: State =
            serde_json::from_slice(&serde_json::to_vec(&bridged).unwrap()).unwrap();
        assert_eq!(bridged.plugins(), ["bridge"]);
        assert_eq!(
            bridged.own_publish().map(|p| p.host_port),
            Some(20001),
            "berth's rule publishes it"
        );
        // Attached by berth itself: no plugin to run, its veth named.
        let mut own: State = serde_json::from_str(publish).unwrap();
        own.plugins = Some(Vec::new());
        own.veth = Some("vb0123456789abc".to_owned());
        let own: State = serde_json::from_slice(&serde_json::to_vec(&own).unwrap()).unwrap();
        assert!(own.plugins().is_empty());
        assert_eq!(own.veth.as_deref(), Some("vb0123456789abc"));
        assert_eq!(own.own_publish().map(|p| p.host_port), Some(20001));
    }

    #[test]
    fn an_adopted_result_names_the_namespace_where_it_is_held_now() {
        let r = json!({
            "interfaces": [
                { "name": "bth0a4d0000", "mac": "aa" },
                { "name": "veth1", "mac": "bb" },
                { "name": "eth0", "mac": "cc", "sandbox": "/proc/1/fd/9" },
            ],
            "ips": [{ "address": "10.77.0.5/16", "interface": 2 }],
        });
        let moved = in_sandbox(&r, Path::new("/proc/2/fd/7"));
        assert_eq!(moved["interfaces"][2]["sandbox"], "/proc/2/fd/7");
        assert!(moved["interfaces"][0].get("sandbox").is_none());
        assert_eq!(moved["ips"], r["ips"]);
    }

    #[test]
    fn veth_names_fit_an_interface_name_and_differ_per_address() {
        let (a, b) = (Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 1, 2));
        let (na, nb) = (veth_name(a), veth_name(b));
        assert_eq!(na, "vb0a580002");
        assert!(na.len() <= 15);
        assert_ne!(na, nb);
        // Never one of the names instances attached earlier recorded.
        assert_ne!(na.len(), "vb0123456789abc".len());
    }

    #[test]
    fn results_give_the_address() {
        let r = json!({"ips": [{"address": "10.77.0.5/16", "gateway": "10.77.0.1"}]});
        assert_eq!(result_ip(&r), Some(Ipv4Addr::new(10, 77, 0, 5)));
        assert_eq!(result_ip(&json!({})), None);
    }
    /// A network of the test's own on a subnet no other test of this
    /// binary uses; its instances detached and the network closed on
    /// drop, also when the test fails.
    struct TestNet {
        cni: std::sync::Arc<Cni>,
        ids: Vec<InstanceId>,
        _dir: tempfile::TempDir,
    }

    impl TestNet {
        async fn open(n: u32) -> TestNet {
            let dir = tempfile::tempdir().unwrap();
            let subnet = format!("10.232.{}.0/24", (std::process::id() + n) % 250);
            let cfg = NetworkConfig {
                subnet: subnet.parse().unwrap(),
                cni_path: "/usr/lib/cni".into(),
                state_dir: dir.path().join("net"),
                closed: Vec::new(),
                services: DEFAULT_SERVICES,
                user_namespace: None,
            };
            let cni = std::sync::Arc::new(Cni::open(cfg).await.unwrap());
            TestNet {
                cni,
                ids: Vec::new(),
                _dir: dir,
            }
        }

        /// A member of `group` with the `n`th address, published or not.
        fn member(&mut self, n: u8, group: &str, publish: bool) -> (InstanceId, State) {
            let id = InstanceId::generate();
            self.ids.push(id.clone());
            let mut ip = self.cni.gateway().octets();
            ip[3] = 10 + n;
            let spec = NetworkSpec {
                group: group.into(),
                name: None,
                publish: publish.then_some(Publish {
                    container_port: 8080,
                    host_port: 30_000 + u16::from(n),
                }),
            };
            let state = State {
                spec,
                result: Some(self.cni.result_of(Ipv4Addr::from(ip))),
                plugins: Some(Vec::new()),
                veth: None,
                owned: false,
            };
            (id, state)
        }

        fn chain(&self, table: &str, chain: &str) -> Option<Vec<String>> {
            let out = std::process::Command::new("iptables")
                .args(["-w", "-t", table, "-S", chain])
                .output()
                .unwrap();
            out.status.success().then(|| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .map(str::to_owned)
                    .collect()
            })
        }

        /// The member jumps of the forward chain (its fixed rules left out).
        fn jumps(&self) -> Vec<String> {
            let group = format!("-j {}-", self.cni.tag);
            let out = format!("-j {}", self.cni.out_chain());
            let mut v: Vec<String> = self
                .chain("filter", &self.cni.fwd())
                .unwrap()
                .into_iter()
                .filter(|l| l.contains(&group) && !l.ends_with(&out))
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TestNet {
        fn drop(&mut self) {
            let (cni, ids) = (self.cni.clone(), std::mem::take(&mut self.ids));
            let dnat = cni.dnat();
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-t", "nat", "-E", &format!("{dnat}-X"), &dnat])
                .output();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for id in &ids {
                        let _ = cni.detach(id).await;
                    }
                    cni.close().await
                })
            })
            .join();
        }
    }

    fn waiting(
        id: &InstanceId,
        state: &State,
    ) -> (
        Waiting,
        tokio::sync::oneshot::Receiver<Result<(), NetError>>,
    ) {
        let (done, rx) = tokio::sync::oneshot::channel();
        let ip = state.result.as_ref().and_then(result_ip).unwrap();
        let w = Waiting {
            id: id.clone(),
            member: Member::of(state, ip),
            done,
        };
        (w, rx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rules_of_instances_starting_together_go_in_one_batch() {
        let mut net = TestNet::open(0).await;
        let joining: Vec<(InstanceId, State)> = (0..6)
            .map(|n| net.member(n, if n < 3 { "a" } else { "b" }, n % 3 == 1))
            .collect();
        // While the rules are held, every join waits in the queue.
        let held = net.cni.rules.lock().await;
        let tasks: Vec<_> = joining
            .iter()
            .map(|(id, state)| {
                let (cni, id, state) = (net.cni.clone(), id.clone(), state.clone());
                let ip = state.result.as_ref().and_then(result_ip).unwrap();
                tokio::spawn(async move { cni.join(&id, &state, ip).await })
            })
            .collect();
        for _ in 0..500 {
            if net.cni.queued().len() == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(net.cni.queued().len(), 6, "every join waits in the queue");
        // The next holder takes them all, and adds them in one batch.
        let all = std::mem::take(&mut *net.cni.queued());
        assert_eq!(
            net.cni.apply_joins(all).await.unwrap(),
            1,
            "one iptables-restore for all six"
        );
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let (a, b) = (net.cni.group_chain("a"), net.cni.group_chain("b"));
        let mut want = Vec::new();
        for (n, (_, state)) in joining.iter().enumerate() {
            let ip = state.result.as_ref().and_then(result_ip).unwrap();
            let chain = if n < 3 { &a } else { &b };
            want.push(format!(
                "-A {} -s {ip}/32 -d {} -j {chain}",
                net.cni.fwd(),
                net.cni.subnet
            ));
        }
        want.sort();
        assert_eq!(net.jumps(), want, "one jump per instance, to its group");
        for (chain, members) in [(&a, &joining[..3]), (&b, &joining[3..])] {
            let mut accepts: Vec<String> = members
                .iter()
                .map(|(_, s)| {
                    let ip = s.result.as_ref().and_then(result_ip).unwrap();
                    format!("-A {chain} -d {ip}/32 -j ACCEPT")
                })
                .collect();
            let mut have = net.chain("filter", chain).unwrap();
            have.sort();
            accepts.sort();
            assert_eq!(have, accepts, "one accept per member of the group");
        }
        let dnat = net.chain("nat", &net.cni.dnat()).unwrap();
        assert_eq!(dnat.len(), 2, "{dnat:?}");
        for (_, state) in [&joining[1], &joining[4]] {
            let (ip, port) = (
                state.result.as_ref().and_then(result_ip).unwrap(),
                state.spec.publish.unwrap().host_port,
            );
            let rule = format!("--dport {port} -j DNAT --to-destination {ip}:8080");
            assert!(
                dnat.iter().any(|r| r.ends_with(&rule)),
                "{rule} in {dnat:?}"
            );
        }
        assert_eq!(net.cni.members().len(), 6);
        // One more of a group that has members keeps theirs.
        let (id, state) = net.member(6, "a", false);
        let ip = state.result.as_ref().and_then(result_ip).unwrap();
        net.cni.join(&id, &state, ip).await.unwrap();
        assert_eq!(net.chain("filter", &a).unwrap().len(), 4);
        net.cni.detach(&id).await.unwrap();
        assert_eq!(net.chain("filter", &a).unwrap().len(), 3);
        // Leaving takes each one's rules, and a group's chain with its last.
        for (id, _) in &joining {
            net.cni.detach(id).await.unwrap();
        }
        assert!(net.jumps().is_empty());
        assert!(net.chain("filter", &a).is_none() && net.chain("filter", &b).is_none());
        assert_eq!(
            net.chain("nat", &net.cni.dnat()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_is_taken_out_and_each_instance_tried_alone() {
        let mut net = TestNet::open(1).await;
        // Published ports cannot be added (their chain is not there), so
        // the batch fails after its filter rules went in.
        let dnat = net.cni.dnat();
        let renamed = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-E", &dnat, &format!("{dnat}-X")])
            .status()
            .unwrap();
        assert!(renamed.success());
        let plain = net.member(0, "b", false);
        let published = net.member(1, "b", true);
        let other = net.member(2, "c", true);
        let mut done = Vec::new();
        let mut batch = Vec::new();
        for (id, state) in [&plain, &published, &other] {
            let (w, rx) = waiting(id, state);
            batch.push(w);
            done.push(rx);
        }
        let _rules = net.cni.rules.lock().await;
        assert!(
            net.cni.apply_joins(batch).await.is_err(),
            "the batch failed"
        );
        let results: Vec<bool> = futures::future::join_all(done)
            .await
            .into_iter()
            .map(|r| r.unwrap().is_ok())
            .collect();
        assert_eq!(
            results,
            [true, false, false],
            "each alone: only the unpublished one joins"
        );
        let ip = plain.1.result.as_ref().and_then(result_ip).unwrap();
        let b = net.cni.group_chain("b");
        assert_eq!(
            net.jumps(),
            [format!(
                "-A {} -s {ip}/32 -d {} -j {b}",
                net.cni.fwd(),
                net.cni.subnet
            )],
            "nothing of the failed ones is left, nothing twice"
        );
        assert_eq!(
            net.chain("filter", &b).unwrap(),
            [format!("-A {b} -d {ip}/32 -j ACCEPT")]
        );
        assert!(
            net.chain("filter", &net.cni.group_chain("c")).is_none(),
            "a chain no one joined is gone"
        );
        assert_eq!(net.cni.members().len(), 1);
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_named_instance_rewrites_its_groups_hosts_files() {
        let mut net = TestNet::open(2).await;
        let (a, a_state) = net.member(0, "g", false);
        let (b, b_state) = net.member(1, "g", false);
        let (p, mut p_state) = net.member(2, "g", false);
        p_state.spec.name = Some("db".into());
        let (q, mut q_state) = net.member(3, "g", false);
        q_state.spec.name = Some("x\n10.0.0.1 forged".into());
        let (c, c_state) = net.member(4, "g", false);
        let cni = net.cni.clone();
        let hosts = |id: &InstanceId| std::fs::read_to_string(cni.paths(id).0).unwrap();
        let kept = |id: &InstanceId| std::fs::write(cni.paths(id).0, "kept\n").unwrap();
        let ip = |s: &State| s.result.as_ref().and_then(result_ip).unwrap();
        net.cni.join(&a, &a_state, ip(&a_state)).await.unwrap();
        assert!(hosts(&a).contains(&format!("{}\t{a}\n", ip(&a_state))));
        kept(&a);
        // Unnamed ones (and a name that is no DNS label) write their own.
        net.cni.join(&b, &b_state, ip(&b_state)).await.unwrap();
        net.cni.join(&q, &q_state, ip(&q_state)).await.unwrap();
        assert_eq!(hosts(&a), "kept\n");
        assert!(hosts(&b).contains(&format!("{}\t{b}\n", ip(&b_state))));
        assert!(!hosts(&q).contains("forged"), "{}", hosts(&q));
        // A named one is listed in every file of its group.
        net.cni.join(&p, &p_state, ip(&p_state)).await.unwrap();
        let listed = format!("{}\tdb\n", ip(&p_state));
        for id in [&a, &b, &p, &q] {
            assert!(hosts(id).contains(&listed), "{}", hosts(id));
        }
        // An unnamed one that joins now sees it too.
        net.cni.join(&c, &c_state, ip(&c_state)).await.unwrap();
        assert!(hosts(&c).contains(&listed), "{}", hosts(&c));
        kept(&a);
        net.cni.detach(&b).await.unwrap();
        assert_eq!(
            hosts(&a),
            "kept\n",
            "an unnamed one leaving changes no file"
        );
        net.cni.detach(&p).await.unwrap();
        // By name, not by substring: a random instance id may hold "db".
        let names_db = |id: &InstanceId| {
            hosts(id)
                .lines()
                .any(|l| l.split_whitespace().skip(1).any(|n| n == "db"))
        };
        assert!(!names_db(&a) && !names_db(&c), "{}{}", hosts(&a), hosts(&c));
        assert!(hosts(&a).contains(&format!("{}\t{a}\n", ip(&a_state))));
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_applied_part_way_is_applied_again_when_asked() {
        let mut net = TestNet::open(4).await;
        let (a, a_state) = net.member(0, "own-a", false);
        let ip = a_state.result.as_ref().and_then(result_ip).unwrap();
        net.cni.join(&a, &a_state, ip).await.unwrap();
        let hosts = net.cni.paths(&a).0;
        // Its hosts file cannot be written (a directory in its place).
        std::fs::remove_file(&hosts).unwrap();
        std::fs::create_dir(&hosts).unwrap();
        let dir = Directory {
            peers: Vec::new(),
            remote: vec![Remote {
                group: "own-a".into(),
                name: "db".into(),
                targets: vec!["192.0.2.7:31005".parse().unwrap()],
                port: None,
            }],
        };
        assert!(net.cni.set_directory(dir.clone()).await.is_err());
        std::fs::remove_dir(&hosts).unwrap();
        // The same directory again: applied, the file written.
        net.cni.set_directory(dir).await.unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(text.contains("\tdb\n"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_nodes_private_services_get_a_service_address_for_their_owner_only() {
        let mut net = TestNet::open(3).await;
        let (a, a_state) = net.member(0, "own-a", false);
        let (b, b_state) = net.member(1, "own-b", false);
        // A private instance here, published for other nodes.
        let (p, mut p_state) = net.member(2, "own-b", true);
        p_state.spec.name = Some("cache".into());
        let cni = net.cni.clone();
        let hosts = |id: &InstanceId| std::fs::read_to_string(cni.paths(id).0).unwrap();
        let ip = |s: &State| s.result.as_ref().and_then(result_ip).unwrap();
        for (id, st) in [(&a, &a_state), (&b, &b_state), (&p, &p_state)] {
            net.cni.join(id, st, ip(st)).await.unwrap();
        }
        let (private, peers, out, svc) = (
            cni.priv_chain(),
            cni.peers_chain(),
            cni.out_chain(),
            cni.svc_chain(),
        );
        // Before any directory: the private instance is closed to everyone
        // from outside.
        assert_eq!(
            net.chain("filter", &private).unwrap()[1..],
            [format!("-A {private} -d {}/32 -j {peers}", ip(&p_state))]
        );
        assert_eq!(
            net.chain("filter", &peers).unwrap(),
            [format!("-A {peers} -j DROP")]
        );
        let target: std::net::SocketAddrV4 = "192.0.2.7:31005".parse().unwrap();
        let dir = Directory {
            peers: vec![Peer {
                addr: Ipv4Addr::new(192, 0, 2, 7),
                ports: 31000..=31999,
            }],
            remote: vec![
                Remote {
                    group: "own-a".into(),
                    name: "db".into(),
                    targets: vec![target],
                    port: Some(5432),
                },
                // Answered here: the instance on this node keeps the name.
                Remote {
                    group: "own-b".into(),
                    name: "cache".into(),
                    targets: vec![target],
                    port: None,
                },
                // An owner with no instance here: nothing of it, yet.
                Remote {
                    group: "own-c".into(),
                    name: "queue".into(),
                    targets: vec![target],
                    port: None,
                },
            ],
        };
        let dir_again = dir.clone();
        cni.set_directory(dir.clone()).await.unwrap();
        assert_eq!(
            net.chain("filter", &peers).unwrap(),
            [
                format!("-A {peers} -s 192.0.2.7/32 -j RETURN"),
                format!("-A {peers} -j DROP")
            ]
        );
        assert_eq!(
            net.chain("filter", &out).unwrap(),
            [format!(
                "-A {out} -d 192.0.2.7/32 -p tcp -m tcp --dport 31000:31999 -m conntrack ! --ctstate DNAT -j DROP"
            )]
        );
        // Owner a's instance reaches `db` at a service address; owner b's
        // instances are not sent there.
        let vip = hosts(&a)
            .lines()
            .find_map(|l| l.strip_suffix("\tdb")?.parse::<Ipv4Addr>().ok())
            .unwrap();
        assert!(cni.cfg.services.contains(vip));
        assert!(!hosts(&b).contains("\tdb\n"), "{}", hosts(&b));
        let a_chain = cni.group_svc_chain("own-a");
        let into_a: Vec<String> = net
            .chain("nat", &svc)
            .unwrap()
            .into_iter()
            .filter(|r| r.ends_with(&a_chain))
            .collect();
        assert_eq!(
            into_a,
            [format!("-A {svc} -s {}/32 -j {a_chain}", ip(&a_state))]
        );
        assert_eq!(
            net.chain("nat", &a_chain).unwrap(),
            [format!(
                "-A {a_chain} -d {vip}/32 -p tcp -m tcp --dport 5432 -j DNAT --to-destination {target}"
            )]
        );
        let local_cache = format!("{}\tcache\n", ip(&p_state));
        assert!(hosts(&b).contains(&local_cache), "{}", hosts(&b));
        assert_eq!(hosts(&b).matches("cache").count(), 1, "{}", hosts(&b));
        let c_chain = cni.group_svc_chain("own-c");
        assert_eq!(net.chain("nat", &c_chain), None);
        // Its first instance here gets its service address as it joins.
        let (c, c_state) = net.member(4, "own-c", false);
        net.cni.join(&c, &c_state, ip(&c_state)).await.unwrap();
        assert!(hosts(&c).contains("\tqueue\n"), "{}", hosts(&c));
        assert_eq!(net.chain("nat", &c_chain).unwrap().len(), 1);
        net.cni.detach(&c).await.unwrap();
        assert_eq!(
            net.chain("nat", &c_chain),
            None,
            "gone with its last instance"
        );
        // A new instance of owner a joins the rules at once.
        let (a2, a2_state) = net.member(3, "own-a", false);
        net.cni.join(&a2, &a2_state, ip(&a2_state)).await.unwrap();
        assert!(
            hosts(&a2).contains(&format!("{vip}\tdb\n")),
            "{}",
            hosts(&a2)
        );
        let jumps = net.chain("nat", &svc).unwrap();
        assert_eq!(jumps.iter().filter(|r| r.ends_with(&a_chain)).count(), 2);
        // The same directory again changes nothing; the service address
        // stays while the service does.
        cni.set_directory(dir).await.unwrap();
        assert!(hosts(&a).contains(&format!("{vip}\tdb\n")));
        // Gone elsewhere: the name, the rules and the chain go.
        cni.set_directory(Directory::default()).await.unwrap();
        assert!(!hosts(&a).contains("\tdb\n"), "{}", hosts(&a));
        assert_eq!(net.chain("nat", &svc).unwrap(), Vec::<String>::new());
        assert_eq!(
            net.chain("nat", &a_chain),
            None,
            "the owner's chain is removed"
        );
        assert_eq!(
            net.chain("filter", &peers).unwrap(),
            [format!("-A {peers} -j DROP")]
        );
        net.cni.detach(&p).await.unwrap();
        assert_eq!(net.chain("filter", &private).unwrap().len(), 1);
        // A node started again finds the chains of the last one: emptied,
        // an owner's removed, but the peers as last saved in at once (an
        // instance it keeps must not reach a peer's host ports while the
        // rest comes back); then, with its instances back, it applies the
        // directory the last one saved, before the log says anything.
        cni.set_directory(dir_again).await.unwrap();
        assert!(net.chain("nat", &a_chain).is_some());
        let reopened = Cni::open(cni.cfg.clone()).await.unwrap();
        assert_eq!(net.chain("nat", &a_chain), None);
        assert_eq!(net.chain("nat", &svc).unwrap(), Vec::<String>::new());
        assert_eq!(
            net.chain("filter", &peers).unwrap(),
            [
                format!("-A {peers} -s 192.0.2.7/32 -j RETURN"),
                format!("-A {peers} -j DROP")
            ]
        );
        assert_eq!(net.chain("filter", &out).unwrap().len(), 1);
        // (These instances have no namespaces to adopt: only the nodes'
        // rules come back.)
        reopened.recover(&HashMap::new()).await.unwrap();
        assert_eq!(
            net.chain("filter", &peers).unwrap(),
            [
                format!("-A {peers} -s 192.0.2.7/32 -j RETURN"),
                format!("-A {peers} -j DROP")
            ]
        );
        assert_eq!(net.chain("filter", &out).unwrap().len(), 1);
        drop(reopened);
    }
}

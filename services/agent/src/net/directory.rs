//! Private services across nodes.
//!
//! On its own node a private service's instances are listed under its
//! name in its owner's instances' hosts files (their addresses on the
//! bridge). Elsewhere they are reached through the node they run on: each
//! private instance is published on a host port of its node as a web
//! instance is, and each node gives every private service of an owner it
//! runs instances of, and that runs on other nodes only, an address of its
//! own — a service address from the node's service range, listed under the
//! service's name — which a rule of the owner's turns into one of those
//! instances' `<node address>:<host port>` (chosen at random per
//! connection). What the node hears of other nodes and their private
//! instances is its [`Directory`].
//!
//! Who may use that road, on each side:
//!
//! - Sending: only the owner's instances have their connections to a
//!   service address translated (a rule per instance, `-s <address>`,
//!   into the owner's chain `<tag>-S<hash>` in `nat`); anything else sent
//!   to the service range is dropped. An instance's connection straight to
//!   another node's host ports is dropped too (`<tag>-OUT`), so a private
//!   instance's published port elsewhere is reached only by its name.
//! - Receiving: a connection from outside the node into a private
//!   instance passes only from a node's address (`<tag>-PRIV`, then
//!   `<tag>-PEERS`); anyone else — a machine on the network, the internet —
//!   is dropped. Nodes are trusted to keep their own owners apart, which
//!   the sending side's rules do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::{fnv1a, iptables_restore, is_label, run_output, save_json, Cni, NetError, Subnet};

/// Another node, as this one needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The address it registered (where its published ports are, and the
    /// source its instances' connections arrive with).
    pub addr: Ipv4Addr,
    /// The host ports it publishes instances on.
    pub ports: RangeInclusive<u16>,
}

/// A private service with healthy instances on other nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Remote {
    /// Its owner (an instance group).
    pub group: String,
    /// Its name.
    pub name: String,
    /// Where its instances are published, on their nodes.
    pub targets: Vec<SocketAddrV4>,
    /// The port its instances serve on: only connections to that port of
    /// its service address reach them (one to another port is refused,
    /// rather than sent to a server that may speak something else).
    /// `None` in a directory an earlier berth saved: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What a node knows of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub peers: Vec<Peer>,
    pub remote: Vec<Remote>,
}

/// The directory as applied, with the service addresses handed out.
#[derive(Debug, Default)]
pub(super) struct Applied {
    directory: Directory,
    /// `(group, name)` → its service address here (ordered: each group's
    /// names together, sorted).
    addrs: BTreeMap<(String, String), Ipv4Addr>,
    /// The groups whose `nat` chain exists.
    chains: HashSet<String>,
    /// The last rebuild went through (rules and hosts files): until one
    /// does, the same directory is applied again when asked, and every
    /// group's hosts files are written.
    complete: bool,
}

impl Applied {
    /// The service addresses of `group`'s remote services, by name.
    pub(super) fn named(&self, group: &str) -> Vec<(String, Ipv4Addr)> {
        self.of_group(group)
            .map(|(n, ip)| (n.to_owned(), ip))
            .collect()
    }

    fn of_group<'a>(&'a self, group: &'a str) -> impl Iterator<Item = (&'a str, Ipv4Addr)> {
        self.addrs
            .iter()
            .filter(move |((g, _), _)| g == group)
            .map(|((_, n), ip)| (n.as_str(), *ip))
    }
}

/// The service address of `(group, name)`: a hash of both into `range`
/// (so the same after a restart, mostly), the next free one when taken.
fn service_addr(
    range: &Subnet,
    group: &str,
    name: &str,
    taken: &HashSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let hosts = (1u32 << (32 - u32::from(range.prefix))).saturating_sub(2);
    if hosts == 0 {
        return None;
    }
    let base = u32::from(range.addr) + 1;
    let start = fnv1a(&format!("{group}\n{name}")) % hosts;
    (0..hosts)
        .map(|i| Ipv4Addr::from(base + (start + i) % hosts))
        .find(|ip| !taken.contains(ip))
}

impl Cni {
    pub(super) fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chain connections from outside into private instances pass.
    pub(super) fn priv_chain(&self) -> String {
        format!("{}-PRIV", self.tag)
    }

    /// The chain accepting nodes' addresses.
    pub(super) fn peers_chain(&self) -> String {
        format!("{}-PEERS", self.tag)
    }

    /// The chain closing other nodes' host ports to instances.
    pub(super) fn out_chain(&self) -> String {
        format!("{}-OUT", self.tag)
    }

    /// The `nat` chain sending each instance with remote services to its
    /// group's chain.
    pub(super) fn svc_chain(&self) -> String {
        format!("{}-SVC", self.tag)
    }

    pub(super) fn group_svc_chain(&self, group: &str) -> String {
        format!("{}-S{:08x}", self.tag, fnv1a(group))
    }

    /// Whether `chain` (as `iptables -S` names it) is one of the directory's.
    pub(super) fn is_directory_chain(&self, chain: &str) -> bool {
        [self.priv_chain(), self.peers_chain(), self.out_chain()].contains(&chain.to_owned())
    }

    /// Applies what this node now knows of the others: the nodes allowed
    /// into its private instances, the other nodes' ports closed to its
    /// instances, the service addresses of its owners' remote private
    /// services (their rules and their names in hosts files). Applying the
    /// same directory again changes nothing, unless applying it last time
    /// failed part way.
    pub async fn set_directory(&self, directory: Directory) -> Result<(), NetError> {
        let _rules = self.rules.lock().await;
        {
            let applied = self.applied();
            if applied.complete && applied.directory == directory {
                return Ok(());
            }
        }
        self.rebuild(Some(directory)).await
    }

    /// After members of `groups` joined or left: their owners' service
    /// addresses and rules made again, once, when the directory names any
    /// of their services (a no-op otherwise). Called holding `rules`.
    pub(super) async fn refresh_groups<'a>(
        &self,
        mut groups: impl Iterator<Item = &'a String>,
    ) -> Result<(), NetError> {
        let concerned = {
            let applied = self.applied();
            groups.any(|g| {
                applied.chains.contains(g) || applied.directory.remote.iter().any(|r| &r.group == g)
            })
        };
        if !concerned {
            return Ok(());
        }
        self.rebuild(None).await
    }

    /// The service addresses (only for owners with instances here: an
    /// owner's first instance gets them as it joins), the rules and the
    /// hosts files whose names changed, for `directory` (`None`: the one
    /// applied). Called holding `rules`.
    async fn rebuild(&self, directory: Option<Directory>) -> Result<(), NetError> {
        let here: HashSet<String> = self.members().values().map(|m| m.group.clone()).collect();
        let before = self.remote_names();
        let force = !std::mem::replace(&mut self.applied().complete, false);
        let mut next = {
            let applied = self.applied();
            let directory = directory.unwrap_or_else(|| applied.directory.clone());
            let wanted: Vec<&Remote> = directory
                .remote
                .iter()
                .filter(|r| here.contains(&r.group) && is_label(&r.name) && !r.targets.is_empty())
                .collect();
            let mut addrs = BTreeMap::new();
            let mut taken = HashSet::new();
            // Kept where they were; new ones next to them.
            for r in &wanted {
                let key = (r.group.clone(), r.name.clone());
                if let Some(ip) = applied.addrs.get(&key) {
                    taken.insert(*ip);
                    addrs.insert(key, *ip);
                }
            }
            for r in &wanted {
                let key = (r.group.clone(), r.name.clone());
                if addrs.contains_key(&key) {
                    continue;
                }
                let Some(ip) = service_addr(&self.cfg.services, &r.group, &r.name, &taken) else {
                    tracing::warn!(service.name = %r.name, range = %self.cfg.services, "no free service address");
                    continue;
                };
                taken.insert(ip);
                addrs.insert(key, ip);
            }
            Applied {
                directory,
                addrs,
                // Those it no longer needs are removed by its rules.
                chains: applied.chains.clone(),
                complete: false,
            }
        };
        let (text, chains) = self.directory_rules(&next);
        iptables_restore(&text).await?;
        next.chains = chains;
        // Written when it changed (not when an instance joins, nor when
        // the saved one is applied again).
        if next.directory != self.applied().directory {
            if let Err(e) = self.save_directory(&next.directory) {
                tracing::warn!(error = %e, "the directory is not saved for the next start");
            }
        }
        *self.applied() = next;
        let after = self.remote_names();
        let groups: HashSet<&String> = before.keys().chain(after.keys()).collect();
        for g in groups {
            if force || before.get(g) != after.get(g) {
                self.write_hosts(g)?;
            }
        }
        self.applied().complete = true;
        Ok(())
    }

    /// Where the last directory applied is kept: a node started again
    /// applies it at once, before it has caught up with the log, so the
    /// roads between nodes stay open across its restart.
    fn directory_file(&self) -> std::path::PathBuf {
        self.cfg.state_dir.join("directory.state")
    }

    fn save_directory(&self, directory: &Directory) -> Result<(), NetError> {
        save_json(&self.directory_file(), directory)
    }

    /// The directory the last process applied, if saved and readable.
    pub(super) fn saved_directory(&self) -> Option<Directory> {
        let bytes = std::fs::read(self.directory_file()).ok()?;
        match serde_json::from_slice::<Directory>(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "the saved directory is unreadable; waiting for the log");
                None
            }
        }
    }

    /// The `filter` rules of `peers` (to append to the emptied chains):
    /// `PEERS` lets each peer through to private instances and drops the
    /// rest; `OUT` drops instances' own (untranslated) connections to the
    /// peers' host ports. The node's start writes them from the saved
    /// directory with its base rules, so no instance it kept can reach
    /// another node's published instances before the directory is back.
    pub(super) fn peer_rules(&self, peers: &[Peer]) -> String {
        let (chain, out) = (self.peers_chain(), self.out_chain());
        let mut rules = String::new();
        let mut seen = HashSet::new();
        let mut sorted = peers.to_vec();
        sorted.sort_by_key(|p| (p.addr, *p.ports.start(), *p.ports.end()));
        for p in &sorted {
            if seen.insert(p.addr) {
                rules.push_str(&format!("-A {chain} -s {}/32 -j RETURN\n", p.addr));
            }
            rules.push_str(&format!(
                "-A {out} -d {}/32 -p tcp -m tcp --dport {}:{} -m conntrack ! --ctstate DNAT -j DROP\n",
                p.addr,
                p.ports.start(),
                p.ports.end()
            ));
        }
        rules.push_str(&format!("-A {chain} -j DROP\n"));
        rules
    }

    /// After the instances kept are back: the directory the last process
    /// applied, applied again (none saved, or unreadable: nothing until
    /// the node has caught up with the log).
    pub(super) async fn restore_directory(&self) {
        let Some(saved) = self.saved_directory() else {
            return;
        };
        let _rules = self.rules.lock().await;
        if let Err(e) = self.rebuild(Some(saved)).await {
            tracing::warn!(error = %e, "the saved directory could not be applied; waiting for the log");
        }
    }

    /// Every group's remote names and service addresses, sorted.
    fn remote_names(&self) -> BTreeMap<String, Vec<(String, Ipv4Addr)>> {
        let applied = self.applied();
        let mut out: BTreeMap<String, Vec<(String, Ipv4Addr)>> = BTreeMap::new();
        for ((g, n), ip) in &applied.addrs {
            out.entry(g.clone()).or_default().push((n.clone(), *ip));
        }
        out
    }

    /// The directory's rules as one `iptables-restore` input (every chain
    /// of it rewritten whole), and the groups whose `nat` chain it leaves.
    fn directory_rules(&self, a: &Applied) -> (String, HashSet<String>) {
        let (peers, out, svc) = (self.peers_chain(), self.out_chain(), self.svc_chain());
        let mut filter = format!(":{peers} - [0:0]\n:{out} - [0:0]\n");
        filter.push_str(&self.peer_rules(&a.directory.peers));
        // The groups with remote services and their members here.
        let members = self.members();
        let mut groups: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        for ((g, _), _) in a.addrs.iter() {
            groups.entry(g.as_str()).or_default();
        }
        for m in members.values() {
            if let Some(ips) = groups.get_mut(m.group.as_str()) {
                ips.push(m.ip);
            }
        }
        let remotes: HashMap<(&str, &str), &Remote> = a
            .directory
            .remote
            .iter()
            .map(|r| ((r.group.as_str(), r.name.as_str()), r))
            .collect();
        let mut nat = format!(":{svc} - [0:0]\n");
        let mut chains = HashSet::new();
        for (group, ips) in &mut groups {
            let chain = self.group_svc_chain(group);
            nat.push_str(&format!(":{chain} - [0:0]\n"));
            chains.insert((*group).to_owned());
            ips.sort();
            for ip in ips.iter() {
                nat.push_str(&format!("-A {svc} -s {ip}/32 -j {chain}\n"));
            }
            for (name, vip) in a.of_group(group) {
                if let Some(r) = remotes.get(&(*group, name)) {
                    nat.push_str(&balance(&chain, vip, r.port, &r.targets));
                }
            }
        }
        // Chains of groups no longer here go, after the jumps into them.
        for g in &a.chains {
            if !chains.contains(g) {
                let chain = self.group_svc_chain(g);
                nat.push_str(&format!("-F {chain}\n-X {chain}\n"));
            }
        }
        (
            format!("*filter\n{filter}COMMIT\n*nat\n{nat}COMMIT\n"),
            chains,
        )
    }

    /// The `nat` chains of groups a previous process left (`<tag>-S…`).
    pub(super) async fn left_group_svc_chains(&self) -> Result<Vec<String>, NetError> {
        let listed = run_output("iptables", &["-w", "-t", "nat", "-S"]).await?;
        let prefix = format!("-N {}-S", self.tag);
        Ok(listed
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| format!("{}-S{rest}", self.tag))
            .filter(|c| *c != self.svc_chain())
            .collect())
    }
}

/// The rules sending a connection to `vip` (on `port`, or on any port
/// without one) to one of `targets`, each equally likely.
fn balance(chain: &str, vip: Ipv4Addr, port: Option<u16>, targets: &[SocketAddrV4]) -> String {
    let port = port.map_or_else(String::new, |p| format!("-m tcp --dport {p} "));
    let mut sorted = targets.to_vec();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len();
    let mut text = String::new();
    for (i, t) in sorted.iter().enumerate() {
        let left = n - i;
        let pick = if left > 1 {
            format!(
                "-m statistic --mode random --probability {:.5} ",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        text.push_str(&format!(
            "-A {chain} -d {vip}/32 -p tcp {port}{pick}-j DNAT --to-destination {t}\n"
        ));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_service_address_is_stable_and_skips_taken_ones() {
        let range: Subnet = "10.254.0.0/16".parse().unwrap();
        let none = HashSet::new();
        let a = service_addr(&range, "own-1", "db", &none).unwrap();
        assert_eq!(service_addr(&range, "own-1", "db", &none), Some(a));
        assert!(range.contains(a) && a != range.addr);
        let taken: HashSet<Ipv4Addr> = [a].into();
        let b = service_addr(&range, "own-1", "db", &taken).unwrap();
        assert_ne!(a, b);
        assert!(range.contains(b));
    }

    #[test]
    fn connections_are_spread_over_every_target() {
        let t: Vec<SocketAddrV4> = ["10.0.0.2:20001", "10.0.0.3:20002", "10.0.0.2:20001"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = balance("C", Ipv4Addr::new(10, 254, 0, 7), None, &t);
        assert_eq!(
            text,
            "-A C -d 10.254.0.7/32 -p tcp -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.0.0.2:20001\n\
             -A C -d 10.254.0.7/32 -p tcp -j DNAT --to-destination 10.0.0.3:20002\n"
        );
        // Only the port the instances serve on is sent to them.
        let text = balance("C", Ipv4Addr::new(10, 254, 0, 7), Some(5432), &t[1..2]);
        assert_eq!(
            text,
            "-A C -d 10.254.0.7/32 -p tcp -m tcp --dport 5432 -j DNAT --to-destination 10.0.0.3:20002\n"
        );
    }
}

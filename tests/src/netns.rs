//! Machines on a network of their own, for partition tests: each member a
//! network namespace with one veth on a bridge of the host, on a test
//! subnet no other test holds. A member is cut off with `DROP` rules inside
//! its own namespace (nothing in or out of its link, as a pulled cable or a
//! dead switch port), and healed by flushing them. Everything is removed on
//! drop — the namespaces take their veths and rules with them — also when
//! a test panics.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::net::SubnetLease;

/// A bridge on the host (address `.1` of the subnet) and `n` namespaces on
/// it (addresses `.10`, `.11`, …).
#[derive(Debug)]
pub struct Netns {
    bridge: String,
    /// The host ends of the veths.
    veths: Vec<String>,
    names: Vec<String>,
    addrs: Vec<String>,
    _lease: SubnetLease,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Netns {
    /// Creates the bridge and `n` namespaces, each reachable from the host
    /// and from the others.
    pub fn create(n: usize) -> Result<Netns> {
        let lease = crate::net::lease_subnet();
        let base = lease
            .subnet
            .split('/')
            .next()
            .and_then(|a| a.rsplit_once('.'))
            .map(|(p, _)| p.to_owned())
            .context("a.b.c.0/24")?;
        // Unique while the lease is held: names derive from the subnet.
        let tag = base.replace("10.", "").replace('.', "x");
        let bridge = format!("bfb{tag}");
        let net = Netns {
            bridge: bridge.clone(),
            veths: (0..n).map(|i| format!("bfv{tag}x{i}")).collect(),
            names: (0..n).map(|i| format!("berth-faults-{tag}-{i}")).collect(),
            addrs: (0..n).map(|i| format!("{base}.{}", 10 + i)).collect(),
            _lease: lease,
        };
        // What a killed earlier holder of this subnet left goes first.
        net.remove();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("{base}.1/24"), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = net.names[i].clone();
            let host_end = net.veths[i].clone();
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            run(&["ip", "link", "set", &host_end, "master", &bridge, "up"])?;
            let addr = format!("{}/24", net.addrs[i]);
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The namespace of member `i` (`ip netns exec <name> …`).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The address of member `i`.
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }

    /// Cuts member `i` off: every packet in or out of its link dropped.
    pub fn cut(&self, i: usize) -> Result<()> {
        let ns = self.name(i);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run(&[
                "ip", "netns", "exec", ns, "iptables", "-w", "-A", chain, dir, "eth0", "-j", "DROP",
            ])?;
        }
        Ok(())
    }

    /// Undoes [`Netns::cut`].
    pub fn heal(&self, i: usize) -> Result<()> {
        run(&["ip", "netns", "exec", self.name(i), "iptables", "-w", "-F"])
    }

    fn remove(&self) {
        // A namespace outlives its name while sockets of killed servers in
        // it still retransmit their goodbyes (a minute or two); its veths
        // go now.
        for veth in &self.veths {
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

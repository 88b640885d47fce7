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

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// A network namespace this process holds open.
#[derive(Debug)]
pub struct Namespace {
    file: File,
    path: PathBuf,
}

impl Namespace {
    /// A new, empty network namespace with `lo` up.
    pub fn create() -> io::Result<Namespace> {
        // A thread of its own: unshare moves the calling thread, which then
        // ends (a pooled thread would run later work inside the namespace).
        std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                let file = File::open("/proc/thread-self/ns/net")?;
                loopback_up()?;
                Ok(file)
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
            .map(Namespace::held)
    }

    /// The network namespace process `pid` is in (an adopted instance's);
    /// refused when it is this process's own (the host's).
    pub fn of_process(pid: u32) -> io::Result<Namespace> {
        Self::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// The network namespace at `path` (a `/proc/…/ns/net` or a bind
    /// mount of one); refused when it is this process's own.
    pub fn open(path: &Path) -> io::Result<Namespace> {
        let file = File::open(path)?;
        let own = std::fs::metadata("/proc/self/ns/net")?;
        let meta = file.metadata()?;
        if meta.ino() == own.ino() && meta.dev() == own.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is the host's network namespace", path.display()),
            ));
        }
        Ok(Namespace::held(file))
    }

    fn held(file: File) -> Namespace {
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        ));
        Namespace { file, path }
    }

    /// Where another process opens it while this one holds it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number (`net:[<inode>]`).
    pub fn inode(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.ino())
    }
}

/// `ip link set lo up` in the calling thread's network namespace: one
/// RTM_NEWLINK for interface 1 (loopback is always index 1 in a new
/// namespace), answered by an ack.
fn loopback_up() -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    const LOOPBACK_INDEX: i32 = 1;
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    // struct nlmsghdr (16 bytes) then struct ifinfomsg (16 bytes).
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[0, 0]); // AF_UNSPEC, padding
    msg.extend_from_slice(&0u16.to_ne_bytes()); // device type
    msg.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    sendto(
        sock.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    let field = |at: usize| buf.get(at..at + 4).filter(|_| at + 4 <= n);
    let ty = buf
        .get(4..6)
        .filter(|_| n >= 6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = field(16).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (ty, code) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(e)) => Err(Errno::from_raw(-e).into()),
        _ => Err(io::Error::other(format!(
            "unexpected netlink answer ({n} bytes)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn a_new_namespace_is_not_the_hosts_and_has_loopback_up_without_a_mount() {
        // As root, as the node runs.
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
        // Nothing on the mount table names it.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&format!("net:[{ino}]")), "{mounts}");
        // Reopened by path: the same namespace; the host's own is refused.
        let again = Namespace::open(ns.path()).expect("reopen");
        assert_eq!(again.inode().expect("inode"), ino);
        let own = Namespace::of_process(std::process::id()).expect_err("the host's");
        assert_eq!(own.kind(), io::ErrorKind::InvalidInput);
    }
}

//! The few rtnetlink requests an instance's network needs, sent on a route
//! socket of the namespace it was opened in: links up, a veth pair with
//! its far end in another namespace and its near end on a bridge, an
//! address, a default route, a link removed. What `ip link`, `ip addr` and
//! `ip route` (or the CNI `bridge` plugin, two processes per instance) do,
//! without a process per step.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const IFF_UP: u32 = 0x1;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_MODE: u16 = 4;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;

/// A route netlink socket, bound to the network namespace of the thread
/// that opened it for as long as it lives.
#[derive(Debug)]
pub struct Route {
    fd: OwnedFd,
    seq: u32,
    /// Where answers are read into (one link's description fits).
    buf: Vec<u8>,
}

impl Route {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Route> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        Ok(Route {
            fd,
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    /// `ip link set <index> up`.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(0, index, IFF_UP, IFF_UP);
        self.ack(m)
    }

    /// The index of the link named `name` (the kernel's `ENODEV` when there
    /// is none).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        self.link(name).map(|l| l.index)
    }

    /// The link named `name`; `None` when there is none.
    pub fn find_link(&mut self, name: &str) -> io::Result<Option<LinkInfo>> {
        match self.link(name) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.raw_os_error() == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link named `name` (the kernel's `ENODEV` when there is none).
    pub fn link(&mut self, name: &str) -> io::Result<LinkInfo> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.ifinfo(0, 0, 0, 0);
        m.attr_name(IFLA_IFNAME, name);
        let answer = self.request(m)?;
        LinkInfo::parse(&answer).ok_or_else(|| io::Error::other("short RTM_NEWLINK answer"))
    }

    /// `ip link add <name> type bridge`; refused when it exists.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, 0, 0);
        m.attr_name(IFLA_IFNAME, name);
        let info = m.nest(IFLA_LINKINFO);
        m.attr_name(IFLA_INFO_KIND, "bridge");
        m.end(info);
        self.ack(m)
    }

    /// `ip link set <index> address <mac>`.
    pub fn set_address(&mut self, index: u32, mac: &[u8]) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(0, index, 0, 0);
        m.attr(IFLA_ADDRESS, mac);
        self.ack(m)
    }

    /// A veth pair: `near` here, up, on the bridge `master` (hairpin on:
    /// an instance reaches itself through a published port), `far` in the
    /// namespace `far_ns`, down. Refused when `near` exists.
    pub fn add_veth(
        &mut self,
        near: &str,
        master: u32,
        far: &str,
        far_ns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, 0, IFF_UP, IFF_UP);
        m.attr_name(IFLA_IFNAME, near);
        m.attr(IFLA_MASTER, &master.to_ne_bytes());
        let info = m.nest(IFLA_LINKINFO);
        m.attr_name(IFLA_INFO_KIND, "veth");
        let data = m.nest(IFLA_INFO_DATA);
        let peer = m.nest(VETH_INFO_PEER);
        // Not up yet: a veth end opens only once its peer is known, which
        // it is not while the far end is made.
        m.ifinfo(0, 0, 0, 0);
        m.attr_name(IFLA_IFNAME, far);
        m.attr(IFLA_NET_NS_FD, &far_ns.as_raw_fd().to_ne_bytes());
        m.end(peer);
        m.end(data);
        m.end(info);
        self.ack(m).map_err(|e| context(e, "creating"))?;
        let index = self.link_index(near).map_err(|e| context(e, "finding"))?;
        let mut m = Msg::new(RTM_SETLINK, 0);
        m.ifinfo(AF_BRIDGE, index, 0, 0);
        let port = m.nest(IFLA_PROTINFO | NLA_F_NESTED);
        m.attr(IFLA_BRPORT_MODE, &[1]);
        m.end(port);
        self.ack(m).map_err(|e| context(e, "hairpin"))
    }

    /// `ip addr add <ip>/<prefix> dev <index>`.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.address(index, ip, prefix, NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `ip addr replace <ip>/<prefix> dev <index>`: added, or kept when
    /// there.
    pub fn replace_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        self.address(index, ip, prefix, NLM_F_CREATE | NLM_F_REPLACE)
    }

    fn address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8, flags: u16) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWADDR, flags);
        // struct ifaddrmsg: family, prefix length, flags, scope, index.
        m.buf
            .extend_from_slice(&[AF_INET, prefix, 0, RT_SCOPE_UNIVERSE]);
        m.buf.extend_from_slice(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &ip.octets());
        m.attr(IFA_ADDRESS, &ip.octets());
        let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(ip) | host);
        m.attr(IFA_BROADCAST, &broadcast.octets());
        self.ack(m)
    }

    /// `ip route add default via <gateway> dev <index>`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst and src lengths, tos, table,
        // protocol, scope, type, then 32 bits of flags.
        m.buf.extend_from_slice(&[
            AF_INET,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.attr(RTA_GATEWAY, &gateway.octets());
        m.attr(RTA_OIF, &index.to_ne_bytes());
        self.ack(m)
    }

    /// `ip link del <name>`; `false` when there was no such link.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(0, 0, 0, 0);
        m.attr_name(IFLA_IFNAME, name);
        match self.ack(m) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends `m` asking for an acknowledgement; the kernel's error if it
    /// refused.
    fn ack(&mut self, mut m: Msg) -> io::Result<()> {
        m.flags |= NLM_F_ACK;
        self.request(m).map(|_| ())
    }

    /// Sends `m` and reads the answer to it: the first message of the
    /// answer (an acknowledgement, or what was asked for), or the kernel's
    /// error.
    fn request(&mut self, mut m: Msg) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = m.finish(seq);
        sendto(
            self.fd.as_raw_fd(),
            &bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                r => r?,
            };
            let answer = self.buf.get(..n).unwrap_or_default();
            let field = |at: usize| {
                answer
                    .get(at..at + 4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            };
            let (Some(len), Some(kind), Some(got)) = (
                field(0),
                answer.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])),
                field(8),
            ) else {
                return Err(io::Error::other(format!(
                    "unexpected netlink answer ({n} bytes)"
                )));
            };
            if got != seq {
                // An answer to an earlier request that gave up: skipped.
                continue;
            }
            let first = answer
                .get(..(len as usize).min(n))
                .unwrap_or_default()
                .to_vec();
            if kind == NLMSG_ERROR {
                let code = field(16).map(|c| c as i32).unwrap_or(-(Errno::EIO as i32));
                if code != 0 {
                    return Err(Errno::from_raw(-code).into());
                }
            }
            return Ok(first);
        }
    }
}

/// What berth reads of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Its index.
    pub index: u32,
    /// The index of the bridge it is a port of.
    pub master: Option<u32>,
    /// Its hardware address.
    pub mac: Vec<u8>,
}

impl LinkInfo {
    /// From an RTM_NEWLINK message: header, struct ifinfomsg, attributes.
    fn parse(msg: &[u8]) -> Option<LinkInfo> {
        let index = msg
            .get(20..24)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))?;
        let mut info = LinkInfo {
            index,
            master: None,
            mac: Vec::new(),
        };
        let mut at = 32;
        while let Some(head) = msg.get(at..at + 4) {
            let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
            let kind = u16::from_ne_bytes([head[2], head[3]]);
            let value = msg.get(at + 4..at + len.max(4))?;
            match kind {
                IFLA_MASTER if value.len() == 4 => {
                    info.master =
                        Some(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]));
                }
                IFLA_ADDRESS => info.mac = value.to_vec(),
                _ => {}
            }
            if len < 4 {
                break;
            }
            at += (len + 3) & !3;
        }
        Some(info)
    }
}

/// `e` with `what` was being done in front of its message.
pub(crate) fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// One netlink request being written: header, fixed part, attributes.
struct Msg {
    kind: u16,
    flags: u16,
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(128);
        // struct nlmsghdr, its length and sequence filled in by `finish`.
        buf.resize(16, 0);
        Msg {
            kind,
            flags: flags | NLM_F_REQUEST,
            buf,
        }
    }

    /// struct ifinfomsg.
    fn ifinfo(&mut self, family: u8, index: u32, flags: u32, change: u32) {
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn attr_name(&mut self, kind: u16, name: &str) {
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        self.attr(kind, &v);
    }

    /// Opens a nested attribute; [`Msg::end`] closes it.
    fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.attr(kind, &[]);
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        if let Some(b) = self.buf.get_mut(at..at + 2) {
            b.copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(&mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&len.to_ne_bytes());
        head.extend_from_slice(&self.kind.to_ne_bytes());
        head.extend_from_slice(&self.flags.to_ne_bytes());
        head.extend_from_slice(&seq.to_ne_bytes());
        head.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.splice(..16, head);
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_carry_their_whole_length_and_stay_aligned() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE);
        m.ifinfo(0, 0, IFF_UP, IFF_UP);
        let info = m.nest(IFLA_LINKINFO);
        m.attr_name(IFLA_INFO_KIND, "veth");
        m.end(info);
        let bytes = m.finish(7);
        // header 16 + ifinfomsg 16 + linkinfo header 4 + kind (4 + "veth\0"
        // padded to 8).
        assert_eq!(bytes.len(), 16 + 16 + 4 + 12);
        assert_eq!(&bytes[0..4], &(48u32).to_ne_bytes());
        assert_eq!(&bytes[4..6], &RTM_NEWLINK.to_ne_bytes());
        assert_eq!(&bytes[6..8], &(NLM_F_CREATE | NLM_F_REQUEST).to_ne_bytes());
        assert_eq!(&bytes[8..12], &7u32.to_ne_bytes());
        // The nest's length covers itself and the kind (unpadded inner 9
        // bytes, padded to 12): 4 + 12.
        assert_eq!(&bytes[32..34], &(16u16).to_ne_bytes());
        assert_eq!(&bytes[34..36], &IFLA_LINKINFO.to_ne_bytes());
        assert_eq!(&bytes[36..38], &(9u16).to_ne_bytes());
        assert_eq!(&bytes[40..45], b"veth\0");
    }
}

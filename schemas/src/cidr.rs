//! Address blocks (`10.0.0.0/8`, `2001:db8::/32`): what a web service's IP
//! allow list holds (Render's `ipAllowList`), parsed once and matched by
//! the router against each client's address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block: the addresses whose first `len` bits are `addr`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a text is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("is not an IPv4 or IPv6 address block (such as 203.0.113.0/24)")]
    Malformed,
    #[error("has a prefix longer than the address ({0} bits)")]
    TooLong(u8),
    #[error("has bits set past its prefix: did you mean {0}?")]
    HostBits(String),
}

impl Cidr {
    /// The block's bits of `a` as one number (IPv4 in the low 32 bits),
    /// and the address's width.
    fn bits(a: IpAddr) -> (u128, u8) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(len: u8, width: u8) -> u128 {
        let ones = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        ones >> (128 - u32::from(width))
    }

    /// Whether `ip` is in the block (an IPv4 address seen as IPv6,
    /// `::ffff:a.b.c.d`, is matched as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((net, width), (got, got_width)) = (Self::bits(self.addr), Self::bits(ip));
        if width != got_width {
            return false;
        }
        let m = Self::mask(self.len, width);
        net & m == got & m
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n` or `x::y/n`; a bare address is the block of itself
    /// (`/32`, `/128`). Bits past the prefix are refused, not dropped: a
    /// block written `10.0.0.5/8` is likely a mistake.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| CidrError::Malformed)?;
        let (bits, width) = Self::bits(addr);
        let len = match len {
            None => width,
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 => {
                l.parse::<u8>().map_err(|_| CidrError::Malformed)?
            }
            Some(_) => return Err(CidrError::Malformed),
        };
        if len > width {
            return Err(CidrError::TooLong(width));
        }
        let m = Self::mask(len, width);
        if bits & !m != 0 {
            let net = match addr {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((bits & m) as u32)),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(bits & m)),
            };
            return Err(CidrError::HostBits(format!("{net}/{len}")));
        }
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_hold_the_addresses_of_their_prefix() {
        let b: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(b.contains(ip("203.0.113.7")));
        assert!(b.contains(ip("::ffff:203.0.113.200")), "IPv4 seen as IPv6");
        assert!(!b.contains(ip("203.0.114.1")));
        assert!(!b.contains(ip("2001:db8::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("2001:db8::1")));
        let one: Cidr = "198.51.100.9".parse().unwrap();
        assert_eq!(one.to_string(), "198.51.100.9/32");
        assert!(one.contains(ip("198.51.100.9")) && !one.contains(ip("198.51.100.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let every6: Cidr = "::/0".parse().unwrap();
        assert!(every6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn what_is_not_a_block_is_refused_with_why() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "a/8",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
            " 10.0.0.0/8",
        ] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::Malformed), "{bad:?}");
        }
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::TooLong(32)));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::TooLong(128)));
        assert_eq!(
            "10.0.0.5/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.0/8".into()))
        );
    }
}

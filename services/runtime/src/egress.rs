//! Which addresses owner-supplied URLs may reach.
//!
//! Owners hand berth URLs that berth's own processes then connect to: image
//! references (registry hosts, and the token realm and redirects those
//! hosts name) and notification endpoints (webhook and Slack URLs). Left
//! alone, an owner could point those at the machine berth runs on, the
//! cloud's metadata service (169.254.169.254) or the operator's internal
//! network, and read the answers back through error messages. So internal
//! addresses are refused unless the operator allows their class
//! (`BERTH_ALLOW_TARGETS`); special-use addresses (unspecified, multicast,
//! documentation, reserved) are refused always: no registry or webhook
//! lives there.
//!
//! The check happens where the address is known for certain, so a name
//! cannot change its answer between the check and the connection (DNS
//! rebinding): [`TargetGuard::install`] gives a `reqwest` client a resolver
//! that drops refused addresses from every lookup, and a redirect policy
//! refusing redirects to refused IP literals; callers check IP-literal
//! request URLs with [`TargetGuard::check_url`] before sending, since
//! reqwest connects to those without asking the resolver. A proxy taken
//! from `HTTP(S)_PROXY` resolves names itself: only the proxy's own address
//! and IP literals are checked then.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The setting that allows internal classes; named in every refusal.
pub const SETTING: &str = "BERTH_ALLOW_TARGETS";

/// reqwest's own default limit, kept by our redirect policy.
const MAX_REDIRECTS: usize = 10;

/// What kind of address an IP is, as far as reaching it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Routable on the internet: always allowed.
    Public,
    /// 127.0.0.0/8, ::1: this machine.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared, carrier-grade NAT),
    /// fc00::/7 (unique local), fec0::/10 (old site-local), 64:ff9b:1::/48
    /// (local NAT64): the operator's networks.
    Private,
    /// 169.254/16 (cloud metadata among them), fe80::/10.
    LinkLocal,
    /// 0.0.0.0, ::; connecting there reaches this machine on Linux.
    Unspecified,
    /// Everything else with a reserved purpose: 0/8, multicast, broadcast
    /// and 240/4, documentation and benchmarking ranges, IETF protocol
    /// assignments (Teredo among them), 6to4, discard, IPv6 outside
    /// 2000::/3 and the prefixes above.
    SpecialUse,
}

impl AddressClass {
    /// The class of `ip`; an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64
    /// (`64:ff9b::a.b.c.d`) address is classed as the IPv4 address it
    /// reaches.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        }
    }

    /// The `BERTH_ALLOW_TARGETS` word allowing this class, if one can.
    pub fn setting_word(self) -> Option<&'static str> {
        match self {
            AddressClass::Loopback => Some("loopback"),
            AddressClass::Private => Some("private"),
            AddressClass::LinkLocal => Some("link-local"),
            AddressClass::Public | AddressClass::Unspecified | AddressClass::SpecialUse => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::SpecialUse => "special-use",
        }
    }

    fn article(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an",
            _ => "a",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    match ip.octets() {
        [0, 0, 0, 0] => Unspecified,
        [0, ..] => SpecialUse,
        [127, ..] => Loopback,
        [10, ..] | [192, 168, ..] => Private,
        [172, b, ..] if (16..=31).contains(&b) => Private,
        // Shared address space: carrier-grade NAT, and overlay networks
        // (Tailscale) inside an organisation.
        [100, b, ..] if (64..=127).contains(&b) => Private,
        [169, 254, ..] => LinkLocal,
        // IETF protocol assignments, documentation, the old 6to4 relay.
        [192, 0, 0, _] | [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => SpecialUse,
        [192, 88, 99, _] => SpecialUse,
        // Benchmarking.
        [198, 18 | 19, ..] => SpecialUse,
        // Multicast, reserved, broadcast.
        [224..=255, ..] => SpecialUse,
        _ => Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        return Unspecified;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    // The well-known NAT64 prefix reaches the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = ip.octets();
        return classify_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        return Private;
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Private,
        x if x & 0xffc0 == 0xfe80 => LinkLocal,
        x if x & 0xffc0 == 0xfec0 => Private,
        // 2001::/23 (IETF assignments, Teredo), documentation, 6to4.
        0x2001 if s[1] < 0x0200 || s[1] == 0x0db8 => SpecialUse,
        0x2002 => SpecialUse,
        x if x & 0xfff0 == 0x3ff0 => SpecialUse,
        // Global unicast; everything outside it (::/8 with IPv4-compatible
        // and discard addresses, multicast, unassigned space) is reserved.
        x if x & 0xe000 == 0x2000 => Public,
        _ => SpecialUse,
    }
}

/// Which internal address classes owner-supplied URLs may reach; public
/// addresses always may, unspecified and special-use ones never.
/// `Default` allows nothing internal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// 127.0.0.0/8 and ::1.
    pub allow_loopback: bool,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7.
    pub allow_private: bool,
    /// 169.254/16 (cloud metadata) and fe80::/10.
    pub allow_link_local: bool,
}

impl AddressPolicy {
    /// Public addresses only: `berth run <component>`'s default.
    pub const PUBLIC_ONLY: Self = Self {
        allow_loopback: false,
        allow_private: false,
        allow_link_local: false,
    };

    /// Public and loopback: `berth up`'s default (on one machine a local
    /// registry is normal), and the library default so clients built
    /// without configuration still refuse the metadata service.
    pub const LOOPBACK: Self = Self {
        allow_loopback: true,
        allow_private: false,
        allow_link_local: false,
    };

    /// Whether addresses of `class` may be reached.
    pub fn allows(&self, class: AddressClass) -> bool {
        match class {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Private => self.allow_private,
            AddressClass::LinkLocal => self.allow_link_local,
            AddressClass::Unspecified | AddressClass::SpecialUse => false,
        }
    }

    /// `Err(class)` when `ip` may not be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), AddressClass> {
        let class = AddressClass::of(ip);
        if self.allows(class) {
            Ok(())
        } else {
            Err(class)
        }
    }

    /// Parses the setting: a comma list of `loopback`, `private`,
    /// `link-local`, or `none` alone.
    pub fn parse(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split(',').map(str::trim).collect();
        if words == ["none"] {
            return Ok(Self::PUBLIC_ONLY);
        }
        let mut policy = Self::PUBLIC_ONLY;
        for word in words {
            match word {
                "loopback" => policy.allow_loopback = true,
                "private" => policy.allow_private = true,
                "link-local" => policy.allow_link_local = true,
                other => {
                    return Err(format!(
                        "{other:?} is not one of: loopback, private, link-local (or `none` alone)"
                    ))
                }
            }
        }
        Ok(policy)
    }
}

impl fmt::Display for AddressPolicy {
    /// The setting's form: `loopback,private` or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = [
            (self.allow_loopback, "loopback"),
            (self.allow_private, "private"),
            (self.allow_link_local, "link-local"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        if words.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&words.join(","))
        }
    }
}

/// How a refused address was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The URL names the IP itself.
    Literal,
    /// The host name resolves to refused addresses only.
    Resolved,
    /// A redirect names the IP.
    Redirect,
}

/// A connection refused by the [`AddressPolicy`]: the caller's fault (the
/// owner's URL), never worth retrying. Its message names the host as the
/// owner gave it and, for a name, not the addresses it resolved to (they
/// would map the operator's internal DNS for the owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRefused {
    /// What the host is to berth (`registry`, `webhook`), for the message.
    pub role: &'static str,
    /// The host as in the URL (an IP literal or a name).
    pub host: String,
    /// The (first) refused class.
    pub class: AddressClass,
    /// Literal, resolved name or redirect.
    pub via: Via,
}

impl fmt::Display for TargetRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (role, host, class, a) = (self.role, &self.host, self.class, self.class.article());
        match self.via {
            Via::Literal => write!(f, "{role} host {host} is {a} {class} address")?,
            Via::Resolved => write!(f, "{role} host {host} resolves only to {class} addresses")?,
            Via::Redirect => write!(
                f,
                "{role} redirect to {host} refused: it is {a} {class} address"
            )?,
        }
        match class.setting_word() {
            Some(_) => write!(
                f,
                "; the operator has not allowed {class} targets ({SETTING})"
            ),
            None => write!(f, "; berth never connects to {class} addresses"),
        }
    }
}

impl std::error::Error for TargetRefused {}

/// The refusal behind `err`, if a [`TargetGuard`] caused it (reqwest wraps
/// the resolver's and the redirect policy's errors a few layers deep).
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a TargetRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<TargetRefused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// An [`AddressPolicy`] applied to one kind of target (`role` names it in
/// refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetGuard {
    policy: AddressPolicy,
    role: &'static str,
}

impl TargetGuard {
    /// Guards `role` targets (`"registry"`, `"webhook"`) with `policy`.
    pub fn new(policy: AddressPolicy, role: &'static str) -> Self {
        Self { policy, role }
    }

    /// The policy applied.
    pub fn policy(&self) -> AddressPolicy {
        self.policy
    }

    /// A client builder whose lookups drop refused addresses and whose
    /// redirects to refused IP literals fail. Requests to IP-literal URLs
    /// must still pass [`TargetGuard::check_url`].
    pub fn install(self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
            .dns_resolver(GuardedResolver(self))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                match self.check_literal(attempt.url(), Via::Redirect) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
    }

    /// Refuses `url` when its host is an IP literal the policy refuses
    /// (names are left to the resolver, which sees what they resolve to).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), TargetRefused> {
        self.check_literal(url, Via::Literal)
    }

    fn check_literal(&self, url: &reqwest::Url, via: Via) -> Result<(), TargetRefused> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.policy.check(ip).map_err(|class| TargetRefused {
                role: self.role,
                host: host.to_owned(),
                class,
                via,
            }),
            Err(_) => Ok(()),
        }
    }
}

/// The system resolver (getaddrinfo, as reqwest's default) with refused
/// addresses dropped; a name left with none fails with [`TargetRefused`].
#[derive(Debug, Clone, Copy)]
struct GuardedResolver(TargetGuard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let mut refused = None;
            let kept: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| match guard.policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(class) => {
                        refused.get_or_insert(class);
                        false
                    }
                })
                .collect();
            match refused {
                Some(class) if kept.is_empty() => Err(Box::new(TargetRefused {
                    role: guard.role,
                    host,
                    class,
                    via: Via::Resolved,
                })
                    as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use AddressClass::*;

    fn class(s: &str) -> AddressClass {
        AddressClass::of(s.parse().unwrap())
    }

    #[test]
    fn every_internal_range_and_its_edges_are_classified() {
        let cases = [
            // Loopback.
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            // Private, with the edges of 172.16/12.
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("172.15.255.255", Public),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            ("192.168.0.1", Private),
            ("192.169.0.1", Public),
            ("100.64.0.1", Private),
            ("100.127.255.255", Private),
            ("100.128.0.0", Public),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("64:ff9b:1::1", Private),
            // Link-local, cloud metadata among them.
            ("169.254.169.254", LinkLocal),
            ("169.254.0.0", LinkLocal),
            ("169.255.0.0", Public),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            // Unspecified.
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            // Special use.
            ("0.1.2.3", SpecialUse),
            ("192.0.0.8", SpecialUse),
            ("192.0.2.1", SpecialUse),
            ("198.51.100.7", SpecialUse),
            ("203.0.113.9", SpecialUse),
            ("198.18.0.1", SpecialUse),
            ("198.19.255.255", SpecialUse),
            ("224.0.0.1", SpecialUse),
            ("240.0.0.1", SpecialUse),
            ("255.255.255.255", SpecialUse),
            ("ff02::1", SpecialUse),
            ("2001:db8::1", SpecialUse),
            ("2001::1", SpecialUse),
            ("2002:a00:1::1", SpecialUse),
            ("100::1", SpecialUse),
            ("::10.0.0.1", SpecialUse),
            ("4000::1", SpecialUse),
            // Public.
            ("1.1.1.1", Public),
            ("8.8.8.8", Public),
            ("2606:4700:4700::1111", Public),
            ("2001:4860:4860::8888", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_classed_as_what_they_reach() {
        assert_eq!(class("::ffff:10.0.0.1"), Private);
        assert_eq!(class("::ffff:127.0.0.1"), Loopback);
        assert_eq!(class("::ffff:169.254.169.254"), LinkLocal);
        assert_eq!(class("::ffff:0.0.0.0"), Unspecified);
        assert_eq!(class("::ffff:8.8.8.8"), Public);
        assert_eq!(class("64:ff9b::a9fe:a9fe"), LinkLocal);
        assert_eq!(class("64:ff9b::808:808"), Public);
    }

    #[test]
    fn the_policy_allows_exactly_its_classes() {
        let none = AddressPolicy::PUBLIC_ONLY;
        assert_eq!(AddressPolicy::default(), none);
        let all = AddressPolicy::parse("loopback,private,link-local").unwrap();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(none.check(ip).is_err(), "{ip}");
            assert!(all.check(ip).is_ok(), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "224.0.0.1", "2001:db8::1"] {
            assert!(
                all.check(ip.parse().unwrap()).is_err(),
                "{ip} is never allowed"
            );
        }
        assert!(none.check("8.8.8.8".parse().unwrap()).is_ok());
        let lo = AddressPolicy::LOOPBACK;
        assert!(lo.check("::1".parse().unwrap()).is_ok());
        assert_eq!(lo.check("10.1.2.3".parse().unwrap()), Err(Private));
    }

    #[test]
    fn the_setting_is_parsed_strictly() {
        assert_eq!(
            AddressPolicy::parse("none").unwrap(),
            AddressPolicy::PUBLIC_ONLY
        );
        assert_eq!(
            AddressPolicy::parse("loopback").unwrap(),
            AddressPolicy::LOOPBACK
        );
        let p = AddressPolicy::parse(" private , link-local").unwrap();
        assert!(p.allow_private && p.allow_link_local && !p.allow_loopback);
        assert_eq!(p.to_string(), "private,link-local");
        assert_eq!(AddressPolicy::PUBLIC_ONLY.to_string(), "none");
        for bad in [
            "",
            "all",
            "loopback,",
            "none,private",
            "Loopback",
            "metadata",
        ] {
            assert!(AddressPolicy::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refusals_say_what_and_how_to_allow_it() {
        let guard = TargetGuard::new(AddressPolicy::PUBLIC_ONLY, "registry");
        let url = reqwest::Url::parse("http://10.0.0.5:5000/v2/").unwrap();
        let r = guard.check_url(&url).unwrap_err();
        assert_eq!(
            r.to_string(),
            "registry host 10.0.0.5 is a private address; the operator has not \
             allowed private targets (BERTH_ALLOW_TARGETS)"
        );
        let url = reqwest::Url::parse("http://[::ffff:a9fe:a9fe]/").unwrap();
        assert_eq!(guard.check_url(&url).unwrap_err().class, LinkLocal);
        // URL parsing normalises the other spellings of an IPv4 address.
        let url = reqwest::Url::parse("http://0x7f.1/").unwrap();
        assert_eq!(guard.check_url(&url).unwrap_err().class, Loopback);
        let url = reqwest::Url::parse("http://0.0.0.0/").unwrap();
        let all = TargetGuard::new(AddressPolicy::parse("loopback,private").unwrap(), "webhook");
        assert_eq!(
            all.check_url(&url).unwrap_err().to_string(),
            "webhook host 0.0.0.0 is an unspecified address; berth never connects to \
             unspecified addresses"
        );
        // Names are the resolver's business.
        let url = reqwest::Url::parse("http://localhost:5000/").unwrap();
        assert!(guard.check_url(&url).is_ok());
    }
}

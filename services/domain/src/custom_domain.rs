//! Custom domains of web services: the rules a name must follow, what
//! kind of name it is (Render's `apex` / `subdomain`), and the claim
//! aggregate that makes a name belong to one service of one owner across
//! the installation.
//!
//! A name is claimed on its own subject (`…evt.domain.dom-…`, the id
//! derived from the name, `DomainId::of_name`) before it is added to the
//! service, and released after it is removed from it; two owners claiming
//! one name are decided one after the other on that subject and the second
//! is refused. The service's own list of domains
//! ([`crate::service::ServiceState::custom_domains`]) is the truth the
//! router serves; the claim only guards uniqueness, and the repairer of
//! `berth-ingress` brings the two back in line after a crash.

use berth_schemas::events::{DomainClaimed, DomainReleased};
use berth_schemas::ids::{OwnerId, ServiceId};
use berth_schemas::{Envelope, Event};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Ctx};
use crate::error::DomainError;

/// Most custom domains one service may have.
pub const MAX_CUSTOM_DOMAINS: usize = 25;
/// Longest host name (RFC 1035, without the trailing dot).
pub const NAME_MAX: usize = 253;
/// Longest label.
const LABEL_MAX: usize = 63;

/// Public suffixes of two labels that are common enough to matter for
/// telling an apex from a subdomain (`example.co.uk` is an apex). Not the
/// whole Public Suffix List: any other name's suffix is its last label.
const TWO_LABEL_SUFFIXES: &[&str] = &[
    "co.uk",
    "org.uk",
    "me.uk",
    "ltd.uk",
    "plc.uk",
    "net.uk",
    "ac.uk",
    "gov.uk",
    "com.au",
    "net.au",
    "org.au",
    "edu.au",
    "gov.au",
    "co.nz",
    "org.nz",
    "net.nz",
    "co.jp",
    "ne.jp",
    "or.jp",
    "ac.jp",
    "com.br",
    "net.br",
    "org.br",
    "com.cn",
    "net.cn",
    "org.cn",
    "co.in",
    "net.in",
    "org.in",
    "co.za",
    "org.za",
    "com.mx",
    "com.tr",
    "com.sg",
    "com.hk",
    "co.kr",
    "com.ar",
    "com.tw",
    "co.il",
    "com.pl",
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "onrender.com",
    "pages.dev",
    "netlify.app",
    "vercel.app",
    "fly.dev",
];

/// Render's kinds of custom domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainType {
    /// A registrable name right under its public suffix (`example.com`).
    Apex,
    /// Any name below an apex (`www.example.com`).
    Subdomain,
}

impl DomainType {
    /// Render's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Apex => "apex",
            DomainType::Subdomain => "subdomain",
        }
    }
}

/// The public suffix of a normalised name (see [`TWO_LABEL_SUFFIXES`]).
pub fn public_suffix(name: &str) -> &str {
    let mut dots = name.rmatch_indices('.').map(|(i, _)| i);
    let last = dots.next();
    let second = dots.next();
    if let Some(i) = second {
        let two = &name[i + 1..];
        if TWO_LABEL_SUFFIXES.contains(&two) {
            return two;
        }
    }
    match last {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// Whether a normalised name is an apex or a subdomain.
pub fn domain_type(name: &str) -> DomainType {
    let suffix = public_suffix(name);
    let above = name
        .strip_suffix(suffix)
        .and_then(|r| r.strip_suffix('.'))
        .unwrap_or("");
    if above.contains('.') {
        DomainType::Subdomain
    } else {
        DomainType::Apex
    }
}

/// Checks a custom domain name and returns it normalised (ASCII letters in
/// lower case). `base_domain` is the installation's own: its names are
/// berth's default hosts (`<service>.<base-domain>`), never custom ones.
pub fn normalise(name: &str, base_domain: &str) -> Result<String, DomainError> {
    let bad = |why: &str| {
        let shown: String = name.chars().take(80).collect();
        Err(DomainError::invalid("name", format!("{shown:?} {why}")))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if !name.is_ascii() {
        return bad("is not ASCII: give an internationalised name in its punycode form (xn--…)");
    }
    let lower = name.to_ascii_lowercase();
    if lower.contains('*') {
        return bad("is a wildcard; add each host name on its own");
    }
    if lower.ends_with('.') {
        return bad("ends with '.'; give the name without the trailing dot");
    }
    if lower.len() > NAME_MAX {
        return bad(&format!("is longer than {NAME_MAX} characters"));
    }
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.len() < 2 {
        return bad("is not a fully qualified host name (it needs a dot, e.g. www.example.com)");
    }
    for label in &labels {
        if label.is_empty() {
            return bad("has an empty label");
        }
        if label.len() > LABEL_MAX {
            return bad(&format!("has a label longer than {LABEL_MAX} characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("may contain only letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    // An IPv4 address, or anything whose top-level label is numeric, is
    // not a host name (no top-level domain is all digits).
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("is an IP address, not a host name");
    }
    let base = base_domain.trim_end_matches('.').to_ascii_lowercase();
    if !base.is_empty() && (lower == base || lower.ends_with(&format!(".{base}"))) {
        return bad(&format!(
            "is under this installation's own domain {base}: services answer there by their name already"
        ));
    }
    Ok(lower)
}

/// Who holds a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub owner: OwnerId,
    pub service: ServiceId,
}

/// The claim on one name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainClaimState {
    /// The name, once claimed the first time.
    pub name: String,
    /// `None` while nobody holds it.
    pub holder: Option<Holder>,
}

/// What callers ask of a name's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Take the (normalised) name for `service` of `owner`.
    Claim {
        name: String,
        owner: OwnerId,
        service: ServiceId,
    },
    /// Give it back, if `service` holds it.
    Release { name: String, service: ServiceId },
}

/// Applies one event: the first claim wins, only the holder releases.
pub fn apply(mut s: DomainClaimState, event: &Event) -> DomainClaimState {
    match event {
        Event::DomainClaimed(e) if s.holder.is_none() => {
            s.name = e.name.clone();
            s.holder = Some(Holder {
                owner: e.owner.clone(),
                service: e.service.clone(),
            });
        }
        Event::DomainReleased(e) if s.holder.as_ref().is_some_and(|h| h.service == e.service) => {
            s.holder = None;
        }
        _ => {}
    }
    s
}

/// Decides a claim or a release. A name held by another service (of any
/// owner) is refused without saying who holds it.
pub fn decide(s: &DomainClaimState, command: Command) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Claim {
            name,
            owner,
            service,
        } => match &s.holder {
            Some(h) if h.service == service => Ok(vec![]),
            Some(_) => Err(DomainError::DomainTaken { name }),
            None => Ok(vec![DomainClaimed {
                name,
                owner,
                service,
            }
            .into()]),
        },
        Command::Release { name, service } => match &s.holder {
            Some(h) if h.service == service => Ok(vec![DomainReleased { name, service }.into()]),
            _ => Ok(vec![]),
        },
    }
}

/// Folds an envelope.
pub fn fold(state: DomainClaimState, envelope: &Envelope) -> DomainClaimState {
    apply(state, &envelope.event)
}

/// The domain claim aggregate.
#[derive(Debug, Clone, Copy, Default)]
pub struct DomainClaim;

impl Aggregate for DomainClaim {
    type State = DomainClaimState;
    type Command = Command;

    fn apply(state: DomainClaimState, event: &Event) -> DomainClaimState {
        apply(state, event)
    }

    fn decide(
        state: &DomainClaimState,
        command: Command,
        _ctx: &Ctx,
    ) -> Result<Vec<Event>, DomainError> {
        decide(state, command)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_normalised() {
        for (given, want) in [
            ("www.example.com", "www.example.com"),
            ("WWW.Example.COM", "www.example.com"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("a-b.c1.example.test", "a-b.c1.example.test"),
        ] {
            assert_eq!(normalise(given, "localhost").unwrap(), want, "{given}");
        }
    }

    #[test]
    fn each_rule_refuses_with_a_reason() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        for bad in [
            "",
            "*.example.com",
            "www.example.com.",
            "10.0.0.1",
            "localhost",
            "bücher.example",
            "a..b.com",
            "-a.example.com",
            "a_b.example.com",
            "web.apps.example.net",
            "apps.example.net",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let got = normalise(bad, "apps.example.net");
            assert!(
                matches!(got, Err(DomainError::Invalid { field: "name", .. })),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn apex_and_subdomain_follow_the_public_suffix() {
        assert_eq!(domain_type("example.com"), DomainType::Apex);
        assert_eq!(domain_type("www.example.com"), DomainType::Subdomain);
        assert_eq!(domain_type("example.co.uk"), DomainType::Apex);
        assert_eq!(domain_type("a.example.co.uk"), DomainType::Subdomain);
        assert_eq!(public_suffix("www.example.co.uk"), "co.uk");
        assert_eq!(public_suffix("www.example.com"), "com");
    }

    fn owner(c: char) -> OwnerId {
        format!("usr-{}", c.to_string().repeat(20)).parse().unwrap()
    }

    fn srv(c: char) -> ServiceId {
        format!("srv-{}", c.to_string().repeat(20)).parse().unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_only_it_releases() {
        let name = "www.example.com".to_owned();
        let claim = |o: char, s: char| Command::Claim {
            name: name.clone(),
            owner: owner(o),
            service: srv(s),
        };
        let release = |s: char| Command::Release {
            name: name.clone(),
            service: srv(s),
        };
        let s = DomainClaimState::default();
        let ev = decide(&s, claim('a', 'a')).unwrap();
        assert_eq!(ev.len(), 1);
        let s = DomainClaim::apply_all(s, &ev);
        // Again by the holder: nothing; by anyone else: refused, unnamed.
        assert_eq!(decide(&s, claim('a', 'a')).unwrap(), vec![]);
        let refused = decide(&s, claim('b', 'b')).unwrap_err();
        assert_eq!(refused.http_status(), 409);
        assert!(!refused.to_string().contains("srv-"), "{refused}");
        assert!(decide(&s, claim('a', 'c')).is_err());
        assert_eq!(decide(&s, release('b')).unwrap(), vec![]);
        let ev = decide(&s, release('a')).unwrap();
        let s = DomainClaim::apply_all(s, &ev);
        assert!(s.holder.is_none());
        assert_eq!(decide(&s, claim('b', 'b')).unwrap().len(), 1);
    }
}

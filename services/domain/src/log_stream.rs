//! Log streams (Render's): where an owner's lines are sent, and a
//! service's override of it. The rules for an endpoint and an override,
//! and which stream a service's lines go to, decided here so the API that
//! takes a setting and the notifier that sends by it agree.

use std::net::IpAddr;

use berth_schemas::model::{LogStream, LogStreamOverride, LogStreamSetting, Sealed};

use crate::error::DomainError;

/// Longest endpoint accepted (a 253-byte name, `:` and a port).
const ENDPOINT_MAX: usize = 260;

/// A log stream endpoint: a host (a DNS name or an IP address) and a TCP
/// port, given as `HOST:PORT` (`[IPv6]:PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The name or address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT`; the error says what is wrong with it, naming
    /// `field`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, DomainError> {
        let bad = |why: &str| Err(DomainError::invalid(field, format!("{s:?} {why}")));
        if s.is_empty() {
            return Err(DomainError::invalid(field, "is empty: give HOST:PORT"));
        }
        if s.len() > ENDPOINT_MAX {
            return bad("is too long");
        }
        if s.contains("://") {
            return bad("has a scheme: give HOST:PORT, e.g. logs.example.com:6514 (berth always connects with TLS)");
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return bad("has no port: give HOST:PORT, e.g. logs.example.com:6514");
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return bad("has no valid port (1–65535) after its last `:`"),
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            match inner.strip_suffix(']').map(str::parse::<IpAddr>) {
                Some(Ok(IpAddr::V6(_))) => inner.trim_end_matches(']'),
                _ => return bad("has a bracketed host that is not an IPv6 address"),
            }
        } else if host.contains(':') {
            return bad("is an IPv6 address without brackets: give [ADDRESS]:PORT");
        } else if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host) {
            host
        } else {
            return bad("has a host that is neither a DNS name nor an IP address");
        };
        Ok(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Letters, digits and `-` in labels of 1–63 bytes that neither start nor
/// end with `-`, 253 bytes at most in all.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Longest token accepted.
pub const TOKEN_MAX: usize = 1024;

/// Checks a token in clear before it is sealed: 1–1024 visible ASCII
/// characters (it is written into every line, so no space or line break
/// may end it early or start a line of its own).
pub fn check_token(token: &str) -> Result<(), DomainError> {
    if token.len() > TOKEN_MAX {
        return Err(DomainError::invalid(
            "token",
            format!("is longer than {TOKEN_MAX} characters"),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DomainError::invalid(
            "token",
            "may hold visible ASCII characters only (no spaces or line breaks)",
        ));
    }
    Ok(())
}

/// Checks an owner's stream.
pub fn check(stream: &LogStream) -> Result<(), DomainError> {
    Endpoint::parse("endpoint", &stream.endpoint).map(|_| ())
}

/// Checks a service's override: `send` names an endpoint, `drop` neither
/// an endpoint nor a token (Render's rule).
pub fn check_override(o: &LogStreamOverride) -> Result<(), DomainError> {
    match (o.setting, &o.endpoint) {
        (LogStreamSetting::Send, None) => Err(DomainError::invalid(
            "endpoint",
            "is required when setting is send",
        )),
        (LogStreamSetting::Send, Some(e)) => Endpoint::parse("endpoint", e).map(|_| ()),
        (LogStreamSetting::Drop, Some(_)) => Err(DomainError::invalid(
            "endpoint",
            "cannot be given when setting is drop",
        )),
        (LogStreamSetting::Drop, None) if o.token.is_some() => Err(DomainError::invalid(
            "token",
            "cannot be given when setting is drop",
        )),
        (LogStreamSetting::Drop, None) => Ok(()),
    }
}

/// Where a service's lines go: its override's endpoint (`send`), nowhere
/// (`drop`), else its owner's stream, if any.
pub fn target<'a>(
    owner: Option<&'a LogStream>,
    service: Option<&'a LogStreamOverride>,
) -> Option<(&'a str, Option<&'a Sealed>)> {
    match service {
        Some(o) => match (o.setting, &o.endpoint) {
            (LogStreamSetting::Send, Some(e)) => Some((e.as_str(), o.token.as_ref())),
            _ => None,
        },
        None => owner.map(|s| (s.endpoint.as_str(), s.token.as_ref())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Result<Endpoint, String> {
        Endpoint::parse("endpoint", s).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(
            ep("Logs.Example.com:6514").unwrap(),
            Endpoint {
                host: "logs.example.com".into(),
                port: 6514
            }
        );
        assert_eq!(ep("127.0.0.1:514").unwrap().host, "127.0.0.1");
        assert_eq!(ep("[::1]:6514").unwrap().host, "::1");
        for (bad, why) in [
            ("", "empty"),
            ("tls://logs.example.com:6514", "scheme"),
            ("logs.example.com", "no port"),
            ("logs.example.com:0", "valid port"),
            ("logs.example.com:70000", "valid port"),
            ("logs.example.com:+80", "valid port"),
            ("::1:6514", "without brackets"),
            ("[127.0.0.1]:6514", "not an IPv6"),
            ("-bad.example.com:6514", "neither"),
            ("under_score.example.com:6514", "neither"),
            ("a b:6514", "neither"),
        ] {
            let e = ep(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(ep(&format!("{}.com:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn tokens_are_one_visible_word() {
        assert!(check_token("abc-123_XYZ.=").is_ok());
        assert!(check_token("a b").is_err());
        assert!(check_token("a\nb").is_err());
        assert!(check_token("é").is_err());
        assert!(check_token(&"a".repeat(TOKEN_MAX + 1)).is_err());
        assert!(check_token(&"a".repeat(TOKEN_MAX)).is_ok());
    }

    #[test]
    fn overrides_follow_renders_rules() {
        let send = |e: Option<&str>| LogStreamOverride {
            setting: LogStreamSetting::Send,
            endpoint: e.map(str::to_owned),
            token: None,
        };
        assert!(check_override(&send(Some("h.example:1"))).is_ok());
        assert!(check_override(&send(None)).is_err());
        assert!(check_override(&send(Some("h.example"))).is_err());
        let drop = LogStreamOverride {
            setting: LogStreamSetting::Drop,
            endpoint: None,
            token: None,
        };
        assert!(check_override(&drop).is_ok());
        let mut with = drop.clone();
        with.endpoint = Some("h.example:1".into());
        assert!(check_override(&with).is_err());
        let mut with = drop;
        with.token = Some(Sealed {
            kid: "k".into(),
            ciphertext: "c".into(),
        });
        assert!(check_override(&with).is_err());
    }

    #[test]
    fn a_service_override_wins_over_its_owner() {
        let owner = LogStream {
            endpoint: "o.example:1".into(),
            token: None,
            preview: LogStreamSetting::Send,
        };
        let own = LogStreamOverride {
            setting: LogStreamSetting::Send,
            endpoint: Some("s.example:2".into()),
            token: None,
        };
        let drop = LogStreamOverride {
            setting: LogStreamSetting::Drop,
            endpoint: None,
            token: None,
        };
        assert_eq!(target(Some(&owner), None).unwrap().0, "o.example:1");
        assert_eq!(target(Some(&owner), Some(&own)).unwrap().0, "s.example:2");
        assert_eq!(target(None, Some(&own)).unwrap().0, "s.example:2");
        assert!(target(Some(&owner), Some(&drop)).is_none());
        assert!(target(None, None).is_none());
    }
}

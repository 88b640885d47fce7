//! Registry authentication: credentials, `WWW-Authenticate` challenges and
//! the per-(registry, repository, credential) bearer-token cache.
//!
//! The flow is Docker's: a request without (or with stale) authorization
//! gets 401 and a challenge; `Basic` → resend with the credential;
//! `Bearer realm,service,scope` → GET the realm (with the credential as basic
//! auth, if any) for a token, then resend with it. What each host asked for
//! is remembered so later requests send authorization up front and cost one
//! round trip.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A registry login: username plus password or access token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Registry username.
    pub username: String,
    /// Password or access token: a secret, never formatted anywhere.
    pub token: String,
}

impl Credential {
    /// A credential from a username and secret.
    pub fn new(username: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            token: token.into(),
        }
    }

    /// The `Authorization: Basic …` value.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.token);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// A cache key that identifies the credential without holding it in
    /// clear: SHA-256 of `username NUL token`.
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.username.as_bytes());
        ctx.update(&[0]);
        ctx.update(self.token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse one `WWW-Authenticate` value. Parameters are `key=value` or
/// `key="quoted, with commas"`; unknown schemes give `None`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// How a host authenticates, learnt from its first challenge.
#[derive(Debug, Clone)]
pub(crate) enum HostAuth {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

type TokenKey = (String, String, Option<[u8; 32]>);

/// Shared authentication state of one client.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    hosts: HashMap<String, HostAuth>,
    tokens: HashMap<TokenKey, (String, Instant)>,
}

/// Cached tokens kept at most; beyond that the cache is cleared (a crude
/// bound that only matters with thousands of repositories).
const MAX_TOKENS: usize = 4096;

impl AuthState {
    pub(crate) fn host(&self, host: &str) -> Option<HostAuth> {
        self.hosts.get(host).cloned()
    }

    pub(crate) fn set_host(&mut self, host: &str, auth: HostAuth) {
        self.hosts.insert(host.to_string(), auth);
    }

    pub(crate) fn token(
        &self,
        host: &str,
        repo: &str,
        cred: Option<&Credential>,
    ) -> Option<String> {
        let key = (
            host.to_string(),
            repo.to_string(),
            cred.map(Credential::fingerprint),
        );
        match self.tokens.get(&key) {
            Some((token, until)) if Instant::now() < *until => Some(token.clone()),
            _ => None,
        }
    }

    pub(crate) fn put_token(
        &mut self,
        host: &str,
        repo: &str,
        cred: Option<&Credential>,
        token: String,
        lifetime: Duration,
    ) {
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.clear();
        }
        // Renew a little before the registry would refuse it.
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        let key = (
            host.to_string(),
            repo.to_string(),
            cred.map(Credential::fingerprint),
        );
        self.tokens.insert(
            key,
            (token, Instant::now() + lifetime.saturating_sub(margin)),
        );
    }

    pub(crate) fn forget_token(&mut self, host: &str, repo: &str, cred: Option<&Credential>) {
        let key = (
            host.to_string(),
            repo.to_string(),
            cred.map(Credential::fingerprint),
        );
        self.tokens.remove(&key);
    }
}

/// A token endpoint's answer (Docker token spec: `token`, or the OAuth2
/// `access_token`; `expires_in` seconds, 60 when absent).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let token = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let secs = self.expires_in.unwrap_or(60).clamp(1, 24 * 3600);
        Some((token, Duration::from_secs(secs)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn credential_debug_hides_the_secret() {
        let c = Credential::new("ann", "s3cr3t-t0ken");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn token_cache_is_per_credential() {
        let mut s = AuthState::default();
        let a = Credential::new("a", "1");
        let b = Credential::new("a", "2");
        s.put_token("h", "r", Some(&a), "tok".into(), Duration::from_secs(60));
        assert_eq!(s.token("h", "r", Some(&a)).as_deref(), Some("tok"));
        assert_eq!(s.token("h", "r", Some(&b)), None);
        assert_eq!(s.token("h", "r", None), None);
        assert_eq!(s.token("h", "other", Some(&a)), None);
    }
}

//! The HTTP core: one `reqwest` client with rustls, authorization that
//! follows challenges, status classification, bounded body reads and the
//! retry loop shared by every operation. Every request goes through the
//! address policy: IP-literal URLs are checked here before sending, names
//! and redirects by the guard installed in the client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_domain::reference::Digest;
use berth_runtime::egress::{self, TargetGuard};
use reqwest::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use crate::auth::{parse_challenge, AuthState, Challenge, Credential, HostAuth, TokenResponse};
use crate::config::ClientConfig;
use crate::error::{AttemptError, ResolveError};
use crate::resolve::SummaryCache;
use crate::retry::{is_transient, retry_after};

/// Where an image lives: the API host (with port), the repository path and
/// a tag or digest. Built from a parsed `berth_domain::reference::Reference`
/// with `ImageRef::try_from(&reference)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// API host incl. port, e.g. `registry-1.docker.io`, `127.0.0.1:5000`.
    pub host: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag or `sha256:…` digest.
    pub reference: String,
}

impl ImageRef {
    /// Check the parts are safe to put in a URL; the full reference
    /// grammar lives in `berth_domain::reference`.
    pub fn new(
        host: impl Into<String>,
        repository: impl Into<String>,
        reference: impl Into<String>,
    ) -> Result<Self, ResolveError> {
        let r = Self {
            host: host.into(),
            repository: repository.into(),
            reference: reference.into(),
        };
        let host_ok = !r.host.is_empty()
            && r.host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        let repo_ok = !r.repository.is_empty()
            && !r.repository.starts_with('/')
            && !r
                .repository
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            && r.repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
        let reference_ok = crate::digest::parse(&r.reference).is_some()
            || (!r.reference.is_empty()
                && r.reference.len() <= 128
                && r.reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        if host_ok && repo_ok && reference_ok {
            Ok(r)
        } else {
            Err(ResolveError::NotFound(format!(
                "invalid image reference {}/{}:{}",
                crate::manifest::truncate(&r.host, 100),
                crate::manifest::truncate(&r.repository, 200),
                crate::manifest::truncate(&r.reference, 140)
            )))
        }
    }

    /// The digest, when the reference is one.
    pub fn digest(&self) -> Option<Digest> {
        crate::digest::parse(&self.reference)
    }

    /// `repository@digest` on `host` with its parsed digest, refusing a
    /// `digest` that is not one (manifests fetched or checked for presence
    /// are always addressed by digest).
    pub(crate) fn by_digest(
        host: &str,
        repository: &str,
        digest: &str,
    ) -> Result<(Self, Digest), ResolveError> {
        let image = Self::new(host, repository, digest)?;
        let digest = image
            .digest()
            .ok_or_else(|| ResolveError::NotFound(format!("{digest:?} is not a digest")))?;
        Ok((image, digest))
    }
}

impl TryFrom<&berth_domain::reference::Reference> for ImageRef {
    type Error = ResolveError;

    /// The API host (Docker Hub → `registry-1.docker.io`), path, and the
    /// digest when there is one (it wins over a tag), else the tag.
    fn try_from(r: &berth_domain::reference::Reference) -> Result<Self, ResolveError> {
        ImageRef::new(r.registry_host(), r.path(), r.manifest_reference())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.digest().is_some() { '@' } else { ':' };
        write!(
            f,
            "{}/{}{}{}",
            self.host, self.repository, sep, self.reference
        )
    }
}

/// Client for the registry HTTP API v2. Cheap to clone; clones share the
/// connection pool, token cache and manifest-summary cache.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    pub(crate) http: reqwest::Client,
    pub(crate) cfg: Arc<ClientConfig>,
    guard: TargetGuard,
    auth: Arc<Mutex<AuthState>>,
    pub(crate) summaries: Arc<Mutex<SummaryCache>>,
}

/// The client could not be built (TLS setup).
#[derive(Debug, thiserror::Error)]
#[error("cannot build registry client: {0}")]
pub struct BuildError(String);

impl RegistryClient {
    /// A client with rustls (ring provider, platform certificate verifier).
    pub fn new(cfg: ClientConfig) -> Result<Self, BuildError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError(e.to_string()))?
            .with_platform_verifier()
            .map_err(|e| BuildError(e.to_string()))?
            .with_no_client_auth();
        let guard = TargetGuard::new(cfg.targets, "registry");
        let http = guard
            .install(reqwest::Client::builder())
            .tls_backend_preconfigured(tls)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(cfg.user_agent.clone())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Self {
            http,
            cfg: Arc::new(cfg),
            guard,
            auth: Arc::new(Mutex::new(AuthState::default())),
            summaries: Arc::new(Mutex::new(SummaryCache::default())),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub(crate) fn url(&self, host: &str, path: &str) -> String {
        let scheme = if self.cfg.is_insecure(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}{path}")
    }

    fn auth_state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another task panicked mid-update of a
        // cache; the data is still a valid cache.
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Authorization to send up front, from what the host asked for before:
    /// basic credentials, or a cached (else freshly fetched) bearer token.
    async fn known_authorization(
        &self,
        host: &str,
        repo: &str,
        cred: Option<&Credential>,
    ) -> Result<Option<String>, AttemptError> {
        let known = self.auth_state().host(host);
        match known {
            None => Ok(None),
            Some(HostAuth::Basic) => Ok(cred.map(Credential::basic_header)),
            Some(HostAuth::Bearer { realm, service }) => {
                let cached = self.auth_state().token(host, repo, cred);
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let scope = format!("repository:{repo}:pull");
                        self.fetch_token(host, repo, &realm, service.as_deref(), &scope, cred)
                            .await?
                    }
                };
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Send `method url` for `repo` on `host`, answering one auth challenge.
    /// The response may still be any status; callers classify it.
    pub(crate) async fn send(
        &self,
        method: Method,
        (host, repo): (&str, &str),
        url: &str,
        accept: Option<&str>,
        cred: Option<&Credential>,
        timeout: Option<Duration>,
    ) -> Result<Response, AttemptError> {
        let sent_auth = self.known_authorization(host, repo, cred).await?;
        let resp = self
            .send_once(method.clone(), url, accept, sent_auth.as_deref(), timeout)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = challenge_of(resp.headers());
        let authz = match challenge {
            Some(Challenge::Basic) => {
                self.auth_state().set_host(host, HostAuth::Basic);
                match cred {
                    None => {
                        return Err(ResolveError::Unauthorized(format!(
                            "{host} requires credentials for {repo}"
                        ))
                        .into())
                    }
                    Some(_) if sent_auth.is_some() => {
                        return Err(ResolveError::Unauthorized(format!(
                            "{host} rejected the credentials for {repo}"
                        ))
                        .into())
                    }
                    Some(c) => c.basic_header(),
                }
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                self.auth_state().set_host(
                    host,
                    HostAuth::Bearer {
                        realm: realm.clone(),
                        service: service.clone(),
                    },
                );
                self.auth_state().forget_token(host, repo, cred);
                let scope = scope.unwrap_or_else(|| format!("repository:{repo}:pull"));
                let token = self
                    .fetch_token(host, repo, &realm, service.as_deref(), &scope, cred)
                    .await?;
                format!("Bearer {token}")
            }
            None => {
                return Err(ResolveError::Unauthorized(format!(
                    "{host} answered 401 without a usable challenge for {repo}"
                ))
                .into())
            }
        };
        let resp = self
            .send_once(method, url, accept, Some(&authz), timeout)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let what = if cred.is_some() {
                "rejected the credentials"
            } else {
                "refused anonymous access"
            };
            return Err(ResolveError::Unauthorized(format!("{host} {what} for {repo}")).into());
        }
        Ok(resp)
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
        authz: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Response, AttemptError> {
        let mut req = self.http.request(method, url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if let Some(a) = authz {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req.build().map_err(|e| transport_error(url, &e))?;
        self.guard
            .check_url(req.url())
            .map_err(ResolveError::TargetRefused)?;
        self.http
            .execute(req)
            .await
            .map_err(|e| transport_error(url, &e))
    }

    /// The bearer-token leg: GET the realm with service and scope, basic
    /// auth with the credential when there is one.
    async fn fetch_token(
        &self,
        host: &str,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        cred: Option<&Credential>,
    ) -> Result<String, AttemptError> {
        let mut url = reqwest::Url::parse(realm).map_err(|_| {
            ResolveError::Unauthorized(format!("{host} named an invalid token realm"))
        })?;
        let realm_host = url.host_str().unwrap_or("").to_string();
        let realm_hostport = match url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host.clone(),
        };
        // Never send a password in clear to anything but loopback or an
        // explicitly insecure host.
        let plain_ok = self.cfg.is_insecure(&realm_hostport) || self.cfg.is_insecure(&realm_host);
        if url.scheme() != "https" && !(url.scheme() == "http" && plain_ok) {
            return Err(ResolveError::Unauthorized(format!(
                "{host} named a token realm that is not https ({realm_host})"
            ))
            .into());
        }
        TargetGuard::new(self.cfg.targets, "registry token service")
            .check_url(&url)
            .map_err(ResolveError::TargetRefused)?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
            if let Some(c) = cred {
                q.append_pair("account", &c.username);
            }
        }
        let mut req = self.http.get(url).timeout(self.cfg.request_timeout);
        if let Some(c) = cred {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&format!("token service {realm_host}"), &e))?;
        let status = resp.status();
        if is_transient(status) {
            return Err(AttemptError::Transient {
                message: format!("token service {realm_host} answered {status}"),
                retry_after: retry_after(resp.headers()),
            });
        }
        if !status.is_success() {
            return Err(ResolveError::Unauthorized(format!(
                "token service {realm_host} refused a token for {repo} ({status})"
            ))
            .into());
        }
        let body = read_capped(resp, 1024 * 1024).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            ResolveError::Unauthorized(format!("token service {realm_host} sent no usable token"))
        })?;
        let (token, lifetime) = parsed.into_token().ok_or_else(|| {
            ResolveError::Unauthorized(format!("token service {realm_host} sent an empty token"))
        })?;
        self.auth_state()
            .put_token(host, repo, cred, token.clone(), lifetime);
        Ok(token)
    }
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_challenge)
        .collect();
    all.iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| all.first())
        .cloned()
}

/// Connect errors, timeouts and broken connections are worth retrying; a
/// refused address is not (and its message is ours, never a connection
/// error from an internal host).
fn transport_error(what: &str, e: &reqwest::Error) -> AttemptError {
    if let Some(refused) = egress::refusal(e) {
        return ResolveError::TargetRefused(refused.clone()).into();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's Display holds the URL (never credentials: those are only
    // in headers); the source chain says why.
    let mut msg = format!("{what}: {kind}");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    AttemptError::transient(msg)
}

/// Read at most `cap` bytes of body; more is an error (hostile input).
pub(crate) async fn read_capped(mut resp: Response, cap: usize) -> Result<Vec<u8>, AttemptError> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Err(ResolveError::InvalidResponse(format!(
            "response body of {} bytes exceeds the {cap}-byte limit",
            resp.content_length().unwrap_or_default()
        ))
        .into());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error("reading response body", &e))?
    {
        if body.len() + chunk.len() > cap {
            return Err(ResolveError::InvalidResponse(format!(
                "response body exceeds the {cap}-byte limit"
            ))
            .into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turn a non-success response into a classified failure. Only the
/// registry's error *codes* are quoted (never its free text, which could
/// echo anything).
pub(crate) async fn status_error(resp: Response, what: &str) -> AttemptError {
    let status = resp.status();
    if is_transient(status) {
        return AttemptError::Transient {
            message: format!("{what}: HTTP {status}"),
            retry_after: retry_after(resp.headers()),
        };
    }
    let codes = match read_capped(resp, 64 * 1024).await {
        Ok(body) => error_codes(&body),
        Err(_) => Vec::new(),
    };
    let detail = if codes.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {}", codes.join(","))
    };
    let not_found = [
        "MANIFEST_UNKNOWN",
        "NAME_UNKNOWN",
        "BLOB_UNKNOWN",
        "NAME_INVALID",
        "TAG_INVALID",
    ];
    match status {
        StatusCode::NOT_FOUND => ResolveError::NotFound(format!("{what}: {detail}")).into(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            ResolveError::Unauthorized(format!("{what}: {detail}")).into()
        }
        _ if codes.iter().any(|c| not_found.contains(&c.as_str())) => {
            ResolveError::NotFound(format!("{what}: {detail}")).into()
        }
        _ if codes.iter().any(|c| c == "DENIED" || c == "UNAUTHORIZED") => {
            ResolveError::Unauthorized(format!("{what}: {detail}")).into()
        }
        _ => ResolveError::InvalidResponse(format!("{what}: unexpected {detail}")).into(),
    }
}

fn error_codes(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| {
            e.errors
                .into_iter()
                .map(|x| x.code)
                .filter(|c| {
                    !c.is_empty()
                        && c.len() <= 40
                        && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                })
                .take(4)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_refuse_url_injection() {
        assert!(ImageRef::new("127.0.0.1:5000", "library/alpine", "3.20").is_ok());
        assert!(ImageRef::new("h", "a/../b", "t").is_err());
        assert!(ImageRef::new("h/x", "a", "t").is_err());
        assert!(ImageRef::new("h", "a", "t?x=1").is_err());
        assert!(ImageRef::new("h@evil", "a", "t").is_err());
    }

    #[test]
    fn converts_domain_references() {
        use berth_domain::reference::Reference;
        let cases = [
            ("alpine", "registry-1.docker.io", "library/alpine", "latest"),
            (
                "localhost:5000/team/app:v1",
                "localhost:5000",
                "team/app",
                "v1",
            ),
            (
                "[::1]:5000/a_b/c__d:T_1.x",
                "[::1]:5000",
                "a_b/c__d",
                "T_1.x",
            ),
        ];
        for (input, host, repo, reference) in cases {
            let r = ImageRef::try_from(&Reference::parse(input).unwrap()).unwrap();
            assert_eq!(
                (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
                (host, repo, reference),
                "{input}"
            );
        }
        let d = format!("sha256:{}", "a".repeat(64));
        let r =
            ImageRef::try_from(&Reference::parse(&format!("ghcr.io/o/r:v1@{d}")).unwrap()).unwrap();
        assert_eq!(r.reference, d);
    }

    #[test]
    fn only_error_codes_are_quoted() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"secret echo"},{"code":"lower"}]}"#;
        assert_eq!(error_codes(body), vec!["MANIFEST_UNKNOWN".to_string()]);
    }
}

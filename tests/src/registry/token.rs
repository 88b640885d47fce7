//! In-test token issuer for a registry in token-auth mode: an HTTP server
//! on a free loopback port implementing the Docker token endpoint
//! (`GET /token?service=…&scope=…` with optional basic auth) and issuing
//! ES256 JWTs whose header carries the signing certificate in `x5c`; the
//! registry trusts that self-signed certificate through its
//! `rootcertbundle`. `aud` is a single string (what distribution 2.8.2
//! accepts). Anonymous callers get a token with no access; wrong
//! credentials get 401.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `service` the registry is configured with (and the JWT `aud`).
pub const SERVICE: &str = "berth-test-registry";
/// The JWT `iss` the registry expects.
pub const ISSUER: &str = "berth-test-issuer";

struct Inner {
    user: String,
    pass: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
    requests: AtomicUsize,
}

/// A running token issuer; stops when dropped.
pub struct TokenIssuer {
    inner: Arc<Inner>,
    cert_pem: String,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    /// Generate a P-256 key and self-signed certificate and start serving.
    pub async fn start(user: &str, pass: &str) -> Result<Self> {
        let key_pair = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec![ISSUER.to_string()])?.self_signed(&key_pair)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("loading the issuer key: {e}"))?;
        let inner = Arc::new(Inner {
            user: user.to_string(),
            pass: pass.to_string(),
            key,
            cert_der: cert.der().to_vec(),
            rng,
            requests: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/token", axum::routing::get(serve_token))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            inner,
            cert_pem: cert.pem(),
            addr,
            task,
        })
    }

    /// The realm URL for the registry config.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// How many token requests were served (to observe caching).
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Mint a token directly (the harness's own push rights).
    pub async fn token_for(&self, user: &str, pass: &str, scope: &str) -> Result<String> {
        anyhow::ensure!(
            user == self.inner.user && pass == self.inner.pass,
            "wrong admin credentials"
        );
        self.inner.mint(user, &[scope.to_string()])
    }
}

impl Inner {
    fn mint(&self, subject: &str, scopes: &[String]) -> Result<String> {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", self.requests.load(Ordering::SeqCst)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header)?),
            b64url(&serde_json::to_vec(&claims)?)
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!("{signing_input}.{}", b64url(sig.as_ref())))
    }
}

async fn serve_token(
    State(inner): State<Arc<Inner>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (subject, scopes) = match basic {
        None => (String::new(), Vec::new()),
        Some(up) => match up.split_once(':') {
            Some((u, p)) if u == inner.user && p == inner.pass => (
                u.to_string(),
                params
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .collect(),
            ),
            _ => {
                return (
                    StatusCode::UNAUTHORIZED,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                )
                    .into_response()
            }
        },
    };
    match inner.mint(&subject, &scopes).context("minting") {
        Ok(tok) => axum::Json(serde_json::json!({
            "token": tok,
            "access_token": tok,
            "expires_in": 300,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

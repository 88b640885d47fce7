//! The HTTP side of the client: finds the API and its key, sends JSON, and
//! turns every failure into a [`ClientError`] that says what to do next.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_api::bootstrap::{CredentialsFile, CREDENTIALS_FILE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::ClientOpts;

/// Where the API listens when nothing says otherwise (`berth up`'s default).
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7000";

/// Where `berth up` keeps its data when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./.berth";

/// Why a client command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error (exit 1).
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        hint: Option<String>,
    },
    /// Something else went wrong after the command started, e.g. a deploy
    /// that was followed and failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The command line or configuration is unusable (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The API could not be reached (exit 69).
    #[error("{0}")]
    Unreachable(String),
    /// Nothing went wrong for berth; the command exits with this code (a
    /// command run in an instance exited with it). Nothing is printed.
    #[error("exit {0}")]
    Exit(u8),
}

/// Whether this run prints JSON (`--json`): errors then too.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl ClientError {
    /// Prints the error and returns its exit code: on stderr, or under
    /// `--json` as one JSON document on stdout
    /// (`{"error": {kind, message, status?, hint?, exitCode}}`), so a
    /// script reads failures the way it reads answers.
    pub fn report(self) -> ExitCode {
        if let ClientError::Exit(code) = self {
            return ExitCode::from(code);
        }
        let (code, kind) = match &self {
            ClientError::Exit(code) => (*code, "exit"),
            ClientError::Api { .. } => (1, "refused"),
            ClientError::Failed(_) => (1, "failed"),
            ClientError::Usage(_) => (64, "usage"),
            ClientError::Unreachable(_) => (69, "unreachable"),
        };
        if JSON.load(std::sync::atomic::Ordering::Relaxed) {
            let mut error = serde_json::json!({
                "kind": kind,
                "message": self.to_string(),
                "exitCode": code,
            });
            if let ClientError::Api { status, hint, .. } = &self {
                error["status"] = (*status).into();
                if let Some(h) = hint {
                    error["hint"] = h.clone().into();
                }
            }
            println!("{}", serde_json::json!({ "error": error }));
            return ExitCode::from(code);
        }
        eprintln!("berth: error: {self}");
        if let ClientError::Api {
            hint: Some(hint), ..
        } = &self
        {
            eprintln!("berth: {hint}");
        }
        ExitCode::from(code)
    }
}

/// An API connection: base URL, key, and where the key came from (for hints).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    key: Arc<str>,
    key_from: Arc<str>,
    /// The owner the credentials file names, when the key came from it.
    owner_id: Option<Arc<str>>,
    /// The installation's data dir, when one was given or found.
    data_dir: Option<PathBuf>,
    /// The options it was built from.
    pub opts: ClientOpts,
}

/// The credentials file at `path` (`None` when there is none), or why it
/// cannot be read; `found` says how the path was found, for the message.
fn read_credentials(path: &Path, found: &str) -> Result<Option<CredentialsFile>, ClientError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ClientError::Usage(format!(
                "{}{found} is not a berth credentials file ({e}); set BERTH_API_KEY instead",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let whose = match crate::installation::owner_and_mode(path) {
                Some((owner, mode)) => format!(
                    "it holds the installation's API key and is readable only by {owner} \
                     (mode {mode:04o})"
                ),
                None => format!(
                    "it holds the installation's API key and its directory {} is closed to \
                     this user",
                    path.parent().unwrap_or(path).display()
                ),
            };
            Err(ClientError::Usage(format!(
                "cannot read {}{found}: permission denied; {whose}. Run the command as the \
                 user who runs `berth up` (e.g. with sudo), or have them create a key for you \
                 (`berth apikey create --label NAME`) and set BERTH_API_KEY to it",
                path.display()
            )))
        }
        Err(e) => Err(ClientError::Usage(format!(
            "cannot read {}{found}: {e}; set BERTH_API_KEY instead",
            path.display()
        ))),
    }
}

/// Where the installation is, as far as this user can tell.
#[derive(Debug, Default)]
struct Located {
    data_dir: Option<PathBuf>,
    /// The credentials file and its path.
    file: Option<(PathBuf, CredentialsFile)>,
    /// Why the credentials file found cannot be used (it matters only
    /// when the key is to come from it).
    unusable: Option<ClientError>,
    /// The API URL `berth up` recorded.
    recorded_url: Option<String>,
    /// Where it looked, for a message when nothing was there.
    looked: Vec<String>,
}

/// Finds the installation: the data dir given (`--data-dir`,
/// `BERTH_DATA_DIR`), else `./.berth` when it holds credentials.json,
/// else the one the running `berth up` recorded
/// ([`crate::installation`]).
fn locate(opts: &ClientOpts) -> Located {
    use crate::installation::{find_record, Lookup};
    let in_dir = |dir: &Path, found: &str| -> Located {
        let path = dir.join(CREDENTIALS_FILE);
        let (file, unusable) = match read_credentials(&path, found) {
            Ok(file) => (file.map(|f| (path.clone(), f)), None),
            Err(e) => (None, Some(e)),
        };
        Located {
            data_dir: Some(dir.to_path_buf()),
            looked: vec![format!("{}{found}", path.display())],
            file,
            unusable,
            recorded_url: None,
        }
    };
    if let Some(dir) = &opts.data_dir {
        return in_dir(dir, "");
    }
    let local = Path::new(DEFAULT_DATA_DIR);
    // There, even if this user may not read it: then say so.
    match std::fs::symlink_metadata(local.join(CREDENTIALS_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => return in_dir(local, ""),
    }
    let mut looked = vec![format!("{}", local.join(CREDENTIALS_FILE).display())];
    match find_record() {
        Lookup::Found(record_path, record) => {
            let mut found = in_dir(
                &record.data_dir,
                &format!(
                    " (the data dir `berth up` recorded in {})",
                    record_path.display()
                ),
            );
            found.recorded_url = Some(record.api_url);
            looked.append(&mut found.looked);
            found.looked = looked;
            found
        }
        Lookup::Unusable(found) => {
            // Every place looked, each unusable record with why.
            looked.extend(crate::installation::record_paths().into_iter().map(|p| {
                match found.iter().find(|(at, _)| *at == p) {
                    Some((_, why)) => format!("{} ({why})", p.display()),
                    None => p.display().to_string(),
                }
            }));
            Located {
                looked,
                ..Located::default()
            }
        }
        Lookup::None => {
            looked.extend(crate::installation::record_paths().iter().map(|p| {
                format!(
                    "{} (where a running `berth up` records itself)",
                    p.display()
                )
            }));
            Located {
                looked,
                ..Located::default()
            }
        }
    }
}

impl Api {
    /// Builds the connection from the options, `BERTH_API_KEY` and the
    /// credentials file (see [`locate`] for where it is looked for).
    pub fn from_opts(opts: &ClientOpts) -> Result<Self, ClientError> {
        JSON.store(opts.json, std::sync::atomic::Ordering::Relaxed);
        let env_key = std::env::var("BERTH_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty());
        // Only look for the file when something is still missing.
        let found = if env_key.is_none() || opts.api_url.is_none() {
            locate(opts)
        } else {
            Located {
                data_dir: opts.data_dir.clone(),
                ..Located::default()
            }
        };
        // The file's owner is the key's only when the key is the file's.
        let owner_id = found
            .file
            .as_ref()
            .filter(|_| env_key.is_none())
            .map(|(_, f)| Arc::from(f.owner_id.as_str()));
        let (key, key_from) = match (env_key, &found.file) {
            (Some(k), _) => (k, "BERTH_API_KEY".to_owned()),
            (None, Some((path, f))) => (f.api_key.clone(), path.display().to_string()),
            (None, None) => {
                if let Some(unusable) = found.unusable {
                    return Err(unusable);
                }
                return Err(ClientError::Usage(format!(
                    "no API key: set BERTH_API_KEY, or point BERTH_DATA_DIR at the data \
                     directory of `berth up` (looked for {})",
                    found.looked.join("; ")
                )));
            }
        };
        let base = opts
            .api_url
            .clone()
            .or_else(|| found.file.map(|(_, f)| f.api_url))
            .or(found.recorded_url)
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "API URL {base:?} must start with http:// or https://"
            )));
        }
        Ok(Self {
            http: build_http()?,
            base: base.into(),
            key: key.trim().into(),
            key_from: key_from.into(),
            owner_id,
            data_dir: found.data_dir,
            opts: opts.clone(),
        })
    }

    /// The installation's data dir, when one was given or found (its
    /// operator NATS credentials are there).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The owner of the key, when the credentials file says it.
    pub fn owner_id(&self) -> Option<String> {
        self.owner_id.as_deref().map(str::to_owned)
    }

    /// Print JSON instead of tables (`--json`).
    pub fn json(&self) -> bool {
        self.opts.json
    }

    /// The base URL, e.g. `http://127.0.0.1:7000`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path`, the answer's JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// POST `body` to `path` (`{}` when `None`), the answer's JSON (`null` if empty).
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let body = body.unwrap_or_else(|| Value::Object(Default::default()));
        self.send(Method::POST, path, Some(body)).await
    }

    /// [`Api::post`] whose answer may take up to `wait` (the client's
    /// usual limit is a minute).
    pub async fn post_waiting(
        &self,
        path: &str,
        body: Value,
        wait: Duration,
    ) -> Result<Value, ClientError> {
        self.send_within(Method::POST, path, Some(body), Some(wait))
            .await
    }

    /// PATCH `path` with `body`.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// PUT `body` to `path`.
    pub async fn put(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(Method::DELETE, path, None).await
    }

    /// Every item of a cursor-paginated listing: `[{cursor, <item>}]`, or
    /// plain objects whose `id` is the cursor (registry credentials and API
    /// keys, as Render lists credentials).
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page_path = match &cursor {
                None => format!("{path}{sep}limit=100"),
                Some(c) => format!("{path}{sep}limit=100&cursor={}", enc(c)),
            };
            let page = match self.get(&page_path).await? {
                Value::Array(items) => items,
                other => {
                    return Err(ClientError::Failed(format!(
                        "GET {path}: expected a list, got {other}"
                    )))
                }
            };
            let n = page.len();
            cursor = page
                .last()
                .and_then(|i| i.get("cursor").or_else(|| i.get("id")))
                .and_then(Value::as_str)
                .map(str::to_owned);
            all.extend(page);
            if n < 100 || cursor.is_none() {
                return Ok(all);
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.send_within(method, path, body, None).await
    }

    async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        wait: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.key)
            .header("accept", "application/json");
        if let Some(wait) = wait {
            req = req.timeout(wait);
        }
        if let Some(body) = &body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        let json: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if status.is_success() {
            return Ok(json.unwrap_or(Value::Null));
        }
        Err(self.refused(&method, path, status, json, &bytes))
    }

    /// GET `path` asking to switch to the WebSocket protocol (HTTP/1.1,
    /// no time limit once switched): the connection, or the API's
    /// refusal as any other request's.
    pub async fn websocket(&self, path: &str) -> Result<reqwest::Upgraded, ClientError> {
        use data_encoding::BASE64;
        let http = http_builder()?
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Failed(format!("cannot set up HTTPS: {e}")))?;
        let url = format!("{}{path}", self.base);
        let resp = http
            .get(&url)
            .bearer_auth(&self.key)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                BASE64.encode(&rand::random::<[u8; 16]>()),
            )
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
            let json = serde_json::from_slice(&bytes).ok();
            return Err(self.refused(&Method::GET, path, status, json, &bytes));
        }
        resp.upgrade().await.map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        // The innermost cause says it best ("Connection refused").
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        ClientError::Unreachable(format!(
            "cannot reach the berth API ({cause}); is `berth up` running? tried {} \
             (set BERTH_API_URL or --api-url)",
            self.base
        ))
    }

    fn refused(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        json: Option<Value>,
        raw: &[u8],
    ) -> ClientError {
        let mut api_message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(raw).chars().take(300).collect());
        // Each invalid field, named as the flag that sets it.
        let fields: Vec<String> = json
            .as_ref()
            .and_then(|j| j.get("fields"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|f| {
                let field = f.get("field").and_then(Value::as_str).unwrap_or_default();
                let message = f.get("message").and_then(Value::as_str).unwrap_or_default();
                match flag_of(field) {
                    Some(flag) => format!("{flag}: {message}"),
                    None => format!("{field}: {message}"),
                }
            })
            .collect();
        if !fields.is_empty() {
            api_message = fields.join("; ");
        }
        let hint = match status {
            StatusCode::UNAUTHORIZED => Some(format!(
                "the API refused the key: check BERTH_API_KEY or the apiKey in credentials.json \
                 (this key came from {})",
                self.key_from
            )),
            StatusCode::NOT_FOUND => {
                Some("check the id (`berth service list`, `berth credential list`)".to_owned())
            }
            _ => None,
        };
        ClientError::Api {
            status: status.as_u16(),
            message: format!("{method} {path}: {} {api_message}", status.as_u16()),
            hint,
        }
    }
}

/// The flag that sets an API field, for error messages.
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "name" => "the name (--rename on update)",
        "type" => "--type",
        "image.imagePath" | "imageUrl" => "--image",
        "image.registryCredentialId" => "--credential",
        "envVars" | "envVars.key" | "envVars.value" => "--env",
        "serviceDetails.plan" => "--plan",
        "serviceDetails.region" => "--region",
        "serviceDetails.numInstances" | "numInstances" => "--instances",
        "serviceDetails.disk"
        | "serviceDetails.disk.name"
        | "serviceDetails.disk.mountPath"
        | "disk"
        | "disk.name"
        | "disk.mountPath"
        | "disk.sizeGB" => "--disk",
        "sizeGB" => "--size",
        "serviceDetails.healthCheckPath" => "--health-check-path",
        "serviceDetails.preDeployCommand" => "--pre-deploy-command",
        "serviceDetails.schedule" => "--schedule",
        "serviceDetails.overlapPolicy" => "--overlap-policy",
        "serviceDetails.shutdownDelaySeconds"
        | "serviceDetails.maxShutdownDelaySeconds"
        | "maxShutdownDelaySeconds" => "--shutdown-delay-seconds",
        "notifyOnFail" => "--notify-on-fail",
        "serviceDetails.envSpecificDetails.dockerCommand" => "--command",
        "username" => "--username",
        "registry" => "--registry",
        "host" => "--host",
        "authToken" => "the token (--token-file or --token-stdin)",
        _ => return None,
    })
}

/// One client for http and https (rustls with ring, platform roots).
pub(crate) fn build_http() -> Result<reqwest::Client, ClientError> {
    http_builder()?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Failed(format!("cannot set up HTTPS: {e}")))
}

/// A client builder with berth's TLS set up (rustls with ring, the
/// platform's roots), for clients that need other limits.
pub(crate) fn http_builder() -> Result<reqwest::ClientBuilder, ClientError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let fail = |e: String| ClientError::Failed(format!("cannot set up HTTPS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

/// Percent-encodes one path or query component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(enc("srv-abc_1.~"), "srv-abc_1.~");
        assert_eq!(enc("a b/c?d&e"), "a%20b%2Fc%3Fd%26e");
        assert_eq!(
            enc("2026-11-27T07:00:00+00:00"),
            "2026-11-27T07%3A00%3A00%2B00%3A00"
        );
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let api = ClientError::Api {
            status: 404,
            message: "m".into(),
            hint: None,
        };
        assert_eq!(api.report(), ExitCode::from(1));
        assert_eq!(ClientError::Usage("u".into()).report(), ExitCode::from(64));
        assert_eq!(
            ClientError::Unreachable("x".into()).report(),
            ExitCode::from(69)
        );
    }

    #[test]
    fn missing_key_is_a_usage_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ClientOpts {
            api_url: None,
            data_dir: Some(dir.path().to_path_buf()),
            json: false,
        };
        // Only when the variable is unset; the test process may have it.
        if std::env::var_os("BERTH_API_KEY").is_none() {
            let err = Api::from_opts(&opts).unwrap_err();
            assert!(matches!(&err, ClientError::Usage(m) if m.contains("credentials.json")));
        }
        std::fs::write(
            dir.path().join(CREDENTIALS_FILE),
            r#"{"ownerId":"own-x","apiKey":"k1","apiUrl":"http://h:1/"}"#,
        )
        .unwrap();
        let api = Api::from_opts(&opts).unwrap();
        assert_eq!(api.base(), "http://h:1");
        let opts = ClientOpts {
            api_url: Some("ftp://nope".into()),
            ..opts
        };
        assert!(matches!(Api::from_opts(&opts), Err(ClientError::Usage(_))));
    }
}

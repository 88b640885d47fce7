//! Test harness: a real CNCF distribution registry (Debian's
//! `docker-registry` 2.8.2) per test, on a free loopback port with its own
//! temp storage, killed on drop. Auth: none, htpasswd (bcrypt via
//! `htpasswd -Bbn`), or token auth backed by an in-process ES256 token
//! issuer ([`token`]). [`flaky`] is a pass-through proxy that answers the
//! first requests with 429/503 to exercise retries.
//!
//! Pushing images lives in [`crate::image`].

pub mod flaky;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use token::TokenIssuer;

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    /// Anonymous read and write.
    None,
    /// HTTP basic against an htpasswd file with one user.
    Htpasswd {
        /// Username.
        user: String,
        /// Password.
        pass: String,
    },
    /// Bearer tokens from an in-test issuer that accepts this one user
    /// (and hands anonymous callers a token with no access).
    Token {
        /// Username.
        user: String,
        /// Password.
        pass: String,
    },
}

/// A running `docker-registry`.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`, as used in image references.
    pub host: String,
    /// The auth mode it was started with.
    pub auth: RegistryAuth,
    /// The token issuer, for `RegistryAuth::Token`.
    pub issuer: Option<TokenIssuer>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub(crate) http: reqwest::Client,
}

/// A reqwest client for plain-http loopback use in tests. Installs the ring
/// provider as rustls' process default (reqwest needs one; ignored when a
/// default is already installed).
pub fn http_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().build()?)
}

impl Registry {
    /// Start a registry with `auth` and wait until it answers `/v2/`.
    pub async fn start(auth: RegistryAuth) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let issuer = match &auth {
            RegistryAuth::Token { user, pass } => Some(TokenIssuer::start(user, pass).await?),
            _ => None,
        };
        let mut reg = Registry {
            host: String::new(),
            auth,
            issuer,
            dir,
            child: None,
            http: http_client()?,
        };
        // A just-freed port can be taken by a parallel test: try a few.
        let mut last = None;
        for _ in 0..5 {
            reg.host = format!("127.0.0.1:{}", crate::free_port());
            match reg.spawn().await {
                Ok(()) => return Ok(reg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// Storage root (for corrupting blobs).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn write_config(&self) -> Result<PathBuf> {
        let storage = self.storage_dir();
        std::fs::create_dir_all(&storage)?;
        let auth = match &self.auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { user, pass } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .context("running htpasswd (apache2-utils)")?;
                if !out.status.success() {
                    bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let file = self.dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )
            }
            RegistryAuth::Token { .. } => {
                let issuer = self.issuer.as_ref().context("token issuer missing")?;
                let bundle = self.dir.path().join("token-root.pem");
                std::fs::write(&bundle, issuer.cert_pem())?;
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    bundle.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n\
             {auth}",
            storage.display(),
            self.host
        );
        let path = self.dir.path().join("config.yml");
        std::fs::write(&path, config)?;
        Ok(path)
    }

    async fn spawn(&mut self) -> Result<()> {
        let config = self.write_config()?;
        let log = std::fs::File::create(self.dir.path().join("registry.log"))?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("{}/v2/", self.url());
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            if self.http.get(&url).send().await.is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("docker-registry did not answer on {url} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill the registry process (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same storage.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop();
        self.spawn().await
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `Authorization` value with push+pull rights on `repo` for the
    /// harness itself (None for an open registry).
    pub(crate) async fn admin_authorization(&self, repo: &str) -> Result<Option<String>> {
        use base64::Engine as _;
        match &self.auth {
            RegistryAuth::None => Ok(None),
            RegistryAuth::Htpasswd { user, pass } => Ok(Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ))),
            RegistryAuth::Token { user, pass } => {
                let issuer = self.issuer.as_ref().context("token issuer missing")?;
                let tok = issuer
                    .token_for(user, pass, &format!("repository:{repo}:pull,push,delete"))
                    .await?;
                Ok(Some(format!("Bearer {tok}")))
            }
        }
    }

    /// Path of a blob's data file in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .context("only sha256 blobs are stored by the test registry")?;
        Ok(blob_data_path(&self.storage_dir(), hex))
    }
}

fn blob_data_path(storage: &Path, hex: &str) -> PathBuf {
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A throwaway registry for the demo: the CNCF distribution registry
//! (`docker-registry`, installed by `scripts/install-deps`) on a free
//! loopback port, storing under a temporary directory. Loopback registries
//! are spoken to over plain HTTP by berth's resolver and node, so no
//! certificate is needed. Killed and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`: the host part of image references.
    pub host: String,
    dir: tempfile::TempDir,
}

/// Where `docker-registry` is: on the PATH, or Debian's place.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("docker-registry"))
            .find(|c| c.is_file())
    });
    on_path.or_else(|| {
        let debian = Path::new("/usr/bin/docker-registry");
        debian.is_file().then(|| debian.to_path_buf())
    })
}

impl Registry {
    pub async fn start(http: &reqwest::Client) -> Result<Registry> {
        let bin = binary().context(
            "docker-registry is not installed (Debian package `docker-registry`; \
             ./scripts/install-deps installs it)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("berth-demo-registry")
            .tempdir()?;
        // A free port: bound, read, released, then given to the registry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                dir.path().join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut registry = Registry { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        let probe = format!("{}/v2/", registry.url());
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!(
                    "docker-registry exited ({status}): {}",
                    registry.log().trim()
                );
            }
            if http.get(&probe).send().await.is_ok() {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not answer on {probe} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

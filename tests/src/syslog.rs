//! Test harness: rsyslog as a TLS syslog receiver (RFC 5425-style: TCP and
//! TLS through its GnuTLS stream driver, newline- or octet-framed), per
//! test, on a free loopback port with its own temp config and a
//! certificate from a throwaway [`TestCa`] for `localhost` and
//! `127.0.0.1`; killed on drop. Each message it takes is written to a
//! file as one line of `|`-separated fields, as rsyslog parsed them:
//! hostname, app-name, procid, msgid, severity, message, raw message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pebble::TestCa;

/// One received message, as rsyslog parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    /// `info`, `warning`, `err`, …
    pub severity: String,
    pub msg: String,
    /// The message as it came (with a token before it, if any).
    pub raw: String,
}

/// A running rsyslogd.
pub struct Syslog {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Syslog(port {})", self.port)
    }
}

impl Syslog {
    /// Starts rsyslogd listening with TLS on a free loopback port.
    pub fn start_tls() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let ca = TestCa::new()?;
        let (chain, key) = ca.leaf(&["localhost", "127.0.0.1"])?;
        let ca_pem = d.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem())?;
        std::fs::write(d.join("cert.pem"), chain)?;
        std::fs::write(d.join("key.pem"), key)?;
        let port = crate::free_port();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{d}/ca.pem"
       DefaultNetstreamDriverCertFile="{d}/cert.pem"
       DefaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="string"
         string="%hostname%|%app-name%|%procid%|%msgid%|%syslogseverity-text%|%msg%|%rawmsg%\n")
action(type="omfile" file="{d}/received.log" template="fields")
"#,
            d = d.display()
        );
        std::fs::write(d.join("rsyslog.conf"), conf)?;
        let mut me = Syslog {
            child: None,
            port,
            dir,
            ca_pem,
        };
        me.start()?;
        Ok(me)
    }

    /// Starts rsyslogd (again) and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        let d = self.dir.path();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslog.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("rsyslog.stderr"))?)
            .spawn()
            .context("starting rsyslogd (scripts/install-deps installs it)")?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait()? {
                let err = std::fs::read_to_string(d.join("rsyslog.stderr")).unwrap_or_default();
                bail!("rsyslogd exited ({status}): {err}");
            }
            if Instant::now() > deadline {
                bail!("rsyslogd did not listen on {} within 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills rsyslogd: the endpoint refuses connections until
    /// [`Syslog::start`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `localhost:PORT`, the endpoint to give berth.
    pub fn endpoint(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The CA that signed its certificate (PEM file), for `SSL_CERT_FILE`.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        let text =
            std::fs::read_to_string(self.dir.path().join("received.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(7, '|').collect();
                let [hostname, app_name, procid, msgid, severity, msg, raw] = f[..] else {
                    return None;
                };
                Some(Received {
                    hostname: hostname.to_owned(),
                    app_name: app_name.to_owned(),
                    procid: procid.to_owned(),
                    msgid: msgid.to_owned(),
                    severity: severity.to_owned(),
                    msg: msg.to_owned(),
                    raw: raw.to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Test harness: Let's Encrypt's ACME test server (Debian's `pebble` 2.4)
//! per test, on free loopback ports with its own temp config, killed on
//! drop; and the pieces around it:
//!
//! - [`TestCa`]: a throwaway CA (rcgen) for Pebble's own HTTPS listener,
//!   and for operator certificates in router tests;
//! - [`Dns`]: a minimal UDP DNS responder answering `A 127.0.0.1` for every
//!   name (and no records of other types), which Pebble's `-dnsserver`
//!   resolves challenge domains with, so its HTTP-01 validation really
//!   fetches `http://<domain>:<httpPort>/.well-known/acme-challenge/…`
//!   from the router under test.
//!
//! Pebble runs with `PEBBLE_VA_NOSLEEP=1` (no random validation delay),
//! `PEBBLE_WFE_NONCEREJECT=0` (no deliberately rejected nonces) and without
//! `PEBBLE_VA_ALWAYS_VALID`: challenges are checked for real.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A CA that signs test certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names, `*.` wildcards, or IP addresses):
    /// chain PEM (leaf, CA) and key PEM.
    pub fn leaf(&self, names: &[&str]) -> Result<(String, String)> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", cert.pem(), self.pem()), key.serialize_pem()))
    }
}

/// A DNS responder on a loopback UDP port: `A 127.0.0.1` for any name.
#[derive(Debug)]
pub struct Dns {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    /// Starts the responder.
    pub fn start() -> Result<Self> {
        let socket = (0..20)
            .find_map(|_| UdpSocket::bind(("127.0.0.1", crate::free_port())).ok())
            .context("no free UDP port for the DNS responder")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = dns_answer(&buf[..n]) {
                        let _ = socket.send_to(&answer, from);
                    }
                }
            }
        });
        Ok(Dns {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one query: its question echoed, and `A 127.0.0.1` when it
/// asks for an A record (other types: no records, no error).
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..i + 4)?;
    let is_a = qtype == 1;
    let mut out = Vec::with_capacity(question.len() + 32);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, RD copied, RA; NOERROR.
    out.extend_from_slice(&[0x80 | (query[2] & 0x01), 0x80]);
    out.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if is_a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some(out)
}

/// A running Pebble.
#[derive(Debug)]
pub struct Pebble {
    /// The ACME directory URL (`https://127.0.0.1:PORT/dir`).
    pub directory: String,
    /// The root Pebble issues from (PEM): what clients of the issued
    /// certificates trust.
    pub issuing_root_pem: String,
    /// Where the CA of Pebble's own HTTPS listener is written: the extra
    /// root the ACME client trusts.
    pub listener_ca: PathBuf,
    /// Where [`Pebble::issuing_root_pem`] is written (for `curl --cacert`).
    pub issuing_root: PathBuf,
    _dns: Dns,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` of 127.0.0.1 (the
    /// router's plain HTTP port) and waits for its directory.
    pub fn start(http_port: u16) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new()?;
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"])?;
        let listener_ca = dir.path().join("listener-ca.pem");
        std::fs::write(&listener_ca, ca.pem())?;
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), key)?;
        let dns = Dns::start()?;
        let mut last = None;
        for _ in 0..5 {
            let port = crate::free_port();
            let mgmt = crate::free_port();
            match Self::spawn(dir.path(), port, mgmt, http_port, &dns.addr) {
                Ok(child) => {
                    let mut pebble = Pebble {
                        directory: format!("https://127.0.0.1:{port}/dir"),
                        issuing_root_pem: String::new(),
                        listener_ca: listener_ca.clone(),
                        issuing_root: dir.path().join("issuing-root.pem"),
                        _dns: dns,
                        dir,
                        child: Some(child),
                    };
                    pebble.issuing_root_pem = pebble.fetch_root(mgmt)?;
                    std::fs::write(&pebble.issuing_root, &pebble.issuing_root_pem)?;
                    return Ok(pebble);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("pebble did not start")))
    }

    fn spawn(dir: &Path, port: u16, mgmt: u16, http_port: u16, dns: &str) -> Result<Child> {
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("cert.pem"),
                "privateKey": dir.join("key.pem"),
                "httpPort": http_port,
                "tlsPort": crate::free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let path = dir.join("pebble.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join("pebble.log"))?;
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .arg("-dnsserver")
            .arg(dns)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pebble (apt-get install pebble)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("pebble exited early ({status})");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_ok()
            {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("pebble did not listen on {port} within 10 s")
    }

    /// The root Pebble issues from, from its management interface.
    fn fetch_root(&self, mgmt: u16) -> Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&self.listener_ca)
            .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!(
                "fetching pebble's root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// What Pebble logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Stops Pebble (the CA becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_queries_with_loopback_and_others_with_nothing() {
        // id 0x1234, RD, one question: shop.test A IN.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x04shop\x04test\x00\x00\x01\x00\x01");
        let a = dns_answer(&q).unwrap();
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[7], 1, "one answer");
        assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 1]);
        let mut aaaa = q.clone();
        let n = aaaa.len();
        aaaa[n - 3] = 28;
        let a = dns_answer(&aaaa).unwrap();
        assert_eq!(a[7], 0, "no AAAA records");
        assert!(dns_answer(&[0; 5]).is_none());
    }
}

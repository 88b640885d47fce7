//! Resolve benchmark: p50 of berth-oci's `resolve` (tag → digest) against
//! p50 of a raw `curl -sI` of the same manifest URL (bar: ≤ 1.5×), and of a
//! single raw reqwest HEAD, measured interleaved in the same run.

use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;

use berth_oci::manifest::ACCEPT as MANIFEST_ACCEPT;
use berth_oci::{ClientConfig, ImageRef, RegistryClient};

/// Benchmark results.
#[derive(Debug, Clone)]
pub struct Report {
    /// Measured rounds (after warm-up).
    pub n: usize,
    /// `resolve` p50 / p90.
    pub resolve_p50: Duration,
    /// `resolve` p90.
    pub resolve_p90: Duration,
    /// `curl -sI` (process spawn included) p50.
    pub curl_p50: Duration,
    /// `curl -sI` p90.
    pub curl_p90: Duration,
    /// One raw reqwest HEAD on a warm connection, p50.
    pub raw_head_p50: Duration,
    /// Raw HEAD p90.
    pub raw_head_p90: Duration,
}

impl Report {
    /// resolve p50 / curl p50 (the bar: ≤ 1.5).
    pub fn ratio_vs_curl(&self) -> f64 {
        self.resolve_p50.as_secs_f64() / self.curl_p50.as_secs_f64().max(1e-9)
    }

    /// resolve p50 / raw HEAD p50: the client's own overhead.
    pub fn ratio_vs_raw_head(&self) -> f64 {
        self.resolve_p50.as_secs_f64() / self.raw_head_p50.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_micros();
        writeln!(f, "rounds: {}", self.n)?;
        writeln!(
            f,
            "resolve   p50 {:>7} µs  p90 {:>7} µs",
            us(self.resolve_p50),
            us(self.resolve_p90)
        )?;
        writeln!(
            f,
            "curl -sI  p50 {:>7} µs  p90 {:>7} µs",
            us(self.curl_p50),
            us(self.curl_p90)
        )?;
        writeln!(
            f,
            "raw HEAD  p50 {:>7} µs  p90 {:>7} µs",
            us(self.raw_head_p50),
            us(self.raw_head_p90)
        )?;
        writeln!(
            f,
            "resolve/curl p50 ratio {:.2} (bar ≤ 1.50)",
            self.ratio_vs_curl()
        )?;
        write!(
            f,
            "resolve/raw-HEAD p50 ratio {:.2}",
            self.ratio_vs_raw_head()
        )
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The registry URL is not `http(s)://host[:port]`.
    #[error("bad registry url {0:?}")]
    BadUrl(String),
    /// Building the client failed.
    #[error(transparent)]
    Build(#[from] berth_oci::BuildError),
    /// A resolve failed.
    #[error(transparent)]
    Resolve(#[from] berth_oci::ResolveError),
    /// curl or the raw HEAD failed.
    #[error("baseline failed: {0}")]
    Baseline(String),
}

/// Run `n` interleaved rounds (after 5 warm-up rounds) against an
/// anonymous registry at `registry_url` (e.g. `http://127.0.0.1:5000`).
pub async fn run(
    registry_url: &str,
    repo: &str,
    tag: &str,
    n: usize,
) -> Result<Report, BenchError> {
    let (scheme, host) = registry_url
        .trim_end_matches('/')
        .split_once("://")
        .filter(|(s, h)| (*s == "http" || *s == "https") && !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| BenchError::BadUrl(registry_url.to_string()))?;
    let mut cfg = ClientConfig::default();
    if scheme == "http" {
        cfg.insecure_hosts.push(host.to_string());
    }
    let client = RegistryClient::new(cfg)?;
    let raw = reqwest::Client::builder()
        .tls_backend_preconfigured(raw_tls()?)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Baseline(e.to_string()))?;
    let image = ImageRef::new(host, repo, tag)?;
    let url = format!("{scheme}://{host}/v2/{repo}/manifests/{tag}");

    let (mut res, mut curl, mut head) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..n + 5 {
        let t = Instant::now();
        client.resolve(&image, None).await?;
        let r = t.elapsed();

        let t = Instant::now();
        let out = tokio::process::Command::new("curl")
            .args(["-sI", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Accept: {MANIFEST_ACCEPT}"))
            .arg(&url)
            .output()
            .await
            .map_err(|e| BenchError::Baseline(format!("curl: {e}")))?;
        let c = t.elapsed();
        if out.stdout != b"200" {
            return Err(BenchError::Baseline(format!(
                "curl -I answered {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }

        let t = Instant::now();
        let resp = raw
            .head(&url)
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| BenchError::Baseline(e.to_string()))?;
        let h = t.elapsed();
        if !resp.status().is_success() {
            return Err(BenchError::Baseline(format!(
                "raw HEAD answered {}",
                resp.status()
            )));
        }
        if round >= 5 {
            res.push(r);
            curl.push(c);
            head.push(h);
        }
    }
    Ok(Report {
        n,
        resolve_p50: pct(&mut res, 50),
        resolve_p90: pct(&mut res, 90),
        curl_p50: pct(&mut curl, 50),
        curl_p90: pct(&mut curl, 90),
        raw_head_p50: pct(&mut head, 50),
        raw_head_p90: pct(&mut head, 90),
    })
}

fn raw_tls() -> Result<rustls::ClientConfig, BenchError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Baseline(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| BenchError::Baseline(e.to_string()))?
        .with_no_client_auth())
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) * p) / 100]
}

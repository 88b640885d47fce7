//! Pull and unpack benchmark of berth-puller, with the anchors measured in
//! the same run on the same image:
//!
//! - cold pull into an empty store vs `skopeo copy docker://… dir:…`
//!   (bar: ≤ 0.5×);
//! - unpack of the pulled image vs `umoci unpack` of an OCI layout of the
//!   same image (bar: ≤ 0.7×);
//! - warm re-pull with every blob cached (bar: < 50 ms; the manifest is
//!   still fetched).
//!
//! Rounds are interleaved (berth, then the tool, per round) and each
//! figure is the median over the rounds, so page-cache warmth of the
//! registry's files is the same for both sides.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_oci::{ClientConfig, RegistryClient};
use berth_puller::{
    unpack_image, ContentStore, PullConfig, PullError, PullRequest, Puller, StoreError,
    UnpackError, UnpackOptions, VerifyPolicy,
};

/// What to benchmark: an image already in a registry.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Registry host (`127.0.0.1:PORT`; loopback is plain http).
    pub host: String,
    /// Repository.
    pub repository: String,
    /// A tag of the image (for skopeo/umoci layouts).
    pub tag: String,
    /// The image manifest digest.
    pub digest: String,
    /// Scratch directory (stores, skopeo dirs, umoci bundles).
    pub work_dir: PathBuf,
    /// Interleaved rounds (median reported).
    pub rounds: usize,
    /// Warm re-pulls measured.
    pub warm_pulls: usize,
}

/// Measured figures (medians).
#[derive(Debug, Clone)]
pub struct Report {
    /// Compressed image size.
    pub image_bytes: u64,
    /// Layers.
    pub layers: usize,
    /// berth cold pull.
    pub cold_pull: Duration,
    /// `skopeo copy docker://… dir:…`.
    pub skopeo_copy: Duration,
    /// berth unpack (diff_ids verified).
    pub unpack: Duration,
    /// `umoci unpack`.
    pub umoci_unpack: Duration,
    /// berth warm re-pull, median.
    pub warm_pull: Duration,
    /// berth warm re-pull, slowest.
    pub warm_pull_max: Duration,
}

impl Report {
    /// cold pull / skopeo (bar ≤ 0.5).
    pub fn pull_ratio(&self) -> f64 {
        self.cold_pull.as_secs_f64() / self.skopeo_copy.as_secs_f64().max(1e-9)
    }

    /// unpack / umoci (bar ≤ 0.7).
    pub fn unpack_ratio(&self) -> f64 {
        self.unpack.as_secs_f64() / self.umoci_unpack.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "image: {:.1} MB compressed, {} layers",
            self.image_bytes as f64 / 1e6,
            self.layers
        )?;
        writeln!(
            f,
            "{:<34} {:>10} {:>8} {:>6}",
            "measure", "ms", "ratio", "bar"
        )?;
        writeln!(
            f,
            "{:<34} {:>10.1} {:>8.2} {:>6}",
            "berth cold pull",
            ms(self.cold_pull),
            self.pull_ratio(),
            "≤0.5"
        )?;
        writeln!(
            f,
            "{:<34} {:>10.1}",
            "skopeo copy docker:// dir:",
            ms(self.skopeo_copy)
        )?;
        writeln!(
            f,
            "{:<34} {:>10.1} {:>8.2} {:>6}",
            "berth unpack",
            ms(self.unpack),
            self.unpack_ratio(),
            "≤0.7"
        )?;
        writeln!(f, "{:<34} {:>10.1}", "umoci unpack", ms(self.umoci_unpack))?;
        writeln!(
            f,
            "{:<34} {:>10.1} {:>8} {:>6}",
            "berth warm re-pull (median)",
            ms(self.warm_pull),
            "",
            "<50ms"
        )?;
        writeln!(
            f,
            "{:<34} {:>10.1}",
            "berth warm re-pull (max)",
            ms(self.warm_pull_max)
        )
    }
}

/// A benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// berth's pull failed.
    #[error("pull: {0}")]
    Pull(#[from] PullError),
    /// berth's unpack failed.
    #[error("unpack: {0}")]
    Unpack(#[from] UnpackError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// An anchor tool failed or is missing.
    #[error("{0}")]
    Tool(String),
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn timed_tool(cmd: &mut Command) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| BenchError::Tool(format!("{cmd:?}: {e}")))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(BenchError::Tool(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(took)
}

fn clean(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// Run the benchmark against an image already pushed to `cfg.host`.
pub async fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let client = RegistryClient::new(ClientConfig::default())
        .map_err(|e| BenchError::Tool(e.to_string()))?;
    let req = PullRequest {
        host: &cfg.host,
        repository: &cfg.repository,
        digest: &cfg.digest,
        credential: None,
    };
    let digest = berth_oci::digest::parse(&cfg.digest)
        .ok_or_else(|| BenchError::Tool(format!("{} is not a digest", cfg.digest)))?;
    let src = format!("docker://{}/{}@{}", cfg.host, cfg.repository, cfg.digest);
    let layout = cfg.work_dir.join("oci-layout");
    clean(&layout);
    timed_tool(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &src,
        &format!("oci:{}:{}", layout.display(), cfg.tag),
    ]))?;

    let (mut cold, mut skopeo, mut unpack, mut umoci) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    for round in 0..cfg.rounds.max(1) {
        let store_dir = cfg.work_dir.join(format!("store-{round}"));
        clean(&store_dir);
        let store = ContentStore::open(&store_dir, VerifyPolicy::Size)?;
        let puller = Puller::new(client.clone(), store.clone(), PullConfig::default());
        let start = Instant::now();
        let pulled = puller.pull(&req, &|_| {}).await?;
        cold.push(start.elapsed());

        let dir = cfg.work_dir.join("skopeo-dir");
        clean(&dir);
        skopeo.push(timed_tool(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &src,
            &format!("dir:{}", dir.display()),
        ]))?);
        clean(&dir);

        let s2 = store.clone();
        let d2 = digest.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || unpack_image(&s2, &d2, &UnpackOptions::default()))
            .await
            .map_err(|e| BenchError::Tool(e.to_string()))??;
        unpack.push(start.elapsed());

        let bundle = cfg.work_dir.join("umoci-bundle");
        clean(&bundle);
        umoci.push(timed_tool(Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:{}", layout.display(), cfg.tag),
            &bundle.display().to_string(),
        ]))?);
        clean(&bundle);
        if round + 1 < cfg.rounds.max(1) {
            clean(&store_dir);
        }
        last = Some((puller, pulled, store_dir));
    }
    let Some((puller, pulled, store_dir)) = last else {
        return Err(BenchError::Tool("no rounds".into()));
    };
    let mut warm = Vec::new();
    for _ in 0..cfg.warm_pulls.max(1) {
        let start = Instant::now();
        let again = puller.pull(&req, &|_| {}).await?;
        warm.push(start.elapsed());
        if again.downloaded_blobs != 0 {
            return Err(BenchError::Tool("warm pull downloaded blobs".into()));
        }
    }
    clean(&store_dir);
    clean(&layout);
    let warm_max = warm.iter().max().copied().unwrap_or_default();
    Ok(Report {
        image_bytes: pulled.layers.iter().map(|l| l.size).sum(),
        layers: pulled.layers.len(),
        cold_pull: median(cold),
        skopeo_copy: median(skopeo),
        unpack: median(unpack),
        umoci_unpack: median(umoci),
        warm_pull: median(warm),
        warm_pull_max: warm_max,
    })
}

//! `berth bench eventlog`: berth's store measured against raw async-nats in
//! the same run, on the same server, with the same payload sizes.

use std::time::Duration;

use berth_schemas::Subjects;

/// Sizes of one bench run (defaults are the figures).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events appended in the pipelined phase.
    pub pipelined_events: u64,
    /// Aggregates they are spread over (appends to one aggregate are sequential).
    pub aggregates: u64,
    /// Sequential appends to one aggregate for the latency phase.
    pub sequential_appends: u64,
    /// Events in the log for the rebuild and restart phases.
    pub rebuild_events: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            pipelined_events: 100_000,
            aggregates: 1_000,
            sequential_appends: 5_000,
            rebuild_events: 1_000_000,
        }
    }
}

/// One measured figure beside its raw counterpart.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What is measured.
    pub name: &'static str,
    /// Unit of the figures.
    pub unit: &'static str,
    /// berth's figure.
    pub berth: f64,
    /// Raw async-nats figure (`None` when there is no raw counterpart).
    pub raw: Option<f64>,
    /// The target, in words.
    pub target: &'static str,
    /// Whether the target is met.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The server's version.
    pub server_version: String,
    /// The measured rows.
    pub rows: Vec<Row>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// A step failed.
    #[error("bench step {step} failed: {reason}")]
    Step {
        /// Which step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

/// Runs every phase against the server `client` is connected to, under a
/// fresh prefix derived from `subjects` (its streams are deleted afterwards).
pub async fn eventlog(
    client: async_nats::Client,
    subjects: Subjects,
    opts: BenchOptions,
) -> Result<Report, BenchError> {
    let _ = (client, subjects, opts);
    Err(BenchError::Step {
        step: "all",
        reason: "not implemented yet".to_owned(),
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "berth bench eventlog — nats-server {}",
            self.server_version
        )?;
        writeln!(
            f,
            "{:<44} {:>14} {:>14} {:>7}  {:<22} ok",
            "measure", "berth", "raw", "ratio", "target"
        )?;
        for r in &self.rows {
            let raw = r.raw.map_or("-".to_owned(), |v| format!("{v:.1}"));
            let ratio = r
                .raw
                .filter(|v| *v > 0.0)
                .map_or("-".to_owned(), |v| format!("{:.2}", r.berth / v));
            writeln!(
                f,
                "{:<44} {:>14} {:>14} {:>7}  {:<22} {}",
                format!("{} ({})", r.name, r.unit),
                format!("{:.1}", r.berth),
                raw,
                ratio,
                r.target,
                if r.met { "yes" } else { "NO" }
            )?;
        }
        write!(f, "total {:.1}s", self.elapsed.as_secs_f64())
    }
}

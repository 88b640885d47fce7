//! The report of one run: printed to stderr (so it is in the CI log) and
//! written to `<target>/tmp/faults/<test>.txt`.

use std::fmt::Write;
use std::time::Duration;

use berth_schemas::Event;

use crate::model::Log;
use crate::verdict::Tally;
use crate::workload::Record;

/// The `p`-th percentile (0 < p ≤ 1) of `values`, by nearest rank.
pub fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).max(1);
    v.get(rank - 1).copied()
}

fn summary(values: &[Duration]) -> String {
    match (percentile(values, 0.5), percentile(values, 0.99)) {
        (Some(p50), Some(p99)) => format!(
            "p50 {:.2} s, p99 {:.2} s (n = {})",
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            values.len()
        ),
        _ => "none (n = 0)".to_owned(),
    }
}

/// From a deploy command's first try to its `deploy_live`, split by
/// whether a fault was going on in its round (`(calm, faulted)`).
pub fn deploy_latencies(log: &Log, records: &[Record]) -> (Vec<Duration>, Vec<Duration>) {
    let mut live = std::collections::HashMap::new();
    for e in log.events() {
        if let Event::DeployLive(d) = &e.event {
            live.insert(d.deploy.to_string(), e.time);
        }
    }
    let (mut calm, mut faulted) = (Vec::new(), Vec::new());
    for r in records {
        let Some(at) = r.deploy.as_ref().and_then(|d| live.get(d)) else {
            continue;
        };
        let Ok(took) = (*at - r.sent).to_std() else {
            continue;
        };
        if r.faulted {
            faulted.push(took);
        } else {
            calm.push(took);
        }
    }
    (calm, faulted)
}

pub struct Report<'a> {
    pub test: &'a str,
    pub seed: u64,
    pub rounds: usize,
    pub faults: &'a [String],
    pub tally: &'a Tally,
    pub converge: &'a [Duration],
    pub latencies: (Vec<Duration>, Vec<Duration>),
    pub wall: Duration,
    /// Lines of their own (notifications, lost nodes).
    pub notes: &'a [String],
    pub problems: &'a [String],
}

impl Report<'_> {
    pub fn render(&self) -> String {
        let t = self.tally;
        let mut s = String::new();
        let _ = writeln!(s, "=== fault suite: {} ===", self.test);
        let _ = writeln!(
            s,
            "seed {} (BERTH_FAULTS_SEED={} repeats the plan), {} fault rounds, {:.1} s",
            self.seed,
            self.seed,
            self.rounds,
            self.wall.as_secs_f64()
        );
        let _ = writeln!(s, "faults injected: {}", self.faults.len());
        for f in self.faults {
            let _ = writeln!(s, "  {f}");
        }
        let kinds: Vec<String> = t.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "commands acknowledged: {} ({}); ok {}, lost {}, duplicated {}, misattributed {}",
            t.acked,
            kinds.join(", "),
            t.ok,
            t.lost.len(),
            t.duplicated.len(),
            t.misattributed.len()
        );
        let _ = writeln!(
            s,
            "refused (4xx) {}, abandoned {}; tries unanswered {} (outcome unknown); deploys landed unacknowledged {} (at most {} allowed)",
            t.refused, t.abandoned, t.unanswered, t.unknown_landed, t.unknown_budget
        );
        let _ = writeln!(
            s,
            "time to converge after a fault round: {}",
            summary(self.converge)
        );
        let _ = writeln!(
            s,
            "deploy latency (first try to live), no fault: {}",
            summary(&self.latencies.0)
        );
        let _ = writeln!(
            s,
            "deploy latency (first try to live), under faults: {}",
            summary(&self.latencies.1)
        );
        for n in self.notes {
            let _ = writeln!(s, "{n}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "verdict: PASS");
        } else {
            let _ = writeln!(s, "verdict: FAIL");
            for p in self.problems {
                let _ = writeln!(s, "  {p}");
            }
        }
        s
    }

    /// Prints the report and writes it under the target dir.
    pub fn publish(&self) {
        let text = self.render();
        // Straight to the process's stderr: the test harness captures
        // `eprintln!`, and the report belongs in the CI log also when the
        // test passes.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
        if std::fs::create_dir_all(&dir).is_ok() {
            let path = dir.join(format!("{}.txt", self.test));
            if std::fs::write(&path, &text).is_ok() {
                let line = format!("(report written to {})\n", path.display());
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }
        }
    }
}

//! Benchmarks run by examples (`./scripts/bench`, BENCHMARKS.md), each
//! measuring berth beside its raw anchor in the same run. They live here,
//! beside the registry they start, so the libraries they measure carry no
//! benchmark code. (The event log's is `berth bench eventlog`, in the
//! `berth` binary.)
//!
//! - [`resolve`]: tag → digest against `curl -sI` and a raw HEAD;
//! - [`pull`]: cold pull, unpack and warm re-pull against skopeo and umoci.

pub mod pull;
pub mod resolve;

/// CPU seconds (user + system) a process has used so far, `pid` a number
/// or `self`; 0 when it cannot be read. From `/proc/<pid>/stat`, which
/// counts the threads that have ended too (a sum over
/// `/proc/<pid>/task/*` would lose a blocking-pool thread that ended
/// during a run); reported in clock ticks of 1/100 s.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |x| x.1);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the whole line.
    (ticks(11) + ticks(12)) / 100.0
}

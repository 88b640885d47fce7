//! What each instance uses, read from its cgroup (`/berth/<instance>`, the
//! path every bundle gives runc): cumulative CPU time and memory in use
//! (without reclaimable page cache, as `docker stats` counts it), on
//! cgroup v2 (unified) and v1 (hybrid: one hierarchy per controller).

use std::path::{Path, PathBuf};

use berth_schemas::ids::InstanceId;
use berth_schemas::metrics::InstanceUsage;

/// Reads instances' cgroups under a root (`/sys/fs/cgroup` on a host).
#[derive(Debug, Clone)]
pub struct CgroupReader {
    root: PathBuf,
    /// Where the instances' cgroups are, found at the first read that
    /// finds a hierarchy (the same for every instance: not looked for
    /// again per instance and sample).
    layout: std::sync::OnceLock<Layout>,
}

/// How the host mounts the controllers berth reads.
#[derive(Debug, Clone)]
enum Layout {
    /// cgroup v2: `<root>/berth`.
    Unified(PathBuf),
    /// v1, a hierarchy per controller: `<cpuacct>/berth`, `<cpu>/berth`
    /// (the same when the two are mounted together), `<memory>/berth`.
    Split {
        cpuacct: PathBuf,
        cpu: PathBuf,
        memory: PathBuf,
    },
}

/// One file's content as an unsigned number (`max` and garbage: `None`).
fn number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A CFS quota over its period as thousandths of a core (`None`: no
/// quota, or not readable).
fn cpu_millis(quota: Option<i64>, period: Option<u64>) -> Option<u64> {
    let (quota, period) = (u64::try_from(quota?).ok()?, period?);
    (period > 0).then(|| quota.saturating_mul(1000) / period)
}

/// v2's `cpu.max` ("<quota> <period>", or "max <period>") in millis.
fn cpu_max(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let quota = parts.next()?.parse().ok();
    cpu_millis(quota, parts.next()?.parse().ok())
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl CgroupReader {
    /// The host's cgroups.
    pub fn host() -> Self {
        Self::at("/sys/fs/cgroup")
    }

    /// cgroups mounted at `root` (tests build a tree of files).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        CgroupReader {
            root: root.into(),
            layout: std::sync::OnceLock::new(),
        }
    }

    fn layout(&self) -> Option<&Layout> {
        if let Some(l) = self.layout.get() {
            return Some(l);
        }
        let found = if self.root.join("cgroup.controllers").exists() {
            Layout::Unified(self.root.join("berth"))
        } else {
            let cpuacct = ["cpu,cpuacct", "cpuacct,cpu", "cpuacct"]
                .iter()
                .map(|h| self.root.join(h))
                .find(|p| p.exists())?;
            let cpu = ["cpu,cpuacct", "cpuacct,cpu", "cpu"]
                .iter()
                .map(|h| self.root.join(h))
                .find(|p| p.exists())
                .unwrap_or_else(|| cpuacct.clone());
            Layout::Split {
                cpuacct: cpuacct.join("berth"),
                cpu: cpu.join("berth"),
                memory: self.root.join("memory").join("berth"),
            }
        };
        Some(self.layout.get_or_init(|| found))
    }

    /// What `instance` uses now; `None` when its cgroup is not there (not
    /// started yet, or gone). Blocking file reads: a node reads all its
    /// instances off the async threads ([`CgroupReader::read_all`]).
    pub fn read(&self, instance: &InstanceId) -> Option<InstanceUsage> {
        let id = instance.as_str();
        let (cpu_nanos, memory, limit, cpu_limit) = match self.layout()? {
            Layout::Unified(berth) => {
                let g = berth.join(id);
                let cpu = keyed(&g.join("cpu.stat"), "usage_usec")? * 1_000;
                let current = number(&g.join("memory.current"))?;
                let inactive = keyed(&g.join("memory.stat"), "inactive_file").unwrap_or(0);
                let limit = number(&g.join("memory.max")).unwrap_or(0);
                let cpu_limit = cpu_max(&g.join("cpu.max")).unwrap_or(0);
                (cpu, current.saturating_sub(inactive), limit, cpu_limit)
            }
            Layout::Split {
                cpuacct,
                cpu: cpu_dir,
                memory,
            } => {
                let cpu = number(&cpuacct.join(id).join("cpuacct.usage"))?;
                // The quota is in the cpu controller's hierarchy.
                let g = cpu_dir.join(id);
                let quota = std::fs::read_to_string(g.join("cpu.cfs_quota_us"))
                    .ok()
                    .and_then(|q| q.trim().parse().ok());
                let cpu_limit =
                    cpu_millis(quota, number(&g.join("cpu.cfs_period_us"))).unwrap_or(0);
                let mem = memory.join(id);
                let usage = number(&mem.join("memory.usage_in_bytes"))?;
                let inactive = keyed(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
                // v1 reports "no limit" as a huge page-rounded number.
                let limit = number(&mem.join("memory.limit_in_bytes"))
                    .filter(|l| *l < (1 << 62))
                    .unwrap_or(0);
                (cpu, usage.saturating_sub(inactive), limit, cpu_limit)
            }
        };
        Some(InstanceUsage {
            instance: instance.clone(),
            cpu_nanos,
            memory_bytes: memory,
            memory_limit_bytes: limit,
            cpu_limit_millis: cpu_limit,
            disk_used_bytes: None,
            disk_capacity_bytes: None,
        })
    }

    /// How many of `instance`'s processes the kernel killed for going over
    /// its memory limit while its cgroup existed (`oom_kill` in v2's
    /// `memory.events`, v1's `memory.oom_control`); `None` when the cgroup
    /// is gone or the kernel does not count them. One small kernel file:
    /// read where the exit is handled.
    pub fn oom_kills(&self, instance: &InstanceId) -> Option<u64> {
        let id = instance.as_str();
        match self.layout()? {
            Layout::Unified(berth) => keyed(&berth.join(id).join("memory.events"), "oom_kill"),
            Layout::Split { memory, .. } => {
                keyed(&memory.join(id).join("memory.oom_control"), "oom_kill")
            }
        }
    }

    /// [`CgroupReader::read`] for each of `instances` (with what the
    /// caller keys them by), on a blocking thread: a few files per
    /// instance, thousands on a busy node, must not hold up the threads
    /// that serve the node's work.
    pub async fn read_all<K: Send + 'static>(
        &self,
        instances: Vec<(InstanceId, K)>,
    ) -> Vec<(InstanceUsage, K)> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            instances
                .into_iter()
                .filter_map(|(i, k)| Some((me.read(&i)?, k)))
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            // A panic in the reader (or a runtime shutting down): this
            // sample is skipped, said once here rather than silently.
            tracing::warn!(error = %e, "reading instance usage failed; sample skipped");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap_or(p)).unwrap_or_default();
        std::fs::write(p, text).unwrap_or_default();
    }

    #[test]
    fn unified_and_split_hierarchies_read_alike() {
        let i = InstanceId::generate();
        let v2 = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let g = v2.path().join(format!("berth/{i}"));
        write(&v2.path().join("cgroup.controllers"), "cpu memory pids\n");
        write(&g.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        write(&g.join("memory.current"), "10485760\n");
        write(&g.join("memory.stat"), "anon 1\ninactive_file 2097152\n");
        write(&g.join("memory.max"), "536870912\n");
        write(&g.join("cpu.max"), "50000 100000\n");
        let u = CgroupReader::at(v2.path()).read(&i);
        assert_eq!(
            u.map(|u| (
                u.cpu_nanos,
                u.memory_bytes,
                u.memory_limit_bytes,
                u.cpu_limit_millis
            )),
            Some((2_500_000, 8_388_608, 536_870_912, 500))
        );
        write(&g.join("cpu.max"), "max 100000\n");
        assert_eq!(
            CgroupReader::at(v2.path())
                .read(&i)
                .map(|u| u.cpu_limit_millis),
            Some(0)
        );

        let v1 = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        write(
            &v1.path()
                .join(format!("cpu,cpuacct/berth/{i}/cpuacct.usage")),
            "7000\n",
        );
        let m = v1.path().join(format!("memory/berth/{i}"));
        write(&m.join("memory.usage_in_bytes"), "4096\n");
        write(
            &m.join("memory.stat"),
            "cache 0\ntotal_inactive_file 1024\n",
        );
        write(&m.join("memory.limit_in_bytes"), "9223372036854771712\n");
        let q = v1.path().join(format!("cpu,cpuacct/berth/{i}"));
        write(&q.join("cpu.cfs_quota_us"), "-1\n");
        write(&q.join("cpu.cfs_period_us"), "100000\n");
        let u = CgroupReader::at(v1.path()).read(&i);
        assert_eq!(
            u.map(|u| (
                u.cpu_nanos,
                u.memory_bytes,
                u.memory_limit_bytes,
                u.cpu_limit_millis
            )),
            Some((7000, 3072, 0, 0))
        );
        write(&q.join("cpu.cfs_quota_us"), "250000\n");
        assert_eq!(
            CgroupReader::at(v1.path())
                .read(&i)
                .map(|u| u.cpu_limit_millis),
            Some(2500)
        );

        // cpu and cpuacct mounted apart (as on this project's machines):
        // the quota is read from cpu's hierarchy.
        let apart = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        write(
            &apart
                .path()
                .join(format!("cpuacct/berth/{i}/cpuacct.usage")),
            "7000\n",
        );
        let c = apart.path().join(format!("cpu/berth/{i}"));
        write(&c.join("cpu.cfs_quota_us"), "50000\n");
        write(&c.join("cpu.cfs_period_us"), "100000\n");
        let am = apart.path().join(format!("memory/berth/{i}"));
        write(&am.join("memory.usage_in_bytes"), "4096\n");
        let u = CgroupReader::at(apart.path()).read(&i);
        assert_eq!(
            u.map(|u| (u.cpu_nanos, u.cpu_limit_millis)),
            Some((7000, 500))
        );
        // No cgroup: nothing.
        assert!(CgroupReader::at(v1.path())
            .read(&InstanceId::generate())
            .is_none());

        // Kills for going over the memory limit, in either layout.
        write(
            &g.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        write(
            &m.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(CgroupReader::at(v2.path()).oom_kills(&i), Some(1));
        assert_eq!(CgroupReader::at(v1.path()).oom_kills(&i), Some(2));
        let gone = InstanceId::generate();
        assert_eq!(CgroupReader::at(v1.path()).oom_kills(&gone), None);
    }
    #[tokio::test]
    async fn a_node_reads_all_its_instances_at_once_skipping_the_gone() {
        let root = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        // Made before its hierarchy is there: found at the first read that
        // finds one.
        let reader = CgroupReader::at(root.path());
        let (a, b, gone) = (
            InstanceId::generate(),
            InstanceId::generate(),
            InstanceId::generate(),
        );
        assert!(reader.read_all(vec![(a.clone(), 1)]).await.is_empty());
        write(&root.path().join("cgroup.controllers"), "cpu memory\n");
        for (i, usec) in [(&a, 10), (&b, 20)] {
            let g = root.path().join(format!("berth/{i}"));
            write(&g.join("cpu.stat"), &format!("usage_usec {usec}\n"));
            write(&g.join("memory.current"), "4096\n");
        }
        let read = reader
            .read_all(vec![(a.clone(), "a"), (gone, "gone"), (b.clone(), "b")])
            .await;
        let got: Vec<(String, u64, &str)> = read
            .into_iter()
            .map(|(u, k)| (u.instance.to_string(), u.cpu_nanos, k))
            .collect();
        assert_eq!(
            got,
            [(a.to_string(), 10_000, "a"), (b.to_string(), 20_000, "b")]
        );
    }
}

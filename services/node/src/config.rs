//! The node's settings (`BERTH_NODE_*`), validated with the rest of the
//! configuration before anything starts (exit 64 on a problem).

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use berth_agent::bundle::UserNamespace;
use berth_agent::net::Subnet;
use berth_oci::ClientConfig;
use berth_runtime::config::http_url_problem;

use crate::gc::GcOptions;
use crate::health::HealthOptions;

/// Node options as given on the command line or in the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Where the node keeps its id, content store and agent state
    /// [default: `$BERTH_DATA_DIR/node`].
    #[arg(long, env = "BERTH_NODE_DIR")]
    pub node_dir: Option<PathBuf>,

    /// The node's name [default: the host name].
    #[arg(long, env = "BERTH_NODE_NAME")]
    pub node_name: Option<String>,

    /// CPU offered to instances, in millicores [default: 1000 per core].
    #[arg(long, env = "BERTH_NODE_CPU_MILLIS")]
    pub node_cpu_millis: Option<u32>,

    /// Memory offered to instances, in MiB [default: the machine's memory].
    #[arg(long, env = "BERTH_NODE_MEMORY_MIB")]
    pub node_memory_mib: Option<u32>,

    /// The runc binary.
    #[arg(long, env = "BERTH_NODE_RUNC", default_value = "runc")]
    pub node_runc: PathBuf,

    /// The directory holding the CNI plugins (bridge, host-local, portmap,
    /// firewall) that instances attached by an earlier berth are checked
    /// and deleted through; new instances are attached by the node itself.
    #[arg(long, env = "BERTH_NODE_CNI_PATH", default_value = "/usr/lib/cni")]
    pub node_cni_path: PathBuf,

    /// Work items (pulls, starts, stops) handled at once.
    #[arg(long, env = "BERTH_NODE_CONCURRENCY", default_value_t = 4)]
    pub node_concurrency: usize,

    /// Seconds a work item may go unacknowledged before redelivery
    /// (progress acks extend it during long pulls).
    #[arg(long, env = "BERTH_NODE_ACK_WAIT_SECS", default_value_t = 30)]
    pub node_ack_wait_secs: u64,

    /// Deliveries of one work item before it is dead-lettered.
    #[arg(long, env = "BERTH_NODE_MAX_DELIVER", default_value_t = 5)]
    pub node_max_deliver: i64,

    /// Milliseconds between heartbeats.
    #[arg(long, env = "BERTH_NODE_HEARTBEAT_MS", default_value_t = 5000)]
    pub node_heartbeat_ms: u64,

    /// Milliseconds between samples of each instance's CPU and memory (from
    /// its cgroup; kept a day by the metrics stream); 0: none.
    #[arg(long, env = "BERTH_NODE_USAGE_MS", default_value_t = 15_000)]
    pub node_usage_ms: u64,

    /// Lines of output a second each instance may publish to its logs,
    /// after a burst of ten seconds' worth; lines over it are dropped and
    /// counted in the logs.
    #[arg(long, env = "BERTH_NODE_LOG_LINES_PER_SEC", default_value_t = 2000)]
    pub node_log_lines_per_sec: u32,

    /// Run instances in a user namespace: the first of 65,536 host ids
    /// (at least 65536) that the instances' ids 0-65535 are, so their root
    /// is an unprivileged user of the host; every directory above the
    /// node's state dir must let that id through. `auto`: with the first
    /// id 1000000000 where this machine allows it (else, said in the log,
    /// as the host's root); `off`: as the host's root.
    #[arg(long, env = "BERTH_NODE_USERNS", default_value = "auto")]
    pub node_userns: String,

    /// Milliseconds between pull progress events of one pull.
    #[arg(long, env = "BERTH_NODE_PROGRESS_MS", default_value_t = 1000)]
    pub node_progress_ms: u64,

    /// Registry hosts (`host[:port]`, comma separated) spoken to over plain
    /// http; loopback hosts always are.
    #[arg(
        long,
        env = "BERTH_NODE_INSECURE_REGISTRIES",
        default_value = "",
        value_delimiter = ','
    )]
    pub node_insecure_registries: Vec<String>,

    /// The address other machines reach this node's instances at; an
    /// instance's `addr` is `<this>:<its PORT>`.
    #[arg(long, env = "BERTH_NODE_ADVERTISE_ADDR", default_value = "127.0.0.1")]
    pub node_advertise_addr: IpAddr,

    /// Host ports web service instances are published on (`first-last`):
    /// the router on any machine reaches an instance at
    /// `<BERTH_NODE_ADVERTISE_ADDR>:<host port>`.
    #[arg(long, env = "BERTH_NODE_PORTS", default_value = "20000-29999")]
    pub node_ports: String,

    /// The node's instance subnet (IPv4 CIDR, /8 to /28): every instance
    /// gets an address from it in a network namespace of its own, on a
    /// bridge named after it. Nodes on one machine need different subnets.
    #[arg(long, env = "BERTH_NODE_SUBNET", default_value = "10.77.0.0/16")]
    pub node_subnet: String,

    /// Where the node's service addresses come from (IPv4 CIDR): the
    /// address under which its instances reach a private service of their
    /// owner that runs on other nodes only. Only instances' connections to
    /// them are translated; instances cannot reach real hosts in it.
    #[arg(
        long,
        env = "BERTH_NODE_SERVICE_SUBNET",
        default_value = "10.254.0.0/16"
    )]
    pub node_service_subnet: String,

    /// Milliseconds between health checks of a live instance failing them;
    /// a starting instance is checked at once, then after 5 ms doubling up
    /// to this.
    #[arg(long, env = "BERTH_NODE_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub node_health_interval_ms: u64,

    /// Milliseconds between health checks of a healthy instance.
    #[arg(
        long,
        env = "BERTH_NODE_HEALTH_LIVE_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub node_health_live_interval_ms: u64,

    /// Milliseconds a health check may take (HTTP answer, TCP connect).
    #[arg(long, env = "BERTH_NODE_HEALTH_TIMEOUT_MS", default_value_t = 5000)]
    pub node_health_timeout_ms: u64,

    /// Milliseconds of failing checks before a live instance is reported
    /// unhealthy (and leaves routing).
    #[arg(long, env = "BERTH_NODE_UNHEALTHY_AFTER_MS", default_value_t = 15000)]
    pub node_unhealthy_after_ms: u64,

    /// Milliseconds of failing checks before a live instance is restarted.
    #[arg(
        long,
        env = "BERTH_NODE_HEALTH_RESTART_AFTER_MS",
        default_value_t = 60000
    )]
    pub node_health_restart_after_ms: u64,

    /// Seconds between content store collections (0: never).
    #[arg(long, env = "BERTH_NODE_GC_INTERVAL_SECS", default_value_t = 600)]
    pub node_gc_interval_secs: u64,

    /// MiB the content store is shrunk to by a collection (content of
    /// instances here is kept even above it).
    #[arg(long, env = "BERTH_NODE_STORE_BUDGET_MIB", default_value_t = 10240)]
    pub node_store_budget_mib: u64,

    /// Milliseconds a starting web or private instance whose service sets
    /// no `PORT` may fail its check before the one other port it listens
    /// on is taken as its port (as Render detects it).
    #[arg(long, env = "BERTH_NODE_PORT_DETECT_AFTER_MS", default_value_t = 5000)]
    pub node_port_detect_after_ms: u64,

    /// Milliseconds a worker must stay up to count as healthy.
    #[arg(long, env = "BERTH_NODE_WORKER_GRACE_MS", default_value_t = 5000)]
    pub node_worker_grace_ms: u64,

    /// MiB kept free on the node's disk: an unpack that would go below
    /// stops there rather than filling the disk, and the work is tried
    /// again later (after a collection there may be room); when what
    /// instances write takes the free space below it, the instance that
    /// wrote the most (at least a quarter of this) is killed, its writes
    /// removed, and it starts again from the image's files. 0 does not
    /// look.
    #[arg(long, env = "BERTH_NODE_MIN_FREE_DISK_MIB", default_value_t = 1024)]
    pub node_min_free_disk_mib: u64,

    /// MiB an instance (or a pre-deploy command, cron run or job) may
    /// write to its filesystem, whatever the node's free space: measured
    /// every 10 s, one over it is killed, its writes removed, and it
    /// starts again from the image's files (a run fails). 0: no limit.
    #[arg(long, env = "BERTH_NODE_INSTANCE_DISK_MIB", default_value_t = 0)]
    pub node_instance_disk_mib: u64,

    /// Hours between the snapshots this node takes of each service disk
    /// it holds (each disk keeps its 7 newest); 0: only those asked for
    /// (`POST /v1/disks/{id}/snapshots`).
    #[arg(long, env = "BERTH_NODE_DISK_SNAPSHOT_HOURS", default_value_t = 24)]
    pub node_disk_snapshot_hours: u32,

    /// Where web services are reachable, as `http(s)://<base-domain>[:port]`
    /// (the API's `BERTH_API_SERVICES_URL`): a web instance finds its own
    /// public URL in `RENDER_EXTERNAL_URL`. Unset: the URL the API's
    /// settings give (by default the router's base domain and port).
    #[arg(long, env = "BERTH_NODE_SERVICES_URL")]
    pub node_services_url: Option<String>,
}

/// How the node addresses and health-checks its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChecks {
    /// The ip in every web instance's `addr`.
    pub advertise: IpAddr,
    /// Host ports web instances are published on.
    pub ports: RangeInclusive<u16>,
    /// Instance addresses come from here.
    pub subnet: Subnet,
    /// Service addresses (other nodes' private services) come from here.
    pub services: Subnet,
    pub health: HealthOptions,
    /// The control plane's endpoints on other machines, closed to
    /// instances: the NATS servers the node speaks to ([`Node::run`] adds
    /// them, resolved, to what is given here).
    ///
    /// [`Node::run`]: crate::Node::run
    pub control_plane: Vec<std::net::SocketAddrV4>,
}

/// The default instance subnet.
pub const DEFAULT_SUBNET: Subnet = Subnet {
    addr: std::net::Ipv4Addr::new(10, 77, 0, 0),
    prefix: 16,
};

impl Default for NodeChecks {
    fn default() -> Self {
        Self {
            advertise: IpAddr::from([127, 0, 0, 1]),
            ports: 20000..=29999,
            subnet: DEFAULT_SUBNET,
            services: berth_agent::net::DEFAULT_SERVICES,
            health: HealthOptions::default(),
            control_plane: Vec::new(),
        }
    }
}

impl NodeChecks {
    /// Where other nodes reach this one's published instances: its
    /// advertised address and host ports — none when that address is
    /// loopback (each machine's own: the node is alone, registers no
    /// address, publishes no private instance and follows no other node).
    pub fn reach(&self) -> Option<berth_domain::node::Reach> {
        (!self.advertise.is_loopback()).then(|| berth_domain::node::Reach {
            addr: self.advertise,
            ports: self.ports.clone(),
        })
    }
}

/// How many ids an instance's user namespace maps: an image's ids
/// 0-65535, as Docker's and Podman's default ranges.
pub const USERNS_IDS: u32 = 65_536;

/// The first host id of `auto`'s range: far above any real user's.
pub const USERNS_AUTO_HOST: u32 = 1_000_000_000;

/// Whether a node runs its instances in a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userns {
    /// As the host's root.
    Off,
    /// In this one, or the node does not start.
    On(UserNamespace),
    /// In this one where the machine allows it (user namespaces can be
    /// made, the state dir can be reached), else as the host's root.
    Auto(UserNamespace),
}

/// `BERTH_NODE_USERNS`: `auto`, `off`, or the first host id of the range.
pub fn parse_userns(text: &str) -> Result<Userns, String> {
    let text = text.trim();
    match text {
        "off" => return Ok(Userns::Off),
        "auto" => {
            return Ok(Userns::Auto(UserNamespace {
                host: USERNS_AUTO_HOST,
                size: USERNS_IDS,
            }))
        }
        _ => {}
    }
    let host: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not `auto`, `off` or a host id"))?;
    // Below 65536 the range would take in the host's own users (root
    // included); past the end the ids do not exist (4294967295 is -1).
    if host < USERNS_IDS || host.checked_add(USERNS_IDS).is_none() {
        return Err(format!(
            "{host} must be at least {USERNS_IDS} and at most {}",
            u32::MAX - USERNS_IDS
        ));
    }
    Ok(Userns::On(UserNamespace {
        host,
        size: USERNS_IDS,
    }))
}

/// Whether two subnets share an address.
fn overlap(a: &Subnet, b: &Subnet) -> bool {
    let wider = a.prefix.min(b.prefix);
    let mask = u32::MAX << (32 - u32::from(wider));
    u32::from(a.addr) & mask == u32::from(b.addr) & mask
}

/// Validated node options.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// State dir; `None`: `$BERTH_DATA_DIR/node`.
    pub dir: Option<PathBuf>,
    pub name: String,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub runc: PathBuf,
    /// The CNI plugin directory (absolute).
    pub cni_path: PathBuf,
    pub concurrency: usize,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub heartbeat: Duration,
    /// Between resource samples (`None`: none).
    pub usage_interval: Option<Duration>,
    pub progress_interval: Duration,
    /// Crash restarts (SPEC §11: 10 s doubling to 5 min).
    pub restart: berth_agent::RestartPolicy,
    /// Registry client settings for pulls.
    pub client: ClientConfig,
    /// Bytes kept free on the node's disk, by unpacks and from what
    /// instances write (0: not looked at).
    pub min_free_disk: u64,
    /// Bytes an instance may write to its filesystem (0: no limit).
    pub instance_disk_limit: u64,
    /// Between the snapshots of each disk the node holds (zero: only
    /// those asked for).
    pub disk_snapshot_every: Duration,
    /// How long a stopped instance's marker is kept; a start enqueued
    /// longer ago is not run ([`crate::report::DONE_KEPT`]).
    pub done_kept: Duration,
    /// Where web services are reachable (`http(s)://<base-domain>[:port]`),
    /// when known.
    pub services_url: Option<String>,
    /// Lines of output each instance may publish.
    pub log_rate: berth_agent::logs::LogRate,
    /// Whether instances run in a user namespace.
    pub user_namespace: Userns,
}

impl NodeOptions {
    /// Where the node keeps its state: `dir`, else `<data dir>/node`.
    pub fn state_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("node"))
    }
}

impl NodeArgs {
    /// Checks every option; returns all problems at once.
    pub fn validate(&self) -> Result<NodeOptions, Vec<String>> {
        let mut problems = Vec::new();
        let name = self.node_name.clone().unwrap_or_else(host_name);
        if name.trim().is_empty() || name.len() > 100 {
            problems.push("BERTH_NODE_NAME must be 1-100 characters".to_owned());
        }
        let cpu_millis = self.node_cpu_millis.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32) * 1000
        });
        if cpu_millis == 0 {
            problems.push("BERTH_NODE_CPU_MILLIS must be > 0".to_owned());
        }
        let memory_mib = self.node_memory_mib.unwrap_or_else(machine_memory_mib);
        if memory_mib == 0 {
            problems.push("BERTH_NODE_MEMORY_MIB must be > 0".to_owned());
        }
        if self.node_concurrency == 0 || self.node_concurrency > 256 {
            problems.push("BERTH_NODE_CONCURRENCY must be 1-256".to_owned());
        }
        if self.node_ack_wait_secs == 0 {
            problems.push("BERTH_NODE_ACK_WAIT_SECS must be > 0".to_owned());
        }
        if self.node_max_deliver < 1 {
            problems.push("BERTH_NODE_MAX_DELIVER must be >= 1".to_owned());
        }
        if self.node_heartbeat_ms < 50 {
            problems.push("BERTH_NODE_HEARTBEAT_MS must be >= 50".to_owned());
        }
        if self.node_usage_ms != 0 && !(1_000..=30_000).contains(&self.node_usage_ms) {
            problems.push(
                "BERTH_NODE_USAGE_MS must be 0 (off) or 1000-30000 (a sample at least every 30 s)"
                    .to_owned(),
            );
        }
        problems.extend(http_url_problem(
            "BERTH_NODE_SERVICES_URL",
            self.node_services_url.as_deref(),
        ));
        if self.node_min_free_disk_mib > 1 << 30 {
            problems.push("BERTH_NODE_MIN_FREE_DISK_MIB must be 0-1073741824".to_owned());
        }
        if self.node_instance_disk_mib > 1 << 30 {
            problems.push("BERTH_NODE_INSTANCE_DISK_MIB must be 0-1073741824".to_owned());
        }
        if self.node_disk_snapshot_hours > 24 * 366 {
            problems.push("BERTH_NODE_DISK_SNAPSHOT_HOURS must be 0-8784".to_owned());
        }
        if !(10..=1_000_000).contains(&self.node_log_lines_per_sec) {
            problems.push("BERTH_NODE_LOG_LINES_PER_SEC must be 10-1000000".to_owned());
        }
        if self.node_progress_ms < 50 {
            problems.push("BERTH_NODE_PROGRESS_MS must be >= 50".to_owned());
        }
        if self
            .node_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            problems.push("BERTH_NODE_DIR must not be empty".to_owned());
        }
        // Relative, it would depend on the directory berth was started in.
        if !self.node_cni_path.is_absolute() {
            problems.push("BERTH_NODE_CNI_PATH must be an absolute directory".to_owned());
        }
        let insecure = berth_oci::parse_insecure_hosts(
            &self.node_insecure_registries,
            "BERTH_NODE_INSECURE_REGISTRIES",
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        });
        if let Err(mut p) = self.checks() {
            problems.append(&mut p);
        }
        let user_namespace = parse_userns(&self.node_userns).unwrap_or_else(|e| {
            problems.push(format!("BERTH_NODE_USERNS: {e}"));
            Userns::Off
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(NodeOptions {
            dir: self.node_dir.clone(),
            name,
            cpu_millis,
            memory_mib,
            runc: self.node_runc.clone(),
            cni_path: self.node_cni_path.clone(),
            concurrency: self.node_concurrency,
            ack_wait: Duration::from_secs(self.node_ack_wait_secs),
            max_deliver: self.node_max_deliver,
            heartbeat: Duration::from_millis(self.node_heartbeat_ms),
            usage_interval: (self.node_usage_ms > 0)
                .then(|| Duration::from_millis(self.node_usage_ms)),
            progress_interval: Duration::from_millis(self.node_progress_ms),
            restart: berth_agent::RestartPolicy::default(),
            client: ClientConfig {
                insecure_hosts: insecure,
                ..ClientConfig::default()
            },
            min_free_disk: self.node_min_free_disk_mib << 20,
            instance_disk_limit: self.node_instance_disk_mib << 20,
            disk_snapshot_every: Duration::from_secs(
                u64::from(self.node_disk_snapshot_hours) * 3600,
            ),
            done_kept: crate::report::DONE_KEPT,
            services_url: self.node_services_url.clone(),
            log_rate: berth_agent::logs::LogRate {
                lines_per_sec: self.node_log_lines_per_sec,
                burst: self.node_log_lines_per_sec.saturating_mul(10),
            },
            user_namespace,
        })
    }
}

impl NodeArgs {
    /// The instance address and health check settings (checked by
    /// [`NodeArgs::validate`] too).
    pub fn checks(&self) -> Result<NodeChecks, Vec<String>> {
        let mut problems = Vec::new();
        let ports = berth_domain::node::parse_ports(&self.node_ports).unwrap_or_else(|| {
            problems
                .push("BERTH_NODE_PORTS must be `first-last` with 0 < first <= last".to_owned());
            20000..=29999
        });
        let ms = Duration::from_millis;
        let health = HealthOptions {
            starting_interval: ms(self.node_health_interval_ms),
            healthy_interval: ms(self.node_health_live_interval_ms),
            timeout: ms(self.node_health_timeout_ms),
            unhealthy_after: ms(self.node_unhealthy_after_ms),
            restart_after: ms(self.node_health_restart_after_ms),
            worker_grace: ms(self.node_worker_grace_ms),
            detect_after: ms(self.node_port_detect_after_ms),
        };
        for (name, v) in [
            (
                "BERTH_NODE_HEALTH_INTERVAL_MS",
                self.node_health_interval_ms,
            ),
            (
                "BERTH_NODE_HEALTH_LIVE_INTERVAL_MS",
                self.node_health_live_interval_ms,
            ),
            ("BERTH_NODE_HEALTH_TIMEOUT_MS", self.node_health_timeout_ms),
        ] {
            if v < 10 {
                problems.push(format!("{name} must be >= 10"));
            }
        }
        if health.restart_after < health.unhealthy_after {
            problems.push(
                "BERTH_NODE_HEALTH_RESTART_AFTER_MS must be >= BERTH_NODE_UNHEALTHY_AFTER_MS"
                    .to_owned(),
            );
        }
        if self.node_advertise_addr.is_unspecified() {
            problems.push(
                "BERTH_NODE_ADVERTISE_ADDR must be a reachable address, not 0.0.0.0".to_owned(),
            );
        }
        let subnet = self.node_subnet.parse::<Subnet>().unwrap_or_else(|e| {
            problems.push(format!("BERTH_NODE_SUBNET: {e}"));
            DEFAULT_SUBNET
        });
        let services = self
            .node_service_subnet
            .parse::<Subnet>()
            .unwrap_or_else(|e| {
                problems.push(format!("BERTH_NODE_SERVICE_SUBNET: {e}"));
                berth_agent::net::DEFAULT_SERVICES
            });
        if overlap(&subnet, &services) {
            problems.push(format!(
                "BERTH_NODE_SERVICE_SUBNET ({services}) overlaps BERTH_NODE_SUBNET ({subnet})"
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(NodeChecks {
            advertise: self.node_advertise_addr,
            ports,
            subnet,
            services,
            health,
            // Found when the node runs: the NATS servers it speaks to.
            control_plane: Vec::new(),
        })
    }
}

impl NodeArgs {
    /// Content store collection settings.
    pub fn gc(&self) -> GcOptions {
        GcOptions {
            interval: (self.node_gc_interval_secs > 0)
                .then(|| Duration::from_secs(self.node_gc_interval_secs)),
            budget_bytes: self.node_store_budget_mib.saturating_mul(1 << 20),
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn machine_memory_mib() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1024, |kb| u32::try_from(kb / 1024).unwrap_or(u32::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod disk_reserve_tests {
    use clap::Parser;

    use super::NodeArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn options(args: &[&str]) -> Result<super::NodeOptions, Vec<String>> {
        let cli = Cli::try_parse_from(std::iter::once("node").chain(args.iter().copied()))
            .map_err(|e| vec![e.to_string()])?;
        cli.node.validate()
    }

    fn reserve(args: &[&str]) -> Result<u64, Vec<String>> {
        options(args).map(|o| o.min_free_disk)
    }

    #[test]
    fn the_log_line_budget_is_a_rate_with_ten_seconds_of_burst() {
        let rate = options(&[]).unwrap().log_rate;
        assert_eq!((rate.lines_per_sec, rate.burst), (2000, 20_000));
        let rate = options(&["--node-log-lines-per-sec", "50"])
            .unwrap()
            .log_rate;
        assert_eq!((rate.lines_per_sec, rate.burst), (50, 500));
        for bad in ["0", "9", "1000001"] {
            let problems = options(&["--node-log-lines-per-sec", bad]).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("BERTH_NODE_LOG_LINES_PER_SEC")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn the_unpack_disk_reserve_is_a_setting_in_mib() {
        assert_eq!(reserve(&[]).unwrap(), 1 << 30, "1 GiB by default");
        assert_eq!(
            reserve(&["--node-min-free-disk-mib", "64"]).unwrap(),
            64 << 20
        );
        assert_eq!(reserve(&["--node-min-free-disk-mib", "0"]).unwrap(), 0);
        let problems = reserve(&["--node-min-free-disk-mib", "2000000000"]).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("BERTH_NODE_MIN_FREE_DISK_MIB")),
            "{problems:?}"
        );
        // What one instance may write: no limit unless set.
        let limit = |args: &[&str]| options(args).map(|o| o.instance_disk_limit);
        assert_eq!(limit(&[]).unwrap(), 0);
        assert_eq!(
            limit(&["--node-instance-disk-mib", "512"]).unwrap(),
            512 << 20
        );
        let problems = limit(&["--node-instance-disk-mib", "2000000000"]).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("BERTH_NODE_INSTANCE_DISK_MIB")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_user_namespace_is_auto_off_or_a_range_above_the_hosts_own_ids() {
        use super::Userns;
        let ns = |v: &str| {
            let arg = format!("--node-userns={v}");
            options(&[arg.as_str()]).map(|o| o.user_namespace)
        };
        assert_eq!(ns("off").unwrap(), Userns::Off);
        let range = |host| Userns::On(super::UserNamespace { host, size: 65_536 });
        let auto = Userns::Auto(super::UserNamespace {
            host: 1_000_000_000,
            size: 65_536,
        });
        assert_eq!(ns("auto").unwrap(), auto);
        assert_eq!(options(&[]).unwrap().user_namespace, auto, "the default");
        assert_eq!(ns("1000000000").unwrap(), range(1_000_000_000));
        assert_eq!(ns("65536").unwrap(), range(65_536));
        assert_eq!(ns("4294901759").unwrap(), range(4_294_901_759));
        for bad in ["0", "1000", "65535", "4294901760", "-1", "on", ""] {
            let problems = ns(bad).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains("BERTH_NODE_USERNS")),
                "{bad}: {problems:?}"
            );
        }
    }
}

//! OCI bundles: `config.json` built from the image config and the
//! service's settings, and a per-instance rootfs — an overlayfs mount with
//! the unpacked image as its read-only lower layer (starting an instance
//! copies nothing), or a copy where overlayfs is unavailable.
//!
//! The runtime spec sandboxes every container as `docker run --init` does:
//! Docker's default capabilities, seccomp profile ([`crate::seccomp`]) and
//! masked and read-only paths, no new privileges, a pids limit and no swap
//! beyond the memory limit, and `tini` as PID 1 in front of the app. Every
//! container has a network namespace of its own: the one the node attached
//! to its bridge ([`crate::net`]), with that network's `/etc/hosts` and
//! `/etc/resolv.conf` mounted read-only, or, for an instance without a
//! network, a fresh namespace with only loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_schemas::ids::{InstanceId, ServiceId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{io_err, BundleError};
use crate::image::{resolve_user, ImageConfig};
use crate::net::{Attachment, NetworkSpec};
use crate::seccomp;

/// The default PATH Docker gives images whose config sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for CPU limits (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Processes and threads an instance may have when its limits set none:
/// far above what a service needs, low enough that a fork bomb stops
/// there instead of exhausting the node's pid space.
pub const DEFAULT_PIDS_LIMIT: u32 = 4096;

/// Docker's default capabilities (`docker run` without `--cap-add` or
/// `--cap-drop`): what images built for Docker expect to have as root.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths: kernel state that leaks host details or is an
/// attack surface, hidden (an empty file or directory in its place).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: kernel settings a container must not change.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the init is mounted inside the container: `/dev` is a tmpfs of
/// the container's own (and not `noexec`), so nothing of the image's
/// rootfs is touched or shadowed.
pub const INIT_PATH: &str = "/dev/init";

/// CPU, memory and process limits (from the service's plan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU limit in millicores.
    pub cpu_millis: Option<u32>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u32>,
    /// Processes and threads; `None`: [`DEFAULT_PIDS_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// The least `/dev/shm` an instance gets (Docker's and Kubernetes' size,
/// whatever the memory).
const SHM_MIN_MIB: u64 = 64;

/// `/dev/shm`'s size for an instance with `memory_mib`: half of it, as a
/// Linux machine sizes its own (tmpfs's default), at least
/// [`SHM_MIN_MIB`]. Docker's fixed 64 MiB is where Chromium crashes,
/// PostgreSQL's parallel queries fail to resize a segment and PyTorch's
/// data loaders stop on a bus error; what is written there counts against
/// the instance's memory like any other page, so the size gives nothing
/// away beyond the plan.
fn shm_mib(memory_mib: Option<u32>) -> u64 {
    memory_mib.map_or(SHM_MIN_MIB, |m| (u64::from(m) / 2).max(SHM_MIN_MIB))
}

/// Open files a container starts with (its soft limit): what programs
/// that still use select() can handle.
const OPEN_FILES_SOFT: u64 = 1024;
/// The most open files a container may raise its own limit to: Docker's
/// (containerd's) hard limit.
const OPEN_FILES_HARD: u64 = 524_288;

/// What the node gives every container's sandbox, settled when the agent
/// starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// A static init (`tini`) run as PID 1 in front of the app, mounted
    /// read-only at [`INIT_PATH`]: it forwards signals to the app (which,
    /// not being PID 1, no longer ignores an unhandled SIGTERM) and reaps
    /// orphaned processes. `None`: the app is PID 1.
    pub init: Option<PathBuf>,
    /// Whether the memory controller limits memory+swap: cgroup v2, or
    /// v1 with swap accounting (`memory.memsw.*`; runc fails to create a
    /// container whose swap limit it cannot write).
    pub swap_limit: bool,
    /// The hard limit of open files (a server raises its soft limit of
    /// 1024 up to it; Go does so by itself): Docker's, or the agent's own
    /// where that is lower, as runc cannot go above it without
    /// `CAP_SYS_RESOURCE`.
    pub open_files_max: u64,
    /// The user namespace instances run in; `None`: the host's.
    pub user_namespace: Option<UserNamespace>,
    /// Whether the kernel makes a bind mount read-only with everything
    /// under it (`mount_setattr`, Linux 5.12): the host's `/sys`, bound
    /// into an instance in a user namespace, then has no writable
    /// submount either.
    pub recursive_read_only: bool,
    /// Whether an instance in a user namespace that owns its network
    /// namespace mounts a sysfs of its own (else the host's `/sys` is
    /// bound read-only, as for one that does not own it): off once the
    /// machine refused one.
    pub own_sysfs: bool,
}

/// The ids an instance's user namespace maps: its ids `0..size` are the
/// host's `host..host + size`, so its root (and every user it has) is an
/// unprivileged user of the host, which owns nothing outside the image's
/// tree and the instance's own writes. As Docker's `userns-remap`, one
/// range for all instances of a node: the images' trees are owned for it
/// once (runc 1.1 cannot make idmapped mounts, which would spare that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The host id of the instances' id 0.
    pub host: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl UserNamespace {
    /// Whether the instances' `id` is mapped.
    pub fn maps(self, id: u32) -> bool {
        id < self.size
    }

    /// Whether host id `id` is one of the namespace's.
    fn holds(self, id: u32) -> bool {
        id.checked_sub(self.host).is_some_and(|i| self.maps(i))
    }
}

/// Whether the kernel release `release` (`6.1.0-13-amd64`) is at least
/// `(major, minor)`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The user namespace an instance on the image tree `tree` runs in: the
/// node's `ns` when the tree was unpacked for it (its root belongs to
/// one of the namespace's ids), else none. An instance kept running
/// while the node turned its namespace on or off restarts as its tree
/// was made for, never in a namespace that does not own its files.
pub fn user_namespace_for(ns: Option<UserNamespace>, tree: &Path) -> Option<UserNamespace> {
    use std::os::unix::fs::MetadataExt;
    let ns = ns?;
    let owner = std::fs::metadata(tree).ok()?.uid();
    ns.holds(owner).then_some(ns)
}

impl Default for Sandbox {
    /// No init, no swap limit, 1024 open files.
    fn default() -> Self {
        Self {
            init: None,
            swap_limit: false,
            open_files_max: OPEN_FILES_SOFT,
            user_namespace: None,
            recursive_read_only: false,
            own_sysfs: true,
        }
    }
}

impl Sandbox {
    /// The sandbox with `init`, swap limits and open files as this host
    /// allows.
    pub fn detect(init: Option<PathBuf>) -> Self {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let v1_memsw = Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
        let own = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(OPEN_FILES_SOFT, |(_, hard)| hard);
        Self {
            init,
            swap_limit: v2 || v1_memsw,
            open_files_max: own.min(OPEN_FILES_HARD),
            user_namespace: None,
            recursive_read_only: kernel_at_least(
                &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
                (5, 12),
            ),
            own_sysfs: true,
        }
    }
}

/// The image an instance runs: an unpacked rootfs and its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRoot {
    /// The manifest digest (what the instance runs, for reports).
    pub digest: String,
    /// The unpacked image tree; never written to.
    pub rootfs: PathBuf,
    /// The image config's process settings.
    pub config: ImageConfig,
}

/// Everything the agent needs to run one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// The service.
    pub service: ServiceId,
    /// The instance (also the container id).
    pub instance: InstanceId,
    /// The image.
    pub image: ImageRoot,
    /// The service's custom command (replaces Cmd, keeps Entrypoint).
    pub command: Option<String>,
    /// The service's environment, already unsealed.
    pub env: BTreeMap<String, String>,
    /// The port the instance listens on (`PORT`), if any.
    pub port: Option<u16>,
    /// Limits.
    pub limits: Limits,
    /// SIGTERM → SIGKILL delay on stop.
    pub shutdown_delay: Duration,
    /// How the instance joins the node's network; `None`: a namespace of
    /// its own with only loopback (no traffic in or out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// The service's persistent disk, mounted at its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<berth_schemas::model::Disk>,
    /// The disk's latest restore: done before the instance mounts the
    /// disk, unless done already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_restore: Option<berth_schemas::model::DiskRestore>,
    /// The service's secret files, already unsealed: read-only in
    /// [`SECRETS_PATH`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, String>,
}

/// Where an instance finds its service's secret files (Render's path).
pub const SECRETS_PATH: &str = "/etc/secrets";

/// Writes `files` into the instance's `secrets` directory (replacing what
/// was there): each readable by every user (the program's user is the
/// image's), none writable or executable.
pub fn write_secret_files(
    dir: &InstanceDir,
    files: &BTreeMap<String, String>,
) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.secrets();
    let new = dir.root.join("secrets.new");
    let _ = std::fs::remove_dir_all(&new);
    std::fs::create_dir_all(&new).map_err(io_err(new.clone()))?;
    for (name, content) in files {
        // Names are checked where they are set; a `/` never gets here.
        let path = new.join(name);
        std::fs::write(&path, content).map_err(io_err(path.clone()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
            .map_err(io_err(path))?;
    }
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o555))
        .map_err(io_err(new.clone()))?;
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(io_err(target.clone()))?;
    }
    std::fs::rename(&new, &target).map_err(io_err(target))
}

/// The process environment: `HOSTNAME` (the instance's host name, as
/// Docker and Kubernetes set it), then image Env, then `PORT`, then the
/// service's env (a service may pin its own `PORT`); PATH defaulted as
/// Docker does.
pub fn environment(spec: &InstanceSpec) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), spec.instance.to_string())];
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for kv in spec.image.config.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    if let Some(p) = spec.port {
        set("PORT", &p.to_string());
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(BundleError::EnvName(k.clone()));
        }
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Why `spec`'s program cannot be run in its image ([`crate::runnable`]),
/// with the `PATH` and working directory it will be run with; cut to a
/// length an event carries.
pub fn cannot_run(spec: &InstanceSpec) -> Option<String> {
    let args = spec.image.config.args(spec.command.as_deref()).ok()?;
    let env = environment(spec).ok()?;
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let why = crate::runnable::why_not(&spec.image.rootfs, &args, path, working_dir(spec))?;
    Some(berth_schemas::cut(&why, CANNOT_RUN_MAX).to_owned())
}

/// The longest [`cannot_run`] said, in bytes.
const CANNOT_RUN_MAX: usize = 400;

/// The working directory of `spec`'s process: the image's `WorkingDir`
/// when absolute, else `/`.
fn working_dir(spec: &InstanceSpec) -> &str {
    spec.image
        .config
        .working_dir
        .as_deref()
        .filter(|d| d.starts_with('/'))
        .unwrap_or("/")
}

/// The OCI runtime spec (`config.json`) for `spec` with its rootfs at
/// `rootfs` (used to resolve `User` by name), joining `net` when attached,
/// sandboxed as `sandbox` says.
pub fn runtime_spec(
    spec: &InstanceSpec,
    rootfs: &Path,
    net: Option<&Attachment>,
    sandbox: &Sandbox,
) -> Result<Value, BundleError> {
    let cfg = &spec.image.config;
    let mut args = cfg.args(spec.command.as_deref())?;
    if sandbox.init.is_some() {
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }
    let user = resolve_user(cfg.user.as_deref(), rootfs)?;
    if let Some(ns) = sandbox.user_namespace {
        let ids = [user.uid, user.gid]
            .into_iter()
            .chain(user.additional_gids.iter().copied());
        if let Some(id) = ids.into_iter().find(|id| !ns.maps(*id)) {
            return Err(BundleError::UnmappedUser { id, size: ns.size });
        }
    }
    let mut process_user = json!({ "uid": user.uid, "gid": user.gid });
    if !user.additional_gids.is_empty() {
        process_user["additionalGids"] = json!(user.additional_gids);
    }
    let cwd = working_dir(spec);
    // As Docker does: root gets the capabilities; any other user has them
    // in its bounding set only, which is all execve leaves a non-root
    // process anyway. Neither gets inheritable or ambient ones, which
    // would carry over into programs the app runs.
    let capabilities = if user.uid == 0 {
        json!({ "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS })
    } else {
        json!({ "bounding": DEFAULT_CAPS })
    };
    let pids = spec.limits.pids.unwrap_or(DEFAULT_PIDS_LIMIT);
    let mut resources = json!({
        "devices": [{ "allow": false, "access": "rwm" }],
        "pids": { "limit": pids },
    });
    if let Some(m) = spec.limits.cpu_millis {
        let quota = u64::from(m) * CPU_PERIOD_US / 1000;
        resources["cpu"] = json!({ "quota": quota.max(1000), "period": CPU_PERIOD_US });
    }
    if let Some(mib) = spec.limits.memory_mib {
        let limit = u64::from(mib) << 20;
        resources["memory"] = json!({ "limit": limit });
        // memory+swap = memory: no swap. Docker's `--memory` alone allows
        // as much swap again, which turns the plan's memory into a soft
        // number and lets one instance slow the node down paging; an
        // instance over its memory is OOM-killed instead, as on any host
        // without swap. Left out where the kernel cannot account swap
        // (runc would refuse the container).
        if sandbox.swap_limit {
            resources["memory"]["swap"] = json!(limit);
        }
    }
    // The user namespace that owns the node-made network namespace: the
    // instance joins it rather than making its own.
    let joined_user = net.and_then(|a| a.userns.as_ref());
    let sysfs = json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]});
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}m", shm_mib(spec.limits.memory_mib))]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        // In a user namespace the kernel refuses a sysfs of a network
        // namespace the instance's user namespace does not own (one the
        // node made in the host's, by an earlier berth): the host's then,
        // read-only, as rootless containers have it.
        match sandbox.user_namespace {
            None => sysfs,
            Some(_) if sandbox.own_sysfs && (joined_user.is_some() || net.is_none()) => sysfs,
            Some(_) if sandbox.recursive_read_only => {
                json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "rro", "nosuid", "noexec", "nodev", "ro"]})
            }
            Some(_) => {
                json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
            }
        },
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    if let Some(init) = &sandbox.init {
        mounts.push(json!({"destination": INIT_PATH, "type": "bind", "source": init, "options": ["bind", "ro", "nosuid", "nodev"]}));
    }
    // The network's resolver and hosts file (names of the owner's private
    // services), kept current by the node, read-only inside.
    let mut network = json!({ "type": "network" });
    // Docker's per-namespace settings: set by the node where it makes the
    // namespace, by runc in the loopback-only one it makes itself.
    let mut sysctl = serde_json::Map::new();
    if net.is_none() {
        // runc writes them from inside the instance's user namespace,
        // whose groups are 0 to size - 1.
        let groups = match sandbox.user_namespace {
            None => crate::netns::ALL_GROUPS,
            Some(u) => (0, u.size.saturating_sub(1)),
        };
        for (name, value) in crate::netns::sysctls(groups) {
            sysctl.insert(name.replace('/', "."), json!(value));
        }
    }
    if let Some(a) = net {
        network["path"] = json!(a.netns);
        for (dest, src) in [("/etc/hosts", &a.hosts), ("/etc/resolv.conf", &a.resolv)] {
            mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        }
    }
    let mut value = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": process_user,
            "args": args,
            "env": environment(spec)?,
            "cwd": cwd,
            "capabilities": capabilities,
            "rlimits": [{
                "type": "RLIMIT_NOFILE",
                "hard": sandbox.open_files_max,
                "soft": OPEN_FILES_SOFT.min(sandbox.open_files_max),
            }],
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": spec.instance.to_string(),
        "mounts": mounts,
        "linux": {
            "cgroupsPath": format!("/berth/{}", spec.instance),
            "resources": resources,
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                network,
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp::profile(),
            "sysctl": sysctl,
        },
    });
    if let Some(ns) = sandbox.user_namespace {
        let map = json!([{ "containerID": 0, "hostID": ns.host, "size": ns.size }]);
        let linux = &mut value["linux"];
        let user = match joined_user {
            Some(path) => json!({ "type": "user", "path": path }),
            None => json!({ "type": "user" }),
        };
        if let Some(list) = linux["namespaces"].as_array_mut() {
            list.insert(0, user);
        }
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    Ok(value)
}

/// How an instance's rootfs was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsKind {
    /// overlayfs over the image tree, mounted by runc as the root of the
    /// container's own mount namespace: nothing on the host's mount table
    /// (each host mount makes every later container start dearer).
    Inside,
    /// overlayfs over the image tree, mounted on the host (where the
    /// runtime refuses a mount at `/`).
    Overlay,
    /// A full copy (overlayfs unavailable).
    Copy,
}

/// The files of one instance under the agent's state dir.
#[derive(Debug, Clone)]
pub struct InstanceDir {
    /// `<state>/instances/<instance>`.
    pub root: PathBuf,
}

impl InstanceDir {
    /// The instance dir for `instance` under `state`.
    pub fn new(state: &Path, instance: &InstanceId) -> Self {
        Self {
            root: state.join("instances").join(instance.to_string()),
        }
    }
    /// The OCI bundle.
    pub fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
    /// The service's secret files, bound read-only at [`SECRETS_PATH`].
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// The container's root (the overlay mount point).
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    /// The agent's record of the instance.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("instance.json")
    }
    /// The FIFO stdout or stderr goes through.
    pub fn fifo(&self, stream: &str) -> PathBuf {
        self.root.join(format!("{stream}.fifo"))
    }
}

/// Create `dir` (and its parents) readable by its owner only (mode 0700),
/// whatever mode the umask or an older version left it with; with
/// `searcher`, that group may pass through it without listing it (0710):
/// instances in a user namespace, whose root must reach its rootfs, its
/// overlay's dirs and the files bound into it.
pub fn private_dir(dir: &Path, searcher: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mode = match searcher {
        Some(gid) => {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// Create the instance's rootfs from `image`: the overlay's directories
/// for runc to mount inside the container (`inside`), else an overlay on
/// the host, else a copy. Idempotent: an existing mount or copy is kept.
pub fn prepare_rootfs(
    dir: &InstanceDir,
    image: &Path,
    inside: bool,
    ns: Option<UserNamespace>,
) -> Result<RootfsKind, BundleError> {
    let target = dir.rootfs();
    if is_mountpoint(&target) {
        return Ok(RootfsKind::Overlay);
    }
    let (upper, work) = (dir.root.join("upper"), dir.root.join("work"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).map_err(io_err(d.clone()))?;
    }
    // The overlay's writable side belongs to the instance's root, which
    // mounts it (inside) and writes through it.
    if let Some(ns) = ns {
        for d in [&upper, &work] {
            std::os::unix::fs::chown(d, Some(ns.host), Some(ns.host)).map_err(io_err(d.clone()))?;
        }
    }
    if dir.root.join("copied").exists() {
        return Ok(RootfsKind::Copy);
    }
    if inside {
        return Ok(RootfsKind::Inside);
    }
    let opts = overlay_options(dir, image);
    let mounted = nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    );
    match mounted {
        Ok(()) => Ok(RootfsKind::Overlay),
        Err(errno) => {
            tracing::info!(path = %target.display(), %errno, "overlay mount failed; copying the image");
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", image.display()))
                .arg(&target)
                .status()
                .map_err(io_err("cp"))?;
            if !status.success() {
                return Err(BundleError::Io {
                    path: target,
                    source: std::io::Error::other(format!("cp -a exited {status}")),
                });
            }
            let marker = dir.root.join("copied");
            std::fs::write(&marker, b"").map_err(io_err(marker))?;
            Ok(RootfsKind::Copy)
        }
    }
}

/// Throw away what an instance's earlier run wrote to its filesystem, so
/// that its next run starts from the image's files as its first did (as
/// Render, Fly and a Kubernetes container restart do; a pid or lock file
/// left by a crash must not stop the program from starting again): the
/// rootfs is unmounted if mounted on the host, and the overlay's upper and
/// work dirs, the rootfs dir and a copy's marker are removed. Nothing else
/// of the instance dir (its record, FIFOs, bundle) is touched.
pub fn discard_writes(dir: &InstanceDir) -> Result<(), BundleError> {
    let target = dir.rootfs();
    if is_mountpoint(&target) {
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).map_err(|errno| {
            BundleError::Io {
                path: target.clone(),
                source: std::io::Error::from(errno),
            }
        })?;
    }
    // The marker first: a crash midway leaves no marker over a partial copy.
    let parts = ["copied", "upper", "work"].map(|n| dir.root.join(n));
    for d in parts.into_iter().chain([target]) {
        let gone = match d.is_dir() {
            true => std::fs::remove_dir_all(&d),
            false => std::fs::remove_file(&d),
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(BundleError::Io { path: d, source: e })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The overlay of `image` with the instance's upper and work dirs.
fn overlay_options(dir: &InstanceDir, image: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        dir.root.join("upper").display(),
        dir.root.join("work").display()
    )
}

/// Write `config.json` for `spec` into the instance's bundle, its root
/// made as `rootfs` says, its disk (if it has one) bind-mounted from
/// `disk` on the host.
pub fn write_bundle(
    dir: &InstanceDir,
    spec: &InstanceSpec,
    net: Option<&Attachment>,
    sandbox: &Sandbox,
    rootfs: RootfsKind,
    disk: Option<&Path>,
) -> Result<(), BundleError> {
    let mut value = if rootfs == RootfsKind::Inside {
        // The host's rootfs dir stays empty: users resolve in the image,
        // which is what the overlay shows before the app writes.
        let mut v = runtime_spec(spec, &spec.image.rootfs, net, sandbox)?;
        if let Some(mounts) = v["mounts"].as_array_mut() {
            // First, so every other mount lands inside it.
            let root = overlay_options(dir, &spec.image.rootfs);
            mounts.insert(
                0,
                json!({"destination": "/", "type": "overlay", "source": "overlay", "options": [root]}),
            );
        }
        v
    } else {
        runtime_spec(spec, &dir.rootfs(), net, sandbox)?
    };
    if let (Some(d), Some(source), Some(mounts)) =
        (&spec.disk, disk, value["mounts"].as_array_mut())
    {
        mounts.push(json!({
            "destination": d.mount_path,
            "type": "bind",
            "source": source,
            "options": ["rbind", "rw", "nosuid", "nodev"],
        }));
    }
    if let (false, Some(mounts)) = (spec.secret_files.is_empty(), value["mounts"].as_array_mut()) {
        mounts.push(json!({
            "destination": SECRETS_PATH,
            "type": "bind",
            "source": dir.secrets(),
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        }));
    }
    let path = dir.bundle().join("config.json");
    let bytes = serde_json::to_vec_pretty(&value).map_err(|e| BundleError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, bytes).map_err(io_err(path))
}

/// Unmount (if mounted) and remove everything of the instance.
pub fn remove_instance(dir: &InstanceDir) {
    let target = dir.rootfs();
    if is_mountpoint(&target) {
        if let Err(errno) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %target.display(), %errno, "unmount failed");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir.root) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.root.display(), error = %e, "instance dir not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            service: ServiceId::generate(),
            instance: InstanceId::generate(),
            image: ImageRoot {
                digest: "sha256:00".into(),
                rootfs: PathBuf::from("/nonexistent"),
                config: ImageConfig {
                    entrypoint: Some(vec!["/bin/app".into()]),
                    cmd: Some(vec!["serve".into()]),
                    env: Some(vec!["A=image".into(), "B=image".into(), "PATH=/bin".into()]),
                    working_dir: Some("/srv".into()),
                    user: Some("12:34".into()),
                    exposed_ports: None,
                    stop_signal: None,
                    volumes: None,
                },
            },
            command: Some("migrate --all".into()),
            env: BTreeMap::from([("B".into(), "service".into()), ("C".into(), "x=y".into())]),
            port: Some(10000),
            limits: Limits {
                cpu_millis: Some(500),
                memory_mib: Some(256),
                pids: None,
            },
            shutdown_delay: Duration::from_secs(30),
            network: None,
            disk: None,
            disk_restore: None,
            secret_files: BTreeMap::new(),
        }
    }

    #[test]
    fn secret_files_are_written_readable_and_bound_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let mut s = spec();
        let dir = InstanceDir::new(state.path(), &s.instance);
        std::fs::create_dir_all(dir.bundle()).unwrap();
        // Without files, no mount.
        write_bundle(&dir, &s, None, &Sandbox::default(), RootfsKind::Copy, None).unwrap();
        let config = || -> Value {
            serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json")).unwrap())
                .unwrap()
        };
        assert!(!config().to_string().contains(SECRETS_PATH));
        s.secret_files.insert("key.json".into(), "{\"k\":1}".into());
        write_secret_files(&dir, &s.secret_files).unwrap();
        // Written again (a restart): replaced, not merged.
        s.secret_files.clear();
        s.secret_files.insert("other".into(), "two".into());
        write_secret_files(&dir, &s.secret_files).unwrap();
        assert!(!dir.secrets().join("key.json").exists());
        let file = dir.secrets().join("other");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&file), mode(&dir.secrets())), (0o444, 0o555));
        write_bundle(&dir, &s, None, &Sandbox::default(), RootfsKind::Copy, None).unwrap();
        let v = config();
        let mount = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == SECRETS_PATH)
            .cloned()
            .unwrap();
        assert_eq!(mount["source"], json!(dir.secrets()));
        assert_eq!(
            mount["options"],
            json!(["rbind", "ro", "nosuid", "nodev", "noexec"])
        );
    }

    #[test]
    fn a_disk_is_bound_at_its_path_last_without_setuid_or_devices() {
        let state = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.disk = Some(berth_schemas::model::Disk {
            id: "dsk-aaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
            name: "data".into(),
            mount_path: "/var/lib/data".into(),
            size_gb: 1,
        });
        let dir = InstanceDir::new(state.path(), &s.instance);
        std::fs::create_dir_all(dir.bundle()).unwrap();
        let host = Path::new("/node/agent/disks/dsk-aaaaaaaaaaaaaaaaaaaa");
        write_bundle(
            &dir,
            &s,
            None,
            &Sandbox::default(),
            RootfsKind::Copy,
            Some(host),
        )
        .unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json")).unwrap())
                .unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        assert_eq!(
            mounts.last().unwrap(),
            &json!({
                "destination": "/var/lib/data",
                "type": "bind",
                "source": host,
                "options": ["rbind", "rw", "nosuid", "nodev"],
            })
        );
        // Without the host's mount (none made), nothing is bound.
        write_bundle(&dir, &s, None, &Sandbox::default(), RootfsKind::Copy, None).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json")).unwrap())
                .unwrap();
        assert!(!v.to_string().contains("/var/lib/data"), "{v}");
    }

    #[test]
    fn a_root_mounted_inside_is_the_first_mount_an_overlay_of_the_image() {
        let state = tempfile::tempdir().unwrap();
        let mut s = spec();
        // Users resolve in the image (the rootfs dir on the host is empty).
        let image = state.path().join("image");
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::fs::write(image.join("etc/passwd"), "app:x:7:8::/:/bin/sh\n").unwrap();
        s.image.rootfs = image.clone();
        s.image.config.user = Some("app".into());
        let dir = InstanceDir::new(state.path(), &s.instance);
        assert_eq!(
            prepare_rootfs(&dir, &image, true, None).unwrap(),
            RootfsKind::Inside
        );
        assert!(!is_mountpoint(&dir.rootfs()));
        write_bundle(
            &dir,
            &s,
            None,
            &Sandbox::default(),
            RootfsKind::Inside,
            None,
        )
        .unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json")).unwrap())
                .unwrap();
        let root = &v["mounts"][0];
        assert_eq!(root["destination"], "/");
        assert_eq!(root["type"], "overlay");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            dir.root.join("upper").display(),
            dir.root.join("work").display()
        );
        assert_eq!(root["options"], json!([opts]));
        assert_eq!(v["mounts"][1]["destination"], "/proc");
        assert_eq!(v["process"]["user"], json!({"uid": 7, "gid": 8}));
        // A root made on the host: nothing mounted at `/` by runc.
        s.image.config.user = Some("7:8".into());
        write_bundle(
            &dir,
            &s,
            None,
            &Sandbox::default(),
            RootfsKind::Overlay,
            None,
        )
        .unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.bundle().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["mounts"][0]["destination"], "/proc");
    }

    #[test]
    fn spec_from_image_and_service() {
        let s = spec();
        let v = runtime_spec(&s, Path::new("/nonexistent"), None, &Sandbox::default()).unwrap();
        assert_eq!(
            v["process"]["args"],
            json!(["/bin/app", "migrate", "--all"])
        );
        assert_eq!(
            v["process"]["env"],
            json!([
                format!("HOSTNAME={}", s.instance),
                "A=image",
                "B=service",
                "PATH=/bin",
                "PORT=10000",
                "C=x=y"
            ])
        );
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["process"]["user"], json!({"uid": 12, "gid": 34}));
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(
            v["linux"]["resources"]["cpu"],
            json!({"quota": 50000, "period": 100000})
        );
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 256u64 << 20);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n.get("path").is_none()),
            "a network namespace of its own, never the host's"
        );
        let attached = Attachment {
            netns: PathBuf::from("/run/netns/x"),
            userns: None,
            hosts: PathBuf::from("/state/net/x.hosts"),
            resolv: PathBuf::from("/state/net/x.resolv"),
            ip: std::net::Ipv4Addr::new(10, 1, 2, 3),
        };
        let v = runtime_spec(
            &s,
            Path::new("/nonexistent"),
            Some(&attached),
            &Sandbox::default(),
        )
        .unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/netns/x"));
        let mounts = v["mounts"].as_array().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/etc/hosts" && m["source"] == "/state/net/x.hosts"));
    }

    #[test]
    fn defaults() {
        let mut s = spec();
        s.image.config = ImageConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..ImageConfig::default()
        };
        s.command = None;
        s.env.clear();
        s.port = None;
        s.limits = Limits::default();
        let v = runtime_spec(&s, Path::new("/nonexistent"), None, &Sandbox::default()).unwrap();
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(
            v["process"]["env"],
            json!([
                format!("PATH={DEFAULT_PATH}"),
                format!("HOSTNAME={}", s.instance)
            ])
        );
        // The image's and the service's env may name their own.
        s.env.insert("HOSTNAME".into(), "web".into());
        let v = runtime_spec(&s, Path::new("/nonexistent"), None, &Sandbox::default()).unwrap();
        assert_eq!(
            v["process"]["env"],
            json!([format!("PATH={DEFAULT_PATH}"), "HOSTNAME=web"])
        );
        s.env.clear();
        assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert!(v["linux"]["resources"].get("memory").is_none());
        s.env.insert("BAD=NAME".into(), "x".into());
        assert!(matches!(
            runtime_spec(&s, Path::new("/x"), None, &Sandbox::default()),
            Err(BundleError::EnvName(_))
        ));
    }

    #[test]
    fn a_user_namespace_maps_the_image_ids_and_joins_the_nodes_or_binds_the_hosts_sys() {
        let ns = UserNamespace {
            host: 1_000_000_000,
            size: 65_536,
        };
        let sandbox = Sandbox {
            user_namespace: Some(ns),
            ..Sandbox::default()
        };
        let sys_of = |v: &Value| {
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/sys")
                .unwrap()
                .clone()
        };
        // Its network made by runc inside its own user namespace: a sysfs
        // of its own.
        let v = runtime_spec(&spec(), Path::new("/nonexistent"), None, &sandbox).unwrap();
        let map = json!([{ "containerID": 0, "hostID": 1_000_000_000u32, "size": 65_536 }]);
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(v["linux"]["gidMappings"], map);
        assert_eq!(v["linux"]["namespaces"][0], json!({ "type": "user" }));
        assert_eq!(sys_of(&v)["type"], "sysfs");
        // A network the node made inside a user namespace: that one is
        // joined (the map still given, for runc's own use), and a sysfs.
        let attached_spec = |a: &Attachment, sandbox: &Sandbox| {
            runtime_spec(&spec(), Path::new("/nonexistent"), Some(a), sandbox).unwrap()
        };
        let mut attached = Attachment {
            netns: PathBuf::from("/proc/1/fd/7"),
            userns: Some(PathBuf::from("/proc/1/fd/8")),
            hosts: PathBuf::from("/state/net/x.hosts"),
            resolv: PathBuf::from("/state/net/x.resolv"),
            ip: std::net::Ipv4Addr::new(10, 1, 2, 3),
        };
        let v = attached_spec(&attached, &sandbox);
        assert_eq!(
            v["linux"]["namespaces"][0],
            json!({ "type": "user", "path": "/proc/1/fd/8" })
        );
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(sys_of(&v)["type"], "sysfs");
        // On a machine that refused one: still joined, the host's /sys.
        let refused = Sandbox {
            own_sysfs: false,
            ..sandbox.clone()
        };
        let v = attached_spec(&attached, &refused);
        assert_eq!(sys_of(&v)["type"], "bind");
        assert_eq!(
            v["linux"]["namespaces"][0],
            json!({ "type": "user", "path": "/proc/1/fd/8" })
        );
        // Without a user namespace, the node's one is not joined.
        let v = attached_spec(&attached, &Sandbox::default());
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"));
        // One the host's user namespace owns (an instance adopted from an
        // earlier berth): a new user namespace, and the host's /sys bound.
        attached.userns = None;
        let v = attached_spec(&attached, &sandbox);
        assert_eq!(v["linux"]["namespaces"][0], json!({ "type": "user" }));
        let sys = sys_of(&v);
        assert_eq!(sys["type"], "bind");
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(!sys["options"].as_array().unwrap().contains(&json!("rro")));
        // Read-only all the way down where the kernel can.
        let deep = Sandbox {
            recursive_read_only: true,
            ..sandbox.clone()
        };
        let v = runtime_spec(&spec(), Path::new("/nonexistent"), Some(&attached), &deep).unwrap();
        let sys = sys_of(&v);
        assert!(sys["options"].as_array().unwrap().contains(&json!("rro")));
        assert!(kernel_at_least("6.18.44-fc-v1272", (5, 12)));
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(!kernel_at_least("5.10.0-28-amd64", (5, 12)));
        assert!(!kernel_at_least("4.19.0", (5, 12)));
        assert!(!kernel_at_least("", (5, 12)));
        // Without one: no mapping, sysfs of its own.
        let v = runtime_spec(
            &spec(),
            Path::new("/nonexistent"),
            None,
            &Sandbox::default(),
        )
        .unwrap();
        assert!(v["linux"].get("uidMappings").is_none());
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({ "type": "user" })));

        // An image user past the range is refused, naming it.
        let mut s = spec();
        s.image.config.user = Some("70000:1".into());
        let refused = runtime_spec(&s, Path::new("/nonexistent"), None, &sandbox);
        assert!(
            matches!(
                refused,
                Err(BundleError::UnmappedUser {
                    id: 70000,
                    size: 65_536
                })
            ),
            "{refused:?}"
        );
        let mut s = spec();
        s.image.config.user = Some("1:70001".into());
        assert!(matches!(
            runtime_spec(&s, Path::new("/nonexistent"), None, &sandbox),
            Err(BundleError::UnmappedUser { id: 70001, .. })
        ));
        s.image.config.user = Some("65535:65535".into());
        assert!(runtime_spec(&s, Path::new("/nonexistent"), None, &sandbox).is_ok());
    }

    #[test]
    fn shared_memory_is_half_the_plan_and_never_below_dockers() {
        let shm = |memory_mib| {
            let mut s = spec();
            s.limits.memory_mib = memory_mib;
            let v = runtime_spec(&s, Path::new("/nonexistent"), None, &Sandbox::default()).unwrap();
            let mounts = v["mounts"].as_array().unwrap().clone();
            let m = mounts
                .iter()
                .find(|m| m["destination"] == "/dev/shm")
                .unwrap();
            assert_eq!(m["type"], "tmpfs");
            m["options"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o.as_str()?.strip_prefix("size=").map(str::to_owned))
                .collect::<Vec<_>>()
        };
        assert_eq!(shm(Some(2048)), ["1024m"]);
        assert_eq!(shm(Some(512)), ["256m"]);
        assert_eq!(shm(Some(100)), ["64m"]);
        assert_eq!(shm(None), ["64m"]);
    }

    #[test]
    fn sandbox_of_every_container() {
        let mut s = spec();
        s.limits.pids = Some(64);
        let sandbox = Sandbox {
            init: Some(PathBuf::from("/usr/bin/tini-static")),
            swap_limit: true,
            open_files_max: 524_288,
            user_namespace: None,
            recursive_read_only: false,
            own_sysfs: true,
        };
        let v = runtime_spec(&s, Path::new("/nonexistent"), None, &sandbox).unwrap();
        // The init runs the app, mounted read-only after /dev.
        assert_eq!(
            v["process"]["args"],
            json!([INIT_PATH, "--", "/bin/app", "migrate", "--all"])
        );
        let mounts = v["mounts"].as_array().unwrap();
        let dev = mounts.iter().position(|m| m["destination"] == "/dev");
        let init = mounts.iter().position(|m| m["destination"] == INIT_PATH);
        assert!(dev < init, "{mounts:?}");
        let init = &mounts[init.unwrap()];
        assert_eq!(init["source"], "/usr/bin/tini-static");
        assert!(init["options"].as_array().unwrap().contains(&json!("ro")));
        // A non-root user keeps the capabilities only in its bounding set.
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["bounding"], json!(DEFAULT_CAPS));
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            assert!(caps.get(set).is_none(), "{set}: {caps}");
        }
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let seccomp = &v["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        let allowed = |name: &str| {
            seccomp["syscalls"].as_array().unwrap().iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r["names"].as_array().unwrap().iter().any(|n| n == name)
            })
        };
        for name in ["read", "write", "clone", "execve"] {
            assert!(allowed(name), "{name} allowed");
        }
        for name in ["ptrace", "mount", "kexec_load", "bpf", "unshare", "clone3"] {
            assert!(!allowed(name), "{name} denied");
        }
        let resources = &v["linux"]["resources"];
        assert_eq!(resources["pids"]["limit"], 64);
        assert_eq!(
            v["process"]["rlimits"],
            json!([{ "type": "RLIMIT_NOFILE", "hard": 524_288, "soft": 1024 }])
        );
        assert_eq!(resources["memory"]["swap"], 256u64 << 20, "no swap");
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ] {
            assert!(masked.contains(&json!(p)), "{p} masked");
        }
        assert!(v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/sys")));

        // Root gets Docker's capabilities; no init and no swap accounting
        // leave the args and the memory limit alone.
        s.image.config.user = None;
        s.limits.pids = None;
        let v = runtime_spec(&s, Path::new("/nonexistent"), None, &Sandbox::default()).unwrap();
        let caps = &v["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps[set], json!(DEFAULT_CAPS), "{set}");
        }
        assert!(caps.get("ambient").is_none());
        assert_eq!(v["process"]["args"][0], "/bin/app");
        assert!(!v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == INIT_PATH));
        assert!(v["linux"]["resources"]["memory"].get("swap").is_none());
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], DEFAULT_PIDS_LIMIT);
    }
}

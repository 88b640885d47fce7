//! OCI bundles: `config.json` built from the image config and the
//! service's settings, and a per-instance rootfs — an overlayfs mount with
//! the unpacked image as its read-only lower layer (starting an instance
//! copies nothing), or a copy where overlayfs is unavailable.
//!
//! The runtime spec follows what `runc spec` generates (mounts, masked and
//! read-only paths, the three default capabilities, `RLIMIT_NOFILE`), minus
//! the network namespace: instances use host networking and listen on the
//! `PORT` the agent sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_schemas::ids::{InstanceId, ServiceId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{io_err, BundleError};
use crate::image::{resolve_user, ImageConfig};

/// The default PATH Docker gives images whose config sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for CPU limits (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// CPU and memory limits (from the service's plan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU limit in millicores.
    pub cpu_millis: Option<u32>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u32>,
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
}

/// The process environment: image Env, then `PORT`, then the service's env
/// (a service may pin its own `PORT`); PATH defaulted as Docker does.
pub fn environment(spec: &InstanceSpec) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<(String, String)> = Vec::new();
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

/// The OCI runtime spec (`config.json`) for `spec` with its rootfs at
/// `rootfs` (used to resolve `User` by name).
pub fn runtime_spec(spec: &InstanceSpec, rootfs: &Path) -> Result<Value, BundleError> {
    let cfg = &spec.image.config;
    let args = cfg.args(spec.command.as_deref())?;
    let user = resolve_user(cfg.user.as_deref(), rootfs)?;
    let cwd = cfg
        .working_dir
        .as_deref()
        .filter(|d| d.starts_with('/'))
        .unwrap_or("/");
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(m) = spec.limits.cpu_millis {
        let quota = u64::from(m) * CPU_PERIOD_US / 1000;
        resources["cpu"] = json!({ "quota": quota.max(1000), "period": CPU_PERIOD_US });
    }
    if let Some(mib) = spec.limits.memory_mib {
        resources["memory"] = json!({ "limit": u64::from(mib) << 20 });
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    // Host networking: the host's resolver and hosts file, read-only.
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(f).is_file() {
            mounts.push(json!({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        }
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": user.uid, "gid": user.gid },
            "args": args,
            "env": environment(spec)?,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
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
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }))
}

/// How an instance's rootfs was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsKind {
    /// overlayfs over the image tree.
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

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// Create the instance's rootfs from `image` (overlay, else copy).
/// Idempotent: an existing mount or copy is kept.
pub fn prepare_rootfs(dir: &InstanceDir, image: &Path) -> Result<RootfsKind, BundleError> {
    let target = dir.rootfs();
    if is_mountpoint(&target) {
        return Ok(RootfsKind::Overlay);
    }
    let (upper, work) = (dir.root.join("upper"), dir.root.join("work"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d).map_err(io_err(d.clone()))?;
    }
    if dir.root.join("copied").exists() {
        return Ok(RootfsKind::Copy);
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        upper.display(),
        work.display()
    );
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

/// Write `config.json` for `spec` into the instance's bundle.
pub fn write_bundle(dir: &InstanceDir, spec: &InstanceSpec) -> Result<(), BundleError> {
    let value = runtime_spec(spec, &dir.rootfs())?;
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
                },
            },
            command: Some("migrate --all".into()),
            env: BTreeMap::from([("B".into(), "service".into()), ("C".into(), "x=y".into())]),
            port: Some(10000),
            limits: Limits {
                cpu_millis: Some(500),
                memory_mib: Some(256),
            },
            shutdown_delay: Duration::from_secs(30),
        }
    }

    #[test]
    fn spec_from_image_and_service() {
        let s = spec();
        let v = runtime_spec(&s, Path::new("/nonexistent")).unwrap();
        assert_eq!(
            v["process"]["args"],
            json!(["/bin/app", "migrate", "--all"])
        );
        assert_eq!(
            v["process"]["env"],
            json!(["A=image", "B=service", "PATH=/bin", "PORT=10000", "C=x=y"])
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
            !ns.iter().any(|n| n["type"] == "network"),
            "host networking"
        );
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
        let v = runtime_spec(&s, Path::new("/nonexistent")).unwrap();
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["process"]["env"], json!([format!("PATH={DEFAULT_PATH}")]));
        assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert!(v["linux"]["resources"].get("memory").is_none());
        s.env.insert("BAD=NAME".into(), "x".into());
        assert!(matches!(
            runtime_spec(&s, Path::new("/x")),
            Err(BundleError::EnvName(_))
        ));
    }
}

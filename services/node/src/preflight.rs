//! What the node needs from its machine, checked before it registers or
//! takes work, so a machine that cannot run containers says so at start in
//! one sentence rather than failing the first deploy with an error that
//! blames the image.
//!
//! [`probe`] reads the facts (ids and capabilities, `runc --version`, the
//! CNI plugin dir, PATH, the init binary, /proc/filesystems, the cgroup
//! controllers); [`check`] is a pure verdict over them, so every
//! combination is unit-tested without changing the machine.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::NodeOptions;

/// The CNI plugins instances attached by an earlier berth are checked and
/// deleted through (new ones are attached by the node itself).
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "firewall"];

/// Tools the CNI plugins and the node call by name (so they must be on
/// PATH): `iptables` for port mappings and firewall rules, `ip` for links.
pub const TOOLS: [&str; 2] = ["iptables", "ip"];

/// Every instance's PID 1 (forwards signals, reaps zombies).
pub const INIT: &str = "/usr/bin/tini-static";

/// The cgroup controllers runc sets limits with.
pub const CGROUP_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// runc answers `--version` at once; a hung binary must not hold the
/// start up.
const RUNC_PATIENCE: Duration = Duration::from_secs(5);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Where the node looks for what it needs (from its settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The runc binary (`BERTH_NODE_RUNC`).
    pub runc: PathBuf,
    /// The CNI plugin dir (`BERTH_NODE_CNI_PATH`).
    pub cni_path: PathBuf,
}

impl Requirements {
    /// The requirements of a node with these options.
    pub fn of(opts: &NodeOptions) -> Self {
        Self {
            runc: opts.runc.clone(),
            cni_path: opts.cni_path.clone(),
        }
    }
}

/// The facts about a machine that decide whether the node can run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The effective uid is 0.
    pub root: bool,
    /// The effective capability set (`CapEff` in /proc/self/status), if
    /// it could be read.
    pub cap_eff: Option<u64>,
    /// The first line `runc --version` printed, or why it did not answer.
    pub runc: Result<String, String>,
    /// Executables present in the CNI plugin dir.
    pub cni_plugins: BTreeSet<String>,
    /// [`TOOLS`] found on PATH.
    pub tools: BTreeSet<String>,
    /// [`INIT`] is an executable file.
    pub init: bool,
    /// The kernel lists `overlay` in /proc/filesystems.
    pub overlay: bool,
    /// Cgroup controllers available (v1 hierarchies and v2
    /// `cgroup.controllers` together).
    pub cgroup_controllers: BTreeSet<String>,
}

/// One thing the node needs and lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Neither root nor CAP_SYS_ADMIN + CAP_NET_ADMIN.
    Privilege,
    /// runc did not answer `--version`.
    Runc { path: PathBuf, why: String },
    /// These CNI plugins are not in the plugin dir.
    CniPlugins {
        dir: PathBuf,
        names: Vec<&'static str>,
    },
    /// These tools are not on PATH.
    Tools(Vec<&'static str>),
    /// The init binary is not there.
    Init,
    /// These cgroup controllers are not available.
    Cgroups(Vec<&'static str>),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Privilege => f.write_str("root (or CAP_SYS_ADMIN and CAP_NET_ADMIN)"),
            Missing::Runc { path, why } => write!(
                f,
                "a working runc (`{} --version`: {why}; BERTH_NODE_RUNC)",
                path.display()
            ),
            Missing::CniPlugins { dir, names } => {
                let what = if names.len() == 1 {
                    "plugin"
                } else {
                    "plugins"
                };
                write!(
                    f,
                    "the CNI {what} {} in {} (BERTH_NODE_CNI_PATH)",
                    and_list(names),
                    dir.display()
                )
            }
            Missing::Tools(names) => {
                let named: Vec<String> = names
                    .iter()
                    .map(|n| match *n {
                        "ip" => "ip (iproute2)".to_owned(),
                        n => n.to_owned(),
                    })
                    .collect();
                write!(f, "{} on PATH", and_list(&named))
            }
            Missing::Init => write!(f, "the instance init {INIT} (package tini)"),
            Missing::Cgroups(names) => {
                let what = if names.len() == 1 {
                    "controller"
                } else {
                    "controllers"
                };
                write!(
                    f,
                    "the {} cgroup {what} under {CGROUP_ROOT}",
                    and_list(names)
                )
            }
        }
    }
}

/// What [`check`] found: refusals and warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What the node cannot run without; empty: it can run.
    pub missing: Vec<Missing>,
    /// What makes it slower or weaker but not impossible.
    pub warnings: Vec<String>,
}

impl Verdict {
    /// The one sentence naming everything missing, or `None` when nothing
    /// is.
    pub fn refusal(&self) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let items: Vec<String> = self.missing.iter().map(ToString::to_string).collect();
        Some(format!(
            "berth needs {} to run containers",
            and_list(&items)
        ))
    }

    /// Whether privilege is among what is missing (the fix is then to run
    /// as root, not to install something).
    pub fn needs_root(&self) -> bool {
        self.missing.contains(&Missing::Privilege)
    }

    /// `Err` with [`Verdict::refusal`] when something is missing.
    pub fn into_result(self) -> Result<Vec<String>, crate::NodeError> {
        match self.refusal() {
            Some(sentence) => Err(crate::NodeError::Preflight(sentence)),
            None => Ok(self.warnings),
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// The verdict on a machine: pure, so every combination is testable.
pub fn check(req: &Requirements, probe: &Probe) -> Verdict {
    let mut v = Verdict::default();
    let privileged = probe.root
        || probe
            .cap_eff
            .is_some_and(|c| has_cap(c, CAP_SYS_ADMIN) && has_cap(c, CAP_NET_ADMIN));
    if !privileged {
        v.missing.push(Missing::Privilege);
    }
    if let Err(why) = &probe.runc {
        v.missing.push(Missing::Runc {
            path: req.runc.clone(),
            why: why.clone(),
        });
    }
    let plugins: Vec<&'static str> = CNI_PLUGINS
        .into_iter()
        .filter(|p| !probe.cni_plugins.contains(*p))
        .collect();
    if !plugins.is_empty() {
        v.missing.push(Missing::CniPlugins {
            dir: req.cni_path.clone(),
            names: plugins,
        });
    }
    let tools: Vec<&'static str> = TOOLS
        .into_iter()
        .filter(|t| !probe.tools.contains(*t))
        .collect();
    if !tools.is_empty() {
        v.missing.push(Missing::Tools(tools));
    }
    if !probe.init {
        v.missing.push(Missing::Init);
    }
    let cgroups: Vec<&'static str> = CGROUP_CONTROLLERS
        .into_iter()
        .filter(|c| !probe.cgroup_controllers.contains(*c))
        .collect();
    if !cgroups.is_empty() {
        v.missing.push(Missing::Cgroups(cgroups));
    }
    if !probe.overlay {
        v.warnings.push(
            "overlayfs is not available (no `overlay` in /proc/filesystems): each instance's \
             root filesystem is a copy of the image, slower to start and using more disk"
                .to_owned(),
        );
    }
    v
}

/// Probes this machine and checks it against `opts` (blocking: runs
/// `runc --version`).
pub fn check_machine(opts: &NodeOptions) -> Verdict {
    let req = Requirements::of(opts);
    check(&req, &probe(&req))
}

/// Reads the facts [`check`] decides on from this machine.
pub fn probe(req: &Requirements) -> Probe {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Probe {
        root: effective_uid(&status) == Some(0),
        cap_eff: cap_eff(&status),
        runc: runc_version(&req.runc),
        cni_plugins: CNI_PLUGINS
            .into_iter()
            .filter(|p| is_executable(&req.cni_path.join(p)))
            .map(str::to_owned)
            .collect(),
        tools: TOOLS
            .into_iter()
            .filter(|t| on_path(t))
            .map(str::to_owned)
            .collect(),
        init: is_executable(Path::new(INIT)),
        overlay: std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| lists_overlay(&f)),
        cgroup_controllers: cgroup_controllers(Path::new(CGROUP_ROOT)),
    }
}

/// The effective uid from /proc/self/status (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn lists_overlay(filesystems: &str) -> bool {
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
}

/// The controllers runc can use under `root`: on cgroup v2 (unified) the
/// root's `cgroup.controllers`; on v1 and hybrid (v1 controllers, an empty
/// v2 at `unified/`) one mounted hierarchy per directory, `cpu,cpuacct`
/// naming two.
fn cgroup_controllers(root: &Path) -> BTreeSet<String> {
    if let Ok(list) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        return list.split_whitespace().map(str::to_owned).collect();
    }
    let mut found = BTreeSet::new();
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            // A v1 hierarchy is a directory with its own cgroup.procs.
            if d.file_name() != "unified" && d.path().join("cgroup.procs").is_file() {
                let name = d.file_name().to_string_lossy().into_owned();
                found.extend(name.split(',').map(str::to_owned));
            }
        }
    }
    found
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(name))))
}

/// `runc --version`'s first line, or why there is none.
fn runc_version(runc: &Path) -> Result<String, String> {
    let mut child = Command::new(runc)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if runc.components().count() == 1 => {
                "not found on PATH".to_owned()
            }
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            _ => e.to_string(),
        })?;
    let deadline = Instant::now() + RUNC_PATIENCE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {}s", RUNC_PATIENCE.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(out.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
mod tests;

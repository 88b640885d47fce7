//! Whether a node's instances run in a user namespace
//! (`BERTH_NODE_USERNS`), and where the node keeps its state as they see
//! it.
//!
//! The instances' root is an unprivileged user of this machine (host id
//! `ns.host`), and runc resolves an instance's rootfs, its overlay dirs
//! and the files bound into it as that user: every directory from `/` to
//! the node's state dir must let it through. Where one does not (a
//! checkout under `/root`, mode 0700, with the default `./.berth`) the
//! node reaches its state dir through an *alias*: a bind mount of it at
//! `/run/berth/nodes/<node id>`, which that user passes. The alias is made
//! once and kept across node restarts (instances adopted by the next node
//! process keep their paths); `/run` is emptied at reboot and the next
//! start makes it again. It is private: what the node mounts under it (an
//! instance's overlay, when it is mounted on the host) is seen there only.
//! A node whose state dir is passable, and which made no alias before,
//! uses the state dir itself.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_agent::bundle::UserNamespace;
use berth_schemas::ids::NodeId;

use crate::config::Userns;
use crate::NodeError;

/// Where nodes' aliases are made.
pub const ALIASES: &str = "/run/berth/nodes";

/// The alias of node `id`'s state dir.
pub fn alias_of(id: &NodeId) -> PathBuf {
    Path::new(ALIASES).join(id.as_str())
}

/// How instances run, as `mode` asks and this machine allows, and the
/// path the node uses for its state dir `dir` (`dir` itself, or its
/// alias). `On` refuses to start a node that would fail every instance;
/// `Auto` falls back to the host's root, saying why.
pub(crate) fn decide(
    mode: Userns,
    dir: &Path,
    id: &NodeId,
) -> Result<(Option<UserNamespace>, PathBuf), NodeError> {
    let (ns, required) = match mode {
        Userns::Off => return Ok((None, dir.to_owned())),
        Userns::On(ns) => (ns, true),
        Userns::Auto(ns) => (ns, false),
    };
    match makes_user_namespaces().and_then(|()| reach(ns, dir, &alias_of(id))) {
        Ok(at) => {
            tracing::info!(
                first_host_id = ns.host,
                ids = ns.size,
                dir = %at.display(),
                "instances run in a user namespace: their root is an unprivileged user of this machine"
            );
            Ok((Some(ns), at))
        }
        Err(why) if required => Err(NodeError::Preflight(format!(
            "BERTH_NODE_USERNS={}: {why}",
            ns.host
        ))),
        Err(why) => {
            tracing::warn!(reason = %why, "instances run as this machine's root (no user namespace); BERTH_NODE_USERNS=off runs them so without this warning");
            Ok((None, dir.to_owned()))
        }
    }
}

/// How a node with its state in `dir` will run its instances, as `mode`
/// asks and this machine allows, in words (`berth up`'s summary; the node
/// decides again as it starts).
pub fn summary(mode: Userns, dir: &Path) -> String {
    let ns = match mode {
        Userns::Off => return "as this machine's root (BERTH_NODE_USERNS=off)".to_owned(),
        Userns::On(ns) | Userns::Auto(ns) => ns,
    };
    let said = format!(
        "in a user namespace (root inside is uid {} outside)",
        ns.host
    );
    match makes_user_namespaces() {
        Ok(()) if passable(ns, dir).is_ok() => said,
        Ok(()) => format!("{said}, its state reached through {ALIASES}"),
        Err(why) if matches!(mode, Userns::On(_)) => format!("the node will not start: {why}"),
        Err(why) => format!("as this machine's root: {why}"),
    }
}

/// Whether this machine makes user namespaces (`unshare --user true`).
fn makes_user_namespaces() -> Result<(), String> {
    let made = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .stderr(std::process::Stdio::piped())
        .output();
    match made {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "this machine does not make user namespaces (unshare --user: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("unshare --user could not run: {e}")),
    }
}

/// The path to `dir` the instances' root can take: the alias if an
/// earlier start made it, else `dir` if every directory above lets that
/// user through, else the alias, made now.
fn reach(ns: UserNamespace, dir: &Path, alias: &Path) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if shows(alias, &dir) {
        passable(ns, alias)?;
        // As made, should a crash have come between the bind and this.
        settle(&dir, alias)?;
        return Ok(alias.to_owned());
    }
    let blocked = match passable(ns, &dir) {
        Ok(()) => return Ok(dir),
        Err(why) => why,
    };
    let made = open_aliases()
        .map(|()| sweep(Path::new(ALIASES)))
        .and_then(|()| passable(ns, alias))
        .and_then(|()| make_alias(&dir, alias));
    match made {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), alias = %alias.display(), reason = %blocked, "the node's state dir is reached through its alias");
            Ok(alias.to_owned())
        }
        Err(e) => Err(format!(
            "{blocked}; reaching it through {} failed too: {e}",
            alias.display()
        )),
    }
}

/// Whether `alias` shows `dir` (is its bind mount).
fn shows(alias: &Path, dir: &Path) -> bool {
    match (std::fs::metadata(alias), std::fs::metadata(dir)) {
        (Ok(a), Ok(d)) => (a.dev(), a.ino()) == (d.dev(), d.ino()),
        _ => false,
    }
}

/// Makes [`ALIASES`], searchable by everyone (it lists node ids only).
fn open_aliases() -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(ALIASES)
        .map_err(|e| format!("{ALIASES}: {e}"))
}

/// Unmounts and removes the aliases in `aliases` whose state dir has
/// since been deleted (a data dir removed while its alias stayed), so
/// they do not gather there until the machine restarts.
fn sweep(aliases: &Path) {
    for Mount { at, root, .. } in mounts() {
        if at.parent() == Some(aliases) && root.ends_with("//deleted") {
            tracing::info!(alias = %at.display(), "removing the alias of a deleted state dir");
            let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&at);
        }
    }
}

/// Binds `dir` (canonical) at `alias`, privately, and moves berth's own
/// mounts under `dir` (left by a node that ran without the alias: an
/// instance's overlay on the host) to the alias only, where the node
/// finds and removes them.
fn make_alias(dir: &Path, alias: &Path) -> Result<(), String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    match std::fs::create_dir(alias) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("{}: {e}", alias.display()))
        }
        _ => {}
    }
    // A stale alias (its dir deleted, or another dir's): replaced.
    if mounts().iter().any(|m| m.at == alias) {
        umount2(alias, MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting the stale {}: {e}", alias.display()))?;
    }
    let none: Option<&str> = None;
    mount(
        Some(dir),
        alias,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| {
        format!(
            "bind mount of {} at {}: {e}",
            dir.display(),
            alias.display()
        )
    })?;
    settle(dir, alias).inspect_err(|_| {
        let _ = umount2(alias, MntFlags::MNT_DETACH);
    })
}

/// Makes the alias private and moves berth's mounts under `dir` to it
/// (see [`make_alias`]); a no-op on an alias already so.
fn settle(dir: &Path, alias: &Path) -> Result<(), String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    // Private before the originals go: a shared alias would take their
    // unmounting along.
    let none: Option<&str> = None;
    mount(
        none,
        alias,
        none,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| format!("making {} private: {e}", alias.display()))?;
    for Mount { at, fstype, .. } in mounts().into_iter().rev() {
        if at.starts_with(dir) && at != dir && fstype == "overlay" {
            if let Err(e) = umount2(&at, MntFlags::MNT_DETACH) {
                tracing::warn!(mount = %at.display(), error = %e, "an instance's mount stays at the state dir's own path");
            }
        }
    }
    Ok(())
}

/// One line of this process's mount table.
struct Mount {
    /// Where it is mounted.
    at: PathBuf,
    /// What of its file system it shows (`…//deleted` once that is gone).
    root: String,
    fstype: String,
}

/// This process's mounts, oldest first.
fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                at: PathBuf::from(unescape(fields.get(4)?)),
                root: unescape(fields.get(3)?),
                fstype: (*fields.get(sep + 1)?).to_owned(),
            })
        })
        .collect()
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every directory above `dir` lets the instances' root (host id
/// `ns.host`) through to its rootfs, overlay dirs and the files bound
/// into it. `dir` itself need not exist yet.
fn passable(ns: UserNamespace, dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let full = parent.join(dir.file_name().unwrap_or_default());
    for above in parent.ancestors() {
        let m = std::fs::metadata(above).map_err(|e| format!("{}: {e}", above.display()))?;
        let mode = m.mode();
        let passes = mode & 0o001 != 0
            || (m.gid() == ns.host && mode & 0o010 != 0)
            || (m.uid() == ns.host && mode & 0o100 != 0);
        if !passes {
            return Err(format!(
                "instances' root (host id {}) cannot pass through {} (mode {:o}) above the node's state dir {}",
                ns.host,
                above.display(),
                mode & 0o7777,
                full.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const NS: UserNamespace = UserNamespace {
        host: 1_000_000_000,
        size: 65_536,
    };

    #[test]
    fn a_directory_the_instances_root_cannot_pass_is_found_and_named() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("data").join("node");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let why = passable(NS, &dir).unwrap_err();
        assert!(why.contains(&top.path().display().to_string()), "{why}");
        // What `berth up` says, before the state dir exists.
        let fresh = top.path().join("data").join("fresh");
        assert_eq!(
            summary(Userns::Auto(NS), &fresh),
            "in a user namespace (root inside is uid 1000000000 outside), its state reached through /run/berth/nodes"
        );
        assert_eq!(
            summary(Userns::Off, &fresh),
            "as this machine's root (BERTH_NODE_USERNS=off)"
        );
        // Off decides nothing and mounts nothing.
        let id = NodeId::generate();
        let (ns, at) = decide(Userns::Off, &dir, &id).unwrap();
        assert_eq!((ns, at), (None, dir.clone()));
        assert!(!alias_of(&id).exists());

        // Passable by everyone, or by the instances' root's group only.
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        passable(NS, &dir).unwrap();
        assert_eq!(
            summary(Userns::Auto(NS), &fresh),
            "in a user namespace (root inside is uid 1000000000 outside)"
        );
        std::os::unix::fs::chown(top.path(), None, Some(NS.host)).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o710)).unwrap();
        passable(NS, &dir).unwrap();
        // The owner's bit alone lets the owner through, not others.
        std::os::unix::fs::chown(top.path(), Some(NS.host), Some(0)).unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        passable(NS, &dir).unwrap();
        std::os::unix::fs::chown(top.path(), Some(0), Some(0)).unwrap();
        assert!(passable(NS, &dir).is_err());
    }

    /// Unmounts everything under its dir when dropped.
    struct Mounts(PathBuf);

    impl Drop for Mounts {
        fn drop(&mut self) {
            for Mount { at, .. } in mounts().into_iter().rev() {
                if at.starts_with(&self.0) {
                    let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }

    #[test]
    fn an_alias_shows_the_state_dir_and_takes_the_instances_mounts_along() {
        use nix::mount::{mount, MsFlags};
        let top = tempfile::tempdir().unwrap();
        let top_path = std::fs::canonicalize(top.path()).unwrap();
        let _cleanup = Mounts(top_path.clone());
        let dir = top_path.join("node");
        let image = top_path.join("image");
        for d in [&image, &dir.join("store")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(image.join("file"), "from the image").unwrap();
        let none: Option<&str> = None;
        // An instance's overlay of the image on the host, as an agent
        // without a user namespace mounts it.
        let overlay = |instance: &Path| {
            for d in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(instance.join(d)).unwrap();
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                instance.join("upper").display(),
                instance.join("work").display()
            );
            mount(
                Some("overlay"),
                &instance.join("rootfs"),
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .unwrap();
        };
        // One such overlay, and a disk of the operator's.
        let instance = dir.join("agent/instances/ins-x");
        overlay(&instance);
        mount(
            Some("tmpfs"),
            &dir.join("store"),
            Some("tmpfs"),
            MsFlags::empty(),
            none,
        )
        .unwrap();
        std::fs::write(dir.join("store/on-disk"), "kept").unwrap();

        let alias = top_path.join("alias");
        make_alias(&dir, &alias).unwrap();
        assert!(shows(&alias, &dir));
        let at = |p: &Path| mounts().iter().filter(|m| m.at == p).count();
        assert_eq!(at(&alias), 1);
        // The overlay moved to the alias; the operator's disk is at both.
        assert_eq!(at(&instance.join("rootfs")), 0);
        let moved = alias.join("agent/instances/ins-x/rootfs");
        assert_eq!(at(&moved), 1);
        assert_eq!(
            std::fs::read_to_string(moved.join("file")).unwrap(),
            "from the image"
        );
        assert_eq!(at(&dir.join("store")), 1);
        assert_eq!(
            std::fs::read_to_string(alias.join("store/on-disk")).unwrap(),
            "kept"
        );
        // Private: a mount under the alias is not seen at the dir.
        let pin = alias.join("agent/pin");
        std::fs::create_dir_all(&pin).unwrap();
        mount(Some("tmpfs"), &pin, Some("tmpfs"), MsFlags::empty(), none).unwrap();
        assert_eq!(at(&dir.join("agent/pin")), 0);

        // Made again over a stale alias: replaced, still one mount.
        make_alias(&dir, &alias).unwrap();
        assert_eq!(at(&alias), 1);
        assert!(shows(&alias, &dir));

        // A node that died between the bind and the rest: the next start
        // finishes the alias it finds.
        let again = dir.join("agent/instances/ins-y");
        overlay(&again);
        let crashed = top_path.join("crashed");
        std::fs::create_dir(&crashed).unwrap();
        mount(
            Some(&dir),
            &crashed,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .unwrap();
        assert_eq!(reach(NS, &dir, &crashed).unwrap(), crashed);
        assert_eq!(at(&again.join("rootfs")), 0);
        assert_eq!(at(&crashed.join("agent/instances/ins-y/rootfs")), 1);

        // The alias of a state dir since deleted is swept; others stay.
        let aliases = top_path.join("aliases");
        let (gone, kept) = (top_path.join("gone"), top_path.join("kept"));
        for d in [&aliases, &gone, &kept] {
            std::fs::create_dir_all(d).unwrap();
        }
        make_alias(&gone, &aliases.join("a")).unwrap();
        make_alias(&kept, &aliases.join("b")).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        sweep(&aliases);
        assert_eq!(at(&aliases.join("a")), 0);
        assert!(!aliases.join("a").exists());
        assert_eq!(at(&aliases.join("b")), 1);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b/c\134d"), r"/tmp/a b/c\d");
        assert_eq!(unescape(r"/x\04"), r"/x\04");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(mounts().iter().any(|m| m.at == Path::new("/")));
    }
}

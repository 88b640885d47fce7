//! The directories an image declares as volumes (`VOLUME /data`), made
//! when the image lacks them, as Docker makes a volume's mount point.
//!
//! berth gives an instance no volumes: what it writes under a declared
//! volume is its filesystem's like the rest, gone at its next start (as
//! on Render without a disk). But an image may declare a volume it never
//! creates (`VOLUME /data` with no `mkdir`), and its program, which under
//! Docker finds an empty directory there, would fail here on a path that
//! does not exist. Before each start the missing part of each declared
//! path is made: owned by the instance's root, mode 0755, as Docker makes
//! it. Where the instance's root is mounted inside its container, the
//! directories go into the overlay's upper layer, and the image's own
//! directories on the way are mirrored there with their owner and mode
//! (an upper directory's attributes are the merged one's).
//!
//! The image is hostile: at most [`MAX_VOLUMES`] paths of at most
//! [`MAX_PATH`] bytes, only plain names (no `.`, `..` or empty parts),
//! nothing under `/proc`, `/sys` or `/dev`, and a path whose existing part
//! meets anything but a directory (a file, a symlink) is left alone.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bundle::{ImageRoot, InstanceDir, RootfsKind, UserNamespace};

/// Declared volumes looked at.
pub const MAX_VOLUMES: usize = 32;

/// The longest declared path looked at, in bytes.
pub const MAX_PATH: usize = 1024;

/// Top directories the container gets from elsewhere than the image.
const MOUNTED: &[&str] = &["proc", "sys", "dev"];

/// Makes the missing part of each volume `image` declares, for an
/// instance whose root is prepared in `dir` as `kind`; `ns`: the user
/// namespace it runs in. The paths made, as declared; a path that cannot
/// be made is logged and left (the start goes on).
pub fn make_missing(
    dir: &InstanceDir,
    image: &ImageRoot,
    kind: RootfsKind,
    ns: Option<UserNamespace>,
) -> Vec<String> {
    let Some(volumes) = &image.config.volumes else {
        return Vec::new();
    };
    let owner = ns.map_or(0, |n| n.host);
    let upper = dir.root.join("upper");
    let into = match kind {
        RootfsKind::Inside => Target::Upper(&upper),
        RootfsKind::Overlay | RootfsKind::Copy => Target::Merged(dir.rootfs()),
    };
    let mut made = Vec::new();
    for path in volumes.keys().take(MAX_VOLUMES) {
        let Some(parts) = parts(path) else {
            continue;
        };
        match make(&image.rootfs, &into, &parts, owner) {
            Ok(true) => made.push(path.clone()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(volume = %path, error = %e, "the image's volume directory could not be made");
            }
        }
    }
    made
}

/// Volumes named in a [`notice`], at most.
const NOTICE_PATHS: usize = 3;

/// What a service instance's logs say at its first start when its image
/// declares volumes: that none is kept, so data written there (a
/// database's) is lost when its program ends. `None` without any, or
/// when the service's disk (mounted at `disk`) holds them all.
pub fn notice(config: &crate::image::ImageConfig, disk: Option<&str>) -> Option<String> {
    let on_disk = |p: &str| {
        disk.and_then(parts)
            .is_some_and(|d| parts(p).is_some_and(|v| v.len() >= d.len() && v[..d.len()] == d[..]))
    };
    let paths: Vec<&str> = config
        .volumes
        .as_ref()?
        .keys()
        .take(MAX_VOLUMES)
        .filter(|p| parts(p).is_some() && !on_disk(p))
        .map(String::as_str)
        .collect();
    if paths.is_empty() {
        return None;
    }
    let more = if paths.len() > NOTICE_PATHS {
        ", …"
    } else {
        ""
    };
    let (noun, pronoun) = if paths.len() == 1 {
        ("a volume", "it")
    } else {
        ("volumes", "them")
    };
    let cut: Vec<&str> = paths
        .iter()
        .take(NOTICE_PATHS)
        .map(|p| berth_schemas::cut(p, 120))
        .collect();
    Some(format!(
        "the image declares {noun} ({}{more}); no disk is kept behind {pronoun}: what is written there is lost when the program ends (a crash, a restart, a deploy)",
        cut.join(", ")
    ))
}

/// Where the directories go.
enum Target<'a> {
    /// The overlay's upper layer, not mounted yet.
    Upper(&'a Path),
    /// The instance's root as it will be seen (mounted, or a copy).
    Merged(PathBuf),
}

/// The parts of a declared path, when it is one to make.
fn parts(path: &str) -> Option<Vec<&str>> {
    if path.len() > MAX_PATH || !path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let plain = parts
        .iter()
        .all(|p| *p != "." && *p != ".." && !p.contains('\0'));
    let first = parts.first()?;
    (plain && !MOUNTED.contains(first)).then_some(parts)
}

fn join(base: &Path, parts: &[&str]) -> PathBuf {
    parts.iter().fold(base.to_path_buf(), |p, c| p.join(c))
}

/// Makes the part of `parts` missing from the image tree at `image`;
/// `true` when something was made.
fn make(image: &Path, into: &Target<'_>, parts: &[&str], owner: u32) -> std::io::Result<bool> {
    let mut missing = None;
    for i in 0..parts.len() {
        match std::fs::symlink_metadata(join(image, &parts[..=i])) {
            Ok(m) if m.is_dir() => {}
            // A file or a link on the way: not a directory to make.
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = Some(i);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(first) = missing else {
        return Ok(false);
    };
    let base = match into {
        Target::Upper(upper) => {
            // The image's directories on the way, mirrored with their
            // owner and mode: the merged directory takes the upper one's.
            for j in 0..first {
                let lower = std::fs::symlink_metadata(join(image, &parts[..=j]))?;
                let up = join(upper, &parts[..=j]);
                if mkdir(&up)? {
                    std::os::unix::fs::chown(&up, Some(lower.uid()), Some(lower.gid()))?;
                    std::fs::set_permissions(
                        &up,
                        std::fs::Permissions::from_mode(lower.mode() & 0o7777),
                    )?;
                }
            }
            upper.to_path_buf()
        }
        Target::Merged(root) => root.clone(),
    };
    for j in first..parts.len() {
        let d = join(&base, &parts[..=j]);
        if mkdir(&d)? {
            std::os::unix::fs::chown(&d, Some(owner), Some(owner))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(true)
}

/// Makes the directory `d`; `false` when a directory is there already.
fn mkdir(d: &Path) -> std::io::Result<bool> {
    match std::fs::create_dir(d) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(d)?.is_dir() {
                Ok(false)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::image::ImageConfig;

    fn image(tree: &Path, volumes: &[&str]) -> ImageRoot {
        ImageRoot {
            digest: "sha256:00".into(),
            rootfs: tree.to_path_buf(),
            config: ImageConfig {
                volumes: Some(
                    volumes
                        .iter()
                        .map(|v| ((*v).to_owned(), serde_json::json!({})))
                        .collect(),
                ),
                ..ImageConfig::default()
            },
        }
    }

    #[test]
    fn declared_paths_are_made_only_when_plain_and_missing() {
        assert_eq!(parts("/data"), Some(vec!["data"]));
        assert_eq!(parts("/var//lib/app/"), Some(vec!["var", "lib", "app"]));
        for bad in ["data", "/", "/a/../b", "/./a", "/proc/x", "/dev", "/sys/fs"] {
            assert_eq!(parts(bad), None, "{bad}");
        }
        assert_eq!(parts(&format!("/{}", "a".repeat(MAX_PATH))), None);
    }

    #[test]
    fn missing_volume_directories_are_made_in_the_upper_layer_mirroring_the_image() {
        let tree = tempfile::tempdir().unwrap();
        let inst = tempfile::tempdir().unwrap();
        let t = tree.path();
        std::fs::create_dir_all(t.join("var/lib")).unwrap();
        std::fs::set_permissions(t.join("var/lib"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::chown(t.join("var/lib"), Some(33), Some(34)).unwrap();
        std::fs::create_dir_all(t.join("there")).unwrap();
        std::fs::write(t.join("file"), b"").unwrap();
        std::os::unix::fs::symlink("/elsewhere", t.join("link")).unwrap();
        let dir = InstanceDir {
            root: inst.path().to_path_buf(),
        };
        std::fs::create_dir_all(dir.root.join("upper")).unwrap();
        let img = image(
            t,
            &[
                "/data",
                "/var/lib/app/cache",
                "/there",
                "/file/x",
                "/link/x",
                "/proc/x",
            ],
        );
        let ns = UserNamespace {
            host: 1_000_000_000,
            size: 65536,
        };
        let made = make_missing(&dir, &img, RootfsKind::Inside, Some(ns));
        assert_eq!(made, ["/data", "/var/lib/app/cache"]);
        let upper = dir.root.join("upper");
        let meta = |p: &str| std::fs::symlink_metadata(upper.join(p)).unwrap();
        for made in ["data", "var/lib/app", "var/lib/app/cache"] {
            let m = meta(made);
            assert!(m.is_dir());
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (ns.host, ns.host, 0o755)
            );
        }
        // The image's own directories on the way keep their owner and mode.
        let lib = meta("var/lib");
        assert_eq!((lib.uid(), lib.gid(), lib.mode() & 0o7777), (33, 34, 0o750));
        for left in ["there", "file", "link", "proc"] {
            assert!(
                std::fs::symlink_metadata(upper.join(left)).is_err(),
                "{left}"
            );
        }
        // Again (a restart): nothing new, no error.
        assert_eq!(
            make_missing(&dir, &img, RootfsKind::Inside, Some(ns)),
            ["/data", "/var/lib/app/cache"]
        );
    }

    #[test]
    fn a_mounted_or_copied_root_gets_them_directly() {
        let tree = tempfile::tempdir().unwrap();
        let inst = tempfile::tempdir().unwrap();
        let dir = InstanceDir {
            root: inst.path().to_path_buf(),
        };
        std::fs::create_dir_all(dir.rootfs()).unwrap();
        let img = image(tree.path(), &["/srv/data"]);
        assert_eq!(
            make_missing(&dir, &img, RootfsKind::Copy, None),
            ["/srv/data"]
        );
        let m = std::fs::symlink_metadata(dir.rootfs().join("srv/data")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755));
        assert!(std::fs::symlink_metadata(dir.root.join("upper")).is_err());
    }
    #[test]
    fn the_notice_names_the_volumes_that_are_not_kept() {
        let config = |paths: &[&str]| crate::image::ImageConfig {
            volumes: Some(
                paths
                    .iter()
                    .map(|p| ((*p).to_owned(), serde_json::json!({})))
                    .collect(),
            ),
            ..Default::default()
        };
        assert_eq!(notice(&crate::image::ImageConfig::default(), None), None);
        assert_eq!(notice(&config(&["/proc/x", "relative"]), None), None);
        assert_eq!(
            notice(&config(&["/var/lib/postgresql/data"]), None).as_deref(),
            Some("the image declares a volume (/var/lib/postgresql/data); no disk is kept behind it: what is written there is lost when the program ends (a crash, a restart, a deploy)")
        );
        let many = notice(&config(&["/a", "/b", "/c", "/d"]), None).unwrap();
        assert!(
            many.starts_with(
                "the image declares volumes (/a, /b, /c, …); no disk is kept behind them"
            ),
            "{many}"
        );
        // A disk at or above a volume keeps it; one beside it does not.
        let pg = config(&["/var/lib/postgresql/data"]);
        for disk in ["/var/lib/postgresql/data", "/var/lib/postgresql/", "/var"] {
            assert_eq!(notice(&pg, Some(disk)), None, "{disk}");
        }
        for disk in [
            "/var/lib/postgresql/data/inner",
            "/var/lib/postgres",
            "/data",
        ] {
            assert!(notice(&pg, Some(disk)).is_some(), "{disk}");
        }
        let two = notice(&config(&["/data", "/logs"]), Some("/data")).unwrap();
        assert!(
            two.starts_with("the image declares a volume (/logs)"),
            "{two}"
        );
    }
}

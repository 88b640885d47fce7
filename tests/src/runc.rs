//! Real runc in tests: fail (never skip) when the machine cannot run
//! containers, list a runc root's containers, and remove whatever a failed
//! test left on the machine (containers, rootfs mounts).

use std::path::Path;

/// Fails (never skips) when the machine cannot run the suite, saying why.
pub fn require_root_and_runc() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(uid, "0", "this test runs real runc containers and must run as root (uid 0); run it as root as CI does");
    let ok = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "runc is not installed or not on PATH: run scripts/install-deps"
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox missing: apt-get install busybox-static (scripts/install-deps)"
    );
}

/// Container ids `runc --root <root> list` shows; a failing `runc list`
/// fails the test (it must not read as "no containers").
pub fn runc_list(root: &Path) -> Vec<String> {
    try_runc_list(root).unwrap_or_else(|e| panic!("runc list: {e}"))
}

/// Container ids under `root`, or why `runc list` failed (a container
/// removed while it lists, say).
pub fn try_runc_list(root: &Path) -> Result<Vec<String>, String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Mount points under `dir` (instance rootfs overlays).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Deletes every container under `runc_root` and unmounts everything
/// mounted under `dir`, so a failed test leaks nothing onto the machine.
/// Meant for `Drop`: it never panics.
pub fn remove_leftovers(runc_root: &Path, dir: &Path) {
    if runc_root.exists() {
        for id in try_runc_list(runc_root).unwrap_or_default() {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(runc_root)
                .args(["delete", "--force", &id])
                .status();
        }
    }
    // Newest first: a mount made on top of another (an instance's rootfs
    // on a tmpfs under `dir`) goes before the one below it.
    for m in mounts_under(dir).into_iter().rev() {
        let _ = std::process::Command::new("umount")
            .args(["-l", &m])
            .status();
    }
}

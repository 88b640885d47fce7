//! The preflight verdict over every combination of facts, and the probe's
//! readers on sample /proc and cgroup layouts.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

fn req() -> Requirements {
    Requirements {
        runc: "runc".into(),
        cni_path: "/usr/lib/cni".into(),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A machine with everything.
fn able() -> Probe {
    Probe {
        root: true,
        cap_eff: Some(0x1ff_ffff_ffff),
        runc: Ok("runc version 1.1.5".into()),
        cni_plugins: set(&CNI_PLUGINS),
        tools: set(&TOOLS),
        init: true,
        overlay: true,
        cgroup_controllers: set(&["cpu", "cpuacct", "memory", "pids", "devices"]),
    }
}

#[test]
fn a_machine_with_everything_passes() {
    let v = check(&req(), &able());
    assert_eq!(v, Verdict::default());
    assert_eq!(v.refusal(), None);
    assert!(v.into_result().unwrap().is_empty());
}

#[test]
fn a_normal_user_is_refused_for_privilege_alone() {
    let p = Probe {
        root: false,
        cap_eff: Some(0),
        ..able()
    };
    let v = check(&req(), &p);
    assert!(v.needs_root());
    assert_eq!(
        v.refusal().unwrap(),
        "berth needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) to run containers"
    );
    let e = v.into_result().unwrap_err();
    assert!(matches!(e, crate::NodeError::Preflight(_)), "{e:?}");
}

#[test]
fn both_capabilities_stand_in_for_root_and_one_does_not() {
    let admin = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_NET_ADMIN);
    for (caps, ok) in [
        (Some(admin), true),
        (Some(1u64 << CAP_SYS_ADMIN), false),
        (Some(1u64 << CAP_NET_ADMIN), false),
        (None, false),
    ] {
        let p = Probe {
            root: false,
            cap_eff: caps,
            ..able()
        };
        assert_eq!(check(&req(), &p).missing.is_empty(), ok, "{caps:?}");
    }
}

#[test]
fn each_missing_piece_is_named() {
    let cases: Vec<(Probe, &str)> = vec![
        (
            Probe {
                runc: Err("not found on PATH".into()),
                ..able()
            },
            "a working runc (`runc --version`: not found on PATH; BERTH_NODE_RUNC)",
        ),
        (
            Probe {
                cni_plugins: set(&["bridge", "host-local"]),
                ..able()
            },
            "the CNI plugins portmap and firewall in /usr/lib/cni (BERTH_NODE_CNI_PATH)",
        ),
        (
            Probe {
                cni_plugins: set(&["bridge", "host-local", "portmap"]),
                ..able()
            },
            "the CNI plugin firewall in /usr/lib/cni",
        ),
        (
            Probe {
                tools: set(&["iptables"]),
                ..able()
            },
            "ip (iproute2) on PATH",
        ),
        (
            Probe {
                tools: BTreeSet::new(),
                ..able()
            },
            "iptables and ip (iproute2) on PATH",
        ),
        (
            Probe {
                init: false,
                ..able()
            },
            "the instance init /usr/bin/tini-static",
        ),
        (
            Probe {
                cgroup_controllers: set(&["cpu", "cpuacct"]),
                ..able()
            },
            "the memory and pids cgroup controllers under /sys/fs/cgroup",
        ),
    ];
    for (probe, needle) in cases {
        let v = check(&req(), &probe);
        assert_eq!(v.missing.len(), 1, "{v:?}");
        assert!(!v.needs_root());
        let sentence = v.refusal().unwrap();
        assert!(sentence.contains(needle), "{sentence:?} lacks {needle:?}");
    }
}

#[test]
fn everything_missing_is_one_sentence() {
    let p = Probe {
        root: false,
        cap_eff: None,
        runc: Err("no such file".into()),
        cni_plugins: BTreeSet::new(),
        tools: BTreeSet::new(),
        init: false,
        overlay: false,
        cgroup_controllers: BTreeSet::new(),
    };
    let v = check(&req(), &p);
    assert_eq!(v.missing.len(), 6, "{v:?}");
    let s = v.refusal().unwrap();
    assert!(
        s.starts_with("berth needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), a working runc"),
        "{s}"
    );
    assert!(
        s.ends_with("cgroup controllers under /sys/fs/cgroup to run containers"),
        "{s}"
    );
    assert!(!s.contains(".\n") && !s.contains('\n'), "{s}");
    for name in CNI_PLUGINS {
        assert!(s.contains(name), "{s}");
    }
    // The missing overlayfs only warns.
    assert_eq!(v.warnings.len(), 1);
}

#[test]
fn missing_overlayfs_is_a_warning_not_a_refusal() {
    let v = check(
        &req(),
        &Probe {
            overlay: false,
            ..able()
        },
    );
    assert!(v.missing.is_empty());
    assert!(v.warnings[0].contains("overlay"), "{v:?}");
    assert_eq!(v.into_result().unwrap().len(), 1);
}

#[test]
fn proc_files_are_read() {
    let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nCapEff:\t000001fffeffffff\n";
    assert_eq!(effective_uid(status), Some(0));
    assert_eq!(cap_eff(status), Some(0x1fffeffffff));
    assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
    assert!(lists_overlay("nodev\tsysfs\n\text4\nnodev\toverlay\n"));
    assert!(!lists_overlay("nodev\tsysfs\n\text4\n"));
}

#[test]
fn cgroup_v1_hybrid_and_v2_layouts_are_read() {
    // v1 hybrid: one dir per hierarchy, an empty v2 at unified/.
    let v1 = tempfile::tempdir().unwrap();
    for h in ["cpu,cpuacct", "memory", "pids", "unified"] {
        let d = v1.path().join(h);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
    }
    std::fs::write(v1.path().join("unified/cgroup.controllers"), "").unwrap();
    let found = cgroup_controllers(v1.path());
    assert_eq!(found, set(&["cpu", "cpuacct", "memory", "pids"]));
    // v2: the root's list; child cgroups are not controllers.
    let v2 = tempfile::tempdir().unwrap();
    std::fs::write(
        v2.path().join("cgroup.controllers"),
        "cpuset cpu io memory\n",
    )
    .unwrap();
    std::fs::create_dir(v2.path().join("system.slice")).unwrap();
    std::fs::write(v2.path().join("system.slice/cgroup.procs"), "").unwrap();
    let found = cgroup_controllers(v2.path());
    assert_eq!(found, set(&["cpuset", "cpu", "io", "memory"]));
    let v = check(
        &req(),
        &Probe {
            cgroup_controllers: found,
            ..able()
        },
    );
    assert_eq!(v.missing, vec![Missing::Cgroups(vec!["pids"])]);
}

#[test]
fn runc_is_run_for_its_version() {
    // Stand-ins that need no file written (a fresh executable can be
    // busy while another test thread forks).
    // GNU true answers --version; any first line will do.
    assert!(runc_version(Path::new("/bin/true")).is_ok());
    assert!(runc_version(Path::new("/bin/false"))
        .unwrap_err()
        .contains("exit"));
    assert_eq!(
        runc_version(Path::new("no-such-runc-here")).unwrap_err(),
        "not found on PATH"
    );
    assert_eq!(
        runc_version(Path::new("/no/such/runc")).unwrap_err(),
        "no such file"
    );
}

#[test]
fn the_real_probe_reads_this_machine() {
    let p = probe(&req());
    // Whatever this machine has, the probe agrees with the process.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(p.root, effective_uid(&status) == Some(0));
    assert!(p.cap_eff.is_some());
}

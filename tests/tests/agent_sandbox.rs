//! Every container's sandbox on real runc (as root), seen from inside and
//! from the host: Docker's capabilities, the seccomp filter refusing what
//! Docker refuses, no new privileges, masked kernel files; `tini` as PID 1,
//! so a shell app stops on SIGTERM and orphans are reaped; the pids limit
//! stopping a fork loop; memory without swap; and the agent's state and
//! the content store readable by root only; a non-root app listening on
//! port 80 and the image's stop signal, as under Docker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_agent::{AgentEvent, ExitStatus, InstanceSpec, OneOffOutcome, Stream};
use berth_tests::agent::{busybox_image, collect_logs, default_config, processes_of, spec, Node};
use serde_json::{json, Value};

/// Docker's 14 default capabilities as `/proc/<pid>/status` prints them.
const DOCKER_CAPS: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";

/// Run `s` once; how it ended and its output lines (both streams). The
/// output is all published once `run_once` returns (the log pumps are
/// flushed before the container is removed); the wait lets it arrive.
async fn run(node: &Node, s: InstanceSpec) -> (OneOffOutcome, Vec<String>) {
    let mut sub = node.logs(&s).await;
    let out = node
        .agent
        .run_once(s, Duration::from_secs(10))
        .await
        .unwrap();
    let lines = collect_logs(&mut sub, Duration::from_millis(500), |_| false).await;
    // The program's own output (berth's `==> …` lines left out).
    let output = lines
        .into_iter()
        .filter(|l| l.stream != Stream::System)
        .map(|l| l.line)
        .collect();
    (out, output)
}

/// The value of `field` in `/proc/<pid>/status` output.
fn status_field<'a>(lines: &'a [String], field: &str) -> &'a str {
    let prefix = format!("{field}:\t");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} in {lines:?}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The test image's config (a shell) with `extra`'s fields (`User`,
/// `StopSignal`) set.
fn config_with(extra: Value) -> Value {
    let mut config = default_config();
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
    config
}

/// Starts `s` (whose command prints `ready` when it is) and waits for it;
/// the instance's log subscription.
async fn start_until_ready(node: &Node, s: &InstanceSpec) -> async_nats::Subscriber {
    let mut sub = node.logs(s).await;
    node.agent.run_instance(s.clone()).await.unwrap();
    let seen = collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    assert_eq!(seen.last().map(|l| l.line.as_str()), Some("ready"));
    sub
}

#[tokio::test]
async fn docker_capabilities_seccomp_no_new_privileges_and_init() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;

    // As root: Docker's capabilities, in a seccomp filter (mode 2), no new
    // privileges; PID 1 is the init running the command.
    let s = spec(
        &image,
        r#"sh -c 'cat /proc/self/status; busybox tr "\0" " " < /proc/1/cmdline; echo'"#,
    );
    let (out, lines) = run(&node, s).await;
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)), "{lines:?}");
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(&lines, field), DOCKER_CAPS, "{field}");
    }
    assert_eq!(status_field(&lines, "CapInh"), NO_CAPS);
    assert_eq!(status_field(&lines, "CapAmb"), NO_CAPS);
    assert_eq!(status_field(&lines, "Seccomp"), "2");
    assert_eq!(status_field(&lines, "NoNewPrivs"), "1");
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/init -- sh -c ")),
        "PID 1 is the init: {lines:?}"
    );
    // Mounted on the container's own /dev: the image is untouched.
    assert!(!image.rootfs.join("dev").exists());

    // What the filter refuses fails with EPERM: a user namespace (which
    // the kernel itself would let any process create) and a mount.
    // `linux32` shows a call allowed for some arguments only.
    let s = spec(
        &image,
        r#"sh -c 'busybox unshare -U true || echo unshare-refused; busybox mount -t tmpfs none /tmp || echo mount-refused; busybox linux32 true && echo linux32-ok; echo "keys=$(busybox wc -c < /proc/keys)"'"#,
    );
    let (out, lines) = run(&node, s).await;
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)), "{lines:?}");
    for want in ["unshare-refused", "mount-refused", "linux32-ok", "keys=0"] {
        assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("unshare:") && l.ends_with("Operation not permitted")),
        "{lines:?}"
    );

    // Another user keeps the capabilities in its bounding set only, and
    // has the groups the image's /etc/group lists it in, as under Docker.
    let app = node
        .image(&busybox_image(config_with(json!({ "User": "app" }))))
        .await;
    let (out, lines) = run(&node, spec(&app, "cat /proc/self/status")).await;
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)), "{lines:?}");
    assert_eq!(status_field(&lines, "Uid").split('\t').next(), Some("1000"));
    assert_eq!(status_field(&lines, "Gid").split('\t').next(), Some("1000"));
    assert_eq!(status_field(&lines, "Groups").trim(), "33");
    assert_eq!(status_field(&lines, "CapEff"), NO_CAPS);
    assert_eq!(status_field(&lines, "CapPrm"), NO_CAPS);
    assert_eq!(status_field(&lines, "CapBnd"), DOCKER_CAPS);
    assert_eq!(status_field(&lines, "Seccomp"), "2");
}

/// An image that runs as a non-root user and listens on port 80 (or pings)
/// works as under `docker run`, which lets any user of a container's own
/// network namespace bind ports below 1024 and open ICMP datagram sockets:
/// in a namespace on the node's bridge (made by the node) and in a
/// loopback-only one (made by runc).
#[tokio::test]
async fn a_non_root_app_listens_on_port_80_as_under_docker() {
    let node = Node::start().await;
    let app = node
        .image(&busybox_image(config_with(json!({ "User": "app" }))))
        .await;
    // httpd forks into the background once it has bound its port, and
    // fails with "bind: Permission denied" if it cannot.
    let command = r#"sh -c 'id -u; busybox httpd -p 80 -h / && echo listening-on-80; cat /proc/sys/net/ipv4/ping_group_range'"#;
    let attached = {
        let mut s = spec(&app, command);
        s.network = Some(berth_agent::NetworkSpec {
            group: "sysctl".into(),
            name: None,
            publish: None,
        });
        s
    };
    for (how, s) in [
        ("on the bridge", attached),
        ("loopback only", spec(&app, command)),
    ] {
        let (out, lines) = run(&node, s).await;
        assert_eq!(
            out,
            OneOffOutcome::Exited(ExitStatus::Code(0)),
            "{how}: {lines:?}"
        );
        assert_eq!(
            lines.first().map(String::as_str),
            Some("1000"),
            "{how}: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "listening-on-80"),
            "{how}: {lines:?}"
        );
        let range: Vec<&str> = lines
            .last()
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        // Every group; in a user namespace, every group it has.
        let last = berth_tests::node::test_user_namespace()
            .map_or(2_147_483_647, |u| u.size - 1)
            .to_string();
        assert_eq!(range, ["0", last.as_str()], "{how}: {lines:?}");
    }
}

#[tokio::test]
async fn a_shell_app_stops_on_sigterm_and_orphans_are_reaped() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;

    // A shell loop handles no signal; as PID 1 it ignored SIGTERM and was
    // only SIGKILLed after the delay. Behind the init it ends at once.
    let mut s = spec(&image, "sh -c 'echo ready; while true; do sleep 1; done'");
    s.shutdown_delay = Duration::from_secs(20);
    start_until_ready(&node, &s).await;
    let t0 = Instant::now();
    let stop = node.agent.stop_instance(&s.instance).await.unwrap();
    let took = t0.elapsed();
    assert!(!stop.escalated_to_kill, "{stop:?}");
    assert_eq!(stop.status, Some(ExitStatus::Code(128 + 15)));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    println!(
        "shell app, SIGTERM with a 20 s shutdown delay: stopped in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(processes_of(&[&s.instance]).is_empty());

    // The subshell's `sleep` is orphaned and ends while the app (exec'd
    // into `sleep 30`, which reaps nothing) runs on: the init reaps it.
    let s = spec(&image, "sh -c '(sleep 0.1 &); echo forked; exec sleep 30'");
    let mut sub = node.logs(&s).await;
    node.agent.run_instance(s.clone()).await.unwrap();
    collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "forked").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let states: Vec<(u32, String)> = processes_of(&[&s.instance])
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().unwrap_or("").chars().take(1);
            (pid, state.collect())
        })
        .collect();
    assert_eq!(states.len(), 2, "the init and `sleep 30`: {states:?}");
    assert!(states.iter().all(|(_, st)| st != "Z"), "{states:?}");
    node.agent.stop_instance(&s.instance).await.unwrap();
}

/// An image's `StopSignal` is what asks its program to stop (nginx's and
/// php-fpm's images stop gracefully on SIGQUIT, and drop requests in
/// flight on SIGTERM): here an app that ignores SIGTERM and ends cleanly on
/// SIGQUIT stops at once, with its own exit code, not by SIGKILL.
#[tokio::test]
async fn the_images_stop_signal_asks_the_app_to_stop() {
    let node = Node::start().await;
    let image = node
        .image(&busybox_image(config_with(
            json!({ "StopSignal": "SIGQUIT" }),
        )))
        .await;
    let mut s = spec(
        &image,
        "sh -c 'trap \"\" TERM; trap \"echo graceful; exit 3\" QUIT; echo ready; while true; do sleep 0.1; done'",
    );
    s.shutdown_delay = Duration::from_secs(20);
    let mut sub = start_until_ready(&node, &s).await;
    let t0 = Instant::now();
    let stop = node.agent.stop_instance(&s.instance).await.unwrap();
    assert!(!stop.escalated_to_kill, "{stop:?}");
    assert_eq!(stop.status, Some(ExitStatus::Code(3)), "{stop:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{stop:?}");
    let said = collect_logs(&mut sub, Duration::from_secs(2), |l| l.line == "graceful").await;
    assert_eq!(said.last().map(|l| l.line.as_str()), Some("graceful"));
    assert!(processes_of(&[&s.instance]).is_empty());
}

/// A process that goes over its instance's memory limit is killed by the
/// kernel, and the exit says so (the timeline then reads "ran out of
/// memory", a run whose command was killed fails as out of memory); an
/// ordinary failure does not.
#[tokio::test]
async fn an_exit_over_the_memory_limit_is_told_as_out_of_memory() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    // dd fills a 256 MiB buffer under a 64 MiB limit without swap.
    let mut over = spec(
        &image,
        "sh -c 'busybox dd if=/dev/zero of=/dev/null bs=256M count=1; echo dd-ended-$?'",
    );
    over.limits.memory_mib = Some(64);
    let plain = spec(&image, "sh -c 'exit 1'");
    // The run's own command killed: the run failed for it.
    let mut killed = spec(
        &image,
        "busybox dd if=/dev/zero of=/dev/null bs=256M count=1",
    );
    killed.limits.memory_mib = Some(64);
    let outcomes = [
        (over, true, OneOffOutcome::Exited(ExitStatus::Code(0))),
        (plain, false, OneOffOutcome::Exited(ExitStatus::Code(1))),
        (
            killed,
            true,
            OneOffOutcome::OutOfMemory(ExitStatus::Code(137)),
        ),
    ];
    for (s, oom, outcome) in outcomes {
        let (out, lines) = run(&node, s.clone()).await;
        assert_eq!(out, outcome, "{lines:?}");
        let exited = node
            .event(
                Duration::from_secs(10),
                |e| matches!(e, AgentEvent::Exited { instance, .. } if *instance == s.instance),
            )
            .await;
        let AgentEvent::Exited {
            oom_killed,
            memory_limit_mib,
            ..
        } = exited
        else {
            unreachable!()
        };
        assert_eq!(oom_killed, oom, "{out:?} {lines:?}");
        // The limit it went over, for the message.
        assert_eq!(memory_limit_mib, oom.then_some(64));
        if oom && out == OneOffOutcome::Exited(ExitStatus::Code(0)) {
            // dd was killed (SIGKILL), the shell lived on and said so.
            assert!(lines.iter().any(|l| l == "dd-ended-137"), "{lines:?}");
        }
    }
}

/// `/dev/shm` is half the plan's memory (Docker's 64 MiB is where
/// Chromium, PostgreSQL's parallel queries and PyTorch's loaders fail),
/// and what is written there counts against the instance's memory: it
/// gives nothing beyond the plan.
#[tokio::test]
async fn shared_memory_is_half_the_plan_and_counts_against_it() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    // 200 MiB into /dev/shm: past Docker's size, within half of 512 MiB.
    let mut roomy = spec(
        &image,
        "sh -c 'busybox dd if=/dev/zero of=/dev/shm/f bs=1M count=200 2>/dev/null; echo dd-$?; busybox df -m /dev/shm'",
    );
    roomy.limits.memory_mib = Some(512);
    let (out, lines) = run(&node, roomy).await;
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)), "{lines:?}");
    assert!(lines.iter().any(|l| l == "dd-0"), "{lines:?}");
    let size = lines
        .iter()
        .find(|l| l.ends_with("/dev/shm"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no /dev/shm in {lines:?}"));
    assert_eq!(size, "256", "{lines:?}");
    // 100 MiB held in /dev/shm and a 200 MiB buffer go over 256 MiB: the
    // buffer's owner is killed as out of memory, as it would not be
    // without what /dev/shm holds.
    let mut charged = spec(
        &image,
        "sh -c 'busybox dd if=/dev/zero of=/dev/shm/f bs=1M count=100 2>/dev/null; busybox dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd-$?'",
    );
    charged.limits.memory_mib = Some(256);
    let (out, lines) = run(&node, charged).await;
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(0)), "{lines:?}");
    assert!(lines.iter().any(|l| l == "dd-137"), "{lines:?}");
}

#[tokio::test]
async fn pids_and_memory_limits_and_root_only_files() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;

    // A fork loop of 100 background sleeps under a limit of 32: the shell
    // cannot fork past it and gives up.
    let mut s = spec(
        &image,
        "sh -c 'for i in $(seq 1 100); do sleep 30 & echo $i; done; echo all-forked'",
    );
    s.limits.pids = Some(32);
    let t0 = Instant::now();
    let (out, lines) = run(&node, s.clone()).await;
    assert!(
        matches!(out, OneOffOutcome::Exited(ExitStatus::Code(c)) if c != 0),
        "{out:?} {lines:?}"
    );
    assert!(!lines.iter().any(|l| l == "all-forked"), "{lines:?}");
    let forked = lines.iter().filter_map(|l| l.parse::<u32>().ok()).max();
    assert!(
        forked.is_some_and(|n| (20..32).contains(&n)),
        "{forked:?} background processes"
    );
    assert!(lines.iter().any(|l| l.contains("can't fork")), "{lines:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(processes_of(&[&s.instance]).is_empty());

    // The limits reach the kernel (cgroup v1 here): the default pids
    // limit, and memory+swap equal to memory (no swap).
    let s = spec(&image, "sleep 60");
    node.agent.run_instance(s.clone()).await.unwrap();
    let id = s.instance.to_string();
    let read = |p: String| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        read(format!("/sys/fs/cgroup/pids/berth/{id}/pids.max")),
        berth_agent::bundle::DEFAULT_PIDS_LIMIT.to_string()
    );
    let memory = read(format!(
        "/sys/fs/cgroup/memory/berth/{id}/memory.limit_in_bytes"
    ));
    assert_eq!(memory, (128u64 << 20).to_string());
    let memsw = format!("/sys/fs/cgroup/memory/berth/{id}/memory.memsw.limit_in_bytes");
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_eq!(read(memsw), memory);
    }

    // Root only: the agent's state (instance dirs, rootfs mounts, runc
    // root) and the content store with the unpacked images; in a user
    // namespace its root's group may pass through (not list) them.
    let ns = berth_tests::node::test_user_namespace();
    let want = if ns.is_some() { 0o710 } else { 0o700 };
    let state = &node.cfg.state_dir;
    let instance = state.join("instances").join(&id);
    for d in [
        state.clone(),
        state.join("instances"),
        instance,
        node.dir.path().join("store"),
    ] {
        assert_eq!(mode(&d), want, "{}", d.display());
        if let Some(ns) = ns {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&d).unwrap().gid(), ns.host);
        }
    }
    let runc_root = node.runc_root();
    assert_eq!(mode(&runc_root) & 0o077, 0, "{}", runc_root.display());
    node.agent.stop_instance(&s.instance).await.unwrap();
}

/// An agent with a user namespace raises the kernel's key quota of
/// non-root users, and runs an instance in it when the instance's image
/// tree was unpacked for it, and as the host's root on
/// a tree unpacked without (an instance kept running while the node
/// turned its namespace on restarts on its old tree, which the namespace
/// does not own).
#[tokio::test]
async fn an_instance_runs_in_the_user_namespace_its_tree_was_unpacked_for() {
    const HOST: u32 = 1_000_000_000;
    let ns = berth_agent::bundle::UserNamespace {
        host: HOST,
        size: 65_536,
    };
    // Every instance's root is one host user, whose kernel key quota
    // (the default's 200 keys: a session keyring per container) the
    // agent raises as it starts.
    let quota = |name: &str| -> u64 {
        let path = format!("/proc/sys/kernel/keys/{name}");
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    std::fs::write("/proc/sys/kernel/keys/maxkeys", "200").unwrap();
    std::fs::write("/proc/sys/kernel/keys/maxbytes", "20000").unwrap();
    let node = Node::start_tuned(|c| c.user_namespace = Some(ns)).await;
    assert_eq!(
        (quota("maxkeys"), quota("maxbytes")),
        (1_000_000, 25_000_000)
    );
    let img = busybox_image(default_config());
    let shift = berth_puller::IdShift {
        host: HOST,
        size: 65_536,
    };
    let shifted = node.image_for(&img, Some(shift)).await;
    let plain = node.image_for(&img, None).await;
    assert_ne!(shifted.rootfs, plain.rootfs);
    let host_uid = |pid: u32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        uid.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    for (root, want) in [(&shifted, HOST), (&plain, 0)] {
        let s = spec(root, "exec /bin/busybox sleep 600");
        let pid = node.agent.run_instance(s.clone()).await.unwrap();
        assert_eq!(host_uid(pid), want, "{}", root.rootfs.display());
        node.agent.stop_instance(&s.instance).await.unwrap();
    }
}

//! Running a command in a running instance, on real runc as root, in both
//! of the node's modes (the instance in a user namespace of its own, and
//! as the host's root): the command is the instance's own kind of process
//! — same user, environment, capabilities, seccomp filter, cgroup and
//! namespaces as its main process — and an instance in a user namespace
//! sees its own network in `/sys`. Timeouts kill the command, output is
//! bounded, a program that is not there is refused with runc's reason.

use std::time::{Duration, Instant};

use berth_agent::exec::{ExecEnd, ExecOutput, ExecRequest};
use berth_agent::InstanceSpec;
use berth_tests::agent::{
    busybox_image, container_pid, processes_of, refused_unless_on_the_node, spec, Node,
};
use serde_json::json;

fn request(args: &[&str]) -> ExecRequest {
    ExecRequest {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: Vec::new(),
        timeout: Duration::from_secs(20),
        output_limit: 1 << 20,
    }
}

async fn exec(node: &Node, s: &InstanceSpec, args: &[&str]) -> ExecOutput {
    node.agent.exec(&s.instance, &request(args)).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The line of `/proc/<pid>/status` text starting with `field:`.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

async fn enters_as_its_own_process(user_namespace: bool) {
    let ns = berth_agent::bundle::UserNamespace {
        host: 1_000_000_000,
        size: 65_536,
    };
    let node = Node::start_tuned(|c| c.user_namespace = user_namespace.then_some(ns)).await;
    let img = node
        .image(&busybox_image(json!({
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "WorkingDir": "/tmp",
        })))
        .await;
    let mut s = spec(&img, "/bin/busybox sleep 600");
    s.env
        .insert("FROM_SERVICE".into(), "set on the service".into());
    s.network = Some(berth_agent::NetworkSpec {
        group: "exec".into(),
        name: None,
        publish: None,
    });
    let pid = node.agent.run_instance(s.clone()).await.unwrap();
    let main = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();

    // Its environment and working directory.
    let out = exec(
        &node,
        &s,
        &["sh", "-c", "echo $GREETING; echo $FROM_SERVICE; pwd"],
    )
    .await;
    assert_eq!(out.end, ExecEnd::Exited(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "hello from the image\nset on the service\n/tmp\n"
    );
    // Its user, capabilities, seccomp filter and no new privileges: those
    // of the main process (both read inside, as the instance numbers ids).
    let out = exec(
        &node,
        &s,
        &[
            "sh",
            "-c",
            "cat /proc/self/status; echo ===; cat /proc/1/status",
        ],
    )
    .await;
    let both = text(&out.stdout);
    let (status, first) = both.split_once("===").unwrap();
    for name in [
        "Uid",
        "Gid",
        "CapEff",
        "CapBnd",
        "CapPrm",
        "Seccomp",
        "NoNewPrivs",
    ] {
        assert_eq!(field(status, name), field(first, name), "{name}");
    }
    assert_eq!(field(status, "Seccomp"), "2", "a filter");
    assert_eq!(field(status, "NoNewPrivs"), "1");
    assert_eq!(field(status, "CapEff"), field(&main, "CapEff"));
    // And as the host sees it: the instance's root is the host's root only
    // where the instances run as it.
    let want_uid = if user_namespace { "1000000000" } else { "0" };
    let host_uid = |status: &str| {
        field(status, "Uid")
            .split_whitespace()
            .next()
            .map(str::to_owned)
    };
    assert_eq!(host_uid(&main).as_deref(), Some(want_uid));
    let long = {
        let (agent, id) = (node.agent.clone(), s.instance.clone());
        let mut req = request(&["sleep", "37"]);
        req.timeout = Duration::from_secs(3);
        tokio::spawn(async move { agent.exec(&id, &req).await })
    };
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = processes_of(&[&s.instance]).into_iter().find_map(|p| {
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok()?;
            cmd.contains("37")
                .then(|| std::fs::read_to_string(format!("/proc/{p}/status")).ok())?
        });
        if seen.is_some() {
            break;
        }
    }
    let seen = seen.expect("the command seen from the host");
    assert_eq!(host_uid(&seen).as_deref(), Some(want_uid));
    assert_eq!(long.await.unwrap().unwrap().end, ExecEnd::TimedOut);
    // Its cgroup (its limits count the command) and namespaces.
    let out = exec(
        &node,
        &s,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; for n in net user pid mnt uts ipc; do busybox readlink /proc/self/ns/$n; done",
        ],
    )
    .await;
    let inside = text(&out.stdout);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(inside.starts_with(&cgroup), "{inside} vs {cgroup}");
    for n in ["net", "user", "pid", "mnt", "uts", "ipc"] {
        let host = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        assert!(
            inside.contains(&host.to_string_lossy().into_owned()),
            "{n}: {inside}"
        );
    }
    // Its own network's interfaces in /sys (not the host's), in both
    // modes: the namespace the node made is its user namespace's.
    let out = exec(&node, &s, &["ls", "/sys/class/net"]).await;
    assert_eq!(text(&out.stdout), "eth0\nlo\n", "{out:?}");

    // Exit codes, both streams apart, standard input.
    let out = exec(&node, &s, &["sh", "-c", "echo out; echo err >&2; exit 7"]).await;
    assert_eq!(
        (out.end, text(&out.stdout), text(&out.stderr), out.truncated),
        (ExecEnd::Exited(7), "out\n".into(), "err\n".into(), false)
    );
    let mut req = request(&["sh", "-c", "busybox tr a-z A-Z"]);
    req.stdin = b"piped in\n".to_vec();
    let out = node.agent.exec(&s.instance, &req).await.unwrap();
    assert_eq!(text(&out.stdout), "PIPED IN\n");
    let out = exec(&node, &s, &["sh", "-c", "kill -9 $$"]).await;
    assert_eq!(out.end, ExecEnd::Exited(128 + 9));

    // Output is bounded; what was said past the bound is read and dropped.
    let mut req = request(&[
        "sh",
        "-c",
        "busybox yes | busybox head -c 3000000; echo done >&2",
    ]);
    req.output_limit = 1000;
    let out = node.agent.exec(&s.instance, &req).await.unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(text(&out.stderr), "done\n");
    assert!(out.truncated);

    // A command past its timeout is killed, in the instance too.
    let mut req = request(&["sleep", "321"]);
    req.timeout = Duration::from_secs(1);
    let t0 = Instant::now();
    let out = node.agent.exec(&s.instance, &req).await.unwrap();
    assert_eq!(out.end, ExecEnd::TimedOut);
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let left = processes_of(&[&s.instance]).into_iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("321"))
    });
    assert!(!left, "the timed-out command still runs");
    // A child left holding the output does not hold up the answer: it is
    // killed once the command is gone, and the command's code comes back.
    let t0 = Instant::now();
    let out = exec(&node, &s, &["sh", "-c", "echo early; sleep 333 & exit 3"]).await;
    assert_eq!(
        (out.end, text(&out.stdout)),
        (ExecEnd::Exited(3), "early\n".into())
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let left = processes_of(&[&s.instance]).into_iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("333"))
    });
    assert!(!left, "the command's background child still runs");

    // A program the image does not have: runc's reason.
    let err = node
        .agent
        .exec(&s.instance, &request(&["no-such-program"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-program"), "{err}");
    // The main process never noticed.
    assert_eq!(container_pid(&node.runc_root(), s.instance.as_str()), pid);

    // Not on this node; no longer running.
    refused_unless_on_the_node(&node, &s.instance, |id| {
        let agent = node.agent.clone();
        async move { agent.exec(&id, &request(&["true"])).await }
    })
    .await;
}

#[tokio::test]
async fn a_command_in_an_instance_in_a_user_namespace_runs_as_its_own_process() {
    enters_as_its_own_process(true).await;
}

#[tokio::test]
async fn a_command_in_an_instance_run_as_the_hosts_root_runs_as_its_own_process() {
    enters_as_its_own_process(false).await;
}

/// A runc that makes every container's user namespace anew (the path of
/// the node's is dropped from the bundle), as a machine that will not let
/// an instance mount a sysfs of its own network behaves: runc is refused
/// the sysfs, for real.
const UNOWNED_RUNC: &str = r#"#!/bin/sh
prev=""
for a in "$@"; do
  if [ "$prev" = "--bundle" ]; then
    python3 - "$a/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
for n in c["linux"]["namespaces"]:
    if n["type"] == "user":
        n.pop("path", None)
json.dump(c, open(p, "w"))
PY
  fi
  prev="$a"
done
exec runc "$@"
"#;

#[tokio::test]
async fn a_machine_that_refuses_instances_their_own_sysfs_gets_them_the_hosts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("runc");
    std::fs::write(&wrapper, UNOWNED_RUNC).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ns = berth_agent::bundle::UserNamespace {
        host: 1_000_000_000,
        size: 65_536,
    };
    let mut node = Node::start_tuned(|c| c.user_namespace = Some(ns)).await;
    // The same node's agent again, on the wrapper.
    node.agent.detach().await;
    let (agent, events) =
        berth_tests::agent::start_agent(&node.cfg, &node.client, &node.subjects, &wrapper).await;
    node.agent = agent;
    node.events = events;
    let img = node
        .image(&busybox_image(
            json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
        ))
        .await;
    let networked = || {
        let mut s = spec(&img, "/bin/busybox sleep 600");
        s.network = Some(berth_agent::NetworkSpec {
            group: "sysfs".into(),
            name: None,
            publish: None,
        });
        s
    };
    // The first start is refused its sysfs, then runs with the host's
    // /sys; the next starts so at once.
    for _ in 0..2 {
        let s = networked();
        let pid = node.agent.run_instance(s.clone()).await.unwrap();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let sys = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/sys"))
            .unwrap_or_else(|| panic!("no /sys in {mounts}"));
        assert!(
            sys.contains(" ro,") || sys.contains(" ro "),
            "read-only: {sys}"
        );
        let seen = berth_tests::agent::exec_in(
            &node.runc_root(),
            s.instance.as_str(),
            &["ls", "/sys/class/net"],
        );
        let names = text(&seen.stdout);
        // The node's bridge is the host's, never in an instance's own
        // network (which has only `eth0` and `lo`).
        let bridge = node
            .subnet
            .parsed::<berth_agent::net::Subnet>()
            .bridge_name();
        assert!(
            names.lines().any(|n| n == bridge),
            "the host's interfaces ({bridge}): {names}"
        );
        node.agent.stop_instance(&s.instance).await.unwrap();
    }
}

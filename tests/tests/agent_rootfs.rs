//! Where an instance's root is mounted (as root, real runc): as the root
//! of the container's own mount namespace, so the host's mount table does
//! not grow with the instances; and on the host instead, from the first
//! refusal on, with a runc that will not mount at `/` (as runc 1.2 and
//! later refuse), played by a wrapper around the real one; a restart gets
//! a new root from the image's files either way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use berth_agent::AgentEvent;
use berth_tests::agent::{
    busybox_image, collect_logs, default_config, nth_line, processes_of, spec, start_agent, Node,
};
use berth_tests::runc::mounts_under;

/// The filesystem type of `/` in process `pid`'s mount namespace.
fn root_fs_type(pid: u32) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a mount at /");
    let after = root.split(" - ").nth(1).unwrap();
    after.split(' ').next().unwrap().to_owned()
}

async fn started(node: &mut Node, instance: &berth_schemas::ids::InstanceId) {
    node.event(
        Duration::from_secs(10),
        |e| matches!(e, AgentEvent::Started { instance: i, .. } if i == instance),
    )
    .await;
}

#[tokio::test]
async fn an_instance_root_is_an_overlay_inside_its_container_and_not_on_the_host() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let s = spec(&image, "sh -c 'echo written > /state; sleep 600'");
    node.agent.run_instance(s.clone()).await.unwrap();
    started(&mut node, &s.instance).await;
    let pid = processes_of(&[&s.instance])[0];
    assert_eq!(root_fs_type(pid), "overlay");
    assert!(
        mounts_under(node.dir.path()).is_empty(),
        "nothing of the instance is mounted on the host: {:?}",
        mounts_under(node.dir.path())
    );
    // Its writes land in its own upper dir, never in the image.
    let upper = node.upper(&s.instance).join("state");
    // The shell creates the file before it writes to it: wait for the
    // line, not for the file.
    let mut written = String::new();
    for _ in 0..250 {
        written = std::fs::read_to_string(&upper).unwrap_or_default();
        if written == "written\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(written, "written\n");
    assert!(!image.rootfs.join("state").exists());
    node.agent.stop_instance(&s.instance).await.unwrap();
}

/// A runc that refuses a mount at `/` in `create`/`run` the way runc 1.2
/// does (logged to `--log`, exit 1), counting refusals in `count`, and
/// runs the real runc otherwise.
fn refusing_runc(dir: &Path, count: &Path) -> std::path::PathBuf {
    let path = dir.join("runc-refusing-root-mounts");
    let script = format!(
        r#"#!/bin/sh
log=""; bundle=""; op=""; prev=""
for a in "$@"; do
  case "$prev" in --log) log="$a";; --bundle) bundle="$a";; esac
  case "$a" in create|run) [ -z "$op" ] && op="$a";; esac
  prev="$a"
done
if [ -n "$op" ] && grep -q '"destination": "/",' "$bundle/config.json"; then
  echo refused >> '{count}'
  echo 'time="2026-01-01T00:00:00Z" level=error msg="runc '"$op"' failed: unable to start container process: error during container init: error mounting \"overlay\" to rootfs at \"/\": create mountpoint for / mount: mountpoint \"'"$bundle"'/rootfs\" is on the top of rootfs \"'"$bundle"'/rootfs\""' >> "$log"
  exit 1
fi
exec runc "$@"
"#,
        count = count.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_runc_that_refuses_a_root_mount_gets_host_mounted_roots_from_then_on() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let count = node.dir.path().join("refusals");
    let wrapper = refusing_runc(node.dir.path(), &count);
    node.agent.detach().await;
    let (agent, events) = start_agent(&node.cfg, &node.client, &node.subjects, &wrapper).await;
    node.agent = agent;
    node.events = events;

    let a = spec(
        &image,
        "sh -c '[ -e /state ] && echo \"left by the last run\"; echo w > /state; echo up; sleep 600'",
    );
    let mut logs = node.logs(&a).await;
    node.agent.run_instance(a.clone()).await.unwrap();
    started(&mut node, &a.instance).await;
    let b = spec(&image, "sleep 600");
    node.agent.run_instance(b.clone()).await.unwrap();
    started(&mut node, &b.instance).await;

    let refusals = std::fs::read_to_string(&count).unwrap_or_default();
    assert_eq!(
        refusals.lines().count(),
        1,
        "refused once, then not asked again"
    );
    let mounted = mounts_under(node.dir.path());
    for i in [&a.instance, &b.instance] {
        assert!(
            mounted.iter().any(|m| m.contains(i.as_str())),
            "{i}'s root is mounted on the host: {mounted:?}"
        );
        assert_eq!(root_fs_type(processes_of(&[i])[0]), "overlay");
    }
    // Started again, `a` runs on a new root from the image's files, mounted
    // once on the host as before.
    node.agent.restart_instance(&a.instance).unwrap();
    node.event(Duration::from_secs(10), |e| {
        matches!(e, AgentEvent::Started { instance, restarts: 1, .. } if *instance == a.instance)
    })
    .await;
    let said = collect_logs(&mut logs, Duration::from_secs(10), nth_line("up", 2)).await;
    let said: Vec<&str> = said.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(said.iter().filter(|l| **l == "up").count(), 2, "{said:?}");
    assert!(!said.contains(&"left by the last run"), "{said:?}");
    let mounted = mounts_under(node.dir.path());
    assert_eq!(
        mounted
            .iter()
            .filter(|m| m.contains(a.instance.as_str()))
            .count(),
        1,
        "{mounted:?}"
    );
    for i in [&a.instance, &b.instance] {
        node.agent.stop_instance(i).await.unwrap();
    }
    assert!(mounts_under(node.dir.path()).is_empty());
}

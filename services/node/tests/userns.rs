//! Instances in a user namespace (`BERTH_NODE_USERNS`), against real runc
//! as root: the image's root is an unprivileged user of the host, yet owns
//! the image's files inside, and a web instance still serves on its port.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use berth_agent::bundle::UserNamespace;
use berth_node::{NodeOptions, Userns};
use berth_schemas::model::ServiceType;

use crate::support::{self, count_of, exec, fast_checks, run, spec, start_node_opts};
use berth_tests::node::World;

const HOST: u32 = 1_000_000_000;

/// The host uid and gid of a process (`Uid:`/`Gid:` of its status, real).
fn host_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

#[tokio::test]
async fn an_instances_root_is_an_unprivileged_host_user_that_owns_its_image() {
    let w = World::start().await;
    let opts = NodeOptions {
        user_namespace: Userns::On(UserNamespace {
            host: HOST,
            size: berth_node::USERNS_IDS,
        }),
        ..support::options()
    };
    let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;

    // A worker that writes into the image's /etc (owned by the image's
    // root: writable only if the tree is owned for the namespace), and a
    // web server on port 80, which only root may take.
    let (svc, dep) = support::service(&w, ServiceType::BackgroundWorker, None).await;
    let worker = spec(
        &w,
        &svc,
        &dep,
        "/bin/busybox sh -c 'echo written > /etc/by-root && exec /bin/busybox sleep 600'",
        None,
    );
    run(&w, &node.id, &worker).await;
    let (web, web_dep) = support::service(&w, ServiceType::WebService, Some("/hello.txt")).await;
    let mut server = spec(
        &w,
        &web,
        &web_dep,
        "/bin/busybox httpd -f -p 80 -h /app",
        None,
    );
    support::with_env(&w, &node.id, &mut server, &[("PORT", "80")]).await;
    run(&w, &node.id, &server).await;
    let events = support::healthy_once(&w, &web, &[&server.instance]).await;
    let addr = support::addr_of(&events, &server.instance).unwrap();
    let (status, body) = support::http_get(&addr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200, "{body}");
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &worker.instance, "instance_started") == 1
    })
    .await;

    // Inside: root, and its write to /etc went through.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out) = exec(
            &w,
            &worker.instance,
            &["/bin/busybox", "cat", "/etc/by-root"],
        );
        if code == 0 {
            assert_eq!(out, "written\n");
            break;
        }
        assert!(Instant::now() < deadline, "the worker never wrote: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, id) = exec(&w, &worker.instance, &["/bin/busybox", "id", "-u"]);
    assert_eq!(id, "0\n");
    // The host's /sys, bound in, is read-only with every mount under it
    // (runc's own tmpfs for the cgroup mounts, the instance's, aside).
    let (_, mounts) = exec(
        &w,
        &worker.instance,
        &["/bin/busybox", "cat", "/proc/self/mountinfo"],
    );
    let sys: Vec<&str> = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|at| at.starts_with("/sys")))
        .filter(|l| !l.ends_with(&format!("uid={HOST},gid={HOST}")))
        .collect();
    assert!(sys.len() > 1, "{mounts}");
    for line in &sys {
        let options = line.split(' ').nth(5).unwrap();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "writable under /sys: {line}"
        );
    }

    // Outside: a user of the host's shifted range, owning what it wrote.
    for instance in [&worker.instance, &server.instance] {
        let pid = support::container_pid(&w, instance);
        assert_eq!(host_ids(pid), (HOST, HOST), "{instance}");
    }
    let upper = w
        .node_dir()
        .join("agent/instances")
        .join(worker.instance.as_str())
        .join("upper/etc/by-root");
    let m = std::fs::metadata(&upper).unwrap();
    assert_eq!((m.uid(), m.gid()), (HOST, HOST));
    let tree_root = w.node_dir().join(format!("store/trees-{HOST}-65536"));
    assert!(tree_root.is_dir(), "the shifted trees are apart");

    node.stop().await;
}

#[tokio::test]
async fn a_state_dir_the_instances_root_cannot_reach_is_reached_through_its_alias() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start().await;
    // The state dir below a directory only the host's root passes, as a
    // checkout under /root is.
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ns = Userns::Auto(UserNamespace {
        host: HOST,
        size: berth_node::USERNS_IDS,
    });
    let with = |user_namespace| NodeOptions {
        user_namespace,
        ..support::options()
    };

    // A node that ran without a namespace (as every node there did
    // before the alias) left an instance running, made at the state dir's
    // own path.
    let node = start_node_opts(&w, fast_checks(), Default::default(), with(Userns::Off)).await;
    let (svc, dep) = support::service(&w, ServiceType::BackgroundWorker, None).await;
    let old = spec(&w, &svc, &dep, "/bin/busybox sleep 600", None);
    run(&w, &node.id, &old).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &old.instance, "instance_started") == 1
    })
    .await;
    node.stop().await;
    let old_pid = support::container_pid(&w, &old.instance);
    assert_eq!(host_ids(old_pid), (0, 0));

    // Now in a namespace: the node reaches its state through the alias.
    let node = start_node_opts(&w, fast_checks(), Default::default(), with(ns)).await;
    let alias = berth_node::userns::alias_of(&node.id);
    let (a, d) = (
        std::fs::metadata(&alias).unwrap(),
        std::fs::metadata(w.node_dir()).unwrap(),
    );
    assert_eq!(
        (a.dev(), a.ino()),
        (d.dev(), d.ino()),
        "the alias shows the state dir"
    );
    let new = spec(&w, &svc, &dep, "/bin/busybox sleep 600", None);
    run(&w, &node.id, &new).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &new.instance, "instance_started") == 1
    })
    .await;
    let new_pid = support::container_pid(&w, &new.instance);
    assert_eq!(
        host_ids(new_pid),
        (HOST, HOST),
        "the new instance is namespaced"
    );
    // The adopted one kept running as it was made, and stops cleanly.
    assert_eq!(support::container_pid(&w, &old.instance), old_pid);
    support::stop(&w, &node.id, &svc, &old.instance).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &old.instance, "instance_stopped") == 1
    })
    .await;
    let old_dir = format!("agent/instances/{}", old.instance.as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.node_dir().join(&old_dir).exists() {
        assert!(
            Instant::now() < deadline,
            "the stopped instance's dir stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A restarted node uses the alias it made (one mount, not two).
    node.stop().await;
    let node = start_node_opts(&w, fast_checks(), Default::default(), with(ns)).await;
    let at_alias = berth_tests::runc::mounts_under(&alias)
        .into_iter()
        .filter(|m| std::path::Path::new(m) == alias)
        .count();
    assert_eq!(at_alias, 1);
    assert_eq!(support::container_pid(&w, &new.instance), new_pid);
    node.stop().await;
}

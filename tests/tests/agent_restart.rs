//! Restarts on real runc: a crash loop restarts with growing backoff, each
//! run from the image's files (what the last one wrote is gone), and
//! a new agent process over the same state dir adopts the running
//! containers it has records for and kills and deletes the ones it does
//! not — `runc list` then shows only known containers, and no container
//! process is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_tests::agent;

use std::time::{Duration, Instant};

use berth_agent::{AgentEvent, ExitStatus};
use berth_tests::agent::{
    busybox_image, collect_logs, default_config, nth_line, processes_of, runc_list, spec,
    start_agent, Node,
};

#[tokio::test]
async fn crash_loop_restarts_with_growing_backoff() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let s = spec(&image, "sh -c 'echo crashing; exit 1'");
    let mut sub = node.logs(&s).await;
    node.agent.run_instance(s.clone()).await.unwrap();
    // Exited at t, Started again at t' — the gap is the backoff.
    let mut exited_at = None;
    let mut gaps = Vec::new();
    let mut scheduled = Vec::new();
    while gaps.len() < 4 {
        let e = node.event(Duration::from_secs(15), |_| true).await;
        match e {
            AgentEvent::Exited { status, .. } => {
                assert_eq!(status, ExitStatus::Code(1));
                exited_at = Some(Instant::now());
            }
            AgentEvent::RestartScheduled { after, .. } => scheduled.push(after),
            AgentEvent::Started { restarts, .. } if restarts > 0 => {
                gaps.push(exited_at.take().unwrap().elapsed());
            }
            _ => {}
        }
    }
    let ms: Vec<u128> = gaps.iter().map(|g| g.as_millis()).collect();
    println!("crash loop: scheduled backoffs {scheduled:?}, observed exit→start gaps {ms:?} ms");
    assert_eq!(
        &scheduled[..4],
        &[300, 600, 1200, 2400].map(Duration::from_millis)
    );
    // Each restart waited at least its scheduled backoff (the observed gap
    // adds the container's start, which varies with the machine's load, so
    // the gaps are compared with the schedule rather than with each other).
    for (gap, after) in gaps.iter().zip(&scheduled) {
        assert!(
            gap >= after,
            "restarted before its backoff: {ms:?} vs {scheduled:?}"
        );
    }
    // Each run's output arrived.
    let lines = collect_logs(&mut sub, Duration::from_millis(500), |_| false).await;
    assert!(
        lines.iter().filter(|l| l.line == "crashing").count() >= 5,
        "{lines:?}"
    );
    node.agent.stop_instance(&s.instance).await.unwrap();
    assert!(runc_list(&node.runc_root()).is_empty());
    assert!(
        agent::mounts_under(node.dir.path()).is_empty(),
        "rootfs mounts left"
    );
    assert!(processes_of(&[&s.instance]).is_empty());
}

/// What a run wrote is gone when the instance is started again (a crash
/// restart, as a restart in place): a pid file left by a crash does not
/// stop the next run, as on Render. It is gone as soon as the run ended,
/// not only at the next start: a crash loop's backoff holds no disk.
#[tokio::test]
async fn a_restarted_instance_starts_from_the_image_files() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let s = spec(
        &image,
        "sh -c 'if [ -e /app.pid ]; then echo \"already running: $(cat /app.pid)\"; exit 3; fi; \
         echo $$ > /app.pid; echo started; exit 1'",
    );
    let mut sub = node.logs(&s).await;
    node.agent.run_instance(s.clone()).await.unwrap();
    node.event(
        Duration::from_secs(10),
        |e| matches!(e, AgentEvent::Exited { instance, .. } if *instance == s.instance),
    )
    .await;
    assert!(
        !node.upper(&s.instance).join("app.pid").exists(),
        "gone once the run ended"
    );
    let lines = collect_logs(&mut sub, Duration::from_secs(20), nth_line("started", 3)).await;
    node.agent.stop_instance(&s.instance).await.unwrap();
    let said: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        said.iter().filter(|l| **l == "started").count(),
        3,
        "three runs, each from the image's files: {said:?}"
    );
    assert!(
        !said.iter().any(|l| l.starts_with("already running")),
        "{said:?}"
    );
    assert!(runc_list(&node.runc_root()).is_empty());
    assert!(agent::mounts_under(node.dir.path()).is_empty());
}

#[tokio::test]
async fn restarted_agent_adopts_known_containers_and_removes_unknown_ones() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let tick = "sh -c 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done'";
    let mut kept = spec(&image, tick);
    kept.shutdown_delay = Duration::from_secs(1);
    let orphan = spec(&image, tick);
    node.agent.run_instance(kept.clone()).await.unwrap();
    node.agent.run_instance(orphan.clone()).await.unwrap();
    assert_eq!(
        processes_of(&[&kept.instance]).len(),
        3,
        "init + sh + sleep"
    );

    // The agent goes away (upgrade/crash): containers keep running.
    node.agent.detach().await;
    let mut listed = runc_list(&node.runc_root());
    listed.sort();
    let mut want = vec![kept.instance.to_string(), orphan.instance.to_string()];
    want.sort();
    assert_eq!(listed, want);
    // One container loses its record: the next agent must not leave it.
    let orphan_dir = node
        .cfg
        .state_dir
        .join("instances")
        .join(orphan.instance.to_string());
    std::fs::remove_file(orphan_dir.join("instance.json")).unwrap();

    let mut sub = node.logs(&kept).await;
    let (agent, mut events) = start_agent(&node.cfg, &node.client, &node.subjects, "runc").await;
    let mut adopted = false;
    let mut cleaned = false;
    while let Ok(e) = events.try_recv() {
        match e {
            AgentEvent::Adopted { instance, .. } => adopted |= instance == kept.instance,
            AgentEvent::CleanedUp { container, .. } => {
                cleaned |= container == orphan.instance.to_string()
            }
            other => panic!("unexpected event during recovery: {other:?}"),
        }
    }
    assert!(adopted && cleaned, "adopted {adopted}, cleaned {cleaned}");
    assert_eq!(
        runc_list(&node.runc_root()),
        vec![kept.instance.to_string()]
    );
    assert_eq!(agent.instances(), vec![kept.instance.clone()]);
    let left = processes_of(&[&orphan.instance]);
    let stat: Vec<String> = left
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    assert!(left.is_empty(), "orphan's processes killed: {stat:?}");
    assert!(!orphan_dir.exists(), "orphan's files removed");

    // The adopted instance's output still flows, from where it was.
    let lines = collect_logs(&mut sub, Duration::from_secs(3), |_| false).await;
    assert!(lines.len() >= 5, "{lines:?}");
    let n: Vec<u32> = lines
        .iter()
        .map(|l| l.line["tick-".len()..].parse().unwrap())
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive ticks: {n:?}"
    );

    // And it can be stopped by the new agent; nothing is left.
    let out = agent.stop_instance(&kept.instance).await.unwrap();
    // Behind the init, sh (no trap) ends on SIGTERM: 128 + 15 (the code is
    // reaped: both agents live in this test's process, the subreaper).
    assert!(!out.escalated_to_kill, "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(143)));
    assert!(runc_list(&node.runc_root()).is_empty());
    assert!(
        agent::mounts_under(node.dir.path()).is_empty(),
        "rootfs mounts left"
    );
    assert!(processes_of(&[&kept.instance, &orphan.instance]).is_empty());
    let left: Vec<_> = std::fs::read_dir(node.cfg.state_dir.join("instances"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

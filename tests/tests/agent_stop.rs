//! Stopping on real runc: a process that handles SIGTERM exits within the
//! delay; one that ignores it is SIGKILLed once the delay passes (both
//! timed); a one-off past its timeout is stopped and reported as timed out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_tests::agent;

use std::time::{Duration, Instant};

use berth_agent::{AgentEvent, ExitStatus, OneOffOutcome};
use berth_tests::agent::{
    busybox_base, busybox_image, collect_logs, default_config, processes_of, runc_list, spec, Node,
};
use berth_tests::layers::{self, Comp, Entry};

#[tokio::test]
async fn sigterm_then_sigkill_after_the_delay() {
    let mut node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;

    // Handles SIGTERM: exits 0 at once.
    let mut polite = spec(
        &image,
        r#"sh -c 'trap "echo got-term; exit 0" TERM; echo ready; sleep 60 & wait'"#,
    );
    polite.shutdown_delay = Duration::from_secs(5);
    let mut sub = node.logs(&polite).await;
    node.agent.run_instance(polite.clone()).await.unwrap();
    let seen = collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    assert_eq!(seen.last().map(|l| l.line.as_str()), Some("ready"));
    let t0 = Instant::now();
    let out = node.agent.stop_instance(&polite.instance).await.unwrap();
    let polite_took = t0.elapsed();
    assert!(!out.escalated_to_kill, "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
    assert!(polite_took < Duration::from_secs(2), "took {polite_took:?}");
    let seen = collect_logs(&mut sub, Duration::from_secs(2), |l| l.line == "got-term").await;
    assert_eq!(seen.last().map(|l| l.line.as_str()), Some("got-term"));
    node.event(
        Duration::from_secs(1),
        |e| matches!(e, AgentEvent::Stopped { instance, .. } if *instance == polite.instance),
    )
    .await;

    // Ignores SIGTERM: killed once the delay passes.
    let mut stubborn = spec(
        &image,
        r#"sh -c 'trap "" TERM; echo ready; while true; do sleep 1; done'"#,
    );
    stubborn.shutdown_delay = Duration::from_millis(1500);
    let mut sub = node.logs(&stubborn).await;
    node.agent.run_instance(stubborn.clone()).await.unwrap();
    collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    let t0 = Instant::now();
    let out = node.agent.stop_instance(&stubborn.instance).await.unwrap();
    let stubborn_took = t0.elapsed();
    assert!(out.escalated_to_kill, "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Signal(9)));
    assert!(
        stubborn_took >= Duration::from_millis(1500) && stubborn_took < Duration::from_millis(3500),
        "took {stubborn_took:?}"
    );
    println!(
        "stop timings: SIGTERM handled in {:.0} ms; SIGTERM ignored → SIGKILL after the 1500 ms delay, gone in {:.0} ms",
        polite_took.as_secs_f64() * 1000.0,
        stubborn_took.as_secs_f64() * 1000.0
    );
    assert!(runc_list(&node.runc_root()).is_empty());
    assert!(
        agent::mounts_under(node.dir.path()).is_empty(),
        "rootfs mounts left"
    );
    assert!(processes_of(&[&polite.instance, &stubborn.instance]).is_empty());
    assert!(
        std::fs::read_dir(node.cfg.state_dir.join("instances"))
            .unwrap()
            .next()
            .is_none(),
        "instance dirs removed"
    );
}

/// A program run by a shell that does not pass the stop signal on (a
/// `CMD` in shell form with more than one command, an entrypoint script
/// that does not `exec` its program) gets the signal itself: it shuts down
/// as it would under `docker stop` of the bare program, the shell goes on
/// to its next command, and nothing waits for the kill. A shell that
/// handles the signal itself (a `trap`) is left to do so.
#[tokio::test]
async fn the_program_behind_a_shell_that_would_not_pass_the_signal_on_gets_it() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    let program = r#"trap \"echo program-got-term; exit 0\" TERM; echo ready; sleep 60 & wait"#;
    let mut wrapped = spec(
        &image,
        &format!(r#"sh -c 'sh -c "{program}"; echo shell-went-on'"#),
    );
    wrapped.shutdown_delay = Duration::from_secs(10);
    let mut sub = node.logs(&wrapped).await;
    node.agent.run_instance(wrapped.clone()).await.unwrap();
    collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    let t0 = Instant::now();
    let out = node.agent.stop_instance(&wrapped.instance).await.unwrap();
    let took = t0.elapsed();
    let seen = collect_logs(&mut sub, Duration::from_secs(2), |l| {
        l.line == "shell-went-on"
    })
    .await;
    let lines: Vec<&str> = seen.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            r#"==> Stopping: SIGTERM sent to sh -c 'trap "echo program-got-term; exit 0" TERM; echo ready; sleep 60 & wait', as the shell running it would not pass it on"#,
            "program-got-term",
            "shell-went-on"
        ],
        "{out:?}"
    );
    assert!(!out.escalated_to_kill, "{out:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)), "{out:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // The shell traps the signal: it gets it, and does what it says.
    let trapping = spec(
        &image,
        r#"sh -c 'trap "echo shell-got-term; exit 3" TERM; echo ready; sleep 60 & wait'"#,
    );
    let mut sub = node.logs(&trapping).await;
    node.agent.run_instance(trapping.clone()).await.unwrap();
    collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    let out = node.agent.stop_instance(&trapping.instance).await.unwrap();
    let seen = collect_logs(&mut sub, Duration::from_secs(2), |l| {
        l.line == "shell-got-term"
    })
    .await;
    assert_eq!(seen.last().map(|l| l.line.as_str()), Some("shell-got-term"));
    assert_eq!(out.status, Some(ExitStatus::Code(3)), "{out:?}");

    // A shell looping over short commands stops too, without the kill.
    let looping = spec(
        &image,
        r#"sh -c 'echo ready; while true; do sleep 1; done; echo never'"#,
    );
    let mut sub = node.logs(&looping).await;
    node.agent.run_instance(looping.clone()).await.unwrap();
    collect_logs(&mut sub, Duration::from_secs(5), |l| l.line == "ready").await;
    let t0 = Instant::now();
    let out = node.agent.stop_instance(&looping.instance).await.unwrap();
    assert!(!out.escalated_to_kill, "{out:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert!(processes_of(&[&wrapped.instance, &trapping.instance, &looping.instance]).is_empty());
}

/// An image as Node apps are built: `CMD ["npm", "start"]`, the
/// package's start script run by npm through `sh -c`. Signalled, npm
/// would pass the signal to that shell (which dies of it) and exit, and
/// the app would be killed with the container, mid-request; it gets the
/// signal instead, shuts down as it means to, and npm exits with it.
/// (The machine's own node and npm, copied into the image.)
#[tokio::test]
async fn an_app_started_by_npm_gets_the_stop_signal_itself() {
    let node = Node::start().await;
    // node, and npm's own tree, where this machine has them.
    let which = |program: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("readlink -f \"$(command -v {program})\"")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            path.starts_with('/'),
            "{program} is needed (scripts/install-deps)"
        );
        path
    };
    let node_bin = which("node");
    let npm_cli = which("npm");
    let npm_root = npm_cli
        .strip_suffix("/bin/npm-cli.js")
        .unwrap_or_else(|| panic!("npm's tree: {npm_cli}"));
    let mut runtime = layers::host_program(&node_bin).unwrap();
    // Debian's shell as /bin/sh, as the official node images have it (it
    // forks the script's command; busybox's would exec it).
    runtime.extend(layers::host_program("/usr/bin/dash").unwrap());
    runtime.push(Entry::symlink("bin/sh", "/usr/bin/dash"));
    runtime.extend(layers::host_tree(npm_root).unwrap());
    runtime.push(Entry::dir("usr/local"));
    runtime.push(Entry::dir("usr/local/bin"));
    runtime.push(Entry::symlink("usr/local/bin/node", &node_bin));
    runtime.push(Entry::symlink("usr/local/bin/npm", &npm_cli));
    // npm-cli.js starts `#!/usr/bin/env node`.
    runtime.push(Entry::dir("usr/bin"));
    runtime.push(Entry::symlink("usr/bin/env", "/bin/busybox"));
    let server = r#"
process.on('SIGTERM', () => {
  console.log('app-got-term');
  setTimeout(() => { console.log('app-drained'); process.exit(0); }, 300);
});
console.log('app-ready');
setInterval(() => {}, 1000);
"#;
    let app = vec![
        Entry::dir("app"),
        Entry::file(
            "app/package.json",
            br#"{"name":"app","version":"1.0.0","scripts":{"start":"node server.js"}}"#,
        ),
        Entry::file("app/server.js", server.as_bytes()),
    ];
    let config = serde_json::json!({
        "Cmd": ["npm", "start"],
        "WorkingDir": "/app",
        "Env": ["PATH=/usr/local/bin:/bin", "HOME=/tmp", "NODE_ENV=production"],
    });
    let image = layers::image_with_config(
        vec![
            layers::layer(&busybox_base(), Comp::Gzip).unwrap(),
            layers::layer(&runtime, Comp::None).unwrap(),
            layers::layer(&app, Comp::Gzip).unwrap(),
        ],
        config,
    )
    .unwrap();
    let image = node.image(&image).await;
    let mut s = spec(&image, "");
    s.command = None;
    s.limits.memory_mib = Some(512);
    s.shutdown_delay = Duration::from_secs(10);
    let mut sub = node.logs(&s).await;
    node.agent.run_instance(s.clone()).await.unwrap();
    let seen = collect_logs(&mut sub, Duration::from_secs(30), |l| l.line == "app-ready").await;
    assert!(
        seen.iter().any(|l| l.line == "app-ready"),
        "{:?}",
        seen.iter().map(|l| &l.line).collect::<Vec<_>>()
    );
    let t0 = Instant::now();
    let out = node.agent.stop_instance(&s.instance).await.unwrap();
    let took = t0.elapsed();
    let seen = collect_logs(&mut sub, Duration::from_secs(2), |l| {
        l.line == "app-drained"
    })
    .await;
    let lines: Vec<&str> = seen.iter().map(|l| l.line.as_str()).collect();
    let got = lines.iter().position(|l| *l == "app-got-term");
    let drained = lines.iter().position(|l| *l == "app-drained");
    assert!(got.is_some() && drained > got, "{lines:?}");
    assert!(
        lines.contains(
            &"==> Stopping: SIGTERM sent to node server.js, as npm running it would not pass it on"
        ),
        "{lines:?}"
    );
    assert!(!out.escalated_to_kill, "{out:?}");
    assert_eq!(
        out.status,
        Some(ExitStatus::Code(0)),
        "npm exits as its script did: {out:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(processes_of(&[&s.instance]).is_empty());
}

#[tokio::test]
async fn one_off_past_its_timeout_is_stopped() {
    let node = Node::start().await;
    let image = node.image(&busybox_image(default_config())).await;
    // SIGTERM ignored (and inherited ignored by `sleep`): SIGKILL after
    // 500 ms, which kills the init and with it the whole container.
    let mut s = spec(&image, r#"sh -c 'trap "" TERM; sleep 60'"#);
    s.shutdown_delay = Duration::from_millis(500);
    let t0 = Instant::now();
    let out = node
        .agent
        .run_once(s.clone(), Duration::from_secs(1))
        .await
        .unwrap();
    let took = t0.elapsed();
    let OneOffOutcome::TimedOut(stop) = out else {
        panic!("expected a timeout, got {out:?}")
    };
    assert!(stop.escalated_to_kill);
    assert_eq!(stop.status, Some(ExitStatus::Signal(9)));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    println!(
        "one-off sleep 60 with a 1 s timeout: reported timed out after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(runc_list(&node.runc_root()).is_empty());
    assert!(
        agent::mounts_under(node.dir.path()).is_empty(),
        "rootfs mounts left"
    );
    assert!(processes_of(&[&s.instance]).is_empty());

    // A plain `sleep` without a handler is not PID 1 (the init is), so
    // SIGTERM ends it at once; the init reports it as 128 + 15.
    let mut s = spec(&image, "sleep 60");
    s.shutdown_delay = Duration::from_secs(20);
    let t0 = Instant::now();
    let out = node
        .agent
        .run_once(s.clone(), Duration::from_secs(1))
        .await
        .unwrap();
    let took = t0.elapsed();
    let OneOffOutcome::TimedOut(stop) = out else {
        panic!("expected a timeout, got {out:?}")
    };
    assert!(!stop.escalated_to_kill, "{stop:?}");
    assert_eq!(stop.status, Some(ExitStatus::Code(143)));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(processes_of(&[&s.instance]).is_empty());

    // A one-off that finishes in time reports its code.
    let s = spec(&image, "sh -c 'exit 7'");
    let out = node
        .agent
        .run_once(s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out, OneOffOutcome::Exited(ExitStatus::Code(7)));

    // One whose program is not in the image says so.
    let s = spec(&image, "manage.py migrate");
    let out = node
        .agent
        .run_once(s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        out,
        OneOffOutcome::CannotRun {
            status: ExitStatus::Code(127),
            why: "manage.py is in none of the directories of its PATH in the image (/bin)".into(),
        }
    );
}

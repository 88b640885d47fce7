//! A terminal in a running instance, on real runc as root, in both of the
//! node's modes: the program gets a terminal of the instance's own
//! (`/dev/pts/0`, `TERM=xterm`) of the size asked, which follows resizes;
//! Ctrl-C interrupts what runs in the shell (the terminal's line
//! discipline, not a byte passed through); the exit code comes back;
//! hanging up ends a shell at once and kills a program that ignores it;
//! a program the image lacks is refused with runc's reason.

use std::time::{Duration, Instant};

use berth_agent::terminal::{Pty, Terminal, TerminalRequest, HANGUP_GRACE};
use berth_agent::InstanceSpec;
use berth_tests::agent::{busybox_image, processes_of, refused_unless_on_the_node, spec, Node};
use serde_json::json;

fn request(args: &[&str]) -> TerminalRequest {
    TerminalRequest {
        args: args.iter().map(|a| a.to_string()).collect(),
        cols: 80,
        rows: 24,
    }
}

/// What the terminal shows until `marker` appears (or panics after 10 s).
/// Markers are computed by the shell (`$((40+2))X` shows `42X`), so the
/// terminal's echo of the typed line never matches them.
async fn until(pty: &Pty, shown: &mut String, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !shown.contains(marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, pty.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("the terminal ended before {marker:?}: {shown:?}"),
            Ok(Ok(n)) => shown.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no {marker:?} within 10 s: {shown:?}"),
        }
    }
    let at = shown.find(marker).unwrap() + marker.len();
    let before = shown[..at].to_owned();
    shown.replace_range(..at, "");
    before
}

fn running(s: &InstanceSpec, needle: &str) -> bool {
    processes_of(&[&s.instance]).into_iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.replace('\0', " ").contains(needle))
    })
}

async fn open(node: &Node, s: &InstanceSpec, args: &[&str]) -> Terminal {
    node.agent
        .terminal(&s.instance, &request(args))
        .await
        .unwrap()
}

async fn a_terminal_in_an_instance(user_namespace: bool) {
    let ns = berth_agent::bundle::UserNamespace {
        host: 1_000_000_000,
        size: 65_536,
    };
    let node = Node::start_tuned(|c| c.user_namespace = user_namespace.then_some(ns)).await;
    let img = node
        .image(&busybox_image(json!({
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/tmp",
        })))
        .await;
    let s = spec(&img, "/bin/busybox sleep 600");
    node.agent.run_instance(s.clone()).await.unwrap();

    // A program that asks for its size at once gets it (runc sizes the
    // terminal before it starts), every time.
    for _ in 0..5 {
        let mut t = open(&node, &s, &["sh", "-c", "stty size; echo $((8*8))S"]).await;
        let said = until(&t.pty(), &mut String::new(), "64S").await;
        assert!(said.contains("24 80"), "{said:?}");
        assert_eq!(t.wait().await.unwrap(), 0);
    }

    let mut t = open(&node, &s, &["sh"]).await;
    let pty = t.pty();
    let mut shown = String::new();
    pty.write_all(b"tty; stty size; echo T=$TERM; pwd; echo $((40+2))X\n")
        .await
        .unwrap();
    let said = until(&pty, &mut shown, "42X").await;
    for want in ["/dev/pts/0", "24 80", "T=xterm", "/tmp"] {
        assert!(said.contains(want), "{want:?} in {said:?}");
    }
    // A resize reaches the program's terminal.
    t.resize(132, 40).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pty.write_all(b"stty size; echo $((1+1))Y\n").await.unwrap();
    let said = until(&pty, &mut shown, "2Y").await;
    assert!(said.contains("40 132"), "{said:?}");
    // Ctrl-C interrupts the shell's foreground program.
    pty.write_all(b"sleep 1000\n").await.unwrap();
    let t0 = Instant::now();
    while !running(&s, "sleep 1000") {
        assert!(t0.elapsed() < Duration::from_secs(10), "sleep never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pty.write_all(b"\x03").await.unwrap();
    pty.write_all(b"echo $((3+3))Z\n").await.unwrap();
    until(&pty, &mut shown, "6Z").await;
    assert!(!running(&s, "sleep 1000"), "Ctrl-C did not interrupt it");
    // Its exit code; then the terminal reads its end.
    pty.write_all(b"exit 5\n").await.unwrap();
    assert_eq!(t.wait().await.unwrap(), 5);
    let mut buf = [0u8; 1024];
    let t0 = Instant::now();
    while pty.read(&mut buf).await.unwrap() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no end");
    }

    // Hanging up ends a shell at once ...
    let mut t = open(&node, &s, &["sh"]).await;
    let pty = t.pty();
    pty.write_all(b"echo $((5+5))H\n").await.unwrap();
    until(&pty, &mut String::new(), "10H").await;
    let t0 = Instant::now();
    let code = t.end().await.unwrap();
    assert!(t0.elapsed() < HANGUP_GRACE, "{:?}", t0.elapsed());
    assert_eq!(code, 128 + 1, "ended by SIGHUP");
    // ... and kills a program that ignores it, after the grace.
    let mut t = open(
        &node,
        &s,
        &["sh", "-c", "trap '' HUP; echo $((7*6))R; exec sleep 999"],
    )
    .await;
    until(&t.pty(), &mut String::new(), "42R").await;
    let t0 = Instant::now();
    let code = t.end().await.unwrap();
    assert!(t0.elapsed() >= HANGUP_GRACE, "{:?}", t0.elapsed());
    assert!(t0.elapsed() < HANGUP_GRACE + Duration::from_secs(5));
    assert_eq!(code, 128 + 9, "killed");
    assert!(!running(&s, "sleep 999"), "it still runs");

    // A program the image does not have: runc's reason.
    let mut t = open(&node, &s, &["no-such-program"]).await;
    let err = t.wait().await.unwrap_err();
    assert!(err.to_string().contains("no-such-program"), "{err}");

    // Not on this node; no longer running.
    refused_unless_on_the_node(&node, &s.instance, |id| {
        let agent = node.agent.clone();
        async move { agent.terminal(&id, &request(&["sh"])).await }
    })
    .await;
}

#[tokio::test]
async fn a_terminal_in_an_instance_in_a_user_namespace() {
    a_terminal_in_an_instance(true).await;
}

#[tokio::test]
async fn a_terminal_in_an_instance_run_as_the_hosts_root() {
    a_terminal_in_an_instance(false).await;
}

/// Kills (SIGKILL) the `runc` processes whose command line holds every
/// one of `needles` (the instance's id among them: tests running beside
/// this one have runc processes of their own): what an agent's death does
/// to the runc it was waiting on, minus the agent.
fn kill_runc_with(needles: &[&str]) -> usize {
    let mut killed = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("runc ") && needles.iter().all(|n| cmd.contains(n)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed += 1;
        }
    }
    killed
}

#[tokio::test]
async fn what_a_dead_agents_commands_left_running_is_killed_when_the_next_agent_adopts_the_instance(
) {
    let mut node = Node::start_tuned(|c| c.user_namespace = None).await;
    let img = node
        .image(&busybox_image(
            json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
        ))
        .await;
    let s = spec(&img, "/bin/busybox sleep 600");
    node.agent.run_instance(s.clone()).await.unwrap();
    // A command and a terminal, each running a program that ignores
    // hang-ups, when the agent "dies": its runc processes are killed and
    // nothing of the agent's own cleanup runs.
    let exec = {
        let (agent, id) = (node.agent.clone(), s.instance.clone());
        tokio::spawn(async move {
            let req = berth_agent::exec::ExecRequest {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "trap '' HUP; exec sleep 4545".into(),
                ],
                stdin: Vec::new(),
                timeout: Duration::from_secs(600),
                output_limit: 1000,
            };
            agent.exec(&id, &req).await
        })
    };
    let t = open(&node, &s, &["sh", "-c", "trap '' HUP; exec sleep 4646"]).await;
    let t0 = Instant::now();
    while !(running(&s, "sleep 4545") && running(&s, "sleep 4646")) {
        assert!(t0.elapsed() < Duration::from_secs(10), "never both ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec.abort();
    std::mem::forget(t);
    let id = s.instance.to_string();
    assert_eq!(kill_runc_with(&[&id, "tty-"]), 1);
    // (The aborted exec's runc may be gone already: killed on drop.)
    kill_runc_with(&[&id, "exec-"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        running(&s, "sleep 4545") && running(&s, "sleep 4646"),
        "both outlive their runc, as after an agent's death"
    );
    let bundle = berth_agent::bundle::InstanceDir::new(&node.cfg.state_dir, &s.instance).bundle();
    let leftovers = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("exec-") || n.starts_with("tty-"))
            .collect()
    };
    assert!(
        !leftovers(&bundle).is_empty(),
        "the dead agent's files are there"
    );

    // The next agent adopts the instance and ends them.
    node.agent.detach().await;
    let (agent, events) =
        berth_tests::agent::start_agent(&node.cfg, &node.client, &node.subjects, "runc").await;
    node.agent = agent;
    node.events = events;
    let t0 = Instant::now();
    while running(&s, "sleep 4545") || running(&s, "sleep 4646") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still running after adoption"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leftovers(&bundle), Vec::<String>::new());
    // The instance itself runs on.
    assert!(running(&s, "sleep 600"));
}

//! Terminals in the node's instances over the bus (`<prefix>.shell.<node>`
//! and each session's `.in`/`.out`): the node opens one for an instance
//! placed on it for the service named and refuses — before anything runs —
//! another service's, an invalid session name or command; a session whose
//! input loses a message, or that hears nothing from the control plane
//! for its idle limit, ends saying so and hangs up on its program (a
//! program that ignores the hang-up is killed).
//!
//! `bench_terminal` (ignored; run by hand, see BENCHMARKS.md) measures a
//! keystroke's round trip and output throughput through the node.

use std::time::{Duration, Instant};

use berth_schemas::commands::{
    ExecFailure, ShellInput, ShellInputEvent, ShellOutput, ShellOutputEvent, ShellReply,
    ShellRequest, SHELL_IDLE_SECS, SHELL_WINDOW,
};
use berth_schemas::ids::{InstanceId, NodeId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_tests::node::World;
use data_encoding::BASE64;
use futures::StreamExt;

use crate::support::{count_of, exec, fast_checks, run, service, spec, start_node, stop, Running};

/// One session, as the control plane holds it.
struct Session {
    client: async_nats::Client,
    input: String,
    output: async_nats::Subscriber,
    next_in: u64,
    next_out: u64,
}

fn request(service: &ServiceId, instance: &InstanceId, command: &[&str]) -> ShellRequest {
    ShellRequest {
        service: service.clone(),
        instance: instance.clone(),
        command: command.iter().map(|s| s.to_string()).collect(),
        session: format!("{:032x}", rand::random::<u128>()),
        cols: 80,
        rows: 24,
    }
}

/// Asks `node` to open `req`: its answer, and the session when it opened.
async fn open(w: &World, node: &NodeId, req: &ShellRequest) -> (ShellReply, Option<Session>) {
    let subjects = w.store.subjects();
    let output = w
        .client
        .subscribe(subjects.shell_output(node, &req.session))
        .await
        .unwrap();
    let payload = rmp_serde::to_vec_named(req).unwrap();
    for _ in 0..100 {
        match w
            .client
            .request(subjects.shell(node), payload.clone().into())
            .await
        {
            Ok(msg) => {
                let reply: ShellReply = rmp_serde::from_slice(&msg.payload).unwrap();
                let session = (reply == ShellReply::Started).then(|| Session {
                    client: w.client.clone(),
                    input: subjects.shell_input(node, &req.session),
                    output,
                    next_in: 1,
                    next_out: 1,
                });
                return (reply, session);
            }
            // The node subscribes as it starts.
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the node never answered")
}

impl Session {
    async fn send_as(&mut self, seq: u64, event: ShellInputEvent) {
        let payload = rmp_serde::to_vec_named(&ShellInput { seq, event }).unwrap();
        self.client
            .publish(self.input.clone(), payload.into())
            .await
            .unwrap();
    }

    async fn send(&mut self, event: ShellInputEvent) {
        self.send_as(self.next_in, event).await;
        self.next_in += 1;
    }

    async fn type_in(&mut self, text: &str) {
        let data = BASE64.encode(text.as_bytes());
        self.send(ShellInputEvent::Data { data }).await;
    }

    /// The next message (in order, acknowledged as a client does).
    async fn next(&mut self, within: Duration) -> ShellOutputEvent {
        let msg = tokio::time::timeout(within, self.output.next())
            .await
            .unwrap_or_else(|_| panic!("nothing from the node within {within:?}"))
            .unwrap();
        let out: ShellOutput = rmp_serde::from_slice(&msg.payload).unwrap();
        assert_eq!(out.seq, self.next_out, "output numbered without gaps");
        self.next_out += 1;
        if out.seq.is_multiple_of(SHELL_WINDOW / 4) {
            self.send(ShellInputEvent::Ack { upto: out.seq }).await;
        }
        out.event
    }

    /// What the terminal shows until `marker` (computed by the shell, so
    /// the echo of the typed line never matches).
    async fn until(&mut self, marker: &str) -> String {
        let mut shown = String::new();
        while !shown.contains(marker) {
            match self.next(Duration::from_secs(10)).await {
                ShellOutputEvent::Data { data } => shown.push_str(&String::from_utf8_lossy(
                    &BASE64.decode(data.as_bytes()).unwrap(),
                )),
                ShellOutputEvent::Ping => {}
                other => panic!("{other:?} before {marker:?}: {shown:?}"),
            }
        }
        shown
    }

    /// The session's last message, skipping what the terminal shows.
    async fn last(&mut self, within: Duration) -> ShellOutputEvent {
        let deadline = Instant::now() + within;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                ShellOutputEvent::Data { .. } | ShellOutputEvent::Ping => {}
                last => return last,
            }
        }
    }
}

fn failure(reply: &ShellReply) -> Option<ExecFailure> {
    match reply {
        ShellReply::Failed { reason, .. } => Some(*reason),
        ShellReply::Started => None,
    }
}

async fn worker(w: &World) -> (Running, ServiceId, InstanceId) {
    let node = start_node(w, fast_checks()).await;
    let (svc, dep) = service(w, ServiceType::BackgroundWorker, None).await;
    let s = spec(w, &svc, &dep, "sleep 600", None);
    run(w, &node.id, &s).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &s.instance, "instance_started") == 1
    })
    .await;
    (node, svc, s.instance)
}

/// Stops the instance, then the node.
async fn finish(w: &World, node: Running, svc: &ServiceId, instance: &InstanceId) {
    stop(w, &node.id, svc, instance).await;
    w.wait_events(svc, Duration::from_secs(30), |ev| {
        count_of(ev, instance, "instance_stopped") == 1
    })
    .await;
    node.stop().await;
}

fn still_runs(w: &World, instance: &InstanceId, needle: &str) -> bool {
    let (code, ps) = exec(w, instance, &["/bin/busybox", "ps"]);
    // A `ps` that did not run lists nothing: that is no proof of absence.
    assert_eq!(code, 0, "{ps}");
    ps.contains(needle)
}

#[tokio::test]
async fn a_terminal_opens_for_the_nodes_own_instance_and_ends_when_its_input_loses_a_message() {
    let w = World::start().await;
    let (node, svc, instance) = worker(&w).await;

    // Refused before anything runs.
    let (reply, _) = open(
        &w,
        &node.id,
        &request(&ServiceId::generate(), &instance, &["sh"]),
    )
    .await;
    assert_eq!(failure(&reply), Some(ExecFailure::NotFound), "{reply:?}");
    let mut bad = request(&svc, &instance, &["sh"]);
    bad.session = "not.a-session".into();
    let (reply, _) = open(&w, &node.id, &bad).await;
    assert_eq!(failure(&reply), Some(ExecFailure::Invalid), "{reply:?}");
    let (reply, _) = open(&w, &node.id, &request(&svc, &instance, &[])).await;
    assert_eq!(failure(&reply), Some(ExecFailure::Invalid), "{reply:?}");

    // Opened: typed into, shown, resized, its exit code last.
    let (reply, s) = open(&w, &node.id, &request(&svc, &instance, &["sh"])).await;
    let mut s = s.unwrap_or_else(|| panic!("{reply:?}"));
    s.type_in("stty size; echo $((2*3))K\n").await;
    assert!(s.until("6K").await.contains("24 80"));
    s.send(ShellInputEvent::Resize { cols: 90, rows: 33 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.type_in("stty size; echo $((3*3))L\n").await;
    assert!(s.until("9L").await.contains("33 90"));
    s.type_in("exit 6\n").await;
    assert_eq!(
        s.last(Duration::from_secs(10)).await,
        ShellOutputEvent::Exited { exit_code: 6 }
    );

    // A message lost on the way in: the session ends saying so, and its
    // program (which ignores the hang-up) is killed.
    let (_, s) = open(
        &w,
        &node.id,
        &request(
            &svc,
            &instance,
            &["sh", "-c", "trap '' HUP; echo $((4*4))M; exec sleep 4141"],
        ),
    )
    .await;
    let mut s = s.unwrap();
    s.until("16M").await;
    s.send_as(3, ShellInputEvent::Ping).await;
    match s.last(Duration::from_secs(10)).await {
        ShellOutputEvent::Ended { message } => {
            assert!(message.contains("input was lost"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !still_runs(&w, &instance, "4141"),
        "the program outlived its session"
    );
    finish(&w, node, &svc, &instance).await;
}

#[tokio::test]
async fn a_session_that_hears_nothing_from_the_control_plane_ends_and_its_program_with_it() {
    let w = World::start().await;
    let (node, svc, instance) = worker(&w).await;
    let (reply, s) = open(
        &w,
        &node.id,
        &request(
            &svc,
            &instance,
            &["sh", "-c", "trap '' HUP; echo $((5*5))N; exec sleep 4242"],
        ),
    )
    .await;
    let mut s = s.unwrap_or_else(|| panic!("{reply:?}"));
    s.until("25N").await;
    // No pings, no typing: as if the API died.
    let t0 = Instant::now();
    match s.last(Duration::from_secs(SHELL_IDLE_SECS + 15)).await {
        ShellOutputEvent::Ended { message } => {
            assert!(message.contains("nothing heard"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(SHELL_IDLE_SECS - 2),
        "ended after {waited:?}, before its idle limit"
    );
    assert!(
        !still_runs(&w, &instance, "4242"),
        "the program outlived its session"
    );
    finish(&w, node, &svc, &instance).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Keystroke round trips and output throughput through the node, beside a
/// bare NATS request/reply on the same server (the floor of one hop each
/// way). `cargo test --release -p berth-node --test integration --
/// --ignored bench_terminal --nocapture` (as root).
#[tokio::test]
#[ignore]
async fn bench_terminal() {
    let keystrokes: usize = std::env::var("BENCH_KEYSTROKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let lines: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let w = World::start().await;
    let (node, svc, instance) = worker(&w).await;

    // The floor: a request answered at once by another client.
    let answering = w.nats.connect().await.unwrap();
    let mut asked = answering.subscribe("bench.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = asked.next().await {
            if let Some(r) = m.reply {
                let _ = answering.publish(r, m.payload).await;
            }
        }
    });
    w.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut floor = Vec::with_capacity(keystrokes);
    for _ in 0..keystrokes {
        let t0 = Instant::now();
        w.client.request("bench.echo", "a".into()).await.unwrap();
        floor.push(t0.elapsed());
    }

    // A keystroke: typed, echoed by the terminal, shown.
    let t_open = Instant::now();
    let (_, s) = open(&w, &node.id, &request(&svc, &instance, &["sh"])).await;
    let mut s = s.unwrap();
    s.type_in("echo $((1+1))R\n").await;
    s.until("2R").await;
    let opened = t_open.elapsed();
    let mut trips = Vec::with_capacity(keystrokes);
    for _ in 0..keystrokes {
        let t0 = Instant::now();
        s.type_in("a").await;
        s.until("a").await;
        trips.push(t0.elapsed());
    }
    s.type_in("\x15").await; // Ctrl-U: the typed line is dropped.

    // Output: the same bytes counted inside the instance (the program's
    // own speed), then shown through the terminal.
    let mb = lines;
    let produce =
        format!("busybox dd if=/dev/zero bs=1048576 count={mb} 2>/dev/null | busybox tr '\\0' x");
    let t0 = Instant::now();
    s.type_in(&format!("{produce} | busybox wc -c; echo $((2+2))T\n"))
        .await;
    s.until("4T").await;
    let inside = t0.elapsed();
    let t0 = Instant::now();
    s.type_in(&format!("{produce}; echo; echo $((3+3))U\n"))
        .await;
    let (mut bytes, mut messages) = (0usize, 0usize);
    let mut tail = String::new();
    loop {
        match s.next(Duration::from_secs(120)).await {
            ShellOutputEvent::Data { data } => {
                let b = BASE64.decode(data.as_bytes()).unwrap();
                bytes += b.len();
                messages += 1;
                tail.push_str(&String::from_utf8_lossy(&b));
                if tail.contains("6U") {
                    break;
                }
                let keep = tail.len().saturating_sub(16);
                tail.replace_range(..keep, "");
            }
            ShellOutputEvent::Ping => {}
            other => panic!("{other:?}"),
        }
    }
    let took = t0.elapsed();
    // The floor: the same through `runc exec -t` on a local terminal
    // (`script` makes it and copies it to a pipe read here), no bus.
    let runc = format!(
        "runc --root {} exec -t {} sh -c \"{}\"",
        w.runc_root().display(),
        instance,
        produce.replace('\\', "\\\\")
    );
    let t0 = Instant::now();
    let local = tokio::process::Command::new("script")
        .args(["-qfec", &runc, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let local_took = t0.elapsed();
    let local_bytes = local.stdout.len();
    floor.sort();
    trips.sort();
    println!("terminal through the node ({keystrokes} keystrokes, {mb} MiB of output):");
    println!("  opened (request → first prompt's answer shown): {opened:.1?}");
    println!(
        "  keystroke round trip: p50 {:.2?}, p99 {:.2?}; bare NATS request/reply p50 {:.2?}, p99 {:.2?}",
        percentile(&trips, 0.5),
        percentile(&trips, 0.99),
        percentile(&floor, 0.5),
        percentile(&floor, 0.99),
    );
    let size = (mb << 20) as f64 / 1e6;
    println!(
        "  output: {:.1} MB shown in {took:.2?} ({messages} messages) = {:.1} MB/s; made and counted inside in {inside:.2?} = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / took.as_secs_f64(),
        size / inside.as_secs_f64(),
    );
    println!(
        "  the same on a local terminal (script + runc exec -t, no bus): {:.1} MB in {local_took:.2?} = {:.1} MB/s",
        local_bytes as f64 / 1e6,
        local_bytes as f64 / 1e6 / local_took.as_secs_f64(),
    );
    s.type_in("exit\n").await;
    finish(&w, node, &svc, &instance).await;
}

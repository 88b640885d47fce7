//! Node-side health checks with real runc, nats-server and registry:
//! web instances get their own port and `addr` and pass an HTTP check of
//! their health check path; private services a TCP check; workers once up
//! for the grace period (never when they keep exiting); a live instance
//! whose endpoint starts failing is reported unhealthy, restarted in place
//! and healthy again; a restarted node resumes probing its adopted
//! instances without repeating facts.

use std::time::Duration;

use berth_schemas::ids::InstanceId;
use berth_schemas::model::ServiceType;
use berth_schemas::Event;

use crate::support::{
    self, addr_of, count_of, fast_checks, http_get, kinds, of, run, service, spec, start_node,
};
use berth_tests::agent::collect_logs;
use berth_tests::node::World;

/// The reason `instance` was first reported unhealthy with ("" if never).
fn unhealthy_reason(events: &[berth_schemas::Envelope], instance: &InstanceId) -> String {
    of(events, instance)
        .iter()
        .find_map(|e| match &e.event {
            Event::InstanceUnhealthy(u) => Some(u.reason.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// busybox httpd serving `dir` on `$PORT`, in the foreground.
fn httpd(prepare: &str, dir: &str) -> String {
    format!("/bin/sh -c '{prepare} exec /bin/busybox httpd -f -p $PORT -h {dir}'")
}

#[tokio::test]
async fn web_instances_get_own_ports_and_pass_http_checks() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;

    // Two instances of one web service on one node, both on PORT 10000 in
    // their own namespaces; the node publishes each on its own host port.
    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/hello.txt")).await;
    let a = spec(&w, &svc, &deploy, &httpd("", "/app"), Some(10000));
    let b = spec(&w, &svc, &deploy, &httpd("", "/app"), Some(10000));
    run(&w, &node.id, &a).await;
    run(&w, &node.id, &b).await;
    // A web service whose health check path is missing never passes.
    let (bad_svc, bad_deploy) = service(&w, ServiceType::WebService, Some("/missing")).await;
    let bad = spec(&w, &bad_svc, &bad_deploy, &httpd("", "/app"), Some(10000));
    run(&w, &node.id, &bad).await;

    let events = support::healthy_once(&w, &svc, &[&a.instance, &b.instance]).await;
    for s in [&a, &b] {
        assert_eq!(
            kinds(&events, &s.instance),
            vec!["instance_started", "instance_healthy"],
            "started, then healthy"
        );
    }
    let (addr_a, addr_b) = (
        addr_of(&events, &a.instance).expect("addr in instance_started"),
        addr_of(&events, &b.instance).expect("addr in instance_started"),
    );
    assert_ne!(addr_a, addr_b, "each instance has its own host port");
    for addr in [&addr_a, &addr_b] {
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert!(!addr.ends_with(":10000"), "a host port, not the instance's");
        let (status, body) = http_get(addr, "/hello.txt").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello\n"), "{addr}");
    }

    // The missing path: started and answering, but never healthy; once
    // failing as long as a live instance would have to, reported unhealthy
    // with the failed check (it does listen where checked: no more).
    let bad_events = w
        .wait_events(&bad_svc, Duration::from_secs(30), |ev| {
            count_of(ev, &bad.instance, "instance_started") == 1
        })
        .await;
    let bad_addr = addr_of(&bad_events, &bad.instance).unwrap();
    let (status, _) = http_get(&bad_addr, "/missing").await.unwrap();
    assert_eq!(status, 404);
    w.wait_events(&bad_svc, Duration::from_secs(30), |ev| {
        count_of(ev, &bad.instance, "instance_unhealthy") == 1
    })
    .await;
    // Once: a while later it is still the one fact since the start.
    let bad_events = w.events_after(&bad_svc, Duration::from_secs(2)).await;
    assert_eq!(
        kinds(&bad_events, &bad.instance),
        vec!["instance_started", "instance_unhealthy"]
    );
    let reason = unhealthy_reason(&bad_events, &bad.instance);
    assert!(
        reason.contains("HTTP 404") && !reason.contains("listens"),
        "{reason}"
    );

    node.stop().await;
}

/// A web app that answers only for the host names it serves (Django's
/// `ALLOWED_HOSTS`, Rails' `config.hosts`, set from
/// `RENDER_EXTERNAL_HOSTNAME` as Render's guides do) passes its health
/// checks: they ask for that name, not for the instance's address.
#[tokio::test]
async fn health_checks_ask_for_the_host_the_service_is_served_under() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/cgi-bin/h")).await;
    // A CGI answering 200 when asked for $RENDER_EXTERNAL_HOSTNAME, else
    // 400 (as Django answers a host it does not allow).
    let cgi = r##"mkdir -p /tmp/w/cgi-bin; printf "#!/bin/sh\n[ \"\$HTTP_HOST\" = \"\$RENDER_EXTERNAL_HOSTNAME\" ] && echo \"Status: 200 OK\" || echo \"Status: 400 Bad Request\"\necho\necho \"host \$HTTP_HOST\"\n" > /tmp/w/cgi-bin/h; chmod +x /tmp/w/cgi-bin/h;"##;
    let s = spec(&w, &svc, &deploy, &httpd(cgi, "/tmp/w"), Some(10000));
    run(&w, &node.id, &s).await;
    let events = w
        .wait_events(&svc, Duration::from_secs(30), |ev| {
            count_of(ev, &s.instance, "instance_healthy") == 1
                || count_of(ev, &s.instance, "instance_unhealthy") == 1
        })
        .await;
    let addr = addr_of(&events, &s.instance).expect("a web instance's host port");
    // Asked by its address, the app refuses: the check passed by name.
    let (status, body) = http_get(&addr, "/cgi-bin/h").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        kinds(&events, &s.instance),
        ["instance_started", "instance_healthy"],
        "{:?}",
        (count_of(&events, &s.instance, "instance_unhealthy") > 0)
            .then(|| unhealthy_reason(&events, &s.instance))
    );
    node.stop().await;
}

/// Without a health check path a web instance is healthy once it listens
/// on its port, as on Render: an API with no page at `/` (404 there)
/// goes live.
#[tokio::test]
async fn a_web_service_without_a_health_check_path_is_healthy_once_it_listens() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, deploy) = service(&w, ServiceType::WebService, None).await;
    // /tmp/empty has no index: `GET /` answers 404.
    let s = spec(
        &w,
        &svc,
        &deploy,
        &httpd("mkdir -p /tmp/empty;", "/tmp/empty"),
        Some(10000),
    );
    run(&w, &node.id, &s).await;
    let events = support::healthy_once(&w, &svc, &[&s.instance]).await;
    let addr = addr_of(&events, &s.instance).unwrap();
    let (status, _) = http_get(&addr, "/").await.unwrap();
    assert_eq!(status, 404, "no page at /, healthy all the same");
    assert_eq!(count_of(&events, &s.instance, "instance_unhealthy"), 0);
    node.stop().await;
}

#[tokio::test]
async fn private_services_pass_tcp_and_workers_pass_after_grace() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;

    // A TCP server that answers nothing: an HTTP check would never pass.
    let (private, p_deploy) = service(&w, ServiceType::PrivateService, None).await;
    let tcp = spec(
        &w,
        &private,
        &p_deploy,
        "/bin/sh -c 'exec /bin/busybox nc -ll -p $PORT -e /bin/true'",
        Some(10000),
    );
    run(&w, &node.id, &tcp).await;

    let (worker, wk_deploy) = service(&w, ServiceType::BackgroundWorker, None).await;
    let steady = spec(&w, &worker, &wk_deploy, "/bin/sleep 1000", None);
    let crashing = spec(
        &w,
        &worker,
        &wk_deploy,
        "/bin/sh -c 'echo going down; exit 3'",
        None,
    );
    let mut logs = w.subscribe_logs(&worker).await;
    run(&w, &node.id, &steady).await;
    run(&w, &node.id, &crashing).await;

    let events = support::healthy_once(&w, &private, &[&tcp.instance]).await;
    let addr = addr_of(&events, &tcp.instance).expect("private services have an addr");
    tokio::net::TcpStream::connect(&addr)
        .await
        .expect("the addr accepts connections");

    let events = support::healthy_once(&w, &worker, &[&steady.instance]).await;
    let mine = of(&events, &steady.instance);
    assert_eq!(
        kinds(&events, &steady.instance),
        vec!["instance_started", "instance_healthy"]
    );
    assert_eq!(
        addr_of(&events, &steady.instance),
        None,
        "workers listen nowhere"
    );
    let up_for = (mine[1].time - mine[0].time).to_std().unwrap();
    assert!(
        up_for >= Duration::from_millis(900),
        "healthy only after the 1 s grace, was {up_for:?}"
    );

    // The worker that exits at once has been started and restarted a few
    // times by now (300 ms backoff doubling) and never passed.
    let events = w.events_after(&worker, Duration::from_secs(3)).await;
    let k = kinds(&events, &crashing.instance);
    assert!(k.contains(&"instance_exited"), "{k:?}");
    assert_eq!(
        count_of(&events, &crashing.instance, "instance_healthy"),
        0,
        "{k:?}"
    );
    // Its logs say what it runs and how each run ended, each after the
    // run's own output.
    let exited = "==> Exited with status 3";
    let lines = collect_logs(&mut logs, Duration::from_secs(10), |l| {
        l.instance.as_ref() == Some(&crashing.instance) && l.line == exited
    })
    .await;
    let mine = support::lines_of(&lines, &crashing.instance);
    assert_eq!(
        mine[..3],
        [
            "==> Running: /bin/sh -c 'echo going down; exit 3'",
            "going down",
            exited
        ],
        "{mine:?}"
    );

    node.stop().await;
}

/// A starting instance is probed at once and then soon again, not after
/// the starting interval: with a 5 s interval, a web server that listens
/// within milliseconds is healthy well within a second of its start, and a
/// worker right when its 1 s grace period is over.
#[tokio::test]
async fn starting_instances_are_probed_at_once_not_after_the_interval() {
    let w = World::start().await;
    let mut checks = fast_checks();
    checks.health.starting_interval = Duration::from_secs(5);
    let node = start_node(&w, checks).await;

    let (web, web_deploy) = service(&w, ServiceType::WebService, Some("/hello.txt")).await;
    let h = spec(&w, &web, &web_deploy, &httpd("", "/app"), Some(10000));
    run(&w, &node.id, &h).await;
    let (worker, wk_deploy) = service(&w, ServiceType::BackgroundWorker, None).await;
    let wk = spec(&w, &worker, &wk_deploy, "/bin/sleep 1000", None);
    run(&w, &node.id, &wk).await;

    let after_start = |events: &[berth_schemas::Envelope],
                       s: &berth_schemas::commands::NodeRunSpec| {
        let mine = of(events, &s.instance);
        assert_eq!(
            mine.iter().map(|e| e.event.type_name()).collect::<Vec<_>>(),
            vec!["instance_started", "instance_healthy"]
        );
        (mine[1].time - mine[0].time).to_std().unwrap()
    };
    let events = support::healthy_once(&w, &web, &[&h.instance]).await;
    let web_after = after_start(&events, &h);
    let events = support::healthy_once(&w, &worker, &[&wk.instance]).await;
    let worker_after = after_start(&events, &wk);
    eprintln!("web healthy {web_after:?} after its start, worker {worker_after:?}");
    assert!(
        web_after < Duration::from_secs(1),
        "web: probed at once and soon again, not after 5 s: {web_after:?}"
    );
    assert!(
        worker_after >= Duration::from_millis(900) && worker_after < Duration::from_millis(2500),
        "worker: healthy when its 1 s grace is over: {worker_after:?}"
    );
    node.stop().await;
}

/// A web image that listens on its own fixed port and ignores `PORT`, or
/// listens on loopback only, never passes; after failing as long as a live
/// instance would have to, it is reported unhealthy saying what it listens
/// on instead (what the deploy that gives up on it then says), and is not
/// restarted in place as a live instance would be.
#[tokio::test]
async fn a_start_that_never_passes_says_what_it_listens_on_instead() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/")).await;
    let elsewhere = spec(
        &w,
        &svc,
        &deploy,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p 3000 -h /app'",
        Some(10000),
    );
    let loopback = spec(
        &w,
        &svc,
        &deploy,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p 127.0.0.1:10000 -h /app'",
        Some(10000),
    );
    let mut logs = w.subscribe_logs(&svc).await;
    run(&w, &node.id, &elsewhere).await;
    run(&w, &node.id, &loopback).await;
    let says = [
        (
            &elsewhere,
            "the instance listens on 3000, not 10000: set PORT=3000",
        ),
        (&loopback, "listens on 127.0.0.1 port 10000 only"),
    ];
    let events = w
        .wait_events(&svc, Duration::from_secs(60), |ev| {
            says.iter()
                .all(|(s, _)| count_of(ev, &s.instance, "instance_unhealthy") >= 1)
        })
        .await;
    for (s, want) in says {
        let reason = unhealthy_reason(&events, &s.instance);
        assert!(reason.contains(want), "{want} in {reason}");
        assert!(
            reason.to_lowercase().contains("connection refused"),
            "the failed check: {reason}"
        );
        // Said where people look first, too: in the service's logs.
        let said = format!("==> Not healthy: {reason}");
        let lines = collect_logs(&mut logs, Duration::from_secs(10), |l| l.line == said).await;
        assert!(
            support::lines_of(&lines, &s.instance).contains(&said),
            "{said} in {lines:?}"
        );
    }
    // Past the live restart limit (6 s of failing): still not restarted.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let events = w.wait_events(&svc, Duration::from_secs(1), |_| true).await;
    for (s, _) in says {
        let k = kinds(&events, &s.instance);
        assert_eq!(
            count_of(&events, &s.instance, "server_restarted"),
            0,
            "{k:?}"
        );
        assert_eq!(
            count_of(&events, &s.instance, "instance_unhealthy"),
            1,
            "{k:?}"
        );
    }
}

/// An image that listens on its own fixed port, in a service that sets no
/// `PORT`, is served on that port once it has listened there alone for a
/// while, as Render detects it: a web instance through its host port
/// (whose rule moves), a private one at its address; its logs say so, and
/// a restarted node goes on with it. One listening on two ports is not
/// guessed at: it stays unhealthy, saying both.
#[tokio::test]
async fn the_one_port_an_image_listens_on_is_detected_when_berth_chose_the_port() {
    let w = World::start().await;
    let mut checks = fast_checks();
    checks.health.detect_after = Duration::from_millis(300);
    let node = start_node(&w, checks.clone()).await;
    let (web, web_deploy) = service(&w, ServiceType::WebService, Some("/hello.txt")).await;
    let (private, p_deploy) = service(&w, ServiceType::PrivateService, None).await;
    let fixed = spec(
        &w,
        &web,
        &web_deploy,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p 3000 -h /app'",
        Some(10000),
    );
    let two = spec(
        &w,
        &web,
        &web_deploy,
        "/bin/sh -c '/bin/busybox httpd -p 3000 -h /app; exec /bin/busybox httpd -f -p 3001 -h /app'",
        Some(10000),
    );
    let db = spec(
        &w,
        &private,
        &p_deploy,
        "/bin/sh -c 'exec /bin/busybox nc -ll -p 6379 -e /bin/true'",
        Some(10000),
    );
    // Where the service says PORT, the service is taken at its word.
    let mut told = spec(
        &w,
        &web,
        &web_deploy,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p 3002 -h /app'",
        Some(10000),
    );
    support::with_env(&w, &node.id, &mut told, &[("PORT", "10000")]).await;
    let mut web_logs = w.subscribe_logs(&web).await;
    let mut private_logs = w.subscribe_logs(&private).await;
    for s in [&fixed, &two, &db, &told] {
        run(&w, &node.id, s).await;
    }
    let events = w
        .wait_events(&web, Duration::from_secs(60), |ev| {
            count_of(ev, &fixed.instance, "instance_healthy") == 1
                && count_of(ev, &two.instance, "instance_unhealthy") == 1
                && count_of(ev, &told.instance, "instance_unhealthy") == 1
        })
        .await;
    assert_eq!(count_of(&events, &told.instance, "instance_healthy"), 0);
    let reason = unhealthy_reason(&events, &told.instance);
    assert!(
        reason.contains("the instance listens on 3002, not 10000: set PORT=3002"),
        "{reason}"
    );
    let addr = addr_of(&events, &fixed.instance).expect("a web instance's host port");
    let (status, body) = http_get(&addr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200, "served through its host port: {body}");
    let reason = unhealthy_reason(&events, &two.instance);
    assert!(
        reason.contains("the instance listens on 3000, 3001, not 10000"),
        "{reason}"
    );
    assert_eq!(count_of(&events, &two.instance, "instance_healthy"), 0);
    let said = "==> Detected service running on port 3000: served there, as the service sets no PORT (berth expected 10000; set PORT=3000 to say so)";
    let lines = collect_logs(&mut web_logs, Duration::from_secs(10), |l| l.line == said).await;
    assert!(
        support::lines_of(&lines, &fixed.instance).contains(&said.to_owned()),
        "{lines:?}"
    );
    let events = support::healthy_once(&w, &private, &[&db.instance]).await;
    assert_eq!(
        kinds(&events, &db.instance),
        [
            "instance_started",
            "instance_port_detected",
            "instance_healthy"
        ]
    );
    let lines = collect_logs(&mut private_logs, Duration::from_secs(10), |l| {
        l.line
            .starts_with("==> Detected service running on port 6379")
    })
    .await;
    assert!(
        support::lines_of(&lines, &db.instance)
            .iter()
            .any(|l| l.starts_with("==> Detected service running on port 6379")),
        "{lines:?}"
    );

    // The detection is recorded: the service's next instance is checked
    // and published at 3000 from its start, nothing detected again.
    let next = spec(
        &w,
        &web,
        &web_deploy,
        "/bin/sh -c 'exec /bin/busybox httpd -f -p 3000 -h /app'",
        Some(10000),
    );
    run(&w, &node.id, &next).await;
    let events = support::healthy_once(&w, &web, &[&next.instance]).await;
    assert_eq!(
        kinds(&events, &next.instance),
        ["instance_started", "instance_healthy"]
    );
    let next_addr = addr_of(&events, &next.instance).expect("a web instance's host port");
    let (status, body) = http_get(&next_addr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200, "served at 3000 from its start: {body}");

    // A node restart keeps the port: still served, still healthy, nothing
    // recorded again.
    node.stop().await;
    let node = start_node(&w, checks).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = http_get(&addr, "/hello.txt").await.unwrap();
    assert_eq!(status, 200);
    let events = w.wait_events(&web, Duration::from_secs(1), |_| true).await;
    assert_eq!(
        kinds(&events, &fixed.instance),
        [
            "instance_started",
            "instance_port_detected",
            "instance_healthy"
        ]
    );
    node.stop().await;
}

#[tokio::test]
async fn failing_live_instance_is_unhealthy_then_restarted_and_healthy_again() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;

    // Healthy for ~3 s after each start, then its health file is removed.
    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/h/ok")).await;
    let prepare = "mkdir -p /tmp/w/h; echo ok > /tmp/w/h/ok; (sleep 3; rm /tmp/w/h/ok) &";
    let s = spec(&w, &svc, &deploy, &httpd(prepare, "/tmp/w"), Some(10000));
    let mut logs = w.subscribe_logs(&svc).await;
    run(&w, &node.id, &s).await;

    let events = w
        .wait_events(&svc, Duration::from_secs(90), |ev| {
            count_of(ev, &s.instance, "instance_healthy") >= 2
        })
        .await;
    let mine = of(&events, &s.instance);
    let k: Vec<_> = mine.iter().map(|e| e.event.type_name()).collect();
    let pos = |name: &str, nth: usize| {
        k.iter()
            .enumerate()
            .filter(|(_, t)| **t == name)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {name} #{nth} in {k:?}"))
    };
    let (healthy, unhealthy, restarted, healthy_again) = (
        pos("instance_healthy", 0),
        pos("instance_unhealthy", 0),
        pos("server_restarted", 0),
        pos("instance_healthy", 1),
    );
    assert!(
        pos("instance_started", 0) < healthy
            && healthy < unhealthy
            && unhealthy < restarted
            && restarted < healthy_again,
        "{k:?}"
    );
    let Event::InstanceUnhealthy(u) = &mine[unhealthy].event else {
        unreachable!()
    };
    assert!(u.reason.contains("404"), "reason says why: {}", u.reason);
    // Its process ended because the node restarted it, and the exit says
    // so (the timeline reads "restarted for failing its health checks").
    let exit = pos("instance_exited", 0);
    assert!(unhealthy < exit && exit < restarted, "{k:?}");
    let Event::InstanceExited(x) = &mine[exit].event else {
        unreachable!()
    };
    assert!(x.restarted && !x.oom_killed, "{x:?}");
    // The file goes 3 s after the start: unhealthy once failing 1.5 s,
    // restarted once failing 6 s (measured from the recorded start, which
    // is a moment after the process began).
    let t = |i: usize| mine[i].time;
    let started = pos("instance_started", 0);
    let to_unhealthy = (t(unhealthy) - t(started)).to_std().unwrap();
    let to_restart = (t(restarted) - t(started)).to_std().unwrap();
    eprintln!(
        "healthy after {:?}, unhealthy after {to_unhealthy:?}, restarted after {to_restart:?}, healthy again after {:?} (from the start)",
        (t(healthy) - t(started)).to_std().unwrap(),
        (t(healthy_again) - t(started)).to_std().unwrap()
    );
    assert!(
        to_unhealthy >= Duration::from_millis(4200),
        "unhealthy only after failing 1.5 s: {to_unhealthy:?}"
    );
    assert!(
        to_restart >= Duration::from_millis(8700),
        "restarted only after failing 6 s: {to_restart:?}"
    );
    // Only once: no second restart was needed before it passed again.
    assert_eq!(count_of(&events, &s.instance, "server_restarted"), 1);
    // Same address after the restart in place.
    let addr = addr_of(&events, &s.instance).unwrap();
    let (status, body) = http_get(&addr, "/h/ok").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Its logs tell the same story in berth's own lines.
    let passes = "==> Healthy: GET /h/ok answers 2xx or 3xx on port 10000";
    let lines = collect_logs(&mut logs, Duration::from_secs(10), |_| false).await;
    let said: Vec<String> = support::lines_of(&lines, &s.instance)
        .into_iter()
        .filter(|l| l.starts_with("==> "))
        .map(|l| {
            // The failing check's reason and the command's text vary.
            ["==> Running: ", "==> Not healthy: "]
                .into_iter()
                .find(|p| l.starts_with(p))
                .map_or(l.clone(), str::to_owned)
        })
        .collect();
    // (It goes round again after that: its file goes 3 s after each start.)
    assert_eq!(
        said.get(..6).unwrap_or(&said),
        [
            "==> Running: ",
            passes,
            "==> Not healthy: ",
            "==> Restarted for failing its health checks (exited with status 143)",
            "==> Running: ",
            passes
        ],
        "{lines:?}"
    );

    node.stop().await;
}

/// A process that crashes and is started again by the agent is reported
/// healthy again: the log has it exited, then merely running.
#[tokio::test]
async fn a_crashed_instance_is_reported_healthy_again_after_its_restart() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/hello.txt")).await;
    let s = spec(&w, &svc, &deploy, &httpd("", "/app"), Some(10000));
    run(&w, &node.id, &s).await;
    support::healthy_once(&w, &svc, &[&s.instance]).await;
    // The whole container dies (its init killed), as in a crash.
    support::kill_container(&w, &s.instance);
    support::healthy_again(&w, &svc, &s.instance).await;
    node.stop().await;
}

#[tokio::test]
async fn restarted_node_resumes_probing_without_repeating_facts() {
    let w = World::start().await;
    let mut checks = fast_checks();
    // No restart in place during this test: only the report matters.
    checks.health.restart_after = Duration::from_secs(600);
    let node = start_node(&w, checks.clone()).await;

    let (svc, deploy) = service(&w, ServiceType::WebService, Some("/h/ok")).await;
    let prepare = "mkdir -p /tmp/w/h; echo ok > /tmp/w/h/ok; (sleep 6; rm /tmp/w/h/ok) &";
    let s = spec(&w, &svc, &deploy, &httpd(prepare, "/tmp/w"), None);
    run(&w, &node.id, &s).await;
    support::healthy_once(&w, &svc, &[&s.instance]).await;
    // The node process goes away; the container keeps running.
    node.stop().await;
    let node = start_node(&w, checks).await;

    // Only the new process can notice the failure.
    let events = w
        .wait_events(&svc, Duration::from_secs(30), |ev| {
            count_of(ev, &s.instance, "instance_unhealthy") == 1
        })
        .await;
    assert_eq!(
        kinds(&events, &s.instance),
        vec!["instance_started", "instance_healthy", "instance_unhealthy"],
        "healthy recorded once across the node restart"
    );

    node.stop().await;
}

//! Images as people build them, not made to fit berth: each is laid out
//! the way its official image is (entrypoint script, users, paths, the
//! port it exposes, its stop signal), from this machine's own binaries.

use std::time::{Duration, Instant};

use berth_schemas::ids::{OwnerId, UserId};
use berth_schemas::model::ServiceType;
use berth_tests::agent::{busybox_base, collect_logs};
use berth_tests::layers;
use berth_tests::layers::{Comp, Entry};
use berth_tests::node::{World, REPO};
use serde_json::json;

use crate::support::{
    count_of, exec, fast_checks, http_get, lines_of, run, service_of, spec, start_node, stop,
};

/// The official nginx image's layout: `/docker-entrypoint.sh` then
/// `nginx -g 'daemon off;'`, the master as root and its workers as user
/// `nginx` (101), `EXPOSE 80`, `STOPSIGNAL SIGQUIT`, the logs linked to
/// the container's stdout and stderr. (Debian's nginx binary and its
/// libraries; its temp paths under `/var/lib/nginx`.)
fn nginx_image() -> berth_tests::image::Image {
    let mut runtime =
        layers::host_program("/usr/sbin/nginx").expect("nginx (scripts/install-deps)");
    let conf = br#"user  nginx;
worker_processes  2;
error_log  /var/log/nginx/error.log notice;
pid        /var/run/nginx.pid;
events { worker_connections  1024; }
http {
    access_log  /var/log/nginx/access.log;
    server {
        listen       80;
        location / { root /usr/share/nginx/html; index index.html; }
    }
}
"#;
    let entrypoint = br#"#!/bin/sh
set -e
if [ "$1" = "nginx" ]; then
    echo "$0: Configuration complete; ready for start up"
fi
exec "$@"
"#;
    for dir in [
        "etc/nginx",
        "var",
        "var/log",
        "var/log/nginx",
        "var/lib",
        "var/lib/nginx",
        "var/cache",
        "var/cache/nginx",
        "var/run",
        "usr/share",
        "usr/share/nginx",
        "usr/share/nginx/html",
    ] {
        runtime.push(Entry::dir(dir));
    }
    runtime.extend([
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx user:/nonexistent:/bin/false\n",
        ),
        Entry::file("etc/group", b"root:x:0:\nnginx:x:101:\n"),
        Entry::file("etc/nginx/nginx.conf", conf),
        Entry::symlink("var/log/nginx/access.log", "/dev/stdout"),
        Entry::symlink("var/log/nginx/error.log", "/dev/stderr"),
        Entry::file(
            "usr/share/nginx/html/index.html",
            b"<h1>Welcome to nginx!</h1>\n",
        ),
        Entry::file("docker-entrypoint.sh", entrypoint).mode(0o755),
    ]);
    let config = json!({
        "Entrypoint": ["/docker-entrypoint.sh"],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "ExposedPorts": { "80/tcp": {} },
        "StopSignal": "SIGQUIT",
    });
    layers::image_with_config(
        vec![
            layers::layer(&busybox_base(), Comp::Gzip).unwrap(),
            layers::layer(&runtime, Comp::Gzip).unwrap(),
        ],
        config,
    )
    .unwrap()
}

/// nginx as its official image runs it, deployed as a web service that
/// sets no `PORT`: served on the port it exposes (80), its workers
/// running as `nginx`, its access log in the service's logs; a stop sends
/// the image's SIGQUIT, and nginx finishes gracefully, well inside the
/// shutdown delay (SIGTERM would be nginx's fast, dropping shutdown).
#[tokio::test]
async fn nginx_as_its_official_image_runs_it() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let image = nginx_image();
    w.registry.push_image(REPO, "nginx", &image).await.unwrap();
    let owner = OwnerId::User(UserId::generate());
    let (svc, dep) = service_of(
        &w,
        &owner,
        "web",
        ServiceType::WebService,
        None,
        &image.digest,
    )
    .await;
    let mut s = spec(&w, &svc, &dep, "", Some(10000));
    s.command = None;
    s.digest = image.digest.clone();
    s.shutdown_delay_secs = 20;
    let mut logs = w.subscribe_logs(&svc).await;
    run(&w, &node.id, &s).await;
    let events = w
        .wait_events(&svc, Duration::from_secs(60), |ev| {
            count_of(ev, &s.instance, "instance_healthy") == 1
        })
        .await;
    let addr = crate::support::addr_of(&events, &s.instance).expect("a published port");
    let (status, body) = http_get(&addr, "/").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "<h1>Welcome to nginx!</h1>\n"),
        "served on the port the image exposes"
    );
    let (code, env) = exec(&w, &s.instance, &["/bin/busybox", "env"]);
    assert_eq!(code, 0, "{env}");
    assert!(env.lines().any(|l| l == "PORT=80"), "{env}");
    // The master as root, its workers as the image's `nginx` user.
    let (code, ps) = exec(&w, &s.instance, &["/bin/busybox", "ps", "-o", "user,args"]);
    assert_eq!(code, 0, "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.starts_with("root") && l.contains("nginx: master process")),
        "{ps}"
    );
    assert_eq!(
        ps.lines()
            .filter(|l| l.starts_with("nginx") && l.contains("nginx: worker process"))
            .count(),
        2,
        "{ps}"
    );

    let seen = collect_logs(&mut logs, Duration::from_secs(10), |l| {
        l.line.contains("\"GET / HTTP/1.0\" 200")
    })
    .await;
    let lines = lines_of(&seen, &s.instance);
    assert!(
        lines
            .iter()
            .any(|l| l == "/docker-entrypoint.sh: Configuration complete; ready for start up"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("\"GET / HTTP/1.0\" 200")),
        "the access log, linked to stdout, is in the service's logs: {lines:?}"
    );

    let t0 = Instant::now();
    stop(&w, &node.id, &svc, &s.instance).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &s.instance, "instance_stopped") == 1
    })
    .await;
    let took = t0.elapsed();
    let seen = collect_logs(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("==> Stopped")
    })
    .await;
    let lines = lines_of(&seen, &s.instance);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("signal 3 (SIGQUIT) received") && l.contains("shutting down")),
        "nginx was asked for its graceful shutdown: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("==> Stopped on request: exited with status 0"),
        "{lines:?}"
    );
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    node.stop().await;
}

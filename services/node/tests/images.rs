//! Images as people build them, not made to fit berth: each is laid out
//! the way its official image is (entrypoint script, users, paths, the
//! port it exposes, its stop signal), from this machine's own binaries.

use std::time::{Duration, Instant};

use berth_agent::bundle::UserNamespace;
use berth_node::{NodeOptions, Userns};
use berth_schemas::commands::NodeRunSpec;
use berth_schemas::ids::{OwnerId, ServiceId, UserId};
use berth_schemas::model::{Plan, ServiceType};
use berth_schemas::Envelope;
use berth_tests::agent::{busybox_base, collect_logs};
use berth_tests::image::Image;
use berth_tests::layers;
use berth_tests::layers::{Comp, Entry};
use berth_tests::node::{World, REPO};
use serde_json::json;

use crate::support::{
    addr_of, count_of, exec, fast_checks, http_get, lines_of, run, service_of, service_with, spec,
    start_node_opts, stop, Running,
};

/// An image deployed as a service that sets no `PORT`, on a node of its
/// own (port detection on), its instance healthy.
struct Deployed {
    w: World,
    node: Running,
    owner: OwnerId,
    svc: ServiceId,
    spec: NodeRunSpec,
    logs: async_nats::Subscriber,
    /// The service's events once the instance was healthy.
    events: Vec<Envelope>,
}

impl Deployed {
    /// Pushes `image` as `tag`, runs it as a service of `kind` named
    /// `tag` (a 20 s shutdown delay, `plan`'s limits) on a node run with
    /// `opts` and waits for it healthy.
    async fn start_on(
        image: &Image,
        tag: &str,
        kind: ServiceType,
        plan: Option<Plan>,
        opts: NodeOptions,
    ) -> Self {
        Self::start_with(image, tag, kind, plan, opts, |_| {}).await
    }

    /// [`Deployed::start_on`] with the service created as `edit` sets it.
    async fn start_with(
        image: &Image,
        tag: &str,
        kind: ServiceType,
        plan: Option<Plan>,
        opts: NodeOptions,
        edit: impl FnOnce(&mut berth_domain::service::CreateService),
    ) -> Self {
        let w = World::start().await;
        let mut checks = fast_checks();
        checks.health.detect_after = Duration::from_millis(300);
        let node = start_node_opts(&w, checks, Default::default(), opts).await;
        w.registry.push_image(REPO, tag, image).await.unwrap();
        let owner = OwnerId::User(UserId::generate());
        let (svc, dep) = service_with(&w, &owner, tag, kind, &image.digest, edit).await;
        let mut s = spec(&w, &svc, &dep, "", Some(10000));
        s.command = None;
        s.digest = image.digest.clone();
        s.shutdown_delay_secs = 20;
        s.plan = plan;
        let logs = w.subscribe_logs(&svc).await;
        run(&w, &node.id, &s).await;
        let events = w
            .wait_events(&svc, Duration::from_secs(90), |ev| {
                count_of(ev, &s.instance, "instance_healthy") == 1
            })
            .await;
        Deployed {
            w,
            node,
            owner,
            svc,
            spec: s,
            logs,
            events,
        }
    }

    /// How many of `type_name` its instance has in [`Deployed::events`].
    fn count(&self, type_name: &str) -> usize {
        count_of(&self.events, &self.spec.instance, type_name)
    }

    /// `GET path` through the instance's published port.
    async fn get(&self, path: &str) -> (u16, String) {
        let addr = addr_of(&self.events, &self.spec.instance).expect("a published port");
        http_get(&addr, path).await.unwrap()
    }

    /// Runs `args` in the instance: (exit code, output).
    fn exec(&self, args: &[&str]) -> (i32, String) {
        exec(&self.w, &self.spec.instance, args)
    }

    /// The instance's log lines from where the last call left off, until
    /// one matches `until` (10 s at most).
    async fn lines_until(&mut self, until: impl Fn(&str) -> bool) -> Vec<String> {
        let seen = collect_logs(&mut self.logs, Duration::from_secs(10), |l| until(&l.line)).await;
        lines_of(&seen, &self.spec.instance)
    }

    /// Stops the instance and waits for it stopped: how long that took
    /// and its log lines since, through berth's `==> Stopped` line.
    async fn stop(mut self) -> (Duration, Vec<String>) {
        let t0 = Instant::now();
        stop(&self.w, &self.node.id, &self.svc, &self.spec.instance).await;
        self.w
            .wait_events(&self.svc, Duration::from_secs(60), |ev| {
                count_of(ev, &self.spec.instance, "instance_stopped") == 1
            })
            .await;
        let took = t0.elapsed();
        let lines = self.lines_until(|l| l.starts_with("==> Stopped")).await;
        self.node.stop().await;
        (took, lines)
    }
}

/// An image of busybox's base (`/bin/sh` and friends) with `layers` over
/// it, gzipped, its config's `config` object `config`.
pub(crate) fn on_busybox(layers: &[&[Entry]], config: serde_json::Value) -> Image {
    let mut all = vec![layers::layer(&busybox_base(), Comp::Gzip).unwrap()];
    all.extend(layers.iter().map(|l| layers::layer(l, Comp::Gzip).unwrap()));
    layers::image_with_config(all, config).unwrap()
}

/// The two ways a node runs instances: as the host's root (where the
/// machine allows no user namespace), and in a user namespace (as `berth
/// up` does where the machine allows it, and the test suite's nodes do
/// unless `BERTH_TEST_USERNS=off`).
pub(crate) fn modes() -> [NodeOptions; 2] {
    let as_root = NodeOptions {
        user_namespace: Userns::Off,
        ..crate::support::options()
    };
    let in_userns = NodeOptions {
        user_namespace: Userns::On(UserNamespace {
            host: berth_node::USERNS_AUTO_HOST,
            size: berth_node::USERNS_IDS,
        }),
        ..crate::support::options()
    };
    [as_root, in_userns]
}

/// The official nginx image's layout: `/docker-entrypoint.sh` then
/// `nginx -g 'daemon off;'`, the master as root and its workers as user
/// `nginx` (101), `EXPOSE 80`, `STOPSIGNAL SIGQUIT`, the logs linked to
/// the container's stdout and stderr. (Debian's nginx binary and its
/// libraries; its temp paths under `/var/lib/nginx`.)
fn nginx_image() -> Image {
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
    on_busybox(&[&runtime], config)
}

/// nginx as its official image runs it, deployed as a web service that
/// sets no `PORT`: served on the port it exposes (80), its workers
/// running as `nginx`, its access log in the service's logs; a stop sends
/// the image's SIGQUIT, and nginx finishes gracefully, well inside the
/// shutdown delay (SIGTERM would be nginx's fast, dropping shutdown). As
/// the host's root and in a user namespace: there its root is no owner
/// of the output it opens again as `/dev/stdout` and `/dev/stderr`.
#[tokio::test]
async fn nginx_as_its_official_image_runs_it() {
    let image = nginx_image();
    for opts in modes() {
        nginx_runs(&image, opts).await;
    }
}

/// [`nginx_as_its_official_image_runs_it`] on a node run with `opts`.
async fn nginx_runs(image: &Image, opts: NodeOptions) {
    let mut d = Deployed::start_on(image, "nginx", ServiceType::WebService, None, opts).await;
    let (status, body) = d.get("/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "<h1>Welcome to nginx!</h1>\n"),
        "served on the port the image exposes"
    );
    let (code, env) = d.exec(&["/bin/busybox", "env"]);
    assert_eq!(code, 0, "{env}");
    assert!(env.lines().any(|l| l == "PORT=80"), "{env}");
    // The master as root, its workers as the image's `nginx` user.
    let (code, ps) = d.exec(&["/bin/busybox", "ps", "-o", "user,args"]);
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

    let lines = d
        .lines_until(|l| l.contains("\"GET / HTTP/1.0\" 200"))
        .await;
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

    let (took, lines) = d.stop().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("signal 3 (SIGQUIT) received") && l.contains("shutting down")),
        "nginx was asked for its graceful shutdown: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("==> Stopped on request: exited with status 0 after "),
        "{lines:?}"
    );
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

/// A Python web app as its own hand-written Dockerfile builds it, on a
/// Debian base's Python (`apt-get install python3`; `/bin/sh` is dash): `ENV
/// PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1`, `WORKDIR /app`, a
/// non-root `USER appuser` (10001, by name), no `EXPOSE`, and a `CMD` in
/// shell form that migrates, then serves on the app's own fixed port
/// (8000) — the shell stays between the init and the server. The app
/// handles SIGTERM as a well-behaved server does: it finishes what it
/// serves and exits 0.
fn python_image() -> Image {
    let version = std::fs::read_link("/usr/bin/python3").expect("python3 (scripts/install-deps)");
    let version = version.to_string_lossy().into_owned();
    let mut runtime = layers::host_program(&format!("/usr/bin/{version}")).unwrap();
    runtime.push(Entry::symlink("usr/bin/python3", &version));
    // A Debian base's shell: dash, which (unlike busybox's) stays as the
    // parent of the last command of `a && b`.
    runtime.extend(layers::host_program("/usr/bin/dash").unwrap());
    runtime.push(Entry::symlink("bin/sh", "/usr/bin/dash"));
    runtime.extend(
        layers::host_tree_without(
            &format!("/usr/lib/{version}"),
            &[
                "__pycache__",
                "test",
                "idlelib",
                "tkinter",
                "turtledemo",
                "lib2to3",
                "ensurepip",
                "dist-packages",
                "site-packages",
                "pydoc_data",
            ],
        )
        .unwrap(),
    );
    let app = br#"import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from python\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("0.0.0.0", 8000), Hello)


def on_term(signum, frame):
    print("SIGTERM received: finishing requests")
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, on_term)
print("Listening on http://0.0.0.0:8000")
server.serve_forever()
server.server_close()
print("Shut down cleanly")
"#;
    let app_layer = vec![
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nappuser:x:10001:10001::/nonexistent:/sbin/nologin\n",
        ),
        Entry::file("etc/group", b"root:x:0:\nappuser:x:10001:\n"),
        Entry::dir("app"),
        Entry::file("app/migrate.py", b"print(\"No migrations to apply.\")\n"),
        Entry::file("app/app.py", app),
    ];
    let config = json!({
        "Cmd": ["/bin/sh", "-c", "python3 migrate.py && python3 app.py"],
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",
        ],
        "User": "appuser",
        "WorkingDir": "/app",
    });
    on_busybox(&[&runtime, &app_layer], config)
}

/// The Python app deployed as a web service that sets no `PORT`: berth
/// detects the port it listens on and serves it there; it runs as the
/// image's user; what it prints and its request log reach the service's
/// logs as they happen; a stop reaches the server past the shell (which
/// under Docker, as PID 1, would ignore it and wait out the grace
/// period): it finishes and exits 0, well inside the shutdown delay.
#[tokio::test]
async fn a_python_app_as_its_dockerfile_builds_it() {
    let image = python_image();
    for opts in modes() {
        python_runs(&image, opts).await;
    }
}

/// [`a_python_app_as_its_dockerfile_builds_it`] on a node run with `opts`.
async fn python_runs(image: &Image, opts: NodeOptions) {
    let mut d = Deployed::start_on(image, "python", ServiceType::WebService, None, opts).await;
    assert_eq!(
        d.count("instance_port_detected"),
        1,
        "the port the app listens on was detected"
    );
    let (status, body) = d.get("/").await;
    assert_eq!((status, body.as_str()), (200, "hello from python\n"));
    let (code, ps) = d.exec(&["/bin/busybox", "ps", "-o", "user,group,args"]);
    assert_eq!(code, 0, "{ps}");
    assert!(
        ps.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[..2] == ["appuser", "appuser"] && f[2..] == ["python3", "app.py"]
        }),
        "the server runs as the image's user: {ps}"
    );

    let lines = d
        .lines_until(|l| l.contains("\"GET / HTTP/1.0\" 200"))
        .await;
    for said in [
        "No migrations to apply.",
        "Listening on http://0.0.0.0:8000",
        "==> Detected service running on port 8000: served there, as the service sets no PORT (berth expected 10000; set PORT=8000 to say so)",
    ] {
        assert!(lines.iter().any(|l| l == said), "{said:?} in {lines:?}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"GET / HTTP/1.0\" 200")),
        "the request log (stderr) is in the service's logs: {lines:?}"
    );

    let (took, lines) = d.stop().await;
    let at = |said: &str| lines.iter().position(|l| l == said);
    let term = at("SIGTERM received: finishing requests");
    assert!(
        term.is_some() && at("Shut down cleanly") > term,
        "the server got the signal past its shell and finished: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("==> Stopped on request: exited with status 0 after "),
        "{lines:?}"
    );
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

/// The Java app's source: an HTTP server on its own fixed port (8080)
/// that answers with the heap and processors its JVM sized itself to,
/// with a shutdown hook as frameworks install one.
const JAVA_APP: &str = r#"import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

public class App {
    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(8080), 0);
        server.createContext("/", exchange -> {
            Runtime rt = Runtime.getRuntime();
            String body = rt.maxMemory() + " " + rt.availableProcessors() + "\n";
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, bytes.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(bytes);
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("Shutdown hook: stopping the server");
            server.stop(1);
            System.out.println("Server stopped");
        }));
        server.start();
        System.out.println("Started on port 8080");
    }
}
"#;

/// A Java app as Spring's and Temurin's guides build it: a runtime under
/// `/opt/java/openjdk` (`JAVA_HOME`, on `PATH`; made here with the host
/// JDK's `jlink`, as slim images do), the app's jar at `/app.jar`,
/// `ENTRYPOINT ["java", "-jar", "/app.jar"]`, no `EXPOSE`, no JVM
/// options: the JVM sizes its heap and threads from what it sees.
fn java_image() -> Image {
    let tool = |name: &str, args: &[&str], dir: &std::path::Path| {
        let out = std::process::Command::new(name)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{name} (a JDK: scripts/install-deps): {e}"));
        assert!(out.status.success(), "{name}: {out:?}");
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("App.java"), JAVA_APP).unwrap();
    std::fs::write(dir.path().join("manifest.txt"), "Main-Class: App\n").unwrap();
    tool("javac", &["-d", "classes", "App.java"], dir.path());
    tool(
        "jar",
        &["cfm", "app.jar", "manifest.txt", "-C", "classes", "."],
        dir.path(),
    );
    tool(
        "jlink",
        &[
            "--add-modules",
            "java.base,jdk.httpserver",
            "--strip-debug",
            "--no-header-files",
            "--no-man-pages",
            "--output",
            "jre",
        ],
        dir.path(),
    );
    let jre = dir.path().join("jre");
    let jre = jre.to_string_lossy();
    let objects = [
        format!("{jre}/bin/java"),
        format!("{jre}/lib/server/libjvm.so"),
    ];
    let objects: Vec<&str> = objects.iter().map(String::as_str).collect();
    let libs = layers::host_libraries(&objects).unwrap();
    let mut runtime = layers::host_files(
        libs.into_iter()
            .filter(|l| !l.starts_with(jre.as_ref()))
            .collect(),
    )
    .unwrap();
    runtime.extend(layers::host_tree_at(&jre, "/opt/java/openjdk", &[]).unwrap());
    let jar = std::fs::read(dir.path().join("app.jar")).unwrap();
    let config = json!({
        "Entrypoint": ["java", "-jar", "/app.jar"],
        "Env": [
            "PATH=/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "JAVA_HOME=/opt/java/openjdk",
        ],
    });
    on_busybox(&[&runtime, &[Entry::file("app.jar", &jar)]], config)
}

/// The Java app deployed as a web service on the starter plan (512 MiB,
/// half a CPU), setting no `PORT`: served on the port it listens on; its
/// JVM, given no options, sizes itself to the instance, not to the host
/// (a heap of a quarter of 512 MiB, one processor: a JVM sized to the
/// host's memory is killed for going over the plan's once its heap
/// grows); a stop runs its shutdown hook.
#[tokio::test]
async fn a_java_app_sizes_its_jvm_to_the_instance() {
    let image = java_image();
    for opts in modes() {
        java_runs(&image, opts).await;
    }
}

/// [`a_java_app_sizes_its_jvm_to_the_instance`] on a node run with `opts`.
async fn java_runs(image: &Image, opts: NodeOptions) {
    let starter = Plan {
        name: "starter".into(),
        cpu_millis: 500,
        memory_mib: 512,
    };
    let mut d =
        Deployed::start_on(image, "java", ServiceType::WebService, Some(starter), opts).await;
    assert_eq!(
        d.count("instance_port_detected"),
        1,
        "the port the JVM listens on was detected"
    );
    let (status, body) = d.get("/").await;
    assert_eq!(status, 200, "{body}");
    let mut sized = body.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    let (heap, processors) = (sized.next().unwrap(), sized.next().unwrap());
    assert!(
        heap <= 128 << 20 && heap > 64 << 20,
        "the heap is a quarter of the plan's memory: {heap} bytes"
    );
    assert_eq!(processors, 1, "the plan's half a CPU is one processor");
    let lines = d.lines_until(|l| l == "Started on port 8080").await;
    assert!(
        lines.iter().any(|l| l == "Started on port 8080"),
        "{lines:?}"
    );

    let (took, lines) = d.stop().await;
    let at = |said: &str| lines.iter().position(|l| l == said);
    let hook = at("Shutdown hook: stopping the server");
    assert!(
        hook.is_some() && at("Server stopped") > hook,
        "the stop ran the JVM's shutdown hook: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.starts_with("==> Stopped on request"), "{lines:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

/// A Go server as its official image ships it: `FROM scratch` — one
/// static binary, its config file, no shell, no `/etc/passwd`, no `/tmp`
/// — `EXPOSE 4222 8222 6222` (clients, monitoring, cluster),
/// `ENTRYPOINT ["/nats-server"]`, `CMD ["--config", "nats-server.conf"]`
/// (a path relative to `/`). NATS's own image, with this machine's
/// static nats-server.
fn nats_image() -> Image {
    let binary = berth_tests::nats_binary(berth_tests::NatsVersion::Modern).unwrap();
    let conf = b"port: 4222\nmonitor_port: 8222\n";
    let root = vec![
        Entry::file("nats-server", &std::fs::read(binary).unwrap()).mode(0o755),
        Entry::file("nats-server.conf", conf),
    ];
    let config = json!({
        "Entrypoint": ["/nats-server"],
        "Cmd": ["--config", "nats-server.conf"],
        "ExposedPorts": { "4222/tcp": {}, "6222/tcp": {}, "8222/tcp": {} },
    });
    layers::image_with_config(vec![layers::layer(&root, Comp::Gzip).unwrap()], config).unwrap()
}

/// NATS from its official image as a private service that sets no
/// `PORT`: it listens on two ports (4222, 8222), neither of them berth's
/// choice, and comes up all the same, as Render has it (a private service
/// may listen on several ports): checked on the lowest, saying so, and its
/// owner's other instances reach both by the service's name.
#[tokio::test]
async fn a_scratch_image_runs_as_a_private_service_on_its_ports() {
    let image = nats_image();
    for opts in modes() {
        nats_runs(&image, opts).await;
    }
}

/// [`a_scratch_image_runs_as_a_private_service_on_its_ports`] on a node run with `opts`.
async fn nats_runs(image: &Image, opts: NodeOptions) {
    let mut d = Deployed::start_on(image, "queue", ServiceType::PrivateService, None, opts).await;
    assert_eq!(d.count("instance_port_detected"), 1, "{:?}", d.events);
    let said = "==> Detected service running on ports 4222, 8222: reached on each by the service's name, checked on 4222, as the service sets no PORT (set PORT to the port to check)";
    let lines = d.lines_until(|l| l == said).await;
    assert!(lines.iter().any(|l| l == said), "{lines:?}");
    let (app, app_dep) = service_of(
        &d.w,
        &d.owner,
        "app",
        ServiceType::WebService,
        Some("/hello.txt"),
        &d.w.digest,
    )
    .await;
    let a = spec(
        &d.w,
        &app,
        &app_dep,
        "/bin/busybox httpd -f -p 10000 -h /app",
        Some(10000),
    );
    run(&d.w, &d.node.id, &a).await;
    crate::support::healthy_once(&d.w, &app, &[&a.instance]).await;
    let bb = "/bin/busybox";
    let (code, out) = exec(
        &d.w,
        &a.instance,
        &[
            bb,
            "timeout",
            "3",
            bb,
            "wget",
            "-q",
            "-O",
            "-",
            "http://queue:8222/healthz",
        ],
    );
    assert_eq!((code, out.trim()), (0, "{\"status\":\"ok\"}"), "{out}");
    let (code, out) = exec(
        &d.w,
        &a.instance,
        &[bb, "sh", "-c", "echo PING | timeout 3 nc queue 4222"],
    );
    assert!(out.starts_with("INFO {"), "{code} {out}");
    let (took, lines) = d.stop().await;
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.starts_with("==> Stopped on request"), "{lines:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

/// The entrypoint official images for databases and caches use (redis,
/// postgres, mongo): started as root, it gives the data directory to the
/// server's user (`find . \! -user … -exec chown …`), then runs itself
/// again as that user through `gosu` (`exec gosu www "$0" "$@"`), which
/// execs the server. `WORKDIR /data`, `VOLUME /data`, `EXPOSE 8080`.
/// (busybox's httpd stands in for the server; Debian's `gosu`.)
fn gosu_image() -> Image {
    let entrypoint = br#"#!/bin/sh
set -e
if [ "$1" = 'httpd' -a "$(id -u)" = '0' ]; then
    find . \! -user www -exec chown www '{}' +
    exec gosu www "$0" "$@"
fi
echo "serving /data as $(id -un)" > /dev/stderr
echo "written by $(id -un)" > /data/index.html
exec busybox "$@"
"#;
    let gosu = std::fs::read("/usr/sbin/gosu").expect("gosu (scripts/install-deps)");
    let root = vec![
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:999:999::/data:/bin/sh\n",
        ),
        Entry::file("etc/group", b"root:x:0:\nwww:x:999:\n"),
        Entry::dir("usr"),
        Entry::dir("usr/local"),
        Entry::dir("usr/local/bin"),
        Entry::file("usr/local/bin/gosu", &gosu).mode(0o755),
        Entry::file("usr/local/bin/docker-entrypoint.sh", entrypoint).mode(0o755),
        Entry::dir("data").mode(0o755),
        Entry::file("data/index.html", b"left by the image\n"),
    ];
    let config = json!({
        "Entrypoint": ["docker-entrypoint.sh"],
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/data"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "ExposedPorts": { "8080/tcp": {} },
        "Volumes": { "/data": {} },
        "WorkingDir": "/data",
    });
    on_busybox(&[&root], config)
}

/// The gosu entrypoint, on a node as it runs by default and on one running
/// instances in a user namespace: the data directory changes hands, the
/// server runs as its own user (not root) and serves what it wrote, and
/// the script, as that user, writes to `/dev/stderr`.
#[tokio::test]
async fn an_entrypoint_that_drops_to_its_user_with_gosu_runs_as_that_user() {
    let image = gosu_image();
    for opts in modes() {
        let root_on_host = match &opts.user_namespace {
            Userns::On(ns) | Userns::Auto(ns) => ns.host,
            Userns::Off => 0,
        };
        let mut d = Deployed::start_on(&image, "gosu", ServiceType::WebService, None, opts).await;
        let pid = crate::support::container_pid(&d.w, &d.spec.instance);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid.split_whitespace().nth(1),
            Some(root_on_host.to_string().as_str()),
            "the instance's root on the host"
        );
        let lines = d.lines_until(|l| l.starts_with("serving /data")).await;
        assert!(
            lines.iter().any(|l| l == "serving /data as www"),
            "{lines:?}"
        );
        let (status, body) = d.get("/index.html").await;
        assert_eq!((status, body.as_str()), (200, "written by www\n"));
        let (code, ps) = d.exec(&["/bin/busybox", "ps", "-o", "user,args"]);
        assert_eq!(code, 0, "{ps}");
        assert!(
            ps.lines()
                .any(|l| l.starts_with("www ") && l.contains("busybox httpd -f -p 8080")),
            "the server runs as www: {ps}"
        );
        let (_, owner) = d.exec(&["/bin/busybox", "stat", "-c", "%U", "/data"]);
        assert_eq!(owner, "www\n");
        let (took, lines) = d.stop().await;
        assert!(
            took < Duration::from_secs(10),
            "stopping took {took:?}: {lines:?}"
        );
    }
}

/// Images whose program cannot be run, as people meet them: the kernel
/// says only "No such file or directory" (or, for another machine's
/// program, the shell execvp falls back to prints its bytes); the exit
/// says why, in the instance's logs and in `instance_exited` (from which
/// a failed deploy and its notification say it too).
#[tokio::test]
async fn a_program_that_cannot_run_says_why() {
    let w = World::start().await;
    let node = start_node_opts(
        &w,
        fast_checks(),
        Default::default(),
        crate::support::options(),
    )
    .await;
    let arm = {
        let mut b = std::fs::read("/bin/busybox").unwrap();
        b[18..20].copy_from_slice(&183u16.to_le_bytes());
        b
    };
    let script = |body: &[u8]| vec![Entry::file("entry.sh", body).mode(0o755)];
    let cases: Vec<(&str, Vec<Entry>, &str, &str)> = vec![
        (
            "crlf",
            script(b"#!/bin/sh\r\necho hi\r\nexec sleep 100\r\n"),
            "/entry.sh",
            "exited with status 127: /entry.sh has Windows (CRLF) line endings: its first line names `/bin/sh` followed by a carriage return, which is not in the image; save it with LF line endings",
        ),
        (
            "bash",
            script(b"#!/bin/bash\nexec sleep 100\n"),
            "/entry.sh",
            "exited with status 127: the interpreter /entry.sh names, /bin/bash, is not in the image (Alpine and BusyBox images have /bin/sh, not bash: install bash or use #!/bin/sh)",
        ),
        (
            "glibc",
            vec![Entry::file("server", &std::fs::read("/usr/bin/dash").unwrap()).mode(0o755)],
            "/server",
            "exited with status 127: /server needs the dynamic loader /lib64/ld-linux-x86-64.so.2, which the image does not have: it was built for a system with glibc; build it static (Go: CGO_ENABLED=0) or on the image's own base",
        ),
        (
            "mode",
            vec![Entry::file("entry.sh", b"#!/bin/sh\nexec sleep 100\n").mode(0o644)],
            "/entry.sh",
            "exited with status 126: /entry.sh is not executable (mode 644): make it so in the image (chmod +x)",
        ),
        (
            "missing",
            vec![],
            "gunicorn",
            "exited with status 127: gunicorn is in none of the directories of its PATH in the image (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)",
        ),
        (
            "arm",
            vec![Entry::file("server", &arm).mode(0o755)],
            "/server",
            "exited with status 2: /server is built for arm64 (aarch64), and this node runs x86-64 programs: build the image for linux/amd64 (docker build --platform linux/amd64)",
        ),
    ];
    let owner = OwnerId::User(UserId::generate());
    let mut runs = Vec::new();
    for (name, layer, program, said) in cases {
        let image = on_busybox(&[&layer], json!({ "Entrypoint": [program] }));
        w.registry.push_image(REPO, name, &image).await.unwrap();
        let (svc, s, logs) = worker(&w, &node, &owner, name, &image.digest, None).await;
        runs.push((svc, s, logs, said));
    }
    for (svc, s, mut logs, said) in runs {
        let line = format!("==> {}{}", said[..1].to_uppercase(), &said[1..]);
        let seen = collect_logs(&mut logs, Duration::from_secs(20), |l| l.line == line).await;
        let lines = lines_of(&seen, &s.instance);
        assert!(lines.contains(&line), "{line:?} in {lines:?}");
        let events = w
            .wait_events(&svc, Duration::from_secs(20), |ev| {
                count_of(ev, &s.instance, "instance_exited") >= 1
            })
            .await;
        let exit = events
            .iter()
            .find_map(|e| match &e.event {
                berth_schemas::Event::InstanceExited(x) if x.instance == s.instance => Some(x),
                _ => None,
            })
            .unwrap();
        let why = said.split_once(": ").unwrap().1;
        assert_eq!(exit.cannot_run.as_deref(), Some(why));
    }
    // A program that runs and fails on its own is not judged; one that
    // finishes is told a service's program must keep running.
    for (name, command, said) in [
        (
            "fails",
            "/bin/sh -c 'exit 127'",
            "==> Exited with status 127".to_owned(),
        ),
        (
            "finishes",
            "/bin/sh -c 'exit 0'",
            format!(
                "==> Exited with status 0: {}",
                berth_domain::service::instances::FINISHED
            ),
        ),
    ] {
        let (_, s, mut logs) = worker(&w, &node, &owner, name, &w.digest, Some(command)).await;
        let seen = collect_logs(&mut logs, Duration::from_secs(20), |l| {
            l.line.starts_with("==> Exited")
        })
        .await;
        let lines = lines_of(&seen, &s.instance);
        assert!(lines.contains(&said), "{said:?} in {lines:?}");
    }
    node.stop().await;
}

/// Runs the image `digest` as a worker service `name` of `owner` on `node`
/// (`command`, else the image's own): its service, spec and logs.
async fn worker(
    w: &World,
    node: &Running,
    owner: &OwnerId,
    name: &str,
    digest: &str,
    command: Option<&str>,
) -> (ServiceId, NodeRunSpec, async_nats::Subscriber) {
    let (svc, dep) = service_of(w, owner, name, ServiceType::BackgroundWorker, None, digest).await;
    let mut s = spec(w, &svc, &dep, command.unwrap_or_default(), None);
    s.command = command.map(str::to_owned);
    s.digest = digest.to_owned();
    let logs = w.subscribe_logs(&svc).await;
    run(w, &node.id, &s).await;
    (svc, s, logs)
}

/// An image that declares volumes it never creates (`VOLUME /data`, and
/// one below a directory of its own with an owner and mode of its own):
/// the directories are there when its program starts, as under Docker,
/// and its own directory keeps its owner and mode — as the host's root
/// and in a user namespace.
#[tokio::test]
async fn volumes_an_image_declares_but_lacks_are_made() {
    let layer = vec![
        Entry::dir("var"),
        Entry::dir("var/lib").mode(0o750).owner(33, 33),
    ];
    let image = on_busybox(
        &[&layer],
        json!({
            "Cmd": ["/bin/sh", "-c", "echo a > /data/a && echo b > /var/lib/app/cache/b && echo wrote both; exec sleep 600"],
            "Volumes": { "/data": {}, "/var/lib/app/cache": {} },
        }),
    );
    for opts in modes() {
        let w = World::start().await;
        let node = start_node_opts(&w, fast_checks(), Default::default(), opts).await;
        w.registry
            .push_image(REPO, "volumes", &image)
            .await
            .unwrap();
        let owner = OwnerId::User(UserId::generate());
        let (_, s, mut logs) = worker(&w, &node, &owner, "volumes", &image.digest, None).await;
        let seen = collect_logs(&mut logs, Duration::from_secs(20), |l| {
            l.line == "wrote both" || l.line.starts_with("==> Exited")
        })
        .await;
        let lines = lines_of(&seen, &s.instance);
        assert!(lines.iter().any(|l| l == "wrote both"), "{lines:?}");
        let (code, out) = exec(
            &w,
            &s.instance,
            &[
                "/bin/busybox",
                "stat",
                "-c",
                "%n %u %a",
                "/data",
                "/var/lib",
                "/var/lib/app/cache",
            ],
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out, "/data 0 755\n/var/lib 33 750\n/var/lib/app/cache 0 755\n",
            "as the instance sees them"
        );
        node.stop().await;
    }
}

/// Debian's PostgreSQL server programs, where the official image has them.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// PostgreSQL as its official image (`postgres:15`, Debian) lays it out:
/// `docker-entrypoint.sh` (bash) run as root gives `PGDATA` and the socket
/// directory to user `postgres` (999) and runs itself again through
/// `gosu`; as that user, on an empty data directory, `initdb`, a
/// temporary server on the Unix socket only to create `POSTGRES_DB`, then
/// `exec postgres`, listening on every address. `ENV
/// PGDATA=/var/lib/postgresql/data`, `LANG=C.UTF-8`, `VOLUME` the data
/// directory, `EXPOSE 5432`, `STOPSIGNAL SIGINT` (a fast shutdown).
/// (Debian's PostgreSQL 15, bash and gosu.)
fn postgres_image() -> Image {
    let entrypoint = br#"#!/usr/bin/env bash
set -Eeo pipefail
if [ "$1" = 'postgres' ] && [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 00700 "$PGDATA"
	chmod 03775 /var/run/postgresql
	find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
	exec gosu postgres "$BASH_SOURCE" "$@"
fi
if [ "$1" = 'postgres' ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
	initdb --username=postgres --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
	printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
	printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
	pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
	psql -v ON_ERROR_STOP=1 --username postgres --no-password --dbname postgres \
		-c "CREATE DATABASE \"$POSTGRES_DB\""
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo 'PostgreSQL init process complete; ready for start up.'
fi
exec "$@"
"#;
    let programs: Vec<String> = ["postgres", "initdb", "pg_ctl", "psql"]
        .iter()
        .map(|p| format!("{PG_BIN}/{p}"))
        .collect();
    let objects: Vec<&str> = programs
        .iter()
        .map(String::as_str)
        .chain(["/usr/bin/bash"])
        .collect();
    let mut files = layers::host_libraries(&objects).unwrap();
    files.extend(objects.iter().map(|o| (*o).to_owned()));
    files.extend(["/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Etc/UTC"].map(str::to_owned));
    let mut server = layers::host_files(files).unwrap();
    server.extend(
        layers::host_tree_without("/usr/lib/postgresql/15/lib", &["bitcode", "llvmjit.so"])
            .unwrap(),
    );
    server.extend(layers::host_tree("/usr/share/postgresql/15").unwrap());
    server.extend(layers::host_tree("/usr/lib/locale/C.utf8").unwrap());
    let gosu = std::fs::read("/usr/sbin/gosu").expect("gosu (scripts/install-deps)");
    let mut image = vec![
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\npostgres:x:999:999::/var/lib/postgresql:/bin/bash\n",
        ),
        Entry::file("etc/group", b"root:x:0:\npostgres:x:999:\n"),
        Entry::symlink("bin/bash", "/usr/bin/bash"),
        Entry::symlink("usr/bin/env", "/bin/busybox"),
        Entry::dir("usr/local"),
        Entry::dir("usr/local/bin"),
        Entry::file("usr/local/bin/gosu", &gosu).mode(0o755),
        Entry::file("usr/local/bin/docker-entrypoint.sh", entrypoint).mode(0o755),
        Entry::dir("var"),
        Entry::dir("var/lib"),
        Entry::dir("var/lib/postgresql").owner(999, 999),
    ];
    for applet in ["mkdir", "chmod", "chown", "find"] {
        image.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let config = json!({
        "Entrypoint": ["docker-entrypoint.sh"],
        "Cmd": ["postgres"],
        "Env": [
            format!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{PG_BIN}"),
            "LANG=C.UTF-8",
            "PGDATA=/var/lib/postgresql/data",
            "POSTGRES_PASSWORD=berth-secret",
            "POSTGRES_DB=app",
        ],
        "ExposedPorts": { "5432/tcp": {} },
        "Volumes": { "/var/lib/postgresql/data": {} },
        "StopSignal": "SIGINT",
    });
    on_busybox(&[&server, &image], config)
}

/// PostgreSQL from its official image's layout as a private service that
/// sets no `PORT`: the entrypoint initializes the database as `postgres`,
/// berth finds it listening on 5432 (not while its temporary server is on
/// the socket only) and checks it there; it answers queries over TCP with
/// its password; a stop (SIGINT) shuts it down cleanly at once.
#[tokio::test]
async fn postgres_as_its_official_image_runs_as_a_private_service() {
    let image = postgres_image();
    for opts in modes() {
        postgres_runs(&image, opts).await;
    }
}

/// PostgreSQL from its official image's layout with a disk at its data
/// directory: the entrypoint gives the disk to `postgres` and initializes
/// it once; a table written by one instance is read by the next, which
/// finds the database and does not initialize again; nothing says its
/// data is lost.
#[tokio::test]
async fn postgres_keeps_its_data_on_the_services_disk() {
    let image = postgres_image();
    for opts in modes() {
        let mut d =
            Deployed::start_with(&image, "db", ServiceType::PrivateService, None, opts, |c| {
                c.disk = Some(berth_schemas::model::Disk {
                    id: berth_schemas::ids::DiskId::generate(),
                    name: "pgdata".into(),
                    mount_path: "/var/lib/postgresql/data".into(),
                    size_gb: 1,
                })
            })
            .await;
        let ready = "==> Healthy: it accepts connections on port 5432";
        let lines = d.lines_until(|l| l == ready).await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("PostgreSQL init process complete")),
            "{lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("no disk is kept")),
            "{lines:?}"
        );
        // Healthy is its port accepting connections: a PostgreSQL
        // replaying its log after a restart accepts them and answers
        // "starting up" for a moment, which a client waits out.
        let psql = |addr: &str, sql: &str| {
            let t0 = std::time::Instant::now();
            loop {
                let out = std::process::Command::new(format!("{PG_BIN}/psql"))
                    .arg(format!("postgresql://postgres:berth-secret@{addr}/app"))
                    .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
                    .env("PGCONNECT_TIMEOUT", "5")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                if !out.status.success()
                    && text.contains("the database system is starting up")
                    && t0.elapsed() < Duration::from_secs(30)
                {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                assert!(out.status.success(), "{sql}: {text}");
                return text;
            }
        };
        let addr = addr_of(&d.events, &d.spec.instance).expect("the instance's address");
        psql(
            &addr,
            "create table kept (v text); insert into kept values ('on the disk')",
        );

        // A new instance of the service (a restart, a deploy).
        stop(&d.w, &d.node.id, &d.svc, &d.spec.instance).await;
        d.w.wait_events(&d.svc, Duration::from_secs(60), |ev| {
            count_of(ev, &d.spec.instance, "instance_stopped") == 1
        })
        .await;
        let mut next = d.spec.clone();
        next.instance = berth_schemas::ids::InstanceId::generate();
        run(&d.w, &d.node.id, &next).await;
        let events =
            d.w.wait_events(&d.svc, Duration::from_secs(90), |ev| {
                count_of(ev, &next.instance, "instance_healthy") == 1
            })
            .await;
        d.spec = next;
        let lines = d.lines_until(|l| l == ready).await;
        assert!(
            !lines.iter().any(|l| l.contains("init process complete")),
            "initialized again: {lines:?}"
        );
        let addr = addr_of(&events, &d.spec.instance).expect("the instance's address");
        assert_eq!(psql(&addr, "select v from kept"), "on the disk\n");
        d.stop().await;
    }
}

/// [`postgres_as_its_official_image_runs_as_a_private_service`] on a node
/// run with `opts`.
async fn postgres_runs(image: &Image, opts: NodeOptions) {
    let mut d = Deployed::start_on(image, "db", ServiceType::PrivateService, None, opts).await;
    let ready = "==> Healthy: it accepts connections on port 5432";
    let lines = d.lines_until(|l| l == ready).await;
    let at = |said: &str| lines.iter().position(|l| l.contains(said));
    let initialized = at("PostgreSQL init process complete; ready for start up.");
    let listening = at("listening on IPv4 address \"0.0.0.0\", port 5432");
    assert!(
        initialized.is_some() && listening > initialized && at(ready) > listening,
        "initialized, then listening on every address, then healthy: {lines:?}"
    );
    // Told at once that its data is not kept.
    let notice = "==> The image declares a volume (/var/lib/postgresql/data); no disk is kept behind it: what is written there is lost when the program ends (a crash, a restart, a deploy)";
    assert!(
        at(notice).is_some() && at(notice) < initialized,
        "{lines:?}"
    );
    // Its own user runs the server, not root.
    let (code, ps) = d.exec(&["/bin/busybox", "ps", "-o", "user,args"]);
    assert_eq!(code, 0, "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["postgres", "postgres"]),
        "{ps}"
    );
    // Over TCP from outside the instance, where its password is asked for.
    let addr = addr_of(&d.events, &d.spec.instance).expect("the instance's address");
    let psql = |password: &str| {
        let out = std::process::Command::new(format!("{PG_BIN}/psql"))
            .arg(format!("postgresql://postgres:{password}@{addr}/app"))
            .args(["-tAc", "select current_database(), current_user"])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    assert_eq!(psql("berth-secret"), (true, "app|postgres\n".to_owned()));
    let (ok, refused) = psql("wrong");
    assert!(
        !ok && refused.contains("password authentication failed for user \"postgres\""),
        "{refused}"
    );
    // Its stop signal (SIGINT) is a fast shutdown: done at once, cleanly.
    let (took, lines) = d.stop().await;
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("LOG:  received fast shutdown request")),
        "{lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("==> Stopped on request: exited with status 0 after "),
        "{lines:?}"
    );
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

//! The router against nginx, in one run: `wrk` to one backend process
//! directly, through berth's router (Host header) and through nginx
//! (Debian `nginx-light`, `worker_processes auto`, keepalive upstream), at
//! each connection count, one after the other, over plain HTTP and over
//! HTTPS (both proxies with the same certificate, made here; connections
//! kept, so mostly the cost of encryption, not of handshakes). The backend is a process of
//! its own (this binary, `backend` mode), so neither proxy shares its
//! process; the router runs in this process with the Prometheus recorder
//! installed, as in `berth up`.
//!
//! `cargo run --release -p berth-router --example bench_router -- [secs] [conns,conns...]`
//! (defaults 5 s, `32,256`; needs `wrk`, `nginx` and a nats-server; see
//! berth-tests). Prints a table per connection count and the router's
//! throughput and added p99 latency against nginx's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support.rs"]
mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_schemas::model::ServiceType;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use support::{Env, Svc};

// The allocator of the `berth` binary, so the router runs as in `berth up`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &str = "hello from the backend\n";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("backend") {
        return backend();
    }
    let secs: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let conns: Vec<u64> = args
        .next()
        .unwrap_or_else(|| "32,256".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // wrk names the address, an IP, as its TLS server name; rustls warns
    // about that once per handshake.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,rustls=error");
    }
    tokio::runtime::Runtime::new()?.block_on(run(secs, &conns))
}

async fn run(secs: u64, conns: &[u64]) -> Result<()> {
    berth_runtime::install_metrics()?;
    let (mut backend_proc, backend) = spawn_backend()?;
    // No access log on either proxy (nginx: `access_log off`).
    let dir = tempfile::tempdir()?;
    let ca = berth_tests::pebble::TestCa::new()?;
    let (chain, key) = ca.leaf(&["*.localhost"])?;
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, chain)?;
    std::fs::write(&key_file, key)?;
    let https_addr = format!("127.0.0.1:{}", berth_tests::free_port());
    let env = Env::start_with(support::RouterArgs {
        router_access_log: false,
        router_https_addr: Some(https_addr.clone()),
        router_tls_cert: Some(cert.clone()),
        router_tls_key: Some(key_file.clone()),
        // Plain HTTP is measured too: no redirect to HTTPS.
        router_https_redirect: false,
        ..support::test_args()
    })
    .await?;
    let mut svc = Svc::create(&env.store, "bench", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let nginx = Nginx::start(backend, &cert, &key_file)?;

    let host = "bench.localhost";
    for &c in conns {
        // A short warm-up of each path (connections, pools, caches).
        for url in [
            format!("http://{backend}/"),
            format!("http://{}/", env.addr),
            format!("http://{}/", nginx.addr),
            format!("https://{https_addr}/"),
            format!("https://{}/", nginx.tls),
        ] {
            wrk(&url, Some(host), 1, c)?;
        }
        let direct = wrk(&format!("http://{backend}/"), None, secs, c)?;
        let me = [std::process::id()];
        let workers = family(nginx.child.id());
        let run = |pids: &[u32], url: String| measured(pids, || wrk(&url, Some(host), secs, c));
        let (routed, router_cpu, router_ins) = run(&me, format!("http://{}/", env.addr))?;
        let (proxied, nginx_cpu, nginx_ins) = run(&workers, format!("http://{}/", nginx.addr))?;
        let (routed_tls, router_tls_cpu, router_tls_ins) =
            run(&me, format!("https://{https_addr}/"))?;
        let (proxied_tls, nginx_tls_cpu, nginx_tls_ins) =
            run(&workers, format!("https://{}/", nginx.tls))?;
        println!(
            "\n{c} connections, {secs} s each, load average {}",
            loadavg()
        );
        println!("| path | req/s | p50 | p90 | p99 | p99 added |");
        println!("|---|---|---|---|---|---|");
        for (name, r) in [
            ("direct", &direct),
            ("berth router", &routed),
            ("nginx", &proxied),
            ("berth router, HTTPS", &routed_tls),
            ("nginx, HTTPS", &proxied_tls),
        ] {
            println!(
                "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                r.rps,
                r.p50,
                r.p90,
                r.p99,
                r.p99 - direct.p99
            );
        }
        println!(
            "router: {:.0}% of direct, {:.2}x nginx's requests/s",
            100.0 * routed.rps / direct.rps,
            routed.rps / proxied.rps
        );
        println!(
            "HTTPS: router {:.2}x nginx's requests/s",
            routed_tls.rps / proxied_tls.rps
        );
        let per = |cpu: f64, r: &Wrk| 1e6 * cpu / (r.rps * secs as f64);
        println!(
            "CPU per request: router {:.1} µs, nginx {:.1} µs; HTTPS: router {:.1} µs, nginx {:.1} µs",
            per(router_cpu, &routed),
            per(nginx_cpu, &proxied),
            per(router_tls_cpu, &routed_tls),
            per(nginx_tls_cpu, &proxied_tls)
        );
        // Instructions retired are steadier than CPU time on a shared
        // machine: they do not grow when another process takes the core.
        let ins = |n: Option<Instructions>, r: &Wrk| {
            n.map_or("-".to_owned(), |n| {
                let per = |x: u64| x as f64 / (r.rps * secs as f64) / 1000.0;
                format!("{:.1}k user + {:.1}k kernel", per(n.user), per(n.kernel))
            })
        };
        println!(
            "instructions per request: router {}, nginx {}; HTTPS: router {}, nginx {}",
            ins(router_ins, &routed),
            ins(nginx_ins, &proxied),
            ins(router_tls_ins, &routed_tls),
            ins(nginx_tls_ins, &proxied_tls)
        );
    }
    drop(nginx);
    let _ = backend_proc.kill();
    let _ = backend_proc.wait();
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// User + system CPU seconds of these processes so far.
fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| berth_tests::bench::cpu_secs(&pid.to_string()))
        .sum()
}

/// Instructions `perf stat` counted in a set of processes.
#[derive(Debug, Clone, Copy)]
struct Instructions {
    user: u64,
    kernel: u64,
}

/// Runs `f` (a wrk phase), with the CPU seconds `pids` used meanwhile and,
/// when `perf` is installed and allowed, the instructions they retired.
fn measured<T>(
    pids: &[u32],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, f64, Option<Instructions>)> {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let perf = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "instructions:u,instructions:k",
            "-p",
            &list,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok();
    if perf.is_some() {
        // Attached before the load starts.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = cpu_secs(pids);
    let out = f()?;
    let cpu = cpu_secs(pids) - before;
    let counted = perf.and_then(|child| {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let text = String::from_utf8_lossy(&child.wait_with_output().ok()?.stderr).into_owned();
        let count = |event: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.split(',').nth(2) == Some(event))
                .and_then(|l| l.split(',').next()?.parse().ok())
        };
        Some(Instructions {
            user: count("instructions:u")?,
            kernel: count("instructions:k")?,
        })
    });
    Ok((out, cpu, counted))
}

/// A process and its children (nginx's master and workers).
fn family(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// Starts this binary in `backend` mode and reads the address it bound.
fn spawn_backend() -> Result<(Child, std::net::SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("backend")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the backend process")?;
    let out = child.stdout.take().context("backend stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let addr = line.trim().parse().context("backend address")?;
    Ok((child, addr))
}

/// The backend: a small hyper HTTP/1 server answering every request with
/// the same short body, on a free loopback port it prints.
fn backend() -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    BODY.as_bytes(),
                ))))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// nginx proxying to the backend with a keepalive upstream, in a temp
/// prefix of its own; stopped on drop.
struct Nginx {
    child: Child,
    addr: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(backend: std::net::SocketAddr, cert: &Path, key: &Path) -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let port = berth_tests::free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let tls: std::net::SocketAddr =
            format!("127.0.0.1:{}", berth_tests::free_port()).parse()?;
        let (cert, key) = (cert.display(), key.display());
        let p = dir.path().display();
        let conf = format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {p}/body;\n\
               proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n\
               scgi_temp_path {p}/scgi;\n\
               upstream backend {{ server {backend}; keepalive 256; }}\n\
               server {{\n\
                 listen {addr} reuseport;\n\
                 listen {tls} ssl reuseport;\n\
                 ssl_certificate {cert};\n\
                 ssl_certificate_key {key};\n\
                 location / {{\n\
                   proxy_pass http://backend;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(nginx_binary())
            .args(["-p", &p.to_string(), "-c"])
            .arg(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting nginx (Debian nginx-light)")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child,
            addr,
            tls,
            _dir: dir,
        })
    }
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its workers.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

struct Wrk {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn wrk(url: &str, host: Option<&str>, secs: u64, conns: u64) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(!text.contains("Non-2xx"), "errors from {url}:\n{text}");
    if let Some(errors) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("{url}: {}", errors.trim());
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let rps = field("Requests/sec:")
        .context(text.clone())?
        .parse::<f64>()?;
    let ms = |p: &str| field(p).and_then(|v| millis(&v)).unwrap_or(f64::NAN);
    Ok(Wrk {
        rps,
        p50: ms("50%"),
        p90: ms("90%"),
        p99: ms("99%"),
    })
}

/// wrk's `123.45us` / `1.20ms` / `2.00s` in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

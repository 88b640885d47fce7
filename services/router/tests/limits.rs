//! What the router refuses of clients (oversized headers, headers sent too
//! slowly) and what it logs of each request.

use std::time::Duration;

use anyhow::Result;
use berth_schemas::model::ServiceType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{test_args, Backend, Env, HttpClient, RouterArgs, Svc};

async fn live(env: &Env, name: &str, backend: &Backend) -> Result<Svc> {
    let mut svc = Svc::create(&env.store, name, ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    Ok(svc)
}

/// Sends `raw` and reads what comes back until the router closes the
/// connection (or 5 s pass).
async fn exchange(router: std::net::SocketAddr, raw: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect(router).await?;
    // The router may answer and close before it read everything.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn headers_over_the_limit_are_refused_before_any_instance_is_asked() -> Result<()> {
    let env = Env::start().await?;
    let backend = Backend::start("v1", 1).await?;
    live(&env, "limited", &backend).await?;
    let big = "x".repeat(100 * 1024);
    let raw = format!("GET / HTTP/1.1\r\nHost: limited.localhost\r\nX-Big: {big}\r\n\r\n");
    let answer = exchange(env.addr, raw.as_bytes()).await?;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized headers answered {:?}",
        answer.lines().next()
    );
    assert_eq!(backend.hits(), 0, "the instance was asked");
    // Headers under the limit pass.
    let fine = "x".repeat(16 * 1024);
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: limited.localhost\r\nX-Big: {fine}\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(env.addr, raw.as_bytes()).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() -> Result<()> {
    let env = Env::start_with(RouterArgs {
        router_header_timeout_secs: 1,
        ..test_args()
    })
    .await?;
    let backend = Backend::start("v1", 1).await?;
    live(&env, "trickle", &backend).await?;
    let mut s = TcpStream::connect(env.addr).await?;
    let started = tokio::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: trickle.localhost\r\n")
        .await?;
    // One more header byte every 300 ms: never the blank line.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"X").await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(
        cut.is_ok(),
        "a trickling client kept its connection for 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );
    assert_eq!(backend.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_cut_off_and_a_slow_one_is_not() -> Result<()> {
    let env = Env::start_with(RouterArgs {
        router_body_timeout_secs: 1,
        ..test_args()
    })
    .await?;
    let backend = Backend::start("v1", 1).await?;
    live(&env, "upload", &backend).await?;
    let head = "POST /upload HTTP/1.1\r\nHost: upload.localhost\r\nContent-Length: 8\r\n\r\n";

    // Half the body, then nothing: 408 after about the limit.
    let mut s = TcpStream::connect(env.addr).await?;
    let started = tokio::time::Instant::now();
    s.write_all(head.as_bytes()).await?;
    s.write_all(b"1234").await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut off after {took:?}"
    );

    // A byte every 400 ms: slow, but never waiting a whole second.
    let mut s = TcpStream::connect(env.addr).await?;
    s.write_all(head.as_bytes()).await?;
    for b in b"abcdefgh" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(&[*b]).await?;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n8"),
        "the instance read all 8 bytes: {answer}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off() -> Result<()> {
    let env = Env::start_with(RouterArgs {
        router_send_timeout_secs: 1,
        ..test_args()
    })
    .await?;
    let backend = Backend::start("v1", 1).await?;
    live(&env, "big", &backend).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(16 * 1024)?;
    let mut s = socket.connect(env.addr).await?;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
        .await?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).await?;
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Not reading: the router's write waits, then gives up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await??;
    assert!(
        n + rest.len() < crate::support::BIG,
        "the whole answer arrived ({} bytes): the connection was never cut",
        n + rest.len()
    );
    // A client that reads gets all of it.
    let mut s = TcpStream::connect(env.addr).await?;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big.localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await??;
    assert!(all.len() > crate::support::BIG, "{} bytes", all.len());
    Ok(())
}

use berth_tests::Captured;

/// Installs a global subscriber, so it runs in a process of its own.
#[test]
fn each_request_is_logged_once_with_its_service_status_and_bytes() {
    berth_tests::run_alone("limits::access_log_child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by each_request_is_logged_once_with_its_service_status_and_bytes in its own process"]
async fn access_log_child() {
    assert!(berth_tests::is_alone(), "needs a process of its own");
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("berth::access=info")
        .with_writer(move || writer.clone())
        .init();

    let env = Env::start().await.unwrap();
    let backend = Backend::start("v1", 1).await.unwrap();
    let svc = live(&env, "logged", &backend).await.unwrap();
    let http = HttpClient::new(env.addr);
    let (status, body) = http
        .get("logged.localhost", "/some/path?token=hush")
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Written when the response has been sent whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = String::from_utf8_lossy(&logs.bytes()).into_owned();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &serde_json::Value| l["target"] == "berth::access")
            .collect();
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["service"], svc.id.to_string());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/some/path");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], body.len());
    assert_eq!(line["complete"], true);
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(line["duration_ms"].as_f64().unwrap() >= line["head_ms"].as_f64().unwrap());
    assert!(
        !line.to_string().contains("hush"),
        "the query string was logged: {line}"
    );
}

//! The router's connections to instances: reused across requests, given
//! back only when a response has ended (a response still streaming never
//! holds up another request), and replaced without an error when the
//! instance closed an idle one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use berth_schemas::model::ServiceType;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Env, HttpClient, Svc};

/// A bare HTTP/1.1 instance that counts the connections it accepted. With
/// `idle_close`, it closes a connection that stays idle that long after a
/// response (as Node.js does after 5 s), without saying so in the response;
/// with `Close::OnSecond`, it answers the first request of each connection
/// and closes the connection when the second arrives, unanswered (its
/// keep-alive ran out just as the request came). `/stream` sends its head
/// and one chunk, then holds the response open.
struct Counting {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start(idle_close: Option<Duration>) -> Result<Counting> {
        Self::start_with(idle_close, false).await
    }

    async fn start_with(idle_close: Option<Duration>, on_second: bool) -> Result<Counting> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, idle_close, on_second));
            }
        });
        Ok(Counting {
            addr,
            accepted,
            task,
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, idle_close: Option<Duration>, on_second: bool) {
    let mut buf = Vec::new();
    for served in 0.. {
        // Read one request head (the requests here have no body).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let read = match idle_close {
                Some(d) if buf.is_empty() => {
                    match tokio::time::timeout(d, stream.read(&mut chunk)).await {
                        Ok(r) => r,
                        Err(_) => return, // idle too long: close
                    }
                }
                _ => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if on_second && served == 1 {
            return;
        }
        if head.starts_with("GET /stream ") {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                )
                .await;
            // Held open until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

async fn routed(env: &Env, name: &str, backend: std::net::SocketAddr) -> Result<()> {
    let mut svc = Svc::create(&env.store, name, ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend]).await?;
    env.synced(env.store.last_stream_seq().await?).await
}

#[tokio::test]
async fn connections_to_an_instance_are_reused() -> Result<()> {
    let env = Env::start().await?;
    let backend = Counting::start(None).await?;
    routed(&env, "reused", backend.addr).await?;
    let http = HttpClient::new(env.addr);
    for _ in 0..50 {
        assert_eq!(
            http.get("reused.localhost", "/").await?,
            (StatusCode::OK, "ok".into())
        );
    }
    // One client connection at a time, spread over the router's workers:
    // at most one instance connection per worker.
    let workers = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    assert!(
        backend.accepted() <= workers,
        "{} connections for 50 sequential requests",
        backend.accepted()
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_the_instance_closed_is_replaced_without_an_error() -> Result<()> {
    let env = Env::start().await?;
    let backend = Counting::start(Some(Duration::from_millis(50))).await?;
    routed(&env, "closer", backend.addr).await?;
    let http = HttpClient::new(env.addr);
    for round in 0..6 {
        assert_eq!(
            http.get("closer.localhost", "/").await?,
            (StatusCode::OK, "ok".into()),
            "round {round}"
        );
        // The instance closes the pooled connection meanwhile.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        backend.accepted() >= 6,
        "the instance's idle closes never happened"
    );
    Ok(())
}

#[tokio::test]
async fn a_get_meeting_a_keep_alive_that_just_ran_out_is_sent_again() -> Result<()> {
    let env = Env::start().await?;
    let backend = Counting::start_with(None, true).await?;
    routed(&env, "expiring", backend.addr).await?;
    let http = HttpClient::new(env.addr);
    for round in 0..6 {
        let answer =
            tokio::time::timeout(Duration::from_secs(1), http.get("expiring.localhost", "/"))
                .await??;
        assert_eq!(answer, (StatusCode::OK, "ok".into()), "round {round}");
    }
    Ok(())
}

#[tokio::test]
async fn a_streaming_response_does_not_hold_up_other_requests() -> Result<()> {
    let env = Env::start().await?;
    let backend = Counting::start(None).await?;
    routed(&env, "streamer", backend.addr).await?;
    // The stream's head and first event arrive; the response stays open.
    let mut s = TcpStream::connect(env.addr).await?;
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: streamer.localhost\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("first") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "stream closed");
            got.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await??;
    // Meanwhile other requests get answers at once.
    let http = HttpClient::new(env.addr);
    for _ in 0..5 {
        let answer =
            tokio::time::timeout(Duration::from_secs(3), http.get("streamer.localhost", "/"))
                .await??;
        assert_eq!(answer, (StatusCode::OK, "ok".into()));
    }
    Ok(())
}

//! Long-lived exchanges through the router: a protocol upgrade (as a
//! WebSocket handshake does it) joins the client to the instance both ways
//! byte for byte, and a server-sent event stream reaches the client as each
//! event is written, not when the response ends; both stay with the
//! instance they started on across a deploy, while new ones go to the new
//! instance.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_schemas::model::ServiceType;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Env, Svc};

/// Reads an HTTP head (up to the blank line) from `r`.
pub(crate) async fn head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "closed in head: {all}"
        );
        all.push_str(&line);
        if line == "\r\n" {
            return all;
        }
    }
}

/// Routes `name` to `instance`, sends `request` through the router and
/// returns the connection with the answer's head read.
async fn ask(
    env: &Env,
    name: &str,
    instance: SocketAddr,
    request: &[u8],
) -> (BufReader<TcpStream>, String) {
    let mut svc = Svc::create(&env.store, name, ServiceType::WebService)
        .await
        .unwrap();
    svc.first_deploy(1, &[instance]).await.unwrap();
    env.synced(env.store.last_stream_seq().await.unwrap())
        .await
        .unwrap();
    let mut client = BufReader::new(TcpStream::connect(env.addr).await.unwrap());
    client.get_mut().write_all(request).await.unwrap();
    let answer = head(&mut client).await;
    (client, answer)
}

/// An instance that takes one upgrade to `echo` per connection and then
/// sends back every byte it reads; it records the head it was sent.
pub(crate) async fn echo_instance() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let h = head(&mut r).await;
                let _ = tx.send(h);
                r.get_mut()
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
                    )
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if r.get_mut().write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_upgraded_connection_is_joined_to_the_instance_both_ways() {
    let env = Env::start().await.unwrap();
    let (instance, mut heads) = echo_instance().await;
    let (mut client, answer) = ask(
        &env,
        "ws",
        instance,
        b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo"), "{answer}");
    assert!(lower.contains("connection: upgrade"), "{answer}");

    // The instance was asked for the upgrade, with the client's headers.
    let asked = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(asked.starts_with("get /chat http/1.1"), "{asked}");
    assert!(asked.contains("upgrade: echo"), "{asked}");
    assert!(asked.contains("connection: upgrade"), "{asked}");
    assert!(
        asked.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{asked}"
    );

    // Then bytes flow both ways, several exchanges on the one connection.
    for i in 0..5 {
        let msg = format!("message {i}\n");
        client.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut back = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut back))
            .await
            .expect("echoed within 5 s")
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn a_server_sent_event_reaches_the_client_before_the_next_is_written() {
    let env = Env::start().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let instance = listener.local_addr().unwrap();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(stream);
        head(&mut r).await;
        let s = r.get_mut();
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        s.write_all(chunk("data: first\n\n").as_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        // The second event is written only once the client has the first.
        let _ = second_rx.await;
        s.write_all(chunk("data: second\n\n").as_bytes())
            .await
            .unwrap();
        s.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let (mut client, answer) = ask(
        &env,
        "events",
        instance,
        b"GET /events HTTP/1.1\r\nHost: events.localhost\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let t0 = Instant::now();
    let mut seen = String::new();
    while !seen.contains("data: first") {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut line))
            .await
            .expect("the first event arrives while the response is still open")
            .unwrap();
        seen.push_str(&line);
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    second_tx.send(()).unwrap();
    while !seen.contains("data: second") {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut line))
            .await
            .expect("the second event arrives")
            .unwrap();
        seen.push_str(&line);
    }
}

/// An instance labelled `label`: `/events` streams `data: <label> <n>`
/// every 50 ms until the client goes; an upgrade to `echo` answers each
/// line as `<label>:<line>`.
async fn streaming_instance(label: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let h = head(&mut r).await.to_ascii_lowercase();
                if h.contains("upgrade: echo") {
                    let _ = r
                        .get_mut()
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                        .await;
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let back = format!("{label}:{line}");
                        if r.get_mut().write_all(back.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
                let s = r.get_mut();
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                for n in 0.. {
                    let data = format!("data: {label} {n}\n\n");
                    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    addr
}

async fn open(env: &Env, request: &str) -> BufReader<TcpStream> {
    let mut client = BufReader::new(TcpStream::connect(env.addr).await.unwrap());
    client
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let answer = head(&mut client).await;
    assert!(
        answer.starts_with("HTTP/1.1 101") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    client
}

/// Reads lines until one contains `want` (5 s at most).
async fn until(client: &mut BufReader<TcpStream>, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 5 s; got {seen:?}"))
            .unwrap();
        assert!(n > 0, "closed before {want:?}; got {seen:?}");
        seen.push_str(&line);
    }
    seen
}

async fn echo(client: &mut BufReader<TcpStream>, msg: &str) -> String {
    client
        .get_mut()
        .write_all(format!("{msg}\n").as_bytes())
        .await
        .unwrap();
    let mut back = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_line(&mut back))
        .await
        .expect("echoed within 5 s")
        .unwrap();
    back
}

#[tokio::test]
async fn open_websockets_and_event_streams_stay_with_the_old_instance_across_a_deploy() {
    let env = Env::start().await.unwrap();
    let v1 = streaming_instance("v1").await;
    let v2 = streaming_instance("v2").await;
    let mut svc = Svc::create(&env.store, "live", ServiceType::WebService)
        .await
        .unwrap();
    svc.first_deploy(1, &[v1]).await.unwrap();
    env.synced(env.store.last_stream_seq().await.unwrap())
        .await
        .unwrap();
    let ws = "GET /chat HTTP/1.1\r\nHost: live.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let sse = "GET /events HTTP/1.1\r\nHost: live.localhost\r\nAccept: text/event-stream\r\n\r\n";
    let mut old_ws = open(&env, ws).await;
    assert_eq!(echo(&mut old_ws, "before").await, "v1:before\n");
    let mut old_sse = open(&env, sse).await;
    until(&mut old_sse, "data: v1 1").await;

    // A deploy moves the service to v2.
    let d2 = svc.request_deploy().await.unwrap();
    svc.resolve_and_update(2).await.unwrap();
    let ids = svc.start_instances(&d2, 2, &[v2]).await.unwrap();
    svc.healthy(&ids).await.unwrap();
    let seq = svc.live(&d2, 2).await.unwrap();
    env.synced(seq).await.unwrap();

    // New connections reach v2 ...
    let mut new_ws = open(&env, ws).await;
    assert_eq!(echo(&mut new_ws, "after").await, "v2:after\n");
    let mut new_sse = open(&env, sse).await;
    until(&mut new_sse, "data: v2 1").await;
    // ... while the open ones carry on with v1, both ways and streaming.
    assert_eq!(echo(&mut old_ws, "still").await, "v1:still\n");
    let seen = until(&mut old_sse, "data: v1 10").await;
    assert!(!seen.contains("v2"), "{seen}");
}

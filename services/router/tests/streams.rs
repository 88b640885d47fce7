//! Long-lived exchanges through the router: a protocol upgrade (as a
//! WebSocket handshake does it) joins the client to the instance both ways
//! byte for byte, and a server-sent event stream reaches the client as each
//! event is written, not when the response ends.

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

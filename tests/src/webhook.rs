//! A webhook receiver: answers `POST`s 200 (or every n-th 503, so senders
//! retry) and keeps what came, the `webhook-id` header, the JSON body and
//! the answer of each request, in arrival order (duplicates included:
//! deduping is the checker's business).

use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `webhook-id` header (`None` when missing).
    pub id: Option<String>,
    /// The body, parsed (`Null` when it is not JSON).
    pub body: Value,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

/// A running receiver on a loopback port.
#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering every `fail_every`-th request 503 (never
    /// when 0).
    pub async fn start(fail_every: usize) -> Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port())).await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve(stream, keep.clone(), fail_every));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Receiver { url, got, task })
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the requests of one connection (keep-alive), one at a time.
async fn serve(mut stream: TcpStream, got: Arc<Mutex<Vec<Received>>>, fail_every: usize) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        let accepted = {
            let mut got = got.lock().unwrap_or_else(|p| p.into_inner());
            let accepted = fail_every == 0 || !(got.len() + 1).is_multiple_of(fail_every);
            got.push(Received {
                id: header("webhook-id"),
                body,
                accepted,
            });
            accepted
        };
        buf.drain(..head_end + len);
        let answer: &[u8] = if accepted {
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

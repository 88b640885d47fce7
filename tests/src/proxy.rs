//! A TCP proxy that can be made slow: everything a client sends waits
//! `delay` before it is passed on (each request then answers that much
//! later, as over a congested or far-away link); what the server sends goes
//! straight back. A server that refuses connections makes the proxy close
//! the client's at once. The proxy's tasks end when it is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy to one upstream address.
#[derive(Debug)]
pub struct DelayProxy {
    /// `127.0.0.1:PORT`, where clients connect.
    pub host: String,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`host:port`), with no delay until [`DelayProxy::set_delay`].
    pub async fn start(upstream: &str) -> Result<DelayProxy> {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port())).await?;
        let host = listener.local_addr()?.to_string();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                conns.spawn(forward(client, upstream.clone(), delay.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(DelayProxy {
            host,
            delay_ms,
            task,
        })
    }

    /// How long what clients send waits from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection's task.
        self.task.abort();
    }
}

async fn forward(client: TcpStream, upstream: String, delay: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let wait = delay.load(Ordering::Relaxed);
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if server_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_wr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, down);
}

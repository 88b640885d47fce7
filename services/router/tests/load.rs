//! Load for the zero-downtime tests: concurrent clients through the router,
//! each recording what answered it, and the check that answers switched
//! from one version to the next exactly once with nothing failing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use http::StatusCode;
use tokio::task::JoinHandle;

use crate::support::HttpClient;

/// What one load client saw: the first word of each 200 answer, in order,
/// and every failure.
#[derive(Debug, Default)]
pub struct Seen {
    pub versions: Vec<String>,
    pub failures: Vec<String>,
}

/// Concurrent clients sending GETs through the router until finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Seen>>,
}

impl Load {
    /// `clients` clients, each with its own connection pool, sending
    /// `path` (or `slow.0` every `slow.1`-th request) with `Host: host`,
    /// `pause` between requests.
    pub fn start(
        router: SocketAddr,
        host: &str,
        clients: usize,
        path: &'static str,
        slow: Option<(&'static str, u64)>,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|c| {
                let http = HttpClient::new(router);
                let stop = Arc::clone(&stop);
                let host = host.to_owned();
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut n = c as u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let p = match slow {
                            Some((slow, every)) if n.is_multiple_of(every) => slow,
                            _ => path,
                        };
                        match http.get(&host, p).await {
                            Ok((StatusCode::OK, body)) => seen
                                .versions
                                .push(body.split_whitespace().next().unwrap_or("").to_owned()),
                            Ok((status, body)) => seen.failures.push(format!("{status}: {body}")),
                            Err(e) => seen.failures.push(format!("{e:#}")),
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients and returns what each saw.
    pub async fn finish(self) -> Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for c in self.clients {
            out.push(c.await?);
        }
        Ok(out)
    }
}

/// Checks that every client saw `from` answers, then only `to` answers
/// (switched once, never back), and that nothing failed. Returns the total.
pub fn assert_switched_once(seen: &[Seen], from: &str, to: &str) -> usize {
    let mut total = 0;
    let mut failures = Vec::new();
    for (c, s) in seen.iter().enumerate() {
        total += s.versions.len() + s.failures.len();
        failures.extend(s.failures.iter().map(|f| format!("client {c}: {f}")));
        let first = s
            .versions
            .iter()
            .position(|v| v == to)
            .unwrap_or_else(|| panic!("client {c} never got {to}"));
        assert!(first > 0, "client {c} never got {from}");
        assert!(
            s.versions[..first].iter().all(|v| v == from),
            "client {c}: unexpected answer before the switch"
        );
        assert!(
            s.versions[first..].iter().all(|v| v == to),
            "client {c} went back to {from} after {to}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {total} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    total
}

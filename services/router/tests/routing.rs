//! The router alone against a real event log and real HTTP backends: which
//! host goes where, what it answers when it cannot forward, round robin,
//! connect retries and what the instance sees of the request.

use std::collections::BTreeMap;

use anyhow::Result;
use berth_domain::service::Command;
use berth_schemas::model::ServiceType;
use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{test_args, Backend, Env, HttpClient, Svc};
use berth_router::RouterArgs;

#[tokio::test]
async fn routes_by_host_and_refuses_what_it_cannot_route() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let a1 = Backend::start("a", 1).await?;
    let b1 = Backend::start("b", 1).await?;
    let p1 = Backend::start("p", 1).await?;

    let mut a = Svc::create(&env.store, "alpha", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    let mut b = Svc::create(&env.store, "beta", ServiceType::WebService).await?;
    b.first_deploy(1, &[b1.addr]).await?;
    let mut p = Svc::create(&env.store, "secret", ServiceType::PrivateService).await?;
    p.first_deploy(1, &[p1.addr]).await?;
    // Created, not live yet: nothing healthy to send traffic to.
    let mut c = Svc::create(&env.store, "gamma", ServiceType::WebService).await?;
    c.resolve_and_update(1).await?;
    let last = env.store.last_stream_seq().await?;
    env.synced(last).await?;

    assert_eq!(
        http.get("alpha.localhost", "/").await?,
        (StatusCode::OK, "a 1".into())
    );
    assert_eq!(
        http.get("beta.localhost:8080", "/x?y=1").await?,
        (StatusCode::OK, "b 1".into())
    );
    assert_eq!(http.get("ALPHA.LOCALHOST", "/").await?.1, "a 1");

    // A private service is never routed publicly, even by its exact name.
    let (status, body) = http.get("secret.localhost", "/").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        !body.contains("secret"),
        "404 page names the service: {body}"
    );
    assert_eq!(p1.hits(), 0, "the private backend was reached");

    for host in [
        "nope.localhost",
        "localhost",
        "alpha.example.com",
        "x.alpha.localhost",
    ] {
        let (status, body) = http.get(host, "/").await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{host}");
        assert!(!body.contains("127.0.0.1"), "{body}");
    }

    let (status, body) = http.get("gamma.localhost", "/").await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("gamma has no healthy instance"), "{body}");

    // Suspended: 503 with a page saying so; resume keeps it off until a
    // deploy is live again (here the old one is still live: served again).
    a.cmd(Command::Suspend).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let (status, body) = http.get("alpha.localhost", "/").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("alpha is suspended"), "{body}");
    a.cmd(Command::Resume {
        deploy: berth_schemas::ids::DeployId::generate(),
    })
    .await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("alpha.localhost", "/").await?,
        (StatusCode::OK, "a 1".into()),
        "resumed with its old deploy still live: served again"
    );

    // Deleted: gone (404), the name no longer answers.
    b.cmd(Command::Delete).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("beta.localhost", "/").await?.0,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn unhealthy_and_exited_instances_leave_routing_renames_move_the_host() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let b1 = Backend::start("v1", 1).await?;
    let b2 = Backend::start("v1", 2).await?;
    let mut s = Svc::create(&env.store, "web", ServiceType::WebService).await?;
    let ids = s.first_deploy(1, &[b1.addr, b2.addr]).await?;

    let seq = s
        .append(vec![berth_schemas::events::InstanceUnhealthy {
            instance: ids[0].clone(),
            reason: "GET / timed out".into(),
        }
        .into()])
        .await?;
    env.synced(seq).await?;
    for _ in 0..6 {
        assert_eq!(http.get("web.localhost", "/").await?.1, "v1 2");
    }
    let seq = s
        .append(vec![berth_schemas::events::InstanceExited {
            exit_code: Some(1),
            ..berth_schemas::events::InstanceExited::of(ids[1].clone())
        }
        .into()])
        .await?;
    env.synced(seq).await?;
    assert_eq!(
        http.get("web.localhost", "/").await?.0,
        StatusCode::BAD_GATEWAY
    );
    let seq = s.healthy(&ids).await?;
    env.synced(seq).await?;
    assert_eq!(http.get("web.localhost", "/").await?.0, StatusCode::OK);

    let settings = berth_schemas::events::ServiceSettings {
        name: Some("site".into()),
        ..Default::default()
    };
    let seq = s
        .cmd(Command::Update {
            settings: Box::new(settings),
            deploy: berth_schemas::ids::DeployId::generate(),
        })
        .await?;
    env.synced(seq).await?;
    assert_eq!(
        http.get("web.localhost", "/").await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(http.get("site.localhost", "/").await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn round_robin_over_three_and_a_dead_instance_is_skipped() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let mut backends = Vec::new();
    for i in 1..=3 {
        backends.push(Backend::start("v1", i).await?);
    }
    // A fourth instance whose port is closed (the process died, no event yet).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let mut addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut s = Svc::create(&env.store, "rr", ServiceType::WebService).await?;
    s.first_deploy(1, &addrs).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let (status, body) = http.get("rr.localhost", "/").await?;
        assert_eq!(status, StatusCode::OK);
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "not round robin: {seen:?}");

    // Redeploy onto the three live backends plus the dead address.
    addrs.push(dead);
    let deploy = s.request_deploy().await?;
    s.resolve_and_update(2).await?;
    let ids = s.start_instances(&deploy, 2, &addrs).await?;
    s.healthy(&ids).await?;
    let seq = s.live(&deploy, 2).await?;
    env.synced(seq).await?;

    let before: u64 = backends.iter().map(Backend::hits).sum();
    let mut failures = 0;
    for _ in 0..40 {
        let (status, _) = http.get("rr.localhost", "/").await?;
        if status != StatusCode::OK {
            failures += 1;
        }
    }
    // A POST whose connect fails is retried too: its body was never read.
    for _ in 0..8 {
        let (status, body) = http
            .send(
                "POST",
                "rr.localhost",
                "/upload",
                Bytes::from(vec![7u8; 5000]),
            )
            .await?;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "5000"));
    }
    assert_eq!(failures, 0);
    let after: u64 = backends.iter().map(Backend::hits).sum();
    assert_eq!(
        after - before,
        48,
        "every request answered by a live backend"
    );
    Ok(())
}

#[tokio::test]
async fn the_instance_sees_forwarded_headers_and_streamed_bodies() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let b = Backend::start("v1", 1).await?;
    let mut s = Svc::create(&env.store, "hdr", ServiceType::WebService).await?;
    s.first_deploy(1, &[b.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let (status, echo) = http.get("hdr.localhost:8080", "/echo").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(echo.contains("x-forwarded-for: 127.0.0.1\n"), "{echo}");
    assert!(echo.contains("x-forwarded-proto: http\n"), "{echo}");
    assert!(
        echo.contains("x-forwarded-host: hdr.localhost:8080\n"),
        "{echo}"
    );
    assert!(echo.contains("host: hdr.localhost:8080\n"), "{echo}");

    // Each request gets an id the instance sees (a new one per request
    // unless the client sent its own, which is kept) and the client gets
    // back.
    let id_of = |echo: &str| {
        echo.lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .map(str::to_owned)
    };
    let first = id_of(&echo).expect("the instance sees a request id");
    assert!(
        first.len() == 16 && first.bytes().all(|b| b.is_ascii_hexdigit()),
        "{first}"
    );
    let (_, again) = http.get("hdr.localhost:8080", "/echo").await?;
    assert_ne!(id_of(&again), Some(first));
    let mut raw = tokio::net::TcpStream::connect(env.addr).await?;
    raw.write_all(
        b"GET /echo HTTP/1.1\r\nHost: hdr.localhost\r\nX-Request-Id: ci-run-42\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await?;
    let answer = answer.to_ascii_lowercase();
    assert_eq!(
        answer.matches("x-request-id: ci-run-42").count(),
        2,
        "kept for the instance and returned: {answer}"
    );

    let big = Bytes::from(vec![1u8; 8 << 20]);
    let (status, n) = http.send("PUT", "hdr.localhost", "/upload", big).await?;
    assert_eq!((status, n.as_str()), (StatusCode::OK, "8388608"));
    Ok(())
}

#[tokio::test]
async fn a_restarted_router_rebuilds_the_table_from_the_log() -> Result<()> {
    let mut env = Env::start().await?;
    let b = Backend::start("v1", 1).await?;
    let mut s = Svc::create(&env.store, "again", ServiceType::WebService).await?;
    s.first_deploy(1, &[b.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    env.restart_router().await?;
    // The first router left a snapshot on its way out; the new one started
    // from it (its routes are built afresh from the restored services).
    let kv = env
        .store
        .jetstream()
        .get_key_value(env.store.subjects().snapshot_bucket())
        .await?;
    assert!(
        kv.get(berth_router::table::SNAPSHOT_KEY).await?.is_some(),
        "no routing snapshot written on the way out"
    );
    // Ready means caught up: no waiting needed.
    let http = HttpClient::new(env.addr);
    assert_eq!(
        http.get("again.localhost", "/").await?,
        (StatusCode::OK, "v1 1".into())
    );
    // And it follows the log from there.
    let b2 = Backend::start("later", 1).await?;
    let mut later = Svc::create(&env.store, "later", ServiceType::WebService).await?;
    later.first_deploy(1, &[b2.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("later.localhost", "/").await?,
        (StatusCode::OK, "later 1".into())
    );
    Ok(())
}

#[tokio::test]
async fn on_shutdown_in_flight_requests_finish() -> Result<()> {
    let mut env = Env::start().await?;
    let b = Backend::start("v1", 1).await?;
    let mut s = Svc::create(&env.store, "drain", ServiceType::WebService).await?;
    s.first_deploy(1, &[b.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let http = HttpClient::new(env.addr);
    let slow = tokio::spawn(async move { http.get("drain.localhost", "/slow").await });
    // Stop once the request is at the instance (which answers 300 ms later).
    while b.hits() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let t = std::time::Instant::now();
    env.stop().await;
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(100),
        "router stopped before its request ended ({:?})",
        t.elapsed()
    );
    assert_eq!(slow.await??, (StatusCode::OK, "v1 1".into()));
    // And it no longer accepts.
    assert!(tokio::net::TcpStream::connect(env.addr).await.is_err());
    Ok(())
}

/// The table is in memory: a NATS outage does not stop routing, and once
/// the server is back the router follows the log again.
#[tokio::test]
async fn routing_survives_a_nats_outage_and_catches_up_after() -> Result<()> {
    let mut env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let b1 = Backend::start("v1", 1).await?;
    let b2 = Backend::start("v2", 1).await?;
    let mut s = Svc::create(&env.store, "steady", ServiceType::WebService).await?;
    s.first_deploy(1, &[b1.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    env.nats.kill9()?;
    for _ in 0..5 {
        assert_eq!(http.get("steady.localhost", "/").await?.1, "v1 1");
    }
    env.nats.restart()?;

    // A deploy recorded after the restart reaches the router's table.
    // The client reconnects by itself; wait for it before appending.
    let t = std::time::Instant::now();
    while env.store.last_stream_seq().await.is_err() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "no reconnect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let deploy = s.request_deploy().await?;
    s.resolve_and_update(2).await?;
    let ids = s.start_instances(&deploy, 2, &[b2.addr]).await?;
    s.healthy(&ids).await?;
    let seq = s.live(&deploy, 2).await?;
    let t = std::time::Instant::now();
    while env.routes.load().applied_seq < seq {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "router did not follow the log after the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("router caught up {:?} after the last append", t.elapsed());
    assert_eq!(http.get("steady.localhost", "/").await?.1, "v2 1");
    Ok(())
}

/// Debian's nats-server 2.9 (one filter subject, ordered consumer) works too.
#[tokio::test]
async fn routes_on_nats_2_9() -> Result<()> {
    let env = Env::start_on(berth_tests::NatsVersion::Legacy).await?;
    let b = Backend::start("v1", 1).await?;
    let mut s = Svc::create(&env.store, "old", ServiceType::WebService).await?;
    s.first_deploy(1, &[b.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let http = HttpClient::new(env.addr);
    assert_eq!(
        http.get("old.localhost", "/").await?,
        (StatusCode::OK, "v1 1".into())
    );
    Ok(())
}

/// An instance that takes the request and closes without answering: a
/// GET goes to another instance; a POST is not sent twice (the instance
/// may have acted on it) and gets a 502.
#[tokio::test]
async fn get_is_retried_after_a_dropped_connection_post_is_not() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let closer_addr = closer.local_addr()?;
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&taken);
    let _closer = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = closer.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    let good = Backend::start("v1", 1).await?;
    let mut s = Svc::create(&env.store, "flaky", ServiceType::WebService).await?;
    s.first_deploy(1, &[closer_addr, good.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    for _ in 0..10 {
        assert_eq!(
            http.get("flaky.localhost", "/").await?,
            (StatusCode::OK, "v1 1".into())
        );
    }
    let reached = taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        reached >= 4,
        "the closing instance was hardly tried: {reached}"
    );
    assert_eq!(good.hits(), 10);

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _) = http
            .send(
                "POST",
                "flaky.localhost",
                "/upload",
                Bytes::from_static(b"once"),
            )
            .await?;
        statuses.push(status);
    }
    // Round robin alternates: two POSTs reach the closer and fail, two succeed.
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::BAD_GATEWAY,
            StatusCode::BAD_GATEWAY
        ]
    );
    assert_eq!(good.hits(), 12, "a failed POST was sent again");
    Ok(())
}

/// An instance that takes too long to start answering: 504, not a hang.
#[tokio::test]
async fn a_slow_instance_gets_a_504_after_the_response_timeout() -> Result<()> {
    let env = Env::start_with(crate::support::RouterArgs {
        router_response_timeout_secs: 1,
        ..crate::support::test_args()
    })
    .await?;
    let http = HttpClient::new(env.addr);
    // Accepts, reads the request, never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mute_addr = mute.local_addr()?;
    let _mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let mut s = Svc::create(&env.store, "mute", ServiceType::WebService).await?;
    s.first_deploy(1, &[mute_addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;

    let t = std::time::Instant::now();
    let (status, body) = http.get("mute.localhost", "/").await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("mute did not answer in time"), "{body}");
    let took = t.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
    Ok(())
}

/// Each requested service gets one request sample per interval: counts by
/// status class and latency buckets, on its own subject.
#[tokio::test]
async fn requests_are_sampled_per_service() -> Result<()> {
    use berth_schemas::metrics::HttpSample;
    use futures::StreamExt;
    let env = Env::start_with(crate::support::RouterArgs {
        router_metrics_ms: 1000,
        ..crate::support::test_args()
    })
    .await?;
    let http = HttpClient::new(env.addr);
    let a1 = Backend::start("a", 1).await?;
    let mut a = Svc::create(&env.store, "counted", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    let other = Svc::create(&env.store, "quiet", ServiceType::WebService).await?;
    let last = env.store.last_stream_seq().await?;
    env.synced(last).await?;
    let subjects = env.store.subjects().clone();
    let mut samples = env
        .store
        .client()
        .subscribe(subjects.service_http_metrics(&a.id))
        .await?;
    let mut quiet = env
        .store
        .client()
        .subscribe(subjects.service_http_metrics(&other.id))
        .await?;
    env.store.client().flush().await?;
    for _ in 0..3 {
        assert_eq!(http.get("counted.localhost", "/").await?.0, StatusCode::OK);
    }
    let mut counted = BTreeMap::new();
    let mut requests = 0;
    while requests < 3 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), samples.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))?;
        let s: HttpSample = serde_json::from_slice(&m.payload)?;
        requests += s.latency_buckets.iter().sum::<u64>();
        for (class, n) in s.counts {
            *counted.entry(class).or_insert(0) += n;
        }
    }
    assert_eq!(counted, BTreeMap::from([("2xx".to_owned(), 3)]));
    // A service nobody requested publishes nothing.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(1500), quiet.next())
            .await
            .is_err(),
        "an idle service was sampled"
    );
    Ok(())
}

/// `GET /` with `Host: host` over a connection of its own: the whole
/// answer as sent (head and body).
async fn raw_get(router: std::net::SocketAddr, host: &str) -> Result<String> {
    let mut c = tokio::net::TcpStream::connect(router).await?;
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_service_in_maintenance_gets_a_503_page_that_sends_browsers_to_its_own() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let a1 = Backend::start("a", 1).await?;
    let mut a = Svc::create(&env.store, "alpha", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(http.get("alpha.localhost", "/").await?.0, StatusCode::OK);
    let hits = a1.hits();

    let maintenance = |enabled: bool, uri: &str| Command::Update {
        settings: Box::new(berth_schemas::events::ServiceSettings {
            maintenance_mode: Some(berth_schemas::model::MaintenanceMode {
                enabled,
                uri: uri.into(),
            }),
            ..Default::default()
        }),
        deploy: berth_schemas::ids::DeployId::generate(),
    };
    a.cmd(maintenance(true, "")).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let (status, body) = http.get("alpha.localhost", "/anything").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("alpha is down for maintenance"), "{body}");
    assert!(!body.contains("refresh"), "no page of its own: {body}");
    let raw = raw_get(env.addr, "alpha.localhost").await?;
    assert!(
        raw.to_ascii_lowercase().contains("retry-after: 120"),
        "{raw}"
    );

    // With a page of its own: browsers are sent there, the address
    // escaped where it sits in HTML.
    let page = "https://status.example.com/down?a=1&b=2";
    a.cmd(maintenance(true, page)).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let raw = raw_get(env.addr, "alpha.localhost").await?;
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains(&format!("refresh: 0; url={page}")),
        "{raw}"
    );
    assert!(
        raw.contains("content=\"0; url=https://status.example.com/down?a=1&amp;b=2\""),
        "{raw}"
    );
    assert_eq!(a1.hits(), hits, "nothing reached the instance");

    // Off: served again.
    a.cmd(maintenance(false, page)).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("alpha.localhost", "/").await?,
        (StatusCode::OK, "a 1".into())
    );
    Ok(())
}

#[tokio::test]
async fn a_service_with_an_ip_allow_list_serves_only_the_clients_on_it() -> Result<()> {
    let env = Env::start().await?;
    let http = HttpClient::new(env.addr);
    let a1 = Backend::start("a", 1).await?;
    let mut a = Svc::create(&env.store, "alpha", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    let allow = |blocks: &[&str]| Command::Update {
        settings: Box::new(berth_schemas::events::ServiceSettings {
            ip_allow_list: Some(Some(
                blocks
                    .iter()
                    .map(|b| berth_schemas::model::CidrBlock {
                        cidr_block: (*b).into(),
                        description: String::new(),
                    })
                    .collect(),
            )),
            ..Default::default()
        }),
        deploy: berth_schemas::ids::DeployId::generate(),
    };
    // The tests' client is 127.0.0.1.
    a.cmd(allow(&["203.0.113.0/24"])).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    let hits = a1.hits();
    let (status, body) = http.get("alpha.localhost", "/").await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("not on this service's IP allow list"),
        "{body}"
    );
    let raw = raw_get(env.addr, "alpha.localhost").await?;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    // No proxy is trusted here: a client naming an allowed address is
    // not believed.
    assert_eq!(
        http.get_forwarded("alpha.localhost", "203.0.113.9")
            .await?
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(a1.hits(), hits, "nothing reached the instance");

    a.cmd(allow(&["203.0.113.0/24", "127.0.0.0/8"])).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("alpha.localhost", "/").await?,
        (StatusCode::OK, "a 1".into())
    );
    assert!(raw_get(env.addr, "alpha.localhost")
        .await?
        .starts_with("HTTP/1.1 200"));

    // Empty: no one.
    a.cmd(allow(&[])).await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get("alpha.localhost", "/").await?.0,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

/// Behind a proxy the router trusts (a load balancer; here the tests' own
/// 127.0.0.1), the client an allow list is checked against is the last
/// address in `X-Forwarded-For` that is not the proxy's.
#[tokio::test]
async fn behind_a_trusted_proxy_the_allow_list_checks_the_forwarded_client() -> Result<()> {
    let env = Env::start_with(RouterArgs {
        router_trusted_proxies: "127.0.0.0/8, ::1".into(),
        ..test_args()
    })
    .await?;
    let http = HttpClient::new(env.addr);
    let a1 = Backend::start("a", 1).await?;
    let mut a = Svc::create(&env.store, "alpha", ServiceType::WebService).await?;
    a.first_deploy(1, &[a1.addr]).await?;
    a.cmd(Command::Update {
        settings: Box::new(berth_schemas::events::ServiceSettings {
            ip_allow_list: Some(Some(vec![berth_schemas::model::CidrBlock {
                cidr_block: "203.0.113.0/24".into(),
                description: "office".into(),
            }])),
            ..Default::default()
        }),
        deploy: berth_schemas::ids::DeployId::generate(),
    })
    .await?;
    env.synced(env.store.last_stream_seq().await?).await?;
    assert_eq!(
        http.get_forwarded("alpha.localhost", "203.0.113.9").await?,
        (StatusCode::OK, "a 1".into())
    );
    // The proxy itself is not on the list; nor is a client that wrote an
    // allowed address in front of its own.
    assert_eq!(
        http.get("alpha.localhost", "/").await?.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        http.get_forwarded("alpha.localhost", "203.0.113.9, 198.51.100.1")
            .await?
            .0,
        StatusCode::FORBIDDEN
    );
    Ok(())
}

//! Refused credentials are cheap for berth: a bad bearer token is checked
//! against the log once, then refused from memory; a deploy hook with a
//! malformed or unknown service id or a wrong key never reaches the
//! service's desk; failed authentication is limited per client address
//! (429 with `Retry-After`); and the listener closes connections that are
//! slow to send their headers. Bus work is counted as the messages the
//! installation's NATS client sends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use berth_api::FailureLimits;
use berth_schemas::ids::ServiceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::App;

fn from(ip: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse().unwrap(), 40000))
}

/// A string shaped like a hook key (32 base64url characters), not a real one.
fn shaped_key(i: u32) -> String {
    format!("{i:A>32}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_costs_one_check_against_the_log_then_none() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let before = app.bus_messages();
    let (s, _) = app
        .call(Method::GET, "/v1/services", Some("berth_wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let first = app.bus_messages() - before;
    assert!(
        first >= 1,
        "the first refusal checks the log: {first} messages"
    );

    let before = app.bus_messages();
    for _ in 0..20 {
        let (s, _) = app
            .call(Method::GET, "/v1/services", Some("berth_wrong"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let again = app.bus_messages() - before;
    assert!(
        again <= 1,
        "20 repeats of a refused token sent {again} messages"
    );

    // Valid keys are not affected, and a key made a moment ago (maybe not
    // in the read model yet) is accepted at once.
    let (s, _) = app.get("/v1/services", &alice).await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..5 {
        let fresh = app.owner().await;
        let (s, v) = app.get("/v1/services", &fresh).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_limited_per_address() {
    let mut app = App::start(false).await;
    app.limit_failures(FailureLimits {
        burst: 3,
        per_minute: 1,
    });
    let alice = app.owner().await;
    let a = from("192.0.2.1");
    for i in 0..3 {
        let (s, retry, _) = app
            .get_from(a, "/v1/services", Some(&format!("berth_bad{i}")))
            .await;
        assert_eq!((s, retry), (StatusCode::UNAUTHORIZED, None), "attempt {i}");
    }
    // Out of failures: 429, with no check against the log for new tokens.
    let before = app.bus_messages();
    for i in 3..13 {
        let (s, retry, v) = app
            .get_from(a, "/v1/services", Some(&format!("berth_bad{i}")))
            .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(v["id"], "too_many_requests");
        // One failure a minute: the next one in about 60 s.
        let retry = retry.expect("Retry-After");
        assert!((55..=60).contains(&retry), "Retry-After {retry}");
    }
    let sent = app.bus_messages() - before;
    assert!(sent <= 1, "10 limited attempts sent {sent} messages");
    // A missing key counts too, and so does a wrong deploy-hook key.
    let (s, retry, _) = app.get_from(a, "/v1/services", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some());
    let hook = format!("/deploy/{}?key={}", ServiceId::generate(), shaped_key(1));
    let (s, retry, _) = app.get_from(a, &hook, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some());

    // A valid key from the same address still works (clients behind one NAT).
    let (s, _, _) = app.get_from(a, "/v1/services", Some(&alice.key)).await;
    assert_eq!(s, StatusCode::OK);
    // Other addresses have budgets of their own; an IPv6 /64 is one client.
    let (s, _, _) = app
        .get_from(from("192.0.2.2"), "/v1/services", Some("berth_bad0"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = app.get_from(None, "/v1/services", Some("berth_bad0")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for i in 0..3 {
        let peer = from(&format!("2001:db8:0:1::{i}"));
        let hook = format!("/deploy/not-a-service?key={}", shaped_key(i));
        let (s, _, _) = app.get_from(peer, &hook, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let (s, _, _) = app
        .get_from(from("2001:db8:0:1::99"), "/v1/services", Some("berth_bad0"))
        .await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "the /64 shares one budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_refusals_do_no_bus_work_before_the_key_check() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, hook) = app.service(&alice, "guarded").await;
    let right_key = hook.split("key=").nth(1).unwrap().to_owned();
    let unknown = ServiceId::generate();
    // The resolver shares the client: let it finish the first deploy.
    let first = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &first).await;
    let call = |path: String| {
        let app = &app;
        async move { app.call(Method::GET, &path, None, None).await }
    };

    // Malformed ids and keys: refused before any I/O.
    let before = app.bus_messages();
    for i in 0..10 {
        for path in [
            format!("/deploy/not-a-service?key={}", shaped_key(i)),
            format!("/deploy/srv-{i}?key={}", shaped_key(i)),
            format!("/deploy/{svc}?key=short{i}"),
            format!("/deploy/{svc}?key={right_key}{i}"),
            format!("/deploy/{unknown}"),
        ] {
            let (s, _) = call(path.clone()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let sent = app.bus_messages() - before;
    assert!(sent <= 1, "50 malformed hook calls sent {sent} messages");

    // A well-formed unknown service, or a wrong key for a real one: one
    // check that the read model is current, then refused from memory, and
    // never a desk loading the service.
    for path in [
        format!("/deploy/{unknown}?key={}", shaped_key(7)),
        format!("/deploy/{svc}?key={}", shaped_key(7)),
    ] {
        let before = app.bus_messages();
        for _ in 0..20 {
            let (s, _) = call(path.clone()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        }
        let sent = app.bus_messages() - before;
        assert!(sent <= 2, "20 calls of {path} sent {sent} messages");
    }

    // The right key deploys.
    let (s, v) = call(hook.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // After a regeneration the old key, which the API opened before, is
    // refused by the desk once and then without reaching it again; the new
    // key deploys.
    let path = format!("/v1/services/{svc}/deploy-hook/regenerate");
    let (s, new) = app.post(&path, &alice, serde_json::json!({})).await;
    assert_eq!(s, StatusCode::OK, "{new}");
    quiet(&app).await;
    let before = app.bus_messages();
    for _ in 0..20 {
        let (s, _) = call(hook.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let sent = app.bus_messages() - before;
    assert!(sent <= 5, "20 calls with the old key sent {sent} messages");
    let (s, v) = call(new["url"].as_str().unwrap().to_owned()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Waits until the installation's client has sent nothing for 300 ms (the
/// resolver, sharing it, is done with the deploys just made).
async fn quiet(app: &App) {
    let t0 = Instant::now();
    let mut last = app.bus_messages();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = app.bus_messages();
        if now == last {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the bus never went quiet"
        );
        last = now;
    }
}

/// A minimal HTTP/1.1 exchange: the status code and `Retry-After`, if any.
async fn http_get(addr: SocketAddr, path: &str, key: &str) -> (u16, Option<String>) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let retry = out.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(str::to_owned)
    });
    (code, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_cuts_off_slow_headers_and_knows_each_client() {
    let app = App::start(false).await;
    let state = app.state.clone().with_failure_limits(FailureLimits {
        burst: 1,
        per_minute: 1,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(berth_api::serve(
        listener,
        state.clone(),
        stop.clone(),
        Duration::from_secs(1),
    ));

    // A client sending its headers a byte every 200 ms is cut off after the
    // 1 s timeout, long before it would have finished.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET /v1/openapi.json HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut closed = None;
    for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(&[*b]).await.is_err() {
            closed = Some(t0.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        // EOF, an error, or an answer (408) before the headers ended.
        let read = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await;
        if read.is_ok() {
            closed = Some(t0.elapsed());
            break;
        }
    }
    let closed = closed.expect("a slow client kept its connection for 10 s");
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );

    // A prompt client is served, and failures are counted per peer address:
    // 127.0.0.1 runs out while a request without one (in-process) does not.
    let (code, _) = http_get(addr, "/v1/openapi.json", "x").await;
    assert_eq!(code, 200);
    let (code, _) = http_get(addr, "/v1/services", "berth_bad1").await;
    assert_eq!(code, 401);
    let (code, retry) = http_get(addr, "/v1/services", "berth_bad2").await;
    assert_eq!(code, 429);
    assert!(retry.is_some());
    let router = berth_api::router(state);
    let req = axum::http::Request::get("/v1/services")
        .header("authorization", "Bearer berth_bad3")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
}

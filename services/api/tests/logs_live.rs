//! `GET /v1/logs/subscribe`: a WebSocket of the lines stored from the
//! moment it opens, in `GET /v1/logs`'s shape and ids, filtered the same
//! way, never another owner's or another service's; refusals before the
//! upgrade; at most a few open per owner; one consumer on the server
//! however many are open.

use std::time::Duration;

use berth_schemas::ids::InstanceId;
use berth_schemas::logs::Stream;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::logs::label;
use crate::shell::listen;
use crate::support::App;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a subscription: the socket, or the refusal's status and body.
async fn subscribe(base: &str, query: &str, key: Option<&str>) -> Result<Socket, (u16, Value)> {
    let mut req = format!("{base}/v1/logs/subscribe?{query}")
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Err((resp.status().as_u16(), json))
        }
        Err(e) => panic!("{e}"),
    }
}

/// The next line the subscription sends (within 10 s), or `None` when
/// nothing comes for `quiet`.
async fn next_line(socket: &mut Socket, quiet: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(quiet, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("the subscription ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_lines_arrive_live_filtered_and_only_the_callers() {
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let (quiet_svc, _) = app.service(&alice, "other").await;
    let (bobs, _) = app.service(&bob, "bobs").await;
    let (a, b) = (InstanceId::generate(), InstanceId::generate());

    // Refused before the upgrade, as ordinary API errors.
    let refused = |r: Result<Socket, (u16, Value)>| match r {
        Err(e) => e,
        Ok(_) => panic!("opened"),
    };
    let (s, _) = refused(subscribe(&base, &format!("resource={svc}"), None).await);
    assert_eq!(s, 401);
    let (s, v) = refused(subscribe(&base, "", Some(&alice.key)).await);
    assert_eq!(
        (s, v["fields"][0]["field"].as_str()),
        (400, Some("resource")),
        "{v}"
    );
    let (s, _) = refused(subscribe(&base, &format!("resource={bobs}"), Some(&alice.key)).await);
    assert_eq!(s, 404, "another owner's service does not exist for alice");
    let (s, _) = refused(
        subscribe(
            &base,
            &format!("resource={svc}&ownerId={}", bob.id),
            Some(&alice.key),
        )
        .await,
    );
    assert_eq!(s, 404);
    let (s, v) = app
        .get(&format!("/v1/logs/subscribe?resource={svc}"), &alice)
        .await;
    assert_eq!(s, 400, "not a WebSocket: {v}");

    // A line stored before the subscription opens is not sent.
    app.log_line(&svc, &a, Stream::Stdout, "before").await;
    let mut all = subscribe(&base, &format!("resource={svc}"), Some(&alice.key))
        .await
        .unwrap();
    let mut errors_of_a = subscribe(
        &base,
        &format!("resource={svc},{quiet_svc}&instance={a}&level=error"),
        Some(&alice.key),
    )
    .await
    .unwrap();
    let mut bobs_socket = subscribe(&base, &format!("resource={bobs}"), Some(&bob.key))
        .await
        .unwrap();

    let hostile = "\"quoted\" \\ </script> \u{1b}[31mred\u{1b}[0m \u{0}";
    let mut seqs = Vec::new();
    for (svc, inst, stream, text) in [
        (&svc, &a, Stream::Stdout, "ready"),
        (&bobs, &b, Stream::Stdout, "bob's secret line"),
        (&svc, &a, Stream::Stderr, "a failed"),
        (&quiet_svc, &b, Stream::Stderr, "other service's error"),
        (&svc, &b, Stream::Stderr, hostile),
    ] {
        seqs.push(app.log_line(svc, inst, stream, text).await);
    }
    let mut got = Vec::new();
    while let Some(line) = next_line(&mut all, Duration::from_secs(3)).await {
        got.push(line);
    }
    let messages: Vec<&str> = got.iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(
        messages,
        ["ready", "a failed", hostile],
        "in order, this service's only"
    );
    let ids: Vec<String> = got
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [seqs[0], seqs[2], seqs[4]].map(|s| s.to_string()),
        "the ids GET /v1/logs gives the same lines"
    );
    assert_eq!(label(&got[1], "resource"), svc);
    assert_eq!(label(&got[1], "instance"), a.to_string());
    assert_eq!(label(&got[1], "level"), "error");
    assert_eq!(label(&got[0], "level"), "info");
    assert_eq!(label(&got[0], "type"), "app");
    assert!(got[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    // The same lines as the kept ones.
    let (_, page) = app
        .get(
            &format!("/v1/logs?resource={svc}&direction=forward"),
            &alice,
        )
        .await;
    let kept: Vec<&Value> = page["logs"].as_array().unwrap().iter().skip(1).collect();
    assert_eq!(kept, got.iter().collect::<Vec<_>>(), "{page}");

    let only = next_line(&mut errors_of_a, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(only["message"], "a failed");
    assert_eq!(
        next_line(&mut errors_of_a, Duration::from_millis(500)).await,
        None
    );
    let bobs_line = next_line(&mut bobs_socket, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(bobs_line["message"], "bob's secret line");
    assert_eq!(
        next_line(&mut bobs_socket, Duration::from_millis(500)).await,
        None
    );

    // However many are open, the server holds one consumer for them.
    let mut stream = app
        .store
        .jetstream()
        .get_stream(app.store.subjects().logs_stream())
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.consumer_count, 1);

    // A client closing is let go; the others go on.
    all.close(None).await.unwrap();
    app.log_line(&bobs, &b, Stream::Stdout, "still here").await;
    let line = next_line(&mut bobs_socket, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(line["message"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_has_a_bounded_number_open_and_gets_one_back_when_closing() {
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let (bobs, _) = app.service(&bob, "bobs").await;
    let query = format!("resource={svc}");
    let mut open = Vec::new();
    for _ in 0..berth_api::logtap::PER_OWNER {
        open.push(subscribe(&base, &query, Some(&alice.key)).await.unwrap());
    }
    match subscribe(&base, &query, Some(&alice.key)).await {
        Err((s, v)) => assert_eq!(s, 429, "{v}"),
        Ok(_) => panic!("one more than an owner may have opened"),
    }
    // Another owner's are its own.
    let mut bobs_socket = subscribe(&base, &format!("resource={bobs}"), Some(&bob.key))
        .await
        .unwrap();
    // Closing one gives it back (once the server has seen the close).
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = subscribe(&base, &query, Some(&alice.key)).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut again = again.expect("a closed subscription is given back");
    app.log_line(&svc, None, Stream::System, "==> deploy started")
        .await;
    let line = next_line(&mut again, Duration::from_secs(3)).await.unwrap();
    assert_eq!(line["message"], "==> deploy started");
    assert!(
        !line["labels"].to_string().contains("instance"),
        "a line about a deploy has no instance: {line}"
    );
    app.log_line(&bobs, None, Stream::Stdout, "bob").await;
    assert_eq!(
        next_line(&mut bobs_socket, Duration::from_secs(3))
            .await
            .unwrap()["message"],
        "bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_told_to_page_the_rest() {
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "loud").await;
    let (quiet, _) = app.service(&alice, "quiet").await;
    let mut slow = subscribe(&base, &format!("resource={svc}"), Some(&alice.key))
        .await
        .unwrap();
    let mut other = subscribe(&base, &format!("resource={quiet}"), Some(&alice.key))
        .await
        .unwrap();
    // Not read: far more than the connection's buffers and the API's
    // queue for one client hold.
    let inst = InstanceId::generate();
    let long = "x".repeat(15_000);
    let sent = 2000;
    for _ in 0..sent {
        app.log_line(&svc, &inst, Stream::Stdout, &long).await;
    }
    let (mut got, mut close) = (0, None);
    while close.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => got += 1,
            Ok(Some(Ok(Message::Close(frame)))) => close = Some(frame.unwrap()),
            Ok(Some(Ok(_))) => {}
            other => panic!("after {got} lines: {other:?}"),
        }
    }
    let close = close.unwrap();
    assert!(got < sent, "{got} of {sent} lines: nothing fell behind");
    assert_eq!(u16::from(close.code), 1013, "{close:?}");
    assert!(close.reason.contains("GET /v1/logs"), "{close:?}");
    // Another subscription was not held up by it.
    app.log_line(&quiet, &inst, Stream::Stdout, "quiet line")
        .await;
    let line = next_line(&mut other, Duration::from_secs(3)).await.unwrap();
    assert_eq!(line["message"], "quiet line");
}

/// Reads until the server closes the subscription; the close frame.
async fn closed(socket: &mut Socket) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return frame,
            Ok(Some(Ok(Message::Text(t)))) => panic!("a line after it should have ended: {t}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("not closed with a reason: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_or_a_deleted_service_ends_the_subscription() {
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let (s, k) = app
        .post(
            "/v1/api-keys",
            &alice,
            serde_json::json!({"label": "viewer"}),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{k}");
    let viewer = k["key"].as_str().unwrap().to_owned();
    let mut by_key = subscribe(&base, &format!("resource={svc}"), Some(&viewer))
        .await
        .unwrap();
    let mut by_owner = subscribe(&base, &format!("resource={svc}"), Some(&alice.key))
        .await
        .unwrap();
    let inst = InstanceId::generate();
    app.log_line(&svc, &inst, Stream::Stdout, "seen by both")
        .await;
    for s in [&mut by_key, &mut by_owner] {
        assert_eq!(
            next_line(s, Duration::from_secs(3)).await.unwrap()["message"],
            "seen by both"
        );
    }

    let (s, _) = app
        .delete(
            &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()),
            &alice,
        )
        .await;
    assert_eq!(s.as_u16(), 204);
    // Past the once-a-second look: the next line is not sent to the key's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.log_line(&svc, &inst, Stream::Stdout, "after the revocation")
        .await;
    let frame = closed(&mut by_key).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(frame.reason.contains("revoked"), "{frame:?}");
    assert_eq!(
        next_line(&mut by_owner, Duration::from_secs(3))
            .await
            .unwrap()["message"],
        "after the revocation"
    );

    let (s, v) = app.delete(&format!("/v1/services/{svc}"), &alice).await;
    assert!(s.is_success(), "{v}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.log_line(&svc, &inst, Stream::Stdout, "after the delete")
        .await;
    let frame = closed(&mut by_owner).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(frame.reason.contains("deleted"), "{frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_go_on_across_a_nats_server_restart_without_losing_a_line() {
    let mut app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let mut live = subscribe(&base, &format!("resource={svc}"), Some(&alice.key))
        .await
        .unwrap();
    let inst = InstanceId::generate();
    app.log_line(&svc, &inst, Stream::Stdout, "before").await;
    assert_eq!(
        next_line(&mut live, Duration::from_secs(3)).await.unwrap()["message"],
        "before"
    );
    app.nats.kill9().unwrap();
    app.nats.restart().unwrap();
    // Lines stored while the API follows nothing yet are sent too.
    let mut published = Vec::new();
    for n in 0..3 {
        let text = format!("after the restart {n}");
        let t0 = std::time::Instant::now();
        loop {
            let line = berth_schemas::logs::LogLine {
                service: svc.parse().unwrap(),
                instance: Some(inst.clone()),
                stream: Stream::Stdout,
                line: text.clone(),
                time: chrono::Utc::now(),
            };
            // A retry whose first try landed is the same message.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", text.as_str());
            let sent = app
                .store
                .jetstream()
                .publish_with_headers(
                    app.store.subjects().logs(&line.service),
                    headers,
                    serde_json::to_vec(&line).unwrap().into(),
                )
                .await;
            if let Ok(ack) = sent {
                if ack.await.is_ok() {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "nats-server did not come back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        published.push(text);
    }
    let mut got = Vec::new();
    while got.len() < published.len() {
        let line = next_line(&mut live, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("only {got:?} after the restart"));
        got.push(line["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, published, "every line, once, in order");
}

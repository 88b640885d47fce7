//! `GET /v1/services/{id}/shell` without a node, over a real listener
//! (a WebSocket needs a connection to take over): every refusal comes
//! before the upgrade as an ordinary API error — no key (401), a bad size
//! or command (400, the field named), an instance the service does not
//! have (404), none running (409), a node that is not connected (503 in
//! seconds) — and the opening is on the service's events. A terminal
//! actually opened is the CLI end-to-end test's
//! (`services/berth/tests/cli_exec.rs`).

use std::time::{Duration, Instant};

use berth_schemas::ids::InstanceId;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::dashboard::signed_in;
use crate::support::App;

/// Serves the app's router on a loopback port; its base URL.
pub async fn listen(app: &App) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("ws://{addr}")
}

/// Asks for a terminal: the refusal's status and body (a terminal that
/// opens fails the test).
async fn refused(base: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = format!("{base}{path}").into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (resp.status().as_u16(), json)
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("{path} opened a terminal"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_are_refused_before_the_upgrade_with_a_reason() {
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "w").await;
    let (deploy, digest) = app.go_live(&alice, &svc).await;
    let path = format!("/v1/services/{svc}/shell");

    let (s, _) = refused(&base, &path, None).await;
    assert_eq!(s, 401);
    for (query, field) in [
        ("cols=0", "cols"),
        ("rows=1001", "rows"),
        ("cols=wide", "cols"),
        ("command=--help", "command"),
        ("command=sh&command=a%00b", "command"),
    ] {
        let (s, v) = refused(&base, &format!("{path}?{query}"), Some(&alice.key)).await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["fields"][0]["field"], field, "{query}: {v}");
    }
    // Another owner's service does not exist for it.
    let bob = app.owner().await;
    let (s, _) = refused(&base, &path, Some(&bob.key)).await;
    assert_eq!(s, 404);
    // Live, no instance yet.
    let (s, v) = refused(&base, &path, Some(&alice.key)).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("no running instance"));
    let other = InstanceId::generate();
    let (s, v) = refused(
        &base,
        &format!("{path}?instanceId={other}"),
        Some(&alice.key),
    )
    .await;
    assert_eq!(
        (s, v["message"].clone()),
        (404, "instance not found".into())
    );

    // Running on a node that is not connected: 503 in seconds, naming it.
    let (instance, node) = app.place(&svc, &deploy, &digest).await;
    app.started(&svc, &instance, &node, &digest).await;
    let t0 = Instant::now();
    let (s, v) = refused(&base, &format!("{path}?command=bash"), Some(&alice.key)).await;
    assert_eq!(s, 503, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(node.as_str()) && message.contains("not connected"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Recorded before it was asked, with its program.
    let (_, v) = app
        .get(
            &format!("/v1/services/{svc}/events?type=instance_command_requested"),
            &alice,
        )
        .await;
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["event"]["details"]["program"], "bash", "{v}");
    assert_eq!(items[0]["event"]["details"]["terminal"], true, "{v}");
    // Its node never answered: how it ended is unknown, and not said.
    let (_, v) = app
        .get(
            &format!("/v1/services/{svc}/events?type=instance_command_ended"),
            &alice,
        )
        .await;
    assert_eq!(v, serde_json::json!([]), "{v}");
    assert_eq!(
        items[0]["event"]["details"]["instanceId"],
        instance.as_str(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_terminal_socket_takes_its_own_origin_and_token_only() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let app = App::start(true).await;
    let base = listen(&app).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "w").await;
    app.go_live(&alice, &svc).await;
    let mut b = signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}/terminal")).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    let mark = "data-socket=\"";
    let at = page.html.find(mark).expect("the socket's path") + mark.len();
    let socket = page.html[at..][..page.html[at..].find('"').unwrap()].replace("&amp;", "&");
    assert!(
        socket.starts_with(&format!("/services/{svc}/terminal/socket?csrf=")),
        "{socket}"
    );
    let cookies = b
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let host = base.trim_start_matches("ws://").to_owned();
    let open = |path: String, origin: Option<String>| {
        let mut req = format!("{base}{path}").into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookies.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let status = |r: Result<_, WsError>| match r {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    let ours = Some(format!("http://{host}"));
    // Another site's page, no origin at all, no token or a wrong one.
    assert_eq!(
        status(open(socket.clone(), Some("http://evil.example".into())).await),
        403
    );
    assert_eq!(status(open(socket.clone(), None).await), 403);
    let bare = format!("/services/{svc}/terminal/socket");
    assert_eq!(status(open(bare.clone(), ours.clone()).await), 403);
    assert_eq!(
        status(open(format!("{bare}?csrf=forged"), ours.clone()).await),
        403
    );
    // Its own page: taken, and what keeps a terminal from opening (no
    // instance runs: there is no node here) is said on it.
    let (mut ws, _) = open(socket, ours).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = first else {
        panic!("{first:?}")
    };
    let said: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(said["type"], "ended", "{said}");
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("no running instance"),
        "{said}"
    );
}

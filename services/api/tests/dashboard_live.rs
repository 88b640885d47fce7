//! The dashboard's live streams, in process: one SSE message per commit,
//! ids the log's stream sequences, every commit in order; a reconnect with
//! `Last-Event-ID` resumes without loss, from memory or, for an API that
//! started after it, from the log; the owner's stream carries all of its
//! services. A followed logs page's stream sends each new line of its
//! service as the row the page draws, escaped, and only the owner's.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::logs::Stream;
use berth_schemas::AggregateId;
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::dashboard::{signed_in, Browser};
use crate::support::App;

/// One SSE message.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Opens the SSE stream at `path` as `b` (its status, and its body).
async fn open_sse(b: &Browser, path: &str, last_id: Option<u64>) -> (StatusCode, Body) {
    let jar = b
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut req = Request::builder().uri(path).header(header::COOKIE, jar);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = b
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    if status == StatusCode::OK {
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
    }
    (status, resp.into_body())
}

/// Reads SSE messages from `path` as `b` until `until` holds for what
/// was read.
async fn read_sse(
    b: &Browser,
    path: &str,
    last_id: Option<u64>,
    until: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let (status, body) = open_sse(b, path, last_id).await;
    assert_eq!(status, StatusCode::OK);
    read_messages(body, until).await
}

/// Reads SSE messages from `body` until `until` holds for what was read
/// (at most 20 s).
async fn read_messages(body: Body, until: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
    let mut body = body.into_data_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let read = async {
        while !until(&out) {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut msg = Sse {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                };
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        msg.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        msg.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        msg.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                    }
                }
                if !msg.event.is_empty() {
                    out.push(msg);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no such messages within 20 s"));
    out
}

/// The ids of the commit messages read.
fn ids(m: &[Sse]) -> Vec<u64> {
    m.iter()
        .filter(|m| m.event == "commit")
        .filter_map(|m| m.id)
        .collect()
}

/// The stream sequences of the service's commits after `after`, as the
/// log holds them.
async fn logged(app: &App, id: &str, after: u64) -> Vec<u64> {
    let id: ServiceId = id.parse().unwrap();
    app.store
        .commits_between(&AggregateId::Service(id), after, u64::MAX, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_resume_from_the_last_event_id_without_loss() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let b = signed_in(&app, &alice).await;
    let (id, _) = app.service(&alice, "live").await;
    let start = app.last_seq().await;
    let path = format!("/services/{id}/live?after={start}");

    // Three deploys queue behind the first; canceling it starts the
    // newest. Followed all along: every commit, in order, ids the log's
    // sequences.
    let first = app.latest_deploy(&alice, &id).await;
    let deploys = async {
        for _ in 0..3 {
            let (s, v) = app
                .post(&format!("/v1/services/{id}/deploys"), &alice, json!({}))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let (s, v) = app
            .post(
                &format!("/v1/services/{id}/deploys/{first}/cancel"),
                &alice,
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    };
    let has = |m: &Sse, f: &dyn Fn(&Value) -> bool| {
        m.data["events"].as_array().is_some_and(|e| e.iter().any(f))
    };
    let (got, ()) = tokio::join!(
        read_sse(&b, &path, None, |m| {
            m.iter()
                .filter(|m| has(m, &|e| e["type"] == "deploy_created"))
                .count()
                >= 3
                && m.iter()
                    .any(|m| has(m, &|e| e["timeline"]["type"] == "deploy_started"))
        }),
        deploys
    );
    let seen = ids(&got);
    let expected = logged(&app, &id, start).await;
    assert_eq!(
        seen,
        expected[..seen.len()],
        "not the log's commits in order"
    );
    for m in got.iter().filter(|m| m.event == "commit") {
        assert_eq!(m.data["seq"].as_u64(), m.id, "{:?}", m.data);
        assert_eq!(m.data["serviceId"], id.as_str());
    }
    // A timeline event rides with its commit, in the API's shape.
    assert!(got
        .iter()
        .any(|m| has(m, &|e| e["timeline"]["type"] == "deploy_ended"
            && e["timeline"]["details"]["deployId"] == first.as_str())));

    // Reconnect from an id in the middle: exactly the commits after it.
    let mid = seen[seen.len() / 2];
    let want = logged(&app, &id, mid).await;
    let again = read_sse(&b, &format!("/services/{id}/live"), Some(mid), |m| {
        ids(m).len() >= want.len()
    })
    .await;
    assert_eq!(ids(&again)[..want.len()], want[..]);

    // From before this API's feed started (a second API, started now):
    // read from the log instead, still in order and whole.
    let mut late = Browser::new(&app);
    late.router = app.second_api().await;
    assert_eq!(late.sign_in(&alice.key).await.status, StatusCode::SEE_OTHER);
    let all = logged(&app, &id, 0).await;
    let history = read_sse(&late, &format!("/services/{id}/live"), Some(0), |m| {
        ids(m).len() >= all.len()
    })
    .await;
    assert_eq!(
        ids(&history)[..all.len()],
        all[..],
        "the log's history, in order"
    );

    // The owner's stream carries every one of the owner's services.
    let owner_after = app.last_seq().await;
    let (other, _) = app.service(&alice, "other").await;
    let owner = read_sse(&b, &format!("/live?after={owner_after}"), None, |m| {
        m.iter().any(|m| m.data["serviceId"] == other.as_str())
    })
    .await;
    assert!(owner.iter().all(|m| m.event == "commit"), "{owner:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_logs_page_gets_each_new_line_as_its_row() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let mut b = signed_in(&app, &alice).await;
    let (id, _) = app.service(&alice, "talker").await;
    let (other, _) = app.service(&alice, "other").await;
    let (bobs, _) = app.service(&bob, "bobs").await;

    // Another owner's service, or none, has no stream.
    let (status, _) = open_sse(&b, &format!("/services/{bobs}/logs/live"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = open_sse(&b, "/services/srv-nothing/logs/live", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The page says where to follow, and keeps a table for the rows.
    let page = b.get(&format!("/services/{id}/logs?follow=1")).await;
    assert!(
        page.html
            .contains(&format!("data-live-logs=\"/services/{id}/logs/live\"")),
        "{}",
        page.html
    );

    let (status, body) = open_sse(&b, &format!("/services/{id}/logs/live?text=GET"), None).await;
    assert_eq!(status, StatusCode::OK);
    let inst = InstanceId::generate();
    let hostile = "GET /<script>alert(1)</script> & \"quoted\"\r";
    app.log_line(&other, &inst, Stream::Stdout, "GET / on another service")
        .await;
    app.log_line(&bobs, &inst, Stream::Stdout, "GET / of bob")
        .await;
    app.log_line(&id, &inst, Stream::Stdout, "POST /form").await;
    let seq = app.log_line(&id, &inst, Stream::Stderr, hostile).await;
    let got = read_messages(body, |m| m.iter().any(|m| m.event == "line")).await;
    let lines: Vec<&Sse> = got.iter().filter(|m| m.event == "line").collect();
    assert_eq!(lines.len(), 1, "{got:?}");
    assert_eq!(lines[0].id, Some(seq));
    let row = lines[0].data.as_str().unwrap();
    assert!(row.starts_with("<tr>"), "{row}");
    assert!(row.contains(&format!("<code>{inst}</code>")), "{row}");
    assert!(row.contains("<td>error</td>"), "{row}");
    assert!(
        row.contains("GET /&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;"),
        "escaped: {row}"
    );
    assert!(!row.contains("<script>"), "{row}");
}

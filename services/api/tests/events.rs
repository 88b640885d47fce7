//! `GET /v1/services/{id}/events` at the API: the owner's timeline, its
//! filters, and 400 naming the field for a bad `type`, `limit`, time or
//! cursor.

use axum::http::StatusCode;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_timeline_is_filtered_and_its_query_validated() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "timed").await;
    let dep = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &dep).await;
    let path = format!("/v1/services/{svc}/events");

    let (s, all) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    let started: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "deploy_started")
        .collect();
    assert_eq!(started.len(), 1, "{all}");
    assert_eq!(started[0]["event"]["details"]["deployId"], dep.as_str());
    assert_eq!(started[0]["event"]["serviceId"], svc.as_str());

    // Filters: by type, by time window.
    let (_, only) = app
        .get(&format!("{path}?type=deploy_started"), &alice)
        .await;
    assert_eq!(
        only.as_array().unwrap(),
        &started.into_iter().cloned().collect::<Vec<_>>()
    );
    let (_, none) = app
        .get(&format!("{path}?type=deploy_ended,server_failed"), &alice)
        .await;
    assert_eq!(none, serde_json::json!([]));
    let later = (chrono::Utc::now() + chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, after) = app.get(&format!("{path}?startTime={later}"), &alice).await;
    assert_eq!(after, serde_json::json!([]));
    let (_, before) = app.get(&format!("{path}?endTime={later}"), &alice).await;
    assert_eq!(before, all);

    // A bad query is a 400 naming what is wrong.
    for (query, field) in [
        ("type=bogus", "type"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("startTime=yesterday", "startTime"),
        ("endTime=2026-13-01", "endTime"),
        ("cursor=evt-aaaaaaaaaaaaaaaaaaaa", "cursor"),
    ] {
        let (s, v) = app.get(&format!("{path}?{query}"), &alice).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert!(v.to_string().contains(field), "{query}: {v}");
    }
}

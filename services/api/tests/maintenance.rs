//! A web service's maintenance mode through the API, in Render's shape:
//! `serviceDetails.maintenanceMode {enabled, uri}` at create and by PATCH,
//! shown with the service, on its timeline as Render's events, refused
//! with why for other types and for a page address unsafe to show.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_is_set_shown_on_the_timeline_and_refused_with_why() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = app.web_service(&alice, "site").await;
    let (worker, _) = app.service(&alice, "worker").await;
    let dep = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &dep).await;
    let path = format!("/v1/services/{svc}");

    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"serviceDetails": {"maintenanceMode": {"enabled": true, "uri": "https://status.example.com/"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["serviceDetails"]["maintenanceMode"],
        json!({"enabled": true, "uri": "https://status.example.com/"}),
        "{v}"
    );
    let (_, deploys) = app.get(&format!("{path}/deploys"), &alice).await;
    assert_eq!(deploys.as_array().unwrap().len(), 1, "no deploy: {deploys}");
    let (_, timeline) = app
        .get(
            &format!("{path}/events?type=maintenance_mode_enabled,maintenance_mode_uri_updated"),
            &alice,
        )
        .await;
    let types: Vec<&str> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["maintenance_mode_enabled", "maintenance_mode_uri_updated"],
        "newest first: {timeline}"
    );
    assert_eq!(timeline[0]["event"]["details"]["enabled"], true);
    assert_eq!(
        timeline[1]["event"]["details"]["toUri"],
        "https://status.example.com/"
    );

    // Refused with why, nothing recorded.
    app.details_refused(
        &alice,
        "maintenanceMode",
        &[
            (
                &worker,
                json!({"enabled": true, "uri": ""}),
                "only web services",
            ),
            (
                &svc,
                json!({"enabled": true, "uri": "javascript:alert(1)"}),
                "maintenanceMode.uri",
            ),
            (
                &svc,
                json!({"enabled": true, "uri": "https://x.example/\"><b>"}),
                "maintenanceMode.uri",
            ),
            (
                svc.as_str(),
                json!({"enabled": "yes"}),
                "expected a boolean",
            ),
        ],
    )
    .await;

    // Off: the page address stays for next time.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"serviceDetails": {"maintenanceMode": {"enabled": false, "uri": "https://status.example.com/"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["serviceDetails"]["maintenanceMode"]["enabled"], false);

    // Given at create.
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "web_service", "name": "soon", "image": {"imagePath": app.image("v1")},
                   "serviceDetails": {"maintenanceMode": {"enabled": true, "uri": ""}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["service"]["serviceDetails"]["maintenanceMode"],
        json!({"enabled": true, "uri": ""})
    );
}

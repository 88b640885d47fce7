//! A web service's IP allow list through the API, in Render's shape
//! (`serviceDetails.ipAllowList [{cidrBlock, description}]`): at create
//! and by PATCH, shown as the router reads it, refused with why.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_allow_list_is_set_shown_and_refused_with_why() {
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
            json!({"serviceDetails": {"ipAllowList": [
                {"cidrBlock": "203.0.113.0/24", "description": "office"},
                {"cidrBlock": "198.51.100.9", "description": "home"}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["serviceDetails"]["ipAllowList"],
        json!([{"cidrBlock": "203.0.113.0/24", "description": "office"},
               {"cidrBlock": "198.51.100.9/32", "description": "home"}]),
        "{v}"
    );
    let (_, deploys) = app.get(&format!("{path}/deploys"), &alice).await;
    assert_eq!(deploys.as_array().unwrap().len(), 1, "no deploy: {deploys}");

    app.details_refused(
        &alice,
        "ipAllowList",
        &[
            (
                &svc,
                json!([{"cidrBlock": "10.0.0.5/8"}]),
                "did you mean 10.0.0.0/8",
            ),
            (
                &svc,
                json!([{"cidrBlock": "everyone"}]),
                "not an IPv4 or IPv6 address block",
            ),
            (
                &worker,
                json!([{"cidrBlock": "10.0.0.0/8"}]),
                "only web services",
            ),
        ],
    )
    .await;

    // `null` removes it: every client again.
    let (s, v) = app
        .patch(
            &path,
            &alice,
            json!({"serviceDetails": {"ipAllowList": null}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["serviceDetails"].get("ipAllowList").is_none(), "{v}");

    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "web_service", "name": "closed", "image": {"imagePath": app.image("v1")},
                   "serviceDetails": {"ipAllowList": []}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["service"]["serviceDetails"]["ipAllowList"], json!([]));
}

//! A service's autoscaling through the API, in Render's shape: set with
//! `PUT /v1/services/{id}/autoscaling` (the count moves into the range at
//! once), shown in `serviceDetails.autoscaling` and on the timeline,
//! refused with why where it cannot apply, and removed with `DELETE`
//! (the count stays; scaling by hand works again).

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{App, Owner};

fn config(min: u32, max: u32, cpu: u32) -> Value {
    json!({
        "enabled": true, "min": min, "max": max,
        "criteria": {"cpu": {"enabled": true, "percentage": cpu},
                     "memory": {"enabled": false, "percentage": 80}},
    })
}

async fn put(app: &App, o: &Owner, svc: &str, body: Value) -> (StatusCode, Value) {
    app.call(
        Method::PUT,
        &format!("/v1/services/{svc}/autoscaling"),
        Some(&o.key),
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_is_set_shown_refused_with_why_and_removed() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = app.web_service(&alice, "scaled").await;
    let dep = app.latest_deploy(&alice, &svc).await;
    app.wait_resolved(&alice, &svc, &dep).await;
    let cron = app.cron_job(&alice, "nightly").await;
    let cron_dep = app.latest_deploy(&alice, &cron).await;
    app.wait_resolved(&alice, &cron, &cron_dep).await;

    // Refused with why, and nothing recorded.
    let before = app.last_seq().await;
    for (body, says) in [
        (config(3, 2, 60), "max"),
        (config(0, 2, 60), "min"),
        (config(1, 500, 60), "max"),
        (config(1, 2, 0), "criteria.cpu.percentage"),
        (
            json!({"enabled": true, "min": 1, "max": 2, "criteria": {
                "cpu": {"enabled": false, "percentage": 60},
                "memory": {"enabled": false, "percentage": 60}}}),
            "criteria",
        ),
        (json!({"enabled": true, "min": 1, "max": 2}), "criteria"),
    ] {
        let (s, v) = put(&app, &alice, &svc, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    let (s, v) = put(&app, &alice, &cron, config(1, 2, 60)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("cron jobs"), "{v}");
    assert_eq!(app.last_seq().await, before, "a refusal records nothing");

    // Set: answered as set, shown, and the count is in the range now.
    let (s, v) = put(&app, &alice, &svc, config(2, 4, 60)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, config(2, 4, 60));
    let (_, got) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(
        got["serviceDetails"]["autoscaling"],
        config(2, 4, 60),
        "{got}"
    );
    assert_eq!(got["serviceDetails"]["numInstances"], 2, "{got}");
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/scale"),
            &alice,
            json!({"numInstances": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("autoscaling"),
        "{v}"
    );
    let (_, timeline) = app
        .get(
            &format!("/v1/services/{svc}/events?type=autoscaling_config_changed"),
            &alice,
        )
        .await;
    let changed = &timeline[0]["event"]["details"];
    assert_eq!(changed["toConfig"], config(2, 4, 60), "{timeline}");
    assert_eq!(
        changed["message"],
        "autoscaling between 2 and 4 instances, keeping CPU at 60 %"
    );

    // Removed: the count stays and is set by hand again.
    let (s, _) = app
        .delete(&format!("/v1/services/{svc}/autoscaling"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, got) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert!(got["serviceDetails"].get("autoscaling").is_none(), "{got}");
    assert_eq!(got["serviceDetails"]["numInstances"], 2, "{got}");
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/scale"),
            &alice,
            json!({"numInstances": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Removing what is not there is no error.
    let (s, _) = app
        .delete(&format!("/v1/services/{svc}/autoscaling"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_given_at_create_sets_the_count_and_is_changed_only_through_its_route() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let create = |name: &str, details: Value| {
        json!({
            "type": "private_service",
            "name": name,
            "image": {"imagePath": app.image("v1")},
            "serviceDetails": details,
        })
    };
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            create(
                "api",
                json!({"numInstances": 1, "autoscaling": config(2, 5, 70)}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let details = &v["service"]["serviceDetails"];
    assert_eq!(details["autoscaling"], config(2, 5, 70), "{v}");
    assert_eq!(details["numInstances"], 2, "moved into the range: {v}");
    let svc = v["service"]["id"].as_str().unwrap().to_owned();

    // Not Render's shape, or not what a service may have: refused, none made.
    for (details, says) in [
        (
            json!({"autoscaling": {"enabled": true, "min": 1}}),
            "criteria",
        ),
        (
            json!({"autoscaling": config(1, 2, 50), "disk": {"name": "d", "mountPath": "/data"}}),
            "disk",
        ),
    ] {
        let (s, v) = app
            .post("/v1/services", &alice, create("refused", details.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{details}: {v}");
        assert!(v.to_string().contains(says), "{details}: {v}");
    }
    let names: Vec<String> = app
        .all_pages("/v1/services", &alice, "service")
        .await
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["api"]);

    // An update does not change it: its own route does.
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"autoscaling": config(1, 3, 50)}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v.to_string().contains("PUT /v1/services/{id}/autoscaling"),
        "{v}"
    );
}

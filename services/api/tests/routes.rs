//! The service, deploy, key and settings routes against a real NATS,
//! registry and resolver: the happy path and the errors (400 with field
//! errors, 401, 404, 409, 422). Credentials and owner isolation are in
//! `isolation.rs`.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required_and_checked() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    for key in [None, Some("berth_nope"), Some("")] {
        let (s, v) = app.call(Method::GET, "/v1/services", key, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(v["id"], "unauthorized");
        assert!(v["message"].is_string());
    }
    let (s, _) = app.get("/v1/services", &alice).await;
    assert_eq!(s, StatusCode::OK);
    // A key made through the API works at once; revoked, it stops working.
    let (s, k) = app
        .post("/v1/api-keys", &alice, json!({"label": "ci"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let new_key = k["key"].as_str().unwrap().to_owned();
    let (s, _) = app
        .call(Method::GET, "/v1/services", Some(&new_key), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, list) = app.get("/v1/api-keys", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&new_key),
        "a key is listed in clear"
    );
    // Paginated like credentials: plain objects, the last id is the cursor.
    let (s, page1) = app.get("/v1/api-keys?limit=1", &alice).await;
    assert_eq!(s, StatusCode::OK, "{page1}");
    assert_eq!(page1.as_array().unwrap().len(), 1);
    let cursor = page1[0]["id"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/v1/api-keys?limit=1&cursor={cursor}"), &alice)
        .await;
    assert_eq!(page2.as_array().unwrap().len(), 1, "{page2}");
    assert_ne!(page2[0]["id"], page1[0]["id"]);
    let (s, v) = app.get("/v1/api-keys?cursor=zzz", &alice).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = app
        .delete(
            &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let t0 = std::time::Instant::now();
    loop {
        let (s, _) = app
            .call(Method::GET, "/v1/services", Some(&new_key), None)
            .await;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unknown routes are 404 in the error shape.
    let (s, v) = app.get("/v1/nothing", &alice).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_deploys_routes() {
    let app = App::start(true).await;
    let alice = app.owner().await;

    // 400 with every field error listed; nothing appended.
    let before = app.last_seq().await;
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "spaceship", "image": {}, "serviceDetails": {"plan": "huge"},
                   "envVars": [{"key": "1BAD", "value": "x"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for f in [
        "type",
        "name",
        "image.imagePath",
        "serviceDetails.plan",
        "envVars.key",
    ] {
        assert!(fields.contains(&f), "{f} missing in {v}");
    }
    // Unknown fields and domain rules are 400 too.
    let (s, v) = app
        .post("/v1/services", &alice, json!({"type": "background_worker", "name": "a", "image": {"imagePath": app.image("v1")}, "colour": "red"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("colour"), "{v}");
    let (s, v) = app
        .post("/v1/services", &alice, json!({"type": "background_worker", "name": "Bad Name", "image": {"imagePath": app.image("v1")}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "name");
    // A command written as a shell line, which no shell would run: refused
    // with how to write it (a shell's own command line is taken as it is).
    for (field, details, found) in [
        (
            "dockerCommand",
            json!({"envSpecificDetails": {"dockerCommand": "npm run migrate && npm start"}}),
            "`&&`",
        ),
        (
            "preDeployCommand",
            json!({"preDeployCommand": "rake db:migrate > /tmp/out"}),
            "`>`",
        ),
        (
            "dockerCommand",
            json!({"envSpecificDetails": {"dockerCommand": "gunicorn -b 0.0.0.0:$PORT app:app"}}),
            "`$PORT`",
        ),
        (
            "dockerCommand",
            json!({"envSpecificDetails": {"dockerCommand": "echo 'open"}}),
            "unbalanced quote",
        ),
    ] {
        let (s, v) = app
            .post("/v1/services", &alice, json!({"type": "background_worker", "name": "shell", "image": {"imagePath": app.image("v1")}, "serviceDetails": details}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["fields"][0]["field"], field, "{v}");
        let said = v["message"].as_str().unwrap();
        assert!(said.contains(found), "{v}");
    }
    // Only a web service has an HTTPS redirect to set.
    let (s, v) = app
        .post("/v1/services", &alice, json!({"type": "background_worker", "name": "w", "image": {"imagePath": app.image("v1")}, "serviceDetails": {"httpsRedirect": false}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "httpsRedirect", "{v}");
    // 422: the image is not accessible.
    let (s, v) = app
        .post("/v1/services", &alice, json!({"type": "background_worker", "name": "gone", "image": {"imagePath": app.image("nope")}}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["id"], "image_not_accessible");
    assert!(
        v["message"].as_str().unwrap().contains("image_not_found"),
        "{v}"
    );
    assert_eq!(app.last_seq().await, before, "a refused create appended");
    // A shell's own command line is taken as it is (another owner's
    // service: alice's listing below is hers alone).
    let other = app.owner().await;
    let (s, v) = app
        .post("/v1/services", &other, json!({"type": "background_worker", "name": "shell", "image": {"imagePath": app.image("v1")},
            "serviceDetails": {"envSpecificDetails": {"dockerCommand": "sh -c 'npm run migrate && exec npm start'"}}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Create, then 409 for the same name.
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "web_service", "name": "web", "ownerId": alice.id.to_string(),
                   "image": {"imagePath": app.image("v1")},
                   "envVars": [{"key": "SECRET", "value": "hunter2-value"}],
                   "serviceDetails": {"plan": "standard", "numInstances": 2, "healthCheckPath": "/health"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains("hunter2-value"), "env value echoed");
    let svc = v["service"]["id"].as_str().unwrap().to_owned();
    let first = v["deployId"].as_str().unwrap().to_owned();
    assert_eq!(v["service"]["type"], "web_service");
    assert_eq!(v["service"]["serviceDetails"]["plan"], "standard");
    assert_eq!(v["service"]["serviceDetails"]["numInstances"], 2);
    assert_eq!(v["service"]["suspended"], "not_suspended");
    // Render's required fields, with truthful values for an image.
    let created = &v["service"];
    assert_eq!(created["autoDeploy"], "no");
    assert_eq!(created["rootDir"], "");
    assert_eq!(created["slug"], "web");
    assert_eq!(created["suspenders"], json!([]));
    assert_eq!(created["notifyOnFail"], "default");
    assert_eq!(created["imagePath"], app.image("v1"));
    assert!(
        created["dashboardUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/services/{}", created["id"].as_str().unwrap())),
        "{created}"
    );
    let details = &created["serviceDetails"];
    assert_eq!(
        (details["runtime"].as_str(), details["env"].as_str()),
        (Some("image"), Some("image"))
    );
    assert_eq!(details["healthCheckPath"], "/health");
    assert_eq!(details["openPorts"], json!([]));
    assert_eq!(details["url"], "http://web.localhost");
    assert_eq!(details["envSpecificDetails"]["dockerCommand"], "");
    // Render's fields for builds are refused when they ask for something,
    // accepted when they ask for nothing (as the Go client sends them).
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "background_worker", "name": "built", "autoDeploy": "yes",
                   "repo": "https://github.com/a/b", "image": {"imagePath": app.image("v1")},
                   "serviceDetails": {"runtime": "node", "autoscaling": {"enabled": true, "min": 1, "max": 3}}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let refused: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "autoDeploy",
            "repo",
            "serviceDetails.runtime",
            "serviceDetails.autoscaling"
        ],
        "{v}"
    );
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "cron_job", "name": "nightly", "autoDeploy": "no", "rootDir": "",
                   "image": {"imagePath": app.image("v1"), "ownerId": alice.id.to_string()},
                   "envVars": [{"key": "TOKEN", "generateValue": true}],
                   "serviceDetails": {"runtime": "image", "env": "image", "schedule": "0 3 * * *",
                                      "previews": {"generation": "off"}, "maxShutdownDelaySeconds": 45,
                                      "envSpecificDetails": {"dockerCommand": "/bin/job", "dockerContext": ""}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cron = &v["service"]["serviceDetails"];
    assert_eq!(
        (
            cron["schedule"].as_str(),
            cron["maxShutdownDelaySeconds"].as_u64()
        ),
        (Some("0 3 * * *"), Some(45))
    );
    assert!(
        cron.get("numInstances").is_none(),
        "a cron job's details carry no instance count: {cron}"
    );
    assert_eq!(cron["envSpecificDetails"]["dockerCommand"], "/bin/job");
    let nightly = v["service"]["id"].as_str().unwrap().to_owned();
    let (s, v) = app
        .get(&format!("/v1/services/{nightly}/env-vars/TOKEN"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["value"].as_str().unwrap().len(),
        44,
        "a generated value is 256 bits, base64: {v}"
    );
    let (s, _) = app.delete(&format!("/v1/services/{nightly}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app
        .post("/v1/services", &alice, json!({"type": "background_worker", "name": "web", "image": {"imagePath": app.image("v1")}}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // List (Render's {cursor, service}) with pagination, and get.
    let (_, _) = app.service(&alice, "second").await;
    let (s, page1) = app.get("/v1/services?limit=1", &alice).await;
    assert_eq!(s, StatusCode::OK, "{page1}");
    assert_eq!(page1.as_array().unwrap().len(), 1);
    assert_eq!(page1[0]["service"]["name"], "second", "newest first");
    let cursor = page1[0]["cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/v1/services?limit=1&cursor={cursor}"), &alice)
        .await;
    assert_eq!(page2[0]["service"]["id"], svc.as_str());
    for bad in [
        "/v1/services?limit=0",
        "/v1/services?limit=x",
        "/v1/services?cursor=zzz",
        "/v1/services?type=nope",
        "/v1/services?suspended=maybe",
        "/v1/services?createdAfter=yesterday",
    ] {
        let (s, v) = app.get(bad, &alice).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // Render's filters: honoured where berth can, accepted where it has
    // nothing to filter (previews); a parameter nobody knows is ignored.
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["service"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, want) in [
        ("type=web_service", vec!["web"]),
        (
            "type=background_worker&type=web_service",
            vec!["second", "web"],
        ),
        ("type=background_worker,cron_job", vec!["second"]),
        ("type=static_site", vec![]),
        ("name=second", vec!["second"]),
        ("env=image&region=oregon", vec!["second", "web"]),
        ("env=node", vec![]),
        ("region=frankfurt", vec![]),
        ("suspended=suspended", vec![]),
        (
            "suspended=not_suspended&includePreviews=true&foo=1",
            vec!["second", "web"],
        ),
        (&format!("ownerId={}", alice.id), vec!["second", "web"]),
        ("ownerId=usr-aaaaaaaaaaaaaaaaaaaa", vec![]),
        ("environmentId=evm-1", vec![]),
        (
            "createdAfter=2000-01-01T00:00:00Z&createdBefore=2999-01-01T00:00:00Z",
            vec!["second", "web"],
        ),
        ("updatedBefore=2000-01-01T00:00:00Z", vec![]),
    ] {
        let (s, v) = app.get(&format!("/v1/services?{query}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
        assert_eq!(names(&v), want, "{query}");
    }
    let (s, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("web")));

    // PATCH: a setting, and field errors.
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"healthCheckPath": "/ready"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["serviceDetails"]["healthCheckPath"], "/ready");
    // `null` clears an optional setting (the path: readiness by port).
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"healthCheckPath": null, "preDeployCommand": null}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["serviceDetails"]["healthCheckPath"], "", "{v}");
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"healthCheckPath": "/ready"}}),
        )
        .await;
    assert_eq!(
        (s, &v["serviceDetails"]["healthCheckPath"]),
        (StatusCode::OK, &json!("/ready"))
    );
    // The HTTPS redirect: on by default, turned off and on by PATCH.
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["httpsRedirect"], true, "{v}");
    for on in [false, true] {
        let (s, v) = app
            .patch(
                &format!("/v1/services/{svc}"),
                &alice,
                json!({"serviceDetails": {"httpsRedirect": on}}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["serviceDetails"]["httpsRedirect"], on, "{v}");
    }
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"httpsRedirect": "no"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"serviceDetails": {"plan": "nope", "region": "frankfurt"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"].as_array().unwrap().len(), 2, "{v}");

    // Deploys: the initial one resolves; a new one by tag; list; cancel.
    let d0 = app.wait_resolved(&alice, &svc, &first).await;
    assert_eq!(
        (d0["trigger"].as_str(), d0["firstDeploy"].as_bool()),
        (Some("api"), Some(true)),
        "{d0}"
    );
    let (s, d1) = app
        .post(
            &format!("/v1/services/{svc}/deploys"),
            &alice,
            json!({"imageUrl": app.image("v2")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d1}");
    assert_eq!(d1["trigger"], "api");
    assert_eq!(d1["status"], "queued", "one deploy runs at a time");
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/deploys"),
            &alice,
            json!({"imageUrl": "docker.io/library/other:v1"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "imageUrl");
    let (s, list) = app
        .get(&format!("/v1/services/{svc}/deploys"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["deploy"]["id"], d1["id"], "newest first");
    // Render's deploy filters.
    for (query, want) in [
        ("status=queued", 1),
        (
            "status=live,queued&status=update_in_progress&includeThis=1",
            2,
        ),
        ("status=canceled", 0),
        ("createdAfter=2999-01-01T00:00:00Z", 0),
        ("finishedBefore=2999-01-01T00:00:00Z", 0),
    ] {
        let (s, v) = app
            .get(&format!("/v1/services/{svc}/deploys?{query}"), &alice)
            .await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
        assert_eq!(v.as_array().unwrap().len(), want, "{query}: {v}");
    }
    let (s, _) = app
        .get(&format!("/v1/services/{svc}/deploys?status=nope"), &alice)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let d1id = d1["id"].as_str().unwrap();
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/deploys/{d1id}/cancel"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("canceled")),
        "{v}"
    );
    let (s, _) = app
        .get(
            &format!("/v1/services/{svc}/deploys/dep-aaaaaaaaaaaaaaaaaaaa"),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Rollback to the initial deploy's digest; errors.
    let (s, r) = app
        .post(
            &format!("/v1/services/{svc}/rollback"),
            &alice,
            json!({"deployId": first}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["trigger"], "rollback");
    let sha = d0["image"]["sha"].as_str().unwrap();
    assert!(r["image"]["ref"].as_str().unwrap().ends_with(sha), "{r}");
    let (s, _) = app
        .post(&format!("/v1/services/{svc}/rollback"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .post(
            &format!("/v1/services/{svc}/rollback"),
            &alice,
            json!({"deployId": d1id}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a canceled, never resolved deploy is no rollback target"
    );

    // Scale, restart, suspend (deploys refused), resume.
    let (s, _) = app
        .post(
            &format!("/v1/services/{svc}/scale"),
            &alice,
            json!({"numInstances": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["serviceDetails"]["numInstances"], 3);
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/scale"),
            &alice,
            json!({"numInstances": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "numInstances");
    let (s, _) = app
        .post(
            &format!("/v1/services/{svc}/scale"),
            &alice,
            json!({"numInstances": "3"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Nothing is live here (no scheduler), so there is nothing to restart.
    let (s, v) = app
        .post(&format!("/v1/services/{svc}/restart"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no live deploy"),
        "{v}"
    );
    let (s, _) = app
        .post(&format!("/v1/services/{svc}/suspend"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["suspended"], "suspended");
    let (s, _) = app
        .post(&format!("/v1/services/{svc}/deploys"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = app
        .post(&format!("/v1/services/{svc}/resume"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, list) = app
        .get(&format!("/v1/services/{svc}/deploys?limit=1"), &alice)
        .await;
    assert_eq!(list[0]["deploy"]["trigger"], "service_resumed");

    // Cron runs on a non-cron service are refused.
    let (s, v) = app
        .post(&format!("/v1/cron-jobs/{svc}/runs"), &alice, json!({}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["fields"][0]["field"], "type", "{v}");

    // Notification settings: owner default and service override.
    let owner_path = format!("/v1/notification-settings/owners/{}", alice.id);
    let (s, v) = app.get(&owner_path, &alice).await;
    assert_eq!(
        (s, v["notificationsToSend"].as_str()),
        (StatusCode::OK, Some("failure")),
        "{v}"
    );
    let (s, v) = app
        .patch(
            &owner_path,
            &alice,
            json!({"notificationsToSend": "all", "email": "ops@example.com"}),
        )
        .await;
    assert_eq!(
        (s, v["notificationsToSend"].as_str()),
        (StatusCode::OK, Some("all")),
        "{v}"
    );
    let (s, v) = app
        .patch(&owner_path, &alice, json!({"email": "nope"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let ov = format!("/v1/notification-settings/overrides/services/{svc}");
    let (s, v) = app
        .patch(&ov, &alice, json!({"notifyOnFail": "none"}))
        .await;
    assert_eq!(
        (s, v["notificationsToSend"].as_str()),
        (StatusCode::OK, Some("none")),
        "{v}"
    );
    let (_, v) = app.get(&ov, &alice).await;
    assert_eq!(v["notificationsToSend"], "none");
    // The service shows it in Render's words and berth's.
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(
        (
            v["notifyOnFail"].as_str(),
            v["notificationsToSend"].as_str()
        ),
        (Some("ignore"), Some("none")),
        "{v}"
    );

    // Hook URL and regeneration.
    let (s, h) = app
        .get(&format!("/v1/services/{svc}/deploy-hook"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK);
    let old = h["url"].as_str().unwrap().to_owned();
    let (s, h) = app
        .post(
            &format!("/v1/services/{svc}/deploy-hook/regenerate"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(h["url"].as_str().unwrap(), old);
    let (s, _) = app.call(Method::GET, &old, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the old hook URL still works");
    let (s, v) = app
        .call(Method::POST, h["url"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Delete: gone for every route, the name is free again.
    let (s, _) = app.delete(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.service(&alice, "web").await;
}

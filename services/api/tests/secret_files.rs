//! Secret files through the API (Render's `/services/{id}/secret-files`):
//! given at create, listed and read back by their owner only, set,
//! replaced and deleted, each change with a deploy; sealed in the log;
//! bad names and too much content refused with nothing appended.

use axum::http::{Method, StatusCode};
use berth_schemas::model::seal_context;
use berth_schemas::{AggregateId, Event};
use serde_json::{json, Value};

use crate::support::{App, Owner};

async fn deploys(app: &App, o: &Owner, svc: &str) -> usize {
    let (_, v) = app.get(&format!("/v1/services/{svc}/deploys"), o).await;
    v.as_array().unwrap().len()
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["secretFile"]["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_are_set_read_and_removed_by_their_owner_only() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "background_worker", "name": "files",
                   "image": {"imagePath": app.image("v1")},
                   "secretFiles": [{"name": "key.json", "content": "{\"k\":\"sekret-1\"}"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let svc = v["service"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/services/{svc}/secret-files");
    let (s, list) = app.get(&path, &alice).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(
        list,
        json!([{"secretFile": {"name": "key.json", "content": "{\"k\":\"sekret-1\"}"},
                "cursor": "key.json"}])
    );
    let before = deploys(&app, &alice, &svc).await;

    // One set: 201, the others kept, a deploy.
    let (s, v) = app
        .call(
            Method::PUT,
            &format!("{path}/.npmrc"),
            Some(&alice.key),
            Some(json!({"content": "//registry/:_authToken=sekret-2\n"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], ".npmrc");
    let (_, list) = app.get(&path, &alice).await;
    assert_eq!(names(&list), [".npmrc", "key.json"]);
    let (s, one) = app.get(&format!("{path}/.npmrc"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["content"], "//registry/:_authToken=sekret-2\n");
    assert_eq!(deploys(&app, &alice, &svc).await, before + 1);
    let (_, page) = app.get(&format!("{path}?limit=1"), &alice).await;
    assert_eq!(names(&page), [".npmrc"]);

    // Sealed in the log, opening with the service's context only.
    let sid = svc.parse().unwrap();
    let events = app.events_of(&AggregateId::Service(sid)).await;
    assert!(!format!("{events:?}").contains("sekret"));
    let files = events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::ServiceUpdated(u) => u.settings.secret_files.clone(),
            _ => None,
        })
        .expect("an update with the files");
    let sid = svc.parse().unwrap();
    let opened = app
        .key
        .open(&files[".npmrc"], &seal_context::secret_file(&sid, ".npmrc"))
        .unwrap();
    assert!(opened.expose().contains("sekret-2"));

    // Up to 256 KiB in all (a request body is at most 64 KiB).
    let big = "x".repeat(60 * 1024);
    for n in 0..4 {
        let (s, v) = app
            .call(
                Method::PUT,
                &format!("{path}/big-{n}"),
                Some(&alice.key),
                Some(json!({ "content": big })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{}", &v.to_string()[..100]);
    }

    // Refused, nothing appended: too much in all, bad names, duplicates,
    // no content; another owner's service is not found.
    let seq = app.last_seq().await;
    for (method, p, body, says) in [
        (
            Method::PUT,
            format!("{path}/big-4"),
            json!({ "content": big }),
            "256 KiB",
        ),
        (
            Method::PUT,
            format!("{path}/a%2Fb"),
            json!({"content": "x"}),
            "not a file name",
        ),
        (
            Method::PUT,
            format!("{path}/.."),
            json!({"content": "x"}),
            "not a file name",
        ),
        (Method::PUT, format!("{path}/ok"), json!({}), "content"),
        (
            Method::PUT,
            path.clone(),
            json!([{"name": "a", "content": "1"}, {"name": "a", "content": "2"}]),
            "once",
        ),
    ] {
        let (s, v) = app.call(method, &p, Some(&alice.key), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{p}: {v}");
        assert!(v.to_string().contains(says), "{p}: {v}");
        assert!(!v.to_string().contains("xxxxxxxx"), "content echoed");
    }
    assert_eq!(app.last_seq().await, seq);
    let bob = app.owner().await;
    let (s, _) = app.get(&path, &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.delete(&format!("{path}/key.json"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleted, then the rest replaced; a missing one is 404.
    let (s, _) = app.delete(&format!("{path}/key.json"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.delete(&format!("{path}/key.json"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app
        .call(
            Method::PUT,
            &path,
            Some(&alice.key),
            Some(json!([{"name": "only", "content": "one"}])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(names(&v), ["only"]);
    assert!(!v.to_string().contains("big-0"));
    let (_, list) = app.get(&path, &alice).await;
    assert_eq!(names(&list), ["only"]);
    // A service's PATCH does not take them.
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"secretFiles": [{"name": "x", "content": "y"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("secret-files"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_page_names_secret_files_sets_reveals_and_deletes_them() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "files").await;
    let mut b = crate::dashboard::signed_in(&app, &alice).await;
    let settings = format!("/services/{svc}/settings");
    let page = b.get(&settings).await;
    assert!(
        page.html.contains("Secret files") && page.html.contains("/etc/secrets/"),
        "{}",
        page.html
    );

    let before = deploys(&app, &alice, &svc).await;
    let set = b
        .submit(
            &settings,
            &format!("/services/{svc}/secret-files"),
            &[("name", "key.json"), ("content", "{\"k\":\"sekret-9\"}")],
        )
        .await;
    assert!(
        set.html.contains("key.json set; the service redeploys."),
        "{}",
        set.html
    );
    // Named, its content hidden until revealed.
    assert!(
        set.html.contains("key.json") && !set.html.contains("sekret-9"),
        "{}",
        set.html
    );
    assert_eq!(deploys(&app, &alice, &svc).await, before + 1);
    let (_, got) = app
        .get(&format!("/v1/services/{svc}/secret-files/key.json"), &alice)
        .await;
    assert_eq!(got["content"], "{\"k\":\"sekret-9\"}");
    let shown = b.get(&format!("{settings}?reveal=files")).await;
    assert!(shown.html.contains("sekret-9"), "{}", shown.html);

    // The API's refusals, said on the page; nothing changed.
    let bad = b
        .submit(
            &settings,
            &format!("/services/{svc}/secret-files"),
            &[("name", "a b"), ("content", "x")],
        )
        .await;
    assert!(bad.html.contains("not a file name"), "{}", bad.html);
    assert_eq!(deploys(&app, &alice, &svc).await, before + 1);

    let gone = b
        .submit(
            &settings,
            &format!("/services/{svc}/secret-files/key.json/delete"),
            &[],
        )
        .await;
    assert!(gone.html.contains("key.json deleted"), "{}", gone.html);
    let (s, _) = app
        .get(&format!("/v1/services/{svc}/secret-files/key.json"), &alice)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

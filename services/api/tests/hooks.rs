//! Deploy hooks (SPEC §6): GET and POST, `imgURL` rules, wrong key and
//! unknown service all 404 with one body, and under concurrent load every
//! 200 matches exactly one `deploy_created` event (and no hook event lacks
//! its 200).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use berth_schemas::ids::ServiceId;
use berth_schemas::model::DeployTrigger;
use berth_schemas::{Actor, AggregateId, Event};
use serde_json::Value;

use crate::support::{App, Owner};

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// deploy id → (trigger, image, actor) of every deploy_created of `svc`.
async fn created(app: &App, svc: &str) -> BTreeMap<String, (DeployTrigger, String, Actor)> {
    let id = AggregateId::Service(svc.parse::<ServiceId>().unwrap());
    let mut out = BTreeMap::new();
    for env in app.events_of(&id).await {
        if let Event::DeployCreated(e) = &env.event {
            let dup = out.insert(
                e.deploy.to_string(),
                (e.trigger, e.image.clone(), env.actor.clone()),
            );
            assert!(dup.is_none(), "deploy {} created twice", e.deploy);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_deploy_on_get_and_post_and_hide_everything_else() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, hook) = app.service(&alice, "hooked").await;
    let host = app.registry.as_ref().unwrap().host.clone();

    let (s, get) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK, "{get}");
    let (s, post) = app.call(Method::POST, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK, "{post}");
    let v2 = format!("{hook}&imgURL={}", encode(&format!("{host}/team/app:v2")));
    let (s, over) = app.call(Method::POST, &v2, None, None).await;
    assert_eq!(s, StatusCode::OK, "{over}");
    let digest = format!("sha256:{}", "a".repeat(64));
    let by_digest = format!(
        "{hook}&imgURL={}",
        encode(&format!("{host}/team/app@{digest}"))
    );
    let (s, pinned) = app.call(Method::GET, &by_digest, None, None).await;
    assert_eq!(s, StatusCode::OK, "{pinned}");

    let events = created(&app, &svc).await;
    for (v, image) in [
        (&get, format!("{host}/team/app:v1")),
        (&post, format!("{host}/team/app:v1")),
        (&over, format!("{host}/team/app:v2")),
        (&pinned, format!("{host}/team/app@{digest}")),
    ] {
        let id = v["deploy"]["id"].as_str().unwrap();
        assert!(id.starts_with("dep-"));
        let (trigger, img, actor) = &events[id];
        assert_eq!(*trigger, DeployTrigger::DeployHook);
        assert_eq!(*img, image);
        assert_eq!(*actor, Actor::DeployHook);
    }
    // The override did not change the service's image.
    let (_, v) = app.get(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(v["imagePath"], format!("{host}/team/app:v1"));

    // Everything refused is the same 404, and creates no deploy (the
    // resolver may still append its own facts meanwhile).
    let before = created(&app, &svc).await.len();
    let path = hook.split('?').next().unwrap().to_owned();
    let key = hook.split("key=").nth(1).unwrap().to_owned();
    let mut wrong_key = key.clone();
    wrong_key.replace_range(0..1, if key.starts_with('A') { "B" } else { "A" });
    let refused = [
        format!("{path}?key={wrong_key}"),
        format!("{path}?key="),
        path.clone(),
        format!("{path}?key={key}x"),
        format!("/deploy/srv-aaaaaaaaaaaaaaaaaaaa?key={key}"),
        format!("/deploy/not-a-service?key={key}"),
        // nginx@1.26: a tag written as a digest.
        format!("{hook}&imgURL={}", encode(&format!("{host}/team/app@1.26"))),
        format!("{hook}&imgURL={}", encode(&format!("{host}/team/other:v1"))),
        format!("{hook}&imgURL={}", encode("docker.io/library/nginx:1.26")),
        format!(
            "{hook}&imgURL={}",
            encode(&format!("{host}/team/app:v1@{digest}"))
        ),
        format!("{hook}&imgURL={}", encode("UPPER/case:x")),
        format!("{hook}&imgURL="),
        format!("{hook}&imgURL={}", "a".repeat(5000)),
        format!("{path}?key=%ZZ"),
    ];
    let mut bodies = Vec::new();
    for url in &refused {
        for m in [Method::GET, Method::POST] {
            let (s, v) = app.call(m.clone(), url, None, None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {url}: {v}");
            bodies.push(v);
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "404 bodies differ: {bodies:?}"
    );
    assert_eq!(
        created(&app, &svc).await.len(),
        before,
        "a refused hook deployed"
    );

    // A deleted service's hook is 404 as well.
    let (s, _) = app.delete(&format!("/v1/services/{svc}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!((s, v), (StatusCode::NOT_FOUND, bodies[0].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hooks_each_200_is_exactly_one_deploy_created() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, hook) = app.service(&alice, "busy").await;
    let (svc2, hook2) = app.service(&alice, "busy2").await;
    let wrong = format!("{}?key=wrong", hook.split('?').next().unwrap());
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..240 {
        let app = app.clone();
        let url = match i % 6 {
            0 => wrong.clone(),
            1 | 2 => hook2.clone(),
            _ => hook.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let m = if i % 2 == 0 {
                Method::GET
            } else {
                Method::POST
            };
            let (s, v): (StatusCode, Value) = app.call(m, &url, None, None).await;
            (url, s, v)
        }));
    }
    let mut ok: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in tasks {
        let (url, s, v) = t.await.unwrap();
        if url == wrong {
            assert_eq!(s, StatusCode::NOT_FOUND);
            continue;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
        let svc = if url == hook { &svc } else { &svc2 };
        ok.entry(svc.clone())
            .or_default()
            .push(v["deploy"]["id"].as_str().unwrap().to_owned());
    }
    for (svc, expected) in [(&svc, 120), (&svc2, 80)] {
        let answered = &ok[svc];
        assert_eq!(answered.len(), expected);
        let events = created(&app, svc).await;
        let hooked: Vec<&String> = events
            .iter()
            .filter(|(_, (t, _, _))| *t == DeployTrigger::DeployHook)
            .map(|(id, _)| id)
            .collect();
        let mut a = answered.clone();
        a.sort();
        let mut h: Vec<String> = hooked.into_iter().cloned().collect();
        h.sort();
        assert_eq!(a, h, "200s and deploy_created events differ for {svc}");
    }
}

/// Regenerates the service's hook key; returns the new hook URL.
async fn regenerate(app: &App, o: &Owner, svc: &str) -> String {
    let path = format!("/v1/services/{svc}/deploy-hook/regenerate");
    let (s, h) = app.post(&path, o, serde_json::json!({})).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    h["url"].as_str().unwrap().to_owned()
}

/// Suspends or resumes (`action`) the service.
async fn lifecycle(app: &App, o: &Owner, svc: &str, action: &str) {
    let path = format!("/v1/services/{svc}/{action}");
    let (s, v) = app.post(&path, o, serde_json::json!({})).await;
    assert!(s.is_success(), "{action}: {s} {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_follow_key_regeneration_and_suspension_at_once() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, hook) = app.service(&alice, "regen").await;
    // The service's hook desk now holds the state with the first key.
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK);
    let new = regenerate(&app, &alice, &svc).await;
    let (s, v) = app.call(Method::GET, &new, None, None).await;
    assert_eq!(s, StatusCode::OK, "the new key was refused: {v}");
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the old key still deploys");
    // Suspended: refused (the key is right, so the reason is given).
    lifecycle(&app, &alice, &svc, "suspend").await;
    let (s, v) = app.call(Method::POST, &new, None, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    lifecycle(&app, &alice, &svc, "resume").await;
    let (s, v) = app.call(Method::POST, &new, None, None).await;
    assert_eq!(s, StatusCode::OK, "refused after resume: {v}");
}

/// A desk that went idle leaves its state for the next one, which catches
/// up with what was written meanwhile: a key regenerated and a suspension
/// made while no desk ran are both seen by the next call.
#[tokio::test]
async fn a_desk_started_after_idle_sees_what_changed_meanwhile() {
    let idle = std::time::Duration::from_millis(300);
    let opts = berth_ingress::IngressOptions {
        hook_desk_idle: idle,
        ..Default::default()
    };
    let app = App::start_with(true, opts).await;
    let alice = app.owner().await;
    let (svc, hook) = app.service(&alice, "parked").await;
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Past the desk's idle time: it ends and parks its state.
    tokio::time::sleep(idle * 3).await;
    let new = regenerate(&app, &alice, &svc).await;
    let (s, _) = app.call(Method::GET, &hook, None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the old key deploys after a park");
    let (s, v) = app.call(Method::GET, &new, None, None).await;
    assert_eq!(s, StatusCode::OK, "the new key was refused: {v}");
    tokio::time::sleep(idle * 3).await;
    lifecycle(&app, &alice, &svc, "suspend").await;
    let (s, v) = app.call(Method::POST, &new, None, None).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a parked desk missed the suspension: {v}"
    );
    // Every 200 above is a deploy in the log, and no other.
    let (_, deploys) = app
        .get(&format!("/v1/services/{svc}/deploys?limit=100"), &alice)
        .await;
    let hooked = deploys
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["deploy"]["trigger"] == "deploy_hook")
        .count();
    assert_eq!(hooked, 2, "{deploys}");
}

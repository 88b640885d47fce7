//! `/v1/services/{id}/custom-domains`: add, list (filters, pages), get by
//! id or name, verify, delete; each naming rule refused with a 400 in the
//! error shape; a name is one service's across owners (409 that names no
//! one), web services only; deleting the service gives its names back.

use axum::http::{Method, StatusCode};
use berth_schemas::ids::{DomainId, ServiceId};
use berth_schemas::{AggregateId, Event};
use serde_json::{json, Value};

use crate::support::{App, Owner};

async fn web(app: &App, o: &Owner, name: &str) -> String {
    let (s, v) = app
        .post(
            "/v1/services",
            o,
            json!({"type": "web_service", "name": name, "image": {"imagePath": app.image("v1")}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["service"]["id"].as_str().unwrap().to_owned()
}

async fn add(app: &App, o: &Owner, svc: &str, name: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/services/{svc}/custom-domains"),
        o,
        json!({ "name": name }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_get_verify_delete() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = web(&app, &alice, "site").await;

    let (s, v) = add(&app, &alice, &svc, "WWW.Example.test").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let created = v.as_array().unwrap();
    assert_eq!(created.len(), 1, "no www/apex pair: {v}");
    let d = &created[0];
    assert!(d["id"].as_str().unwrap().starts_with("cdm-"), "{d}");
    assert_eq!(d["name"], "www.example.test");
    assert_eq!(d["domainType"], "subdomain");
    assert_eq!(d["publicSuffix"], "test");
    assert_eq!(d["redirectForName"], "");
    assert_eq!(d["verificationStatus"], "unverified");
    assert_eq!(d["certificateStatus"], "pending");
    assert_eq!(d["server"], json!({"id": svc, "name": "site"}));
    assert!(d["createdAt"].as_str().is_some(), "{d}");
    let id = d["id"].as_str().unwrap().to_owned();

    let (s, v) = add(&app, &alice, &svc, "example.test").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v[0]["domainType"], "apex");

    // By id and by name (any case).
    for key in [id.as_str(), "www.example.test", "WWW.EXAMPLE.TEST"] {
        let (s, v) = app
            .get(&format!("/v1/services/{svc}/custom-domains/{key}"), &alice)
            .await;
        assert_eq!(s, StatusCode::OK, "{key}: {v}");
        assert_eq!(v["id"], id.as_str());
    }
    let (s, v) = app
        .post(
            &format!("/v1/services/{svc}/custom-domains/{id}/verify"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");

    // Listing, filters.
    let base = format!("/v1/services/{svc}/custom-domains");
    let (s, v) = app.get(&base, &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["customDomain"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["example.test", "www.example.test"]);
    assert_eq!(v[1]["cursor"], id.as_str());
    for (query, want) in [
        ("domainType=apex", vec!["example.test"]),
        (
            "domainType=apex,subdomain",
            vec!["example.test", "www.example.test"],
        ),
        ("name=www.example.test", vec!["www.example.test"]),
        ("verificationStatus=verified", vec![]),
        (
            "verificationStatus=unverified&domainType=subdomain",
            vec!["www.example.test"],
        ),
        ("createdBefore=2000-01-01T00:00:00Z", vec![]),
        (
            "createdAfter=2000-01-01T00:00:00Z",
            vec!["example.test", "www.example.test"],
        ),
    ] {
        let (s, v) = app.get(&format!("{base}?{query}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
        let got: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["customDomain"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{query}");
    }
    let (s, v) = app.get(&format!("{base}?domainType=wild"), &alice).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Delete: 204, then gone, then 404.
    let (s, _) = app
        .delete(&format!("{base}/www.example.test"), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("{base}/{id}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app
        .delete(&format!("{base}/www.example.test"), &alice)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // The name was given back: its claim's last event is a release.
    let claim = app
        .events_of(&AggregateId::Domain(DomainId::of_name("www.example.test")))
        .await;
    assert!(
        matches!(
            claim.last().map(|e| &e.event),
            Some(Event::DomainReleased(_))
        ),
        "{claim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_naming_rule_is_a_400_in_the_error_shape() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = web(&app, &alice, "site").await;
    let long_label = format!("{}.example.test", "a".repeat(64));
    let long_name = format!("{}.test", vec!["a".repeat(60); 5].join("."));
    for bad in [
        "",
        "*.example.test",
        "www.example.test.",
        "192.168.1.1",
        "nodots",
        "bücher.example",
        "a..example.test",
        "-a.example.test",
        "a_b.example.test",
        "site.localhost",
        "localhost",
        long_label.as_str(),
        long_name.as_str(),
    ] {
        let (s, v) = add(&app, &alice, &svc, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad:?}: {v}");
        assert_eq!(v["id"], "invalid_input", "{bad:?}: {v}");
        assert_eq!(v["fields"][0]["field"], "name", "{bad:?}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Unknown fields and a missing name: 400 too.
    let (s, _) = app
        .post(
            &format!("/v1/services/{svc}/custom-domains"),
            &alice,
            json!({"name": "a.example.test", "redirect": true}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A worker takes none.
    let (worker, _) = app.service(&alice, "worker").await;
    let (s, v) = add(&app, &alice, &worker, "w.example.test").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing was claimed by any of it.
    let (s, v) = app
        .get(&format!("/v1/services/{svc}/custom-domains"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]));
    let claims = app
        .envelopes()
        .await
        .into_iter()
        .filter(|e| matches!(e.aggregate, AggregateId::Domain(_)))
        .count();
    assert_eq!(claims, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_one_services_until_given_back() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let a1 = web(&app, &alice, "one").await;
    let a2 = web(&app, &alice, "two").await;
    let b1 = web(&app, &bob, "bobs").await;

    let (s, v) = add(&app, &alice, &a1, "shop.example.test").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Again on the same service, on another of Alice's, by Bob: 409, and
    // the message names no service or owner.
    for (o, svc) in [(&alice, &a1), (&alice, &a2), (&bob, &b1)] {
        let (s, v) = add(&app, o, svc, "Shop.Example.Test").await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("shop.example.test"), "{m}");
        for id in [&a1, &a2, &b1] {
            assert!(!m.contains(id.as_str()), "{m}");
        }
        assert!(!m.contains(alice.id.as_str()) && !m.contains("one"), "{m}");
    }
    // Bob's service never got it.
    let (_, v) = app
        .get(&format!("/v1/services/{b1}/custom-domains"), &bob)
        .await;
    assert_eq!(v, json!([]));

    // Deleting Alice's service gives the name back: Bob can have it now.
    let (s, _) = app.delete(&format!("/v1/services/{a1}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = add(&app, &bob, &b1, "shop.example.test").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let owner_of = app
        .events_of(&AggregateId::Domain(DomainId::of_name("shop.example.test")))
        .await;
    match owner_of.last().map(|e| &e.event) {
        Some(Event::DomainClaimed(c)) => {
            assert_eq!(c.service, b1.parse::<ServiceId>().unwrap())
        }
        other => panic!("last claim event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_and_the_per_service_bound() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = web(&app, &alice, "many").await;
    let max = berth_domain::custom_domain::MAX_CUSTOM_DOMAINS;
    for i in 0..max {
        let (s, v) = add(&app, &alice, &svc, &format!("d{i:02}.example.test")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = add(&app, &alice, &svc, "one-more.example.test").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains(&max.to_string()));

    let base = format!("/v1/services/{svc}/custom-domains");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{base}?limit=10&cursor={c}"),
            None => format!("{base}?limit=10"),
        };
        let (s, v) = app.call(Method::GET, &path, Some(&alice.key), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let page = v.as_array().unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        for i in page {
            seen.push(i["customDomain"]["name"].as_str().unwrap().to_owned());
        }
        cursor = page
            .last()
            .map(|i| i["cursor"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..max).map(|i| format!("d{i:02}.example.test")).collect();
    assert_eq!(seen, want);
    let (s, _) = app.get(&format!("{base}?cursor=cdm-nope"), &alice).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_racing_for_a_name_get_it_once() {
    let app = App::start(true).await;
    let mut contenders = Vec::new();
    for i in 0..6 {
        let o = app.owner().await;
        let svc = web(&app, &o, &format!("racer{i}")).await;
        contenders.push((o, svc));
    }
    let answers = futures::future::join_all(
        contenders
            .iter()
            .map(|(o, svc)| add(&app, o, svc, "race.example.test")),
    )
    .await;
    let won: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::CREATED)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    for (s, v) in &answers {
        assert!(
            *s == StatusCode::CREATED || *s == StatusCode::CONFLICT,
            "{s}: {v}"
        );
    }
    // Only the winner's service has it, and it holds the claim.
    for (i, (o, svc)) in contenders.iter().enumerate() {
        let (_, v) = app
            .get(&format!("/v1/services/{svc}/custom-domains"), o)
            .await;
        assert_eq!(v.as_array().unwrap().len(), usize::from(i == won[0]), "{v}");
    }
    let claim = app
        .events_of(&AggregateId::Domain(DomainId::of_name("race.example.test")))
        .await;
    let claimed = claim
        .iter()
        .filter(|e| matches!(e.event, Event::DomainClaimed(_)))
        .count();
    assert_eq!(claimed, 1, "{claim:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_facts_show_as_verification_and_certificate_status() {
    use berth_domain::service::{Command, Service};
    use berth_schemas::events::{CertificateFailed, CertificateIssued};
    use berth_schemas::model::CertificateFailure;

    let app = App::start(true).await;
    let alice = app.owner().await;
    let svc = web(&app, &alice, "tls").await;
    let (s, v) = add(&app, &alice, &svc, "secure.example.test").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = AggregateId::Service(svc.parse().unwrap());
    // What the certificate issuer records on the service.
    let record = |fact: Event, key: &'static str| {
        let (store, id) = (app.store.clone(), id.clone());
        async move {
            store
                .execute::<Service>(
                    &id,
                    key,
                    &berth_eventlog::Stamp::new(berth_schemas::Actor::system("router")),
                    Command::RecordCertificate(Box::new(fact)),
                )
                .await
                .unwrap();
        }
    };
    let path = format!("/v1/services/{svc}/custom-domains/secure.example.test");

    let failed = CertificateFailed {
        domain: "secure.example.test".into(),
        reason: CertificateFailure::ChallengeFailed,
        attempt: 1,
        retry_in_secs: 60,
    };
    record(failed.into(), "cert-1").await;
    app.state.caught_up().await.unwrap();
    let (_, v) = app.get(&path, &alice).await;
    assert_eq!(v["verificationStatus"], "unverified", "{v}");
    assert_eq!(v["certificateStatus"], "failed", "{v}");
    assert_eq!(v["certificateError"], "challenge_failed", "{v}");

    let not_after = chrono::DateTime::parse_from_rfc3339("2027-03-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let issued = CertificateIssued {
        domain: "secure.example.test".into(),
        not_after,
        serial: "01".into(),
        renewal: false,
    };
    record(issued.into(), "cert-2").await;
    let (_, v) = app.get(&path, &alice).await;
    assert_eq!(v["verificationStatus"], "verified", "{v}");
    assert_eq!(v["certificateStatus"], "issued", "{v}");
    assert_eq!(v["certificateNotAfter"], "2027-03-01T00:00:00Z", "{v}");
    assert!(v.get("certificateError").is_none(), "{v}");
    let (_, v) = app
        .get(
            &format!("/v1/services/{svc}/custom-domains?verificationStatus=verified"),
            &alice,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    // Both facts are on the service's timeline, asked for by name (they
    // are berth's own types).
    let (_, v) = app
        .get(
            &format!("/v1/services/{svc}/events?type=certificate_failed,certificate_issued"),
            &alice,
        )
        .await;
    let types: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["certificate_issued", "certificate_failed"], "{v}");
}

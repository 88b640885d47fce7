//! `GET /v1/services` pages through the owner's services newest first, and a
//! deleted service leaves the API's read model, its timeline with it (its
//! memory does not grow with services that are gone).

use axum::http::StatusCode;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_page_newest_first_and_deleted_ones_leave_the_index() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let (svc, _) = app.service(&alice, name).await;
        ids.push(svc);
    }
    let (theirs, _) = app.service(&bob, "bobs").await;
    let count = || app.state.read(|i| i.service_count()).unwrap();
    app.state.caught_up().await.unwrap();
    assert_eq!(count(), (4, 4));

    let (s, first) = app.get("/v1/services?limit=2", &alice).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let page: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["service"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = first[1]["cursor"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!("/v1/services?limit=2&cursor={cursor}"), &alice)
        .await;
    assert_eq!(rest.as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest[0]["service"]["id"], ids[0].as_str());
    // Bob's service is never in Alice's pages, nor its id a cursor of them.
    assert!(!first.to_string().contains(theirs.as_str()));
    let (s, _) = app
        .get(&format!("/v1/services?cursor={theirs}"), &alice)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, _) = app
        .delete(&format!("/v1/services/{}", ids[1]), &alice)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    app.state.caught_up().await.unwrap();
    let t0 = std::time::Instant::now();
    while count() != (3, 3) {
        assert!(
            t0.elapsed().as_secs() < 10,
            "the deleted service stayed in the index"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, all) = app.get("/v1/services", &alice).await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let (s, _) = app
        .get(&format!("/v1/services/{}/events", ids[1]), &alice)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

//! The API's read model and the store beside it hold one copy of each
//! quiet service's state: once a service has had no commit for a while the
//! index takes the store's fold of it (or hands its own fold to the store),
//! and an index restored from a snapshot hands its states over too. The
//! one copy is the log's fold.

use axum::http::StatusCode;
use berth_api::index::{ApiIndex, QUIET_AFTER};
use berth_domain::service::{self, ServiceState};
use berth_eventlog::projection::Projection;
use berth_eventlog::NewEvent;
use berth_schemas::events::ApiKeyCreated;
use berth_schemas::ids::{ApiKeyId, OwnerId, ServiceId, UserId};
use berth_schemas::{Actor, AggregateId};
use serde_json::json;

use crate::support::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_and_the_store_hold_one_copy_of_a_service_state() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "one").await;
    let dep = app.latest_deploy(&alice, &svc).await;
    // The resolver's command is folded by the store before the index sees it.
    app.wait_resolved(&alice, &svc, &dep).await;
    for action in ["suspend", "resume"] {
        let (s, v) = app
            .post(&format!("/v1/services/{svc}/{action}"), &alice, json!({}))
            .await;
        assert!(s.is_success(), "{action}: {s} {v}");
    }
    // Resuming deploys again: the resolver's answer to that deploy is the
    // service's last commit, before it goes quiet (else it may land while
    // the log moves on below, and the service is not quiet at the end).
    let resumed = app.latest_deploy(&alice, &svc).await;
    assert_ne!(resumed, dep, "resuming deploys");
    app.wait_resolved(&alice, &svc, &resumed).await;
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The service goes quiet while the log moves on.
    let other = AggregateId::Owner(OwnerId::User(UserId::generate()));
    let mut at = app.store.load(&other).await.unwrap().version;
    for n in 0..=QUIET_AFTER {
        let key = ApiKeyCreated {
            key: ApiKeyId::generate(),
            label: format!("k{n}"),
            sha256: format!("{n:064x}"),
        };
        let event = NewEvent::new(key, Actor::system("test"));
        at = app
            .store
            .append(&other, at, vec![event], &format!("quiet-{n}"))
            .await
            .unwrap()
            .version;
    }
    app.state.caught_up().await.unwrap();

    let id: ServiceId = svc.parse().unwrap();
    let aggregate = AggregateId::Service(id.clone());
    let held = |index: &ApiIndex| {
        index
            .service(&alice.id, &id)
            .map(|s| s as *const ServiceState as usize)
    };
    let in_index = app.state.read(held).unwrap().unwrap();
    let (in_store, _) = app.store.state(&aggregate, service::fold).await.unwrap();
    assert_eq!(
        in_index, &*in_store as *const ServiceState as usize,
        "the index and the store each hold a copy"
    );
    let fresh = app
        .events_of(&aggregate)
        .await
        .iter()
        .fold(ServiceState::default(), service::fold);
    assert_eq!(*in_store, fresh);
    assert_eq!(
        in_store.config.as_ref().map(|c| c.name.as_str()),
        Some("renamed")
    );

    // An index restored from a snapshot (states decoded anew) hands its
    // states over: the store's copy, not a second one, is what it holds.
    let snapshot = app.state.read(|i| serde_json::to_vec(i).unwrap()).unwrap();
    let mut restored = ApiIndex::default().sharing(app.store.folded_states());
    restored.restore(serde_json::from_slice(&snapshot).unwrap());
    assert_eq!(held(&restored), Some(in_index));
    // Without the store's copy at the same position, it keeps its own.
    let mut alone = ApiIndex::default();
    alone.restore(serde_json::from_slice(&snapshot).unwrap());
    let own = alone.service(&alice.id, &id).unwrap();
    assert_ne!(own as *const ServiceState as usize, in_index);
    assert_eq!(*own, fresh);
}

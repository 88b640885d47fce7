//! A service with a longer history than it holds in memory: its deploy
//! listing, a deploy by id, a rollback and its events timeline reach past
//! the recent deploys and entries held, to the log, and see everything.

use axum::http::StatusCode;
use berth_domain::service::{self, Command, DeployRequest, KEPT_ENDED_DEPLOYS};
use berth_domain::timeline::{History, KEPT_PER_SERVICE};
use berth_eventlog::Stamp;
use berth_schemas::ids::{DeployId, NodeId, ServiceId};
use berth_schemas::model::{DeployTrigger, ResolvedImage};
use berth_schemas::{Actor, AggregateId};

use crate::support::App;

/// Deploys beyond what a service holds, and timeline entries beyond what
/// the index holds.
const DEPLOYS: usize = KEPT_ENDED_DEPLOYS + 60;

fn digest(n: usize) -> String {
    format!("sha256:{n:064x}")
}

/// Takes `deploy` (running) to live on `digest(n)`, as the workers report.
async fn go_live(app: &App, id: &AggregateId, deploy: &DeployId, n: usize) {
    let node: NodeId = "nod-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
    let stamp = Stamp::new(Actor::system("test"));
    for (i, command) in [
        Command::RecordResolved {
            deploy: deploy.clone(),
            image: ResolvedImage {
                digest: digest(n),
                index_digest: None,
                compressed_size: 1,
            },
        },
        Command::RecordPulled {
            deploy: deploy.clone(),
            node,
            digest: digest(n),
        },
        Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        },
        Command::RecordLive {
            deploy: deploy.clone(),
            digest: digest(n),
        },
    ]
    .into_iter()
    .enumerate()
    {
        app.store
            .execute::<service::Service>(id, &format!("{deploy}-{i}"), &stamp, command)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_listed_rolled_back_and_shown_whole() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "long").await;
    let service: ServiceId = svc.parse().unwrap();
    let id = AggregateId::Service(service.clone());
    // From here on this test reports what the workers would.
    app.stop_resolver().await;
    let first = {
        let state = app.ingress_state(&service).await;
        state.deploys[0].id.clone()
    };
    // Whether the resolver got to it first or not, the first deploy ends live.
    let state = app.ingress_state(&service).await;
    if state
        .deploy(&first)
        .and_then(|d| d.resolved.as_ref())
        .is_some()
    {
        let digest = state.deploy(&first).unwrap().digest().unwrap().to_owned();
        let stamp = Stamp::new(Actor::system("test"));
        let node: NodeId = "nod-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        for (i, command) in [
            Command::RecordPulled {
                deploy: first.clone(),
                node,
                digest: digest.clone(),
            },
            Command::RecordUpdateStarted {
                deploy: first.clone(),
            },
            Command::RecordLive {
                deploy: first.clone(),
                digest,
            },
        ]
        .into_iter()
        .enumerate()
        {
            app.store
                .execute::<service::Service>(&id, &format!("first-{i}"), &stamp, command)
                .await
                .unwrap();
        }
    } else {
        go_live(&app, &id, &first, 0).await;
    }
    let mut ids = vec![first.clone()];
    let stamp = Stamp::new(Actor::system("test"));
    for n in 1..DEPLOYS {
        let deploy = DeployId::generate();
        app.store
            .execute::<service::Service>(
                &id,
                &format!("request-{deploy}"),
                &stamp,
                Command::RequestDeploy(DeployRequest::new(deploy.clone(), DeployTrigger::Api)),
            )
            .await
            .unwrap();
        go_live(&app, &id, &deploy, n).await;
        ids.push(deploy);
    }
    let held = app.ingress_state(&service).await;
    assert!(held.forgotten_deploys > 0, "nothing was let go");
    assert!(held.deploy(&first).is_none());

    // The listing, newest first, every deploy once, across the held window.
    let listed = app
        .all_pages(&format!("/v1/services/{svc}/deploys"), &alice, "deploy")
        .await;
    let listed: Vec<&str> = listed.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = ids.iter().rev().map(|d| d.as_str()).collect();
    assert_eq!(listed, expected);

    // The oldest, by id.
    let (s, d) = app
        .get(&format!("/v1/services/{svc}/deploys/{first}"), &alice)
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "deactivated", "{d}");

    // A rollback to the second deploy (forgotten too) deploys its digest.
    let target = &ids[1];
    let (s, rolled) = app
        .post(
            &format!("/v1/services/{svc}/rollback"),
            &alice,
            serde_json::json!({ "deployId": target.as_str() }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rolled}");
    let image = rolled["image"]["ref"].as_str().unwrap();
    assert!(image.ends_with(&format!("@{}", digest(1))), "{rolled}");
    assert_eq!(rolled["rollbackOf"], target.as_str(), "{rolled}");

    // The timeline, every entry of the history, though the index holds
    // only the newest.
    let history = app.store.load(&id).await.unwrap().events;
    let whole = History::of(&history);
    let entries = whole.all();
    let want: Vec<&str> = entries.iter().rev().map(|t| t.id.as_str()).collect();
    assert!(
        want.len() > KEPT_PER_SERVICE + 64,
        "only {} entries",
        want.len()
    );
    let got = app
        .all_pages(&format!("/v1/services/{svc}/events"), &alice, "event")
        .await;
    let got: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

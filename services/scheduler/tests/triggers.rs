//! Every deploy trigger through to `live` on real nodes, each deploy's
//! statuses observed as events in order, the overlap policy `wait` (the
//! newest queued deploy runs, older queued ones end canceled as superseded)
//! and an explicit cancel.

use berth_domain::service::{Command, DeployRequest};
use berth_schemas::events::{CancelReason, ServiceSettings};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{DeployTrigger, ServiceType};
use berth_schemas::{Envelope, Event};

use berth_tests::scheduler::{types, World};

/// The deploy lifecycle events of one deploy (`Event::deploy`), as
/// type names; instance and pull facts left out.
fn of(ev: &[Envelope], d: &DeployId) -> Vec<&'static str> {
    const LIFECYCLE: [&str; 9] = [
        "deploy_created",
        "deploy_queued",
        "deploy_started",
        "image_resolved",
        "update_started",
        "deploy_live",
        "deploy_failed",
        "deploy_canceled",
        "deploy_deactivated",
    ];
    ev.iter()
        .filter(|e| e.event.deploy() == Some(d))
        .map(|e| e.event.type_name())
        .filter(|t| LIFECYCLE.contains(t))
        .collect()
}

fn trigger(ev: &[Envelope], d: &DeployId) -> DeployTrigger {
    ev.iter()
        .find_map(|e| match &e.event {
            Event::DeployCreated(x) if &x.deploy == d => Some(x.trigger),
            _ => None,
        })
        .expect("deploy_created")
}

const LIVE_PATH: [&str; 5] = [
    "deploy_created",
    "deploy_started",
    "image_resolved",
    "update_started",
    "deploy_live",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_trigger_goes_live_in_order_and_overlapping_deploys_wait_or_are_canceled() {
    let w = World::start().await;
    let _n1 = w.start_node("n1").await;
    let _n2 = w.start_node("n2").await;
    let _scheduler = w.start_scheduler().await;
    let (svc, d0) = w.create(ServiceType::BackgroundWorker, |_| {}).await;
    let ev = w.wait_live(&svc, &d0).await;
    assert_eq!(trigger(&ev, &d0), DeployTrigger::ServiceCreated);
    assert_eq!(of(&ev, &d0), LIVE_PATH, "{:?}", types(&ev));

    // manual, api and deploy_hook requests; service_updated; rollback.
    let mut deployed = vec![d0.clone()];
    for t in [
        DeployTrigger::Manual,
        DeployTrigger::Api,
        DeployTrigger::DeployHook,
    ] {
        let d = DeployId::generate();
        w.command(
            &svc,
            Command::RequestDeploy(DeployRequest::new(d.clone(), t)),
        )
        .await;
        let ev = w.wait_live(&svc, &d).await;
        assert_eq!(trigger(&ev, &d), t);
        assert_eq!(of(&ev, &d), LIVE_PATH, "{t:?}: {:?}", types(&ev));
        let prev = deployed.last().unwrap();
        assert!(
            of(&ev, prev).ends_with(&["deploy_deactivated"]),
            "{prev} not deactivated: {:?}",
            types(&ev)
        );
        deployed.push(d);
    }
    let d_upd = DeployId::generate();
    let settings = ServiceSettings {
        docker_command: Some(Some("sleep 3600".into())),
        ..ServiceSettings::default()
    };
    w.command(
        &svc,
        Command::Update {
            settings: Box::new(settings),
            deploy: d_upd.clone(),
        },
    )
    .await;
    let ev = w.wait_live(&svc, &d_upd).await;
    assert_eq!(trigger(&ev, &d_upd), DeployTrigger::ServiceUpdated);
    assert_eq!(of(&ev, &d_upd), LIVE_PATH);

    let d_rb = DeployId::generate();
    let mut rb = DeployRequest::new(d_rb.clone(), DeployTrigger::Rollback);
    rb.rollback_of = Some(d0.clone());
    w.command(&svc, Command::RequestDeploy(rb)).await;
    let ev = w.wait_live(&svc, &d_rb).await;
    assert_eq!(trigger(&ev, &d_rb), DeployTrigger::Rollback);
    assert_eq!(of(&ev, &d_rb), LIVE_PATH);

    w.command(&svc, Command::Suspend).await;
    let d_res = DeployId::generate();
    w.command(
        &svc,
        Command::Resume {
            deploy: d_res.clone(),
        },
    )
    .await;
    let ev = w.wait_live(&svc, &d_res).await;
    assert_eq!(trigger(&ev, &d_res), DeployTrigger::ServiceResumed);
    assert_eq!(of(&ev, &d_res), LIVE_PATH);

    // Overlap `wait` (the default): three requests at once. The first runs,
    // the second is superseded while queued, the newest runs after it.
    let (a, b, c) = (
        DeployId::generate(),
        DeployId::generate(),
        DeployId::generate(),
    );
    for d in [&a, &b, &c] {
        w.command(
            &svc,
            Command::RequestDeploy(DeployRequest::new(d.clone(), DeployTrigger::Api)),
        )
        .await;
    }
    let ev = w.wait_live(&svc, &c).await;
    let t = types(&ev);
    assert!(of(&ev, &a).contains(&"deploy_started"), "{t:?}");
    assert_eq!(
        of(&ev, &b),
        ["deploy_created", "deploy_queued", "deploy_canceled"],
        "{t:?}"
    );
    let superseded = ev.iter().find_map(|e| match &e.event {
        Event::DeployCanceled(x) if x.deploy == b => Some((x.reason, x.by.clone())),
        _ => None,
    });
    assert_eq!(
        superseded,
        Some((CancelReason::Superseded, Some(c.clone()))),
        "{t:?}"
    );
    let oc = of(&ev, &c);
    assert_eq!(
        oc,
        [
            "deploy_created",
            "deploy_queued",
            "deploy_started",
            "image_resolved",
            "update_started",
            "deploy_live"
        ],
        "{t:?}"
    );
    // The newest only started after the first ended.
    let pos = |want: &str, d: &DeployId| {
        ev.iter()
            .position(|e| e.event.type_name() == want && e.event.deploy() == Some(d))
            .unwrap()
    };
    let a_end = ["deploy_live", "deploy_failed", "deploy_canceled"]
        .iter()
        .filter_map(|n| {
            ev.iter()
                .position(|e| e.event.type_name() == *n && e.event.deploy() == Some(&a))
        })
        .min()
        .expect("the first deploy ended");
    assert!(a_end < pos("deploy_started", &c), "{t:?}");

    // An explicit cancel of a running deploy: canceled, the live one stays.
    let d_x = DeployId::generate();
    w.command(
        &svc,
        Command::RequestDeploy(DeployRequest::new(d_x.clone(), DeployTrigger::Api)),
    )
    .await;
    w.command(
        &svc,
        Command::CancelDeploy {
            deploy: d_x.clone(),
        },
    )
    .await;
    let ev = w
        .wait_events(&svc, std::time::Duration::from_secs(30), "canceled", |ev| {
            of(ev, &d_x).contains(&"deploy_canceled")
        })
        .await;
    assert!(!of(&ev, &d_x).contains(&"deploy_live"), "{:?}", types(&ev));
    let state = w.state(&svc).await;
    assert_eq!(state.live.as_ref(), Some(&c), "the live deploy changed");
}

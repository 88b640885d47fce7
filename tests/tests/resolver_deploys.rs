//! The resolver end to end: a service's initial deploy gets `image_resolved`
//! with the pushed digest (and the index digest for a multi-platform
//! index); a deploy of a deleted tag records `image_pull_failed` with
//! `image_not_found` and fails the deploy; a pinned digest resolves to
//! itself; a rotated token is what the next resolve uses; redelivered events
//! append nothing new.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_ingress::{Caller, CreatedService, NewService, Rotation};
use berth_runtime::Secret;
use berth_schemas::model::{DeployStatus, OverlapPolicy, PullFailureReason, ServiceType};
use berth_schemas::{Actor, AggregateId, Event};
use berth_tests::image::{small_image, Platform};
use berth_tests::registry::RegistryAuth;
use berth_tests::resolver::{basic, fast_options, registry_with_app, App};
use berth_tests::NatsVersion;

fn worker(name: &str, image: &str) -> NewService {
    let mut s = NewService::new(name, ServiceType::BackgroundWorker, image);
    // A new deploy replaces the running one at once: there is no puller in
    // these tests to move deploys past "pulling".
    s.overlap_policy = Some(OverlapPolicy::Cancel);
    s
}

/// Creates worker `name` running `image`; creation must succeed.
async fn create(app: &App, owner: &Caller, name: &str, image: &str) -> CreatedService {
    app.ingress
        .create_service(owner, worker(name, image))
        .await
        .unwrap()
}

async fn initial_deploys_resolve(version: NatsVersion) {
    let (reg, amd) = registry_with_app(RegistryAuth::None).await;
    let arm = small_image("arm64").unwrap();
    let index = reg
        .push_index(
            "team/multi",
            "v1",
            &[
                (Platform::linux("arm64"), &arm),
                (Platform::linux("amd64"), &amd),
            ],
            false,
        )
        .await
        .unwrap();
    let app = App::start_with(version, Some(fast_options())).await;
    let alice = app.owner().await;

    let h = &reg.host;
    let single = create(&app, &alice, "single", &format!("{h}/team/app:v1")).await;
    let multi = create(&app, &alice, "multi", &format!("{h}/team/multi:v1")).await;
    let pinned = create(
        &app,
        &alice,
        "pinned",
        &format!("{h}/team/app@{}", amd.digest),
    )
    .await;

    let s = app.await_deploy(&alice, &single.id, &single.deploy).await;
    let r = s.deploy(&single.deploy).unwrap().resolved.clone().unwrap();
    assert_eq!(r.digest, amd.digest);
    assert_eq!(r.index_digest, None);
    assert_eq!(r.compressed_size, amd.compressed_size);

    let s = app.await_deploy(&alice, &multi.id, &multi.deploy).await;
    let r = s.deploy(&multi.deploy).unwrap().resolved.clone().unwrap();
    assert_eq!(r.digest, amd.digest, "the linux/amd64 manifest is chosen");
    assert_eq!(r.index_digest.as_deref(), Some(index.digest.as_str()));

    let s = app.await_deploy(&alice, &pinned.id, &pinned.deploy).await;
    assert_eq!(
        s.deploy(&pinned.deploy).unwrap().digest(),
        Some(amd.digest.as_str())
    );

    // The event as recorded: by the resolver, correlated with the deploy,
    // caused by the deploy_started event.
    let events = app
        .events_of(&AggregateId::Service(single.id.clone()))
        .await;
    let started = events
        .iter()
        .find(|e| matches!(e.event, Event::DeployStarted(_)))
        .unwrap();
    let resolved = events
        .iter()
        .filter(|e| matches!(e.event, Event::ImageResolved(_)))
        .collect::<Vec<_>>();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].actor, Actor::system("resolver"));
    assert_eq!(resolved[0].correlation_id.as_ref(), Some(&single.deploy));
    assert_eq!(
        resolved[0].causation_id.as_deref(),
        Some(started.id.as_str())
    );
}

#[tokio::test]
async fn initial_deploys_resolve_on_modern_nats() {
    initial_deploys_resolve(NatsVersion::Modern).await;
}

#[tokio::test]
async fn initial_deploys_resolve_on_legacy_nats() {
    initial_deploys_resolve(NatsVersion::Legacy).await;
}

#[tokio::test]
async fn a_deleted_tag_fails_the_deploy_with_image_not_found() {
    let (reg, img) = registry_with_app(RegistryAuth::None).await;
    let app = App::start().await;
    let alice = app.owner().await;
    let image = format!("{}/team/app:v1", reg.host);
    let svc = create(&app, &alice, "app", &image).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;

    reg.delete_manifest("team/app", &img.digest).await.unwrap();
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let s = app.await_deploy(&alice, &svc.id, &deploy).await;
    let d = s.deploy(&deploy).unwrap();
    assert_eq!(d.status, DeployStatus::UpdateFailed, "{d:?}");
    assert!(d.resolved.is_none());
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ImagePullFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].reason, PullFailureReason::ImageNotFound);
    assert_eq!(failed[0].image, image);
    assert_eq!(failed[0].deploy.as_ref(), Some(&deploy));
    assert!(events
        .iter()
        .any(|e| matches!(&e.event, Event::DeployFailed(f) if f.deploy == deploy)));
}

#[tokio::test]
async fn a_rotated_token_is_used_by_the_next_resolve() {
    let (reg, img) = registry_with_app(basic("ci", "right")).await;
    let app = App::start().await;
    let alice = app.owner().await;
    let cred = app.credential(&alice, &reg.host, "ci", "right").await;
    let mut new = worker("app", &format!("{}/team/app:v1", reg.host));
    new.credential = Some(cred.clone());
    let svc = app.ingress.create_service(&alice, new).await.unwrap();
    let s = app.await_deploy(&alice, &svc.id, &svc.deploy).await;
    assert_eq!(
        s.deploy(&svc.deploy).unwrap().digest(),
        Some(img.digest.as_str())
    );

    let rotate = |token: &str| Rotation {
        token: Secret::new(token),
        username: None,
        name: None,
    };
    // Rotated to a wrong token: the next deploy is unauthorized.
    app.ingress
        .rotate_credential(&alice, &cred, rotate("wrong"))
        .await
        .unwrap();
    let d1 = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let s = app.await_deploy(&alice, &svc.id, &d1).await;
    assert_eq!(s.deploy(&d1).unwrap().status, DeployStatus::UpdateFailed);
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    assert!(events.iter().any(|e| matches!(&e.event,
        Event::ImagePullFailed(f) if f.deploy.as_ref() == Some(&d1) && f.reason == PullFailureReason::Unauthorized)));

    // Rotated back to the right one: the next deploy resolves.
    app.ingress
        .rotate_credential(&alice, &cred, rotate("right"))
        .await
        .unwrap();
    let d2 = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let s = app.await_deploy(&alice, &svc.id, &d2).await;
    assert_eq!(s.deploy(&d2).unwrap().digest(), Some(img.digest.as_str()));
}

/// Starts a resolver with `opts` (on the durable consumer of the one
/// stopped) and waits for `deploy` to resolve to `digest`.
async fn resume(
    app: &mut App,
    opts: berth_resolver::ResolverOptions,
    alice: &Caller,
    svc: &CreatedService,
    deploy: &berth_schemas::ids::DeployId,
    digest: &str,
) {
    app.start_resolver(app.store.clone(), opts);
    let s = app.await_deploy(alice, &svc.id, deploy).await;
    assert_eq!(s.deploy(deploy).unwrap().digest(), Some(digest));
}

/// How many times `deploy` of `svc` was recorded resolved.
async fn times_resolved(
    app: &App,
    svc: &CreatedService,
    deploy: &berth_schemas::ids::DeployId,
) -> usize {
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    events
        .iter()
        .filter(|e| matches!(&e.event, Event::ImageResolved(r) if &r.deploy == deploy))
        .count()
}

/// A service live on `reg`'s image, then the resolver stopped and a
/// deploy asked for while it is away: the owner, service and deploy.
async fn deploy_while_away(
    app: &mut App,
    reg: &berth_tests::registry::Registry,
) -> (Caller, CreatedService, berth_schemas::ids::DeployId) {
    let alice = app.owner().await;
    let svc = create(app, &alice, "app", &format!("{}/team/app:v1", reg.host)).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;
    app.stop_resolver().await;
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    (alice, svc, deploy)
}

#[tokio::test]
async fn a_restarted_resolver_handles_what_it_missed_and_appends_nothing_twice() {
    let (reg, img) = registry_with_app(RegistryAuth::None).await;
    let mut app = App::start().await;
    // Stop the resolver; request a deploy while it is away.
    let (alice, svc, deploy) = deploy_while_away(&mut app, &reg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = app.ingress.show_service(&alice, &svc.id).await;
    // The ingress read model stopped with the old token; show reads the log.
    let s = s.unwrap();
    assert!(s.deploy(&deploy).unwrap().resolved.is_none());

    // A new resolver on the same durable consumer picks it up.
    resume(&mut app, fast_options(), &alice, &svc, &deploy, &img.digest).await;

    // Every deploy_started was handled once: one image_resolved per deploy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    let resolved = events
        .iter()
        .filter(|e| matches!(e.event, Event::ImageResolved(_)))
        .count();
    assert_eq!(resolved, 2, "{events:#?}");

    // Every event delivered again (a second durable consumer replays the
    // whole log): each decision is re-made against current state and
    // appends nothing.
    let before = app.last_seq().await;
    let mut opts = fast_options();
    opts.consumer = "replay".into();
    let r = berth_resolver::Resolver::new(app.store.clone(), app.key.clone(), opts).unwrap();
    let shutdown = app.shutdown.clone();
    let replay = tokio::spawn(async move { r.run(shutdown, None).await.unwrap() });
    let stream = app.events_stream().await;
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(mut c) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("replay")
            .await
        {
            let info = c.info().await.unwrap();
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= before
            {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "replay did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.last_seq().await,
        before,
        "a replayed event appended something"
    );
    app.shutdown.cancel();
    replay.await.unwrap();
}

/// A deploy whose `deploy_started` delivery came to nothing (acked and
/// not resolved: dead-lettered after its retries, lost in a partition)
/// does not wait for good: the resolver's sweep takes it up once it has
/// waited past `stuck_after`, and records its digest once.
#[tokio::test]
async fn a_deploy_whose_delivery_came_to_nothing_is_resolved_by_the_sweep() {
    let (reg, img) = registry_with_app(RegistryAuth::None).await;
    let mut app = App::start().await;
    // The resolver away, a deploy is asked for; its delivery is taken off
    // the resolver's consumer and acked, as if handled.
    let (alice, svc, deploy) = deploy_while_away(&mut app, &reg).await;
    let stream = app.events_stream().await;
    let consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("resolver")
        .await
        .unwrap();
    let mut taken = 0;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(m) = futures::StreamExt::next(&mut batch).await {
            m.unwrap().double_ack().await.unwrap();
            got += 1;
        }
        taken += got;
        if got == 0 {
            break;
        }
    }
    assert!(taken >= 1, "the deploy's start was pending");

    // A resolver on the same consumer gets nothing delivered; its sweep
    // resolves the deploy.
    let mut opts = fast_options();
    opts.stuck_after = Some(Duration::from_secs(2));
    opts.probe_interval = None;
    resume(&mut app, opts, &alice, &svc, &deploy, &img.digest).await;
    // Once, though the sweep looks again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(times_resolved(&app, &svc, &deploy).await, 1);
}

#[tokio::test]
async fn a_stopped_registry_is_registry_unavailable_after_bounded_retries() {
    let (mut reg, _) = registry_with_app(RegistryAuth::None).await;
    let app = App::start().await;
    let alice = app.owner().await;
    let svc = create(&app, &alice, "app", &format!("{}/team/app:v1", reg.host)).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;

    // Creation checks see it too, and append nothing.
    reg.stop();
    let before = app.last_seq().await;
    let e = app
        .ingress
        .create_service(
            &alice,
            worker("other", &format!("{}/team/app:v1", reg.host)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.pull_failure(),
        Some(PullFailureReason::RegistryUnavailable),
        "{e}"
    );
    assert_eq!(app.last_seq().await, before);

    let t0 = std::time::Instant::now();
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let s = app.await_deploy(&alice, &svc.id, &deploy).await;
    assert_eq!(
        s.deploy(&deploy).unwrap().status,
        DeployStatus::UpdateFailed
    );
    // fast_options(): 20 ms doubling to 200 ms within 2 s.
    assert!(t0.elapsed() < Duration::from_secs(10));
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    assert!(events.iter().any(|e| matches!(&e.event,
        Event::ImagePullFailed(f) if f.deploy.as_ref() == Some(&deploy)
            && f.reason == PullFailureReason::RegistryUnavailable)));
}

/// A registry that fails for a while: each retry is on the deploy as it
/// happens (attempt, when the next one is, what the registry said), and
/// once the digest is in, the deploy no longer shows one.
#[tokio::test]
async fn a_registry_down_for_a_while_shows_on_the_deploy_until_it_resolves() {
    let (reg, img) = registry_with_app(RegistryAuth::None).await;
    let proxy = berth_tests::registry::flaky::FlakyProxy::start(&reg.host, 0, 503, None)
        .await
        .unwrap();
    let app = App::start_with(NatsVersion::Modern, Some(fast_options())).await;
    let alice = app.owner().await;
    let svc = create(&app, &alice, "app", &format!("{}/team/app:v1", proxy.host)).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;

    proxy.fail_next(3);
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let s = app.await_deploy(&alice, &svc.id, &deploy).await;
    let d = s.deploy(&deploy).unwrap();
    assert_eq!(d.digest(), Some(img.digest.as_str()), "{d:?}");
    assert!(d.retrying.is_none(), "resolved: no retry shown: {d:?}");
    let events = app.events_of(&AggregateId::Service(svc.id.clone())).await;
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::DeployRetrying(r) if r.deploy == deploy => Some((e.time, r.clone())),
            _ => None,
        })
        .collect();
    assert!(!retries.is_empty(), "no retry recorded");
    let attempts: Vec<u32> = retries.iter().map(|(_, r)| r.attempt).collect();
    let mut sorted = attempts.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        attempts, sorted,
        "attempts in order, each once: {attempts:?}"
    );
    for (at, r) in &retries {
        assert!(r.retry_at >= *at, "the next try is after the report: {r:?}");
        assert!(r.message.contains("503"), "{r:?}");
    }
    // While it retried, the deploy showed it: replay up to the last retry.
    let upto: Vec<_> = events
        .iter()
        .take_while(|e| !matches!(&e.event, Event::ImageResolved(r) if r.deploy == deploy))
        .cloned()
        .collect();
    let before = upto
        .iter()
        .fold(berth_domain::service::ServiceState::default(), |s, e| {
            berth_domain::service::fold(s, e)
        });
    let shown = before.deploy(&deploy).and_then(|d| d.retrying.clone());
    assert_eq!(shown.map(|r| r.attempt), attempts.last().copied());
}

/// Shutdown does not wait out a registry being retried: the resolve is
/// given up (its event is delivered again to the next resolver) and the
/// resolver stops at once.
#[tokio::test]
async fn shutdown_gives_up_a_resolve_that_is_retrying() {
    let (mut reg, _) = registry_with_app(RegistryAuth::None).await;
    let mut opts = fast_options();
    opts.deploy_client.retry = berth_oci::RetryPolicy {
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        max_total: Duration::from_secs(120),
    };
    let mut app = App::start_with(NatsVersion::Modern, Some(opts)).await;
    let alice = app.owner().await;
    let svc = create(&app, &alice, "app", &format!("{}/team/app:v1", reg.host)).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;
    reg.stop();
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let s = app.ingress.show_service(&alice, &svc.id).await.unwrap();
        if s.deploy(&deploy).is_some_and(|d| d.retrying.is_some()) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no retry shown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown.cancel();
    let resolver = app.resolver.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), resolver)
        .await
        .expect("the resolver stops within 5 s of shutdown, mid-retry")
        .unwrap();
}

/// A resolver reading a copy of the log that is behind (a server that
/// rejoined after a partition) is handed a deploy that copy does not have
/// yet: the deploy waits for the copy and is resolved once, not taken as
/// "nothing to do" and dropped (the sweep is off here, so nothing else
/// would resolve it).
#[tokio::test]
async fn a_deploy_read_from_a_copy_of_the_log_that_is_behind_waits_for_it() {
    use berth_tests::behind::{lagging_store, BehindCopy};
    let (reg, img) = registry_with_app(RegistryAuth::None).await;
    let mut app = App::start().await;
    let alice = app.owner().await;
    let svc = create(&app, &alice, "app", &format!("{}/team/app:v1", reg.host)).await;
    app.await_deploy(&alice, &svc.id, &svc.deploy).await;
    // The resolver again, on a client whose reads a copy can hold back.
    app.stop_resolver().await;
    let lagging = lagging_store(&app.nats.url(), app.store.subjects()).await;
    let copy = BehindCopy::start(&app.nats.url(), app.store.subjects()).await;
    let mut opts = fast_options();
    opts.stuck_after = None;
    opts.probe_interval = None;
    opts.max_deliver = 1000;
    app.start_resolver(lagging, opts);
    let deploy = app
        .ingress
        .request_deploy(&alice, &svc.id, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = app.ingress.show_service(&alice, &svc.id).await.unwrap();
    assert!(
        s.deploy(&deploy).unwrap().resolved.is_none(),
        "nothing can resolve it while the copy is behind"
    );
    copy.catch_up();
    let s = app.await_deploy(&alice, &svc.id, &deploy).await;
    assert_eq!(
        s.deploy(&deploy).unwrap().digest(),
        Some(img.digest.as_str())
    );
    assert_eq!(times_resolved(&app, &svc, &deploy).await, 1);
    copy.stop().await;
}

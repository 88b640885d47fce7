//! Rollback and rollback-eligibility probes against a real nats-server and
//! registry (SPEC §7). Deploys go live through the commands the scheduler
//! would issue; everything about images is the real resolver talking to
//! the real registry.
//!
//! - a rollback deploys the target's recorded digest, never its tag (the tag
//!   is moved in the registry first), and a rollback to a digest the
//!   registry lost ends `update_failed` with `image_pull_failed`
//!   `image_not_found` while the live deploy keeps serving;
//! - the probe warns (`rollback_target_missing`, once per deploy) as soon as
//!   a rollback target's digest is gone, before any rollback is attempted;
//!   the rollback attempted after that warning is refused by the rules with
//!   that reason, nothing appended, the live deploy untouched; a lost live
//!   digest is warned about too;
//! - probes reach the registry only as `HEAD …/manifests/<digest>`.

use std::time::Duration;

use berth_domain::service::{Command, DeployRequest};
use berth_domain::{DomainError, ErrorKind};
use berth_eventlog::ExecuteError;
use berth_ingress::{Caller, NewService};
use berth_schemas::ids::{CredentialId, DeployId, NodeId, ServiceId};
use berth_schemas::model::{DeployStatus, OverlapPolicy, PullFailureReason, ServiceType};
use berth_schemas::{AggregateId, Envelope, Event};
use berth_tests::image::{build_image, Image, ImageOptions, Layer};
use berth_tests::registry::{Registry, RegistryAuth};
use berth_tests::NatsVersion;

use berth_tests::resolver::{basic, fast_options, registry_with_app, App};

/// Runs a service command as the scheduler / API would.
async fn command(
    app: &App,
    service: &ServiceId,
    command: Command,
) -> Result<(), ExecuteError<DomainError>> {
    berth_tests::eventlog::service_command(&app.store, service, command).await
}

/// After the resolver resolved `deploy` to `digest`: pulled, updated, live.
async fn go_live(app: &App, owner: &Caller, service: &ServiceId, deploy: &DeployId, digest: &str) {
    let s = app.await_deploy(owner, service, deploy).await;
    let d = s.deploy(deploy).unwrap();
    assert_eq!(d.digest(), Some(digest), "{d:?}");
    for c in [
        Command::RecordPulled {
            deploy: deploy.clone(),
            node: NodeId::generate(),
            digest: digest.to_owned(),
        },
        Command::RecordUpdateStarted {
            deploy: deploy.clone(),
        },
        Command::RecordLive {
            deploy: deploy.clone(),
            digest: digest.to_owned(),
        },
    ] {
        command(app, service, c).await.unwrap();
    }
}

fn second_image() -> Image {
    let layer = Layer::from_files(&[("version.txt", b"v2\n")]).unwrap();
    build_image(&ImageOptions::linux("amd64"), vec![layer]).unwrap()
}

/// A worker (pulling with `credential`) whose v1 deploy was live and was
/// replaced by a live v2 deploy: (service, v1 deploy, v2 deploy).
async fn two_live_deploys(
    app: &App,
    reg: &Registry,
    owner: &Caller,
    (v1, v2): (&Image, &Image),
    credential: Option<CredentialId>,
) -> (ServiceId, DeployId, DeployId) {
    reg.push_image("team/app", "v2", v2).await.unwrap();
    let mut new = NewService::new(
        "app",
        ServiceType::BackgroundWorker,
        &format!("{}/team/app:v1", reg.host),
    );
    new.overlap_policy = Some(OverlapPolicy::Cancel);
    new.credential = credential;
    let created = app.ingress.create_service(owner, new).await.unwrap();
    go_live(app, owner, &created.id, &created.deploy, &v1.digest).await;
    let d2 = app
        .ingress
        .request_deploy(
            owner,
            &created.id,
            Some(&format!("{}/team/app:v2", reg.host)),
        )
        .await
        .unwrap();
    go_live(app, owner, &created.id, &d2, &v2.digest).await;
    let s = app.ingress.show_service(owner, &created.id).await.unwrap();
    assert_eq!(
        s.deploy(&created.deploy).unwrap().status,
        DeployStatus::Deactivated
    );
    (created.id, created.deploy, d2)
}

async fn rollback(
    app: &App,
    service: &ServiceId,
    target: &DeployId,
) -> Result<DeployId, ExecuteError<DomainError>> {
    let id = DeployId::generate();
    command(
        app,
        service,
        Command::RequestDeploy(DeployRequest::rollback(id.clone(), target.clone())),
    )
    .await
    .map(|_| id)
}

fn missing_marks(events: &[Envelope]) -> Vec<(DeployId, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::RollbackTargetMissing(m) => Some((m.deploy.clone(), m.digest.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_rollback_deploys_the_recorded_digest_and_fails_cleanly_once_it_is_gone() {
    let (reg, v1) = registry_with_app(RegistryAuth::None).await;
    let v2 = second_image();
    let mut opts = fast_options();
    opts.probe_interval = None;
    let app = App::start_with(NatsVersion::Legacy, Some(opts)).await;
    let owner = app.owner().await;
    let (service, d1, d2) = two_live_deploys(&app, &reg, &owner, (&v1, &v2), None).await;

    // The tag moves: a rollback must still deploy what d1 ran.
    reg.push_image("team/app", "v1", &v2).await.unwrap();
    let r1 = rollback(&app, &service, &d1).await.unwrap();
    let s = app.await_deploy(&owner, &service, &r1).await;
    let r = s.deploy(&r1).unwrap();
    assert_eq!(r.image, format!("{}/team/app@{}", reg.host, v1.digest));
    assert_eq!(
        r.digest(),
        Some(v1.digest.as_str()),
        "by digest, not by tag"
    );
    assert_eq!(r.rollback_of.as_ref(), Some(&d1));
    command(&app, &service, Command::CancelDeploy { deploy: r1 })
        .await
        .unwrap();

    // The registry loses d1's digest: the rollback fails, d2 keeps serving.
    reg.delete_manifest("team/app", &v1.digest).await.unwrap();
    let r2 = rollback(&app, &service, &d1).await.unwrap();
    let s = app.await_deploy(&owner, &service, &r2).await;
    let r = s.deploy(&r2).unwrap();
    assert_eq!(r.status, DeployStatus::UpdateFailed, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .unwrap_or("")
            .contains("image_not_found"),
        "{r:?}"
    );
    assert_eq!(s.live.as_ref(), Some(&d2));
    assert_eq!(s.deploy(&d2).unwrap().status, DeployStatus::Live);
    assert_eq!(s.current_digest(), Some(v2.digest.as_str()));
    let events = app.events_of(&AggregateId::Service(service)).await;
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ImagePullFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].reason, PullFailureReason::ImageNotFound);
    assert_eq!(failed[0].deploy.as_ref(), Some(&r2));
}

#[tokio::test]
async fn the_probe_warns_once_before_a_rollback_to_a_lost_digest_is_attempted() {
    let (reg, v1) = registry_with_app(RegistryAuth::None).await;
    let v2 = second_image();
    let mut opts = fast_options();
    opts.probe_interval = Some(Duration::from_millis(300));
    let app = App::start_with(NatsVersion::Legacy, Some(opts)).await;
    let owner = app.owner().await;
    let (service, d1, d2) = two_live_deploys(&app, &reg, &owner, (&v1, &v2), None).await;
    let agg = AggregateId::Service(service.clone());

    // Several passes with everything present: no warning.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(missing_marks(&app.events_of(&agg).await), vec![]);

    reg.delete_manifest("team/app", &v1.digest).await.unwrap();
    let t0 = std::time::Instant::now();
    while missing_marks(&app.events_of(&agg).await).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(15), "no probe warning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More passes: still one warning, for d1 only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = app.events_of(&agg).await;
    assert_eq!(
        missing_marks(&events),
        vec![(d1.clone(), v1.digest.clone())]
    );
    let s = app.ingress.show_service(&owner, &service).await.unwrap();
    assert!(!s.deploy(&d1).unwrap().rollback_eligible);
    assert!(s.deploy(&d2).unwrap().rollback_eligible);

    // The rollback attempted after the warning fails cleanly: refused with
    // the reason, nothing appended, d2 still serving.
    let before = events.len();
    let err = match rollback(&app, &service, &d1).await {
        Err(ExecuteError::Rejected(e)) => e,
        other => panic!("rollback to a lost digest not refused: {other:?}"),
    };
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("rollback_target_missing"), "{err}");
    let s = app.ingress.show_service(&owner, &service).await.unwrap();
    assert_eq!(app.events_of(&agg).await.len(), before);
    assert_eq!(s.live.as_ref(), Some(&d2));
    assert_eq!(s.deploy(&d2).unwrap().status, DeployStatus::Live);

    // The live digest disappears too: warned before a restart trips on it.
    reg.delete_manifest("team/app", &v2.digest).await.unwrap();
    let t0 = std::time::Instant::now();
    while missing_marks(&app.events_of(&agg).await).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(15), "no live warning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        missing_marks(&app.events_of(&agg).await),
        vec![(d1, v1.digest.clone()), (d2, v2.digest.clone())]
    );
}

#[tokio::test]
async fn probes_of_a_private_image_use_the_service_credential() {
    let (reg, v1) = registry_with_app(basic("ci", "probe-pass")).await;
    let v2 = second_image();
    let mut opts = fast_options();
    opts.probe_interval = Some(Duration::from_millis(300));
    let app = App::start_with(NatsVersion::Legacy, Some(opts)).await;
    let owner = app.owner().await;
    let cred = app.credential(&owner, &reg.host, "ci", "probe-pass").await;
    let (service, d1, d2) = two_live_deploys(&app, &reg, &owner, (&v1, &v2), Some(cred)).await;
    let agg = AggregateId::Service(service.clone());

    // Without the credential every HEAD is a 401: nothing would be marked.
    reg.delete_manifest("team/app", &v1.digest).await.unwrap();
    let t0 = std::time::Instant::now();
    while missing_marks(&app.events_of(&agg).await).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(15), "no probe warning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        missing_marks(&app.events_of(&agg).await),
        vec![(d1, v1.digest.clone())]
    );
    let s = app.ingress.show_service(&owner, &service).await.unwrap();
    assert!(s.deploy(&d2).unwrap().rollback_eligible);
}

/// A TCP proxy in front of `upstream` recording the request line of every
/// HTTP request (the registry's own access log is off in the harness).
async fn recording_proxy(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let seen = seen.clone();
            tokio::spawn(async move {
                // Requests carry no bodies here (HEAD/GET): each one ends
                // with an empty line.
                let mut buf = vec![0u8; 16 * 1024];
                let mut pending = Vec::new();
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_string();
                        if let Some(line) = head.lines().next() {
                            seen.lock().unwrap().push(line.to_owned());
                        }
                        pending.drain(..end + 4);
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (addr, lines)
}

#[tokio::test]
async fn probes_send_only_head_requests_by_digest() {
    let (reg, v1) = registry_with_app(RegistryAuth::None).await;
    let (host, lines) = recording_proxy(reg.host.clone()).await;
    let mut opts = fast_options();
    opts.probe_interval = Some(Duration::from_millis(200));
    let app = App::start_with(NatsVersion::Legacy, Some(opts)).await;
    let owner = app.owner().await;
    let created = app
        .ingress
        .create_service(
            &owner,
            NewService::new(
                "app",
                ServiceType::BackgroundWorker,
                &format!("{host}/team/app:v1"),
            ),
        )
        .await
        .unwrap();
    go_live(&app, &owner, &created.id, &created.deploy, &v1.digest).await;
    let from = lines.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probes: Vec<String> = lines.lock().unwrap()[from..].to_vec();
    assert!(
        probes.len() >= 3,
        "probes did not reach the registry: {probes:?}"
    );
    let want = format!("HEAD /v2/team/app/manifests/{} HTTP/1.1", v1.digest);
    for l in &probes {
        assert_eq!(l, &want);
    }
}

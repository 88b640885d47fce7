//! Managed certificates from a real ACME CA (Pebble, validating HTTP-01 for
//! real against the router's plain HTTP port): issued and served, renewed
//! when forced with no restart, removed when the domain leaves; failures
//! recorded on the service's log with their reason and retried with
//! backoff; one issuance across two replicas.

use std::time::Duration;

use anyhow::{Context, Result};
use berth_domain::service::Command;
use berth_router::{Domains, RouterArgs};
use berth_schemas::ids::{CustomDomainId, ServiceId};
use berth_schemas::model::CertificateFailure;
use berth_schemas::model::ServiceType;
use berth_schemas::{AggregateId, Event};
use berth_tests::pebble::Pebble;

use crate::support::{test_args, Backend, Svc};
use crate::tls::{curl_https, http_get, presented_serial, HttpsEnv};

const BASE: &str = "acme.test";

fn acme_args(pebble: &Pebble) -> RouterArgs {
    RouterArgs {
        router_base_domain: BASE.to_owned(),
        acme_directory: pebble.directory.clone(),
        acme_ca_root: Some(pebble.listener_ca.clone()),
        acme_email: Some("ops@example.com".to_owned()),
        ..test_args()
    }
}

/// Short waits, so retries and renewals happen within a test.
fn quick(o: &mut berth_router::AcmeOptions) {
    o.retry_min = Duration::from_secs(1);
    o.retry_max = Duration::from_secs(4);
    o.order_timeout = Duration::from_secs(20);
    o.lock_lease = Duration::from_secs(30);
}

/// The certificate events on `service`'s log so far.
async fn cert_events(env: &HttpsEnv, service: &ServiceId) -> Result<Vec<Event>> {
    let loaded = env
        .store
        .load(&AggregateId::Service(service.clone()))
        .await?;
    Ok(loaded
        .events
        .into_iter()
        .map(|e| e.event)
        .filter(|e| {
            matches!(
                e,
                Event::CertificateIssued(_)
                    | Event::CertificateFailed(_)
                    | Event::CertificateRemoved(_)
            )
        })
        .collect())
}

/// Waits until `service`'s certificate events satisfy `done`.
async fn wait_events(
    env: &HttpsEnv,
    service: &ServiceId,
    within: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Result<Vec<Event>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = cert_events(env, service).await?;
        if done(&events) {
            return Ok(events);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "certificate events not there within {within:?}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_added_to_a_service_gets_a_certificate_and_loses_it_when_removed(
) -> Result<()> {
    let http_port = berth_tests::free_port();
    let pebble = Pebble::start(http_port)?;
    let env = HttpsEnv::following_the_table(acme_args(&pebble), http_port, quick).await?;
    let backend = Backend::start("v1", 1).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    let host = "www.shop-example.test";
    svc.cmd(Command::AddCustomDomain {
        domain: CustomDomainId::generate(),
        name: host.into(),
    })
    .await?;
    env.synced().await?;

    // Nothing fed: the issuer found the domain in the routing table.
    env.served_cert(host, None, Duration::from_secs(60))
        .await
        .with_context(|| pebble.log())?;
    let (ok, out, err) = curl_https(
        host,
        env.https.port(),
        &pebble.issuing_root,
        "/",
        &["--http2", "-w", "\n%{http_version}"],
    )
    .await?;
    assert!(ok, "curl with Pebble's root failed: {err}");
    assert_eq!(out, "v1 1\n2");
    wait_events(&env, &svc.id, Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, Event::CertificateIssued(i) if i.domain == host))
    })
    .await?;
    // The service's state counts the domain verified.
    let state = env
        .store
        .state(
            &AggregateId::Service(svc.id.clone()),
            berth_domain::service::fold,
        )
        .await?
        .0;
    assert!(state.custom_domains[host].certificate.verified());

    // Removed from the service: its certificate leaves the store.
    svc.reload().await?;
    svc.cmd(Command::RemoveCustomDomain { name: host.into() })
        .await?;
    env.synced().await?;
    wait_events(&env, &svc.id, Duration::from_secs(30), |e| {
        e.iter()
            .any(|e| matches!(e, Event::CertificateRemoved(r) if r.domain == host))
    })
    .await?;
    anyhow::ensure!(
        env.cert_store.raw_cert(host).await?.is_none(),
        "the removed domain's certificate is still stored"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_a_certificate_the_router_serves_renews_and_removes() -> Result<()> {
    let http_port = berth_tests::free_port();
    let pebble = Pebble::start(http_port)?;
    let env = HttpsEnv::start(acme_args(&pebble), http_port, quick).await?;
    let backend = Backend::start("v1", 1).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &[backend.addr]).await?;
    env.synced().await?;
    let host = format!("shop.{BASE}");

    // No certificate yet: plain HTTP serves, nothing redirects.
    let (head, body) = http_get(env.http, &host, "/x").await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "v1 1");

    env.domains
        .send_replace(Domains::from([(host.clone(), svc.id.clone())]));
    let first = env
        .served_cert(&host, None, Duration::from_secs(60))
        .await
        .with_context(|| pebble.log())?;
    let (ok, out, err) = curl_https(
        &host,
        env.https.port(),
        &pebble.issuing_root,
        "/",
        &["--http2", "-w", "\n%{http_version}"],
    )
    .await?;
    assert!(ok, "curl with Pebble's root failed: {err}");
    assert_eq!(out, "v1 1\n2");
    let events = wait_events(&env, &svc.id, Duration::from_secs(10), |e| !e.is_empty()).await?;
    match &events[..] {
        [Event::CertificateIssued(i)] => {
            assert_eq!(i.domain, host);
            assert_eq!(i.serial, first);
            assert!(!i.renewal);
            assert!(i.not_after > chrono::Utc::now());
        }
        other => panic!("expected one certificate_issued: {other:?}"),
    }

    // Now plain HTTP goes to HTTPS, but not the ACME challenge path.
    let (head, _) = http_get(env.http, &host, "/x?y=1").await?;
    assert!(head.starts_with("http/1.1 301"), "{head}");
    assert!(
        head.contains(&format!(
            "location: https://{host}:{}/x?y=1",
            env.https.port()
        )),
        "{head}"
    );
    let (head, _) = http_get(env.http, &host, "/.well-known/acme-challenge/gone").await?;
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // The key at rest is sealed.
    let raw = env.cert_store.raw_cert(&host).await?.context("stored")?;
    assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE KEY"));

    // Forced renewal: a new certificate, served with no restart.
    env.issuer.renew(&host);
    let second = env
        .served_cert(&host, Some(&first), Duration::from_secs(60))
        .await
        .with_context(|| pebble.log())?;
    assert_ne!(first, second);
    let root = std::fs::read_to_string(&pebble.issuing_root)?;
    assert_eq!(presented_serial(env.https, &host, &root).await?, second);
    wait_events(&env, &svc.id, Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, Event::CertificateIssued(i) if i.renewal && i.serial == second))
    })
    .await?;

    // The domain leaves: its certificate goes, plain HTTP again.
    env.domains.send_replace(Domains::new());
    wait_events(&env, &svc.id, Duration::from_secs(20), |e| {
        e.iter()
            .any(|e| matches!(e, Event::CertificateRemoved(r) if r.domain == host))
    })
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.certs.load().contains_key(&host) {
        assert!(tokio::time::Instant::now() < deadline, "still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (head, _) = http_get(env.http, &host, "/x").await?;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_is_recorded_with_its_reason_and_retried() -> Result<()> {
    // Pebble validates against a port nothing listens on: the challenge
    // cannot be fetched.
    let pebble = Pebble::start(berth_tests::free_port())?;
    let env = HttpsEnv::start(acme_args(&pebble), 0, quick).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &["127.0.0.1:9".parse()?]).await?;
    let host = format!("shop.{BASE}");
    env.domains
        .send_replace(Domains::from([(host.clone(), svc.id.clone())]));
    let events = wait_events(&env, &svc.id, Duration::from_secs(60), |e| e.len() >= 2).await?;
    let failed: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::CertificateFailed(f) => f.clone(),
            other => panic!("expected failures only: {other:?}"),
        })
        .collect();
    assert_eq!(failed[0].domain, host);
    assert_eq!(failed[0].reason, CertificateFailure::ChallengeFailed);
    assert_eq!((failed[0].attempt, failed[0].retry_in_secs), (1, 1));
    assert_eq!((failed[1].attempt, failed[1].retry_in_secs), (2, 2));
    // Nothing internal leaks into the event.
    let json = serde_json::to_string(&events)?;
    assert!(!json.contains("127.0.0.1"), "{json}");
    assert!(env.certs.load().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_is_recorded_as_such() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = berth_tests::pebble::TestCa::new()?;
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.pem())?;
    let args = RouterArgs {
        router_base_domain: BASE.to_owned(),
        acme_directory: format!("https://127.0.0.1:{}/dir", berth_tests::free_port()),
        acme_ca_root: Some(root),
        ..test_args()
    };
    let env = HttpsEnv::start(args, 0, quick).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &["127.0.0.1:9".parse()?]).await?;
    let host = format!("shop.{BASE}");
    env.domains
        .send_replace(Domains::from([(host.clone(), svc.id.clone())]));
    let events = wait_events(&env, &svc.id, Duration::from_secs(30), |e| !e.is_empty()).await?;
    match &events[0] {
        Event::CertificateFailed(f) => {
            assert_eq!(f.reason, CertificateFailure::CaUnavailable);
            assert_eq!(f.attempt, 1);
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_lock_is_exclusive_and_expires() -> Result<()> {
    let args = RouterArgs {
        router_base_domain: BASE.to_owned(),
        ..test_args()
    };
    let env = HttpsEnv::without_issuer(args).await?;
    let store = &env.cert_store;
    let lease = Duration::from_secs(1);
    assert!(store.lock("a", lease).await?, "a free lock is taken");
    assert!(store.lock("a", lease).await?, "its holder extends it");
    assert!(!store.lock("b", lease).await?, "held by a live holder");
    // Two takers of an expired lock: exactly one wins.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (b, c) = tokio::join!(store.lock("b", lease), store.lock("c", lease));
    assert!(b? ^ c?, "exactly one replica takes over an expired lock");
    // A holder that lost it does not release the new holder's lock.
    store.unlock("a").await?;
    assert!(!store.lock("a", lease).await?);
    store.unlock("b").await?;
    store.unlock("c").await?;
    assert!(store.lock("a", lease).await?, "released: free again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fed_the_same_domain_issue_once_and_both_serve_it() -> Result<()> {
    let http_port = berth_tests::free_port();
    let pebble = Pebble::start(http_port)?;
    let env = HttpsEnv::start(acme_args(&pebble), http_port, quick).await?;
    // The second replica's plain HTTP port is not the one Pebble checks:
    // whichever replica issues, the first answers the challenge from the
    // shared store.
    let other = env.replica(acme_args(&pebble), quick).await?;
    let mut svc = Svc::create(&env.store, "shop", ServiceType::WebService).await?;
    svc.first_deploy(1, &["127.0.0.1:9".parse()?]).await?;
    let host = format!("shop.{BASE}");
    let wanted = Domains::from([(host.clone(), svc.id.clone())]);
    env.domains.send_replace(wanted.clone());
    other.domains.send_replace(wanted);
    let serial = env
        .served_cert(&host, None, Duration::from_secs(60))
        .await
        .with_context(|| pebble.log())?;
    assert_eq!(
        other
            .served_cert(&host, None, Duration::from_secs(10))
            .await?,
        serial,
        "both replicas serve the one certificate"
    );
    // Give a second issuance every chance to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let issued = cert_events(&env, &svc.id)
        .await?
        .into_iter()
        .filter(|e| matches!(e, Event::CertificateIssued(_)))
        .count();
    assert_eq!(issued, 1, "the certificate was issued more than once");
    Ok(())
}

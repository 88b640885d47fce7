//! Registry hosts on internal addresses (BERTH_ALLOW_TARGETS): a real
//! registry on 127.0.0.1 refused by a client that does not allow loopback
//! (by IP literal and by name, with the typed reason and no retries) and
//! pulled from by one that does; redirects and token realms pointing at
//! the metadata service or a private address refused even with loopback
//! allowed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use berth_oci::{
    AddressPolicy, ClientConfig, ImageRef, PullFailureReason, RegistryClient, ResolveError,
    RetryPolicy,
};
use berth_runtime::egress::{AddressClass, Via};
use berth_tests::image::small_image;
use berth_tests::registry::{Registry, RegistryAuth};

/// A client whose first retry would wait 3 s: a refusal must come sooner.
fn client(targets: AddressPolicy) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        targets,
        retry: RetryPolicy {
            initial_backoff: Duration::from_secs(3),
            max_backoff: Duration::from_secs(3),
            max_total: Duration::from_secs(10),
        },
        ..ClientConfig::default()
    })
    .unwrap()
}

fn refusal(e: ResolveError) -> berth_oci::TargetRefused {
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");
    match e {
        ResolveError::TargetRefused(r) => r,
        other => panic!("not a refusal: {other}"),
    }
}

/// Resolving `host`'s `team/app:v1` is refused: the message and the refusal.
async fn refused(c: &RegistryClient, host: &str) -> (String, berth_oci::TargetRefused) {
    let e = c
        .resolve(&ImageRef::new(host, "team/app", "v1").unwrap(), None)
        .await
        .unwrap_err();
    (e.to_string(), refusal(e))
}

#[tokio::test]
async fn a_loopback_registry_is_refused_unless_loopback_is_allowed() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("team/app", "v1", &img).await.unwrap();
    let port = reg.host.rsplit_once(':').unwrap().1;

    // `berth run`'s default: nothing internal.
    let strict = client(AddressPolicy::PUBLIC_ONLY);
    let started = Instant::now();
    let (message, r) = refused(&strict, &reg.host).await;
    assert_eq!((r.class, r.via), (AddressClass::Loopback, Via::Literal));
    assert_eq!(
        message,
        "registry host 127.0.0.1 is a loopback address; the operator has not \
         allowed loopback targets (BERTH_ALLOW_TARGETS)"
    );
    // By name the resolver drops the addresses; the answer names the host
    // only, not what it resolved to.
    let by_name = format!("localhost:{port}");
    let (message, r) = refused(&strict, &by_name).await;
    assert_eq!((r.class, r.via), (AddressClass::Loopback, Via::Resolved));
    assert!(
        message.starts_with("registry host localhost resolves only to loopback addresses"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "{message}");
    // Blob downloads (the puller's path) are refused the same way.
    let layer = &img.layers[0];
    let e = strict
        .fetch_blob(
            &reg.host,
            "team/app",
            &layer.digest,
            layer.blob.len() as u64,
            None,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(refusal(e).class, AddressClass::Loopback);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refusal was retried: {:?}",
        started.elapsed()
    );

    // `berth up`'s default: loopback allowed, by literal and by name.
    let local = client(AddressPolicy::LOOPBACK);
    for host in [reg.host.as_str(), by_name.as_str()] {
        let resolved = local
            .resolve(&ImageRef::new(host, "team/app", "v1").unwrap(), None)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(resolved.digest, img.digest);
        let mut out = Vec::new();
        local
            .fetch_blob(
                host,
                "team/app",
                &layer.digest,
                layer.blob.len() as u64,
                None,
                &mut out,
            )
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(out, layer.blob);
    }
}

/// A server on loopback answering every request with `status` and `header`.
async fn answering(status: StatusCode, header: (header::HeaderName, String)) -> String {
    let app = axum::Router::new().fallback(move || {
        let header = header.clone();
        async move { (status, [header]).into_response() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

#[tokio::test]
async fn redirects_to_internal_addresses_are_refused_even_with_loopback_allowed() {
    let c = client(AddressPolicy::LOOPBACK);
    for (location, class, host) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            AddressClass::LinkLocal,
            "169.254.169.254",
        ),
        ("http://10.0.0.1/v2/", AddressClass::Private, "10.0.0.1"),
        (
            "http://[::ffff:10.0.0.1]/v2/",
            AddressClass::Private,
            "[::ffff:a00:1]",
        ),
    ] {
        let registry = answering(
            StatusCode::TEMPORARY_REDIRECT,
            (header::LOCATION, location.to_owned()),
        )
        .await;
        let started = Instant::now();
        let e = c
            .resolve(&ImageRef::new(&registry, "team/app", "v1").unwrap(), None)
            .await
            .unwrap_err();
        let message = e.to_string();
        let r = refusal(e);
        assert_eq!(
            (r.class, r.via, r.host.as_str()),
            (class, Via::Redirect, host),
            "{location}"
        );
        assert!(
            message.contains("the operator has not allowed"),
            "{message}"
        );
        // Refused before connecting: an attempt at 10.0.0.1 would hang
        // until the connect timeout, and a retry would wait 3 s.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{location}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_token_realm_on_an_internal_address_is_refused() {
    let c = client(AddressPolicy::LOOPBACK);
    let registry = answering(
        StatusCode::UNAUTHORIZED,
        (
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="https://169.254.169.254/token",service="r""#.to_owned(),
        ),
    )
    .await;
    let (message, r) = refused(&c, &registry).await;
    assert_eq!((r.class, r.via), (AddressClass::LinkLocal, Via::Literal));
    assert!(
        message.starts_with("registry token service host 169.254.169.254 is a link-local"),
        "{message}"
    );
}

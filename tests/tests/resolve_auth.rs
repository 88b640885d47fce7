//! Resolve with authentication: HTTP basic (htpasswd) and the bearer-token
//! challenge flow against real `docker-registry` instances; secrets never
//! appear in errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_oci::{
    ClientConfig, Credential, ImageRef, PullFailureReason, RegistryClient, RetryPolicy,
};
use berth_tests::image::small_image;
use berth_tests::registry::{Registry, RegistryAuth};

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        ..ClientConfig::default()
    })
    .unwrap()
}

const SECRET: &str = "tok-5ecret-BERTH-never-print-me";

#[tokio::test]
async fn htpasswd_right_password_resolves_wrong_or_missing_is_unauthorized() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "ci".into(),
        pass: SECRET.into(),
    })
    .await
    .unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("private/app", "v1", &img).await.unwrap();
    let r = ImageRef::new(&reg.host, "private/app", "v1").unwrap();

    let c = client();
    let good = Credential::new("ci", SECRET);
    assert_eq!(c.resolve(&r, Some(&good)).await.unwrap().digest, img.digest);
    // Basic is now sent up front; still right.
    assert_eq!(c.resolve(&r, Some(&good)).await.unwrap().digest, img.digest);

    let wrong_secret = "wrong-Pa55word-also-secret";
    let bad = Credential::new("ci", wrong_secret);
    for client in [client(), c.clone()] {
        let e = client.resolve(&r, Some(&bad)).await.unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::Unauthorized, "{e}");
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(
                !text.contains(wrong_secret) && !text.contains(SECRET),
                "{text}"
            );
        }
        let e = client.resolve(&r, None).await.unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::Unauthorized, "{e}");
        let e = client
            .head_digest_exists(&reg.host, "private/app", &img.digest, Some(&bad))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::Unauthorized, "{e}");
    }
    assert!(c
        .head_digest_exists(&reg.host, "private/app", &img.digest, Some(&good))
        .await
        .unwrap());
}

#[tokio::test]
async fn bearer_token_flow_right_credentials_resolve_and_tokens_are_cached() {
    let reg = Registry::start(RegistryAuth::Token {
        user: "robot".into(),
        pass: SECRET.into(),
    })
    .await
    .unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("org/svc", "v1", &img).await.unwrap();
    let issuer = reg.issuer.as_ref().unwrap();
    let r = ImageRef::new(&reg.host, "org/svc", "v1").unwrap();

    let c = client();
    let cred = Credential::new("robot", SECRET);
    let before = issuer.requests();
    let got = c.resolve(&r, Some(&cred)).await.unwrap();
    assert_eq!(got.digest, img.digest);
    assert_eq!(got.compressed_size, img.compressed_size);
    assert_eq!(
        issuer.requests() - before,
        1,
        "one token fetch for the first resolve"
    );
    for _ in 0..5 {
        assert_eq!(c.resolve(&r, Some(&cred)).await.unwrap().digest, img.digest);
    }
    assert_eq!(
        issuer.requests() - before,
        1,
        "the token is reused until it expires"
    );
    assert!(c
        .head_digest_exists(&reg.host, "org/svc", &img.digest, Some(&cred))
        .await
        .unwrap());

    // Another repository needs its own token (scope is per repository).
    let other = small_image("amd64").unwrap();
    reg.push_image("org/other", "v1", &other).await.unwrap();
    let r2 = ImageRef::new(&reg.host, "org/other", "v1").unwrap();
    assert_eq!(
        c.resolve(&r2, Some(&cred)).await.unwrap().digest,
        other.digest
    );
    assert_eq!(issuer.requests() - before, 2);
}

#[tokio::test]
async fn bearer_token_flow_wrong_or_missing_credentials_are_unauthorized_without_leaking() {
    let reg = Registry::start(RegistryAuth::Token {
        user: "robot".into(),
        pass: SECRET.into(),
    })
    .await
    .unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("org/svc", "v1", &img).await.unwrap();
    let r = ImageRef::new(&reg.host, "org/svc", "v1").unwrap();

    let wrong = "Wr0ng-t0ken-that-must-not-leak";
    for c in [client(), {
        // A client that already holds a good token for this repository
        // must not hand it to a different credential.
        let c = client();
        c.resolve(&r, Some(&Credential::new("robot", SECRET)))
            .await
            .unwrap();
        c
    }] {
        let e = c
            .resolve(&r, Some(&Credential::new("robot", wrong)))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::Unauthorized, "{e}");
        assert!(
            e.to_string().contains("token service"),
            "a refused token fetch says so: {e}"
        );
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(wrong) && !text.contains(SECRET), "{text}");
        }
        // Anonymous: the issuer hands out a token without access; the
        // registry refuses it.
        let e = c.resolve(&r, None).await.unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::Unauthorized, "{e}");
    }
}

#[tokio::test]
async fn credential_debug_and_errors_never_show_the_token() {
    let c = Credential::new("someone", SECRET);
    assert!(!format!("{c:?}").contains(SECRET));
    let client = client();
    // An unreachable registry: the error is about the network, not the
    // credential, but is checked all the same.
    let port = berth_tests::free_port();
    let r = ImageRef::new(format!("127.0.0.1:{port}"), "x/y", "v1").unwrap();
    let e = client.resolve(&r, Some(&c)).await.unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::RegistryUnavailable, "{e}");
    assert!(!e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET));
}

//! The deploy hook's `imgURL` override rule (SPEC §6): same repository after
//! normalisation, only a tag or a digest may follow it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_domain::reference::{HookOverrideError, Reference, ReferenceError};

const D64: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn image(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn accepted(service: &str, img_url: &str) -> String {
    match Reference::hook_override(&image(service), img_url) {
        Ok(r) => r.to_string(),
        Err(e) => panic!("{img_url:?} over {service:?} refused: {e}"),
    }
}

fn refused(service: &str, img_url: &str) -> HookOverrideError {
    match Reference::hook_override(&image(service), img_url) {
        Ok(r) => panic!("{img_url:?} over {service:?} accepted as {r}"),
        Err(e) => e,
    }
}

#[test]
fn any_spelling_of_the_same_repository_with_a_tag_or_digest_is_accepted() {
    let svc = "docker.io/library/nginx:1.25";
    for (img_url, want) in [
        ("nginx:1.26", "docker.io/library/nginx:1.26".to_owned()),
        (
            "library/nginx:1.26",
            "docker.io/library/nginx:1.26".to_owned(),
        ),
        (
            "docker.io/nginx:1.26",
            "docker.io/library/nginx:1.26".to_owned(),
        ),
        (
            "index.docker.io/library/nginx:1.26",
            "docker.io/library/nginx:1.26".to_owned(),
        ),
        (
            "docker.io/library/nginx:1.25",
            "docker.io/library/nginx:1.25".to_owned(),
        ),
        (
            &format!("docker.io/library/nginx@{D64}"),
            format!("docker.io/library/nginx@{D64}"),
        ),
        (
            &format!("nginx@{D64}"),
            format!("docker.io/library/nginx@{D64}"),
        ),
        // Nothing after the repository: the ordinary default tag.
        ("nginx", "docker.io/library/nginx:latest".to_owned()),
        (
            "nginx:Mainline_1.27-alpine",
            "docker.io/library/nginx:Mainline_1.27-alpine".to_owned(),
        ),
    ] {
        assert_eq!(accepted(svc, img_url), want, "{img_url}");
    }
}

#[test]
fn a_different_registry_or_repository_is_refused() {
    let svc = "docker.io/library/nginx:1.25";
    for img_url in [
        "redis:7",
        "ghcr.io/x/nginx:1",
        "ghcr.io/library/nginx:1",
        "nginx/nginx:1",
        "library/nginx/extra:1",
        // Docker does not normalise the API host to docker.io: another name.
        "registry-1.docker.io/library/nginx:1",
        "index.docker.io:443/library/nginx:1",
        "Docker.io/library/nginx:1",
        "localhost/nginx:1",
    ] {
        let e = refused(svc, img_url);
        assert!(
            matches!(e, HookOverrideError::DifferentRepository { .. }),
            "{img_url}: {e:?}"
        );
        assert_eq!(e.code(), "different_repository");
        assert!(e.to_string().contains("docker.io/library/nginx"), "{e}");
    }
}

#[test]
fn only_a_tag_or_a_digest_may_follow_the_repository() {
    let svc = "docker.io/library/nginx:1.25";
    assert_eq!(
        refused(svc, "nginx@1.26").code(),
        "invalid_reference",
        "'@' must introduce a digest"
    );
    assert!(matches!(
        refused(svc, "nginx@1.26"),
        HookOverrideError::Invalid(ReferenceError::InvalidDigest { .. })
    ));
    assert_eq!(
        refused(svc, &format!("nginx:1.26@{D64}")),
        HookOverrideError::TagAndDigest
    );
    for img_url in [
        "",
        "nginx:",
        "nginx:1.26/extra",
        "nginx:1.26 ",
        "NGINX:1.26",
        "nginx@sha256:abc",
        "nginx@md5:0123456789abcdef0123456789abcdef",
        "https://docker.io/library/nginx:1.26",
        "docker.io/library/nginx?tag=1.26",
    ] {
        let e = refused(svc, img_url);
        assert!(
            matches!(e, HookOverrideError::Invalid(_)),
            "{img_url:?}: {e:?}"
        );
    }
}

#[test]
fn private_registries_compare_host_port_and_path() {
    let svc = "localhost:5000/team/app:v1";
    assert_eq!(
        accepted(svc, "localhost:5000/team/app:v2"),
        "localhost:5000/team/app:v2"
    );
    assert_eq!(
        accepted(svc, &format!("localhost:5000/team/app@{D64}")),
        format!("localhost:5000/team/app@{D64}")
    );
    for img_url in [
        "team/app:v2",
        "localhost:5001/team/app:v2",
        "localhost/team/app:v2",
        "127.0.0.1:5000/team/app:v2",
        "localhost:5000/team/app/extra:v2",
        "localhost:5000/team:v2",
    ] {
        assert_eq!(
            refused(svc, img_url).code(),
            "different_repository",
            "{img_url}"
        );
    }
    let v6 = "[::1]:5000/app:v1";
    assert_eq!(accepted(v6, "[::1]:5000/app:v2"), "[::1]:5000/app:v2");
    assert_eq!(
        refused(v6, "[::2]:5000/app:v2").code(),
        "different_repository"
    );
}

#[test]
fn a_service_pinned_by_digest_can_be_moved_to_a_tag() {
    let svc = format!("ghcr.io/o/app:v1@{D64}");
    assert_eq!(accepted(&svc, "ghcr.io/o/app:v3"), "ghcr.io/o/app:v3");
    let svc = format!("ghcr.io/o/app@{D64}");
    assert_eq!(accepted(&svc, "ghcr.io/o/app:v3"), "ghcr.io/o/app:v3");
}

#[test]
fn refusals_do_not_echo_unbounded_input() {
    let svc = "docker.io/library/nginx:1.25";
    let long = format!("ghcr.io/{}:1", "a/".repeat(100) + &"b".repeat(50));
    let msg = refused(svc, &long).to_string();
    assert!(msg.len() < 300, "{msg}");
    let long_tag = format!("nginx:{}", "x".repeat(5000));
    let msg = refused(svc, &long_tag).to_string();
    assert!(msg.len() < 300, "{msg}");
}

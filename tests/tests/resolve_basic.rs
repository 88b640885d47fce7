//! Resolve against an anonymous registry: tag → digest for OCI, Docker
//! and `mediaType`-less manifests, pinned digests, deleted and unknown
//! manifests, the digest probe and verified blob streaming.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_oci::{ClientConfig, ImageRef, PullFailureReason, RegistryClient, RetryPolicy};
use berth_tests::image::{build_image, small_image, ImageOptions, Layer};
use berth_tests::registry::flaky::FlakyProxy;
use berth_tests::registry::{Registry, RegistryAuth};

fn client() -> RegistryClient {
    RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn anonymous_tag_resolves_to_the_pushed_manifest_digest_and_size() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    // Resolves go through a pass-through proxy that counts requests.
    let proxy = FlakyProxy::start(&reg.host, 0, 503, None).await.unwrap();
    let c = client();
    for (repo, opts) in [
        ("team/oci", ImageOptions::linux("amd64")),
        (
            "team/docker",
            ImageOptions {
                docker: true,
                ..ImageOptions::linux("amd64")
            },
        ),
        (
            "team/nomediatype",
            ImageOptions {
                omit_media_type: true,
                ..ImageOptions::linux("amd64")
            },
        ),
    ] {
        let layers = vec![
            Layer::from_files(&[("a.txt", b"alpha")]).unwrap(),
            Layer::random(10_000).unwrap(),
        ];
        let img = build_image(&opts, layers).unwrap();
        reg.push_image(repo, "v1", &img).await.unwrap();
        let r = c
            .resolve(&ImageRef::new(&proxy.host, repo, "v1").unwrap(), None)
            .await
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(r.digest, img.digest, "{repo}");
        assert_eq!(r.index_digest, None);
        assert_eq!(r.compressed_size, img.compressed_size, "{repo}");
        // Second resolve comes from the summary cache after one HEAD and
        // must agree.
        let before = proxy.requests().len();
        let again = c
            .resolve(&ImageRef::new(&proxy.host, repo, "v1").unwrap(), None)
            .await
            .unwrap();
        assert_eq!(again, r);
        assert_eq!(proxy.requests().len() - before, 1, "{repo}: one HEAD");
    }
}

#[tokio::test]
async fn moving_a_tag_is_seen_by_the_next_resolve() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let c = client();
    let r = ImageRef::new(&reg.host, "app", "latest").unwrap();
    let one = small_image("amd64").unwrap();
    reg.push_image("app", "latest", &one).await.unwrap();
    assert_eq!(c.resolve(&r, None).await.unwrap().digest, one.digest);
    let two = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::random(100).unwrap()],
    )
    .unwrap();
    reg.push_image("app", "latest", &two).await.unwrap();
    assert_eq!(c.resolve(&r, None).await.unwrap().digest, two.digest);
}

#[tokio::test]
async fn pinned_digest_resolves_and_a_wrong_digest_is_not_found() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("pin", "v1", &img).await.unwrap();
    let c = client();
    let r = c
        .resolve(&ImageRef::new(&reg.host, "pin", &img.digest).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(r.digest, img.digest);
    let other = format!("sha256:{}", "0".repeat(64));
    let e = c
        .resolve(&ImageRef::new(&reg.host, "pin", &other).unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::ImageNotFound, "{e}");
}

#[tokio::test]
async fn deleted_manifest_and_unknown_names_are_image_not_found() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = small_image("amd64").unwrap();
    reg.push_image("gone", "v1", &img).await.unwrap();
    let c = client();
    let r = ImageRef::new(&reg.host, "gone", "v1").unwrap();
    c.resolve(&r, None).await.unwrap();
    assert!(c
        .head_digest_exists(&reg.host, "gone", &img.digest, None)
        .await
        .unwrap());

    reg.delete_manifest("gone", &img.digest).await.unwrap();
    let e = c.resolve(&r, None).await.unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::ImageNotFound, "{e}");
    assert!(!c
        .head_digest_exists(&reg.host, "gone", &img.digest, None)
        .await
        .unwrap());

    for (repo, tag) in [("gone", "nope"), ("never/pushed", "v1")] {
        let e = c
            .resolve(&ImageRef::new(&reg.host, repo, tag).unwrap(), None)
            .await
            .unwrap_err();
        assert_eq!(
            e.reason(),
            PullFailureReason::ImageNotFound,
            "{repo}:{tag}: {e}"
        );
    }
}

#[tokio::test]
async fn blob_stream_verifies_digest_and_size() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::random(300_000).unwrap()],
    )
    .unwrap();
    reg.push_image("blobs", "v1", &img).await.unwrap();
    let c = client();
    let layer = &img.layers[0];
    let mut out = Vec::new();
    let n = c
        .fetch_blob(
            &reg.host,
            "blobs",
            &layer.digest,
            layer.blob.len() as u64,
            None,
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(n as usize, layer.blob.len());
    assert_eq!(out, layer.blob);

    // A listed size that disagrees is caught before trusting the bytes.
    let e = c
        .fetch_blob(
            &reg.host,
            "blobs",
            &layer.digest,
            layer.blob.len() as u64 - 1,
            None,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::DigestMismatch, "{e}");

    // Stored bytes that no longer hash to the digest.
    reg.corrupt_blob(&layer.digest).unwrap();
    let e = c
        .fetch_blob(
            &reg.host,
            "blobs",
            &layer.digest,
            layer.blob.len() as u64,
            None,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::DigestMismatch, "{e}");
}

#[tokio::test]
async fn manifest_bytes_that_do_not_match_their_digest_are_digest_mismatch() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = build_image(
        &ImageOptions::linux("amd64"),
        vec![Layer::random(100).unwrap()],
    )
    .unwrap();
    reg.push_image("tampered", "v1", &img).await.unwrap();
    // Rewrite one hex digit of the layer digest inside the stored manifest:
    // still valid JSON, no longer the bytes the digest names.
    let path = reg.blob_path(&img.digest).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let hex = img.layers[0].digest.strip_prefix("sha256:").unwrap();
    let swapped = if hex.ends_with('0') {
        format!("{}1", &hex[..63])
    } else {
        format!("{}0", &hex[..63])
    };
    std::fs::write(&path, text.replace(hex, &swapped)).unwrap();

    let e = client()
        .resolve(&ImageRef::new(&reg.host, "tampered", "v1").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::DigestMismatch, "{e}");
}

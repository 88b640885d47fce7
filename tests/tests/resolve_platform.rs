//! SPEC §5 checks at resolve time: linux/amd64 chosen from multi-platform
//! indexes (both digests recorded), images without it refused, and the
//! compressed-size limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_oci::{ClientConfig, ImageRef, PullFailureReason, RegistryClient, RetryPolicy};
use berth_tests::image::{build_image, small_image, ImageOptions, Layer, Platform};
use berth_tests::registry::{Registry, RegistryAuth};

fn client_with_limit(max_image_size: u64) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        retry: RetryPolicy::fast(),
        max_image_size,
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn index_with_amd64_picks_the_amd64_manifest_and_records_both_digests() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let arm = small_image("arm64").unwrap();
    let amd = build_image(
        &ImageOptions::linux("amd64"),
        vec![
            Layer::random(5_000).unwrap(),
            Layer::from_files(&[("x", b"y")]).unwrap(),
        ],
    )
    .unwrap();
    let ppc = small_image("ppc64le").unwrap();
    let c = client_with_limit(10_000_000_000);
    for (tag, docker) in [("oci", false), ("docker", true)] {
        // amd64 deliberately not first.
        let entries = [
            (
                Platform {
                    variant: Some("v8".into()),
                    ..Platform::linux("arm64")
                },
                &arm,
            ),
            (Platform::linux("amd64"), &amd),
            (Platform::linux("ppc64le"), &ppc),
        ];
        let idx = reg
            .push_index("multi", tag, &entries, docker)
            .await
            .unwrap();
        let r = ImageRef::new(&reg.host, "multi", tag).unwrap();
        for round in 0..2 {
            let got = c
                .resolve(&r, None)
                .await
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
            assert_eq!(got.digest, amd.digest, "{tag} round {round}");
            assert_eq!(
                got.index_digest.as_deref(),
                Some(idx.digest.as_str()),
                "{tag}"
            );
            assert_eq!(got.compressed_size, amd.compressed_size, "{tag}");
        }
        // Pinned by the index digest: same answer.
        let pinned = ImageRef::new(&reg.host, "multi", &idx.digest).unwrap();
        let got = c.resolve(&pinned, None).await.unwrap();
        assert_eq!(
            (got.digest.as_str(), got.index_digest.as_deref()),
            (amd.digest.as_str(), Some(idx.digest.as_str()))
        );
    }
    // The platform manifest deleted under a cached index: noticed.
    reg.delete_manifest("multi", &amd.digest).await.unwrap();
    let e = c
        .resolve(&ImageRef::new(&reg.host, "multi", "oci").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::ImageNotFound, "{e}");
}

#[tokio::test]
async fn arm64_only_is_unsupported_platform() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let arm = small_image("arm64").unwrap();
    let c = client_with_limit(10_000_000_000);

    reg.push_index(
        "armonly",
        "index",
        &[(Platform::linux("arm64"), &arm)],
        false,
    )
    .await
    .unwrap();
    let e = c
        .resolve(&ImageRef::new(&reg.host, "armonly", "index").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::UnsupportedPlatform, "{e}");
    assert!(
        e.to_string().contains("linux/arm64"),
        "says what there is: {e}"
    );

    // A single-platform arm64 manifest (no index): the config says arm64.
    reg.push_image("armonly", "single", &arm).await.unwrap();
    let e = c
        .resolve(
            &ImageRef::new(&reg.host, "armonly", "single").unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::UnsupportedPlatform, "{e}");
    // Twice: the cached summary gives the same verdict.
    let e = c
        .resolve(
            &ImageRef::new(&reg.host, "armonly", "single").unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::UnsupportedPlatform, "{e}");

    // windows/amd64 is not linux/amd64 either.
    let win = build_image(
        &ImageOptions {
            os: "windows".into(),
            ..ImageOptions::linux("amd64")
        },
        vec![],
    )
    .unwrap();
    reg.push_image("armonly", "win", &win).await.unwrap();
    let e = c
        .resolve(&ImageRef::new(&reg.host, "armonly", "win").unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), PullFailureReason::UnsupportedPlatform, "{e}");
}

#[tokio::test]
async fn over_the_size_limit_is_image_too_large() {
    let reg = Registry::start(RegistryAuth::None).await.unwrap();
    let img = build_image(
        &ImageOptions::linux("amd64"),
        vec![
            Layer::random(40_000).unwrap(),
            Layer::random(30_000).unwrap(),
        ],
    )
    .unwrap();
    reg.push_image("big", "v1", &img).await.unwrap();
    reg.push_index("big", "multi", &[(Platform::linux("amd64"), &img)], false)
        .await
        .unwrap();
    let size = img.compressed_size;
    assert!(size > 70_000);

    for tag in ["v1", "multi"] {
        let r = ImageRef::new(&reg.host, "big", tag).unwrap();
        // Exactly at the limit is fine; one byte less is refused.
        let ok = client_with_limit(size).resolve(&r, None).await.unwrap();
        assert_eq!(ok.compressed_size, size);
        let e = client_with_limit(size - 1)
            .resolve(&r, None)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), PullFailureReason::ImageTooLarge, "{tag}: {e}");
        assert!(e.to_string().contains(&size.to_string()), "{e}");
    }
}

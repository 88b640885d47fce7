//! berth's HTTP API judged by a client no one here wrote: Render's official
//! Python SDK (PyPI `render` 1.5.0, installed by scripts/install-deps).
//! `render_sdk/check.py` runs every SDK operation that applies to
//! image-backed services against a real `berth up` (a real nats-server, a
//! docker-registry with basic auth, real runc instances; root, as `Setup`
//! requires) and checks each answer's status, model and meaning; it must
//! report no failure.

use std::time::Duration;

use berth_tests::registry::RegistryAuth;
use berth_tests::NatsVersion;
use serde_json::Value;

use crate::cli_support::{busybox_image, Setup};

const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/render_sdk/check.py");

#[tokio::test]
async fn render_sdk_finds_the_api_compatible() {
    let (user, pass) = ("sdkuser", "s3cret-sdk-registry-pass");
    let mut setup = Setup::start_with(
        NatsVersion::Modern,
        RegistryAuth::Htpasswd {
            user: user.into(),
            pass: pass.into(),
        },
    )
    .await;
    let registry = &setup.registry;
    let digest = registry
        .push_image("sdk/app", "v1", &busybox_image("v1"))
        .await
        .unwrap();
    let digest2 = registry
        .push_image("sdk/app", "v2", &busybox_image("v2"))
        .await
        .unwrap();
    let credentials: Value =
        serde_json::from_slice(&std::fs::read(setup.cli.data.join("credentials.json")).unwrap())
            .unwrap();
    let owner = credentials["ownerId"].as_str().unwrap();
    let key = credentials["apiKey"].as_str().unwrap();

    let image = format!("{}/sdk/app:v1", registry.host);
    let image2 = format!("{}/sdk/app:v2", registry.host);
    let api = format!("{}/v1", setup.api_url);
    let run = tokio::process::Command::new("python3")
        .arg(CHECK)
        .args(["--api-url", &api, "--owner-id", owner])
        .args(["--image", &image, "--image-digest", &digest])
        .args(["--image2", &image2, "--image2-digest", &digest2])
        .args(["--registry-host", &registry.host, "--registry-user", user])
        // Secrets through the environment, never on a command line.
        .env("BERTH_API_KEY", key)
        .env("BERTH_SDK_REGISTRY_PASSWORD", pass)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("check.py did not finish in 10 minutes")
        .expect("python3 runs (scripts/install-deps installs Render's SDK)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Checked first: the failure message below shows the output.
    for secret in [key, pass] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "check.py printed a secret"
        );
    }
    println!("{stdout}");
    assert!(
        out.status.success(),
        "Render's SDK found berth's API incompatible ({}):\n{stdout}\n--- progress\n{stderr}",
        out.status
    );

    setup.stop().await;
}

/// The check itself, against `render_sdk/fake_render.py` (an in-memory API
/// answering as Render's contract says): it must pass, so that what it
/// reports of berth is berth's doing. Needs no root and no berth.
#[tokio::test]
async fn render_sdk_check_passes_a_faithful_fake() {
    let out = tokio::process::Command::new("python3")
        .args([CHECK, "--self-test"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 runs (scripts/install-deps installs Render's SDK)");
    assert!(
        out.status.success(),
        "check.py fails a faithful fake:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

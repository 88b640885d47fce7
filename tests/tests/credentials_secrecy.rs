//! SPEC §3: a registry token never appears in clear — not in logs (captured
//! here at TRACE, every crate), not in the event stream's bytes (payloads
//! and headers of every message), not on the bus at all (every core NATS
//! message the test's server carries, including image check requests and
//! replies), and not in what the application layer returns (credential
//! list/show, errors). The flows exercised: basic auth, the bearer-token
//! challenge flow, creation checks, deploy resolution, a rotation to a
//! wrong token and the failure it causes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::resolver_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use berth_ingress::{NewService, Rotation};
use berth_runtime::Secret;
use berth_schemas::model::{DeployStatus, OverlapPolicy, ServiceType};
use berth_tests::image::small_image;
use berth_tests::registry::{Registry, RegistryAuth};
use futures::StreamExt;
use resolver_support::{contains, App};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn random_token(tag: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("tok{tag}{n:032x}")
}

/// Captures every log line at TRACE with a global subscriber, so it runs in
/// a process of its own.
#[test]
fn tokens_never_appear_in_logs_the_log_the_bus_or_api_output() {
    berth_tests::run_alone("credentials_secrecy::secrecy_child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by tokens_never_appear_in_logs_the_log_the_bus_or_api_output in its own process"]
async fn secrecy_child() {
    assert!(berth_tests::is_alone(), "needs a process of its own");
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let basic_token = random_token("basic");
    let bearer_token = random_token("bearer");
    let wrong_token = random_token("wrong");
    let basic = Registry::start(RegistryAuth::Htpasswd {
        user: "ci".into(),
        pass: basic_token.clone(),
    })
    .await
    .unwrap();
    let bearer = Registry::start(RegistryAuth::Token {
        user: "bot".into(),
        pass: bearer_token.clone(),
    })
    .await
    .unwrap();
    let img = small_image("amd64").unwrap();
    basic.push_image("team/app", "v1", &img).await.unwrap();
    bearer.push_image("team/app", "v1", &img).await.unwrap();

    let app = App::start().await;
    // Everything on the bus, from the moment the installation exists.
    let mut bus = app.store.client().subscribe(">").await.unwrap();
    let bus_bytes = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&bus_bytes);
    let tap = tokio::spawn(async move {
        while let Some(m) = bus.next().await {
            let mut b = sink.lock().unwrap();
            b.extend_from_slice(&m.payload);
            if let Some(h) = &m.headers {
                for (k, vs) in h.iter() {
                    b.extend_from_slice(k.to_string().as_bytes());
                    for v in vs {
                        b.extend_from_slice(v.as_str().as_bytes());
                    }
                }
            }
        }
    });
    app.store.client().flush().await.unwrap();

    let alice = app.owner().await;
    let basic_cred = app
        .credential(&alice, &basic.host, "ci", &basic_token)
        .await;
    let bearer_cred = app
        .credential(&alice, &bearer.host, "bot", &bearer_token)
        .await;

    let mut outputs = String::new();
    let mut ids = Vec::new();
    for (name, reg, cred) in [("b", &basic, &basic_cred), ("t", &bearer, &bearer_cred)] {
        let mut s = NewService::new(
            name,
            ServiceType::BackgroundWorker,
            &format!("{}/team/app:v1", reg.host),
        );
        s.credential = Some(cred.clone());
        s.overlap_policy = Some(OverlapPolicy::Cancel);
        let created = app.ingress.create_service(&alice, s).await.unwrap();
        let state = app.await_deploy(&alice, &created.id, &created.deploy).await;
        assert_eq!(
            state.deploy(&created.deploy).unwrap().digest(),
            Some(img.digest.as_str())
        );
        outputs.push_str(&format!("{created:?}{state:?}"));
        ids.push(created.id);
    }

    // Rotate to a wrong token: the creation check and the deploy both fail,
    // and their messages must not carry the token either.
    let rotated = app
        .ingress
        .rotate_credential(
            &alice,
            &basic_cred,
            Rotation {
                token: Secret::new(wrong_token.clone()),
                username: None,
                name: None,
            },
        )
        .await
        .unwrap();
    let mut s = NewService::new(
        "c",
        ServiceType::BackgroundWorker,
        &format!("{}/team/app:v1", basic.host),
    );
    s.credential = Some(basic_cred.clone());
    let err = app.ingress.create_service(&alice, s).await.unwrap_err();
    outputs.push_str(&format!("{err:?}{err}"));
    let deploy = app
        .ingress
        .request_deploy(&alice, &ids[0], None)
        .await
        .unwrap();
    let state = app.await_deploy(&alice, &ids[0], &deploy).await;
    assert_eq!(
        state.deploy(&deploy).unwrap().status,
        DeployStatus::UpdateFailed
    );
    outputs.push_str(&format!("{state:?}"));

    let list = app.ingress.list_credentials(&alice).await.unwrap();
    assert_eq!(list.len(), 2);
    outputs.push_str(&format!("{list:?}{rotated:?}"));
    outputs.push_str(&serde_json::to_string(&list).unwrap());
    for id in [&basic_cred, &bearer_cred] {
        let shown = app.ingress.show_credential(&alice, id).await.unwrap();
        outputs.push_str(&format!("{shown:?}"));
        outputs.push_str(&serde_json::to_string(&shown).unwrap());
    }

    let mut log_bytes = Vec::new();
    for (_, payload, headers) in app.raw_log().await {
        log_bytes.extend_from_slice(&payload);
        log_bytes.extend_from_slice(&headers);
    }
    app.store.client().flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tap.abort();
    let bus_bytes = bus_bytes.lock().unwrap().clone();
    let captured = logs.0.lock().unwrap().clone();

    // The captures really hold what happened (so an empty capture cannot pass).
    assert!(
        contains(&captured, "image resolved"),
        "log capture is empty?"
    );
    assert!(contains(&captured, "TRACE"), "not capturing at TRACE");
    assert!(contains(&log_bytes, "credential_rotated"));
    assert!(contains(&bus_bytes, "resolver.check") || contains(&bus_bytes, "credential_created"));
    assert!(outputs.contains(basic_cred.as_str()));

    let b64 = |user: &str, token: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
    };
    for secret in [
        basic_token.clone(),
        bearer_token.clone(),
        wrong_token.clone(),
        b64("ci", &basic_token),
        b64("bot", &bearer_token),
        b64("ci", &wrong_token),
    ] {
        assert!(!contains(&captured, &secret), "a token is in the logs");
        assert!(
            !contains(&log_bytes, &secret),
            "a token is in the event stream"
        );
        assert!(!contains(&bus_bytes, &secret), "a token is on the bus");
        assert!(!outputs.contains(&secret), "a token is in API output");
    }
}

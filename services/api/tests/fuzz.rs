//! Property tests on query strings and JSON bodies: whatever arrives, the
//! API answers without a 500 and without panicking, and every error is
//! the `{id, message}` shape.

use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::support::App;

const FIELDS: &[&str] = &[
    "type",
    "name",
    "ownerId",
    "image",
    "imagePath",
    "registryCredentialId",
    "envVars",
    "key",
    "value",
    "serviceDetails",
    "plan",
    "numInstances",
    "region",
    "healthCheckPath",
    "preDeployCommand",
    "schedule",
    "envSpecificDetails",
    "dockerCommand",
    "imageUrl",
    "clearCache",
    "deployId",
    "notifyOnFail",
    "registry",
    "username",
    "authToken",
    "label",
    "notificationsToSend",
    "emailEnabled",
    "previewNotificationsEnabled",
    "email",
    "overlapPolicy",
    "shutdownDelaySeconds",
    "httpsRedirect",
    "x",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "web_service",
            "cron_job",
            "starter",
            "GENERIC",
            "DOCKER",
            "all",
            "none",
            "default",
            "true",
            "docker.io/library/alpine:3",
            "nginx@1.26",
            "srv-aaaaaaaaaaaaaaaaaaaa",
            "dep-aaaaaaaaaaaaaaaaaaaa",
            "rgc-aaaaaaaaaaaaaaaaaaaa",
            "*/5 * * * *",
            "",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..6).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn path(real: Vec<String>) -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        prop::sample::select(real),
        Just("srv-aaaaaaaaaaaaaaaaaaaa".to_owned()),
        Just("SRV".to_owned()),
        "[a-z0-9%._-]{0,30}",
    ];
    (
        prop::sample::select(vec![
            "/v1/services",
            "/v1/services/{}",
            "/v1/services/{}/deploys",
            "/v1/services/{}/deploys/{}",
            "/v1/services/{}/deploys/{}/cancel",
            "/v1/services/{}/rollback",
            "/v1/services/{}/scale",
            "/v1/services/{}/restart",
            "/v1/services/{}/suspend",
            "/v1/services/{}/resume",
            "/v1/services/{}/deploy-hook",
            "/v1/cron-jobs/{}/runs",
            "/v1/registrycredentials",
            "/v1/registrycredentials/{}",
            "/v1/api-keys",
            "/v1/api-keys/{}",
            "/v1/notification-settings/owners/{}",
            "/v1/notification-settings/overrides",
            "/v1/notification-settings/overrides/services/{}",
            "/deploy/{}",
        ]),
        seg.clone(),
        seg,
        "[ -~]{0,60}",
    )
        .prop_map(|(t, a, b, q)| {
            let p = t.replacen("{}", &a, 1).replacen("{}", &b, 1);
            let q: String = q
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?".contains(c) {
                        c.to_string()
                    } else {
                        format!("%{:02X}", c as u32)
                    }
                })
                .collect();
            format!("{p}?{q}")
        })
}

#[test]
fn any_request_gets_an_answer_never_a_500() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, owner, real) = rt.block_on(async {
        let app = App::start(true).await;
        let owner = app.owner().await;
        let (svc, _) = app.service(&owner, "fuzzed").await;
        let dep = app.latest_deploy(&owner, &svc).await;
        let real = vec![svc, dep, owner.id.to_string()];
        (app, owner, real)
    });
    let methods = vec![Method::GET, Method::POST, Method::PATCH, Method::DELETE];
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        m in prop::sample::select(methods),
        path in path(real.clone()),
        body in prop_oneof![
            json_value().prop_map(|v| Some(v.to_string())),
            ".{0,80}".prop_map(Some),
            Just(None),
        ],
        authed in any::<bool>(),
    )| {
        // A path that does not parse as a URI is refused by the HTTP layer
        // before it reaches us.
        prop_assume!(path.parse::<axum::http::Uri>().is_ok());
        let key = authed.then_some(owner.key.as_str());
        let (s, v) = rt.block_on(app.call_raw(m.clone(), &path, key, body.clone()));
        prop_assert!(s != StatusCode::INTERNAL_SERVER_ERROR, "{m} {path} {body:?}: {v}");
        if !s.is_success() {
            prop_assert!(v["id"].is_string() && v["message"].is_string(), "{m} {path}: {s} {v}");
        }
    });
}

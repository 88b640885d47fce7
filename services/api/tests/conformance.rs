//! Every answer the tests get is checked against the OpenAPI document the
//! API serves: a success must have the status its operation documents and
//! a body its schema accepts; an error must be the documented error body.
//! So the document is proven on real answers, not only generated.

use std::sync::OnceLock;

use axum::http::{Method, StatusCode};
use boon::{Compiler, Draft, SchemaIndex, Schemas};
use serde_json::Value;

const DOC: &str = "http://berth.invalid/openapi.json";

struct Compiled {
    schemas: Schemas,
    doc: Value,
}

fn compiled() -> &'static std::sync::Mutex<Compiled> {
    static C: OnceLock<std::sync::Mutex<Compiled>> = OnceLock::new();
    C.get_or_init(|| {
        std::sync::Mutex::new(Compiled {
            schemas: Schemas::new(),
            doc: berth_api::openapi::document(),
        })
    })
}

/// A JSON pointer token (`/` and `~` escaped).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The route template `path` (no query) is served by, the most literal one
/// when several match.
fn template(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('/').collect();
    berth_api::openapi::ROUTES
        .iter()
        .map(|r| r.path)
        .filter(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .min_by_key(|t| t.matches('{').count())
}

fn validate(c: &mut Compiled, pointer: &str, answer: &Value, what: &str) {
    let mut compiler = Compiler::new();
    compiler.set_default_draft(Draft::V2020_12);
    compiler.add_resource(DOC, c.doc.clone()).unwrap();
    let idx: SchemaIndex = compiler
        .compile(&format!("{DOC}#{pointer}"), &mut c.schemas)
        .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e:?}"));
    if let Err(e) = c.schemas.validate(answer, idx) {
        panic!("{what}: the answer does not match the OpenAPI document: {e}\n{answer:#}");
    }
}

/// Checks one answer of `method path`.
pub fn check(method: &Method, path: &str, status: StatusCode, answer: &Value) {
    let path = path.split('?').next().unwrap_or_default();
    let what = format!("{method} {path} → {status}");
    let Some(t) = template(path) else {
        return;
    };
    let m = method.as_str().to_lowercase();
    let mut c = compiled().lock().unwrap_or_else(|p| p.into_inner());
    let Some(op) = c.doc["paths"][t][&m].as_object().cloned() else {
        // A method the path does not have: 405, an error body.
        validate(&mut c, "/components/schemas/Error", answer, &what);
        return;
    };
    if status.is_success() {
        let code = status.as_u16().to_string();
        assert!(
            op["responses"].get(&code).is_some(),
            "{what}: {code} is not the documented success of {m} {t}"
        );
        let schema = &op["responses"][&code]["content"]["application/json"]["schema"];
        if !schema.is_null() {
            let pointer = format!(
                "/paths/{}/{m}/responses/{code}/content/application~1json/schema",
                token(t)
            );
            validate(&mut c, &pointer, answer, &what);
        }
    } else if status.is_client_error() || status.is_server_error() {
        validate(&mut c, "/components/schemas/Error", answer, &what);
    }
}

/// The check can fail: answers that break the document are caught.
#[test]
fn answers_that_break_the_document_are_caught() {
    let wrong = [
        (
            Method::GET,
            "/v1/services",
            StatusCode::OK,
            serde_json::json!({"not": "a list"}),
        ),
        (
            Method::GET,
            "/v1/services",
            StatusCode::OK,
            serde_json::json!([{"cursor": "c"}]),
        ),
        (
            Method::POST,
            "/v1/services",
            StatusCode::OK,
            serde_json::json!({}),
        ),
        (
            Method::GET,
            "/v1/services/srv-x",
            StatusCode::NOT_FOUND,
            serde_json::json!({"oops": 1}),
        ),
        (
            Method::GET,
            "/v1/services/srv-x/deploys/dep-y",
            StatusCode::OK,
            serde_json::json!({"id": "dep-y", "status": "exploded", "trigger": "api",
                               "image": {"ref": "r"}, "rollbackEligible": false}),
        ),
    ];
    for (method, path, status, answer) in wrong {
        let caught = std::panic::catch_unwind(|| check(&method, path, status, &answer));
        assert!(caught.is_err(), "{method} {path} {status} {answer} passed");
    }
    // And a conforming one passes.
    check(
        &Method::GET,
        "/v1/services/srv-x/deploys/dep-y",
        StatusCode::OK,
        &serde_json::json!({"id": "dep-y", "status": "live", "trigger": "api",
                            "image": {"ref": "r", "sha": null, "registryCredential": null},
                            "rollbackEligible": true}),
    );
}

//! The crate layering, read from `cargo metadata`: contracts are in
//! schemas and rules in domain, so no component crate needs another one.
//!
//! - a component (one binary's worth of behaviour) never has another
//!   component among its normal or build dependencies; its tests may use
//!   what they need as dev-dependencies, preferably through berth-tests;
//! - the node's agent and puller are its own parts: no other component
//!   depends on them;
//! - a library never depends on a component;
//! - nothing but tests depends on berth-tests (it starts components);
//! - every workspace crate is classified here, so a new one is checked too.
//!
//! `berth` is the composition root: `berth up` runs every component (and
//! hosts the projector), so it depends on all of them.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// One crate per component.
const COMPONENTS: &[&str] = &[
    "berth-api",
    "berth-resolver",
    "berth-scheduler",
    "berth-cron",
    "berth-notifier",
    "berth-router",
    "berth-node",
];

/// What components are built from. The node's agent and puller are
/// libraries the node drives, not components of their own.
const LIBRARIES: &[&str] = &[
    "berth-schemas",
    "berth-domain",
    "berth-eventlog",
    "berth-runtime",
    "berth-ingress",
    "berth-oci",
    "berth-puller",
    "berth-agent",
];

/// Libraries that are parts of the node, for the node alone.
const NODE_PARTS: &[&str] = &["berth-agent", "berth-puller"];

/// The component they belong to.
const NODE: &str = "berth-node";

/// The binary that composes every component.
const ROOT: &str = "berth";

/// The test and benchmark harness.
const HARNESS: &str = "berth-tests";

/// Every way `metadata` (the JSON of `cargo metadata --no-deps`) breaks the
/// layering, one sentence each.
fn violations(metadata: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    if packages.is_empty() {
        found.push("cargo metadata lists no packages".to_owned());
    }
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        let is_component = COMPONENTS.contains(&name);
        let is_library = LIBRARIES.contains(&name);
        if !is_component && !is_library && name != ROOT && name != HARNESS {
            found.push(format!(
                "{name} is neither a component nor a library: classify it in crate_layering.rs"
            ));
        }
        let deps = package["dependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for dep in &deps {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            // `kind` is null for normal dependencies, "dev" or "build" otherwise.
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if kind == "dev" {
                continue;
            }
            let dep_is_component = COMPONENTS.contains(&dep_name);
            if is_component && dep_is_component {
                found.push(format!(
                    "component {name} depends on component {dep_name} ({kind}): \
                     move the shared contract to berth-schemas or the rule to berth-domain"
                ));
            }
            if is_component && name != NODE && NODE_PARTS.contains(&dep_name) {
                found.push(format!(
                    "component {name} depends on {dep_name} ({kind}), a part of {NODE}: \
                     move what it needs to berth-schemas or berth-domain"
                ));
            }
            if is_library && dep_is_component {
                found.push(format!(
                    "library {name} depends on component {dep_name} ({kind})"
                ));
            }
            if dep_name == HARNESS {
                found.push(format!(
                    "{name} depends on {HARNESS} ({kind}); only tests may (dev-dependencies)"
                ));
            }
        }
    }
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for expected in COMPONENTS.iter().chain(LIBRARIES) {
        if !names.contains(expected) {
            found.push(format!(
                "{expected} is listed in crate_layering.rs but not in the workspace"
            ));
        }
    }
    found
}

fn workspace_metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn no_component_depends_on_another_and_no_library_on_a_component() {
    let found = violations(&workspace_metadata());
    assert!(found.is_empty(), "crate layering:\n{}", found.join("\n"));
}

/// The check itself, on made-up metadata: it sees what it is for.
#[test]
fn the_layering_check_catches_what_it_should() {
    let package = |name: &str, deps: Value| json!({ "name": name, "dependencies": deps });
    let mut packages: Vec<Value> = COMPONENTS
        .iter()
        .chain(LIBRARIES)
        .map(|n| package(n, json!([])))
        .collect();
    let clean = json!({ "packages": packages.clone() });
    assert_eq!(violations(&clean), Vec::<String>::new());

    packages.push(package(
        "berth-scheduler",
        json!([
            { "name": "berth-node", "kind": null },
            // Tests may run a real node.
            { "name": "berth-agent", "kind": "dev" },
            { "name": "berth-tests", "kind": "dev" },
        ]),
    ));
    packages.push(package(
        "berth-cron",
        json!([{ "name": "berth-puller", "kind": null }]),
    ));
    packages.push(package(
        "berth-node",
        json!([{ "name": "berth-agent", "kind": null }]),
    ));
    packages.push(package(
        "berth-oci",
        json!([{ "name": "berth-resolver", "kind": "build" }]),
    ));
    packages.push(package(
        "berth-domain",
        json!([{ "name": "berth-tests", "kind": null }]),
    ));
    packages.push(package(
        ROOT,
        json!([{ "name": "berth-api", "kind": null }]),
    ));
    packages.push(package("berth-newcomer", json!([])));
    let found = violations(&json!({ "packages": packages }));
    let expected = [
        "component berth-scheduler depends on component berth-node (normal)",
        "component berth-cron depends on berth-puller (normal), a part of berth-node",
        "library berth-oci depends on component berth-resolver (build)",
        "berth-domain depends on berth-tests (normal)",
        "berth-newcomer is neither a component nor a library",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "{e} not in {found:#?}"
        );
    }
}

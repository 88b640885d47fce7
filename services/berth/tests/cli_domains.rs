//! End to end: `berth domain add|list|rm` against a real `berth up` (its
//! own nats-server with a user per role, so a permission the custom domain
//! subjects lack would show as a refusal when it stops). Asserts on what
//! the commands print.

use crate::cli_support::Setup;

#[tokio::test]
async fn domain_commands_add_list_and_remove() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let image = setup.push("app/web", "v1").await;
    cli.ok(&[
        "service",
        "create",
        "site",
        "--type",
        "web_service",
        "--image",
        &image,
    ])
    .await;
    cli.ok(&[
        "service",
        "create",
        "work",
        "--type",
        "background_worker",
        "--image",
        &image,
    ])
    .await;

    let added = cli.ok(&["domain", "add", "site", "WWW.Example.test"]).await;
    assert!(
        added.contains("custom domain www.example.test added"),
        "{added}"
    );
    let json = cli.json(&["domain", "add", "site", "example.test"]).await;
    assert_eq!(json[0]["name"], "example.test", "{json}");
    assert_eq!(json[0]["domainType"], "apex", "{json}");

    let table = cli.ok(&["domain", "list", "site"]).await;
    assert!(table.starts_with("NAME "), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("www.example.test"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("subdomain") && row.contains("unverified") && row.contains("pending"),
        "{table}"
    );
    let listed = cli.json(&["domain", "list", "site"]).await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["example.test", "www.example.test"], "{listed}");

    // Refusals say why and exit 1: taken, not a web service, not a host name.
    for (args, why) in [
        (["domain", "add", "site", "www.example.test"], "already"),
        (
            ["domain", "add", "work", "w.example.test"],
            "web services only",
        ),
        (["domain", "add", "site", "*.example.test"], "wildcard"),
    ] {
        let out = cli.run(&args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(why) || out.stdout.contains(why),
            "{args:?}: {out:?}"
        );
    }

    let removed = cli.ok(&["domain", "rm", "site", "www.example.test"]).await;
    assert!(removed.contains("removed"), "{removed}");
    let listed = cli.json(&["domain", "list", "site"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let gone = cli.run(&["domain", "rm", "site", "www.example.test"]).await;
    assert_eq!(gone.code, 1, "{gone:?}");
    // Given back: another service may have it now.
    cli.ok(&[
        "service",
        "create",
        "other",
        "--type",
        "web_service",
        "--image",
        &image,
    ])
    .await;
    cli.ok(&["domain", "add", "other", "www.example.test"])
        .await;

    setup.stop().await;
}

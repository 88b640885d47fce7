//! End to end: `berth domain add|list|rm` against a real `berth up` (its
//! own nats-server with a user per role, so a permission the custom domain
//! subjects lack would show as a refusal when it stops, and a real runc
//! instance behind its router). Asserts on what the commands print and on
//! what the router answers at the domain.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use std::time::Duration;

use crate::cli_support::{eventually, Setup};

/// Serves `/healthz` (`ok`) on `$PORT` from a file it writes first.
const SERVER: &str =
    "sh -c 'echo ok > /tmp/healthz; exec /bin/busybox httpd -f -p ${PORT:-10000} -h /tmp'";

/// `GET /healthz` at the router with `Host: host`: the status line and body.
async fn get_at(router: &str, host: &str) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(router).await.unwrap();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The router's `host:port`, from the web service's URL the API shows.
fn router_of(service: &Value) -> String {
    let url = service["serviceDetails"]["url"].as_str().unwrap();
    let port = url.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
    format!("127.0.0.1:{port}")
}

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
        "--command",
        SERVER,
        "--health-check-path",
        "/healthz",
        "--wait",
    ])
    .await;
    let router = router_of(&cli.json(&["service", "show", "site"]).await);
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

    // The router serves the live instance at the domain, in any case
    // (once it has applied the additions).
    eventually(
        "the router to route the domain",
        Duration::from_secs(10),
        || async { get_at(&router, "example.test").await.0.contains(" 200 ") },
    )
    .await;
    for host in ["www.example.test", "WWW.EXAMPLE.TEST:80", "example.test"] {
        let (status, body) = get_at(&router, host).await;
        assert!(status.contains(" 200 "), "{host}: {status}");
        assert_eq!(body.trim(), "ok", "{host}");
    }

    // Maintenance: the router answers with its page, then serves again;
    // the page address is kept across off and on.
    let on = cli
        .ok(&[
            "service",
            "maintenance",
            "site",
            "--on",
            "--page",
            "https://status.example.test/",
        ])
        .await;
    assert!(
        on.contains("sends browsers to https://status.example.test/"),
        "{on}"
    );
    eventually("the maintenance page", Duration::from_secs(10), || async {
        get_at(&router, "example.test").await.0.contains(" 503 ")
    })
    .await;
    let (_, page) = get_at(&router, "example.test").await;
    assert!(page.contains("site is down for maintenance"), "{page}");
    assert!(page.contains("url=https://status.example.test/"), "{page}");
    let shown = cli.ok(&["service", "show", "site"]).await;
    assert!(
        shown.contains("ON: requests get a 503 page sending browsers to"),
        "{shown}"
    );
    let refused = cli.run(&["service", "maintenance", "work", "--on"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("only web services"), "{refused:?}");
    cli.ok(&["service", "maintenance", "site", "--off"]).await;
    eventually("served again", Duration::from_secs(10), || async {
        get_at(&router, "example.test").await.0.contains(" 200 ")
    })
    .await;
    let kept = cli.json(&["service", "show", "site"]).await;
    assert_eq!(
        kept["serviceDetails"]["maintenanceMode"],
        serde_json::json!({"enabled": false, "uri": "https://status.example.test/"}),
        "{kept}"
    );

    // An IP allow list: this machine's address is not on it, then is.
    let listed = cli
        .ok(&["service", "allow", "site", "--add", "203.0.113.0/24=office"])
        .await;
    assert_eq!(listed.trim(), "203.0.113.0/24 (office)", "{listed}");
    eventually(
        "a 403 for a client not on the list",
        Duration::from_secs(10),
        || async { get_at(&router, "example.test").await.0.contains(" 403 ") },
    )
    .await;
    let listed = cli
        .ok(&["service", "allow", "site", "--add", "127.0.0.1"])
        .await;
    assert!(listed.contains("127.0.0.1/32"), "{listed}");
    eventually(
        "served once on the list",
        Duration::from_secs(10),
        || async { get_at(&router, "example.test").await.0.contains(" 200 ") },
    )
    .await;
    let unknown = cli
        .run(&["service", "allow", "site", "--remove", "192.0.2.0/24"])
        .await;
    assert_eq!(unknown.code, 64, "{unknown:?}");
    let bad = cli
        .run(&["service", "allow", "site", "--add", "10.0.0.5/8"])
        .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("did you mean 10.0.0.0/8"), "{bad:?}");
    let everyone = cli.ok(&["service", "allow", "site", "--everyone"]).await;
    assert_eq!(
        everyone.trim(),
        "every client (no IP allow list)",
        "{everyone}"
    );

    let removed = cli.ok(&["domain", "rm", "site", "www.example.test"]).await;
    eventually(
        "the removed domain to stop routing",
        Duration::from_secs(5),
        || async {
            get_at(&router, "www.example.test")
                .await
                .0
                .contains(" 404 ")
        },
    )
    .await;
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

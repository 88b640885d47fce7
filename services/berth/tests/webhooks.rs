//! `berth webhook` against a real `berth up`: a webhook created from the
//! CLI for deploy events gets a service's deploy, signed with the secret
//! `create` printed (verified by PyPI's standardwebhooks); `events` lists
//! the post with the receiver's 200; `list` shows no secret; turned off,
//! the next deploy is not posted; deleted, it is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli_support::{eventually, Setup};

const SLEEP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'";

/// An HTTP receiver on 127.0.0.1: every post's headers and body, answered
/// 200 "ok".
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let posts = Arc::new(Mutex::new(Vec::new()));
    let kept = posts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut headers = serde_json::Map::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    if k == "content-length" {
                        len = v.parse().unwrap_or(0);
                    }
                    headers.insert(k, json!(v));
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            kept.lock().unwrap().push(json!({
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            }));
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, posts)
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
rec = json.load(sys.stdin)
Webhook(sys.argv[1]).verify(rec["body"], rec["headers"])
print("verified")
"#;

fn verified(secret: &str, post: &Value) -> bool {
    let mut child = std::process::Command::new("python3")
        .args(["-c", VERIFY, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(post.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "verified"
}

#[tokio::test]
async fn a_webhook_made_from_the_cli_gets_deploys_signed_until_turned_off() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let (url, posts) = receiver();
    let made = cli
        .json(&[
            "webhook",
            "create",
            "deploys",
            "--url",
            &url,
            "--event",
            "deploy_ended",
        ])
        .await;
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{made}");
    assert_eq!(made["eventFilter"], json!(["deploy_ended"]), "{made}");
    let listed = cli.ok(&["webhook", "list"]).await;
    assert!(
        listed.contains("deploys") && listed.contains("deploy_ended"),
        "{listed}"
    );
    assert!(
        !listed.contains(&secret[6..]),
        "list shows no secret: {listed}"
    );
    let shown = cli.ok(&["webhook", "show", "deploys"]).await;
    assert!(shown.contains(&secret), "{shown}");

    let image = setup.push("app/hooked", "v1").await;
    let created = cli
        .run(&[
            "service",
            "create",
            "hooked",
            "--type",
            "background_worker",
            "--image",
            &image,
            "--command",
            SLEEP,
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    eventually(
        "the deploy to be posted",
        Duration::from_secs(30),
        || async { !posts.lock().unwrap().is_empty() },
    )
    .await;
    let post = posts.lock().unwrap()[0].clone();
    assert!(verified(&secret, &post), "the post does not verify: {post}");
    let body: Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            &body["type"],
            &body["data"]["serviceName"],
            &body["data"]["status"]
        ),
        (
            &json!("deploy_ended"),
            &json!("hooked"),
            &json!("succeeded")
        ),
        "{body}"
    );
    eventually("the send to be listed", Duration::from_secs(20), || async {
        cli.ok(&["webhook", "events", "deploys"])
            .await
            .contains("200")
    })
    .await;
    let sends = cli.json(&["webhook", "events", "deploys"]).await;
    assert_eq!(sends[0]["eventType"], "deploy_ended", "{sends}");
    assert_eq!(sends[0]["responseBody"], "ok", "{sends}");

    // Off: the next deploy is not posted.
    cli.ok(&["webhook", "update", "deploys", "--off"]).await;
    let again = cli.run(&["service", "deploy", "hooked"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(posts.lock().unwrap().len(), 1, "posted while off");

    cli.ok(&["webhook", "delete", "deploys"]).await;
    let gone = cli.run(&["webhook", "show", "deploys"]).await;
    assert_ne!(gone.code, 0, "{gone:?}");
    setup.stop().await;
}

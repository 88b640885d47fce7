//! End to end: `berth exec` runs a command in a running instance of a
//! service through the API and the instance's node, as the instance's own
//! process runs, against a real `berth up` (which starts its own
//! nats-server with a user per role: the API and the node are allowed
//! exactly what this takes, or `Setup::stop` fails).

use serde_json::Value;

use crate::cli_support::Setup;

const FORM: &str = "application/x-www-form-urlencoded";

/// `fields` as a posted form's body.
fn form(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `_csrf` value of the first form in `html`.
fn csrf(html: &str) -> String {
    let mark = "name=\"_csrf\" value=\"";
    let at = html.find(mark).expect("a form") + mark.len();
    html[at..][..html[at..].find('"').unwrap()].to_owned()
}

/// Signs in to the dashboard with the installation's API key, runs `line`
/// from service `name`'s shell form; the page that shows its output.
async fn dashboard_shell(setup: &Setup, name: &str, line: &str) -> String {
    let creds: Value =
        serde_json::from_slice(&std::fs::read(setup.cli.data.join("credentials.json")).unwrap())
            .unwrap();
    let key = creds["apiKey"].as_str().unwrap();
    let id = setup.cli.json(&["service", "show", name]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = &setup.api_url;
    let mut cookies: Vec<String> = Vec::new();
    let keep = |resp: &reqwest::Response, cookies: &mut Vec<String>| {
        for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            cookies.retain(|k| !k.starts_with(&format!("{name}=")));
            cookies.push(pair);
        }
    };
    let login = http.get(format!("{api}/login")).send().await.unwrap();
    keep(&login, &mut cookies);
    let token = csrf(&login.text().await.unwrap());
    let signed = http
        .post(format!("{api}/login"))
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .body(form(&[("_csrf", &token), ("key", key), ("next", "/")]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 303);
    keep(&signed, &mut cookies);
    let page = http
        .get(format!("{api}/services/{id}"))
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ran = http
        .post(format!("{api}/services/{id}/exec"))
        .header(reqwest::header::COOKIE, cookies.join("; "))
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .body(form(&[("_csrf", &csrf(&page)), ("command", line)]))
        .send()
        .await
        .unwrap();
    assert_eq!(ran.status().as_u16(), 200);
    ran.text().await.unwrap()
}

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do sleep 1; done'";

#[tokio::test]
async fn cli_runs_a_command_in_a_running_instance() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let v1 = setup.push("app/x", "v1").await;
    let tmp = tempfile::tempdir().unwrap();
    let env_file = tmp.path().join("env");
    std::fs::write(&env_file, "GREETING=hello there\n").unwrap();
    let created = cli
        .run(&[
            "service",
            "create",
            "x",
            "--type",
            "background_worker",
            "--image",
            &v1,
            "--command",
            LOOP,
            "--env-file",
            env_file.to_str().unwrap(),
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");

    // Its environment, its image's files, its user.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--",
            "sh",
            "-c",
            "echo $GREETING; cat /etc/marker; echo; busybox id -u",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello there\nv1\n0\n", "{out:?}");
    // Its exit code and its stderr, on the CLI's own.
    let out = cli
        .run(&["exec", "x", "--", "sh", "-c", "echo oops >&2; exit 5"])
        .await;
    assert_eq!((out.code, out.stderr.as_str()), (5, "oops\n"), "{out:?}");
    // Standard input.
    let out = cli
        .run_with(
            &["exec", "x", "-i", "--", "busybox", "tr", "a-z", "A-Z"],
            &[],
            Some("piped in\n"),
        )
        .await;
    assert_eq!(out.stdout, "PIPED IN\n", "{out:?}");
    // JSON: the instance it ran in is one of the service's.
    let ran: Value =
        serde_json::from_str(&cli.ok(&["exec", "x", "--json", "--", "true"]).await).unwrap();
    let instance = ran["instanceId"].as_str().unwrap().to_owned();
    let instances = cli.json(&["service", "instances", "x"]).await;
    let ids: Vec<&str> = instances
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert!(ids.contains(&instance.as_str()), "{ran} {instances}");
    assert_eq!(ran["exitCode"], 0, "{ran}");
    // Named, then past its timeout: killed, exit 124 as timeout(1) says.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--instance",
            &instance,
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ])
        .await;
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("killed after 1s"), "{out:?}");

    // The dashboard's shell: the same, through the service's page.
    let shown = dashboard_shell(&setup, "x", "echo from the page; echo '<b>' >&2").await;
    assert!(shown.contains("from the page"), "{shown}");
    assert!(shown.contains("&lt;b&gt;"), "output is escaped: {shown}");
    assert!(shown.contains("exit code 0"), "{shown}");

    // Refused: an instance the service does not have, a program the
    // image does not have, a bad timeout — each with the API's reason.
    let out = cli
        .run(&[
            "exec",
            "x",
            "--instance",
            "ins-aaaaaaaaaaaaaaaaaaaa",
            "--",
            "true",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("instance not found"), "{out:?}");
    let out = cli.run(&["exec", "x", "--", "no-such-program"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no-such-program"), "{out:?}");
    let out = cli
        .run(&["exec", "x", "--timeout", "0", "--", "true"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("timeout"), "{out:?}");
    let out = cli.run(&["exec", "x"]).await;
    assert_eq!(out.code, 64, "no command: {out:?}");

    // Suspended: no running instance to run in.
    cli.ok(&["service", "suspend", "x"]).await;
    // (While its instance stops, it may still be listed: "not running".)
    let mut refused = Value::Null;
    for _ in 0..60 {
        let out = cli.run(&["exec", "x", "--", "true"]).await;
        assert!(out.code == 0 || out.stderr.contains("running"), "{out:?}");
        if out.stderr.contains("no running instance") {
            refused = Value::String(out.stderr);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        refused
            .as_str()
            .is_some_and(|e| e.contains("no running instance")),
        "{refused}"
    );
    setup.stop().await;
}

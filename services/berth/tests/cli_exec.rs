//! End to end: `berth exec` runs a command in a running instance of a
//! service through the API and the instance's node, as the instance's own
//! process runs, against a real `berth up` (which starts its own
//! nats-server with a user per role: the API and the node are allowed
//! exactly what this takes, or `Setup::stop` fails).

use std::time::Duration;

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
    let key = &api_key(setup);
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

/// Creates background worker `name` of `image` running [`LOOP`], live;
/// its id.
async fn looping_worker(cli: &crate::cli_support::Cli, name: &str, image: &str) -> String {
    let created = cli
        .run(&[
            "service",
            "create",
            name,
            "--type",
            "background_worker",
            "--image",
            image,
            "--command",
            LOOP,
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    cli.json(&["service", "show", name]).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `berth exec <target…> -- busybox ps`, tried every 0.5 s for up to a
/// minute while it is refused with `refusal` (the target not running
/// yet), until it runs.
async fn ps_once_running(
    cli: &crate::cli_support::Cli,
    target: &[&str],
    refusal: &str,
) -> crate::cli_support::Out {
    let args: Vec<&str> = ["exec"]
        .iter()
        .chain(target)
        .chain(&["--", "busybox", "ps"])
        .copied()
        .collect();
    for _ in 0..120 {
        let out = cli.run(&args).await;
        if out.code == 0 {
            return out;
        }
        assert!(out.stderr.contains(refusal), "{out:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{target:?} never ran");
}

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

    // How each command ended is on the service's events too.
    let ended = ended_events(&cli, "x").await;
    assert!(
        ended
            .iter()
            .any(|d| d["program"] == "sh" && d["exitCode"] == 5 && d["terminal"] == false),
        "{ended:?}"
    );
    assert!(
        ended.iter().any(|d| d["program"] == "sleep"
            && d["timedOut"] == true
            && d.get("exitCode").is_none()),
        "{ended:?}"
    );
    assert!(ended.iter().all(|d| d["durationMs"].is_u64()), "{ended:?}");

    // A running one-off job: a command and a terminal in its container,
    // named by the job's id; ended, it is refused with why.
    let job = cli.json(&["job", "run", "x", "sh -c 'sleep 300'"]).await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    crate::cli_support::eventually("the job to run", Duration::from_secs(60), || async {
        cli.json(&["job", "show", "x", &job_id]).await["status"] == "running"
    })
    .await;
    // (Recorded running as its container starts: a moment later it runs.)
    let ps = ps_once_running(&cli, &["x", "--instance", &job_id], "not running now").await;
    assert!(
        ps.stdout.contains("sleep 300"),
        "the job's own container: {ps:?}"
    );
    let out = cli
        .run_with(
            &["shell", "x", "--instance", &job_id],
            &[],
            Some("echo $((4*4))J; exit 2\n"),
        )
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stdout.contains("16J"), "{out:?}");
    cli.ok(&["job", "cancel", "x", &job_id]).await;
    let out = cli
        .run(&["exec", "x", "--instance", &job_id, "--", "true"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("is not running (it is canceled)"),
        "{out:?}"
    );

    // A cron job: its active run, by default.
    let created = cli
        .run(&[
            "service",
            "create",
            "nightly",
            "--type",
            "cron_job",
            "--image",
            &v1,
            "--schedule",
            "0 3 1 1 *",
            "--command",
            "sh -c 'sleep 301'",
            "--wait",
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    cli.ok(&["cron", "run", "nightly"]).await;
    // Refused until a node has the run ("not running yet") and its
    // container runs ("not running now").
    let ps = ps_once_running(&cli, &["nightly"], "not running").await;
    assert!(
        ps.stdout.contains("sleep 301"),
        "the run's own container: {ps:?}"
    );
    cli.ok(&["cron", "cancel", "nightly"]).await;
    let requested = cli
        .json(&[
            "service",
            "events",
            "nightly",
            "--type",
            "instance_command_requested",
        ])
        .await;
    assert!(
        requested
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["details"]["nodeId"].is_string()),
        "{requested}"
    );

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

/// The installation's API key (from `berth up`'s credentials file).
fn api_key(setup: &Setup) -> String {
    let creds: Value =
        serde_json::from_slice(&std::fs::read(setup.cli.data.join("credentials.json")).unwrap())
            .unwrap();
    creds["apiKey"].as_str().unwrap().to_owned()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `GET /v1/services/{id}/shell?{query}` as a WebSocket client does.
async fn shell_socket(setup: &Setup, id: &str, query: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/v1/services/{id}/shell?{query}",
        setup.api_url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api_key(setup)).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// What the socket shows until a text message comes: the bytes and it.
async fn until_text(socket: &mut Socket, shown: &mut String) -> Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(20), socket.next())
            .await
            .unwrap_or_else(|_| panic!("nothing within 20 s after {shown:?}"))
            .unwrap_or_else(|| panic!("closed after {shown:?}"))
            .unwrap();
        match msg {
            Message::Binary(b) => shown.push_str(&String::from_utf8_lossy(&b)),
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            // The API's keepalive (answered by the library).
            Message::Ping(_) => {}
            other => panic!("{other:?} after {shown:?}"),
        }
    }
}

/// Waits until the terminal has shown `marker` (computed by the shell, so
/// the echo of what was typed never matches).
async fn until_shown(socket: &mut Socket, shown: &mut String, marker: &str) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while !shown.contains(marker) {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(20), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {marker:?} within 20 s: {shown:?}"))
            .unwrap()
            .unwrap();
        match msg {
            Message::Binary(b) => shown.push_str(&String::from_utf8_lossy(&b)),
            Message::Ping(_) => {}
            other => panic!("{other:?} before {marker:?}: {shown:?}"),
        }
    }
}

#[tokio::test]
async fn cli_opens_a_terminal_in_a_running_instance() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let v1 = setup.push("app/t", "v1").await;
    let id = looping_worker(&cli, "t", &v1).await;

    // `berth shell`, typed into from a pipe: a terminal of the instance's
    // own, the program's exit code as the CLI's.
    let out = cli
        .run_with(
            &["shell", "t"],
            &[],
            Some(
                "tty; cat /etc/marker; echo; echo $((6*7))X \"[${BASH_VERSION:-none}]\"; exit 3\n",
            ),
        )
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    // No bash in the image: sh.
    assert!(out.stdout.contains("42X [none]"), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/0"), "{out:?}");
    assert!(out.stdout.contains("v1"), "{out:?}");
    assert!(out.stdout.contains("42X"), "{out:?}");
    // A command of its own; without a terminal here, 80×24 and xterm.
    let out = cli
        .run(&["shell", "t", "--", "sh", "-c", "stty size; echo T=$TERM"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("24 80"), "{out:?}");
    assert!(out.stdout.contains("T=xterm"), "{out:?}");
    // On a terminal (`script` gives the CLI one): raw mode (what is typed
    // goes as typed: no local echo, a carriage return for Enter), and the
    // CLI exits with the program while its own input stays open.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = crate::cli_support::berth(&cli.data, &cli.nats_url, &cli.prefix);
        let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = c
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let mut on_terminal = tokio::process::Command::new("script");
        on_terminal
            .args([
                "-qfec",
                &format!("{} shell t", crate::cli_support::BERTH),
                "/dev/null",
            ])
            .env_clear()
            .envs(envs)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        drop(c);
        let mut child = on_terminal.spawn().unwrap();
        let mut keys = child.stdin.take().unwrap();
        let mut shown = child.stdout.take().unwrap();
        // Typed once the instance's shell prompts: the CLI is in raw
        // mode by then.
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&all).contains("# ") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), shown.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no prompt: {:?}", String::from_utf8_lossy(&all)))
                .unwrap();
            assert!(
                n > 0,
                "ended before a prompt: {:?}",
                String::from_utf8_lossy(&all)
            );
            all.extend_from_slice(&buf[..n]);
        }
        keys.write_all(b"echo $((7*7))Z; exit 9\r").await.unwrap();
        keys.flush().await.unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
            .await
            .expect("the CLI exits with the program, its input still open")
            .unwrap();
        shown.read_to_end(&mut all).await.unwrap();
        let shown = String::from_utf8_lossy(&all).into_owned();
        assert_eq!(status.code(), Some(9), "{shown:?}");
        assert!(shown.contains("49Z"), "{shown:?}");
        assert_eq!(
            shown.matches("exit 9").count(),
            1,
            "echoed by the instance's terminal only, not by this one: {shown:?}"
        );
        drop(keys);
    }
    // Much output (5 MB: hundreds of messages, past the node's window of
    // 64, so it waits for acknowledgements): every line arrives, once, in
    // order.
    let out = cli
        .run(&[
            "shell",
            "t",
            "--",
            "sh",
            "-c",
            "busybox seq 1 400000 | busybox sed 's/$/ abcdef/'",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 400_000, "{}", out.stderr);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("{} abcdef", i + 1)),
        "lines lost, repeated or out of order"
    );
    // Refused: a program the image lacks (after the terminal opened: the
    // session ends with runc's reason), an instance it does not have.
    let out = cli.run(&["shell", "t", "--", "no-such-program"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no-such-program"), "{out:?}");
    let out = cli
        .run(&["shell", "t", "--instance", "ins-aaaaaaaaaaaaaaaaaaaa"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("instance not found"), "{out:?}");

    // The WebSocket itself: started, typed bytes, a resize, a text
    // message it does not understand, the exit code last.
    let mut socket = shell_socket(&setup, &id, "command=sh").await;
    let mut shown = String::new();
    let started = until_text(&mut socket, &mut shown).await;
    assert_eq!(started["type"], "started", "{started}");
    assert!(started["instanceId"].as_str().unwrap().starts_with("ins-"));
    socket
        .send(Message::Binary(
            b"stty size; echo $((2*21))Q\n".to_vec().into(),
        ))
        .await
        .unwrap();
    until_shown(&mut socket, &mut shown, "42Q").await;
    assert!(shown.contains("24 80"), "{shown:?}");
    socket
        .send(Message::Text(
            r#"{"type":"resize","cols":100,"rows":30}"#.into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Text(r#"{"type":"dance"}"#.into()))
        .await
        .unwrap();
    let said = until_text(&mut socket, &mut shown).await;
    assert_eq!(said["type"], "refused", "{said}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    socket
        .send(Message::Binary(b"stty size; exit 4\n".to_vec().into()))
        .await
        .unwrap();
    let said = until_text(&mut socket, &mut shown).await;
    assert_eq!(said, serde_json::json!({"type": "exited", "exitCode": 4}));
    assert!(shown.contains("30 100"), "{shown:?}");

    // Leaving hangs up on the program; one that ignores it is killed.
    let mut socket = shell_socket(
        &setup,
        &id,
        "command=sh&command=-c&command=trap%20%27%27%20HUP%3B%20echo%20%24((9*9))S%3B%20exec%20sleep%204242",
    )
    .await;
    let mut shown = String::new();
    let started = until_text(&mut socket, &mut shown).await;
    assert_eq!(started["type"], "started", "{started}");
    until_shown(&mut socket, &mut shown, "81S").await;
    socket.close(None).await.unwrap();
    drop(socket);
    let mut gone = false;
    for _ in 0..40 {
        let ps = cli.run(&["exec", "t", "--", "busybox", "ps"]).await;
        assert_eq!(ps.code, 0, "{ps:?}");
        if !ps.stdout.contains("4242") {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(gone, "the program outlived its terminal");

    // Every terminal opened is on the service's events, with its program.
    let events = cli
        .json(&[
            "service",
            "events",
            "t",
            "--type",
            "instance_command_requested",
        ])
        .await;
    let programs: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"]["details"]["program"].as_str())
        .collect();
    for p in ["sh", "no-such-program"] {
        assert!(programs.contains(&p), "{p}: {events}");
    }
    // Terminals say so; the `berth exec … ps` above does not.
    assert!(
        events.as_array().unwrap().iter().all(|e| {
            let d = &e["event"]["details"];
            d["terminal"] == (d["program"] != "busybox")
        }),
        "{events}"
    );
    // And how each ended: exit codes, runc's reason, the one hung up on
    // and killed when its socket closed.
    // (The last is recorded once the node has said so, after its grace.)
    let mut ended = Vec::new();
    for _ in 0..40 {
        ended = ended_events(&cli, "t").await;
        if ended.iter().any(|d| d["exitCode"] == 137) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for want in [
        serde_json::json!({"program": "sh", "exitCode": 3}),
        serde_json::json!({"program": "sh", "exitCode": 4}),
        serde_json::json!({"program": "sh", "exitCode": 137}),
    ] {
        assert!(
            ended.iter().any(|d| d["program"] == want["program"]
                && d["exitCode"] == want["exitCode"]
                && d["terminal"] == true),
            "{want} in {ended:?}"
        );
    }
    assert!(
        ended.iter().any(|d| d["program"] == "no-such-program"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no-such-program"))),
        "{ended:?}"
    );
    setup.stop().await;
}

/// The details of service `name`'s `instance_command_ended` events.
async fn ended_events(cli: &crate::cli_support::Cli, name: &str) -> Vec<Value> {
    let events = cli
        .json(&[
            "service",
            "events",
            name,
            "--type",
            "instance_command_ended",
            "--limit",
            "100",
        ])
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["details"].clone())
        .collect()
}

/// The busybox test image with this machine's bash and the libraries it
/// loads over it, as an image built on a distribution has them.
fn bash_image() -> berth_tests::image::Image {
    use berth_tests::layers::{self, Comp, Entry};
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut base = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", &bb).mode(0o755),
        Entry::dir("tmp").mode(0o1777),
    ];
    for a in ["sh", "sleep", "ps"] {
        base.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    let bash = layers::host_program("/bin/bash").unwrap();
    layers::image(vec![
        layers::layer(&base, Comp::Gzip).unwrap(),
        layers::layer(&bash, Comp::Gzip).unwrap(),
    ])
    .unwrap()
}

#[tokio::test]
async fn terminals_left_behind_are_closed_bash_is_the_default_and_a_dead_node_hangs_up() {
    use futures::SinkExt;
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;
    let mut setup = Setup::start_env(&[
        ("BERTH_API_TERMINAL_IDLE_SECS", "8"),
        ("BERTH_API_TERMINAL_MAX_SECS", "14"),
        ("BERTH_API_TERMINAL_PING_SECS", "1"),
    ])
    .await;
    let cli = setup.cli.clone();
    setup
        .registry
        .push_image("app/b", "v1", &bash_image())
        .await
        .unwrap();
    let image = format!("{}/app/b:v1", setup.registry.host);
    let id = looping_worker(&cli, "b", &image).await;

    // bash where the image has it (the busybox-only image gets sh: the
    // other terminal test's `tty` session).
    let host = std::process::Command::new("/bin/bash")
        .args(["-c", "echo ${BASH_VERSINFO[0]}"])
        .output()
        .unwrap();
    let major = String::from_utf8_lossy(&host.stdout).trim().to_owned();
    let out = cli
        .run_with(
            &["shell", "b"],
            &[],
            Some("echo \"[${BASH_VERSION:-none}]\"; exit 5\n"),
        )
        .await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout.contains(&format!("[{major}.")), "{out:?}");

    // Nothing typed, nothing shown: closed after the idle limit.
    let t0 = Instant::now();
    let mut socket = shell_socket(&setup, &id, "command=sleep&command=601").await;
    let mut shown = String::new();
    let started = until_text(&mut socket, &mut shown).await;
    assert_eq!(started["type"], "started", "{started}");
    let said = until_text(&mut socket, &mut shown).await;
    assert_eq!(said["type"], "ended", "{said}");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was typed or shown for 8s")),
        "{said}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(8), "{:?}", t0.elapsed());

    // Output keeps a terminal open, up to the longest it may stay.
    let t0 = Instant::now();
    let mut socket = shell_socket(
        &setup,
        &id,
        "command=sh&command=-c&command=while%20true%3B%20do%20echo%20tick%3B%20sleep%201%3B%20done",
    )
    .await;
    let mut shown = String::new();
    let started = until_text(&mut socket, &mut shown).await;
    assert_eq!(started["type"], "started", "{started}");
    let said = tokio::time::timeout(Duration::from_secs(60), until_text(&mut socket, &mut shown))
        .await
        .expect("open past its longest");
    assert_eq!(said["type"], "ended", "{said}");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.contains("the longest a terminal may stay open")),
        "{said}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(14),
        "{:?}",
        t0.elapsed()
    );
    assert!(shown.matches("tick").count() >= 5, "{shown:?}");

    // A client that stops reading and answering is taken for gone (after
    // three pings, 3 s: before the idle limit).
    let mut socket = shell_socket(
        &setup,
        &id,
        "command=sh&command=-c&command=echo%20%24((5*5))G%3B%20exec%20sleep%20602",
    )
    .await;
    let mut shown = String::new();
    let started = until_text(&mut socket, &mut shown).await;
    assert_eq!(started["type"], "started", "{started}");
    until_shown(&mut socket, &mut shown, "25G").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // By now the API said why and closed: this end reads that, or, when
    // the library first sends the answers it owes, finds the connection
    // gone (the reason is checked on the events below either way).
    use futures::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("the API kept the session");
        match msg {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(Message::Text(t))) => {
                assert!(t.contains("client answered nothing"), "{t}");
                break;
            }
            Some(Err(_)) | None => break,
            Some(Ok(other)) => panic!("{other:?}"),
        }
    }
    let _ = socket.send(Message::Close(None)).await;

    // Their programs are gone, and why each ended is on the events.
    let mut left = String::new();
    for _ in 0..40 {
        let ps = cli.run(&["exec", "b", "--", "busybox", "ps"]).await;
        assert_eq!(ps.code, 0, "{ps:?}");
        left = ps.stdout;
        if !left.contains("sleep 60") && !left.contains("echo tick") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!left.contains("sleep 60"), "{left}");
    assert!(!left.contains("echo tick"), "{left}");
    let ended = ended_events(&cli, "b").await;
    for reason in [
        "nothing was typed or shown for 8s",
        "the longest a terminal may stay open",
        "client answered nothing",
    ] {
        assert!(
            ended
                .iter()
                .any(|d| d["reason"].as_str().is_some_and(|r| r.contains(reason))),
            "{reason} in {ended:?}"
        );
    }
    // A node that dies (here the whole `berth up`) hangs up on its
    // terminals' programs as it goes: its end of each terminal closes,
    // the kernel hangs up on runc, which passes it on.
    let mut socket = shell_socket(
        &setup,
        &id,
        "command=sh&command=-c&command=echo%20%24((7*7))K%3B%20exec%20sleep%204848",
    )
    .await;
    let mut shown = String::new();
    until_text(&mut socket, &mut shown).await;
    until_shown(&mut socket, &mut shown, "49K").await;
    let sleeping = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x004848\x00")
        })
    };
    assert!(sleeping(), "the program runs");
    let up = setup.cleanup.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    while sleeping() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the program outlived its node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(up);
}

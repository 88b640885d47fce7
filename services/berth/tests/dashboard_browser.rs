//! The dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, `scripts/install-deps`) against a real `berth
//! up` (nats-server, docker-registry, runc instances; root, as `Setup`
//! requires). A wrong key is refused; signed in, a service is created from
//! the form and its deploy is watched going live without the page
//! reloading; another image is deployed and rolled back from; it is scaled;
//! its logs page, followed, gets new lines without reloading;
//! another owner's service is a 404 page; the keyboard reaches the content
//! first. Each page's screenshot is written to
//! `target/dashboard-screenshots/` for a reviewer, dark mode included.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_tests::free_port;
use berth_tests::registry::RegistryAuth;
use berth_tests::NatsVersion;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::cli_support::{busybox_image, Setup};

const LOOP: &str = "sh -c 'trap \"exit 0\" TERM; while true; do echo up; sleep 1; done'";

/// A chromedriver of this test, and a session of headless Chromium on it.
struct Browser {
    client: Client,
    _driver: Child,
    shots: PathBuf,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self._driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `target/dashboard-screenshots`, beside the test binary's `debug/`.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/integration-… → target
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless session; `dark` asks pages for
    /// their dark colours.
    async fn start(base: &str, dark: bool) -> Self {
        let port = free_port();
        // A process group of its own: the Chromium it starts is in it too,
        // so a test that fails before closing the session leaves nothing.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (scripts/install-deps installs chromium-driver)");
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver not up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1100",
            "--disable-crash-reporter",
        ];
        if dark {
            args.push("--force-dark-mode");
            args.push("--blink-settings=preferredColorScheme=0");
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Browser {
            client,
            _driver: driver,
            shots: screenshot_dir(),
            base: base.to_owned(),
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// A screenshot of the whole page: the window is made as tall as the
    /// page for it, then put back.
    async fn shot(&self, name: &str) {
        let size = self
            .client
            .execute(
                "return [document.documentElement.scrollHeight, \
                 window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .unwrap();
        let page = size[0].as_u64().unwrap_or(1000).clamp(600, 6000);
        let chrome = size[1].as_u64().unwrap_or(0);
        self.client
            .set_window_size(1280, (page + chrome) as u32)
            .await
            .unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
        self.client.set_window_size(1280, 1100).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits until the text of `css` holds all of `want`; returns it.
    /// What the dashboard's terminal shows (its whole buffer, a line
    /// each), once it shows `marker` or `within` passed.
    async fn terminal_shows(&self, marker: &str, within: Duration) -> String {
        let screen = "var b = window.berthTerminal.term.buffer.active, s = ''; \
                      for (var i = 0; i < b.length; i++) { s += b.getLine(i).translateToString(true) + '\\n'; } \
                      return s;";
        let deadline = std::time::Instant::now() + within;
        loop {
            let shown = self
                .client
                .execute(screen, vec![])
                .await
                .unwrap()
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if shown.contains(marker) || std::time::Instant::now() > deadline {
                return shown;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_text(&self, css: &str, want: &[&str], within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.text(css).await;
            if want.iter().all(|w| text.contains(w)) {
                return text;
            }
            if t0.elapsed() > within {
                self.shot("zz-timed-out").await;
                panic!(
                    "{css} never held {want:?} within {within:?}; it reads: {text}\n{}",
                    self.client.source().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Clicks `css`, finding it again when a live update replaced it
    /// between the find and the click (the page re-renders parts of
    /// itself as events arrive).
    async fn click(&self, css: &str) {
        for attempt in 0.. {
            let clicked = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
                .click()
                .await;
            match clicked {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && attempt < 20 =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    /// When this page was loaded: unchanged while updates arrive live.
    async fn loaded_at(&self) -> Value {
        self.client
            .execute("return window.berthLoadedAt;", vec![])
            .await
            .unwrap()
    }

    /// The digest the deploy history shows for `deploy`.
    async fn digest_of(&self, deploy: &str) -> Option<String> {
        self.client
            .find(Locator::Css(&format!("#deploy-{deploy} code[title]")))
            .await
            .unwrap()
            .attr("title")
            .await
            .unwrap()
    }

    /// The deploy id the message after a form names.
    /// Clicks `css`, a button whose form starts a deploy, and returns the
    /// deploy the page it leads to names in its flash. Waits for that new
    /// page first: the flash of the page clicked on names an earlier one.
    async fn submit_deploy(&self, css: &str) -> String {
        let before = self.loaded_at().await;
        self.click(css).await;
        let t0 = Instant::now();
        loop {
            // Asked while the next page loads, the script may fail: not
            // loaded yet.
            let now = self
                .client
                .execute("return window.berthLoadedAt;", vec![])
                .await
                .ok();
            if now.is_some_and(|n| n != before) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{css}: no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.flashed_deploy().await
    }

    async fn flashed_deploy(&self) -> String {
        let text = self
            .wait_text(".flash.ok", &["dep-"], Duration::from_secs(10))
            .await;
        let at = text.find("dep-").unwrap();
        text[at..at + 24].to_owned()
    }

    /// Ends the session (Chromium quits); the driver goes with `self`.
    async fn close(&self) {
        self.client.clone().close().await.unwrap();
    }
}

/// A second owner with a service of its own, made outside the dashboard:
/// its id.
async fn someone_elses_service(setup: &Setup, image: &str) -> String {
    let client = async_nats::connect(&setup.cli.nats_url).await.unwrap();
    let store = berth_eventlog::EventStore::open(
        client,
        berth_schemas::Subjects::new(&setup.cli.prefix).unwrap(),
        berth_eventlog::StoreConfig::default(),
    )
    .await
    .unwrap();
    let key = berth_runtime::SecretKey::load_or_create(&setup.cli.data.join("secret.key")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = berth_api::bootstrap_store(&store, &key, dir.path(), &setup.api_url)
        .await
        .unwrap();
    let creds: Value = serde_json::from_slice(&std::fs::read(&b.path).unwrap()).unwrap();
    let body = json!({
        "type": "cron_job", "name": "bobs-job",
        "image": {"imagePath": image},
        "serviceDetails": {"schedule": "0 0 1 1 *"},
    });
    let answer = berth_tests::registry::http_client()
        .unwrap()
        .post(format!("{}/v1/services", setup.api_url))
        .bearer_auth(creds["apiKey"].as_str().unwrap())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let created: Value = serde_json::from_str(&answer).unwrap();
    created["service"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned()
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    let mut setup = Setup::start_with(NatsVersion::Modern, RegistryAuth::None).await;
    let reg = &setup.registry;
    let v1_digest = reg
        .push_image("app/web", "v1", &busybox_image("v1"))
        .await
        .unwrap();
    reg.push_image("app/web", "v2", &busybox_image("v2"))
        .await
        .unwrap();
    let (v1, v2) = (
        format!("{}/app/web:v1", reg.host),
        format!("{}/app/web:v2", reg.host),
    );
    let creds: Value =
        serde_json::from_slice(&std::fs::read(setup.cli.data.join("credentials.json")).unwrap())
            .unwrap();
    let key = creds["apiKey"].as_str().unwrap().to_owned();
    let b = Browser::start(&setup.api_url, false).await;

    // Signing in: a wrong key is refused, the right one opens a session.
    b.goto("/").await;
    assert_eq!(b.path().await, "/login");
    b.shot("01-sign-in").await;
    b.fill("#key", "berth_this-is-not-a-key").await;
    b.click("form[action='/login'] button[type=submit]").await;
    b.wait_text("p.flash.error", &["not valid"], Duration::from_secs(10))
        .await;
    b.shot("02-wrong-key").await;
    b.fill("#key", &key).await;
    b.click("form[action='/login'] button[type=submit]").await;
    b.wait_text("h1", &["Services"], Duration::from_secs(10))
        .await;
    b.shot("03-services-empty").await;

    // The keyboard reaches the skip link first, then the content.
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = b.client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("class").await.unwrap().as_deref(),
        Some("skip")
    );

    // A service from the form; its first deploy goes live on this page
    // without a reload.
    b.click("a[href='/services/new']").await;
    b.wait_text("h1", &["New service"], Duration::from_secs(10))
        .await;
    let ty = b.client.find(Locator::Css("#type")).await.unwrap();
    ty.select_by_value("background_worker").await.unwrap();
    b.fill("#name", "web1").await;
    b.fill("#imagePath", &v1).await;
    b.fill("#dockerCommand", LOOP).await;
    b.fill("#envVars", "GREETING=hello\nAPI_TOKEN=tok-s3cret")
        .await;
    b.shot("04-new-service").await;
    let first = b
        .submit_deploy("form[action='/services'] button[type=submit]")
        .await;
    b.wait_text("h1", &["web1"], Duration::from_secs(60)).await;
    let service_path = b.path().await;
    let loaded = b.loaded_at().await;
    b.shot("05-service-deploying").await;
    b.wait_text(
        "#deploy-outcome",
        &[&first, "live"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(b.loaded_at().await, loaded, "the page reloaded");
    assert_eq!(b.path().await, service_path);
    b.wait_text("#overview", &["1 healthy of 1"], Duration::from_secs(60))
        .await;
    b.wait_text(
        "#events",
        &["deploy ended", &first],
        Duration::from_secs(10),
    )
    .await;
    b.shot("06-service-live").await;
    let first_digest = b.digest_of(&first).await;
    assert_eq!(first_digest.as_deref(), Some(v1_digest.as_str()));

    // Another image, then back to the first deploy's digest.
    b.fill("#imageUrl", &v2).await;
    let second = b
        .submit_deploy("form.row[action$='/deploys'] button[type=submit]")
        .await;
    let loaded = b.loaded_at().await;
    b.wait_text(
        "#deploy-outcome",
        &[&second, "live"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(b.loaded_at().await, loaded, "the page reloaded");
    let rollback = b
        .submit_deploy(&format!("#deploy-{first} form[action$='/rollback'] button"))
        .await;
    b.wait_text(
        "#deploy-outcome",
        &[&rollback, "live"],
        Duration::from_secs(120),
    )
    .await;
    let row = b
        .wait_text(
            &format!("#deploy-{rollback}"),
            &["rollback"],
            Duration::from_secs(10),
        )
        .await;
    assert!(row.contains("live"), "{row}");
    let rolled_digest = b.digest_of(&rollback).await;
    assert_eq!(rolled_digest.as_deref(), Some(v1_digest.as_str()));
    b.shot("07-rolled-back").await;

    // Scale to two; the second instance shows up live.
    b.fill("#numInstances", "2").await;
    b.click("form.row[action$='/scale'] button[type=submit]")
        .await;
    b.wait_text(".flash.ok", &["Scaling to 2"], Duration::from_secs(10))
        .await;
    let loaded = b.loaded_at().await;
    b.wait_text("#overview", &["2 healthy of 2"], Duration::from_secs(90))
        .await;
    assert_eq!(b.loaded_at().await, loaded, "the page reloaded");
    b.shot("08-scaled").await;

    // A line the container printed, on its logs page (kept, escaped,
    // newest first); its metrics page draws.
    b.goto(&format!("{service_path}/logs")).await;
    b.wait_text("table.logs", &["up"], Duration::from_secs(10))
        .await;
    b.shot("08a-logs").await;
    // Followed: the instances' new lines arrive on top as they are kept,
    // the page not reloading.
    b.goto(&format!("{service_path}/logs?follow=1")).await;
    b.wait_text(
        "#logs-state",
        &["as they are kept"],
        Duration::from_secs(10),
    )
    .await;
    let loaded = b.loaded_at().await;
    let rows = "return [document.querySelectorAll('table.logs tbody tr').length, \
                (document.querySelector('table.logs tbody tr time') || {}).dateTime || ''];";
    let read = || async {
        let v = b.client.execute(rows, vec![]).await.unwrap();
        (
            v[0].as_u64().unwrap(),
            v[1].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (before, newest_before) = read().await;
    let t0 = Instant::now();
    let (mut now, mut newest) = read().await;
    while now < before + 3 && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (now, newest) = read().await;
    }
    assert!(
        now >= before + 3,
        "{before} rows, then {now}: no line arrived live"
    );
    assert!(
        newest > newest_before,
        "{newest_before} then {newest}: not on top"
    );
    assert_eq!(b.loaded_at().await, loaded, "the page reloaded");
    b.shot("08a-logs-followed").await;
    b.goto(&format!("{service_path}/metrics")).await;
    b.wait_text(
        "main",
        &["CPU per instance", "Memory per instance"],
        Duration::from_secs(10),
    )
    .await;
    b.shot("08b-metrics").await;

    // A terminal in an instance: xterm.js on the page's WebSocket; what
    // is typed reaches the instance's shell, its size is the page's, its
    // exit code is said.
    b.goto(&format!("{service_path}/terminal")).await;
    b.wait_text(
        "#terminal-status",
        &["Connected to ins-"],
        Duration::from_secs(20),
    )
    .await;
    let typing = b
        .client
        .find(Locator::Css(".xterm-helper-textarea"))
        .await
        .unwrap();
    typing
        .send_keys("stty size; echo $GREETING $((6*7))W\u{E007}")
        .await
        .unwrap();
    let shown = b.terminal_shows("hello 42W", Duration::from_secs(10)).await;
    assert!(shown.contains("hello 42W"), "{shown}");
    let size = b
        .client
        .execute(
            "var t = window.berthTerminal.term; return t.rows + ' ' + t.cols;",
            vec![],
        )
        .await
        .unwrap();
    assert!(shown.contains(size.as_str().unwrap()), "{size} in {shown}");
    b.shot("08c-terminal").await;
    // A paste larger than a message may be (300 KB of lines, as one
    // string from xterm.js): sent in pieces, every byte arrives.
    typing
        .send_keys("busybox head -n 3000 > /tmp/pasted; busybox wc -c < /tmp/pasted\u{E007}")
        .await
        .unwrap();
    b.client
        .execute(
            "var line = new Array(100).join('p') + '\\n', all = ''; \
             for (var i = 0; i < 3000; i++) { all += line; } \
             window.berthTerminal.term.paste(all); return all.length;",
            vec![],
        )
        .await
        .unwrap();
    let shown = b.terminal_shows("300000", Duration::from_secs(30)).await;
    assert!(
        // Its own line, or after echoes the terminal deferred.
        shown.lines().any(|l| l.trim_end().ends_with("300000")),
        "{}",
        &shown[shown.len().saturating_sub(2000)..]
    );
    typing.send_keys("exit 7\u{E007}").await.unwrap();
    b.wait_text(
        "#terminal-status",
        &["exit code 7"],
        Duration::from_secs(20),
    )
    .await;

    // The other pages, for the record.
    b.goto(&format!("{service_path}/settings?reveal=env")).await;
    b.wait_text("#env", &["tok-s3cret"], Duration::from_secs(10))
        .await;
    b.shot("09-settings-env-revealed").await;
    b.goto("/").await;
    b.wait_text("#services", &["web1", "live"], Duration::from_secs(10))
        .await;
    b.shot("10-services").await;
    b.goto("/credentials").await;
    b.fill("#c-name", "local").await;
    let kind = b.client.find(Locator::Css("#c-registry")).await.unwrap();
    kind.select_by_value("GENERIC").await.unwrap();
    b.fill("#c-host", &setup.registry.host).await;
    b.fill("#c-user", "ci").await;
    b.fill("#c-token", "tok-registry-s3cret").await;
    b.click("form[action='/credentials'] button[type=submit]")
        .await;
    b.wait_text(
        ".flash.ok",
        &["Credential local added"],
        Duration::from_secs(10),
    )
    .await;
    assert!(!b
        .client
        .source()
        .await
        .unwrap()
        .contains("tok-registry-s3cret"));
    b.shot("11-credentials").await;
    for (path, name) in [
        ("/notifications", "12-notifications"),
        ("/api-keys", "13-api-keys"),
    ] {
        b.goto(path).await;
        b.wait_text("main h1", &[], Duration::from_secs(10)).await;
        b.shot(name).await;
    }

    // Another owner's service is a 404 page here, as in the API.
    let theirs = someone_elses_service(&setup, &v1).await;
    b.goto(&format!("/services/{theirs}")).await;
    b.wait_text("main h1", &["Not found"], Duration::from_secs(10))
        .await;
    assert!(!b.client.source().await.unwrap().contains("bobs-job"));
    b.shot("14-another-owners-service").await;
    b.close().await;

    // Dark mode.
    let dark = Browser::start(&setup.api_url, true).await;
    dark.goto("/login").await;
    dark.fill("#key", &key).await;
    dark.click("form[action='/login'] button[type=submit]")
        .await;
    dark.wait_text("h1", &["Services"], Duration::from_secs(10))
        .await;
    dark.goto(&service_path).await;
    dark.wait_text("h1", &["web1"], Duration::from_secs(10))
        .await;
    let bg = dark
        .client
        .execute(
            "return getComputedStyle(document.body).backgroundColor;",
            vec![],
        )
        .await
        .unwrap();
    dark.shot("15-service-dark").await;
    assert_eq!(bg, json!("rgb(21, 23, 26)"), "dark colours");
    dark.close().await;

    setup.stop().await;
}

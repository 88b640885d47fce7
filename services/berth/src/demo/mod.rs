//! `berth demo`: berth's main promises shown on this machine, offline, in a
//! minute. It assembles a tiny web image (no docker, no network), starts a
//! throwaway registry, uses the `berth up` that answers or starts one,
//! and walks one web service through a create, a tag push that does not
//! deploy, a deploy by hook and a rollback by digest — each step through
//! the real CLI (`$ berth …` as a user would type it) or plain HTTP, with
//! what it proves. It removes what it started: the service, the registry,
//! and the `berth up` if it started it.

mod image;
mod registry;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::DemoArgs;
use crate::exit::Outcome;

/// What the router must answer within this long once a deploy is live (it
/// learns routes from the event log).
const ROUTE_WITHIN: Duration = Duration::from_secs(15);

pub async fn demo(args: DemoArgs) -> Outcome {
    let busybox = match std::fs::read(&args.busybox) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Unfit(format!(
                "demo: cannot read a static busybox at {} ({e}); Debian's `busybox-static` \
                 has it (./scripts/install-deps installs it), or name one with --busybox",
                args.busybox.display()
            ))
        }
    };
    let mut demo = match Demo::new() {
        Ok(d) => d,
        Err(e) => return Outcome::Failed(e),
    };
    let result = demo.run(&args, &busybox).await;
    let cleaned = demo.clean_up().await;
    match (result, cleaned) {
        (Ok(()), Ok(())) => {
            println!("\ndemo: done; everything it started is gone.");
            Outcome::Ok
        }
        (Err(e), _) => {
            if let Some(log) = &demo.up_log {
                eprintln!("demo: the last lines of berth up ({}):", log.display());
                eprintln!("{}", tail(log, 20));
            }
            Outcome::Failed(e)
        }
        (Ok(()), Err(e)) => Outcome::Failed(e.context("cleaning up")),
    }
}

struct Demo {
    http: reqwest::Client,
    berth: PathBuf,
    /// The `berth up` this demo started (stopped at the end).
    up: Option<tokio::process::Child>,
    up_log: Option<PathBuf>,
    /// Holds the up log when the demo started berth.
    scratch: tempfile::TempDir,
    registry: Option<registry::Registry>,
    /// The service the demo created (deleted at the end).
    service: Option<String>,
    step: usize,
}

const STEPS: usize = 7;

impl Demo {
    fn new() -> Result<Demo> {
        Ok(Demo {
            // Plain HTTP on loopback only, but reqwest wants TLS set up.
            http: crate::client::http::http_builder()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .timeout(Duration::from_secs(10))
                .build()?,
            berth: std::env::current_exe().context("finding the berth binary")?,
            up: None,
            up_log: None,
            scratch: tempfile::Builder::new().prefix("berth-demo").tempdir()?,
            registry: None,
            service: None,
            step: 0,
        })
    }

    fn step(&mut self, what: &str) {
        self.step += 1;
        println!("\n[{}/{STEPS}] {what}", self.step);
    }

    async fn run(&mut self, args: &DemoArgs, busybox: &[u8]) -> Result<()> {
        println!("berth demo: one web service from image to rollback, on this machine, offline.");

        self.step("Build a tiny web image, v1 and v2, here (no docker, no network)");
        let v1 = image::web(busybox, "v1")?;
        let v2 = image::web(busybox, "v2")?;
        say(&format!(
            "busybox httpd serving \"hello from <version>\"; EXPOSE {port}, a shell-form CMD \
             running `httpd -p {port}`, no $PORT: built the way most images are",
            port = image::PORT
        ));
        say(&format!("v1 {}\n      v2 {}", v1.digest, v2.digest));

        self.step("Start a throwaway registry and push v1");
        let reg = registry::Registry::start(&self.http).await?;
        let repo = "demo/web";
        let reference = format!("{}/{repo}:latest", reg.host);
        image::push(&self.http, &reg.url(), repo, "latest", &v1).await?;
        say(&format!("{reference} → v1 ({})", reg.url()));
        self.registry = Some(reg);

        self.step("Find berth");
        self.ensure_up(args).await?;

        let name = format!("demo-{}", suffix());
        self.step("Create a web service from the tag");
        let timeout = args.timeout.to_string();
        let created = self
            .berth_json(
                &["service", "create", &name, "--image", &reference, "--wait"],
                true,
            )
            .await?;
        self.service = Some(name.clone());
        let first = created.get("deploy").cloned().unwrap_or(Value::Null);
        let v1_deploy = text(&first, "/id");
        expect_live(&first, &v1.digest, "the first deploy")?;
        say(&format!(
            "deploy {v1_deploy} live, running {} — the tag was resolved once, to a digest",
            v1.digest
        ));
        let url = text(&created, "/service/serviceDetails/url");
        let web = Route::of(&url)?;
        self.expect_body(&web, "hello from v1").await?;
        proves(&format!(
            "the router reaches the image's own port {} (no $PORT needed), only once the \
             instance answered its health check",
            image::PORT
        ));
        say(&format!("$ berth service instances {name}"));
        let (code, table, err) = self.berth(&["service", "instances", &name]).await?;
        if code != 0 {
            bail!("`berth service instances` exited {code}: {}", err.trim());
        }
        for line in table.lines() {
            say(line);
        }

        self.step("Push v2 under the same tag");
        let reg = self.registry.as_ref().context("the registry is gone")?;
        image::push(&self.http, &reg.url(), repo, "latest", &v2).await?;
        say(&format!("{reference} → v2; waiting 5 s"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let svc = self.berth_json(&["service", "show", &name], false).await?;
        let live_now = text(&svc, "/liveDeployId");
        if live_now != v1_deploy {
            bail!("a tag push changed the live deploy to {live_now}");
        }
        say(&format!("live deploy still {live_now}"));
        self.expect_body(&web, "hello from v1").await?;
        proves(
            "a tag push is not a deploy: instances run exactly the recorded digest until \
             someone deploys",
        );

        self.step("Deploy by hook, as CI would");
        let hook = self.berth_json(&["hook", "url", &name], false).await?;
        let hook_url = text(&hook, "/url");
        let answer = self.http.post(&hook_url).send().await?;
        if !answer.status().is_success() {
            bail!("the deploy hook answered {}", answer.status());
        }
        let answer: Value = serde_json::from_str(&answer.text().await?)?;
        let v2_deploy = text(&answer, "/deploy/id");
        say(&format!(
            "$ curl -X POST {}\n      {answer}",
            redact(&hook_url)
        ));
        let done = self
            .berth_json(
                &[
                    "service",
                    "follow",
                    &name,
                    &v2_deploy,
                    "--timeout",
                    &timeout,
                ],
                true,
            )
            .await?;
        expect_live(&done, &v2.digest, "the hook's deploy")?;
        say(&format!("deploy {v2_deploy} live, running {}", v2.digest));
        self.expect_body(&web, "hello from v2").await?;
        proves("the hook resolves the tag again at deploy time; the cut-over waits for health");

        self.step("Roll back to v1");
        let back = self
            .berth_json(
                &[
                    "service",
                    "rollback",
                    &name,
                    &v1_deploy,
                    "--wait",
                    "--timeout",
                    &timeout,
                ],
                true,
            )
            .await?;
        expect_live(&back, &v1.digest, "the rollback")?;
        say(&format!(
            "deploy {} of {} live",
            text(&back, "/id"),
            text(&back, "/image/ref")
        ));
        self.expect_body(&web, "hello from v1").await?;
        proves(
            "a rollback deploys the earlier deploy's digest, never its tag (the tag names v2 \
             now)",
        );
        Ok(())
    }

    /// Uses the `berth up` the CLI finds, or starts one and waits until its
    /// API answers.
    async fn ensure_up(&mut self, args: &DemoArgs) -> Result<()> {
        match self.berth(&["service", "list", "--json"]).await? {
            (0, _, _) => {
                say("using the berth up that answers (its data dir's credentials.json)");
                return Ok(());
            }
            // 69: nothing answers; 64: no installation here yet (no
            // credentials.json). Anything else is worth showing.
            (69 | 64, _, _) => {}
            (code, out, err) => bail!(
                "`berth service list` exited {code}: {}{}",
                out.trim(),
                err.trim()
            ),
        }
        let log = self.scratch.path().join("berth-up.log");
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&self.berth)
            .arg("up")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting berth up")?;
        self.up = Some(child);
        self.up_log = Some(log.clone());
        say(&format!(
            "none answers: started `berth up` (its output: {})",
            log.display()
        ));
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            if let Some(up) = self.up.as_mut() {
                if let Some(status) = up.try_wait()? {
                    bail!("berth up exited ({status}) before its API answered");
                }
            }
            match self.berth(&["service", "list", "--json"]).await? {
                (0, _, _) => break,
                (69 | 64, _, _) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                (code, out, err) => {
                    bail!(
                        "berth's API did not answer ({code}): {}{}",
                        out.trim(),
                        err.trim()
                    )
                }
            }
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(unfit) = text
            .lines()
            .find(|l| l.contains("node") && l.contains("missing"))
        {
            bail!("berth up runs without a node, so nothing can deploy: {unfit}");
        }
        say("its API answers");
        Ok(())
    }

    /// Runs `berth ARGS` and returns (exit code, stdout, stderr).
    async fn berth(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let out = tokio::process::Command::new(&self.berth)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running berth {}", args.join(" ")))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs `berth ARGS --json`, printing it first as a user would type it
    /// (without `--json`) when `show`, and returns its JSON answer.
    async fn berth_json(&self, args: &[&str], show: bool) -> Result<Value> {
        let typed = args.join(" ");
        if show {
            say(&format!("$ berth {typed}"));
        }
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.berth(&all).await?;
        if code != 0 {
            bail!(
                "`berth {typed}` exited {code}: {}{}",
                out.trim(),
                err.trim()
            );
        }
        serde_json::from_str(&out)
            .with_context(|| format!("`berth {typed}` printed no JSON: {out}"))
    }

    /// GETs the service through the router until it answers `want` (routes
    /// follow the log, so the first answer can lag the deploy by a moment),
    /// and shows the request and the answer.
    async fn expect_body(&self, route: &Route, want: &str) -> Result<()> {
        let deadline = Instant::now() + ROUTE_WITHIN;
        loop {
            let last = match route.get(&self.http).await {
                Ok((200, body)) if body.trim() == want => {
                    say(&format!("$ {}", route.curl()));
                    say(want);
                    return Ok(());
                }
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "the router did not answer \"{want}\" within {} s; last: {last}",
                    ROUTE_WITHIN.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes the service (and waits for its instances to stop), stops
    /// the registry, and stops the `berth up` this demo started.
    async fn clean_up(&mut self) -> Result<()> {
        if self.step > 0 {
            println!("\n[clean up]");
        }
        let mut first_error = None;
        if let Some(name) = self.service.take() {
            if let Err(e) = self.remove_service(&name).await {
                first_error.get_or_insert(e);
            }
        }
        if self.registry.take().is_some() {
            say("registry stopped and its storage removed");
        }
        if let Some(mut up) = self.up.take() {
            if let Some(pid) = up.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            match tokio::time::timeout(Duration::from_secs(60), up.wait()).await {
                Ok(Ok(status)) if status.success() => say("berth up stopped"),
                Ok(Ok(status)) => say(&format!("berth up stopped ({status})")),
                _ => {
                    let _ = up.kill().await;
                    first_error.get_or_insert(anyhow::anyhow!(
                        "berth up did not stop within 60 s of SIGTERM; killed"
                    ));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Suspends the service, waits until its instances have stopped (so
    /// none outlives a `berth up` stopped next), and deletes it.
    async fn remove_service(&self, name: &str) -> Result<()> {
        for args in [
            &["service", "suspend", name][..],
            &["service", "delete", name, "--yes"][..],
        ] {
            say(&format!("$ berth {}", args.join(" ")));
            let (code, out, err) = self.berth(args).await?;
            if code != 0 {
                bail!(
                    "`berth {}` exited {code}: {}{}",
                    args.join(" "),
                    out.trim(),
                    err.trim()
                );
            }
            if args[1] == "suspend" {
                self.wait_stopped(name).await?;
            }
        }
        Ok(())
    }

    /// Waits until the service has no instance left.
    async fn wait_stopped(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out, err) = self
                .berth(&["service", "instances", name, "--json"])
                .await?;
            if code == 0 && instance_count(&out) == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}'s instances did not stop within 60 s: {}{}",
                    out.trim(),
                    err.trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A web service's address at the router: `http://<name>.<domain>:<port>`
/// reached on loopback with its `Host`, so no DNS is needed.
struct Route {
    host: String,
    port: u16,
}

impl Route {
    fn of(url: &str) -> Result<Route> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("the service's URL {url:?} is not http://"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().context("the service URL's port")?),
            None => (authority, 80),
        };
        Ok(Route {
            host: host.to_owned(),
            port,
        })
    }

    fn curl(&self) -> String {
        format!(
            "curl -H 'Host: {}' http://127.0.0.1:{}/",
            self.host, self.port
        )
    }

    async fn get(&self, http: &reqwest::Client) -> Result<(u16, String)> {
        let answer = http
            .get(format!("http://127.0.0.1:{}/", self.port))
            .header(reqwest::header::HOST, &self.host)
            .send()
            .await?;
        let status = answer.status().as_u16();
        Ok((status, answer.text().await?))
    }
}

fn expect_live(deploy: &Value, digest: &str, what: &str) -> Result<()> {
    let status = text(deploy, "/status");
    if status != "live" {
        bail!("{what} ended {status}: {deploy}");
    }
    let ran = text(deploy, "/image/sha");
    if !ran.ends_with(digest) && !text(deploy, "/image/ref").ends_with(digest) {
        bail!("{what} runs {ran}, not {digest}");
    }
    Ok(())
}

fn instance_count(json: &str) -> usize {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(usize::MAX)
}

fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The hook URL without its key (a secret).
fn redact(url: &str) -> String {
    match url.split_once("key=") {
        Some((head, _)) => format!("'{head}key=…'"),
        None => url.to_owned(),
    }
}

fn say(line: &str) {
    println!("      {line}");
}

fn proves(what: &str) {
    println!("      ✓ {what}");
}

/// Four random lowercase letters, so a demo never meets an earlier one's
/// service.
fn suffix() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..4)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

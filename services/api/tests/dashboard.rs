//! The dashboard, in process against a real NATS, registry and resolver:
//! sign-in with an API key (a wrong key refused and counted, sessions
//! ended by sign-out and by revoking the key), CSRF on every form, pages
//! built on the API's views with its owner isolation, forms going through
//! the API's validation. The live streams are in `dashboard_live.rs`, the
//! real browser test in the `berth` crate (`dashboard_browser.rs`).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use berth_schemas::AggregateId;
use serde_json::json;
use tower::ServiceExt;

use crate::support::{App, Owner};

/// A browser of one: the cookies it was given.
pub(crate) struct Browser {
    pub(crate) router: axum::Router,
    pub(crate) cookies: HashMap<String, String>,
    origin: Option<String>,
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) html: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The first CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self.html.find("name=\"_csrf\" value=\"").expect("a form");
        let rest = &self.html[at + "name=\"_csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    pub(crate) fn new(app: &App) -> Self {
        Browser {
            router: app.router.clone(),
            cookies: HashMap::new(),
            origin: None,
        }
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: Body) -> Page {
        let mut req = req;
        if !self.cookies.is_empty() {
            let jar = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(header::COOKIE, jar);
        }
        req = req.header(header::HOST, "dash.test");
        if let Some(o) = &self.origin {
            req = req.header(header::ORIGIN, o);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        for c in resp.headers().get_all(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        Page {
            status,
            headers,
            html: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        self.send(Request::builder().uri(path), Body::empty()).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            Body::from(body),
        )
        .await
    }

    /// Signs in with `key`; the page it lands on.
    pub(crate) async fn sign_in(&mut self, key: &str) -> Page {
        let login = self.get("/login").await;
        assert_eq!(login.status, StatusCode::OK);
        let csrf = login.csrf();
        self.post("/login", &[("_csrf", &csrf), ("key", key), ("next", "/")])
            .await
    }

    /// Posts a form of the page at `from` (its CSRF token), following the
    /// redirect; the page it lands on.
    pub(crate) async fn submit(
        &mut self,
        from: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Page {
        let page = self.get(from).await;
        let csrf = page.csrf();
        let mut all = vec![("_csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let done = self.post(action, &all).await;
        if done.status == StatusCode::SEE_OTHER {
            let to = done.location().to_owned();
            return self.get(&to).await;
        }
        done
    }
}

pub(crate) async fn signed_in(app: &App, o: &Owner) -> Browser {
    let mut b = Browser::new(app);
    let landed = b.sign_in(&o.key).await;
    assert_eq!(landed.status, StatusCode::SEE_OTHER, "{}", landed.html);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_an_api_key_and_out() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let mut b = Browser::new(&app);
    let first = b.get("/").await;
    assert_eq!(
        (first.status, first.location()),
        (StatusCode::SEE_OTHER, "/login")
    );
    let deep = b.get("/services/new?x=1").await;
    assert_eq!(deep.location(), "/login?next=%2Fservices%2Fnew%3Fx%3D1");

    // A wrong key: refused, counted as a failed authentication.
    let wrong = b.sign_in("berth_not-a-key").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.html.contains("not valid"), "{}", wrong.html);
    assert!(!b.cookies.contains_key("berth_session"));
    // Without the sign-in form's token: refused before the key is looked at.
    let forged = b
        .post("/login", &[("_csrf", "forged"), ("key", &alice.key)])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let ok = b.sign_in(&alice.key).await;
    assert_eq!((ok.status, ok.location()), (StatusCode::SEE_OTHER, "/"));
    let cookie = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("berth_session="))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains(&alice.key),
        "the API key is not the cookie"
    );
    let home = b.get("/").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.html);
    assert!(home.html.contains("<h1>Services</h1>"), "{}", home.html);
    assert_eq!(home.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert!(home.headers.get(header::CONTENT_SECURITY_POLICY).is_some());
    // Signed in, the sign-in page sends home.
    assert_eq!(b.get("/login").await.status, StatusCode::SEE_OTHER);

    let out = b.submit("/", "/logout", &[]).await;
    assert_eq!(out.status, StatusCode::OK, "the sign-in page");
    assert_eq!(b.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_needs_the_sessions_csrf_token() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let mut b = signed_in(&app, &alice).await;
    let page = b.get("/api-keys").await;
    let token = page.csrf();
    let before = app.last_seq().await;
    for fields in [
        vec![("label", "x")],
        vec![("_csrf", "nope"), ("label", "x")],
    ] {
        let r = b.post("/api-keys", &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.html);
    }
    // The right token from another site's page: refused by its origin.
    b.origin = Some("http://evil.example".to_owned());
    let r = b
        .post("/api-keys", &[("_csrf", &token), ("label", "x")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.last_seq().await,
        before,
        "a refused form changed something"
    );
    b.origin = Some("http://dash.test".to_owned());
    let r = b
        .post("/api-keys", &[("_csrf", &token), ("label", "ci")])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.html);
    assert!(r.html.contains("not shown again"), "{}", r.html);
    // Another session's token is not this one's.
    let mut other = signed_in(&app, &alice).await;
    let theirs = other.get("/api-keys").await.csrf();
    assert_ne!(theirs, token);
    let r = b
        .post("/api-keys", &[("_csrf", &theirs), ("label", "x")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_key_ends_its_sessions() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let (s, k) = app
        .post("/v1/api-keys", &alice, json!({"label": "tab"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut b = signed_in(
        &app,
        &Owner {
            id: alice.id.clone(),
            key: k["key"].as_str().unwrap().to_owned(),
        },
    )
    .await;
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    let (s, _) = app
        .delete(
            &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let t0 = std::time::Instant::now();
    while b.get("/").await.status == StatusCode::OK {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "session outlived its key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `name` through the new-service form; the service page.
async fn create(b: &mut Browser, name: &str, image: &str) -> (String, Page) {
    let page = b
        .submit(
            "/services/new",
            "/services",
            &[
                ("type", "background_worker"),
                ("name", name),
                ("imagePath", image),
                ("numInstances", "1"),
                ("plan", "starter"),
                ("envVars", "GREETING=hello\nSECRET_TOKEN=s3cr3t-value"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let at = page
        .html
        .find("/services/srv-")
        .expect("the service's page");
    let id = page.html[at + "/services/".len()..][..24].to_owned();
    (id, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_apis_views_and_forms_use_its_validation() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let mut b = signed_in(&app, &alice).await;

    // The API's validation, on the form: nothing created, the form kept.
    let refused = b
        .submit(
            "/services/new",
            "/services",
            &[
                ("type", "background_worker"),
                ("name", "w1"),
                ("imagePath", ""),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.html);
    assert!(
        refused.html.contains("image.imagePath: is required"),
        "{}",
        refused.html
    );
    assert!(
        refused.html.contains("value=\"w1\""),
        "the form keeps what was typed"
    );

    let (id, page) = create(&mut b, "w1", &app.image("v1")).await;
    assert!(
        page.html.contains("created; its first deploy"),
        "{}",
        page.html
    );
    // The page shows what the API answers for the service.
    let (_, view) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert!(page.html.contains(view["imagePath"].as_str().unwrap()));
    let dep = app.latest_deploy(&alice, &id).await;
    assert!(page.html.contains(&dep), "the first deploy is listed");
    assert!(
        page.html.contains("data-live-src=\"/services/"),
        "a live page"
    );
    // Env values are hidden until revealed.
    let settings = b.get(&format!("/services/{id}/settings")).await;
    assert!(settings.html.contains("SECRET_TOKEN"));
    assert!(
        !settings.html.contains("s3cr3t-value"),
        "a value shown unasked"
    );
    let revealed = b.get(&format!("/services/{id}/settings?reveal=env")).await;
    assert!(revealed.html.contains("s3cr3t-value"));
    let hook = b.get(&format!("/services/{id}/settings?reveal=hook")).await;
    assert!(
        hook.html.contains(&format!("/deploy/{id}?key=")),
        "{}",
        hook.html
    );

    // The list: the API's filters.
    app.service(&alice, "w2").await;
    let list = b.get("/").await;
    assert!(
        list.html.contains(">w1<") && list.html.contains(">w2<"),
        "{}",
        list.html
    );
    let only = b.get("/?name=w2").await;
    assert!(!only.html.contains(">w1<") && only.html.contains(">w2<"));
    let none = b.get("/?type=cron_job").await;
    assert!(none.html.contains("No services"), "{}", none.html);
    let paged = b.get("/?limit=1").await;
    assert!(paged.html.contains("rel=\"next\""), "a next page link");

    // Scale through the form: the API's answer as a message.
    let scaled = b
        .submit(
            &format!("/services/{id}"),
            &format!("/services/{id}/scale"),
            &[("numInstances", "2")],
        )
        .await;
    assert!(
        scaled.html.contains("Scaling to 2 instances."),
        "{}",
        scaled.html
    );
    let bad = b
        .submit(
            &format!("/services/{id}"),
            &format!("/services/{id}/scale"),
            &[("numInstances", "-1")],
        )
        .await;
    // The page's script re-reading the page leaves the message for the
    // page a person opens next.
    let csrf = b.get(&format!("/services/{id}")).await.csrf();
    b.post(
        &format!("/services/{id}/scale"),
        &[("_csrf", &csrf), ("numInstances", "1")],
    )
    .await;
    let refresh = b
        .send(
            Request::builder()
                .uri(format!("/services/{id}"))
                .header("x-berth-live", "1"),
            Body::empty(),
        )
        .await;
    assert!(
        !refresh.html.contains("Scaling to 1"),
        "a refresh took the message"
    );
    assert!(b
        .get(&format!("/services/{id}"))
        .await
        .html
        .contains("Scaling to 1"));
    assert!(bad.html.contains("numInstances"), "{}", bad.html);

    // Rollback: offered for a settled deploy with a digest, and disabled
    // with the reason once the registry no longer holds it.
    let resolved = app.wait_resolved(&alice, &id, &dep).await;
    let (s, _) = app
        .post(
            &format!("/v1/services/{id}/deploys/{dep}/cancel"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let row = |html: &str| {
        let at = html.find(&format!("id=\"deploy-{dep}\"")).unwrap();
        html[at..at + html[at..].find("</tr>").unwrap()].to_owned()
    };
    let offered = row(&b.get(&format!("/services/{id}")).await.html);
    assert!(
        offered.contains("Roll back to this") && !offered.contains("disabled"),
        "{offered}"
    );
    app.store
        .execute::<berth_domain::service::Service>(
            &AggregateId::Service(id.parse().unwrap()),
            "gone-digest",
            &berth_eventlog::Stamp::new(berth_schemas::Actor::system("test")),
            berth_domain::service::Command::MarkRollbackTargetMissing {
                deploy: dep.parse().unwrap(),
                digest: resolved["image"]["sha"].as_str().unwrap().to_owned(),
            },
        )
        .await
        .unwrap();
    let page = b.get(&format!("/services/{id}")).await;
    let refused = row(&page.html);
    assert!(refused.contains("disabled"), "{refused}");
    assert!(refused.contains("no longer in the registry"), "{refused}");
    // Posted anyway (an old page): the API's refusal, as a message.
    let csrf = page.csrf();
    let r = b
        .post(
            &format!("/services/{id}/rollback"),
            &[("_csrf", &csrf), ("deployId", &dep)],
        )
        .await;
    let after = b.get(r.location()).await;
    assert!(
        after.html.contains("not rollback-eligible"),
        "{}",
        after.html
    );

    // Delete needs the name typed.
    let kept = b
        .submit(
            &format!("/services/{id}/settings"),
            &format!("/services/{id}/delete"),
            &[("confirm", "nope")],
        )
        .await;
    assert!(
        kept.html.contains("type the service&#39;s name")
            || kept.html.contains("type the service's name"),
        "{}",
        kept.html
    );
    let (s, _) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_service_is_a_404_page() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (id, _) = app.service(&alice, "mine").await;
    // Nothing else will happen to the service (no node takes it further).
    let dep = app.latest_deploy(&alice, &id).await;
    app.wait_resolved(&alice, &id, &dep).await;
    let mut b = signed_in(&app, &bob).await;
    for path in [
        format!("/services/{id}"),
        format!("/services/{id}/settings"),
    ] {
        let page = b.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.html.contains("mine"), "{}", page.html);
    }
    let live = b.get(&format!("/services/{id}/live")).await;
    assert_eq!(live.status, StatusCode::NOT_FOUND);
    let before = app.last_seq().await;
    let r = b.submit("/", &format!("/services/{id}/restart"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.html);
    let r = b
        .submit(
            "/",
            &format!("/services/{id}/delete"),
            &[("confirm", "mine")],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(app.last_seq().await, before, "bob changed alice's service");
    let list = b.get("/").await;
    assert!(!list.html.contains("mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_pages_use_the_apis_rules() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let mut b = signed_in(&app, &alice).await;
    let host = app.registry.as_ref().unwrap().host.clone();

    // A credential from the form; its token never shown.
    let added = b
        .submit(
            "/credentials",
            "/credentials",
            &[
                ("name", "ci"),
                ("registry", "GENERIC"),
                ("host", &host),
                ("username", "ci"),
                ("authToken", "tok-SECRET-9"),
            ],
        )
        .await;
    assert!(
        added.html.contains("Credential ci added."),
        "{}",
        added.html
    );
    assert!(!added.html.contains("tok-SECRET-9"));
    let (_, list) = app.get("/v1/registrycredentials", &alice).await;
    let cred = list[0]["id"].as_str().unwrap().to_owned();
    // In use: the refusal names the service.
    let (s, v) = app
        .post(
            "/v1/services",
            &alice,
            json!({"type": "background_worker", "name": "uses-ci",
                   "image": {"imagePath": app.image("v1"), "registryCredentialId": cred}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let refused = b
        .submit("/credentials", &format!("/credentials/{cred}/delete"), &[])
        .await;
    assert!(
        refused.html.contains("in use by uses-ci"),
        "{}",
        refused.html
    );
    let rotated = b
        .submit(
            "/credentials",
            &format!("/credentials/{cred}/rotate"),
            &[("authToken", "tok-SECRET-10"), ("username", "ci2")],
        )
        .await;
    assert!(rotated.html.contains("rotated"), "{}", rotated.html);

    // Notifications: the API's rule that a webhook needs its secret.
    let refused = b
        .submit(
            "/notifications",
            "/notifications",
            &[
                ("notificationsToSend", "all"),
                ("webhookUrl", "http://127.0.0.1:9/h"),
            ],
        )
        .await;
    assert!(refused.html.contains("webhookSecret"), "{}", refused.html);
    let saved = b
        .submit(
            "/notifications",
            "/notifications",
            &[
                ("notificationsToSend", "all"),
                ("email", "ops@example.com"),
                ("webhookUrl", "http://127.0.0.1:9/h"),
                (
                    "webhookSecret",
                    "whsec_c2VrcmV0LXNpZ25pbmcta2V5LTAxMjM0NQ==",
                ),
            ],
        )
        .await;
    assert!(
        saved.html.contains("Notification settings saved."),
        "{}",
        saved.html
    );
    assert!(saved.html.contains("Webhook (set)"), "{}", saved.html);
    assert!(!saved.html.contains("c2VrcmV0"), "a secret shown");
    let (_, n) = app
        .get(
            &format!("/v1/notification-settings/owners/{}", alice.id),
            &alice,
        )
        .await;
    assert_eq!(
        (&n["notificationsToSend"], &n["email"]),
        (&json!("all"), &json!("ops@example.com"))
    );

    // The log stream: the API's refusal of a bad endpoint, then set with
    // a token that is never shown, then removed.
    let refused = b
        .submit("/log-stream", "/log-stream", &[("endpoint", "tls://x:1")])
        .await;
    assert!(refused.html.contains("scheme"), "{}", refused.html);
    let saved = b
        .submit(
            "/log-stream",
            "/log-stream",
            &[
                ("endpoint", "logs.example.com:6514"),
                ("token", "tok-LS-SECRET"),
            ],
        )
        .await;
    assert!(
        saved
            .html
            .contains("Lines are sent to logs.example.com:6514.")
            && saved.html.contains("Token (set)"),
        "{}",
        saved.html
    );
    assert!(!saved.html.contains("tok-LS-SECRET"), "a token shown");
    let (_, ls) = app
        .get(&format!("/v1/logs/streams/owner/{}", alice.id), &alice)
        .await;
    assert_eq!(ls["tokenConfigured"], true, "{ls}");
    let removed = b.submit("/log-stream", "/log-stream/remove", &[]).await;
    assert!(
        removed.html.contains("Log stream removed"),
        "{}",
        removed.html
    );
    assert!(
        !removed.html.contains("Stop sending lines"),
        "{}",
        removed.html
    );

    // A cron job's page: runs, and the API's refusal to run before a deploy is live.
    let cron = &app.cron_job(&alice, "nightly").await;
    let page = b.get(&format!("/services/{cron}")).await;
    assert!(
        page.html.contains("Run now") && page.html.contains("No runs yet."),
        "{}",
        page.html
    );
    assert!(
        !page.html.contains("/scale"),
        "a cron job has no instances to scale"
    );
    let ran = run_now(&mut b, cron).await;
    assert!(ran.html.contains("no live deploy yet"), "{}", ran.html);

    // Jobs: refused before a deploy is live, then run, listed and canceled
    // from the page.
    assert!(
        page.html.contains("Run job") && page.html.contains("No jobs yet."),
        "{}",
        page.html
    );
    let job = |command: &'static str| [("startCommand", command)];
    let refused = b
        .submit(
            &format!("/services/{cron}"),
            &format!("/services/{cron}/jobs"),
            &job("rake db:migrate"),
        )
        .await;
    assert!(
        refused.html.contains("no live deploy yet"),
        "{}",
        refused.html
    );
    app.go_live(&alice, cron).await;
    let started = b
        .submit(
            &format!("/services/{cron}"),
            &format!("/services/{cron}/jobs"),
            &job("rake db:migrate"),
        )
        .await;
    assert!(started.html.contains("Job job-"), "{}", started.html);
    assert!(
        started.html.contains("<code>rake db:migrate</code>"),
        "{}",
        started.html
    );
    let (_, listed) = app.get(&format!("/v1/services/{cron}/jobs"), &alice).await;
    let id = listed[0]["job"]["id"].as_str().unwrap().to_owned();
    assert!(
        started.html.contains(&format!("/jobs/{id}/cancel")),
        "{}",
        started.html
    );
    // Running (as its node reports), it has a terminal of its own.
    let job_id: berth_schemas::ids::JobId = id.parse().unwrap();
    for command in [
        berth_domain::service::Command::RecordJobPlaced {
            job: job_id.clone(),
            node: berth_schemas::ids::NodeId::generate(),
        },
        berth_domain::service::Command::RecordJobStarted { job: job_id },
    ] {
        app.store
            .execute::<berth_domain::service::Service>(
                &AggregateId::Service(cron.parse().unwrap()),
                &format!("{:032x}", rand::random::<u128>()),
                &berth_eventlog::Stamp::new(berth_schemas::Actor::system("test")),
                command,
            )
            .await
            .unwrap();
    }
    let running = b.get(&format!("/services/{cron}")).await;
    links_a_terminal_in(&mut b, &running, cron, &id).await;
    let bad = b
        .get(&format!("/services/{cron}/terminal?instance=x%22y"))
        .await;
    assert_eq!(bad.status, StatusCode::NOT_FOUND, "{}", bad.html);
    assert!(!bad.html.contains("x\"y"), "{}", bad.html);
    let canceled = b
        .submit(
            &format!("/services/{cron}"),
            &format!("/services/{cron}/jobs/{id}/cancel"),
            &[],
        )
        .await;
    assert!(
        canceled.html.contains(&format!("Job {id} is canceled.")),
        "{}",
        canceled.html
    );
    assert!(
        !canceled.html.contains(&format!("/jobs/{id}/cancel"))
            && !canceled.html.contains(&format!("terminal?instance={id}")),
        "an ended job has no cancel nor terminal: {}",
        canceled.html
    );
    // A run started from the page: while it runs, a terminal in it.
    let ran = run_now(&mut b, cron).await;
    let (_, runs) = app.get(&format!("/v1/cron-jobs/{cron}/runs"), &alice).await;
    let run = runs[0]["cronJobRun"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{runs}"))
        .to_owned();
    links_a_terminal_in(&mut b, &ran, cron, &run).await;
    let ended = b
        .submit(
            &format!("/services/{cron}"),
            &format!("/services/{cron}/cron-runs/cancel"),
            &[],
        )
        .await;
    assert!(
        ended.html.contains(&format!("<code>{run}</code>"))
            && !ended.html.contains(&format!("terminal?instance={run}")),
        "the ended run is listed, without a terminal: {}",
        ended.html
    );
}

/// The cron job page's "Run now".
async fn run_now(b: &mut Browser, cron: &str) -> Page {
    b.submit(
        &format!("/services/{cron}"),
        &format!("/services/{cron}/cron-runs"),
        &[],
    )
    .await
}

/// `page` links to a terminal in `instance` (an instance, job or cron run)
/// of `service`, whose page opens its socket there.
async fn links_a_terminal_in(b: &mut Browser, page: &Page, service: &str, instance: &str) {
    let terminal = format!("/services/{service}/terminal?instance={instance}");
    assert!(page.html.contains(&terminal), "{}", page.html);
    let opened = b.get(&terminal).await;
    assert_eq!(opened.status, StatusCode::OK);
    assert!(
        opened.html.contains(&format!("&amp;instance={instance}\"")),
        "the page's socket opens it there: {}",
        opened.html
    );
}

/// The logs page shows kept lines newest first, escaped, filtered, paged
/// from the server; the metrics page draws the API's series; another
/// owner's are 404 pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_metrics_pages() {
    use berth_schemas::metrics::{InstanceUsage, UsageSample};
    let app = App::start(true).await;
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        api: berth_api::ApiArgs,
    }
    let defaults = <Defaults as clap::Parser>::parse_from(["berth"]);
    app.store
        .provision_logs(&defaults.api.log_limits())
        .await
        .unwrap();
    berth_api::metrics::ensure_stream(&app.store, 1 << 24)
        .await
        .unwrap();
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "watched").await;
    let service: berth_schemas::ids::ServiceId = svc.parse().unwrap();
    let subjects = app.store.subjects().clone();
    let js = app.store.jetstream();
    let instance = berth_schemas::ids::InstanceId::generate();
    // The last is berth's line about a deploy: no instance.
    for (text, of) in [
        ("first line", Some(&instance)),
        ("<script>alert(1)</script>", Some(&instance)),
        ("needle in it", Some(&instance)),
        ("==> Your service is live", None),
    ] {
        let line = berth_schemas::logs::LogLine {
            service: service.clone(),
            instance: of.cloned(),
            stream: berth_schemas::logs::Stream::Stdout,
            line: text.to_owned(),
            time: chrono::Utc::now(),
        };
        js.publish(
            subjects.logs(&service),
            serde_json::to_vec(&line).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let node = berth_schemas::ids::NodeId::generate();
    for k in 0..3i64 {
        let sample = UsageSample {
            node: node.clone(),
            time: chrono::Utc::now() - chrono::Duration::seconds(90 - 30 * k),
            instances: vec![InstanceUsage {
                instance: instance.clone(),
                cpu_nanos: (k as u64) * 15_000_000_000,
                memory_bytes: 64 << 20,
                memory_limit_bytes: 0,
                cpu_limit_millis: 0,
                disk_used_bytes: None,
                disk_capacity_bytes: None,
            }],
        };
        app.store
            .client()
            .publish(
                subjects.usage(&service, &node),
                serde_json::to_vec(&sample).unwrap().into(),
            )
            .await
            .unwrap();
    }
    app.store.server_round_trip().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut b = signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}/logs")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let (first, script, needle) = (
        page.html.find("first line").unwrap(),
        page.html
            .find("&lt;script&gt;alert(1)&lt;/script&gt;")
            .expect("the line escaped"),
        page.html.find("needle in it").unwrap(),
    );
    assert!(needle < script && script < first, "newest first");
    let live = page.html.find("==&gt; Your service is live").unwrap();
    assert!(live < needle, "newest first");
    assert!(
        page.html[..live].ends_with(
            "<td><span class=\"muted\">—</span></td><td>info</td><td><code class=\"line\">"
        ),
        "no instance: {}",
        &page.html[live.saturating_sub(200)..live]
    );
    assert!(
        !page.html.contains("<script>alert(1)"),
        "a line is never markup"
    );
    let filtered = b.get(&format!("/services/{svc}/logs?text=needle")).await;
    assert!(filtered.html.contains("needle in it") && !filtered.html.contains("first line"));
    let following = b.get(&format!("/services/{svc}/logs?follow=1")).await;
    assert!(
        following.html.contains("http-equiv=\"refresh\""),
        "following re-reads the page"
    );

    let charts = b.get(&format!("/services/{svc}/metrics")).await;
    assert_eq!(charts.status, StatusCode::OK, "{}", charts.html);
    assert!(
        charts.html.contains("<svg") && charts.html.contains("polyline"),
        "{}",
        charts.html
    );
    assert!(
        charts.html.contains("64.0 MiB"),
        "memory drawn and named: {}",
        charts.html
    );
    assert!(
        charts.html.contains("0.500 cores"),
        "CPU as a rate: {}",
        charts.html
    );

    let bob = app.owner().await;
    let mut other = signed_in(&app, &bob).await;
    for path in [
        format!("/services/{svc}/logs"),
        format!("/services/{svc}/metrics"),
    ] {
        let page = other.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            !page.html.contains("first line") && !page.html.contains("watched"),
            "{path}"
        );
    }
}

/// A registry that is down shows on the deploy in progress: which attempt
/// failed and when the next one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_resolve_shows_in_the_deploy_progress() {
    use berth_domain::service::{self, Command};
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "waiting").await;
    app.stop_resolver().await;
    // A new deploy replaces the running one at once: it resolves, and no
    // resolver runs.
    let (s, v) = app
        .patch(
            &format!("/v1/services/{svc}"),
            &alice,
            serde_json::json!({"serviceDetails": {"overlapPolicy": "cancel"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, d) = app
        .post(
            &format!("/v1/services/{svc}/deploys"),
            &alice,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    assert_eq!(d["status"], "update_in_progress", "{d}");
    let deploy: berth_schemas::ids::DeployId = d["id"].as_str().unwrap().parse().unwrap();
    let id = berth_schemas::AggregateId::Service(svc.parse().unwrap());
    app.store
        .execute::<service::Service>(
            &id,
            "test-retry",
            &berth_eventlog::Stamp::new(berth_schemas::Actor::system("resolver")),
            Command::RecordRetrying {
                deploy: deploy.clone(),
                attempt: 2,
                retry_at: chrono::Utc::now() + chrono::Duration::seconds(40),
                message: "resolving registry.example/app:v2: 503 Service Unavailable".to_owned(),
            },
        )
        .await
        .unwrap();
    let mut b = signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}")).await;
    assert!(
        page.html.contains("registry unavailable, retry 3 at")
            && page.html.contains("503 Service Unavailable"),
        "{}",
        page.html
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_services_https_redirect_is_set_on_its_settings_page() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let id = app.web_service(&alice, "site").await;
    let (worker, _) = app.service(&alice, "worker").await;
    let mut b = signed_in(&app, &alice).await;

    let page = b.get(&format!("/services/{id}/settings")).await;
    assert!(
        page.html
            .contains("<option value=\"on\" selected>redirects to HTTPS</option>"),
        "{}",
        page.html
    );
    let saved = b
        .submit(
            &format!("/services/{id}/settings"),
            &format!("/services/{id}/settings"),
            &[("httpsRedirect", "off")],
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.html);
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(v["serviceDetails"]["httpsRedirect"], false, "{v}");
    let page = b.get(&format!("/services/{id}/settings")).await;
    assert!(
        page.html
            .contains("<option value=\"off\" selected>is served as is</option>"),
        "{}",
        page.html
    );

    // A worker's page has no such setting.
    let page = b.get(&format!("/services/{worker}/settings")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.html.contains("httpsRedirect"), "{}", page.html);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_form_runs_through_the_apis_exec_and_says_its_refusals() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "w").await;
    app.go_live(&alice, &svc).await;
    let mut b = signed_in(&app, &alice).await;
    let page = b.get(&format!("/services/{svc}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert!(
        page.html
            .contains(&format!("action=\"/services/{svc}/exec\"")),
        "{}",
        page.html
    );
    // No instance runs (no node here): the API's 409, said on the page.
    let before = app.last_seq().await;
    let back = b
        .submit(
            &format!("/services/{svc}"),
            &format!("/services/{svc}/exec"),
            &[("command", "ls /")],
        )
        .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.html);
    assert!(
        back.html
            .contains("no running instance to run a command in"),
        "{}",
        back.html
    );
    // Nothing typed: refused, saying so.
    let empty = b
        .submit(
            &format!("/services/{svc}"),
            &format!("/services/{svc}/exec"),
            &[("command", "")],
        )
        .await;
    assert!(
        empty.html.contains("type a command line to run"),
        "{}",
        empty.html
    );
    assert_eq!(app.last_seq().await, before, "a command recorded nothing");
    // Without the session's token: refused before anything runs.
    let forged = b
        .post(&format!("/services/{svc}/exec"), &[("command", "ls /")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // An instance running on a node that is not connected: the command
    // is recorded, then the API's 503 is said on the page, and the
    // service's events show who asked to run what where.
    let (deploy, digest) = app.go_live(&alice, &svc).await;
    let (instance, node) = app.place(&svc, &deploy, &digest).await;
    app.started(&svc, &instance, &node, &digest).await;
    let unreachable = b
        .submit(
            &format!("/services/{svc}"),
            &format!("/services/{svc}/exec"),
            &[("command", "env | sort")],
        )
        .await;
    assert!(
        unreachable.html.contains("not connected"),
        "{}",
        unreachable.html
    );
    let mut shown = String::new();
    for _ in 0..100 {
        shown = b.get(&format!("/services/{svc}")).await.html;
        if shown.contains("instance command requested") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shown.contains(&format!(
            "instance command requested</strong>: <code>sh</code> in <span class=\"mono\">{instance}</span>"
        )),
        "{shown}"
    );
    assert!(!shown.contains("env | sort"), "arguments shown: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_autoscaled_and_stopped_from_its_page_through_the_api() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (id, _) = app.service(&alice, "worker").await;
    let mut b = signed_in(&app, &alice).await;
    let page = format!("/services/{id}");

    // Refused as the API refuses it, and said.
    let refused = b
        .submit(
            &page,
            &format!("{page}/autoscaling"),
            &[("min", "3"), ("max", "2")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::OK);
    assert!(
        refused.html.contains("must be at least min (3)"),
        "{}",
        refused.html
    );
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert!(v["serviceDetails"].get("autoscaling").is_none(), "{v}");

    let on = b
        .submit(
            &page,
            &format!("{page}/autoscaling"),
            &[("min", "2"), ("max", "3"), ("memory", "75")],
        )
        .await;
    assert!(
        on.html
            .contains("This service runs autoscaling between 2 and 3 instances, keeping memory at 75 %: 2 now."),
        "{}",
        on.html
    );
    assert!(
        !on.html
            .contains(&format!("action=\"/services/{id}/scale\"")),
        "scaling by hand is not offered while autoscaled"
    );
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    let a = &v["serviceDetails"]["autoscaling"];
    assert_eq!(
        (a["min"].clone(), a["max"].clone()),
        (2.into(), 3.into()),
        "{v}"
    );
    assert_eq!(a["criteria"]["cpu"]["enabled"], false, "{v}");
    assert_eq!(a["criteria"]["memory"]["percentage"], 75, "{v}");
    assert_eq!(v["serviceDetails"]["numInstances"], 2, "{v}");

    let off = b
        .submit(&page, &format!("{page}/autoscaling/delete"), &[])
        .await;
    assert!(off.html.contains("Autoscaling removed"), "{}", off.html);
    assert!(
        off.html
            .contains(&format!("action=\"/services/{id}/scale\"")),
        "{}",
        off.html
    );
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert!(v["serviceDetails"].get("autoscaling").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_services_maintenance_mode_is_set_on_its_settings_page() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let id = app.web_service(&alice, "site").await;
    let mut b = signed_in(&app, &alice).await;
    let settings = format!("/services/{id}/settings");

    let saved = b
        .submit(
            &settings,
            &settings,
            &[
                ("maintenance", "on"),
                ("maintenanceUri", "https://status.example.com/"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.html);
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(
        v["serviceDetails"]["maintenanceMode"],
        serde_json::json!({"enabled": true, "uri": "https://status.example.com/"}),
        "{v}"
    );
    let page = b.get(&settings).await;
    assert!(
        page.html.contains(
            "<option value=\"on\" selected>on: every request gets a 503 maintenance page</option>"
        ),
        "{}",
        page.html
    );
    // Refused as the API refuses it, and said; nothing changed.
    let refused = b
        .submit(
            &settings,
            &settings,
            &[("maintenanceUri", "javascript:alert(1)")],
        )
        .await;
    assert!(
        refused.html.contains("maintenanceMode.uri"),
        "{}",
        refused.html
    );
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(
        v["serviceDetails"]["maintenanceMode"]["uri"],
        "https://status.example.com/"
    );
    // Its IP allow list: only these blocks, then every client again.
    let saved = b
        .submit(
            &settings,
            &settings,
            &[
                ("allow", "only"),
                ("ipAllowList", "203.0.113.0/24 office\n\n198.51.100.9\n"),
            ],
        )
        .await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.html);
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert_eq!(
        v["serviceDetails"]["ipAllowList"],
        serde_json::json!([{"cidrBlock": "203.0.113.0/24", "description": "office"},
                           {"cidrBlock": "198.51.100.9/32", "description": ""}]),
        "{v}"
    );
    let page = b.get(&settings).await;
    assert!(
        page.html
            .contains("203.0.113.0/24 office\n198.51.100.9/32\n"),
        "{}",
        page.html
    );
    b.submit(&settings, &settings, &[("allow", "every")]).await;
    let (_, v) = app.get(&format!("/v1/services/{id}"), &alice).await;
    assert!(v["serviceDetails"].get("ipAllowList").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_added_changed_and_deleted_from_their_pages_through_the_api() {
    let app = App::start(false).await;
    let alice = app.owner().await;
    let mut b = signed_in(&app, &alice).await;
    let added = b
        .submit(
            "/webhooks",
            "/webhooks",
            &[
                ("name", "chat"),
                ("url", "https://chat.example.test/berth"),
                ("eventFilter", "deploy_ended, server_failed"),
            ],
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.html);
    assert!(added.html.contains("Webhook chat added"), "{}", added.html);
    let (_, list) = app.get("/v1/webhooks", &alice).await;
    let hook = list[0]["webhook"].clone();
    let id = hook["id"].as_str().unwrap().to_owned();
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        hook["eventFilter"],
        serde_json::json!(["deploy_ended", "server_failed"])
    );
    assert!(
        added.html.contains("deploy_ended, server_failed"),
        "{}",
        added.html
    );
    assert!(!added.html.contains(&secret), "the list shows no secret");
    let page = b.get(&format!("/webhooks/{id}")).await;
    assert!(
        page.html.contains(&secret) && page.html.contains("Nothing posted yet"),
        "{}",
        page.html
    );

    // Off from the list; every event from its page.
    let off = b
        .submit(
            "/webhooks",
            &format!("/webhooks/{id}"),
            &[("enabled", "false")],
        )
        .await;
    assert!(
        off.html.contains("Webhook chat saved (off)"),
        "{}",
        off.html
    );
    let own = format!("/webhooks/{id}");
    let all = b
        .submit(
            &own,
            &own,
            &[
                ("name", "chat"),
                ("url", "https://chat.example.test/berth"),
                ("eventFilter", ""),
                ("events", "given"),
            ],
        )
        .await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.html);
    let (_, v) = app
        .get(&own.replace("/webhooks", "/v1/webhooks"), &alice)
        .await;
    assert_eq!(
        (&v["enabled"], &v["eventFilter"]),
        (&serde_json::json!(false), &serde_json::json!([])),
        "{v}"
    );
    // Refused as the API refuses it, and said; nothing changed.
    let refused = b
        .submit(
            &own,
            &own,
            &[
                ("name", "chat"),
                ("url", "https://chat.example.test/berth"),
                ("eventFilter", "deploy_done"),
                ("events", "given"),
            ],
        )
        .await;
    assert!(refused.html.contains("eventFilter"), "{}", refused.html);
    let (_, v) = app
        .get(&own.replace("/webhooks", "/v1/webhooks"), &alice)
        .await;
    assert_eq!(v["eventFilter"], serde_json::json!([]));
    // Another owner's webhook is not found.
    let bob = app.owner().await;
    let mut other = signed_in(&app, &bob).await;
    assert_eq!(other.get(&own).await.status, StatusCode::NOT_FOUND);

    let gone = b
        .submit("/webhooks", &format!("/webhooks/{id}/delete"), &[])
        .await;
    assert!(gone.html.contains("Webhook deleted"), "{}", gone.html);
    let (_, list) = app.get("/v1/webhooks", &alice).await;
    assert_eq!(list, serde_json::json!([]));
}

//! `GET /v1/logs`: kept lines in Render's shape, the filters berth honours,
//! paging by time without repeats or gaps, owner isolation, and the logs
//! stream's limits as the settings give them.

use std::time::Duration;

use axum::http::StatusCode;
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::logs::Stream;
use clap::Parser;
use serde_json::Value;

use crate::support::{App, Owner};

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The messages of a page, in its order.
fn messages(page: &Value) -> Vec<String> {
    page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

/// The value of the label `name` of a line.
pub fn label<'a>(line: &'a Value, name: &str) -> &'a str {
    line["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| l["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} label: {line}"))
}

/// Every message of the window `query` names, page after page of `limit`
/// as Render's clients page; also the number of pages.
async fn all_pages(app: &App, who: &Owner, query: &str, limit: usize) -> (Vec<String>, usize) {
    let (mut got, mut pages) = (Vec::new(), 0);
    let mut window = String::new();
    loop {
        let (s, page) = app
            .get(&format!("/v1/logs?{query}&limit={limit}{window}"), who)
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        got.extend(messages(&page));
        if page["hasMore"] != true {
            return (got, pages);
        }
        assert!(pages < 50, "paging does not end: {page}");
        window = format!(
            "&startTime={}&endTime={}",
            enc(page["nextStartTime"].as_str().unwrap()),
            enc(page["nextEndTime"].as_str().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_lines_are_listed_filtered_and_paged_in_renders_shape() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    let hostile = "\"quoted\" \\ </script><b>&amp; \u{1b}[31mred\u{1b}[0m \u{0} {\"json\": 1}";
    let mut sent = Vec::new();
    for (i, (inst, stream, text)) in [
        (&a, Stream::Stdout, "booting, then ready"),
        (&a, Stream::Stderr, "warning: disk, almost full"),
        (&b, Stream::Stdout, hostile),
        (&b, Stream::Stdout, "request 1 served"),
        (&a, Stream::Stdout, "request 2 served"),
    ]
    .into_iter()
    .enumerate()
    {
        app.log_line(&svc, inst, stream, text).await;
        sent.push(text.to_owned());
        if i == 2 {
            // A gap, to split the window by time below.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let base = format!("resource={svc}");

    // Default: backward, newest first, every label Render's clients know.
    let (s, page) = app
        .get(&format!("/v1/logs?{base}&ownerId={}", alice.id), &alice)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(messages(&page), newest_first);
    assert_eq!(page["hasMore"], false, "{page}");
    let hostile_line = &page["logs"][2];
    assert_eq!(hostile_line["message"], hostile, "kept byte for byte");
    assert_eq!(label(hostile_line, "resource"), svc);
    assert_eq!(label(hostile_line, "instance"), b.to_string());
    assert_eq!(label(hostile_line, "type"), "app");
    assert_eq!(label(hostile_line, "level"), "info");
    assert_eq!(label(&page["logs"][3], "level"), "error");
    let ids: std::collections::BTreeSet<_> = page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "ids are unique: {page}");

    // Forward: oldest first.
    let (_, fwd) = app
        .get(&format!("/v1/logs?{base}&direction=forward"), &alice)
        .await;
    assert_eq!(messages(&fwd), sent);

    // Filters: instance, text (a comma is text), level, type.
    let (_, only_a) = app
        .get(
            &format!("/v1/logs?{base}&instance={a}&direction=forward"),
            &alice,
        )
        .await;
    assert_eq!(
        messages(&only_a),
        [&sent[0], &sent[1], &sent[4]].map(String::clone)
    );
    let (_, served) = app
        .get(
            &format!("/v1/logs?{base}&text=served&direction=forward"),
            &alice,
        )
        .await;
    assert_eq!(messages(&served), [&sent[3], &sent[4]].map(String::clone));
    let (_, comma) = app
        .get(
            &format!("/v1/logs?{base}&text={}", enc("disk, almost")),
            &alice,
        )
        .await;
    assert_eq!(messages(&comma), [sent[1].clone()]);
    let (_, both) = app
        .get(
            &format!("/v1/logs?{base}&text=request&text=2&direction=forward"),
            &alice,
        )
        .await;
    assert_eq!(messages(&both), [sent[4].clone()]);
    let (_, errors) = app
        .get(&format!("/v1/logs?{base}&level=error"), &alice)
        .await;
    assert_eq!(messages(&errors), [sent[1].clone()]);
    let (_, builds) = app
        .get(&format!("/v1/logs?{base}&type=build"), &alice)
        .await;
    assert_eq!(messages(&builds), Vec::<String>::new());
    let (_, apps) = app
        .get(&format!("/v1/logs?{base}&type=build,app"), &alice)
        .await;
    assert_eq!(messages(&apps).len(), 5);

    // A window: from the fourth line's time on; and up to (excluded) it.
    let fourth = fwd["logs"][3]["timestamp"].as_str().unwrap().to_owned();
    let (_, later) = app
        .get(
            &format!(
                "/v1/logs?{base}&direction=forward&startTime={}",
                enc(&fourth)
            ),
            &alice,
        )
        .await;
    assert_eq!(messages(&later), [&sent[3], &sent[4]].map(String::clone));
    let (_, earlier) = app
        .get(
            &format!("/v1/logs?{base}&direction=forward&endTime={}", enc(&fourth)),
            &alice,
        )
        .await;
    assert_eq!(messages(&earlier), sent[..3].to_vec());
    let (_, long_ago) = app
        .get(
            &format!("/v1/logs?{base}&startTime=1000000000&endTime=1000003600"),
            &alice,
        )
        .await;
    assert_eq!(messages(&long_ago), Vec::<String>::new());
    // The default window is the last hour: a line from now is in it.
    assert_eq!(messages(&page).len(), 5);

    // Paging, both ways, a page at a time: every line once, in order.
    let (forward, pages) = all_pages(&app, &alice, &format!("{base}&direction=forward"), 2).await;
    assert_eq!(forward, sent);
    assert!(pages >= 3, "{pages} pages");
    let (backward, _) = all_pages(&app, &alice, &base, 2).await;
    assert_eq!(backward, newest_first);
    let (one_by_one, _) = all_pages(&app, &alice, &format!("{base}&direction=forward"), 1).await;
    assert_eq!(one_by_one, sent);

    // Render's other filters are accepted and not applied.
    let (s, v) = app
        .get(
            &format!("/v1/logs?{base}&host=x&statusCode=500&method=GET&path=/&task=t&unknown=1"),
            &alice,
        )
        .await;
    assert_eq!((s, messages(&v).len()), (StatusCode::OK, 5), "{v}");

    // What berth refuses, naming the parameter.
    for (q, field) in [
        (String::new(), "resource"),
        (format!("{base}&direction=sideways"), "direction"),
        (format!("{base}&limit=0"), "limit"),
        (format!("{base}&limit=101"), "limit"),
        (format!("{base}&startTime=yesterday"), "startTime"),
    ] {
        let (s, v) = app.get(&format!("/v1/logs?{q}"), &alice).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(v["fields"][0]["field"], field, "{q}: {v}");
    }
    let (s, _) = app.get("/v1/logs?resource=not-a-service", &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            axum::http::Method::GET,
            &format!("/v1/logs?{base}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// berth's line about a deploy names no instance: listed with the
/// service's lines without an `instance` label, and left out when lines of
/// some instance are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_about_a_deploy_has_no_instance() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let (svc, _) = app.service(&alice, "deployed").await;
    let ins = InstanceId::generate();
    app.log_line(&svc, &ins, Stream::Stdout, "listening").await;
    let live = "==> Your service is live 🎉";
    app.log_line(&svc, None, Stream::System, live).await;
    let base = format!("/v1/logs?resource={svc}&direction=forward");
    let (s, page) = app.get(&base, &alice).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(messages(&page), ["listening", live]);
    let names = |l: &Value| -> Vec<String> {
        l["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&page["logs"][1]),
        ["resource", "type", "level"],
        "{page}"
    );
    assert_eq!(label(&page["logs"][1], "level"), "info");
    assert_eq!(
        names(&page["logs"][0]),
        ["resource", "instance", "type", "level"]
    );
    let (_, only) = app.get(&format!("{base}&instance={ins}"), &alice).await;
    assert_eq!(messages(&only), ["listening"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_logs_do_not_exist_for_you() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (hers, _) = app.service(&alice, "hers").await;
    let (his, _) = app.service(&bob, "his").await;
    let ins = InstanceId::generate();
    app.log_line(&hers, &ins, Stream::Stdout, "alice-secret")
        .await;
    app.log_line(&his, &ins, Stream::Stdout, "bob-line").await;

    // Alice's service named by Bob, alone or with his own: not found, and
    // nothing of hers in the answer.
    for q in [
        format!("resource={hers}"),
        format!("resource={his},{hers}"),
        format!("resource={his}&resource={hers}&text=alice"),
    ] {
        let (s, v) = app.get(&format!("/v1/logs?{q}"), &bob).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{q}: {v}");
        assert!(!v.to_string().contains("alice-secret"), "{v}");
        assert_eq!(
            v,
            app.get("/v1/logs?resource=srv-aaaaaaaaaaaaaaaaaaaa", &bob)
                .await
                .1
        );
    }
    // Bob's own, claiming Alice as the owner: not found either.
    let (s, _) = app
        .get(
            &format!("/v1/logs?resource={his}&ownerId={}", alice.id),
            &bob,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // His own: only his line.
    let (s, v) = app
        .get(&format!("/v1/logs?resource={his}&ownerId={}", bob.id), &bob)
        .await;
    assert_eq!(
        (s, messages(&v)),
        (StatusCode::OK, vec!["bob-line".to_owned()])
    );
    // Both of Alice's services at once, merged in time order.
    let (two, _) = app.service(&alice, "two").await;
    app.log_line(&two, &ins, Stream::Stdout, "second-service")
        .await;
    let (s, v) = app
        .get(
            &format!("/v1/logs?resource={hers},{two}&direction=forward"),
            &alice,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(messages(&v), ["alice-secret", "second-service"]);
    assert_eq!(label(&v["logs"][1], "resource"), two);
    // A deleted service's lines are gone with it.
    let (s, _) = app.delete(&format!("/v1/services/{two}"), &alice).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/v1/logs?resource={two}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// `GET /v1/logs/values` for `query` as `who`: the values, or the
/// status and body of a refusal.
async fn values(app: &App, who: &Owner, query: &str) -> Result<Vec<String>, (StatusCode, Value)> {
    let (s, v) = app.get(&format!("/v1/logs/values?{query}"), who).await;
    if s != StatusCode::OK {
        return Err((s, v));
    }
    Ok(v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labels_values_are_listed_once_for_the_lines_asked_about() {
    let app = App::start(true).await;
    let alice = app.owner().await;
    let bob = app.owner().await;
    let (svc, _) = app.service(&alice, "talker").await;
    let (a, b, c) = (
        InstanceId::generate(),
        InstanceId::generate(),
        InstanceId::generate(),
    );
    for (inst, stream, text) in [
        (&a, Stream::Stdout, "a starts"),
        (&b, Stream::Stderr, "b fails"),
        (&c, Stream::Stdout, "c serves"),
        (&a, Stream::Stdout, "a serves"),
    ] {
        app.log_line(&svc, inst, stream, text).await;
    }
    let (a, b, c) = (a.to_string(), b.to_string(), c.to_string());
    let (a, b, c) = (a.as_str(), b.as_str(), c.as_str());
    let q = |rest: &str| format!("resource={svc}&ownerId={}&{rest}", alice.id);

    // Each value once; by default the newest line's first.
    assert_eq!(
        values(&app, &alice, &q("label=instance")).await.unwrap(),
        [a, c, b]
    );
    assert_eq!(
        values(&app, &alice, &q("label=instance&direction=forward"))
            .await
            .unwrap(),
        [a, b, c]
    );
    assert_eq!(
        values(&app, &alice, &q("label=instance&limit=2"))
            .await
            .unwrap(),
        [a, c]
    );
    // The listing's filters apply.
    assert_eq!(
        values(&app, &alice, &q("label=instance&level=error"))
            .await
            .unwrap(),
        [b]
    );
    assert_eq!(
        values(&app, &alice, &q("label=instance&text=serves"))
            .await
            .unwrap(),
        [a, c]
    );
    assert_eq!(
        values(&app, &alice, &q(&format!("label=level&instance={b}")))
            .await
            .unwrap(),
        ["error"]
    );
    assert_eq!(
        values(&app, &alice, &q("label=level")).await.unwrap(),
        ["info", "error"]
    );
    assert_eq!(
        values(&app, &alice, &q("label=type")).await.unwrap(),
        ["app"]
    );
    assert!(values(&app, &alice, &q("label=type&type=request"))
        .await
        .unwrap()
        .is_empty());
    // Render's request-log labels: berth keeps no request logs.
    for label in ["host", "method", "statusCode"] {
        assert!(values(&app, &alice, &q(&format!("label={label}")))
            .await
            .unwrap()
            .is_empty());
    }
    // A window with none of the lines.
    assert!(values(
        &app,
        &alice,
        &q("label=instance&startTime=2999-01-01T00:00:00Z")
    )
    .await
    .unwrap()
    .is_empty());
    // Two services at once.
    let (two, _) = app.service(&alice, "two").await;
    let d = InstanceId::generate();
    app.log_line(&two, &d, Stream::Stdout, "d").await;
    assert_eq!(
        values(
            &app,
            &alice,
            &format!("resource={svc},{two}&label=instance")
        )
        .await
        .unwrap(),
        [d.to_string().as_str(), a, c, b]
    );

    // Refused with why, as the listing refuses.
    for (bad, field) in [
        ("", "label"),
        ("label=resource", "label"),
        ("label=instance&limit=0", "limit"),
        ("label=instance&direction=sideways", "direction"),
        ("label=instance&startTime=yesterday", "startTime"),
    ] {
        let (s, v) = values(&app, &alice, &q(bad)).await.unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v.to_string().contains(field), "{bad}: {v}");
    }
    let (s, _) = values(&app, &alice, "label=instance").await.unwrap_err();
    assert_eq!(s, StatusCode::BAD_REQUEST, "no service named");
    // Another owner's service does not exist for Bob, and nothing of it
    // is said.
    for q in [
        format!("resource={svc}&label=instance"),
        format!("resource={svc}&label=instance&ownerId={}", alice.id),
    ] {
        let (s, v) = values(&app, &bob, &q).await.unwrap_err();
        assert_eq!(s, StatusCode::NOT_FOUND, "{q}: {v}");
        assert!(!v.to_string().contains(a), "{v}");
    }
}

/// The settings as `berth up` reads them.
#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    api: berth_api::ApiArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_stream_keeps_what_the_settings_say() {
    let app = App::start(false).await;
    let settings = Settings::parse_from([
        "berth",
        "--api-logs-max-age-hours",
        "2",
        "--api-logs-mib-per-service",
        "1",
        "--api-logs-max-mib",
        "5",
    ]);
    assert!(settings.api.validate().is_ok());
    let limits = settings.api.log_limits();
    app.store.provision_logs(&limits).await.unwrap();
    let subjects = app.store.subjects().clone();
    let js = app.store.jetstream();
    let mut stream = js.get_stream(subjects.logs_stream()).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(2 * 3600));
    // 1 MiB in lines of at most 16 KiB.
    assert_eq!(config.max_messages_per_subject, 64);
    assert_eq!(config.max_message_size, 16 * 1024);
    assert_eq!(config.max_bytes, 5 << 20);
    assert_eq!(config.num_replicas, 1);
    assert_eq!(config.subjects, vec![subjects.logs_all()]);

    // A service keeps its newest 64 lines, whatever its instances; another
    // service keeps its own.
    let (noisy, quiet) = (ServiceId::generate(), ServiceId::generate());
    let line = |service: &ServiceId, text: String| {
        serde_json::to_vec(&berth_schemas::logs::LogLine {
            service: service.clone(),
            instance: Some(InstanceId::generate()),
            stream: Stream::Stdout,
            line: text,
            time: chrono::Utc::now(),
        })
        .unwrap()
    };
    let keep = |service: &ServiceId, text: String| {
        let (subject, payload) = (subjects.logs(service), line(service, text));
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    for i in 0..3 {
        keep(&quiet, format!("q{i}")).await;
    }
    for i in 0..100 {
        keep(&noisy, format!("n{i}")).await;
    }
    let count = |service: ServiceId| {
        let store = app.store.clone();
        async move {
            berth_tests::eventlog::kept_logs(&store, &service)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.line)
                .collect::<Vec<_>>()
        }
    };
    let kept = count(noisy.clone()).await;
    assert_eq!(kept.len(), 64);
    assert_eq!(kept.first().map(String::as_str), Some("n36"));
    assert_eq!(count(quiet.clone()).await, ["q0", "q1", "q2"]);
    // A message larger than a line may be is refused.
    let big = line(&noisy, "x".repeat(16 * 1024));
    let refused = js.publish(subjects.logs(&noisy), big.into()).await;
    let refused = match refused {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a message over 16 KiB was kept");

    // New settings reach the existing stream; provisioning again with the
    // same ones changes nothing.
    let wider = berth_eventlog::logs::LogLimits {
        max_age: Duration::from_secs(3600),
        bytes_per_service: 2 << 20,
        max_bytes: None,
    };
    app.store.provision_logs(&wider).await.unwrap();
    app.store.provision_logs(&wider).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.max_messages_per_subject, 128);
    assert_eq!(config.max_bytes, -1);
    assert_eq!(count(noisy).await.len(), 64, "nothing lost on the update");
}

//! End to end: log history. A cron job's run prints and exits; its lines
//! are still there for `berth service logs` afterwards, filtered as asked,
//! followed with `-f` as new runs print, and invisible to another owner —
//! against a real `berth up` (its own nats-server with a user per role),
//! a real registry and runc.

use std::process::Stdio;
use std::time::Duration;

use berth_eventlog::{EventStore, StoreConfig};
use berth_runtime::nats_auth::{self, Creds, Role};
use berth_runtime::SecretKey;
use berth_schemas::Subjects;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cli_support::{berth, busybox_image, eventually, Setup};

const JOB: &str = "sh -c 'echo first-line; echo marker-7f3a; echo oops >&2; echo last-line'";

/// Lists a service's lines with Render's SDK (`render.public_api`), two
/// a page, oldest first, each page asked for with the last one's
/// `nextStartTime`/`nextEndTime` as Render documents; prints the messages,
/// then the values of three labels (`values: <label> <a,b>`).
/// Arguments: API URL, owner id, service id; the key in BERTH_API_KEY.
const SDK_PAGES: &str = r#"
import os, sys
from render.public_api import AuthenticatedClient
from render.public_api.api.logs import list_logs
from render.public_api.models.list_logs_response_200 import ListLogsResponse200
from render.public_api.models.log_direction import LogDirection
from render.public_api.types import UNSET

url, owner, service = sys.argv[1:4]
client = AuthenticatedClient(base_url=url, token=os.environ["BERTH_API_KEY"],
                             raise_on_unexpected_status=True)
start, end = UNSET, UNSET
for _ in range(10):
    r = list_logs.sync_detailed(client=client, owner_id=owner, resource=[service],
                                direction=LogDirection.FORWARD, limit=2,
                                start_time=start, end_time=end)
    assert r.status_code == 200, r
    page = r.parsed
    assert isinstance(page, ListLogsResponse200), r.content
    for log in page.logs:
        names = {l.name.value for l in log.labels}
        # berth's line about a deploy names no instance.
        assert names == {"resource", "instance", "type", "level"} or (
            names == {"resource", "type", "level"} and log.message.startswith("==> ")), names
        print(log.message)
    if not page.has_more:
        break
    start, end = page.next_start_time, page.next_end_time
from render.public_api.api.logs import list_logs_values
from render.public_api.models.list_logs_values_label import ListLogsValuesLabel as Label
for label in (Label.INSTANCE, Label.LEVEL, Label.STATUSCODE):
    r = list_logs_values.sync_detailed(client=client, owner_id=owner, label=label,
                                       resource=[service])
    assert r.status_code == 200, r
    print("values:", label.value, ",".join(r.parsed))
"#;

/// The control plane's store, as `berth up` opened it (its credentials).
async fn control_store(setup: &Setup) -> EventStore {
    let creds = Creds::read(&nats_auth::creds_path(&setup.cli.data, &Role::Control)).unwrap();
    let servers = berth_runtime::config::parse_nats_urls(&setup.cli.nats_url).unwrap();
    let client = nats_auth::connect(servers, "test", Some(&creds))
        .await
        .unwrap();
    let subjects = Subjects::new(&setup.cli.prefix).unwrap();
    EventStore::open(client, subjects, StoreConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn logs_outlive_their_instance_and_stay_with_their_owner() {
    let mut setup = Setup::start().await;
    let cli = setup.cli.clone();
    let reg = &setup.registry;
    reg.push_image("app/job", "v1", &busybox_image("job"))
        .await
        .unwrap();
    let image = format!("{}/app/job:v1", reg.host);
    let created = cli
        .run(&[
            "service",
            "create",
            "job",
            "--type",
            "cron_job",
            "--image",
            &image,
            "--schedule",
            "0 3 * * *",
            "--command",
            JOB,
        ])
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    eventually("cron job deployed", Duration::from_secs(60), || async {
        cli.json(&["service", "show", "job"]).await["liveDeployId"].is_string()
    })
    .await;
    let svc = cli.json(&["service", "show", "job"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.ok(&["cron", "run", "job"]).await;
    eventually("the run to end", Duration::from_secs(60), || async {
        cli.ok(&["service", "events", "job"])
            .await
            .contains("cron_job_run_ended")
    })
    .await;

    // The instance is gone; its lines are not. berth's own two lines
    // (what ran, how it ended) come around the program's four; the last
    // is published once the node has read the exit. Before them, berth's
    // line about the job's deploy going live, of no instance.
    eventually("the run's exit said", Duration::from_secs(10), || async {
        cli.ok(&["service", "logs", "job"])
            .await
            .contains("| ==> Exited with status 0")
    })
    .await;
    let logs = cli.run(&["service", "logs", "job", "--tail", "10"]).await;
    println!("$ berth service logs job --tail 10\n{}", logs.stdout);
    assert_eq!(logs.code, 0, "{logs:?}");
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{logs:?}");
    assert!(logs.stdout.contains(" info  | marker-7f3a"), "{logs:?}");
    assert!(logs.stdout.contains(" error | oops"), "{logs:?}");
    assert!(
        lines[0].contains(" - info  | ==> Your service is live 🎉 (deploy dep-"),
        "{logs:?}"
    );
    assert!(
        lines[1].ends_with(&format!(" info  | ==> Running: {JOB}")),
        "{logs:?}"
    );
    assert!(
        lines[6].ends_with(" info  | ==> Exited with status 0"),
        "{logs:?}"
    );
    // stdout's lines in the order written (stderr's pipe is read apart).
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(" info ") && !l.contains("| ==> "))
        .map(|l| l.rsplit(" | ").next().unwrap())
        .collect();
    assert_eq!(stdout, ["first-line", "marker-7f3a", "last-line"]);

    let json = cli
        .run(&["service", "logs", "job", "--tail", "10", "--json"])
        .await;
    assert_eq!(json.code, 0, "{json:?}");
    let entries: Vec<Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 7, "{json:?}");
    let label = |e: &Value, name: &str| {
        e["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .map(|l| l["value"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(label(&entries[1], "resource"), svc);
    let instance = label(&entries[1], "instance");
    assert!(instance.starts_with("ins-"), "{instance}");

    // Filters.
    let grep = cli
        .ok(&["service", "logs", "job", "--grep", "marker"])
        .await;
    // The program's line, and berth's line naming the command it ran.
    assert_eq!(grep.lines().count(), 2, "{grep}");
    assert!(grep.contains("| marker-7f3a"), "{grep}");
    assert!(grep.contains("| ==> Running: "), "{grep}");
    let mine = cli
        .ok(&["service", "logs", &svc, "--instance", &instance])
        .await;
    assert_eq!(mine.lines().count(), 6, "{mine}");
    let other = cli
        .run(&[
            "service",
            "logs",
            "job",
            "--instance",
            "ins-aaaaaaaaaaaaaaaaaaaa",
        ])
        .await;
    assert_eq!((other.code, other.stdout.as_str()), (0, ""), "{other:?}");
    assert!(other.stderr.contains("no log lines"), "{other:?}");
    let recent = cli.ok(&["service", "logs", "job", "--since", "1h"]).await;
    assert_eq!(recent.lines().count(), 7, "{recent}");
    let future = cli
        .ok(&["service", "logs", "job", "--since", "2999-01-01T00:00:00Z"])
        .await;
    assert_eq!(future, "");
    let two = cli.ok(&["service", "logs", "job", "--tail", "2"]).await;
    assert_eq!(two.lines().collect::<Vec<_>>(), lines[5..], "{two}");
    let bad = cli
        .run(&["service", "logs", "job", "--since", "soon"])
        .await;
    assert_eq!(bad.code, 64, "{bad:?}");

    // Render's own Python SDK reads them, page after page by its times.
    let owner: Value =
        serde_json::from_slice(&std::fs::read(cli.data.join("credentials.json")).unwrap()).unwrap();
    let sdk = tokio::process::Command::new("python3")
        .args(["-c", SDK_PAGES, &format!("{}/v1", setup.api_url)])
        .args([owner["ownerId"].as_str().unwrap(), &svc])
        .env("BERTH_API_KEY", owner["apiKey"].as_str().unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    let sdk_out = String::from_utf8_lossy(&sdk.stdout);
    assert!(
        sdk.status.success(),
        "{sdk_out}{}",
        String::from_utf8_lossy(&sdk.stderr)
    );
    let (sdk_values, sdk_lines): (Vec<&str>, Vec<&str>) =
        sdk_out.lines().partition(|l| l.starts_with("values: "));
    // The run's one instance; both levels, the newest line's first
    // (berth's `==> Exited` is `info`); no request logs.
    assert_eq!(
        sdk_values,
        [
            format!("values: instance {instance}"),
            "values: level info,error".to_owned(),
            "values: statusCode ".to_owned(),
        ],
        "label values through the SDK"
    );
    let cli_lines: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(" | ").next().unwrap())
        .collect();
    assert_eq!(sdk_lines, cli_lines, "pages of two through the SDK");

    // The stream keeps what the default settings say.
    let store = control_store(&setup).await;
    let mut stream = store
        .jetstream()
        .get_stream(store.subjects().logs_stream())
        .await
        .unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_messages_per_subject, 16_384);
    assert_eq!(config.max_bytes, 10 << 30);

    // Another owner: the service does not exist for them.
    let key = SecretKey::load_or_create(&setup.cli.data.join("secret.key")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let api_url = setup.api_url.clone();
    let other = berth_api::bootstrap_store(&store, &key, elsewhere.path(), &api_url)
        .await
        .unwrap();
    let other_key = serde_json::from_slice::<Value>(&std::fs::read(&other.path).unwrap()).unwrap()
        ["apiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    for who in [svc.as_str(), "job"] {
        let theirs = cli
            .run_with(
                &["service", "logs", who, "--tail", "10"],
                &[("BERTH_API_KEY", &other_key)],
                None,
            )
            .await;
        assert_eq!(theirs.code, 1, "{theirs:?}");
        assert!(
            theirs.stderr.contains("404 service not found")
                || theirs.stderr.contains("no service named \"job\""),
            "{theirs:?}"
        );
        assert!(!theirs.stdout.contains("marker") && !theirs.stderr.contains("marker"));
    }

    // Following: the history, then the next run's lines as they come.
    let mut follow = berth(&cli.data, &cli.nats_url, &cli.prefix);
    follow
        .args(["service", "logs", "job", "-f", "--grep", "marker"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = follow.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    async fn next(out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
        tokio::time::timeout(Duration::from_secs(60), out.next_line())
            .await
            .expect("a line within 60 s")
            .unwrap()
            .expect("the follower still running")
    }
    // The program's own line of each run (berth's line naming the
    // command matches the filter too).
    async fn next_marker(
        out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) -> String {
        loop {
            let line = next(out).await;
            if !line.contains("| ==> ") {
                return line;
            }
        }
    }
    let first = next_marker(&mut out).await;
    assert!(first.contains("| marker-7f3a"), "{first}");
    cli.ok(&["cron", "run", "job"]).await;
    let second = next_marker(&mut out).await;
    assert!(second.contains("| marker-7f3a"), "{second}");
    assert_ne!(second, first, "a line shown twice");
    let _ = child.kill().await;
    // Followed over the API's live subscription, not by asking again.
    let mut said = String::new();
    let mut err = child.stderr.take().unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut err, &mut said)
        .await
        .unwrap();
    assert!(
        said.contains("following srv-") && said.contains(" live"),
        "{said}"
    );

    setup.stop().await;
}

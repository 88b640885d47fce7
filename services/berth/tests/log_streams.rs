//! End to end: log streams. A worker prints; with the owner's stream set
//! (`berth log-stream set`), its lines reach a real TLS syslog receiver
//! (rsyslog, its certificate from a CA only `SSL_CERT_FILE` names) as RFC
//! 5424 messages rsyslog parses into the service's name, id, instance,
//! type and the line's severity; a service set to `drop` sends nothing
//! while its lines are kept by berth; a service's own endpoint gets its
//! token before each line; an endpoint that stalls holds up no one
//! else's lines, and one that goes down gets lines again once back;
//! Render's Python SDK works every log stream operation; removing the
//! stream stops the lines.

use std::time::Duration;

use berth_tests::syslog::{Received, Syslog};
use serde_json::Value;

use crate::cli_support::{busybox_image, eventually, Setup};

const TICKER: &str =
    "sh -c 'i=0; while true; do echo tick-$i; echo level=warn slow-$i >&2; i=$((i+1)); sleep 0.2; done'";

/// Render's own Python SDK sets the owner's stream (with a token) and
/// works a service's override through every log stream operation, each
/// answer parsed into the SDK's model. Arguments: API URL, owner id,
/// endpoint, service id; the key in BERTH_API_KEY.
const SDK_STREAMS: &str = r#"
import os, sys
from render.public_api import AuthenticatedClient
from render.public_api.api.logs import (
    update_owner_log_stream, get_owner_log_stream, delete_owner_log_stream,
    update_resource_log_stream, get_resource_log_stream, delete_resource_log_stream,
    list_resource_log_streams)
from render.public_api.models.log_stream_owner_update import LogStreamOwnerUpdate
from render.public_api.models.log_stream_resource_update import LogStreamResourceUpdate
from render.public_api.models.log_stream_preview_setting import LogStreamPreviewSetting
from render.public_api.models.log_stream_setting import LogStreamSetting
from render.public_api.models.owner_log_stream_setting import OwnerLogStreamSetting
from render.public_api.models.resource_log_stream_setting import ResourceLogStreamSetting
from render.public_api.types import UNSET

url, owner, endpoint, service = sys.argv[1:5]
c = AuthenticatedClient(base_url=url, token=os.environ["BERTH_API_KEY"],
                        raise_on_unexpected_status=True)
r = update_owner_log_stream.sync_detailed(owner, client=c, body=LogStreamOwnerUpdate(
    preview=LogStreamPreviewSetting.SEND, endpoint=endpoint, token="sdk-tok-71c"))
assert r.status_code == 200 and isinstance(r.parsed, OwnerLogStreamSetting), r.content
assert r.parsed.endpoint == endpoint and r.parsed.owner_id == owner, r.parsed
assert b"sdk-tok" not in r.content, r.content
got = get_owner_log_stream.sync(owner, client=c)
assert got.endpoint == endpoint and got.preview == LogStreamPreviewSetting.SEND, got
r = update_resource_log_stream.sync_detailed(service, client=c,
                                             body=LogStreamResourceUpdate(setting=LogStreamSetting.DROP))
assert r.status_code == 200 and r.parsed.setting == LogStreamSetting.DROP, r.content
listed = list_resource_log_streams.sync(client=c, owner_id=[owner], setting=[LogStreamSetting.DROP])
assert [x.resource_id for x in listed] == [service], listed
assert all(isinstance(x, ResourceLogStreamSetting) for x in listed)
one = get_resource_log_stream.sync(service, client=c)
assert one.setting == LogStreamSetting.DROP and one.endpoint is UNSET, one
r = delete_resource_log_stream.sync_detailed(service, client=c)
assert r.status_code == 204, r
one = get_resource_log_stream.sync(service, client=c)
assert one.setting is UNSET, one
r = delete_resource_log_stream.sync_detailed(service, client=c)
assert r.status_code == 404, r
print("ok")
"#;

#[tokio::test]
async fn lines_reach_a_tls_syslog_endpoint_as_rfc5424() {
    let mut syslog = Syslog::start_tls().unwrap();
    let ca = syslog.ca_pem().to_str().unwrap().to_owned();
    let mut setup = Setup::start_env(&[("SSL_CERT_FILE", &ca)]).await;
    let cli = setup.cli.clone();
    let reg = &setup.registry;
    reg.push_image("app/ticker", "v1", &busybox_image("ticker"))
        .await
        .unwrap();
    let image = format!("{}/app/ticker:v1", reg.host);
    for name in ["ticker", "quiet"] {
        cli.ok(&[
            "service",
            "create",
            name,
            "--type",
            "background_worker",
            "--image",
            &image,
            "--command",
            TICKER,
        ])
        .await;
    }
    let id = |name: &'static str| {
        let cli = cli.clone();
        async move {
            cli.json(&["service", "show", name]).await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (ticker, quiet) = (id("ticker").await, id("quiet").await);
    cli.ok(&["log-stream", "service", "quiet", "--drop"]).await;
    let shown = cli.ok(&["log-stream", "set", &syslog.endpoint()]).await;
    assert!(shown.contains(&syslog.endpoint()), "{shown}");

    let from = |r: &Received, svc: &str| r.app_name == svc;
    eventually(
        "the ticker's lines at the syslog endpoint",
        Duration::from_secs(60),
        || async {
            let got = syslog.received();
            got.iter().filter(|r| from(r, &ticker)).count() >= 10
        },
    )
    .await;
    let got = syslog.received();
    let tick = got
        .iter()
        .find(|r| from(r, &ticker) && r.msg.starts_with("tick-"))
        .expect("a tick line");
    assert_eq!(tick.hostname, "ticker", "{tick:?}");
    assert!(tick.procid.starts_with("ins-"), "{tick:?}");
    assert_eq!(tick.msgid, "background_worker", "{tick:?}");
    assert_eq!(tick.severity, "info", "{tick:?}");
    let slow = got
        .iter()
        .find(|r| from(r, &ticker) && r.msg.starts_with("level=warn slow-"))
        .expect("a stderr line");
    assert_eq!(slow.severity, "warning", "{slow:?}");
    // A line per message, in order per stream: tick-N follow one another.
    let ticks: Vec<u64> = got
        .iter()
        .filter(|r| from(r, &ticker))
        .filter_map(|r| r.msg.strip_prefix("tick-")?.parse().ok())
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");

    // `quiet` prints as much (berth keeps its lines) and sends none.
    let kept = cli.ok(&["service", "logs", "quiet", "--tail", "5"]).await;
    assert!(kept.contains("tick-"), "{kept}");
    let seen = syslog.received().len();
    eventually(
        "more of the ticker's lines",
        Duration::from_secs(30),
        || async { syslog.received().len() > seen + 10 },
    )
    .await;
    assert!(
        !syslog.received().iter().any(|r| from(r, &quiet)),
        "a dropped service's line was sent"
    );

    // An endpoint that takes connections and never answers holds up only
    // its own lines: the ticker's go on.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_at = format!("127.0.0.1:{}", hole.local_addr().unwrap().port());
    cli.ok(&["log-stream", "service", "quiet", "--send", &hole_at])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = syslog.received().len();
    eventually(
        "the ticker's lines past a stalled endpoint",
        Duration::from_secs(10),
        || async { syslog.received().len() > seen + 10 },
    )
    .await;

    // The endpoint down a while and back: the owner's setting says it
    // fails, with why, and once its lines flow again, no more.
    syslog.stop();
    eventually(
        "the endpoint's delivery failing, said",
        Duration::from_secs(30),
        || async {
            let shown = cli.ok(&["log-stream", "show"]).await;
            shown.contains("FAILING since") && shown.contains("unreachable")
        },
    )
    .await;
    let seen = syslog.received().len();
    syslog.start().unwrap();
    eventually(
        "the ticker's lines after the endpoint came back",
        Duration::from_secs(30),
        || async { syslog.received().len() > seen + 5 },
    )
    .await;
    eventually(
        "the endpoint's delivery ok again",
        Duration::from_secs(10),
        || async {
            let shown = cli.ok(&["log-stream", "show"]).await;
            shown.contains("delivery") && !shown.contains("FAILING")
        },
    )
    .await;
    drop(hole);

    // A service's own endpoint, with a token before each line.
    let token = setup.cli.data.join("token");
    std::fs::write(&token, "tok-3f9a\n").unwrap();
    cli.ok(&[
        "log-stream",
        "service",
        "quiet",
        "--send",
        &syslog.endpoint(),
        "--token-file",
        token.to_str().unwrap(),
    ])
    .await;
    eventually(
        "quiet's lines with their token",
        Duration::from_secs(30),
        || async {
            syslog
                .received()
                .iter()
                .any(|r| r.raw.starts_with("tok-3f9a <14>1 ") && r.raw.contains(&quiet))
        },
    )
    .await;
    let shown = cli.ok(&["log-stream", "service", "quiet"]).await;
    assert!(!shown.contains("tok-3f9a"), "the token is shown: {shown}");

    // Render's SDK sets the owner's stream with a token and takes quiet's
    // override away again: both services' lines come with the token.
    let creds: Value =
        serde_json::from_slice(&std::fs::read(cli.data.join("credentials.json")).unwrap()).unwrap();
    let sdk = tokio::process::Command::new("python3")
        .args(["-c", SDK_STREAMS, &format!("{}/v1", setup.api_url)])
        .args([
            creds["ownerId"].as_str().unwrap(),
            &syslog.endpoint(),
            &quiet,
        ])
        .env("BERTH_API_KEY", creds["apiKey"].as_str().unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap();
    assert!(
        sdk.status.success() && sdk.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&sdk.stdout),
        String::from_utf8_lossy(&sdk.stderr)
    );
    eventually(
        "both services' lines with the SDK's token",
        Duration::from_secs(30),
        || async {
            let got = syslog.received();
            let with = |svc: &str| {
                got.iter()
                    .any(|r| r.raw.starts_with("sdk-tok-71c <") && r.raw.contains(svc))
            };
            with(&ticker) && with(&quiet)
        },
    )
    .await;

    // Removed: no line is sent any more.
    cli.ok(&["log-stream", "remove"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = syslog.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        syslog.received().len(),
        before,
        "lines sent after the stream was removed"
    );
    setup.stop().await;
}

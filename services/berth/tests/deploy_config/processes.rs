//! `docker-compose.yml` run as processes, without a container engine: the
//! three NATS servers from their own `deploy/nats/` configs (ports and
//! paths moved to this machine, nothing else), the credentials `nats-init`
//! writes, and every component as `berth run <component>` with the
//! environment the compose file gives it (listen addresses moved to
//! loopback ports, a data dir each, the node's advertised address on
//! loopback). Each is started again until healthy, as compose's restart
//! policy does. A web service created through the API goes live on the
//! node and answers through the router, and no server refused any
//! component anything: each presents a role that covers all it does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_tests::{free_port, NatsVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{compose_file, environment, in_creds_dir, nats_init, strings, BERTH};
use crate::cli_support::{busybox_image, require_root_and_runc, Cleanup, Cli};

/// One HTTP/1.1 GET; the status code and body.
async fn get(addr: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// `berth <command>` with exactly `env` (and PATH), started again whenever
/// it exits until its `/healthz` answers 200.
async fn run_until_healthy(
    name: &str,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Child {
    let health = &env["BERTH_HTTP_ADDR"];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut child: Option<Child> = None;
    loop {
        assert!(Instant::now() < deadline, "{name} not healthy in 90 s");
        let exited = match child.as_mut() {
            None => true,
            Some(c) => c.try_wait().unwrap().is_some(),
        };
        if exited {
            child = Some(
                Command::new(BERTH)
                    .args(command)
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .envs(env)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap(),
            );
        } else if matches!(get(health, "health", "/healthz").await, Some((200, _))) {
            return child.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `text` with `from` replaced by `to`, which must be there.
fn moved(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the config");
    text.replace(from, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_deploys_a_web_service_run_as_processes() {
    require_root_and_runc();
    let doc = compose_file();
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    nats_init(&doc, &creds);

    // The cluster, from deploy/nats/.
    let binary = berth_tests::nats_binary(NatsVersion::Modern).unwrap();
    let names = ["nats-1", "nats-2", "nats-3"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let mut servers = Vec::new();
    let mut logs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/nats/{name}.conf"));
        let mut conf = std::fs::read_to_string(path).unwrap();
        let (client, cluster) = ports[i];
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        conf = moved(
            &conf,
            "listen: 0.0.0.0:4222",
            &format!("listen: 127.0.0.1:{client}"),
        );
        conf = moved(
            &conf,
            "listen: 0.0.0.0:6222",
            &format!("listen: 127.0.0.1:{cluster}"),
        );
        conf = moved(
            &conf,
            "http: 127.0.0.1:8222",
            &format!("http: 127.0.0.1:{}", free_port()),
        );
        conf = moved(
            &conf,
            "/data/jetstream",
            &dir.join("js").display().to_string(),
        );
        for (other, (_, route)) in names.iter().zip(&ports) {
            conf = moved(
                &conf,
                &format!("nats-route://{other}:6222"),
                &format!("nats-route://127.0.0.1:{route}"),
            );
        }
        // As mounted: the creds volume beside the config.
        std::os::unix::fs::symlink(&creds, dir.join("creds")).unwrap();
        std::fs::write(dir.join("nats.conf"), conf).unwrap();
        let log = dir.join("nats.log");
        servers.push(
            Command::new(&binary)
                .arg("-c")
                .arg(dir.join("nats.conf"))
                .arg("-l")
                .arg(&log)
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
        logs.push(log);
    }

    // Every component, with its compose environment moved to this machine.
    let key = berth_runtime::SecretKey::generate_base64();
    let vars = BTreeMap::from([("BERTH_SECRET_KEY", key)]);
    let mut node_data = PathBuf::new();
    let mut api = (String::new(), PathBuf::new());
    let mut router = String::new();
    let mut specs = Vec::new();
    for (service, s) in doc["services"].as_mapping().unwrap() {
        let service = service.as_str().unwrap();
        let command = strings(&s["command"]);
        if command.first().map(String::as_str) != Some("run") {
            continue;
        }
        let mut env = in_creds_dir(environment(s, &vars).unwrap(), &creds);
        let urls = env["BERTH_NATS_URL"].clone();
        let urls = names.iter().zip(&ports).fold(urls, |u, (n, (client, _))| {
            moved(&u, &format!("{n}:4222"), &format!("127.0.0.1:{client}"))
        });
        let data = tmp.path().join(format!("data-{service}"));
        env.insert("BERTH_NATS_URL".into(), urls);
        env.insert("BERTH_DATA_DIR".into(), data.display().to_string());
        // Where the API records itself for the CLI: the test's own, not
        // the machine's /run/berth.
        env.insert(
            "XDG_RUNTIME_DIR".into(),
            tmp.path().join("run").display().to_string(),
        );
        env.insert(
            "BERTH_HTTP_ADDR".into(),
            format!("127.0.0.1:{}", free_port()),
        );
        // The test's registry is on loopback.
        env.insert("BERTH_ALLOW_TARGETS".into(), "loopback".into());
        env.insert("BERTH_SHUTDOWN_GRACE_SECS".into(), "5".into());
        env.insert("BERTH_LOG".into(), "warn".into());
        for listener in ["BERTH_API_ADDR", "BERTH_ROUTER_ADDR"] {
            if env.contains_key(listener) {
                env.insert(listener.into(), format!("127.0.0.1:{}", free_port()));
            }
        }
        match command[1].as_str() {
            "api" => {
                let addr = env["BERTH_API_ADDR"].clone();
                env.insert("BERTH_API_PUBLIC_URL".into(), format!("http://{addr}"));
                api = (addr, data);
            }
            "router" => router = env["BERTH_ROUTER_ADDR"].clone(),
            "node" => {
                env.insert("BERTH_NODE_ADVERTISE_ADDR".into(), "127.0.0.1".into());
                let subnet = berth_tests::net::subnet_for(&data);
                env.insert("BERTH_NODE_SUBNET".into(), subnet);
                node_data = data;
            }
            _ => {}
        }
        specs.push((service.to_owned(), command, env));
    }
    // The node last: it may not create the streams the others do.
    specs.sort_by_key(|(_, c, _)| c[1] == "node");
    let mut node = Cleanup {
        child: None,
        data: node_data,
    };
    let mut running = Vec::new();
    for (service, command, env) in &specs {
        let child = run_until_healthy(service, command, env).await;
        if command[1] == "node" {
            node.child = Some(child);
        } else {
            running.push(child);
        }
    }

    // A web service through the API, live on the node, served by the router.
    let registry =
        berth_tests::registry::Registry::start(berth_tests::registry::RegistryAuth::None)
            .await
            .unwrap();
    registry
        .push_image("app/web", "v1", &busybox_image("served-through-compose"))
        .await
        .unwrap();
    let cli = Cli {
        data: api.1.clone(),
        nats_url: specs[0].2["BERTH_NATS_URL"].clone(),
        prefix: "berth".into(),
    };
    let operator = creds.join("operator.json").display().to_string();
    let image = format!("{}/app/web:v1", registry.host);
    let created = cli
        .run_with(
            &[
                "service",
                "create",
                "web",
                "--type",
                "web_service",
                "--image",
                &image,
                "--command",
                "/bin/busybox httpd -f -p 10000 -h /etc",
                "--health-check-path",
                "/marker",
                "--wait",
            ],
            &[("BERTH_NATS_CREDS", &operator)],
            None,
        )
        .await;
    assert_eq!(created.code, 0, "{created:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(&router, "web.localhost", "/marker").await {
            Some((200, body)) => {
                assert_eq!(body, "served-through-compose");
                break;
            }
            other => assert!(Instant::now() < deadline, "the router answers {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deleted = cli.run(&["service", "delete", "web", "--yes"]).await;
    assert_eq!(deleted.code, 0, "{deleted:?}");

    // No component was refused anything by any server.
    let refused: Vec<String> = logs
        .iter()
        .flat_map(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.contains(" Violation - "))
        .collect();
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
    drop(node);
    drop(running);
    drop(servers);
}

//! Secret files carried out on a real node: sealed to the node in the
//! work item, written for the instance and bound read-only at
//! `/etc/secrets`, where the program reads them (any user may) and
//! cannot change them (root neither); a change of them deploys an instance that
//! sees the new content.

use std::time::Duration;

use berth_domain::service::Command;
use berth_runtime::Secret;
use berth_schemas::events::ServiceSettings;
use berth_schemas::ids::{DeployId, ServiceId};
use berth_schemas::logs::LogLine;
use berth_schemas::model::{seal_context, SecretFiles, ServiceType};
use futures::StreamExt;

use berth_tests::scheduler::World;

const READER: &str = "sh -c 'cat /etc/secrets/app.conf; echo; \
    (echo x > /etc/secrets/app.conf) 2>/dev/null || echo cannot-write; \
    stat -c %a /etc/secrets/app.conf; exec sleep 600'";

fn files(w: &World, svc: &ServiceId, content: &str) -> SecretFiles {
    let sealed = w
        .key
        .seal(
            &Secret::new(content.to_owned()),
            &seal_context::secret_file(svc, "app.conf"),
        )
        .unwrap();
    [("app.conf".to_owned(), sealed)].into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_reads_its_secret_files_in_etc_secrets() {
    let w = World::start().await;
    let _node = w.start_node("n1").await;
    let _scheduler = w.start_scheduler().await;
    let svc = ServiceId::generate();
    let mut lines = w.client.subscribe(w.subjects().logs(&svc)).await.unwrap();
    let (_, d1) = w
        .create_as(svc.clone(), ServiceType::BackgroundWorker, |c| {
            c.docker_command = Some(READER.into());
            c.secret_files = files(&w, &svc, "token=first");
        })
        .await;
    w.wait_live(&svc, &d1).await;
    let mut seen = Vec::new();
    let want = |seen: &Vec<String>, content: &str| {
        [content, "cannot-write", "444"]
            .iter()
            .all(|l| seen.iter().any(|s| s == l))
    };
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = lines.next().await {
            let line: LogLine = serde_json::from_slice(&m.payload).unwrap();
            seen.push(line.line);
            if want(&seen, "token=first") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the instance said: {seen:?}");

    // Changed: a deploy whose instance reads the new content.
    let d2 = DeployId::generate();
    w.command(
        &svc,
        Command::Update {
            settings: Box::new(ServiceSettings {
                secret_files: Some(files(&w, &svc, "token=second")),
                ..ServiceSettings::default()
            }),
            deploy: d2.clone(),
        },
    )
    .await;
    w.wait_live(&svc, &d2).await;
    seen.clear();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = lines.next().await {
            let line: LogLine = serde_json::from_slice(&m.payload).unwrap();
            seen.push(line.line);
            if want(&seen, "token=second") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the new instance said: {seen:?}");
    w.command(&svc, Command::Suspend).await;
}

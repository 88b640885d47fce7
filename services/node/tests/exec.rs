//! Commands for the node's instances over the bus (`<prefix>.exec.<node>`):
//! the node runs one for an instance placed on it for the service named,
//! and refuses — before anything runs — an instance of another service,
//! one it does not have, a request that is not valid, a program the image
//! does not have, and an instance that has stopped.

use std::time::Duration;

use berth_schemas::commands::{ExecFailure, ExecReply, ExecRequest};
use berth_schemas::ids::{InstanceId, ServiceId};
use berth_schemas::model::ServiceType;
use berth_tests::node::World;
use data_encoding::BASE64;

use crate::support::{count_of, fast_checks, run, service, spec, start_node, stop};

async fn ask(w: &World, node: &berth_schemas::ids::NodeId, req: &ExecRequest) -> ExecReply {
    let subject = w.store.subjects().exec(node);
    let payload = rmp_serde::to_vec_named(req).unwrap();
    // The node subscribes as it starts: a moment may pass before it has.
    for _ in 0..100 {
        match w
            .client
            .request(subject.clone(), payload.clone().into())
            .await
        {
            Ok(msg) => return rmp_serde::from_slice(&msg.payload).unwrap(),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the node never answered on {subject}")
}

fn reason(reply: &ExecReply) -> Option<ExecFailure> {
    match reply {
        ExecReply::Failed { reason, .. } => Some(*reason),
        ExecReply::Ran { .. } => None,
    }
}

#[tokio::test]
async fn the_node_runs_a_command_for_its_own_instance_of_the_service_named_only() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, dep) = service(&w, ServiceType::BackgroundWorker, None).await;
    let s = spec(&w, &svc, &dep, "sleep 600", None);
    run(&w, &node.id, &s).await;
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        count_of(ev, &s.instance, "instance_started") == 1
    })
    .await;
    let request = |service: &ServiceId, instance: &InstanceId| ExecRequest {
        service: service.clone(),
        instance: instance.clone(),
        command: vec!["sh".into(), "-c".into(), "cat; echo err >&2; exit 4".into()],
        stdin: BASE64.encode(b"given\n"),
        timeout_secs: 10,
    };

    let ran = ask(&w, &node.id, &request(&svc, &s.instance)).await;
    match &ran {
        ExecReply::Ran {
            exit_code,
            timed_out,
            stdout,
            stderr,
            truncated,
        } => {
            assert_eq!(
                (*exit_code, *timed_out, *truncated),
                (Some(4), false, false)
            );
            assert_eq!(BASE64.decode(stdout.as_bytes()).unwrap(), b"given\n");
            assert_eq!(BASE64.decode(stderr.as_bytes()).unwrap(), b"err\n");
        }
        other => panic!("{other:?}"),
    }
    // Another service's id with this instance, an instance it does not
    // have: not found; nothing ran.
    let other = ServiceId::generate();
    for req in [
        request(&other, &s.instance),
        request(&svc, &InstanceId::generate()),
    ] {
        let r = ask(&w, &node.id, &req).await;
        assert_eq!(reason(&r), Some(ExecFailure::NotFound), "{r:?}");
    }
    let mut bad = request(&svc, &s.instance);
    bad.timeout_secs = 0;
    let r = ask(&w, &node.id, &bad).await;
    assert_eq!(reason(&r), Some(ExecFailure::Invalid), "{r:?}");
    let r = ask(
        &w,
        &node.id,
        &ExecRequest {
            command: vec!["no-such-program".into()],
            ..request(&svc, &s.instance)
        },
    )
    .await;
    assert_eq!(reason(&r), Some(ExecFailure::Failed), "{r:?}");
    // Not an exec request at all: answered, refused.
    let subject = w.store.subjects().exec(&node.id);
    let msg = w
        .client
        .request(subject, b"\xc1garbage".to_vec().into())
        .await
        .unwrap();
    let r: ExecReply = rmp_serde::from_slice(&msg.payload).unwrap();
    assert_eq!(reason(&r), Some(ExecFailure::Invalid), "{r:?}");

    // Stopped: no longer there (or, while stopping, not running).
    stop(&w, &node.id, &svc, &s.instance).await;
    w.wait_events(&svc, Duration::from_secs(30), |ev| {
        count_of(ev, &s.instance, "instance_stopped") == 1
    })
    .await;
    let r = ask(&w, &node.id, &request(&svc, &s.instance)).await;
    assert!(
        matches!(
            reason(&r),
            Some(ExecFailure::NotFound | ExecFailure::NotRunning)
        ),
        "{r:?}"
    );
    node.stop().await;
}

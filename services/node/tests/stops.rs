//! Stops run side by side and never hold up a start: five instances whose
//! shell ignores SIGTERM all stop within one shutdown delay, not five, and
//! a start enqueued behind them runs at once; an instance whose shell is
//! the app (as `sh -c` images are) stops on SIGTERM, not after the delay;
//! each instance's logs say how its stop went.

use std::time::{Duration, Instant};

use berth_schemas::model::ServiceType;
use berth_schemas::Envelope;

use crate::support::{count_of, fast_checks, run, service, spec, start_node, stop};
use berth_tests::agent::collect_logs;
use berth_tests::node::World;

/// Seconds between SIGTERM and SIGKILL in these tests.
const DELAY: u32 = 4;

fn stopped_all(ev: &[Envelope], ids: &[&berth_schemas::ids::InstanceId]) -> bool {
    ids.iter().all(|i| count_of(ev, i, "instance_stopped") == 1)
}

#[tokio::test]
async fn five_stops_take_one_shutdown_delay_and_a_start_does_not_wait() {
    let w = World::start().await;
    let node = start_node(&w, fast_checks()).await;
    let (svc, dep) = service(&w, ServiceType::BackgroundWorker, None).await;
    let stubborn = "sh -c 'trap \"\" TERM; while true; do sleep 1; done'";
    let specs: Vec<_> = (0..5)
        .map(|_| {
            let mut s = spec(&w, &svc, &dep, stubborn, None);
            s.shutdown_delay_secs = DELAY;
            s
        })
        .collect();
    let mut logs = w.subscribe_logs(&svc).await;
    for s in &specs {
        run(&w, &node.id, s).await;
    }
    let ids: Vec<_> = specs.iter().map(|s| &s.instance).collect();
    w.wait_events(&svc, Duration::from_secs(60), |ev| {
        ids.iter().all(|i| count_of(ev, i, "instance_started") == 1)
    })
    .await;

    // Scale to 0, and a newer deploy's instance right behind the stops.
    let t0 = Instant::now();
    for s in &specs {
        stop(&w, &node.id, &svc, &s.instance).await;
    }
    let newer = spec(&w, &svc, &dep, "sleep 600", None);
    run(&w, &node.id, &newer).await;
    w.wait_events(&svc, Duration::from_secs(30), |ev| {
        count_of(ev, &newer.instance, "instance_started") == 1
    })
    .await;
    let started_after = t0.elapsed();
    w.wait_events(&svc, Duration::from_secs(60), |ev| stopped_all(ev, &ids))
        .await;
    let stopped_after = t0.elapsed();
    let delay = Duration::from_secs(u64::from(DELAY));
    assert!(
        started_after < delay,
        "the start waited behind the stops: {started_after:?}"
    );
    assert!(
        stopped_after >= delay && stopped_after < delay + Duration::from_secs(3),
        "five stops took {stopped_after:?}: not one shutdown delay ({delay:?})"
    );

    // A shell that is the app gets the SIGTERM (tini is PID 1) and ends.
    let plain = {
        let mut s = spec(&w, &svc, &dep, "sh -c 'while true; do sleep 1; done'", None);
        s.shutdown_delay_secs = 30;
        s
    };
    run(&w, &node.id, &plain).await;
    w.wait_events(&svc, Duration::from_secs(30), |ev| {
        count_of(ev, &plain.instance, "instance_started") == 1
    })
    .await;
    let t1 = Instant::now();
    for s in [&plain, &newer] {
        stop(&w, &node.id, &svc, &s.instance).await;
    }
    w.wait_events(&svc, Duration::from_secs(30), |ev| {
        stopped_all(ev, &[&plain.instance, &newer.instance])
    })
    .await;
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "SIGTERM did not end the shell: {:?}",
        t1.elapsed()
    );

    // Each instance's logs end saying how its stop went: the stubborn
    // ones killed once the delay was over, the shell that is the app
    // ended by the signal in time.
    let killed = " s after it was asked to stop: it did not exit on its stop signal within its shutdown delay";
    let stopped = "==> Stopped on request: exited with status 143 after ";
    let said = |lines: &[berth_schemas::logs::LogLine], i: &berth_schemas::ids::InstanceId| {
        crate::support::lines_of(lines, i)
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let lines = collect_logs(&mut logs, Duration::from_secs(10), |_| false).await;
    for i in &ids {
        let last = said(&lines, i);
        assert!(
            last.starts_with("==> Killed ") && last.contains(killed),
            "{last}"
        );
    }
    for i in [&plain.instance, &newer.instance] {
        let last = said(&lines, i);
        assert!(last.starts_with(stopped), "{last}");
    }
    node.stop().await;
}

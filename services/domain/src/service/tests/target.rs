//! Where a command or terminal goes: the instance named or the best
//! running one, a running job's container, the cron job's active run;
//! what is not running is refused with why, what the service does not
//! have is not found, and the audit event names the container's node.

use berth_schemas::events::{InstanceCommandRequested, InstanceScheduled, InstanceStarted};
use berth_schemas::ids::{CronRunId, DeployId, InstanceId, JobId, NodeId};
use berth_schemas::model::ServiceType;
use berth_schemas::Event;

use super::{digest, node, Command, Scenario};
use crate::error::ErrorKind;
use crate::service::{job_instance, run_instance, Target};
use crate::DomainError;

fn other_node() -> NodeId {
    "nod-cccccccccccccccccccc".parse().unwrap()
}

fn kind(r: Result<Target, DomainError>) -> ErrorKind {
    r.err().map(|e| e.kind()).unwrap_or(ErrorKind::Invalid)
}

#[test]
fn an_instance_named_or_the_best_running_one() {
    let d = DeployId::generate();
    let mut s = Scenario::live_web(&d);
    assert_eq!(kind(s.state.command_target(None)), ErrorKind::Conflict);
    let (a, b) = (InstanceId::generate(), InstanceId::generate());
    s.run(Command::Place {
        scheduled: [&a, &b]
            .map(|i| InstanceScheduled {
                instance: i.clone(),
                deploy: d.clone(),
                node: node(),
                digest: digest(1),
            })
            .to_vec(),
        rescheduled: vec![],
    });
    s.append(&[Event::InstanceStarted(InstanceStarted {
        instance: a.clone(),
        node: node(),
        digest: digest(1),
        addr: None,
        published: None,
    })]);
    let want = Target {
        instance: a.clone(),
        node: node(),
    };
    assert_eq!(s.state.command_target(None).ok(), Some(want.clone()));
    assert_eq!(s.state.command_target(Some(&a)).ok(), Some(want));
    // Placed, not started: no process to run beside.
    assert_eq!(kind(s.state.command_target(Some(&b))), ErrorKind::Conflict);
    let stranger = InstanceId::generate();
    assert_eq!(
        kind(s.state.command_target(Some(&stranger))),
        ErrorKind::NotFound
    );
}

#[test]
fn a_running_jobs_container_by_its_instance_id() {
    let d = DeployId::generate();
    let mut s = Scenario::created(ServiceType::BackgroundWorker, &d);
    s.go_live(&d, &digest(1));
    let j = JobId::generate();
    let ins = job_instance(&j);
    s.run(Command::CreateJob {
        job: j.clone(),
        start_command: "rake db:migrate".into(),
        plan: None,
    });
    // Pending: not running yet.
    let refused = s.state.command_target(Some(&ins)).err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains("is not running (it is pending)")),
        "{refused:?}"
    );
    s.run(Command::RecordJobPlaced {
        job: j.clone(),
        node: other_node(),
    });
    s.run(Command::RecordJobStarted { job: j.clone() });
    let want = Target {
        instance: ins.clone(),
        node: other_node(),
    };
    assert_eq!(s.state.command_target(Some(&ins)).ok(), Some(want));
    // Not picked unnamed: a job is not one of the service's instances.
    assert_eq!(kind(s.state.command_target(None)), ErrorKind::Conflict);
    // The audit names the job's node.
    assert_eq!(
        s.run(Command::RecordCommandRequested {
            instance: ins.clone(),
            program: "sh".into(),
            terminal: true,
        }),
        vec![InstanceCommandRequested {
            instance: ins.clone(),
            node: other_node(),
            program: "sh".into(),
            terminal: true,
        }
        .into()]
    );
    s.run(Command::RecordJobEnded {
        job: j.clone(),
        success: true,
        exit_code: Some(0),
        reason: None,
    });
    let refused = s.state.command_target(Some(&ins)).err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains("(it is succeeded)")),
        "{refused:?}"
    );
}

#[test]
fn a_cron_jobs_active_run_once_a_node_has_it() {
    let d = DeployId::generate();
    let mut s = Scenario::created(ServiceType::CronJob, &d);
    s.go_live(&d, &digest(1));
    assert_eq!(kind(s.state.command_target(None)), ErrorKind::Conflict);
    let run = CronRunId::generate();
    let ins = run_instance(&run);
    s.run(Command::StartCronRun {
        run: run.clone(),
        manual: true,
        scheduled_for: None,
    });
    assert_eq!(kind(s.state.command_target(None)), ErrorKind::Conflict);
    assert_eq!(
        kind(s.state.command_target(Some(&ins))),
        ErrorKind::Conflict,
        "no node has it yet"
    );
    s.run(Command::RecordCronRunPlaced {
        run: run.clone(),
        node: other_node(),
    });
    let want = Target {
        instance: ins.clone(),
        node: other_node(),
    };
    assert_eq!(s.state.command_target(None).ok(), Some(want.clone()));
    assert_eq!(s.state.command_target(Some(&ins)).ok(), Some(want));
    s.run(Command::RecordCronRunEnded {
        run,
        status: "succeeded".into(),
        exit_code: Some(0),
        reason: None,
    });
    assert_eq!(
        kind(s.state.command_target(Some(&ins))),
        ErrorKind::NotFound
    );
}

//! One-off jobs: asked for on the live image, started and ended once,
//! canceled while pending or running, refused without a live deploy or
//! past the active cap, and bounded in what the service keeps.

use berth_schemas::events::{JobCreated, JobEnded, JobStarted};
use berth_schemas::ids::{DeployId, JobId};
use berth_schemas::model::{Plan, ServiceType};

use super::{digest, Scenario};
use crate::error::ErrorKind;
use crate::service::{Command, JobStatus, ServiceState, KEPT_JOBS, MAX_ACTIVE_JOBS};

fn create(job: &JobId, command: &str) -> Command {
    Command::CreateJob {
        job: job.clone(),
        start_command: command.to_owned(),
        plan: None,
    }
}

fn ended(job: &JobId, success: bool, exit_code: Option<i32>) -> Command {
    Command::RecordJobEnded {
        job: job.clone(),
        success,
        exit_code,
        reason: None,
    }
}

#[test]
fn a_job_runs_the_live_image_once_from_pending_to_its_end() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::BackgroundWorker, &d0);
    let j = JobId::generate();
    // No live deploy yet: no image to run.
    assert_eq!(
        s.refused(create(&j, "rake db:migrate")),
        ErrorKind::Conflict
    );
    s.go_live(&d0, &digest(1));
    let plan = s.state.config.as_ref().unwrap().plan.clone();
    assert_eq!(
        s.run(create(&j, "  rake db:migrate ")),
        vec![JobCreated {
            job: j.clone(),
            start_command: "rake db:migrate".into(),
            plan,
            digest: digest(1),
        }
        .into()]
    );
    // Asked again (a retried request): nothing new.
    assert_eq!(s.run(create(&j, "rake db:migrate")), vec![]);
    assert_eq!(s.state.jobs.get(&j).unwrap().status, JobStatus::Pending);
    let started = s.run(Command::RecordJobStarted { job: j.clone() });
    assert_eq!(started, vec![JobStarted { job: j.clone() }.into()]);
    assert_eq!(s.run(Command::RecordJobStarted { job: j.clone() }), vec![]);
    assert_eq!(s.state.jobs.get(&j).unwrap().status, JobStatus::Running);
    assert_eq!(
        s.run(ended(&j, false, Some(3))),
        vec![JobEnded {
            job: j.clone(),
            status: "failed".into(),
            exit_code: Some(3),
            reason: None,
        }
        .into()]
    );
    let job = s.state.jobs.get(&j).unwrap();
    assert_eq!((job.status, job.exit_code), (JobStatus::Failed, Some(3)));
    // Ended: a late report, a cancel and a start change nothing.
    assert_eq!(s.run(ended(&j, true, Some(0))), vec![]);
    assert_eq!(s.run(Command::CancelJob { job: j.clone() }), vec![]);
    assert_eq!(s.run(Command::RecordJobStarted { job: j.clone() }), vec![]);
    assert_eq!(s.state.jobs.get(&j).unwrap().status, JobStatus::Failed);
    // Unknown jobs are not found.
    let other = JobId::generate();
    for c in [
        Command::CancelJob { job: other.clone() },
        Command::RecordJobStarted { job: other.clone() },
        ended(&other, true, Some(0)),
    ] {
        assert_eq!(s.refused(c), ErrorKind::NotFound);
    }
}

#[test]
fn jobs_are_canceled_by_hand_and_by_suspend_and_refused_when_blank_or_too_many() {
    let mut s = Scenario::live_web(&DeployId::generate());
    assert_eq!(
        s.refused(create(&JobId::generate(), "  ")),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.refused(create(&JobId::generate(), &"x".repeat(5000))),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.refused(Command::CreateJob {
            job: JobId::generate(),
            start_command: "true".into(),
            plan: Some(Plan {
                name: "none".into(),
                cpu_millis: 0,
                memory_mib: 0
            }),
        }),
        ErrorKind::Invalid
    );
    let jobs: Vec<JobId> = (0..MAX_ACTIVE_JOBS).map(|_| JobId::generate()).collect();
    for j in &jobs {
        s.run(create(j, "sleep 60"));
    }
    assert_eq!(
        s.refused(create(&JobId::generate(), "sleep 60")),
        ErrorKind::Conflict
    );
    // A cancel ends it; the container's own end, reported late, is ignored.
    let canceled = s.run(Command::CancelJob {
        job: jobs[0].clone(),
    });
    assert_eq!(
        canceled,
        vec![JobEnded {
            job: jobs[0].clone(),
            status: "canceled".into(),
            exit_code: None,
            reason: None,
        }
        .into()]
    );
    assert_eq!(s.run(ended(&jobs[0], false, Some(143))), vec![]);
    assert_eq!(
        s.state.jobs.get(&jobs[0]).unwrap().status,
        JobStatus::Canceled
    );
    // Room for one more now.
    s.run(create(&JobId::generate(), "true"));
    // Suspending cancels every pending or running job.
    let events = s.run(Command::Suspend);
    let canceled = events
        .iter()
        .filter(|e| matches!(e, berth_schemas::Event::JobEnded(x) if x.status == "canceled"))
        .count();
    assert_eq!(canceled, MAX_ACTIVE_JOBS);
    assert_eq!(s.state.jobs.active().count(), 0);
    assert_eq!(
        s.refused(create(&JobId::generate(), "true")),
        ErrorKind::Conflict
    );
}

#[test]
fn a_service_keeps_its_most_recent_jobs_only() {
    let mut s = Scenario::live_web(&DeployId::generate());
    let running = JobId::generate();
    s.run(create(&running, "sleep 600"));
    let mut first_ended = None;
    for _ in 0..KEPT_JOBS + 20 {
        let j = JobId::generate();
        s.run(create(&j, "true"));
        s.run(ended(&j, true, Some(0)));
        first_ended.get_or_insert(j);
    }
    let kept: Vec<_> = s.state.jobs.newest_first().collect();
    assert_eq!(kept.len(), KEPT_JOBS);
    // The oldest ended ones went; the running one, older still, stayed.
    assert!(s.state.jobs.get(first_ended.as_ref().unwrap()).is_none());
    assert_eq!(
        s.state.jobs.get(&running).map(|j| j.status),
        Some(JobStatus::Pending)
    );
    assert_eq!(s.state.jobs.forgotten, 21);
    // A fold that keeps every deploy keeps every job: what a look past
    // the recent ones reads.
    let every = s
        .history
        .iter()
        .fold(ServiceState::keeping_every_deploy(), |st, e| {
            crate::service::apply(st, e)
        });
    assert_eq!(every.jobs.newest_first().count(), KEPT_JOBS + 21);
    assert_eq!(every.jobs.forgotten, 0);
    assert!(every
        .jobs
        .get(&first_ended.unwrap_or_else(JobId::generate))
        .is_some());
}

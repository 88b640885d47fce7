//! Create, update, suspend/resume, delete, scale, restart, hook keys and
//! cron runs.

use berth_schemas::events::{
    CancelReason, CronJobRunEnded, CronJobRunSkipped, CronJobRunStarted, DeployCanceled,
    DeployHookKeyRegenerated, InstanceCountChanged, RestartRequested, ServiceResumed,
    ServiceSettings, ServiceSuspended, ServiceUpdated,
};
use berth_schemas::ids::{CronRunId, DeployId};
use berth_schemas::model::{DeployStatus, DeployTrigger, OverlapPolicy, ServiceType};
use berth_schemas::Event;
use chrono::{TimeZone, Utc};

use super::{create, digest, sealed, Scenario};
use crate::error::ErrorKind;
use crate::service::{Command, ServiceStatus};

type Edit = Box<dyn FnOnce(&mut crate::service::CreateService)>;

fn create_err(f: impl FnOnce(&mut crate::service::CreateService)) -> (ErrorKind, String) {
    let mut c = create(ServiceType::WebService, &DeployId::generate());
    f(&mut c);
    let err = Scenario::given(vec![])
        .when(Command::Create(Box::new(c)))
        .unwrap_err();
    (err.kind(), err.to_string())
}

#[test]
fn create_validates_fields_for_the_service_type() {
    let cases: Vec<(&str, Edit)> = vec![
        ("name", Box::new(|c| c.name = "My App".into())),
        ("name", Box::new(|c| c.name = String::new())),
        (
            "imagePath",
            Box::new(|c| c.image = "Ghcr.io/Acme/App:v1".into()),
        ),
        ("imagePath", Box::new(|c| c.image = String::new())),
        ("numInstances", Box::new(|c| c.num_instances = Some(0))),
        ("numInstances", Box::new(|c| c.num_instances = Some(101))),
        (
            "maxShutdownDelaySeconds",
            Box::new(|c| c.shutdown_delay_secs = Some(0)),
        ),
        (
            "maxShutdownDelaySeconds",
            Box::new(|c| c.shutdown_delay_secs = Some(301)),
        ),
        (
            "schedule",
            Box::new(|c| c.schedule = Some("* * * * *".into())),
        ),
        (
            "healthCheckPath",
            Box::new(|c| c.health_check_path = Some("healthz".into())),
        ),
        (
            "healthCheckPath",
            Box::new(|c| {
                c.service_type = ServiceType::BackgroundWorker;
                c.health_check_path = Some("/healthz".into());
            }),
        ),
        (
            "schedule",
            Box::new(|c| c.service_type = ServiceType::CronJob),
        ),
        (
            "schedule",
            Box::new(|c| {
                c.service_type = ServiceType::CronJob;
                c.schedule = Some("every minute".into());
            }),
        ),
        (
            "numInstances",
            Box::new(|c| {
                c.service_type = ServiceType::CronJob;
                c.schedule = Some("0 * * * *".into());
                c.num_instances = Some(2);
            }),
        ),
        (
            "preDeployCommand",
            Box::new(|c| {
                c.service_type = ServiceType::CronJob;
                c.schedule = Some("0 * * * *".into());
                c.pre_deploy_command = Some("migrate".into());
            }),
        ),
        (
            "dockerCommand",
            Box::new(|c| c.docker_command = Some("  ".into())),
        ),
        ("region", Box::new(|c| c.region = "US East".into())),
    ];
    for (field, f) in cases {
        let (kind, msg) = create_err(f);
        assert_eq!(kind, ErrorKind::Invalid, "{field}: {msg}");
        assert!(msg.contains(field), "expected {field} in {msg:?}");
    }
}

/// A live web service given a 1 GB disk at `/var/data`, and its id.
fn live_web_with_disk() -> (Scenario, berth_schemas::ids::DiskId) {
    let mut s = Scenario::live_web(&DeployId::generate());
    s.run(Command::AddDisk {
        disk: disk("/var/data", 1).unwrap(),
        deploy: DeployId::generate(),
    });
    let id = disk_id(&s);
    (s, id)
}

/// The id of the scenario's service's disk.
fn disk_id(s: &Scenario) -> berth_schemas::ids::DiskId {
    let disk = s.state.config.as_ref().unwrap().disk.as_ref();
    disk.unwrap().id.clone()
}

fn disk(mount_path: &str, size_gb: u32) -> Option<berth_schemas::model::Disk> {
    Some(berth_schemas::model::Disk {
        id: berth_schemas::ids::DiskId::generate(),
        name: "data".into(),
        mount_path: mount_path.into(),
        size_gb,
    })
}

#[test]
fn a_disk_is_refused_where_it_cannot_be_kept() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "numInstances",
            Box::new(|c| {
                c.disk = disk("/var/data", 1);
                c.num_instances = Some(2);
            }),
        ),
        (
            "cron job cannot have a disk",
            Box::new(|c| {
                c.service_type = ServiceType::CronJob;
                c.schedule = Some("0 * * * *".into());
                c.disk = disk("/var/data", 1);
            }),
        ),
        ("disk.sizeGB", Box::new(|c| c.disk = disk("/var/data", 0))),
        (
            "disk.sizeGB",
            Box::new(|c| c.disk = disk("/var/data", 1025)),
        ),
        (
            "disk.name",
            Box::new(|c| {
                c.disk = disk("/var/data", 1);
                if let Some(d) = &mut c.disk {
                    d.name = "a/b".into();
                }
            }),
        ),
    ];
    let mut cases = cases;
    for bad in [
        "", "var/data", "/", "//", "/proc", "/proc/x", "/sys/fs", "/dev", "/a/../b", "/a/./b",
        "/a//b", "/a b", "/dätä",
    ] {
        cases.push(("disk.mountPath", Box::new(move |c| c.disk = disk(bad, 1))));
    }
    for (field, f) in cases {
        let (kind, msg) = create_err(f);
        assert_eq!(kind, ErrorKind::Invalid, "{field}: {msg}");
        assert!(msg.contains(field), "expected {field} in {msg:?}");
    }
    // What is kept: a private service or worker's disk too, and a path
    // with a trailing slash.
    for (ty, path) in [
        (ServiceType::WebService, "/var/lib/postgresql/data"),
        (ServiceType::PrivateService, "/data/"),
        (ServiceType::BackgroundWorker, "/srv/proc"),
    ] {
        let mut c = create(ty, &DeployId::generate());
        c.disk = disk(path, 10);
        let events = Scenario::given(vec![])
            .when(Command::Create(Box::new(c)))
            .unwrap();
        let Event::ServiceCreated(created) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(created.disk.as_ref().map(|d| d.size_gb), Some(10));
    }
}

#[test]
fn a_service_with_a_disk_does_not_scale_beyond_one() {
    let mut c = create(ServiceType::WebService, &DeployId::generate());
    c.disk = disk("/var/data", 1);
    let s = Scenario::given(vec![]);
    let events = s.when(Command::Create(Box::new(c))).unwrap();
    let s = Scenario::given(events);
    assert_eq!(
        s.refused(Command::Scale { num_instances: 2 }),
        ErrorKind::Invalid
    );
    let err = s.when(Command::Scale { num_instances: 2 }).unwrap_err();
    assert!(err.to_string().contains("disk"), "{err}");
}

#[test]
fn secret_files_are_named_as_files_and_bounded() {
    use crate::service::validate::secret_files;
    let sealed = |n: usize| berth_schemas::model::Sealed {
        kid: "k".into(),
        // Base64 of a 24-byte nonce, `n` bytes and a 16-byte tag.
        ciphertext: "A".repeat((n + 40).div_ceil(3) * 4),
    };
    let files = |pairs: &[(&str, usize)]| -> berth_schemas::model::SecretFiles {
        pairs
            .iter()
            .map(|(k, n)| ((*k).to_owned(), sealed(*n)))
            .collect()
    };
    assert!(secret_files(&files(&[("key.json", 10), (".npmrc", 10), ("a_b-c", 1)])).is_ok());
    for bad in ["", ".", "..", "a/b", "a b", "é"] {
        let err = secret_files(&files(&[(bad, 1)])).unwrap_err().to_string();
        assert!(err.contains("not a file name"), "{bad:?}: {err}");
    }
    let many: Vec<(String, usize)> = (0..51).map(|i| (format!("f{i}"), 1)).collect();
    let many: Vec<(&str, usize)> = many.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert!(secret_files(&files(&many))
        .unwrap_err()
        .to_string()
        .contains("too many"));
    assert!(secret_files(&files(&[("a", 200 * 1024), ("b", 50 * 1024)])).is_ok());
    let err = secret_files(&files(&[("a", 200 * 1024), ("b", 60 * 1024)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("256 KiB"), "{err}");
}

#[test]
fn a_disk_is_added_and_removed_each_with_a_deploy() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let added = s.run(Command::AddDisk {
        disk: disk("/var/data", 2).unwrap(),
        deploy: DeployId::generate(),
    });
    assert!(
        matches!(&added[0], Event::DiskAdded(e) if e.disk.size_gb == 2),
        "{added:?}"
    );
    assert!(
        added.iter().any(
            |e| matches!(e, Event::DeployCreated(d) if d.trigger == DeployTrigger::ServiceUpdated)
        ),
        "{added:?}"
    );
    let id = disk_id(&s);
    // One disk a service; none beyond one instance (scaling is refused too).
    let again = s.when(Command::AddDisk {
        disk: disk("/other", 1).unwrap(),
        deploy: DeployId::generate(),
    });
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("has a disk already"),
        "a second disk"
    );
    assert_eq!(
        s.refused(Command::Scale { num_instances: 2 }),
        ErrorKind::Invalid
    );

    let removed = s.run(Command::RemoveDisk {
        deploy: DeployId::generate(),
    });
    assert!(
        matches!(&removed[0], Event::DiskRemoved(e) if e.disk == id),
        "{removed:?}"
    );
    assert!(removed.iter().any(|e| matches!(e, Event::DeployCreated(_))));
    assert!(s.state.config.as_ref().unwrap().disk.is_none());
    assert!(s.state.disk_node.is_none());
    // Nothing left to remove; scaling is allowed again.
    assert!(s
        .when(Command::RemoveDisk {
            deploy: DeployId::generate()
        })
        .unwrap()
        .is_empty());
    assert!(s.when(Command::Scale { num_instances: 2 }).is_ok());

    // Refused where a disk cannot be kept.
    let cron = Scenario::created(ServiceType::CronJob, &DeployId::generate());
    assert_eq!(
        cron.refused(Command::AddDisk {
            disk: disk("/var/data", 1).unwrap(),
            deploy: DeployId::generate(),
        }),
        ErrorKind::Invalid
    );
    s.run(Command::Scale { num_instances: 2 });
    assert_eq!(
        s.refused(Command::AddDisk {
            disk: disk("/var/data", 1).unwrap(),
            deploy: DeployId::generate(),
        }),
        ErrorKind::Invalid
    );
    // A suspended service gets its disk at its resume: no deploy now.
    let mut paused = Scenario::live_web(&DeployId::generate());
    paused.run(Command::Suspend);
    let added = paused.run(Command::AddDisk {
        disk: disk("/var/data", 1).unwrap(),
        deploy: DeployId::generate(),
    });
    assert_eq!(added.len(), 1, "{added:?}");
}

#[test]
fn create_applies_defaults_and_refuses_a_second_create() {
    let d0 = DeployId::generate();
    let s = Scenario::created(ServiceType::WebService, &d0);
    let cfg = s.state.config.as_ref().unwrap();
    assert_eq!(cfg.num_instances, 1);
    assert_eq!(cfg.shutdown_delay_secs, 30);
    assert_eq!(cfg.overlap_policy, OverlapPolicy::Wait);
    assert_eq!(cfg.image, "ghcr.io/acme/app:v1");
    assert_eq!(s.state.status, ServiceStatus::Active);

    let mut c = create(ServiceType::WebService, &DeployId::generate());
    c.image = "alpine".into();
    let events = Scenario::given(vec![])
        .when(Command::Create(Box::new(c.clone())))
        .unwrap();
    assert!(
        matches!(&events[0], Event::ServiceCreated(e) if e.image == "docker.io/library/alpine:latest")
    );
    assert_eq!(s.refused(Command::Create(Box::new(c))), ErrorKind::Conflict);
    // Nothing but create works on a service that does not exist.
    assert_eq!(
        Scenario::given(vec![]).refused(Command::Suspend),
        ErrorKind::NotFound
    );
    // Cron jobs are created with their schedule.
    let cron = Scenario::created(ServiceType::CronJob, &DeployId::generate());
    assert_eq!(
        cron.state.config.as_ref().unwrap().schedule.as_deref(),
        Some("*/5 * * * *")
    );
}

#[test]
fn updates_redeploy_only_when_what_runs_changes() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);

    // Name and health check: recorded, no deploy.
    let events = s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            name: Some("app2".into()),
            health_check_path: Some(Some("/healthz".into())),
            ..Default::default()
        }),
        deploy: DeployId::generate(),
    });
    assert_eq!(events.len(), 1);
    assert_eq!(s.state.config.as_ref().unwrap().name, "app2");

    // Unchanged values: nothing at all; only changed fields are recorded.
    let same = ServiceSettings {
        name: Some("app2".into()),
        ..Default::default()
    };
    assert_eq!(
        s.run(Command::Update {
            settings: Box::new(same),
            deploy: DeployId::generate()
        }),
        vec![]
    );

    // Image: recorded and redeployed with trigger service_updated.
    let d1 = DeployId::generate();
    let events = s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            name: Some("app2".into()),
            image: Some("ghcr.io/acme/app:v2".into()),
            ..Default::default()
        }),
        deploy: d1.clone(),
    });
    assert_eq!(
        events[0],
        ServiceUpdated {
            settings: ServiceSettings {
                image: Some("ghcr.io/acme/app:v2".into()),
                ..Default::default()
            }
        }
        .into()
    );
    let d = s.deploy(&d1);
    assert_eq!(d.trigger, DeployTrigger::ServiceUpdated);
    assert_eq!(d.image, "ghcr.io/acme/app:v2");
    assert_eq!(d.status, DeployStatus::UpdateInProgress);

    // Type-specific fields are checked against the service's type.
    for bad in [
        ServiceSettings {
            schedule: Some("* * * * *".into()),
            ..Default::default()
        },
        ServiceSettings {
            shutdown_delay_secs: Some(0),
            ..Default::default()
        },
        ServiceSettings {
            image: Some("not a ref".into()),
            ..Default::default()
        },
    ] {
        assert_eq!(
            s.refused(Command::Update {
                settings: Box::new(bad),
                deploy: DeployId::generate()
            }),
            ErrorKind::Invalid
        );
    }
}

#[test]
fn suspend_cancels_deploys_refuses_new_ones_and_resume_redeploys() {
    let d0 = DeployId::generate();
    let mut s = Scenario::live_web(&d0);
    let (d1, _) = s.request(DeployTrigger::Api);
    let (d2, _) = s.request(DeployTrigger::Api);
    let events = s.run(Command::Suspend);
    let stopped = |d: &DeployId| -> Event {
        DeployCanceled {
            deploy: d.clone(),
            reason: CancelReason::ServiceStopped,
            by: None,
        }
        .into()
    };
    assert_eq!(
        events,
        vec![stopped(&d1), stopped(&d2), ServiceSuspended {}.into()]
    );
    assert_eq!(s.state.status, ServiceStatus::Suspended);
    assert_eq!(s.run(Command::Suspend), vec![]);

    let refused = s.when(Command::RequestDeploy(crate::service::DeployRequest::new(
        DeployId::generate(),
        DeployTrigger::DeployHook,
    )));
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        s.refused(Command::Scale { num_instances: 3 }),
        ErrorKind::Conflict
    );
    assert_eq!(s.refused(Command::Restart), ErrorKind::Conflict);
    // An update while suspended is recorded but deploys only on resume.
    let events = s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            docker_command: Some(Some("serve --fast".into())),
            ..Default::default()
        }),
        deploy: DeployId::generate(),
    });
    assert_eq!(events.len(), 1);

    let d3 = DeployId::generate();
    let events = s.run(Command::Resume { deploy: d3.clone() });
    assert_eq!(events[0], ServiceResumed {}.into());
    assert_eq!(s.deploy(&d3).trigger, DeployTrigger::ServiceResumed);
    assert_eq!(s.status(&d3), DeployStatus::UpdateInProgress);
    assert_eq!(s.state.status, ServiceStatus::Active);
    // The old live deploy serves until the resumed one replaces it.
    assert_eq!(s.status(&d0), DeployStatus::Live);
    assert_eq!(
        s.run(Command::Resume {
            deploy: DeployId::generate()
        }),
        vec![]
    );
}

#[test]
fn delete_stops_everything_and_then_the_service_is_gone() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    let events = s.run(Command::Delete);
    assert_eq!(events.len(), 2);
    assert_eq!(s.status(&d0), DeployStatus::Canceled);
    assert_eq!(s.state.status, ServiceStatus::Deleted);
    for cmd in [
        Command::Delete,
        Command::Restart,
        Command::Scale { num_instances: 2 },
        Command::CancelDeploy { deploy: d0 },
    ] {
        assert_eq!(s.refused(cmd), ErrorKind::NotFound);
    }
}

#[test]
fn scale_and_restart() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::WebService, &d0);
    // Nothing live yet: nothing to restart.
    assert_eq!(s.refused(Command::Restart), ErrorKind::Conflict);
    s.go_live(&d0, &digest(1));
    assert_eq!(
        s.run(Command::Scale { num_instances: 3 }),
        vec![InstanceCountChanged { from: 1, to: 3 }.into()]
    );
    assert_eq!(s.state.config.as_ref().unwrap().num_instances, 3);
    assert_eq!(s.run(Command::Scale { num_instances: 3 }), vec![]);
    for n in [0, 101] {
        assert_eq!(
            s.refused(Command::Scale { num_instances: n }),
            ErrorKind::Invalid
        );
    }
    assert_eq!(s.run(Command::Restart), vec![RestartRequested {}.into()]);
    assert_eq!(
        s.run(Command::RegenerateHookKey {
            hook_key: sealed("new")
        }),
        vec![DeployHookKeyRegenerated {
            hook_key: sealed("new")
        }
        .into()]
    );
    assert_eq!(s.state.config.as_ref().unwrap().hook_key, sealed("new"));

    let cron = Scenario::created(ServiceType::CronJob, &DeployId::generate());
    assert_eq!(
        cron.refused(Command::Scale { num_instances: 2 }),
        ErrorKind::Invalid
    );
    assert_eq!(cron.refused(Command::Restart), ErrorKind::Invalid);
}

#[test]
fn cron_runs_one_at_a_time_skip_while_active_and_manual_runs_replace() {
    let d0 = DeployId::generate();
    let mut s = Scenario::created(ServiceType::CronJob, &d0);
    let at = |m: u32| Utc.with_ymd_and_hms(2025, 1, 1, 0, m, 0).single();
    let r1 = CronRunId::generate();
    // No live deploy yet: no digest to run.
    assert_eq!(
        s.refused(Command::StartCronRun {
            run: r1.clone(),
            manual: false,
            scheduled_for: at(0)
        }),
        ErrorKind::Conflict
    );
    s.go_live(&d0, &digest(1));
    let start = |run: &CronRunId, manual: bool, m: u32| Command::StartCronRun {
        run: run.clone(),
        manual,
        scheduled_for: if manual { None } else { at(m) },
    };
    assert_eq!(
        s.run(start(&r1, false, 0)),
        vec![CronJobRunStarted {
            run: r1.clone(),
            digest: digest(1),
            manual: false
        }
        .into()]
    );
    assert_eq!(s.run(start(&r1, false, 0)), vec![]);
    // Next schedule while r1 runs: skipped, once.
    let r2 = CronRunId::generate();
    let skipped = s.run(start(&r2, false, 5));
    assert_eq!(
        skipped,
        vec![CronJobRunSkipped {
            scheduled_for: at(5).unwrap(),
            active_run: r1.clone()
        }
        .into()]
    );
    assert_eq!(s.run(start(&r2, false, 5)), vec![]);
    // Manual trigger: cancels r1, starts r3.
    let r3 = CronRunId::generate();
    let events = s.run(start(&r3, true, 0));
    assert_eq!(
        events[0],
        CronJobRunEnded {
            run: r1.clone(),
            status: "canceled".into(),
            exit_code: None,
            reason: None,
        }
        .into()
    );
    assert_eq!(s.state.cron.active.as_ref().map(|r| &r.id), Some(&r3));
    // r1's agent reports its end late: ignored.
    assert_eq!(
        s.run(Command::RecordCronRunEnded {
            run: r1,
            status: "failed".into(),
            exit_code: Some(137),
            reason: None,
        }),
        vec![]
    );
    assert_eq!(
        s.refused(Command::RecordCronRunEnded {
            run: r3.clone(),
            status: "exploded".into(),
            exit_code: None,
            reason: None,
        }),
        ErrorKind::Invalid
    );
    assert_eq!(
        s.run(Command::RecordCronRunEnded {
            run: r3.clone(),
            status: "succeeded".into(),
            exit_code: Some(0),
            reason: None,
        })
        .len(),
        1
    );
    assert_eq!(s.state.cron.active, None);
    assert_eq!(s.run(Command::CancelCronRun { run: r3 }), vec![]);
    assert_eq!(
        s.refused(Command::CancelCronRun {
            run: CronRunId::generate()
        }),
        ErrorKind::NotFound
    );
    // Suspending ends the active run.
    let r4 = CronRunId::generate();
    s.run(start(&r4, true, 0));
    let events = s.run(Command::Suspend);
    assert!(events.contains(
        &CronJobRunEnded {
            run: r4.clone(),
            status: "canceled".into(),
            exit_code: None,
            reason: None,
        }
        .into()
    ));
    assert_eq!(s.state.cron.runs_started, 3);
}

#[test]
fn cron_commands_on_other_types_are_invalid() {
    let s = Scenario::live_web(&DeployId::generate());
    assert_eq!(
        s.refused(Command::StartCronRun {
            run: CronRunId::generate(),
            manual: true,
            scheduled_for: None
        }),
        ErrorKind::Invalid
    );
}

#[test]
fn an_abandoned_creation_can_never_be_created_and_a_created_service_is_not_abandoned() {
    use berth_schemas::events::ServiceCreationAbandoned;

    let first = DeployId::generate();
    let fresh = Scenario::given(vec![]);
    assert_eq!(
        fresh.when(Command::AbandonCreation).unwrap(),
        vec![ServiceCreationAbandoned {}.into()]
    );

    // Given up: the late create is refused, everything else is not found.
    let given_up = Scenario::given(vec![ServiceCreationAbandoned {}.into()]);
    assert_eq!(given_up.state.status, ServiceStatus::Deleted);
    assert!(!given_up.state.exists());
    let late = create(ServiceType::WebService, &first);
    let err = given_up.when(Command::Create(Box::new(late))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("given up"), "{err}");
    assert_eq!(given_up.refused(Command::Restart), ErrorKind::NotFound);
    assert_eq!(given_up.when(Command::AbandonCreation).unwrap(), vec![]);

    // Created first: abandoning is nothing, and so for a deleted one.
    let mut created = Scenario::created(ServiceType::WebService, &first);
    assert_eq!(created.when(Command::AbandonCreation).unwrap(), vec![]);
    created.run(Command::Delete);
    assert_eq!(created.when(Command::AbandonCreation).unwrap(), vec![]);
}

#[test]
fn a_web_service_redirects_to_https_unless_turned_off_and_only_web_services_have_the_switch() {
    let d0 = DeployId::generate();
    let mut web = Scenario::live_web(&d0);
    let redirects = |s: &Scenario| s.state.config.as_ref().unwrap().https_redirect;
    assert!(redirects(&web), "on by default");

    let off = || ServiceSettings {
        https_redirect: Some(false),
        ..Default::default()
    };
    let events = web.run(Command::Update {
        settings: Box::new(off()),
        deploy: DeployId::generate(),
    });
    assert_eq!(events, vec![ServiceUpdated { settings: off() }.into()]);
    assert!(!redirects(&web), "turned off, with no deploy");
    let again = web.run(Command::Update {
        settings: Box::new(off()),
        deploy: DeployId::generate(),
    });
    assert_eq!(again, vec![], "turning it off twice records nothing");

    // Created off.
    let (kind, _) = create_err(|c| {
        c.https_redirect = Some(false);
        c.name = "with a space".into();
    });
    assert_eq!(kind, ErrorKind::Invalid, "the other checks still run");
    let mut c = create(ServiceType::WebService, &DeployId::generate());
    c.https_redirect = Some(false);
    let created = Scenario::given(vec![])
        .when(Command::Create(Box::new(c)))
        .unwrap();
    let Event::ServiceCreated(e) = &created[0] else {
        panic!("{created:?}");
    };
    assert!(!e.https_redirect);

    // A worker has no switch, either way, at creation or later.
    for on in [true, false] {
        let mut c = create(ServiceType::BackgroundWorker, &DeployId::generate());
        c.https_redirect = Some(on);
        let err = Scenario::given(vec![])
            .when(Command::Create(Box::new(c)))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.to_string().contains("httpsRedirect"), "{err}");
        let worker = Scenario::created(ServiceType::BackgroundWorker, &DeployId::generate());
        assert_eq!(
            worker.refused(Command::Update {
                settings: Box::new(ServiceSettings {
                    https_redirect: Some(on),
                    ..Default::default()
                }),
                deploy: DeployId::generate(),
            }),
            ErrorKind::Invalid
        );
    }

    // A service created before the setting existed redirects.
    let Event::ServiceCreated(e) = &created[0] else {
        unreachable!()
    };
    let mut older = serde_json::to_value(e).unwrap();
    older
        .as_object_mut()
        .unwrap()
        .remove("httpsRedirect")
        .unwrap();
    let older: berth_schemas::events::ServiceCreated = serde_json::from_value(older).unwrap();
    assert!(older.https_redirect);
}

#[test]
fn a_disk_keeps_its_newest_snapshots_and_is_set_back_to_one_with_a_deploy() {
    use crate::service::snapshots::KEPT;
    use berth_schemas::ids::DiskSnapshotKey;

    let (mut s, id) = live_web_with_disk();
    // Nothing to copy before the disk's first instance is placed.
    assert_eq!(s.refused(Command::RequestDiskSnapshot), ErrorKind::Conflict);
    s.append(&[berth_schemas::events::DiskPlaced {
        disk: id.clone(),
        node: super::node(),
    }
    .into()]);
    let asked = s.run(Command::RequestDiskSnapshot);
    assert!(matches!(&asked[..], [Event::DiskSnapshotRequested(e)] if e.disk == id));
    assert!(s.state.disk_snapshots.requested);
    // Asked once until one is taken.
    assert!(s.when(Command::RequestDiskSnapshot).unwrap().is_empty());
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let day = std::time::Duration::from_secs(86_400);
    assert!(s.state.disk_snapshots.due(t0, day, t0), "asked for");

    let take = |s: &mut Scenario, disk: &berth_schemas::ids::DiskId| {
        let key = DiskSnapshotKey::generate();
        s.run(Command::RecordDiskSnapshot {
            disk: disk.clone(),
            key: key.clone(),
            node: super::node(),
            bytes: 4096,
        });
        key
    };
    let keys: Vec<DiskSnapshotKey> = (0..KEPT + 2).map(|_| take(&mut s, &id)).collect();
    let snaps = &s.state.disk_snapshots;
    assert!(!snaps.requested);
    // The newest are kept, oldest first.
    let kept: Vec<_> = snaps.kept.iter().map(|k| k.key.clone()).collect();
    assert_eq!(kept, keys[2..].to_vec());
    // Recorded once: the node's retry of the same snapshot adds nothing;
    // one of another disk is not recorded.
    assert!(s
        .when(Command::RecordDiskSnapshot {
            disk: id.clone(),
            key: keys[5].clone(),
            node: super::node(),
            bytes: 1,
        })
        .unwrap()
        .is_empty());
    assert!(s
        .when(Command::RecordDiskSnapshot {
            disk: berth_schemas::ids::DiskId::generate(),
            key: DiskSnapshotKey::generate(),
            node: super::node(),
            bytes: 1,
        })
        .unwrap()
        .is_empty());
    // Due once `every` has passed since the newest; never with `every` 0.
    let newest = snaps.kept.last().unwrap().created_at;
    assert!(!snaps.due(t0, day, newest + chrono::Duration::hours(23)));
    assert!(snaps.due(t0, day, newest + chrono::Duration::hours(24)));
    assert!(!snaps.due(
        t0,
        std::time::Duration::ZERO,
        newest + chrono::Duration::days(9)
    ));

    // A snapshot no longer kept cannot be restored; a kept one comes with a
    // deploy, and each restore counts.
    let gone = s.when(Command::RestoreDiskSnapshot {
        key: keys[0].clone(),
        deploy: DeployId::generate(),
    });
    assert_eq!(gone.unwrap_err().kind(), ErrorKind::NotFound);
    for n in 1..=2 {
        let back = s.run(Command::RestoreDiskSnapshot {
            key: keys[4].clone(),
            deploy: DeployId::generate(),
        });
        assert!(
            matches!(&back[0], Event::DiskSnapshotRestored(e) if e.key == keys[4] && e.disk == id),
            "{back:?}"
        );
        assert!(back.iter().any(
            |e| matches!(e, Event::DeployCreated(d) if d.trigger == DeployTrigger::ServiceUpdated)
        ));
        let r = s.state.disk_snapshots.restore.clone().unwrap();
        assert_eq!((r.key, r.number, r.disk), (keys[4].clone(), n, id.clone()));
    }

    // A removed disk's snapshots go with it.
    s.run(Command::RemoveDisk {
        deploy: DeployId::generate(),
    });
    assert_eq!(
        s.state.disk_snapshots,
        crate::service::snapshots::DiskSnapshots::default()
    );
    assert_eq!(s.refused(Command::RequestDiskSnapshot), ErrorKind::NotFound);
}

#[test]
fn a_disk_filling_up_is_said_once_each_way_with_a_gap_between() {
    use crate::service::disk_usage::{is_high, HIGH_PERCENT, RECOVERED_PERCENT};

    let (mut s, id) = live_web_with_disk();
    let size = 1u64 << 30;
    let at = |p: u64| (size * p).div_ceil(100);
    let usage = |used| Command::RecordDiskUsage {
        disk: id.clone(),
        used_bytes: used,
        size_bytes: size,
    };
    assert!(s.run(usage(at(89))).is_empty());
    let high = s.run(usage(at(HIGH_PERCENT.into())));
    assert!(
        matches!(&high[..], [Event::ServiceDiskUsageHigh(e)] if e.threshold_percent == 90 && e.mount_path == "/var/data"),
        "{high:?}"
    );
    assert!(s.state.disk_usage_high);
    // Said once; between the two lines nothing changes.
    assert!(s.run(usage(at(99))).is_empty());
    assert!(s.run(usage(at(RECOVERED_PERCENT.into()))).is_empty());
    let ok = s.run(usage(at(50)));
    assert!(
        matches!(&ok[..], [Event::ServiceDiskUsageRecovered(_)]),
        "{ok:?}"
    );
    assert!(!s.state.disk_usage_high);
    // Another disk's figures, or none, say nothing.
    assert!(s
        .when(Command::RecordDiskUsage {
            disk: berth_schemas::ids::DiskId::generate(),
            used_bytes: size,
            size_bytes: size,
        })
        .unwrap()
        .is_empty());
    assert!(!is_high(false, 5, 0) && is_high(true, 5, 0));
    // A removed disk starts low.
    s.run(usage(size));
    s.run(Command::RemoveDisk {
        deploy: DeployId::generate(),
    });
    assert!(!s.state.disk_usage_high);
}

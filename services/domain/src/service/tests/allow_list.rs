//! A web service's IP allow list: kept as the router reads it, changed
//! without a deploy, only on web services, and refused with why when an
//! entry is not an address block.

use berth_schemas::events::{ServiceSettings, ServiceUpdated};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{CidrBlock, ServiceType};

use super::{create, Scenario};
use crate::error::ErrorKind;
use crate::service::Command;

fn block(cidr: &str, description: &str) -> CidrBlock {
    CidrBlock {
        cidr_block: cidr.into(),
        description: description.into(),
    }
}

fn allowing(list: Vec<CidrBlock>) -> Command {
    Command::Update {
        settings: Box::new(ServiceSettings {
            ip_allow_list: Some(Some(list)),
            ..ServiceSettings::default()
        }),
        deploy: DeployId::generate(),
    }
}

#[test]
fn an_allow_list_is_kept_as_the_router_reads_it_and_changes_without_a_deploy() {
    let mut s = Scenario::live_web(&DeployId::generate());
    let deploys = s.state.deploys.len();
    let asked = vec![
        block("203.0.113.0/24", "office"),
        block("198.51.100.9", ""),
        block("2001:db8::/32", "v6"),
    ];
    let kept = vec![
        block("203.0.113.0/24", "office"),
        block("198.51.100.9/32", ""),
        block("2001:db8::/32", "v6"),
    ];
    assert_eq!(
        s.run(allowing(asked.clone())),
        vec![ServiceUpdated {
            settings: ServiceSettings {
                ip_allow_list: Some(Some(kept.clone())),
                ..ServiceSettings::default()
            }
        }
        .into()]
    );
    assert_eq!(s.state.config.as_ref().unwrap().ip_allow_list, Some(kept));
    assert_eq!(s.run(allowing(asked)), vec![], "the same again");
    assert_eq!(s.state.deploys.len(), deploys, "no deploy");
    // Empty: no one is let through (not the same as none set).
    assert_eq!(s.run(allowing(vec![])).len(), 1);
    assert_eq!(s.state.config.as_ref().unwrap().ip_allow_list, Some(vec![]));
    // Removed: every client again; removing none changes nothing.
    let remove = || Command::Update {
        settings: Box::new(ServiceSettings {
            ip_allow_list: Some(None),
            ..ServiceSettings::default()
        }),
        deploy: DeployId::generate(),
    };
    assert_eq!(s.run(remove()).len(), 1);
    assert_eq!(s.state.config.as_ref().unwrap().ip_allow_list, None);
    assert_eq!(s.run(remove()), vec![]);
}

#[test]
fn what_the_router_could_not_read_or_apply_is_refused() {
    let live = Scenario::live_web(&DeployId::generate());
    for bad in [
        vec![block("10.0.0.5/8", "")],
        vec![block("10.0.0.0/33", "")],
        vec![block("office", "")],
        vec![block("10.0.0.0/8", "two\nlines")],
        vec![block("10.0.0.0/8", &"x".repeat(201))],
        (0..101)
            .map(|i| block(&format!("10.0.{i}.0/24"), ""))
            .collect(),
    ] {
        assert_eq!(
            live.refused(allowing(bad.clone())),
            ErrorKind::Invalid,
            "{bad:?}"
        );
    }
    let worker = Scenario::created(ServiceType::BackgroundWorker, &DeployId::generate());
    assert_eq!(
        worker.refused(allowing(vec![block("10.0.0.0/8", "")])),
        ErrorKind::Invalid
    );
    let mut c = create(ServiceType::WebService, &DeployId::generate());
    c.ip_allow_list = Some(vec![block("192.0.2.1", "home")]);
    let mut s = Scenario::given(vec![]);
    s.run(Command::Create(Box::new(c)));
    assert_eq!(
        s.state.config.as_ref().unwrap().ip_allow_list,
        Some(vec![block("192.0.2.1/32", "home")])
    );
}

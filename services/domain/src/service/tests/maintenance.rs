//! A web service's maintenance mode: its own events (Render's), no
//! deploy, only on web services, and only a page address that is safe to
//! put in the router's page.

use berth_schemas::events::{
    MaintenanceModeEnabled, MaintenanceModeUriUpdated, ServiceSettings, ServiceUpdated,
};
use berth_schemas::ids::DeployId;
use berth_schemas::model::{MaintenanceMode, ServiceType};
use berth_schemas::Event;

use super::{create, Scenario};
use crate::error::ErrorKind;
use crate::service::Command;

fn asking(m: MaintenanceMode) -> Command {
    Command::Update {
        settings: Box::new(ServiceSettings {
            maintenance_mode: Some(m),
            ..ServiceSettings::default()
        }),
        deploy: DeployId::generate(),
    }
}

fn mode(enabled: bool, uri: &str) -> MaintenanceMode {
    MaintenanceMode {
        enabled,
        uri: uri.into(),
    }
}

#[test]
fn maintenance_is_turned_on_and_off_with_its_own_events_and_no_deploy() {
    let mut s = Scenario::live_web(&DeployId::generate());
    let deploys = s.state.deploys.len();
    assert_eq!(
        s.run(asking(mode(true, ""))),
        vec![MaintenanceModeEnabled { enabled: true }.into()]
    );
    assert_eq!(s.run(asking(mode(true, ""))), vec![], "the same again");
    let page = "https://status.example.com/down?x=1&y=2";
    assert_eq!(
        s.run(asking(mode(true, page))),
        vec![MaintenanceModeUriUpdated {
            from_uri: String::new(),
            to_uri: page.into(),
        }
        .into()]
    );
    let cfg = s.state.config.as_ref().unwrap();
    assert_eq!(cfg.maintenance_mode.as_deref(), Some(&mode(true, page)));
    // Off with another change: both, and still no deploy.
    let events = s.run(Command::Update {
        settings: Box::new(ServiceSettings {
            maintenance_mode: Some(mode(false, page)),
            https_redirect: Some(false),
            ..ServiceSettings::default()
        }),
        deploy: DeployId::generate(),
    });
    assert_eq!(
        events,
        vec![
            MaintenanceModeEnabled { enabled: false }.into(),
            ServiceUpdated {
                settings: ServiceSettings {
                    https_redirect: Some(false),
                    ..ServiceSettings::default()
                }
            }
            .into()
        ]
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::DeployCreated(_))),
        "{events:?}"
    );
    assert_eq!(s.state.deploys.len(), deploys);
}

#[test]
fn maintenance_is_for_web_services_with_a_page_address_safe_to_show() {
    let live = Scenario::live_web(&DeployId::generate());
    for bad in [
        "ftp://status.example.com/",
        "https://",
        "https:///path",
        "/maintenance.html",
        "https://status.example.com/a b",
        "https://x.example/\"><script>alert(1)</script>",
        "https://x.example/'onload",
        "https://x.example/\u{e9}",
    ] {
        assert_eq!(
            live.refused(asking(mode(true, bad))),
            ErrorKind::Invalid,
            "{bad}"
        );
    }
    let long = format!("https://x.example/{}", "a".repeat(2000));
    assert_eq!(live.refused(asking(mode(true, &long))), ErrorKind::Invalid);
    let worker = Scenario::created(ServiceType::BackgroundWorker, &DeployId::generate());
    assert_eq!(worker.refused(asking(mode(true, ""))), ErrorKind::Invalid);
    // At create: kept with the service; a worker's refused.
    let mut c = create(ServiceType::WebService, &DeployId::generate());
    c.maintenance_mode = Some(mode(true, "http://status.example.com/"));
    let mut s = Scenario::given(vec![]);
    s.run(Command::Create(Box::new(c)));
    assert_eq!(
        s.state.config.as_ref().unwrap().maintenance_mode.as_deref(),
        Some(&mode(true, "http://status.example.com/"))
    );
    let mut c = create(ServiceType::BackgroundWorker, &DeployId::generate());
    c.maintenance_mode = Some(mode(true, ""));
    assert_eq!(
        Scenario::given(vec![]).refused(Command::Create(Box::new(c))),
        ErrorKind::Invalid
    );
}
